"""The train step: one pure function ``(state, batch, au_weight) -> (state, metrics)``, jitted once.

``make_train_step(config, mesh)`` compiles it over a data-parallel mesh (``parallel.py``): the batch is
sharded over the ``data`` axis, state and AU weights are replicated, and the state buffers are donated.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from algrnet_jax.training import parallel
from algrnet_jax.training.state import TrainState

Batch = Mapping[str, jax.Array]
StepFn = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]


def train_step(state: TrainState, batch: Batch, au_weight: jax.Array, *,
               config: ml_collections.ConfigDict) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on a global batch.

    Args:
      state: current TrainState.
      batch: ``image`` [B, C, C, 3], ``landmarks`` [B, 49, 2], ``interocular`` [B], ``labels`` [B, n]
        (paralysis: [B]) (docs/design.md).
      au_weight: float32 [n] AU loss weights of the training part of the fold.
      config: the full config (static).

    Returns:
      the new state (BatchNorm statistics updated from the batch) and scalar metrics: the loss terms of
      ``losses.total_loss`` plus ``grad_norm`` and ``param_norm``.
    """
    from algrnet_jax.losses import total_loss

    dropout_rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        outputs, new_vars = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                                           train=True, mutable=["batch_stats"], rngs={"dropout": dropout_rng})
        loss, metrics = total_loss(outputs, batch, au_weight, config)
        return loss, (metrics, new_vars["batch_stats"])

    (loss, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    metrics["loss"] = loss.astype(jnp.float32)
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["param_norm"] = optax.global_norm(new_state.params)
    return new_state, metrics


def make_train_step(config: ml_collections.ConfigDict, mesh: Mesh, *, donate: bool = True) -> StepFn:
    """``train_step`` jitted over ``mesh``: batch sharded over ``data``, everything else replicated."""
    repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(functools.partial(train_step, config=config),
                   in_shardings=(repl, data, repl), out_shardings=(repl, repl),
                   donate_argnums=(0,) if donate else ())
