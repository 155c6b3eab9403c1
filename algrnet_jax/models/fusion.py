"""Fusion & refining (docs/model.md §4.3): per AU, a gated mix of the global feature G and the AU's local feature.

For AU t (own weights per AU), with l_t = HLFeat(s_t) and G = the global HLFeat feature, both [B, h, w, F]:
  alpha_t = sigmoid(C'_g G + C'_l l_t)
  r_t     = alpha_t * L2N(C_g G) + (1 - alpha_t) * L2N(C_l l_t)
All C are 1x1 convs F -> F with bias; L2N(x) = x / max(||x||_2, 1e-12) over channels (as
torch.nn.functional.normalize). Vectorised over AUs with ``nn.vmap`` (G is shared, not copied).

Param tree (leading n axis on every entry; kernels HWIO, PyTorch OIHW -> transpose(2, 3, 1, 0)):
  conv_g (C_g), conv_l (C_l), gate_g (C'_g), gate_l (C'_l): {kernel [n, 1, 1, F, F], bias [n, F]}
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from algrnet_jax.models.layers import conv

L2N_EPS = 1e-12  # torch.nn.functional.normalize's clamp on the norm


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = L2N_EPS) -> jax.Array:
    """x / max(||x||_2, eps) along ``axis`` (torch.nn.functional.normalize).

    Written as x / sqrt(max(sum x^2, eps^2)) (the same value) so that the gradient at x = 0 is finite.
    """
    return x / jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=axis, keepdims=True), eps * eps))


class FusionRefineAU(nn.Module):
    """Fusion & refining of one AU: l [B, h, w, F], g [B, h, w, F] -> r [B, h, w, F]."""

    features: int
    rescale: bool = False   # multiply r by sqrt(F): unit RMS entries (not in the paper; docs/ablation_synthetic.md)
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, l: jax.Array, g: jax.Array) -> jax.Array:
        if l.ndim != 4 or l.shape != g.shape:
            raise ValueError("FusionRefine: expected local features [n, B, h, w, F] and a global feature "
                             f"[B, h, w, F] with equal B, h, w, F; got per-AU {l.shape} and global {g.shape}")
        f = self.features
        c1 = dict(kernel=1, padding=0, dtype=self.dtype, param_dtype=self.param_dtype)
        alpha = nn.sigmoid(conv(f, g.shape[-1], name="gate_g", **c1)(g) + conv(f, l.shape[-1], name="gate_l", **c1)(l))
        g_hat = l2_normalize(conv(f, g.shape[-1], name="conv_g", **c1)(g))
        l_hat = l2_normalize(conv(f, l.shape[-1], name="conv_l", **c1)(l))
        r = alpha * g_hat + (1.0 - alpha) * l_hat
        return r * jnp.sqrt(jnp.asarray(f, r.dtype)) if self.rescale else r


FusionRefine = nn.vmap(FusionRefineAU, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=(0, None), out_axes=0)
FusionRefine.__doc__ = """Fusion & refining for all AUs (``FusionRefineAU`` vmapped over AUs, own params per AU).

``FusionRefine(features)(l, g)``: l [n, B, h, w, F] per-AU local features, g [B, h, w, F] global -> r [n, B, h, w, F].
"""
