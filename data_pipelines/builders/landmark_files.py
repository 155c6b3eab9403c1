"""Landmark files of the release layouts: one text file per sequence, one row per frame.

A row is ``frame x1 y1 ... xP yP``: the frame number (the number in the frame's image name), then P points
in 1-based pixel coordinates of the raw frame (P = 49; DISFA 66, of which points 18..66 are the 49 used).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from algrnet_jax import au_sets
from data_pipelines.builders.tables import frame_number, numeric_lines
from data_pipelines.errors import BadInputError

DISFA_NUM_POINTS = 66
DISFA_FIRST_POINT = 17          # points 18..66 (1-based) are the 49 used


@dataclasses.dataclass(frozen=True)
class LandmarkRow:
    """One row of a landmark file; ``error`` set (and ``points`` possibly None) when the row is bad."""

    path: str
    line: int
    points: np.ndarray | None   # [P, 2] 1-based raw pixel coordinates
    error: str | None = None


class LandmarkRows(dict):
    """``frame -> LandmarkRow`` of one landmark file, read leniently (:func:`read_landmark_rows` with
    ``strict=False``): bad rows, lines without a frame number and a missing file are kept as problems
    that :meth:`row_for` raises for the frames they concern, so each is a skippable per-frame error."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.file_error: str | None = None
        self.bad_lines: dict[int, str] = {}

    def row_for(self, frame: int, where: str) -> LandmarkRow:
        """The good row of ``frame`` (labelled at ``where``); raises BadInputError saying what is wrong."""
        if self.file_error:
            raise BadInputError(f"{self.file_error} (needed for frame {frame}, labelled at {where})")
        row = self.get(frame)
        if row is None:
            unread = "; lines without a readable frame number: " + ", ".join(map(str, self.bad_lines)) \
                if self.bad_lines else ""
            raise BadInputError(f"{self.path}: no landmark row for frame {frame} (labelled at {where}){unread}")
        if row.error:
            raise BadInputError(row.error)
        return row


def read_landmark_rows(path: str, num_points: int = au_sets.NUM_LANDMARKS, *,
                       strict: bool = True) -> LandmarkRows:
    """Reads a per-sequence landmark file: rows ``frame x1 y1 ... xP yP``.

    Returns:
      ``frame -> LandmarkRow`` (points ``[P, 2]``, 1-based raw pixel coordinates).
    Raises:
      BadInputError: a missing file, a row of the wrong length or with NaN/inf, a repeated frame (file and
        line). With ``strict=False`` only a repeated frame raises; the other problems are kept in the
        returned :class:`LandmarkRows` and raised per frame by ``row_for`` (face trackers write NaN rows
        for frames where they lost the face: those frames are skippable, the others usable).
    """
    rows = LandmarkRows(path)
    if not strict and not os.path.isfile(path):
        rows.file_error = f"{path}: landmark file not found"
        return rows
    for line, values, problem in numeric_lines(path):
        if problem is None and values.size != 1 + 2 * num_points:
            problem = (f"{path}:{line}: expected the frame number and {num_points} (x, y) points "
                       f"({1 + 2 * num_points} numbers), got {values.size}")
        if problem and strict:
            raise BadInputError(problem)
        if values is None or not values.size or not np.isfinite(values[0]) or values[0] != int(values[0]) \
                or values[0] < 0:
            rows.bad_lines[line] = problem or f"{path}:{line}: no frame number"
            if strict:
                frame_number(values[0], path, line)
            continue
        frame = int(values[0])
        if frame in rows:
            raise BadInputError(f"{path}:{line}: frame {frame} repeated (first on line {rows[frame].line})")
        points = None if problem else values[1:].reshape(num_points, 2)
        rows[frame] = LandmarkRow(path, line, points, problem)
    return rows


def disfa_49(points66: np.ndarray) -> np.ndarray:
    """The 49 points used (18..66, 1-based) of DISFA's 66: ``[66, 2] -> [49, 2]``."""
    return np.asarray(points66)[DISFA_FIRST_POINT:DISFA_FIRST_POINT + au_sets.NUM_LANDMARKS]

