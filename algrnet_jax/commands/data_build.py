"""``algrnet data build``: build a tfds dataset (synth_au, bp4d, disfa, fpara).

Examples::

    algrnet data build synth_au --config bp4d_small
    algrnet data build synth_au --config paralysis_tiny --data-dir /tmp/tfds
    algrnet data build bp4d --manual-dir /data/BP4D --skip-bad
"""
from __future__ import annotations

import argparse

DATASETS = ("synth_au", "bp4d", "disfa", "fpara")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=DATASETS, help="dataset to build")
    parser.add_argument("--config", default=None,
                        help="builder config, e.g. bp4d_small for synth_au (default: the builder's default)")
    parser.add_argument("--data-dir", default=None,
                        help="tfds data directory (default: $ALGRNET_DATA_DIR or ./data/tfds)")
    parser.add_argument("--manual-dir", default=None,
                        help="directory of the downloaded release files (bp4d, disfa, fpara)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip corrupt/missing frames instead of failing; they are listed in bad_frames.json")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if the dataset exists")


def run(args: argparse.Namespace) -> int:
    import json
    import os
    import sys

    import tensorflow_datasets as tfds

    from data_pipelines import builders
    from data_pipelines.builders import common

    if args.name in builders.NEEDS_MANUAL_DIR:
        if not args.manual_dir:
            print(f"algrnet data build: {args.name} needs --manual-dir (the release files)", file=sys.stderr)
            return 2
        if not os.path.isdir(args.manual_dir):
            print(f"algrnet data build: --manual-dir {args.manual_dir} is not a directory", file=sys.stderr)
            return 2
    try:
        builder = builders.get_builder(args.name, args.config, args.data_dir, skip_bad=args.skip_bad)
    except ValueError as e:
        print(f"algrnet data build: {e}", file=sys.stderr)
        return 2
    mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if args.overwrite
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    download_config = tfds.download.DownloadConfig(manual_dir=args.manual_dir, download_mode=mode)
    try:
        builder.download_and_prepare(download_config=download_config)
    except common.BadInputError as e:
        print(f"algrnet data build: bad input: {e}\n(use --skip-bad to skip such frames)", file=sys.stderr)
        return 1
    print(f"{builder.name}/{builder.builder_config.name if builder.builder_config else ''} -> {builder.data_dir}")
    for name, split in builder.info.splits.items():
        print(f"  {name}: {split.num_examples} examples")
    report = os.path.join(builder.data_dir, common.BAD_FRAMES_FILE)
    if os.path.exists(report):
        with open(report) as f:
            n_bad = json.load(f)["num_bad_frames"]
        if n_bad:
            print(f"  skipped {n_bad} bad frames, listed in {report}")
    return 0
