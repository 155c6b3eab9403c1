"""``validate_config(config)``: every constrained field of an experiment config checked before any work.

Train, eval and the experiment runners call it first, so a bad value (``data.batch_size=0``,
``train.num_epochs=-1``, ...) stops the command at once with one message listing every bad field,
its value, the rule and how to fix it, instead of a traceback (or an epoch of lost work) later.
"""
from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

import ml_collections

from algrnet_jax import au_sets, tasks
from algrnet_jax.errors import UserError

ARCHS = ("jaanet", "algrnet")
TASKS = tuple(tasks.TASKS)   # the registered tasks (algrnet_jax.tasks)


class ConfigError(UserError, ValueError):
    """A config field has a value outside its allowed range; the message lists every such field."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    """A number that is neither inf nor NaN (``--config.train.lr=inf`` parses as a float)."""
    return _is_num(v) and math.isfinite(v)


def _pos_int(v: Any) -> bool:
    return _is_int(v) and v >= 1


# Tables of allowed names, each in the module that uses it: "module:attribute" (a dict's keys, a tuple, or a
# function returning the names). They are read on first use, so that importing this neutral module loads
# neither the model (jax) nor the data package.
TABLES = {
    "relation": "algrnet_jax.models.relations:relation_names",
    "dtype": "algrnet_jax.models.networks:COMPUTE_DTYPES",
    "param_dtype": "algrnet_jax.models.networks:PARAM_DTYPES",
    "conv_impl": "algrnet_jax.models.layers:CONV_IMPLS",
    "offset_unit": "algrnet_jax.models.networks:OFFSET_UNITS",
    "dataset": "data_pipelines.builders:REGISTRY",
}


def names(table: str) -> tuple[str, ...]:
    """The names the ``TABLES`` entry ``table`` allows, e.g. ``names("dataset")`` = the registered datasets."""
    module, attribute = TABLES[table].split(":")
    value = getattr(importlib.import_module(module), attribute)
    return tuple(value() if callable(value) else value)


def _one_of(table: str) -> tuple[Callable[[Any], bool], Callable[[], str]]:
    """(predicate, rule in words) of a field whose value is a name of the table ``table``."""
    return (lambda v: v in names(table)), (lambda: f"one of {', '.join(names(table))}")


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
    ("model.relation", *_one_of("relation")),
    ("model.fusion_refine", lambda v: isinstance(v, bool), "true or false"),
    ("model.fusion_refine_rescale", lambda v: isinstance(v, bool), "true or false"),
    ("model.local_within_region", lambda v: isinstance(v, bool), "true or false"),
    ("model.num_grades", lambda v: v == len(au_sets.GRADES), f"{len(au_sets.GRADES)} (the paralysis grades)"),
    ("model.num_regions", _pos_int, "a positive integer"),
    ("model.conv_impl", *_one_of("conv_impl")),
    ("model.offset_unit", *_one_of("offset_unit")),
    ("model.dtype", *_one_of("dtype")),
    ("model.param_dtype", *_one_of("param_dtype")),
    ("data.dataset", *_one_of("dataset")),
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
    ("train.lr", lambda v: _finite(v) and v > 0, "a finite number > 0"),
    ("train.lr_decay", lambda v: _is_num(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("train.lr_decay_every_epochs", _pos_int, "a positive integer"),
    ("train.momentum", lambda v: _is_num(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("train.nesterov", lambda v: isinstance(v, bool), "true or false"),
    ("train.weight_decay", lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    ("train.lambda_align", lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
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
    if present and _pos_int(crop) and crop % 16:
        problems.append(f"crop_size = {crop} must be divisible by 16 (the region layers' 4x4 and 8x8 cell grids "
                        "at crop / 4)")
    _, unit = lookup(config, "model.unit")
    _, hidden = lookup(config, "model.lstm_hidden")
    _, relation = lookup(config, "model.relation")
    if relation in names("relation") and relation != "none" and _pos_int(unit) and _pos_int(hidden) \
            and hidden != 8 * unit:
        problems.append(f"model.lstm_hidden = {hidden} must equal 8 * model.unit = {8 * unit} "
                        "(the skip connection adds region features and LSTM states)")
    _, arch = lookup(config, "model.arch")
    _, adaptive = lookup(config, "model.adaptive")
    _, fusion_refine = lookup(config, "model.fusion_refine")
    if arch == "jaanet" and (adaptive or relation not in (None, "none") or fusion_refine):
        problems.append(f"model.arch = 'jaanet' has no adaptive regions, relations or fusion & refining: set "
                        f"model.adaptive = False, model.relation = 'none', model.fusion_refine = False")
    present, aus = lookup(config, "aus")
    _, label_set = lookup(config, "label_set")
    _, task = lookup(config, "model.task")
    _, regions = lookup(config, "model.num_regions")
    if task in tasks.TASKS and tasks.get_task(task).region_scheme == "muscle" and _pos_int(regions) \
            and regions != len(au_sets.PARALYSIS_REGIONS):
        problems.append(f"model.num_regions = {regions} must be {len(au_sets.PARALYSIS_REGIONS)}, the number of "
                        "muscle regions in au_sets.PARALYSIS_REGIONS")
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
