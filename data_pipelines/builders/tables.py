"""Numeric text and CSV tables of the release layouts, read with ``<file>:<line>`` errors.

Rows are whitespace or comma separated; blank lines and ``#`` comments are skipped; line numbers are 1-based.
"""
from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator

import numpy as np

from data_pipelines.errors import BadInputError


def _split(line: str) -> list[str]:
    """The tokens of a line, split at commas and whitespace."""
    return [t for t in re.split(r"[,\s]+", line.strip()) if t]


def numeric_lines(path: str, width: int | None = None) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """Yields ``(line number, float64 values or None, problem or None)`` of a numeric text file, leniently.

    Like :func:`numeric_rows`, but a bad row (not numbers, wrong width, NaN/inf) is yielded with its
    problem (``"<path>:<line>: ..."``) instead of raised; values are kept when they parse (so a caller can
    still read the row's frame number). A missing file raises BadInputError.
    """
    if not os.path.isfile(path):
        raise BadInputError(f"{path}: file not found")
    with open(path) as f:
        for i, line in enumerate(f, 1):
            line = line.split("#", 1)[0]
            tokens = _split(line)
            if not tokens:
                continue
            try:
                values = np.array([float(t) for t in tokens], np.float64)
            except ValueError:
                yield i, None, f"{path}:{i}: not a row of numbers: {line.strip()[:80]!r}"
                continue
            if width is not None and values.size != width:
                yield i, values, f"{path}:{i}: expected {width} numbers, got {values.size}"
            elif not np.isfinite(values).all():
                yield i, values, f"{path}:{i}: NaN or infinite value"
            else:
                yield i, values, None


def numeric_rows(path: str, width: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yields ``(line number, float64 values)`` of a whitespace/comma separated numeric file.

    Blank lines and ``#`` comments are skipped. ``width``: required number of values per row. The first
    bad row raises BadInputError naming file and line.
    """
    for i, values, problem in numeric_lines(path, width):
        if problem:
            raise BadInputError(problem)
        yield i, values


def frame_number(value: float, path: str, line: int) -> int:
    """``value`` as a frame number; raises naming ``path:line`` unless it is a non-negative integer."""
    if value != int(value) or value < 0:
        raise BadInputError(f"{path}:{line}: frame number must be a non-negative integer, got {value}")
    return int(value)


def csv_rows(path: str, what: str) -> list[list[str]]:
    """All rows of a CSV file; a missing or empty file is a BadInputError naming it (as ``what``)."""
    if not os.path.isfile(path):
        raise BadInputError(f"{path}: {what} not found")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise BadInputError(f"{path}: empty {what}")
    return rows
