"""Precision policy: ``model.dtype`` (computation) and ``model.param_dtype`` (parameters and state).

Three supported combinations (``check_precision``):

| ``model.dtype`` | ``model.param_dtype`` | use |
|---|---|---|
| float32 (default) | float32 | everything float32 |
| bfloat16 | float32 | mixed precision (GPU): activations in bfloat16; parameters, BatchNorm statistics, |
| | | optimizer state, attention-map geometry and losses in float32 |
| float64 | float64 | verification (``algrnet check-step``); needs ``jax_enable_x64`` |

The train step casts images to the compute dtype and the losses to at least float32 (``loss_dtype``);
parameters, batch statistics and optimizer state keep ``param_dtype`` (``cast_like`` after every step).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from algrnet_jax.errors import UserError
from algrnet_jax.models import networks

# One home for the names: the model's tables (networks.COMPUTE_DTYPES maps them to the modules' dtypes).
COMPUTE_DTYPES = tuple(networks.COMPUTE_DTYPES)
PARAM_DTYPES = networks.PARAM_DTYPES


def _name(config: ml_collections.ConfigDict, field: str, default: str = "float32") -> str:
    """``config.model.<field>`` (configs saved before the field existed: ``default``)."""
    return str(config.model.get(field, default))


def check_precision(config: ml_collections.ConfigDict) -> None:
    """Raises UserError (naming the field) for an unknown or unsupported precision setting."""
    dtype, pdtype = _name(config, "dtype"), _name(config, "param_dtype")
    if dtype not in COMPUTE_DTYPES:
        raise UserError(f"model.dtype={dtype!r}: choose one of {', '.join(COMPUTE_DTYPES)}")
    if pdtype not in PARAM_DTYPES:
        raise UserError(f"model.param_dtype={pdtype!r}: choose one of {', '.join(PARAM_DTYPES)}")
    if (dtype == "float64") != (pdtype == "float64"):
        raise UserError(f"model.dtype={dtype} with model.param_dtype={pdtype}: float64 is end to end "
                        "(set both to float64), otherwise use float32 parameters")
    if pdtype == "float64" and not jax.config.jax_enable_x64:
        raise UserError("model.dtype=float64 needs 64-bit JAX: set JAX_ENABLE_X64=1 in the environment "
                        "(or jax.config.update('jax_enable_x64', True) before any JAX computation)")


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
    """The activation dtype, ``config.model.dtype``."""
    return jnp.dtype(_name(config, "dtype"))


def param_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
    """The dtype of parameters, BatchNorm statistics and optimizer state, ``config.model.param_dtype``."""
    return jnp.dtype(_name(config, "param_dtype"))


def loss_dtype(*xs: Any) -> jnp.dtype:
    """Dtype of loss arithmetic for outputs ``xs``: their float dtype promoted to at least float32."""
    return jnp.promote_types(jnp.result_type(*xs), jnp.float32)


def cast_tree(tree: Any, dtype: Any) -> Any:
    """Every floating leaf of ``tree`` cast to ``dtype`` (integer leaves unchanged)."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def cast_like(tree: Any, reference: Any) -> Any:
    """``tree``'s leaves cast to the dtypes of the matching leaves of ``reference`` (same structure)."""
    return jax.tree.map(lambda x, r: x.astype(r.dtype), tree, reference)
