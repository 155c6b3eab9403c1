"""Optimizer of the paper (docs/model.md §7): SGD with Nesterov momentum and coupled weight decay.

``make_optimizer`` reproduces ``torch.optim.SGD(params, lr, momentum=0.9, nesterov=True,
weight_decay=5e-4)`` exactly: the decay term ``wd * p`` is added to the gradient of *every* parameter
(batch-norm scales and biases included) before the momentum buffer, and the learning rate multiplies
the Nesterov update afterwards, so a changing learning rate acts on the step as in PyTorch.

The learning rate is a step function of the epoch: ``lr * lr_decay ** (epoch // lr_decay_every_epochs)``
with ``epoch = step // steps_per_epoch`` (paper: 0.01 halved every 2 epochs).
"""
from __future__ import annotations

import ml_collections
import optax


def _check(train_config: ml_collections.ConfigDict, steps_per_epoch: int) -> None:
    if int(steps_per_epoch) < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if int(train_config.lr_decay_every_epochs) < 1:
        raise ValueError(f"train.lr_decay_every_epochs must be >= 1, got {train_config.lr_decay_every_epochs}")


def make_schedule(train_config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """Step-count -> learning rate: ``lr * lr_decay ** (step // (steps_per_epoch * every))``."""
    _check(train_config, steps_per_epoch)
    return optax.exponential_decay(
        init_value=float(train_config.lr),
        transition_steps=int(steps_per_epoch) * int(train_config.lr_decay_every_epochs),
        decay_rate=float(train_config.lr_decay),
        staircase=True)


def make_optimizer(train_config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
    """optax chain equal to PyTorch SGD(momentum, nesterov, weight_decay) with the epoch step schedule.

    Args:
      train_config: the ``train`` section of a config (``lr``, ``lr_decay``, ``lr_decay_every_epochs``,
        ``momentum``, ``nesterov``, ``weight_decay``).
      steps_per_epoch: optimizer updates per epoch (the schedule's time unit).
    """
    return optax.chain(
        optax.add_decayed_weights(float(train_config.weight_decay)),
        optax.sgd(make_schedule(train_config, steps_per_epoch),
                  momentum=float(train_config.momentum), nesterov=bool(train_config.nesterov)),
    )
