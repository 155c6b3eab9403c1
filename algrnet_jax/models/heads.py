"""Heads of JAA-Net / ALGRNet (SPEC sections 3-4): two-layer dense heads, attention refinement, and the
per-AU (per-region) modules, vectorised over AUs with ``nn.vmap`` (params with a leading AU axis).

Param trees (n AUs; u = unit width; PyTorch names of the JAA-Net release in brackets):

DenseHead  {dense1 {kernel [D, h], bias [h]}, dense2 {kernel [h, k], bias [k]}}   [<head>.{0,1}], kernel = weight.T
per_au(RefineNet)  [local_attention_refine.local_aus_attention.<au>]
  conv1..conv4 {kernel [n, 3, 3, c_in, c_out], bias [n, c_out]}   [.{0,3,6,9}]
  bn1..bn3 {scale, bias} [n, 8u]; batch_stats {mean, var} [n, 8u]   [.{1,4,7}]
PerAU(HLFeat)  [local_au_net.local_aus_branch.<au>.feat_extract]: the HLFeat tree with a leading n axis
PerAU(DenseHead) [local_au_net.local_aus_output.<au>]: the DenseHead tree with a leading n axis
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from algrnet_jax.models.layers import BatchNorm, conv, dense, flatten_nchw


def per_au(module_cls: type[nn.Module]) -> type[nn.Module]:
    """``nn.vmap`` of a module over a leading AU axis: own params and batch_stats per AU ([n, ...])."""
    return nn.vmap(module_cls, variable_axes={"params": 0, "batch_stats": 0},
                   split_rngs={"params": True}, in_axes=0, out_axes=0)


class DenseHead(nn.Module):
    """Flatten (NCHW order) -> dense(hidden) -> dense(outputs), no activation between (as the release).

    [B, h, w, c] or [B, D] -> [B, outputs].
    """

    hidden: int
    outputs: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim == 4:
            x = flatten_nchw(x)
        x = dense(self.hidden, x.shape[-1], name="dense1")(x)
        return dense(self.outputs, self.hidden, name="dense2")(x)


class RefineNet(nn.Module):
    """One AU's attention refinement: [conv3x3 valid, BN, ReLU] x3 (width 8u), conv3x3 valid -> 1, sigmoid.

    [B, M, M, 1] -> [B, M-8, M-8, 1].
    """

    unit: int = 8
    train: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for k in range(1, 4):
            x = conv(8 * self.unit, x.shape[-1], padding="VALID", name=f"conv{k}")(x)
            x = nn.relu(BatchNorm(self.train, name=f"bn{k}")(x))
        return nn.sigmoid(conv(1, x.shape[-1], padding="VALID", name="conv4")(x))
