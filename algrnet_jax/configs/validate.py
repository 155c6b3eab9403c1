"""``validate_config(config)``: every constrained field of an experiment config checked before any work.

Train, eval and the experiment runners call it first, so a bad value (``data.batch_size=0``,
``train.num_epochs=-1``, ...) stops the command at once with one message listing every bad field,
its value, the rule and how to fix it, instead of a traceback (or an epoch of lost work) later.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_collections

from algrnet_jax import au_sets, tasks
from algrnet_jax.errors import UserError

ARCHS = ("jaanet", "algrnet")
TASKS = tuple(tasks.TASKS)   # the registered tasks (algrnet_jax.tasks)
# The dataset registry is data_pipelines.builders.REGISTRY, which this neutral module must not import;
# tests/test_configs.py checks that the two agree.
DATASETS = ("synth_au", "bp4d", "disfa", "fpara")


class ConfigError(UserError, ValueError):
    """A config field has a value outside its allowed range; the message lists every such field."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _pos_int(v: Any) -> bool:
    return _is_int(v) and v >= 1


def _model_names(table: str) -> tuple[str, ...]:
    """The names the model accepts, from its tables in models/networks.py (``RELATIONS``, ``COMPUTE_DTYPES``,
    ``PARAM_DTYPES``); imported on first use, so that importing this module stays cheap."""
    from algrnet_jax.models import networks

    return tuple(getattr(networks, table))


def _one_of(table: str) -> tuple[Callable[[Any], bool], Callable[[], str]]:
    """(predicate, rule in words) of a field whose value is a name of the model table ``table``."""
    return (lambda v: v in _model_names(table)), (lambda: f"one of {', '.join(_model_names(table))}")


# (key, predicate, rule in words or a function giving it). Keys absent from a config (older checkpoints) are skipped.
_RULES: tuple[tuple[str, Callable[[Any], bool], str | Callable[[], str]], ...] = (
    ("crop_size", _pos_int, "a positive integer"),
    ("aligned_size", _pos_int, "a positive integer"),
    ("label_set", lambda v: v in au_sets.AU_SETS, f"one of {', '.join(au_sets.AU_SETS)}"),
    ("model.arch", lambda v: v in ARCHS, f"one of {', '.join(ARCHS)}"),
    ("model.task", lambda v: v in TASKS, f"one of {', '.join(TASKS)}"),
    ("model.unit", _pos_int, "a positive integer"),
    ("model.lstm_hidden", _pos_int, "a positive integer"),
    ("model.map_margin", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("model.map_scale", lambda v: _is_num(v) and 0 < v < 1, "a number in (0, 1)"),
    ("model.adaptive", lambda v: isinstance(v, bool), "true or false"),
    ("model.relation", *_one_of("RELATIONS")),
    ("model.fusion_refine", lambda v: isinstance(v, bool), "true or false"),
    ("model.num_grades", lambda v: v == len(au_sets.GRADES), f"{len(au_sets.GRADES)} (the paralysis grades)"),
    ("model.num_regions", _pos_int, "a positive integer"),
    ("model.dtype", *_one_of("COMPUTE_DTYPES")),
    ("model.param_dtype", *_one_of("PARAM_DTYPES")),
    ("data.dataset", lambda v: v in DATASETS, f"one of {', '.join(DATASETS)}"),
    ("data.builder_config", lambda v: isinstance(v, str), "a string"),
    ("data.data_dir", lambda v: isinstance(v, str), "a string (\"\" = $ALGRNET_DATA_DIR or ./data/tfds)"),
    ("data.fold", lambda v: _is_int(v) and 1 <= v <= 3, "1, 2 or 3"),
    ("data.batch_size", _pos_int, "a positive integer"),
    ("data.eval_batch_size", _pos_int, "a positive integer"),
    ("data.shuffle_seed", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("data.val_fraction", lambda v: _is_num(v) and 0 <= v < 1, "a number in [0, 1) (0 = no validation split)"),
    ("data.val_seed", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("data.prefetch", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("data.skip_bad", lambda v: isinstance(v, bool), "true or false"),
    ("train.num_epochs", _pos_int, "a positive integer"),
    ("train.lr", lambda v: _is_num(v) and v > 0, "a number > 0"),
    ("train.lr_decay", lambda v: _is_num(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("train.lr_decay_every_epochs", _pos_int, "a positive integer"),
    ("train.momentum", lambda v: _is_num(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("train.nesterov", lambda v: isinstance(v, bool), "true or false"),
    ("train.weight_decay", lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    ("train.lambda_align", lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    ("train.seed", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("train.log_every_steps", _pos_int, "a positive integer"),
    ("train.checkpoint_every_steps", _pos_int, "a positive integer"),
    ("train.keep_checkpoints", _pos_int, "a positive integer"),
    ("train.max_steps", _is_int, "an integer (> 0 stops early; <= 0: no limit)"),
)


def lookup(config: Any, key: str) -> tuple[bool, Any]:
    """(whether the dotted ``key`` exists in ``config``, its value or None)."""
    node = config
    for part in key.split("."):
        try:
            node = node[part]
        except (KeyError, AttributeError, TypeError):
            return False, None
    return True, node


def config_problems(config: ml_collections.ConfigDict) -> list[str]:
    """Every rule a config breaks, one line each: ``key = value: must be ...``."""
    problems = []
    for key, ok, rule in _RULES:
        present, value = lookup(config, key)
        if present and not ok(value):
            problems.append(f"{key} = {value!r}: must be {rule() if callable(rule) else rule}")
    # Relations between fields.
    present, crop = lookup(config, "crop_size")
    _, aligned = lookup(config, "aligned_size")
    if present and _pos_int(crop) and _pos_int(aligned) and crop > aligned:
        problems.append(f"crop_size = {crop} must not exceed aligned_size = {aligned} (the crop is taken from it)")
    _, unit = lookup(config, "model.unit")
    _, hidden = lookup(config, "model.lstm_hidden")
    _, relation = lookup(config, "model.relation")
    if relation in ("skip_bilstm", "bilstm") and _pos_int(unit) and _pos_int(hidden) and hidden != 8 * unit:
        problems.append(f"model.lstm_hidden = {hidden} must equal 8 * model.unit = {8 * unit} "
                        "(the skip connection adds region features and LSTM states)")
    present, aus = lookup(config, "aus")
    _, label_set = lookup(config, "label_set")
    _, task = lookup(config, "model.task")
    if present and task in tasks.TASKS and tasks.get_task(task).reads_aus:
        allowed = au_sets.AU_SETS.get(label_set, ())
        try:
            values = tuple(aus)
        except TypeError:
            values = None
        if not values or not all(_is_int(a) for a in values):
            problems.append(f"aus = {aus!r}: must be a non-empty tuple of AU numbers")
        elif allowed and (set(values) - set(allowed) or len(set(values)) != len(values)):
            problems.append(f"aus = {values}: must be distinct AUs of label set {label_set!r} {allowed}")
    return problems


def validate_config(config: ml_collections.ConfigDict, where: str = "config") -> ml_collections.ConfigDict:
    """Raises :class:`ConfigError` listing every bad field (and how to set it); returns the config.

    ``where`` names the source in the message (e.g. the checkpoint a config was read from).
    """
    problems = config_problems(config)
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        raise ConfigError(f"{where}: {len(problems)} invalid value{'s' if len(problems) > 1 else ''}:\n{lines}\n"
                          "fix them, e.g. with --set key=value")
    return config
