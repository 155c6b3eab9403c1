"""The arguments that choose an experiment config, shared by ``algrnet train`` and the experiment runners.

Every choice list comes from its registry: ``--config`` from ``configs.NAMES`` (the config files),
``--size`` from ``configs.SIZES``, ``--label-set`` from ``au_sets.AU_SETS``, ``--dataset`` from
``data_pipelines.builders.REGISTRY`` and the folds from ``data_pipelines.builders.parts``. Overrides are
``configs.add_override_arguments`` (``--config.KEY=VALUE`` / ``--set KEY=VALUE``); the config is
:func:`config_from_args`: the named config, the data flags written as overrides, then the user's overrides,
all through ``configs.apply_overrides`` (one mechanism, typed by the field).
"""
from __future__ import annotations

import argparse

import ml_collections

from algrnet_jax import au_sets, configs
from data_pipelines import builders
from data_pipelines.builders import parts

FOLDS: tuple[int, ...] = tuple(range(1, parts.NUM_PARTS + 1))
DATASETS: tuple[str, ...] = tuple(builders.REGISTRY)


def fold_help() -> str:
    """Help text of a fold argument."""
    return f"test part ({', '.join(map(str, FOLDS))}); train on the others"


def add_config_arguments(parser: argparse.ArgumentParser, *, config: str | None = None, size: str = "paper",
                         dataset: str | None = None, data_dir: str | None = None) -> None:
    """Adds --config, --size, --label-set, --dataset, --builder-config, --data-dir and the overrides.

    Args:
      config, dataset: defaults; None makes the argument required.
      size: default size.
      data_dir: default of --data-dir (None keeps the config's "", i.e. $ALGRNET_DATA_DIR or ./data/tfds).
    """
    parser.add_argument("--config", default=config, required=config is None, choices=configs.NAMES,
                        metavar="NAME", help=f"named config: {', '.join(configs.NAMES)}"
                                             + (f" (default {config})" if config else ""))
    parser.add_argument("--size", default=size, choices=tuple(configs.SIZES),
                        help=f"model/input size (default {size}): "
                             + "; ".join(f"{k}: crop {s.crop_size}, unit {s.unit}" for k, s in configs.SIZES.items()))
    parser.add_argument("--label-set", default=None, choices=tuple(au_sets.AU_SETS),
                        help="AU label set (default: the dataset's if it is a label set, else "
                             f"{configs.common.DEFAULT_LABEL_SET})")
    parser.add_argument("--dataset", default=dataset, required=dataset is None, choices=DATASETS,
                        help="tfds dataset" + (f" (default {dataset})" if dataset else ""))
    parser.add_argument("--builder-config", default=None,
                        help="tfds builder config (default: <label set>_small for synth_au, the builder's default "
                             "for the real sets)")
    parser.add_argument("--data-dir", default=data_dir,
                        help="tfds data directory (default $ALGRNET_DATA_DIR or ./data/tfds)")
    configs.add_override_arguments(parser)


def label_set_of(args: argparse.Namespace) -> str:
    """--label-set, else the dataset's name if it is a label set, else the default label set."""
    if args.label_set:
        return args.label_set
    return args.dataset if args.dataset in au_sets.AU_SETS else configs.common.DEFAULT_LABEL_SET


def config_from_args(args: argparse.Namespace, name: str | None = None) -> ml_collections.ConfigDict:
    """The config of ``add_config_arguments`` arguments (``name`` replaces ``--config``; ``args.fold`` if present).

    Raises:
      UserError: a bad override (unknown key, value the field cannot hold).
    """
    config = configs.get_config(name or args.config, args.size, label_set_of(args))
    builder_config = args.builder_config or builders.default_builder_config(args.dataset, config)
    return configs.apply_overrides(config, [*data_flags(args, builder_config), *args.overrides])


def data_flags(args: argparse.Namespace, builder_config: str | None) -> list[str]:
    """The data arguments as ``key=value`` overrides: dataset, builder config (if not None), data dir (if given)
    and fold (if the parser has one)."""
    flags = [f"data.dataset={args.dataset}"]
    if builder_config is not None:
        flags.append(f"data.builder_config={builder_config}")
    if args.data_dir is not None:
        flags.append(f"data.data_dir={args.data_dir}")
    if getattr(args, "fold", None) is not None:
        flags.append(f"data.fold={args.fold}")
    return flags
