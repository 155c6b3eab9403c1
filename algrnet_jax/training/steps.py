"""The train step: one pure function ``(state, batch, loss_weights) -> (state, metrics)``, jitted once.

``make_train_step(config, mesh)`` compiles it over a data-parallel mesh (``parallel.py``): the batch is
sharded over the ``data`` axis, state and AU weights are replicated, and the state buffers are donated.

Precision (``training/precision.py``): images are cast to ``model.dtype``; losses are at least float32;
gradients, parameters, BatchNorm statistics and optimizer state keep ``model.param_dtype``.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from algrnet_jax.losses import total_loss
from algrnet_jax.training import parallel, precision
from algrnet_jax.training.state import TrainState

Batch = Mapping[str, jax.Array]
StepFn = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]


def loss_and_grads(state: TrainState, batch: Batch, loss_weights: jax.Array, *, config: ml_collections.ConfigDict
                   ) -> tuple[dict[str, jax.Array], dict[str, jax.Array], Any, Any]:
    """Train-mode forward and backward of ``losses.total_loss`` (arguments as ``train_step``).

    Returns:
      (outputs of the model, loss terms in the loss dtype (at least float32), gradients (param dtype),
      BatchNorm statistics updated from the batch, cast to the state's dtypes).
    """
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    images = jnp.asarray(batch["image"]).astype(precision.compute_dtype(config))

    def loss_fn(params):
        outputs, new_vars = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, images,
                                           train=True, mutable=["batch_stats"], rngs={"dropout": dropout_rng})
        loss, metrics = total_loss(outputs, batch, loss_weights, config)
        return loss, (outputs, metrics, new_vars["batch_stats"])

    (_, (outputs, metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return outputs, metrics, grads, precision.cast_like(batch_stats, state.batch_stats)


def train_step(state: TrainState, batch: Batch, loss_weights: jax.Array, *,
               config: ml_collections.ConfigDict) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on a global batch.

    Args:
      state: current TrainState.
      batch: ``image`` [B, C, C, 3], ``landmarks`` [B, 49, 2], ``interocular`` [B], ``labels`` [B, n]
        (paralysis: [B]) (docs/design.md).
      loss_weights: float32 [K] the task's loss weights (AU: per-AU [n]; grading: per-grade [G]) of the training part.
      config: the full config (static).

    Returns:
      the new state (BatchNorm statistics updated from the batch) and scalar metrics: the loss terms of
      ``losses.total_loss`` plus ``grad_norm`` and ``param_norm``.
    """
    _, metrics, grads, batch_stats = loss_and_grads(state, batch, loss_weights, config=config)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["param_norm"] = optax.global_norm(new_state.params)
    return new_state, metrics


def outputs_finite(state: TrainState, images: jax.Array, *, config: ml_collections.ConfigDict) -> jax.Array:
    """Whether the eval-mode forward (BatchNorm running statistics) of ``state``'s variables on ``images``
    [B, C, C, 3] gives only finite outputs: a bool scalar.

    A finite training loss does not imply it: train mode normalises by the batch's statistics, so parameters
    blown up by a too large learning rate can still give a finite loss while every eval-mode output is NaN.
    """
    images = jnp.asarray(images).astype(precision.compute_dtype(config))
    outputs = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, images, train=False)
    checks = [jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(outputs) if jnp.issubdtype(v.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(checks))


def make_output_check(config: ml_collections.ConfigDict, mesh: Mesh) -> Callable[[TrainState, jax.Array], jax.Array]:
    """``outputs_finite`` jitted over ``mesh``: images sharded over ``data``, the state replicated (not donated)."""
    repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(functools.partial(outputs_finite, config=config), in_shardings=(repl, data), out_shardings=repl)


def make_train_step(config: ml_collections.ConfigDict, mesh: Mesh, *, donate: bool = True) -> StepFn:
    """``train_step`` jitted over ``mesh``: batch sharded over ``data``, everything else replicated."""
    repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(functools.partial(train_step, config=config),
                   in_shardings=(repl, data, repl), out_shardings=(repl, repl),
                   donate_argnums=(0,) if donate else ())
