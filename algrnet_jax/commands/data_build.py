"""``algrnet data build``: build a tfds dataset of the project (``data_pipelines.builders.REGISTRY``).

Examples::

    algrnet data build synth_au --config bp4d_small
    algrnet data build synth_au --config paralysis_tiny --data-dir /tmp/tfds
    algrnet data build bp4d --manual-dir /data/BP4D --skip-bad

The build is ``data_pipelines.builders.build``; this module parses the arguments and prints its summary.
Third-party output (tfds messages and progress bars, TensorFlow start-up lines) shows with ``--verbose``.
"""
from __future__ import annotations

import argparse

from algrnet_jax.commands import config_args
from algrnet_jax.fileio import check_writable_dir
from data_pipelines import builders


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=config_args.DATASETS, help="dataset to build")
    parser.add_argument("--config", default=None,
                        help="builder config, e.g. bp4d_small for synth_au (default: the builder's default)")
    parser.add_argument("--data-dir", default=None,
                        help="tfds data directory (default: $ALGRNET_DATA_DIR or ./data/tfds)")
    parser.add_argument("--manual-dir", default=None,
                        help="directory of the downloaded release files (bp4d, disfa, fpara)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip corrupt/missing frames instead of failing; they are listed in bad_frames.json")
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild even if the dataset exists (the old one stays usable until the new one is "
                             "complete, and stays as it was if the rebuild fails)")
    parser.add_argument("--parts", default=None, metavar="K[,K]",
                        help="build only these parts, e.g. 1 or 1,3 (default all three): a subset for a quick "
                             "look when the release files of the other parts are absent")


def run(args: argparse.Namespace) -> int:
    """Builds the dataset and prints where it is and what it holds."""
    # The build writes its lock, staging copy and records under --data-dir, even when the dataset is built.
    check_writable_dir(args.data_dir or builders.default_data_dir(), "--data-dir")
    from data_pipelines.builders import build     # imports TensorFlow: not at --help time

    builder = build.build_dataset(args.name, args.config, args.data_dir, manual_dir=args.manual_dir,
                                  skip_bad=args.skip_bad, overwrite=args.overwrite,
                                  parts=build.parse_parts(args.parts))
    print("\n".join(build.summary(builder)))
    return 0
