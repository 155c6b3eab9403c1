"""``algrnet data show``: write a PNG grid of one input-pipeline batch with its landmarks.

Examples::

    algrnet data show --dataset synth_au --config bp4d_tiny --out batch.png
    algrnet data show --dataset synth_au --config bp4d_small --eval --size small --out eval.png

The grid (landmarks coloured by mirror pair) is ``data_pipelines.batch_preview``; this module parses the
arguments and builds the config.
"""
from __future__ import annotations

import argparse
import os
import sys

import ml_collections

from algrnet_jax import au_sets, configs
from algrnet_jax.commands import config_args
from algrnet_jax.errors import UserError
from algrnet_jax.fileio import check_writable_dir
from data_pipelines import builders


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="synth_au", choices=config_args.DATASETS, help="tfds dataset")
    parser.add_argument("--config", default="bp4d_tiny", help="builder config, e.g. bp4d_tiny")
    parser.add_argument("--data-dir", default=None, help="tfds data directory (default: $ALGRNET_DATA_DIR or ./data/tfds)")
    parser.add_argument("--model", default="algrnet", choices=configs.NAMES, metavar="NAME",
                        help="model config whose crop/aligned sizes and AUs are used (a paralysis builder config "
                             "takes algrnet_paralysis): " + ", ".join(configs.NAMES))
    parser.add_argument("--size", default="paper", choices=tuple(configs.SIZES), help="config size (paper: crop 176)")
    parser.add_argument("--fold", type=int, default=1, choices=config_args.FOLDS, help=config_args.fold_help())
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epoch", type=int, default=0)
    parser.add_argument("--batch", type=int, default=0, help="which batch of the epoch")
    parser.add_argument("--eval", action="store_true", help="show an eval batch (centre crop) instead")
    parser.add_argument("--out", default="batch.png", help="PNG to write")
    configs.add_override_arguments(parser)


def build_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
    """The model/data config of the arguments: ``--model`` at ``--size`` with the builder config's label set
    (``algrnet_paralysis`` for a paralysis builder config), the data flags, then the overrides.

    Raises:
      UserError: unknown builder config of the dataset, or a bad override.
    """
    builder_cls = builders.builder_class(args.dataset)
    label_set = next((c.label_set for c in getattr(builder_cls, "BUILDER_CONFIGS", []) if c.name == args.config), None)
    if label_set is None:
        raise UserError(f"unknown config {args.config!r} of {args.dataset}; choose from "
                        + ", ".join(c.name for c in getattr(builder_cls, "BUILDER_CONFIGS", [])))
    if label_set in au_sets.AU_SETS:
        config = configs.get_config(args.model, args.size, label_set)
    else:
        config = configs.get_config("algrnet_paralysis", args.size)
    return configs.apply_overrides(config, [
        f"data.dataset={args.dataset}", f"data.builder_config={args.config}", f"data.data_dir={args.data_dir or ''}",
        f"data.fold={args.fold}", f"data.batch_size={args.batch_size}", f"data.eval_batch_size={args.batch_size}",
        *args.overrides])


def run(args: argparse.Namespace) -> int:
    """Writes the PNG of one batch (``data_pipelines.batch_preview``); 2 when there is no such batch."""
    from data_pipelines import batch_preview       # imports TensorFlow and matplotlib: not at --help time

    config = build_config(args)
    check_writable_dir(os.path.dirname(os.path.abspath(args.out)), "--out")
    try:
        path = batch_preview.write_batch_png(config, args.out, train=not args.eval, epoch=args.epoch,
                                             batch=args.batch)
    except (FileNotFoundError, ValueError) as e:
        print(f"algrnet data show: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
