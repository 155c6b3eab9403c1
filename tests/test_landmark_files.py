"""Landmark files (builders/landmark_files.py): rows by frame, lenient reading, errors naming file and line."""
from __future__ import annotations

import os

import numpy as np
import pytest

from data_pipelines import errors
from data_pipelines.builders import landmark_files


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def test_landmark_rows_by_frame_and_errors(tmp_path):
    pts = np.arange(98, dtype=float).reshape(49, 2) + 1
    good = "".join(f"{f} " + " ".join(f"{v:.2f}" for v in (pts + f).ravel()) + "\n" for f in (3, 7))
    path = _write(tmp_path / "Landmarks" / "F001_T1.txt", "# frame x1 y1 ...\n" + good)
    rows = landmark_files.read_landmark_rows(path)
    assert sorted(rows) == [3, 7] and rows[7].line == 3
    np.testing.assert_allclose(rows[7].points, pts + 7)
    _write(path, good + "8 1 2 3\n")
    with pytest.raises(errors.BadInputError, match=r"F001_T1.txt:3: expected the frame number and 49"):
        landmark_files.read_landmark_rows(path)
    _write(path, good + good.splitlines()[0] + "\n")
    with pytest.raises(errors.BadInputError, match=r"F001_T1.txt:3: frame 3 repeated \(first on line 1\)"):
        landmark_files.read_landmark_rows(path)
    _write(path, good.replace("3 ", "3 x", 1))
    with pytest.raises(errors.BadInputError, match=r"F001_T1.txt:1: not a row of numbers"):
        landmark_files.read_landmark_rows(path)


def test_disfa_uses_points_18_to_66():
    pts = np.arange(132, dtype=float).reshape(66, 2)
    np.testing.assert_array_equal(landmark_files.disfa_49(pts), pts[17:])
    assert landmark_files.disfa_49(pts).shape == (49, 2)
