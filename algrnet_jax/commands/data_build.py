"""``algrnet data build``: build a tfds dataset (synth_au, bp4d, disfa, fpara).

Examples::

    algrnet data build synth_au --config bp4d_small
    algrnet data build synth_au --config paralysis_tiny --data-dir /tmp/tfds
    algrnet data build bp4d --manual-dir /data/BP4D --skip-bad
"""
from __future__ import annotations

import argparse

from algrnet_jax.configs.validate import DATASETS


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
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild even if the dataset exists (the old one stays usable until the new one is "
                             "complete, and stays as it was if the rebuild fails)")
    parser.add_argument("--parts", default=None, metavar="K[,K]",
                        help="build only these parts, e.g. 1 or 1,3 (default all three): a subset for a quick "
                             "look when the release files of the other parts are absent")


def _parts(text: str | None) -> tuple[int, ...] | None:
    from algrnet_jax.errors import UserError

    if text is None:
        return None
    try:
        parts = tuple(sorted({int(p) for p in text.split(",") if p.strip()}))
    except ValueError:
        parts = ()
    if not parts or any(p not in (1, 2, 3) for p in parts):
        raise UserError(f"--parts {text!r}: give part numbers 1..3 separated by commas, e.g. --parts 1,3")
    return parts


def run(args: argparse.Namespace) -> int:
    import json
    import os

    import tensorflow_datasets as tfds

    from algrnet_jax.errors import UserError
    from data_pipelines import builders
    from data_pipelines.builders import base

    parts = _parts(args.parts)
    if args.name in builders.NEEDS_MANUAL_DIR:
        if not args.manual_dir:
            raise UserError(f"{args.name} needs --manual-dir (the directory of the release files)")
        if not os.path.isdir(args.manual_dir):
            raise UserError(f"--manual-dir {args.manual_dir} is not a directory")
        if not os.listdir(args.manual_dir):
            raise UserError(f"--manual-dir {args.manual_dir} is empty: put the {args.name} release files there "
                            f"(layouts: docs/usage_datasets.md, or `tfds build` prints the instructions)")
    try:
        builder = builders.get_builder(args.name, args.config, args.data_dir, skip_bad=args.skip_bad, parts=parts)
    except ValueError as e:
        raise UserError(str(e)) from e
    mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if args.overwrite
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    download_config = tfds.download.DownloadConfig(manual_dir=args.manual_dir, download_mode=mode)
    builder.download_and_prepare(download_config=download_config)
    print(f"{builder.name}/{builder.builder_config.name if builder.builder_config else ''} -> {builder.data_dir}")
    for name, split in builder.info.splits.items():
        print(f"  {name}: {split.num_examples} examples")
    if getattr(builder, "cache_hits", 0):
        print(f"  reused {builder.cache_hits} finished subject(s) from the resume cache {builder.cache_dir} "
              "(their input files are unchanged)")
    report = os.path.join(builder.data_dir, base.BAD_FRAMES_FILE)
    if os.path.exists(report):
        with open(report) as f:
            n_bad = json.load(f)["num_bad_frames"]
        if n_bad:
            print(f"  skipped {n_bad} bad frames, listed in {report}")
    return 0
