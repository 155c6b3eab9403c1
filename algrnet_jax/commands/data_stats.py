"""``algrnet data stats``: per-fold frame counts and AU base rates (or grade counts), with a plot.

Examples::

    algrnet data stats synth_au --builder-config bp4d_tiny
    algrnet data stats bp4d --data-dir /data/tfds --out bp4d_stats.png
    algrnet data stats fpara --subjects

The statistics, table and plot are ``data_pipelines.stats``; this module parses the arguments.
"""
from __future__ import annotations

import argparse
import os
import sys

from algrnet_jax.commands import config_args
from algrnet_jax.fileio import check_writable_dir
from data_pipelines import builders


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=config_args.DATASETS, help="tfds dataset")
    parser.add_argument("--builder-config", default=None,
                        help="builder config (default: the builder's default, e.g. bp4d_small for synth_au)")
    parser.add_argument("--data-dir", default=None, help="tfds data directory (default: $ALGRNET_DATA_DIR or ./data/tfds)")
    parser.add_argument("--out", default=None, help="PNG to write (default: <name>_<config>_stats.png)")
    parser.add_argument("--subjects", action="store_true",
                        help="also count subjects per part (reads every record's ids; slower)")


def run(args: argparse.Namespace) -> int:
    """Prints the statistics table of a built dataset and writes its plot; 2 when it is not built."""
    import ml_collections

    from data_pipelines import records, stats as stats_lib   # import TensorFlow and matplotlib: not at --help time

    try:
        builder = builders.get_builder(args.name, args.builder_config, args.data_dir)
    except ValueError as e:
        print(f"algrnet data stats: {e}", file=sys.stderr)
        return 2
    config = builder.builder_config.name if builder.builder_config else ""
    if not builder.is_prepared():
        cfg = f" --config {config}" if config else ""
        print(f"algrnet data stats: {args.name}/{config} is not built in {builder.data_dir}; build it with "
              f"`algrnet data build {args.name}{cfg}`", file=sys.stderr)
        return 2
    rebuild = records.build_command(ml_collections.ConfigDict({"data": {
        "dataset": args.name, "builder_config": config, "data_dir": args.data_dir or ""}}), overwrite=True)
    records.check_shards(builder, list(builder.info.splits), rebuild)
    out = args.out or f"{args.name}_{config}_stats.png"
    check_writable_dir(os.path.dirname(os.path.abspath(out)), "--out")
    stats = stats_lib.dataset_stats(builder, subjects=args.subjects)
    title = f"{args.name}/{config} ({stats['label_set']})"
    print(stats_lib.format_stats(stats, title))
    print(f"wrote {stats_lib.plot_stats(stats, out, title)}")
    return 0
