"""Named experiment configurations: one code file per config, each with ``get_config(arg)``.

Every module of this package that defines ``get_config(arg: str | None)`` is a named config, registered under
its file name (``NAMES``); ``arg`` names the size and optionally the AU label set, comma separated
(``"tiny"``, ``"small,disfa"``; ``configs/common.py``). The configs:

- ``jaanet.py``: the JAA-Net baseline (docs/model.md §3).
- ``algrnet.py``: full ALGRNet (docs/model.md §4).
- ablations of the paper's Tables V/VI, each a change of ``algrnet``: ``wo_full.py`` (no Ada, no S-B, no F&R),
  ``wo_fr.py`` (no fusion & refining), ``wo_sb.py`` (no skip-BiLSTM: s_t = v_t), ``w_bi.py`` (plain
  ConvBiLSTM instead of skip-BiLSTM), ``wo_ada.py`` (fixed regions: scale 0.14, no offsets).
- ``algrnet_paralysis.py``: 12 muscle regions and a 4-way grade head.

Sizes (``SIZES``): ``paper`` (crop 176, unit 8, hidden 64, every AU of the label set), ``small`` (crop 64,
unit 2, hidden 16, 4 AUs) and ``tiny`` (crop 32, unit 1, hidden 8, 3 AUs): the same code paths at test size.

``get_config(name, size, label_set)`` is the registry entry point; :func:`from_args` adds command-line
overrides (``overrides.py``: ``--config.train.lr=0.02`` / ``--set train.lr=0.02``, typed by the field).
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import ml_collections

from algrnet_jax import tasks
from algrnet_jax.configs.common import DEFAULT_LABEL_SET, DEFAULT_SIZE, SIZES, Size
from algrnet_jax.configs.overrides import (OverrideError, add_override_arguments, apply_override, apply_overrides,
                                           parse_args)
from algrnet_jax.configs.validate import ConfigError

__all__ = ["NAMES", "ABLATION_ROWS", "SIZES", "Size", "DELETED_FIELDS", "ADDED_FIELDS", "get_config", "from_args",
           "num_outputs", "drop_deleted_fields", "fill_added_fields", "saved_as_current", "apply_override", "apply_overrides",
           "add_override_arguments", "parse_args", "ConfigError", "OverrideError"]


def _registry() -> dict[str, ModuleType]:
    """name -> module of every module of this package that defines ``get_config`` (the file is the name)."""
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if callable(getattr(module, "get_config", None)):
            found[info.name] = module
    return found


_MODULES = _registry()
_CONFIGS: dict[str, Callable[[str | None], ml_collections.ConfigDict]] = {
    name: module.get_config for name, module in _MODULES.items()}
NAMES: tuple[str, ...] = tuple(_CONFIGS)
# The variants of the paper's ablation (Tables V / VI): config name -> the paper's row name, in the paper's order
# (``PAPER_ABLATION_ROW`` of the config files).
ABLATION_ROWS: dict[str, str] = {
    name: module.PAPER_ABLATION_ROW[1]
    for name, module in sorted(((n, m) for n, m in _MODULES.items() if hasattr(m, "PAPER_ABLATION_ROW")),
                               key=lambda item: item[1].PAPER_ABLATION_ROW[0])}

# Fields deleted from the configs; configs saved before (checkpoints) may still hold them.
# data.shuffle_buffer: never read (the pipeline shuffles the whole index with data.shuffle_seed).
DELETED_FIELDS: tuple[str, ...] = ("data.shuffle_buffer",)
# Fields added to the configs, with the value that reproduces what configs saved before them did: a saved config
# without one of them (an older checkpoint) resumes and loads as if it held that value.
ADDED_FIELDS: dict[str, Any] = {"model.fusion_refine_rescale": False, "model.local_within_region": False,
                                "model.offset_unit": "pixel"}


def get_config(name: str = "algrnet", size: str = DEFAULT_SIZE,
               label_set: str = DEFAULT_LABEL_SET) -> ml_collections.ConfigDict:
    """Returns the full config of a named model at a given size.

    Args:
      name: one of NAMES (a file ``configs/<name>.py``).
      size: one of SIZES: "paper", "small" or "tiny".
      label_set: an AU label set of ``au_sets.AU_SETS`` ("bp4d": 12 AUs, "disfa": 8); ignored by the paralysis task.

    Raises:
      ConfigError (a UserError and a ValueError): unknown name, size or label set.
    """
    if name not in _CONFIGS:
        raise ConfigError(f"unknown config {name!r}; choose from {', '.join(NAMES)}")
    if size not in SIZES:
        raise ConfigError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    return _CONFIGS[name](f"{size},{label_set}")


def from_args(name: str, size: str = DEFAULT_SIZE, label_set: str = DEFAULT_LABEL_SET,
              overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """``get_config(name, size, label_set)`` with ``key=value`` overrides applied in order (typed by the field)."""
    return apply_overrides(get_config(name, size, label_set), overrides)


def _edit_saved(saved: Mapping[str, Any], keys: Any, edit: Callable[[dict, str, str], Any]) -> dict[str, Any]:
    """A copy of a saved config dict with ``edit(section, leaf, key)`` applied to the section of each dotted key."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in saved.items()}
    for key in keys:
        *sections, leaf = key.split(".")
        node: Any = out
        for part in sections:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            edit(node, leaf, key)
    return out


def drop_deleted_fields(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config dict (e.g. a checkpoint's) without the :data:`DELETED_FIELDS` it may hold; a copy."""
    return _edit_saved(saved, DELETED_FIELDS, lambda section, leaf, key: section.pop(leaf, None))


def fill_added_fields(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config dict with every :data:`ADDED_FIELDS` entry it lacks set to its old value; a copy."""
    return _edit_saved(saved, ADDED_FIELDS, lambda section, leaf, key: section.setdefault(leaf, ADDED_FIELDS[key]))


def saved_as_current(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config dict (a checkpoint's) as today's configs hold it: without :data:`DELETED_FIELDS`, with
    every :data:`ADDED_FIELDS` entry it lacks at its old value; a copy. The one place where configs saved by
    older versions are brought up to date (``checkpoints.config_from_dict``, ``training.loop.check_resumable``)."""
    return fill_added_fields(drop_deleted_fields(saved))


def num_outputs(config: ml_collections.ConfigDict) -> int:
    """Number of AU (or paralysis-region) branches of a config (``tasks.Task.num_outputs``)."""
    return tasks.get_task(config).num_outputs(config)
