"""The paper's experimental settings for BP4D and DISFA, and command-line config overrides.

The numbers themselves have one home, ``algrnet_jax.configs.get_config(size="paper")`` (crop 176 from
200, batch 8, 20 epochs, SGD Nesterov 0.9, weight decay 5e-4, lr 0.01 halved every 2 epochs);
``paper_config`` only points the data section at a real data set and fold, and ``paper_differences``
checks a config against the paper's training block (``paper_tables.json``), so a drifted default is
caught by a test rather than by a reviewer.

Example (needs the licensed data built with ``algrnet data build bp4d ...``)::

    python -m experiments.cross_validation --dataset bp4d --paper --workdir runs/bp4d
"""
from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

import ml_collections

from algrnet_jax.configs import MODEL_NAMES, get_config
from algrnet_jax.evaluation import paper_tables

PAPER_DATASETS = ("bp4d", "disfa")


def paper_config(dataset: str, name: str = "algrnet", *, fold: int = 1, data_dir: str = "",
                 builder_config: str | None = None) -> ml_collections.ConfigDict:
    """The paper's setting of model ``name`` on ``dataset`` ("bp4d" or "disfa"), test part ``fold``.

    Args:
      builder_config: tfds builder config of the real data set; None keeps the builder's default
        (the empty string in ``config.data.builder_config``).
    """
    if dataset not in PAPER_DATASETS:
        raise ValueError(f"paper settings exist for {PAPER_DATASETS}, not {dataset!r}")
    if name not in MODEL_NAMES or name == "algrnet_paralysis":
        raise ValueError(f"{name!r} is not an AU model; choose from {[m for m in MODEL_NAMES if m != 'algrnet_paralysis']}")
    config = get_config(name, size="paper", label_set=dataset)
    config.data.dataset = dataset
    config.data.builder_config = builder_config or ""
    config.data.fold = fold
    config.data.data_dir = data_dir
    return config


def paper_differences(config: ml_collections.ConfigDict) -> list[str]:
    """Settings of ``config`` that differ from the paper's training block (empty = the paper's)."""
    paper = paper_tables()["training"]
    ours = {
        "lr": config.train.lr, "lr_decay": config.train.lr_decay,
        "lr_decay_every_epochs": config.train.lr_decay_every_epochs, "epochs": config.train.num_epochs,
        "nesterov_momentum": config.train.momentum if config.train.nesterov else 0.0,
        "weight_decay": config.train.weight_decay, "crop": config.crop_size, "aligned_size": config.aligned_size,
        "convlstm_hidden": config.model.lstm_hidden, "lambda_align": config.train.lambda_align,
        "fixed_region_scale_without_ada": config.model.map_scale,
    }
    return [f"{k}: ours {v!r}, paper {paper[k]!r}" for k, v in ours.items() if v != paper[k]]


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Applies ``section.key=value`` strings (values parsed as Python literals, else kept as strings).

    Example: ``["train.num_epochs=2", "data.batch_size=16", "aus=(1, 2, 4)"]``. Unknown keys are an error.
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value: Any = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        *sections, leaf = key.strip().split(".")
        parent = config
        for part in sections:
            if part not in parent or not isinstance(parent[part], ml_collections.ConfigDict):
                raise ValueError(f"override {item!r}: no config section {part!r}")
            parent = parent[part]
        if leaf not in parent:
            raise ValueError(f"override {item!r}: unknown config key {key!r}")
        if isinstance(parent[leaf], tuple) and isinstance(value, list):
            value = tuple(value)
        parent[leaf] = value
    return config
