"""Training losses (docs/model.md §5), exactly the JAA-Net reference's, with unknown labels masked out.

L = (L_au_local + L_au_int) + lambda_align * L_align.
- Per AU i, over the examples where its label is known (label >= 0 and batch ``mask`` = 1), N_i of them:
  BCE_i  = w_i * mean of -log p(label)
  dice_i = w_i * (1 - (2 sum(p y) + 1) / (sum(p^2) + sum(y^2) + 1) / N_i)   (p = P(present); the reference
           divides the ratio by the batch size; with every label known N_i is the batch size)
  L_au = mean over the AUs with N_i > 0 of (BCE_i + dice_i).
- L_align = mean over real examples of sum((pred - gt)^2) / (2 d_o^2), d_o the (not squared) inter-ocular
  distance of the batch.
- Paralysis: L_au / L_au_local = class-weighted cross-entropy of ``grade_logprob`` / ``local_grade_logprob``
  (PyTorch's weighted mean: sum w_y * nll / sum w_y); ``loss_weights`` then holds the [num_grades] class weights.
The head loss is chosen by the task (``tasks.get_task(config).loss``, a key of :data:`HEAD_LOSSES`, every entry
``(logprob, labels, loss_weights, mask [B]) -> scalar``); adding a loss is adding an entry.
Precision: ``total_loss`` computes in the outputs' dtype promoted to at least float32 (bfloat16 outputs ->
float32 losses; float64 under ``jax_enable_x64`` -> float64), see ``training/precision.py``.
"""
from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from algrnet_jax import tasks


def nll(logprob: jax.Array, labels: jax.Array) -> jax.Array:
    """-log p(label); labels outside [0, K) (unknown) give an arbitrary value that callers mask out."""
    idx = jnp.clip(labels, 0, logprob.shape[-1] - 1).astype(jnp.int32)
    return -jnp.take_along_axis(logprob, idx[..., None], axis=-1)[..., 0]


def au_loss(logprob: jax.Array, labels: jax.Array, weight: jax.Array, valid: jax.Array) -> jax.Array:
    """Weighted softmax + dice loss of one AU head.

    Args:
      logprob: [B, n, 2] log-probabilities of (absent, present).
      labels: [B, n] 0/1 (anything else is ignored where ``valid`` is 0).
      weight: [n] AU loss weights.
      valid: [B, n] 1 where the label is known and the example real.
    Returns:
      scalar.
    """
    valid = valid.astype(logprob.dtype)
    y = jnp.clip(labels, 0, 1).astype(logprob.dtype) * valid
    count = jnp.sum(valid, axis=0)                                        # [n]
    denom = jnp.maximum(count, 1.0)
    bce = jnp.sum(nll(logprob, labels) * valid, axis=0) / denom
    p = jnp.exp(logprob[..., 1]) * valid
    dice = 1.0 - (2.0 * jnp.sum(p * y, 0) + 1.0) / (jnp.sum(p * p, 0) + jnp.sum(y * y, 0) + 1.0) / denom
    has = count > 0
    per_au = jnp.where(has, (bce + dice) * weight, 0.0)
    return jnp.sum(per_au) / jnp.maximum(jnp.sum(has), 1)


def align_loss(landmarks: jax.Array, target: jax.Array, interocular: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over real examples of sum((pred - gt)^2) / (2 d_o^2): [B, 49, 2] x2, [B], [B] -> scalar."""
    per = jnp.sum(jnp.square(landmarks - target), axis=(1, 2)) / (2.0 * jnp.square(interocular))
    per = jnp.where(mask > 0, per, 0.0)
    return jnp.sum(per) / jnp.maximum(jnp.sum(mask), 1.0)


def grade_loss(logprob: jax.Array, grades: jax.Array, class_weight: jax.Array, mask: jax.Array) -> jax.Array:
    """Class-weighted cross-entropy: [B, K] log-probabilities, [B] grades (-1 unknown), [K], [B] -> scalar."""
    w = jnp.where((grades >= 0) & (mask > 0), class_weight[jnp.clip(grades, 0, logprob.shape[-1] - 1)], 0.0)
    return jnp.sum(w * nll(logprob, grades)) / jnp.maximum(jnp.sum(w), 1e-12)


def softmax_dice_loss(logprob: jax.Array, labels: jax.Array, loss_weights: jax.Array, mask: jax.Array) -> jax.Array:
    """AU head loss: [B, n, 2] log-probabilities, [B, n] labels (-1 unknown), [n] weights, [B] mask -> scalar."""
    return au_loss(logprob, labels, loss_weights, (labels >= 0) & (mask[:, None] > 0))


HeadLoss = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
# name (``Task.loss``) -> (logprob, labels, loss_weights, mask [B]) -> scalar
HEAD_LOSSES: dict[str, HeadLoss] = {"softmax_dice": softmax_dice_loss, "weighted_cross_entropy": grade_loss}


def total_loss(outputs: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], loss_weights: jax.Array,
               config: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training objective of a model's outputs on a batch (docs/design.md).

    Args:
      outputs: the model's output dict.
      batch: ``landmarks`` [B, 49, 2], ``interocular`` [B], ``labels`` [B, n] (paralysis [B]), optional ``mask`` [B].
      loss_weights: [K] the task's loss weights (AU: per-AU weights [n]; paralysis: [num_grades] class weights).
      config: reads ``config.model.task`` and ``config.train.lambda_align``.
    Returns:
      (loss, {"loss", "loss_au", "loss_local_au", "loss_align"}).
    """
    task = tasks.get_task(config)
    head_loss = HEAD_LOSSES[task.loss]
    keys = task.logprob_keys + ("landmarks",)
    dtype = jnp.promote_types(jnp.result_type(*(outputs[k] for k in keys)), jnp.float32)  # precision.loss_dtype
    outputs = {k: jnp.asarray(outputs[k], dtype) for k in keys}
    labels = jnp.asarray(batch["labels"])
    mask = jnp.asarray(batch.get("mask", jnp.ones(labels.shape[:1], dtype)), dtype)
    loss_weights = jnp.asarray(loss_weights, dtype)
    integrated, local = task.logprob_keys
    loss_au = head_loss(outputs[integrated], labels, loss_weights, mask)
    loss_local = head_loss(outputs[local], labels, loss_weights, mask)
    loss_align = align_loss(outputs["landmarks"], jnp.asarray(batch["landmarks"], dtype),
                            jnp.asarray(batch["interocular"], dtype), mask)
    loss = loss_au + loss_local + config.train.lambda_align * loss_align
    return loss, {"loss": loss, "loss_au": loss_au, "loss_local_au": loss_local, "loss_align": loss_align}
