"""One training run, wired once: config -> model, data source, evaluators -> trainer -> selected checkpoint.

This is the command layer's library (flax examples/imagenet's ``train_and_evaluate(config, workdir)``):
``algrnet train``, ``experiments.main_job``, ``experiments.cross_validation`` and ``experiments.ablation``
all train through :func:`train_and_evaluate`, and evaluate the checkpoint a run is reported with through
:func:`evaluate_selected`. Here, and only here, the layers meet:

- ``models.networks.create_model(config)``: the Flax module;
- ``data_pipelines.pipeline.make_source(config)``: the data source (training batches, steps per epoch,
  loss weights, the validation and test parts), built once;
- ``evaluation.make_evaluator``: ``"val"`` (selects the trainer's best checkpoint; only with a validation
  part, ``data.val_fraction > 0``) and ``"test"`` (logged per epoch, never selects anything);
- ``training.loop.train``: the trainer, which imports none of the above.

Reported numbers come from the LAST checkpoint (``select="last"``, the default) or, when asked, from the
validation-best one (``select="val_best"``), evaluated on the test part.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from algrnet_jax import checkpoints, evaluation
from algrnet_jax.configs.validate import validate_config
from algrnet_jax.errors import UserError
from algrnet_jax.models import networks
from algrnet_jax.training import loop
from data_pipelines import builders
from data_pipelines.pipeline import make_source

LAST, VAL_BEST = "last", "val_best"
SELECTIONS = (LAST, VAL_BEST)    # which checkpoint of a run is reported


def build_evaluators(config: ml_collections.ConfigDict, model: nn.Module, data: Any, *, test: bool = True,
                     extra_outputs: Sequence[str] = ()) -> dict[str, loop.Evaluator]:
    """``{"val": ..., "test": ...}`` evaluators of ``data``'s parts (``"val"`` only if it has one; ``"test"`` only
    with ``test``); each is ``variables -> evaluation result`` with ``model``'s eval forward jitted once."""
    parts = (["val"] if data.has_validation else []) + (["test"] if test else [])
    return {part: evaluation.make_evaluator(config, model, _batches(data, part), part, extra_outputs)
            for part in parts}


def _batches(data: Any, part: str) -> Callable[[], Any]:
    return lambda: data.eval_batches(part)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, resume: bool = False,
                       resume_from_previous: bool = False, evaluate: bool = True, evaluate_test: bool = True,
                       progress: bool = True, tensorboard: bool = True,
                       callbacks: Sequence[loop.StepCallback] = (), model: nn.Module | None = None,
                       data: Any = None, eval_outputs: Sequence[str] = ()) -> dict[str, Any]:
    """Validates ``config``, builds model, data source and evaluators, and trains in ``workdir``.

    Args:
      config: full experiment config; ``config.data.data_dir`` is resolved to an absolute path (the
        checkpoints store where the data is, so evaluation works from any working directory).
      workdir: the run's directory (``training.loop.Trainer``).
      resume, resume_from_previous: see ``Trainer.run``.
      evaluate: evaluate at each epoch end (False: no evaluation, no best checkpoint).
      evaluate_test: with ``evaluate``, also evaluate (and log) the test part each epoch.
      progress, tensorboard, callbacks: see ``Trainer``.
      model: replaces ``networks.create_model(config)`` (same inputs, ``batch_stats`` and output dict).
      data: replaces ``make_source(config)`` (a ``training.loop.DataSource`` with ``has_validation`` and
        ``eval_batches(part)``).
      eval_outputs: model outputs the evaluators keep besides the metrics' (shares their jitted forward
        with a later ``evaluation.make_eval_step(config, eval_outputs)``).

    Returns:
      the trainer's summary (``Trainer.summary``).
    """
    validate_config(config)
    config.data.data_dir = os.path.abspath(config.data.data_dir or builders.default_data_dir())
    model = model if model is not None else networks.create_model(config)
    data = data if data is not None else make_source(config)
    evaluators = build_evaluators(config, model, data, test=evaluate_test, extra_outputs=eval_outputs) \
        if evaluate else {}
    if evaluate and not data.has_validation and jax.process_index() == 0:
        print("warning: no validation part (data.val_fraction = 0): no validation-best checkpoint is kept; the "
              "test part is evaluated for the logs only, and the last checkpoint is the one to report",
              file=sys.stderr)
    return loop.train(config, workdir, model, data, evaluators, resume=resume,
                      resume_from_previous=resume_from_previous, progress=progress, tensorboard=tensorboard,
                      callbacks=callbacks)


def check_selection(config: ml_collections.ConfigDict, select: str) -> None:
    """Raises UserError, before any training, for an unknown ``select`` or ``"val_best"`` without a validation
    part (``data.val_fraction`` = 0)."""
    if select not in SELECTIONS:
        raise UserError(f"checkpoint selection {select!r}: choose one of {', '.join(SELECTIONS)}")
    if select == VAL_BEST and not float(config.data.get("val_fraction", 0) or 0) > 0:
        raise UserError(f"checkpoint selection {VAL_BEST!r} needs a validation part: data.val_fraction = "
                        f"{config.data.get('val_fraction', 0)}; set it above 0 or report the last checkpoint")


def select_checkpoint(workdir: str | os.PathLike, select: str = LAST) -> str:
    """The checkpoint of a training work directory that is reported: its last (``"last"``) or its
    validation-best (``"val_best"``; a CheckpointError when the run kept none)."""
    if select not in SELECTIONS:
        raise UserError(f"checkpoint selection {select!r}: choose one of {', '.join(SELECTIONS)}")
    return checkpoints.resolve_checkpoint(workdir, best=select == VAL_BEST)


def evaluate_selected(workdir: str | os.PathLike, select: str = LAST, **kwargs: Any) -> dict[str, Any]:
    """Evaluates the selected checkpoint of a run (``select_checkpoint``; a checkpoint directory is itself) with
    ``evaluation.evaluate_checkpoint(path, **kwargs)`` (data overrides, ``apply_fn``, ``on_batch``), on the test
    part of its fold unless ``kwargs`` say otherwise. The result records ``checkpoint`` (the path) and
    ``selection``."""
    result = evaluation.evaluate_checkpoint(select_checkpoint(workdir, select), **kwargs)
    result["selection"] = select
    return result
