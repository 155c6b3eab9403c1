"""The paper's experimental settings for BP4D and DISFA.

The numbers themselves have one home, ``algrnet_jax.configs.get_config(size="paper")`` (crop 176 from
200, batch 8, 20 epochs, SGD Nesterov 0.9, weight decay 5e-4, lr 0.01 halved every 2 epochs);
``paper_config`` only points the data section at a real data set and fold, and ``paper_differences``
checks a config against the paper's training block (``paper_tables.json``), so a drifted default is
caught by a test rather than by a reviewer.

Example (needs the licensed data built with ``algrnet data build bp4d ...``)::

    python -m experiments.cross_validation --dataset bp4d --paper --workdir runs/bp4d
"""
from __future__ import annotations

import ml_collections

from algrnet_jax import configs
from algrnet_jax.reporting import paper_tables

PAPER_DATASETS = ("bp4d", "disfa")


def paper_config(dataset: str, name: str = "algrnet", *, fold: int = 1, data_dir: str = "",
                 builder_config: str | None = None) -> ml_collections.ConfigDict:
    """The paper's setting of model ``name`` on ``dataset`` ("bp4d" or "disfa"), test part ``fold``.

    Args:
      builder_config: tfds builder config of the real data set; None keeps the builder's default
        (the empty string in ``config.data.builder_config``).
    """
    if dataset not in PAPER_DATASETS:
        raise configs.ConfigError(f"paper settings exist for {', '.join(PAPER_DATASETS)}, not {dataset!r}")
    au_models = [m for m in configs.NAMES if configs.get_config(m).model.task == "au"]
    if name not in au_models:
        raise configs.ConfigError(f"{name!r} is not an AU model; choose from {', '.join(au_models)}")
    return configs.from_args(name, "paper", dataset, [
        f"data.dataset={dataset}", f"data.builder_config={builder_config or ''}", f"data.fold={fold}",
        f"data.data_dir={data_dir}"])


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
