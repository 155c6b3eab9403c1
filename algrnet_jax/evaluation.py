"""The evaluation loop: model variables + eval batches -> a result dict (tables: ``algrnet_jax.reporting``).

``evaluate_variables(config, variables)`` runs one jitted eval step (traced once: eval batches are
padded to a fixed size and carry a ``mask``) over the test part of ``config.data.fold`` (or the batches
given, e.g. a ``DataSource``'s validation part) and reports:

- AU task: per-AU F1 and accuracy of the local (per-AU branch), integrated and final (averaged)
  predictions, the trivial all-present predictor on the same frames, and landmark error / failure rate;
- paralysis task: per-grade one-vs-rest F1, accuracy and confusion matrix of the local (mean of the
  per-region heads), integrated and final (averaged) grade predictions, and landmark error.

Every F1 / accuracy / error in a result dict is a PERCENTAGE, as in the paper's tables. Top-level
``result["mean_f1"]`` is the headline number (final AU prediction, or grades); on the validation part it
selects the trainer's best checkpoint (``make_evaluator`` builds the trainer's evaluators).
``evaluate_checkpoint`` is the one way a saved checkpoint is evaluated (``algrnet eval`` and the runs'
``experiment.evaluate_selected``); it goes through the inference module (``inference.Predictor.from_checkpoint``):
layers point one way, the trainer never imports this module and this module never imports the trainer loop.
"""
from __future__ import annotations

import copy
import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from algrnet_jax import inference, metrics, tasks
from algrnet_jax.configs.validate import validate_config
from algrnet_jax.errors import UserError
from algrnet_jax.models import networks
from algrnet_jax.training import parallel
from data_pipelines import builders, pipeline, records

# Model outputs the evaluator reads (docs/design.md): every task's predictions and the landmarks; anything
# else is dropped inside the jitted step.
_EVAL_OUTPUTS = tuple(dict.fromkeys(
    [p.output for t in tasks.TASKS.values() for p in t.predictions] + ["landmarks"]))
# (result key, model output, row label) of each task's predictions (tasks.Task.predictions).
AU_PREDICTIONS = tuple((p.key, p.output, p.label) for p in tasks.get_task("au").predictions)
GRADE_PREDICTIONS = tuple((p.key, p.output, p.label) for p in tasks.get_task("paralysis").predictions)
TRIVIAL = tasks.TRIVIAL

Batch = Mapping[str, Any]
ApplyFn = Callable[[Any, Any], Mapping[str, Any]]


class EvalDataError(UserError, ValueError):
    """The data to evaluate on is missing or does not fit the checkpoint; the message says what to do."""


class NonFiniteOutputError(UserError, ValueError):
    """The model's outputs hold NaN or inf: no metric is computed from them (an F1 of 0 or a landmark failure
    rate of 0% would be a guess presented as a result)."""


# ----------------------------------------------------------------------------------------------
# The eval step


def eval_forward(model: Any, extra_outputs: tuple[str, ...] = ()) -> ApplyFn:
    """The jitted eval-mode forward of a (hashable) model keeping the outputs we read (plus ``extra_outputs``):
    images [B, C, C, 3] -> dict. One cache with the Predictor's (``inference.jitted_forward``)."""
    return inference.jitted_forward(model, _EVAL_OUTPUTS + tuple(extra_outputs))


def make_eval_step(config: Any, extra_outputs: Sequence[str] = ()) -> ApplyFn:
    """The jitted eval step of ``config``'s model (cached, so repeated evaluations do not re-trace).

    ``extra_outputs`` names model outputs to return besides the ones the metrics need (e.g.
    ``("initial_au_maps", "refined_au_maps")`` for plots).
    """
    return eval_forward(networks.create_model(config), tuple(extra_outputs))


def make_evaluator(config: Any, model: Any, batches: Callable[[], Iterable[Batch]], part: str,
                   extra_outputs: Sequence[str] = ()) -> Callable[[Any], dict[str, Any]]:
    """A trainer's evaluator: ``variables -> evaluate_variables`` result on ``batches()`` (a fresh iterable of
    padded eval batches per call), with ``model``'s eval forward jitted once; the result's ``part`` says which
    part of the data (``"val"`` selects the best checkpoint, ``"test"`` is reported only)."""
    apply_fn = eval_forward(model, tuple(extra_outputs))

    def evaluate(variables: Any) -> dict[str, Any]:
        result = evaluate_variables(config, variables, batches=batches(), apply_fn=apply_fn)
        result["part"] = part
        return result

    return evaluate


def _to_numpy(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in tree.items()}


def evaluate_variables(config: Any, variables: Any, *, split: str | None = None,
                       batches: Iterable[Batch] | None = None, apply_fn: ApplyFn | None = None,
                       max_batches: int | None = None,
                       on_batch: Callable[[Batch, dict[str, np.ndarray]], None] | None = None) -> dict[str, Any]:
    """Evaluates model variables on a test split.

    Args:
      config: full experiment config (``get_config``); ``config.data`` picks the dataset and fold.
      variables: ``{"params": ..., "batch_stats": ...}`` of the model.
      split: tfds split expression; None = the test part of ``config.data.fold``.
      batches: optional iterable of batches (docs/design.md) replacing the data source's
        (``make_source(config, training=split == "val").eval_batches(split or "test")``).
      apply_fn: optional ``(variables, images) -> outputs``; default the jitted model of ``config``.
      max_batches: stop after this many batches (smoke runs).
      on_batch: called with each batch and its outputs (numpy) after they are counted.

    Returns:
      a JSON-serialisable dict (percentages); see the module docstring.
    """
    task = tasks.get_task(config)
    if batches is None:
        batches = pipeline.make_source(config, training=split == "val").eval_batches(split or "test")
    apply_fn = apply_fn or make_eval_step(config)
    predictions = task.new_metrics(config)
    landmarks = metrics.LandmarkMetrics()
    frames = 0
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        out = _to_numpy(apply_fn(variables, batch["image"]))
        mask = np.asarray(batch["mask"])
        try:   # the real frames only (padding rows are dropped by the mask anyway)
            inference.check_finite({k: v[mask > 0] for k, v in out.items()}, f"eval batch {i}")
        except ValueError as e:
            raise NonFiniteOutputError(f"{e}; no metric is computed from non-finite outputs") from e
        frames += int(np.sum(mask > 0))
        predictions.update(out, np.asarray(batch["labels"]), mask)
        landmarks.update(out["landmarks"], batch["landmarks"], batch["interocular"], mask)
        if on_batch is not None:
            on_batch(batch, out)
    if frames == 0:
        raise ValueError(f"no test frames for dataset {config.data.dataset!r} "
                         f"({config.data.builder_config!r}) fold {config.data.fold}, split {split!r}")

    result: dict[str, Any] = {
        "model": config.name, "size": config.size, "task": task.name, "dataset": config.data.dataset,
        "builder_config": config.data.builder_config, "label_set": config.label_set,
        "fold": int(config.data.fold), "split": split, "frames": frames,
        "landmarks": {"mean_error_pct": 100 * landmarks.mean_error(),
                      "failure_rate_pct": 100 * landmarks.failure_rate()},
    }
    result.update(task.summarize(config, predictions))
    return result


def check_eval_data(config: Any, split: str | None = None) -> str:
    """Checks, before any work, that ``config.data`` names a built dataset with ``split`` (default the fold's
    test part), non-empty, whose labels hold the config's AUs. Returns the dataset's label set.

    Raises:
      EvalDataError: naming the data dir, dataset, split or AUs, and what to do.
    """
    d = config.data
    try:
        builder = pipeline.dataset_builder(config)
    except FileNotFoundError as e:
        raise EvalDataError(f"{e} (or pass --data-dir / --dataset / --builder-config)") from e
    except ValueError as e:            # unknown dataset or builder config
        raise EvalDataError(str(e)) from e
    split = split or pipeline.split_for(config, False)
    where = f"{d.dataset}/{builder.builder_config.name} in {builder.data_dir}"
    try:
        n = int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, AssertionError) as e:
        raise EvalDataError(f"split {split!r} is not in {where} (its splits: "
                            f"{', '.join(builder.info.splits) or 'none'}); choose --fold or --split among them") from e
    if n == 0:
        raise EvalDataError(f"split {split!r} of {where} is empty")
    label_set = records.label_set(builder)
    try:
        pipeline.label_columns(config, label_set)
    except ValueError as e:
        raise EvalDataError(f"{where}: {e}; the checkpoint cannot be evaluated on these labels") from e
    return label_set


def evaluate_checkpoint(path: str | pathlib.Path, *, dataset: str | None = None,
                        builder_config: str | None = None, fold: int | None = None,
                        data_dir: str | None = None, split: str | None = None,
                        eval_batch_size: int | None = None, apply_fn: ApplyFn | None = None,
                        on_batch: Callable[[Batch, dict[str, np.ndarray]], None] | None = None) -> dict[str, Any]:
    """Loads a checkpoint (``inference.Predictor.from_checkpoint``: a checkpoint directory, or a training work
    directory's LAST checkpoint) and evaluates it on the test part; None keeps the checkpoint's setting.
    ``apply_fn`` (default: the Predictor's jitted forward) and ``on_batch`` as in :func:`evaluate_variables`.

    The config and the data are checked before the model runs (``validate_config``, ``check_eval_data``).
    The result records what the checkpoint was trained on (``trained_on``), the evaluated data's label set
    (``data_label_set``, which picks the paper table) and ``warnings`` when the two differ.
    """
    predictor = inference.Predictor.from_checkpoint(path, backend="jax")    # evaluation runs the JAX forward
    config = copy.deepcopy(predictor.config)
    # The trainer's placement (replicated over the mesh): its evaluators' jitted forward is reused, not compiled
    # again for another sharding.
    variables = jax.device_put(predictor.variables, parallel.replicated(parallel.make_mesh()))
    trained_on = {"dataset": config.data.dataset, "builder_config": config.data.builder_config,
                  "label_set": config.label_set}
    if dataset is not None and builder_config is None and dataset != config.data.dataset:
        try:                               # the other dataset's default config, not the checkpoint's
            builder_config = builders.default_builder_config(dataset, config)
        except ValueError as e:
            raise EvalDataError(str(e)) from e
    for key, value in (("dataset", dataset), ("builder_config", builder_config), ("fold", fold),
                       ("data_dir", data_dir), ("eval_batch_size", eval_batch_size)):
        if value is not None:
            config.data[key] = value
    validate_config(config, f"{path} (checkpoint config with the eval flags)")
    data_label_set = check_eval_data(config, split)
    result = evaluate_variables(config, variables, split=split, apply_fn=apply_fn or eval_forward(predictor.model),
                                on_batch=on_batch)
    result["checkpoint"] = str(path)
    result["trained_on"] = trained_on
    result["data_label_set"] = data_label_set
    warnings = []
    if data_label_set != trained_on["label_set"] or config.data.dataset != trained_on["dataset"]:
        warnings.append(f"the checkpoint was trained on {trained_on['dataset']}/{trained_on['builder_config']} "
                        f"(label set {trained_on['label_set']}) and is evaluated on {config.data.dataset}/"
                        f"{config.data.builder_config} (label set {data_label_set}): the tables are those of the "
                        "evaluated data")
    result["warnings"] = warnings
    return result
