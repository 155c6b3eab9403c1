"""Adaptive regions (docs/model.md §4.1): per-AU centre offsets and region scales from the alignment features.

Two small MLPs on the flattened alignment features A ([B, D], D = 4000 at paper size):
  offsets = unit * reshape(dense_2n(ReLU(dense_h(A))), [B, n, 2])  (dx, dy) in crop pixels, added to both centres
  scales  = init_scale * exp(dense_n(ReLU(dense_h(A))))          [B, n], replaces the fixed e = 0.14
Initialisation: the last dense layer of each MLP has zero kernel and zero bias, so at initialisation offsets are
exactly 0 and scales exactly ``init_scale`` for every input (the network starts as JAA-Net's fixed regions);
the exp keeps scales positive and makes the MLP output a log-ratio to ``init_scale``. ``unit`` (crop pixels per
unit of the offset MLP's output) is the scale the paper leaves open: 1 (the default) makes the output pixels; the
initial region's half-width (``regions.half_width_pixels``, about 5 px at crop 64) moves a region by its own size
for an output of 1, which makes the offsets learn unit**2 times faster under the same optimiser. First layers use PyTorch's
Linear init. At initialisation only the last layers receive gradient (the first layers' gradient flows through
the zero kernels); after the first update both do.

Param tree (kernels [in, out] = PyTorch weight.T):
  offset_hidden {kernel [D, hidden], bias [hidden]}, offset_out {kernel [hidden, 2n], bias [2n]}  (x, y per AU)
  scale_hidden {kernel [D, hidden], bias [hidden]},  scale_out {kernel [hidden, n], bias [n]}
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from algrnet_jax.models.layers import dense


class AdaptiveRegions(nn.Module):
    """feat [B, D] -> (offsets [B, n, 2] (dx, dy) in crop pixels, scales [B, n] > 0)."""

    num_aus: int
    init_scale: float = 0.14
    hidden: int = 64
    unit: float = 1.0                 # crop pixels per unit of the offset MLP's output
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feat: jax.Array) -> tuple[jax.Array, jax.Array]:
        if feat.ndim != 2:
            raise ValueError(f"AdaptiveRegions: expected flattened alignment features [B, D], got shape {feat.shape}")
        if self.init_scale <= 0:
            raise ValueError(f"AdaptiveRegions: init_scale must be positive, got {self.init_scale}")
        n, d = self.num_aus, feat.shape[-1]
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        zero = dict(kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros, **dt)
        x = nn.relu(dense(self.hidden, d, name="offset_hidden", **dt)(feat))
        offsets = self.unit * nn.Dense(2 * n, name="offset_out", **zero)(x).reshape(feat.shape[0], n, 2)
        x = nn.relu(dense(self.hidden, d, name="scale_hidden", **dt)(feat))
        scales = self.init_scale * jnp.exp(nn.Dense(n, name="scale_out", **zero)(x))
        return offsets, scales
