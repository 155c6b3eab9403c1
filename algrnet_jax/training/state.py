"""Train state: params, batch statistics, optimizer state, step and RNG in one pytree.

The data position (epoch and batch within the epoch of the next batch) is host-side bookkeeping,
kept beside the state in every checkpoint's ``meta`` (see ``algrnet_jax/checkpoints.py``): with a fixed number of
steps per epoch it always equals ``(step // steps_per_epoch, step % steps_per_epoch)``.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from algrnet_jax.training import precision


class TrainState(train_state.TrainState):
    """``flax`` TrainState plus ``batch_stats`` (BatchNorm running statistics) and ``rng`` (uint32 [2])."""

    batch_stats: Any
    rng: jax.Array

    def variables(self) -> dict[str, Any]:
        """What ``model.apply`` takes: ``{"params", "batch_stats"}``."""
        return {"params": self.params, "batch_stats": self.batch_stats}

    def train_items(self) -> dict[str, Any]:
        """Everything else a checkpoint must hold to resume exactly."""
        return {"opt_state": self.opt_state, "step": self.step, "rng": self.rng}

    def replace_items(self, variables: dict[str, Any], train: dict[str, Any]) -> "TrainState":
        """Inverse of ``variables()`` / ``train_items()`` (restoring a checkpoint)."""
        return self.replace(params=variables["params"], batch_stats=variables["batch_stats"],
                            opt_state=train["opt_state"], step=train["step"], rng=train["rng"])


def init_variables(model: nn.Module, config: ml_collections.ConfigDict, rng: jax.Array) -> dict[str, Any]:
    """``model.init`` on a dummy batch [1, C, C, 3] of ``model.dtype`` (eval mode; BatchNorm statistics start
    at 0 / 1); parameters and statistics in ``model.param_dtype`` (``training/precision.py``)."""
    precision.check_precision(config)
    images = jnp.zeros([1, config.crop_size, config.crop_size, 3], precision.compute_dtype(config))
    variables = model.init(rng, images, train=False)
    return precision.cast_tree({"params": variables["params"], "batch_stats": variables.get("batch_stats", {})},
                               precision.param_dtype(config))


def create_train_state(model: nn.Module, config: ml_collections.ConfigDict, tx: optax.GradientTransformation,
                       rng: jax.Array) -> TrainState:
    """Fresh state from ``rng`` (a raw uint32 [2] key): ``init`` uses one half, the step RNG the other."""
    init_rng, step_rng = jax.random.split(rng)
    variables = init_variables(model, config, init_rng)
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables["batch_stats"], rng=step_rng)


# XLA:CPU compiles the threefry random draws of an initialisation about ten times slower at its default
# optimisation level than at level 0 (docs/performance.md, "Earlier measurements", start-up). Init runs once, so
# on CPU it is compiled at level 0.
# Values: the same draws; some biases differ by 1 ulp from a default-level compile (its fused multiply-add).
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def run_init(fn: Any, *args: Any, **jit_kwargs: Any) -> Any:
    """``jax.jit(fn, **jit_kwargs)(*args)`` for an initialisation; compiled at XLA's lowest optimisation level
    on CPU."""
    options = INIT_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    return jax.jit(fn, **jit_kwargs).lower(*args).compile(options)(*args)


def new_train_state(model: nn.Module, config: ml_collections.ConfigDict, tx: optax.GradientTransformation,
                    rng: jax.Array, **jit_kwargs: Any) -> TrainState:
    """:func:`create_train_state`, jitted (``jit_kwargs``, e.g. ``out_shardings``) and compiled by :func:`run_init`."""
    return run_init(lambda r: create_train_state(model, config, tx, r), rng, **jit_kwargs)
