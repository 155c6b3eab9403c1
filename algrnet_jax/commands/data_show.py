"""``algrnet data show``: write a PNG grid of one input-pipeline batch with its landmarks.

Examples::

    algrnet data show --dataset synth_au --config bp4d_tiny --out batch.png
    algrnet data show --dataset synth_au --config bp4d_small --eval --size small --out eval.png

The grid (landmarks coloured by mirror pair) is ``data_pipelines.batch_preview``; this module parses the
arguments and builds the config.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="synth_au", help="tfds dataset (synth_au, bp4d, disfa, fpara)")
    parser.add_argument("--config", default="bp4d_tiny", help="builder config, e.g. bp4d_tiny")
    parser.add_argument("--data-dir", default=None, help="tfds data directory (default: $ALGRNET_DATA_DIR or ./data/tfds)")
    parser.add_argument("--model", default="algrnet", help="model config whose crop/aligned sizes and AUs are used")
    parser.add_argument("--size", default="paper", choices=("paper", "small", "tiny"), help="config size (paper: crop 176)")
    parser.add_argument("--fold", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epoch", type=int, default=0)
    parser.add_argument("--batch", type=int, default=0, help="which batch of the epoch")
    parser.add_argument("--eval", action="store_true", help="show an eval batch (centre crop) instead")
    parser.add_argument("--out", default="batch.png", help="PNG to write")


def run(args: argparse.Namespace) -> int:
    import sys

    from algrnet_jax import configs
    from data_pipelines import batch_preview, builders
    from data_pipelines.builders import label_sets

    try:
        builder_cls = builders.builder_class(args.dataset)
    except ValueError as e:
        print(f"algrnet data show: {e}", file=sys.stderr)
        return 2
    label_set = next((c.label_set for c in getattr(builder_cls, "BUILDER_CONFIGS", []) if c.name == args.config), None)
    if label_set is None:
        print(f"algrnet data show: unknown config {args.config!r} of {args.dataset}", file=sys.stderr)
        return 2
    if label_set == label_sets.PARALYSIS:
        config = configs.get_config("algrnet_paralysis", args.size)
    else:
        config = configs.get_config(args.model, args.size, label_set)
    config.data.dataset = args.dataset
    config.data.builder_config = args.config
    config.data.data_dir = args.data_dir or ""
    config.data.fold = args.fold
    config.data.batch_size = args.batch_size
    config.data.eval_batch_size = args.batch_size
    try:
        path = batch_preview.write_batch_png(config, args.out, train=not args.eval, epoch=args.epoch,
                                             batch=args.batch)
    except (FileNotFoundError, ValueError) as e:
        print(f"algrnet data show: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
