"""Heads of JAA-Net / ALGRNet (docs/model.md §3.3-§3.6, §6): two-layer dense heads, attention refinement, and the
per-AU (per-region) modules, batched over AUs with ``copies=n`` (params with a leading AU axis).

Param trees (n AUs; u = unit width; PyTorch names of the JAA-Net release in brackets):

DenseHead  {dense1 {kernel [D, h], bias [h]}, dense2 {kernel [h, k], bias [k]}}   [<head>.{0,1}], kernel = weight.T
RefineNet(copies=n)  [local_attention_refine.local_aus_attention.<au>]
  conv1..conv4 {kernel [n, 3, 3, c_in, c_out], bias [n, c_out]}   [.{0,3,6,9}]
  bn1..bn3 {scale, bias} [n, 8u]; batch_stats {mean, var} [n, 8u]   [.{1,4,7}]
HLFeat(copies=n)  [local_au_net.local_aus_branch.<au>.feat_extract]: the HLFeat tree with a leading n axis
DenseHead(copies=n) [local_au_net.local_aus_output.<au>]: the DenseHead tree with a leading n axis
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from algrnet_jax.models.layers import BatchNorm, Conv, Dense, each, flatten_nchw, per_copy_form, stacked


class DenseHead(nn.Module):
    """Flatten (NCHW order) -> dense(hidden) -> dense(outputs), no activation between (as the release).

    [B, h, w, c] or [B, D] -> [B, outputs]; with ``copies`` = n: [n, B, h, w, c] -> [n, B, outputs].
    """

    hidden: int
    outputs: int
    copies: int = 0
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if x.ndim == (5 if self.copies else 4):
            x = flatten_nchw(x)
        x = Dense(self.hidden, copies=self.copies, name="dense1", **dt)(x)
        return Dense(self.outputs, copies=self.copies, name="dense2", **dt)(x)


class RefineNet(nn.Module):
    """One AU's attention refinement: [conv3x3 valid, BN, ReLU] x3 (width 8u), conv3x3 valid -> 1, sigmoid.

    [B, M, M, 1] -> [B, M-8, M-8, 1]; with ``copies`` = n (one per AU): [n, B, M, M, 1] -> [n, B, M-8, M-8, 1].
    """

    unit: int = 8
    train: bool = False
    copies: int = 0
    conv_impl: str = "auto"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        conv = dict(padding="VALID", copies=self.copies, impl=self.conv_impl, **dt)
        x = per_copy_form(x, self.copies, self.conv_impl, self.train)
        for k in range(1, 4):
            x = Conv(8 * self.unit, train=self.train, normalised=True, name=f"conv{k}", **conv)(x)
            x = each(nn.relu, BatchNorm(self.train, copies=self.copies, name=f"bn{k}", **dt)(x))
        return stacked(each(nn.sigmoid, Conv(1, name="conv4", **conv)(x)))
