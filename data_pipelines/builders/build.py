"""Building a registered dataset: checks of the manual dir, the build itself, and a summary to print.

``build_dataset("synth_au", "bp4d_small")`` is what ``algrnet data build`` runs; it returns the prepared
builder, whose :func:`summary` lines the command prints (splits and sizes, resume-cache reuse, skipped frames).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence

import tensorflow_datasets as tfds

from data_pipelines.builders import NEEDS_MANUAL_DIR, get_builder
from data_pipelines.builders.base import BAD_FRAMES_FILE
from data_pipelines.builders.parts import NUM_PARTS
from data_pipelines.errors import BadInputError


def check_manual_dir(name: str, manual_dir: str | None) -> None:
    """Raises BadInputError when dataset ``name`` needs release files and ``manual_dir`` is unset, not a
    directory or empty."""
    if name not in NEEDS_MANUAL_DIR:
        return
    if not manual_dir:
        raise BadInputError(f"{name} needs --manual-dir (the directory of the release files)")
    if not os.path.isdir(manual_dir):
        raise BadInputError(f"--manual-dir {manual_dir} is not a directory")
    if not os.listdir(manual_dir):
        raise BadInputError(f"--manual-dir {manual_dir} is empty: put the {name} release files there "
                            f"(layouts: docs/usage_datasets.md, or `tfds build` prints the instructions)")


def parse_parts(text: str | None) -> tuple[int, ...] | None:
    """``"1,3"`` -> ``(1, 3)``; None -> None (all parts). Raises BadInputError naming ``--parts``."""
    if text is None:
        return None
    try:
        parts = tuple(sorted({int(p) for p in text.split(",") if p.strip()}))
    except ValueError:
        parts = ()
    if not parts or any(not 1 <= p <= NUM_PARTS for p in parts):
        raise BadInputError(f"--parts {text!r}: give part numbers 1..{NUM_PARTS} separated by commas, "
                            f"e.g. --parts 1,3")
    return parts


def build_dataset(name: str, config: str | None = None, data_dir: str | None = None, *,
                  manual_dir: str | None = None, skip_bad: bool = False, overwrite: bool = False,
                  parts: Sequence[int] | None = None) -> tfds.core.DatasetBuilder:
    """Builds (or reuses) dataset ``name``/``config`` in ``data_dir``; returns the prepared builder.

    ``overwrite`` rebuilds an existing dataset (the old one stays until the new one is complete);
    ``parts`` builds a subset of the three parts.
    Raises:
      BadInputError: unknown dataset or config, a bad manual dir, or bad release files (naming them).
    """
    check_manual_dir(name, manual_dir)
    try:
        builder = get_builder(name, config, data_dir, skip_bad=skip_bad, parts=parts)
    except ValueError as e:
        raise BadInputError(str(e)) from e
    mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir,
                                                                              download_mode=mode))
    return builder


def summary(builder: tfds.core.DatasetBuilder) -> list[str]:
    """Lines describing a prepared builder: where it is, examples per split, cache reuse, skipped frames."""
    config = builder.builder_config.name if builder.builder_config else ""
    lines = [f"{builder.name}/{config} -> {builder.data_dir}"]
    lines += [f"  {name}: {split.num_examples} examples" for name, split in builder.info.splits.items()]
    if getattr(builder, "cache_hits", 0):
        lines.append(f"  reused {builder.cache_hits} finished subject(s) from the resume cache {builder.cache_dir} "
                     "(their input files are unchanged)")
    report = os.path.join(builder.data_dir, BAD_FRAMES_FILE)
    if os.path.exists(report):
        with open(report) as f:
            n_bad = json.load(f)["num_bad_frames"]
        if n_bad:
            lines.append(f"  skipped {n_bad} bad frames, listed in {report}")
    return lines
