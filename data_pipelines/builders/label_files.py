"""Label files of the three releases, each read into arrays with ``<file>:<line>`` errors.

- BP4D: ``AUCoding/AU_OCC/<subject>_<task>.csv``, header row, first column the frame, one column per AU
  number, values 0/1/9 (9 = not coded -> -1) (:func:`read_bp4d_labels`).
- DISFA: ``ActionUnit_Labels/<SN>/<SN>_au<k>.txt``, lines ``frame,intensity`` 0..5, occurrence =
  intensity >= 2 (:func:`read_disfa_labels`).
- Paralysis: ``fpara.csv``, columns ``video,subject,house_brackmann[,fold]``, one row per video; the grade
  from House-Brackmann 1..6 (:func:`read_fpara_csv`).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from algrnet_jax import au_sets
from data_pipelines.builders.parts import NUM_PARTS
from data_pipelines.builders.tables import csv_rows, frame_number, numeric_rows
from data_pipelines.errors import BadInputError

BP4D_NOT_CODED = 9
DISFA_OCCURRENCE_THRESHOLD = 2


@dataclasses.dataclass(frozen=True)
class LabelRows:
    """Labels of one sequence: ``frames [N]`` int, ``labels [N, n]`` int8 (-1 unknown), ``lines [N]``."""

    path: str
    frames: np.ndarray
    labels: np.ndarray
    lines: np.ndarray


def read_bp4d_labels(path: str, aus: Sequence[int]) -> LabelRows:
    """Reads a BP4D ``AU_OCC`` CSV: header row, first column the frame, one column per AU number.

    Values 0/1/9; 9 ("not coded") -> -1. Columns of AUs not in ``aus`` are ignored.
    Raises:
      BadInputError: missing file, a header column that is not an AU number, a needed AU missing,
        other values, repeated frames (file and line).
    """
    rows = csv_rows(path, "label file")
    columns: dict[int, int] = {}
    for j, name in enumerate(rows[0][1:], 1):
        name = name.strip()
        digits = name[2:] if name.upper().startswith("AU") else name
        if not digits.isdigit():
            raise BadInputError(f"{path}:1: unknown AU column {name!r} (column {j + 1}); expected AU numbers")
        columns[int(digits)] = j
    missing = [a for a in aus if a not in columns]
    if missing:
        raise BadInputError(f"{path}:1: no column for AU {', '.join(map(str, missing))} "
                            f"(columns: {', '.join(map(str, columns))})")
    idx = [columns[a] for a in aus]
    frames, labels, lines, seen = [], [], [], {}
    for i, row in enumerate(rows[1:], 2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(rows[0]):
            raise BadInputError(f"{path}:{i}: {len(row)} columns, the header has {len(rows[0])}")
        try:
            values = [int(float(row[j])) for j in [0, *idx]]
        except ValueError:
            raise BadInputError(f"{path}:{i}: not a row of numbers: {','.join(row)[:80]!r}") from None
        frame, lab = values[0], np.array(values[1:], np.int64)
        bad = sorted(set(lab.tolist()) - {0, 1, BP4D_NOT_CODED})
        if bad:
            raise BadInputError(f"{path}:{i}: AU values {bad} not in 0/1/9")
        if frame in seen:
            raise BadInputError(f"{path}:{i}: frame {frame} repeated (first on line {seen[frame]})")
        seen[frame] = i
        frames.append(frame)
        labels.append(np.where(lab == BP4D_NOT_CODED, -1, lab))
        lines.append(i)
    return LabelRows(path, np.array(frames, np.int64), np.array(labels, np.int8).reshape(-1, len(aus)),
                     np.array(lines, np.int64))


def disfa_label_path(label_dir: str, subject: str, au: int) -> str:
    """``<label_dir>/<SN>/<SN>_au<k>.txt``."""
    return os.path.join(label_dir, subject, f"{subject}_au{au}.txt")


def read_disfa_labels(label_dir: str, subject: str, aus: Sequence[int]) -> LabelRows:
    """Reads ``<label_dir>/<SN>/<SN>_au<k>.txt`` (lines ``frame,intensity``) for every AU of ``aus``.

    Returns occurrence labels (intensity >= 2) ``[N, n]``; frames are those of the files (1-based in
    the release) and ``path``/``lines`` those of the first AU's file.
    Raises:
      BadInputError: a missing AU file, intensities outside 0..5, or files whose frame columns differ.
    """
    first: tuple[str, np.ndarray, np.ndarray] | None = None
    columns = []
    for au in aus:
        path = disfa_label_path(label_dir, subject, au)
        if not os.path.isfile(path):
            raise BadInputError(f"{path}: label file of AU{au} not found")
        rows = list(numeric_rows(path, width=2))
        lines = np.array([r[0] for r in rows], np.int64)
        values = np.array([r[1] for r in rows], np.float64).reshape(-1, 2)
        for (line, _), (frame, inten) in zip(rows, values):
            frame_number(frame, path, line)
            if inten != int(inten) or not 0 <= inten <= 5:
                raise BadInputError(f"{path}:{line}: intensity must be an integer 0..5, got {inten}")
        frames = values[:, 0].astype(np.int64)
        if first is None:
            first = (path, frames, lines)
            if len(np.unique(frames)) != len(frames):
                dup = int(frames[np.flatnonzero(np.diff(np.sort(frames)) == 0)[0]])
                raise BadInputError(f"{path}: frame {dup} repeated")
        else:
            fpath, fframes, _ = first
            if len(frames) != len(fframes) or (frames != fframes).any():
                m = min(len(frames), len(fframes))
                diff = np.flatnonzero(frames[:m] != fframes[:m])
                k = int(diff[0]) if diff.size else m
                line = int(lines[min(k, len(lines) - 1)]) if len(lines) else 1
                raise BadInputError(f"{path}:{line}: frames do not match {fpath} ({len(frames)} rows vs "
                                    f"{len(fframes)}; first difference at row {k + 1})")
        columns.append((values[:, 1] >= DISFA_OCCURRENCE_THRESHOLD).astype(np.int8))
    assert first is not None
    return LabelRows(first[0], first[1], np.stack(columns, -1), first[2])


# ------------------------------------------------------------------------------------- paralysis


@dataclasses.dataclass(frozen=True)
class ParalysisVideo:
    """One row of the paralysis CSV: its video, subject, House-Brackmann score, grade 0..3, the fold the
    CSV gives (or None) and its line."""

    video: str
    subject: str
    house_brackmann: int
    grade: int
    fold: int | None
    line: int


def read_fpara_csv(path: str) -> list[ParalysisVideo]:
    """Reads the paralysis CSV: header ``video,subject,house_brackmann[,fold]``; grade via HB 1..6."""
    rows = csv_rows(path, "label CSV")
    header = [h.strip().lower() for h in rows[0]]
    need = ("video", "subject", "house_brackmann")
    missing = [h for h in need if h not in header]
    if missing:
        raise BadInputError(f"{path}:1: missing column(s) {', '.join(missing)} (header: {','.join(rows[0])})")
    col = {h: header.index(h) for h in (*need, "fold") if h in header}
    out, seen = [], {}
    for i, row in enumerate(rows[1:], 2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise BadInputError(f"{path}:{i}: {len(row)} columns, the header has {len(header)}")
        video, subject = row[col["video"]].strip(), row[col["subject"]].strip()
        if not video or not subject:
            raise BadInputError(f"{path}:{i}: empty video or subject")
        if video in seen:
            raise BadInputError(f"{path}:{i}: video {video!r} repeated (first on line {seen[video]})")
        seen[video] = i
        try:
            hb = int(row[col["house_brackmann"]])
            grade = au_sets.house_brackmann_to_grade(hb)
        except ValueError as e:
            raise BadInputError(f"{path}:{i}: House-Brackmann score: {e}") from None
        fold = None
        if "fold" in col:
            try:
                fold = int(row[col["fold"]])
            except ValueError:
                fold = 0
            if not 1 <= fold <= NUM_PARTS:
                raise BadInputError(f"{path}:{i}: fold must be 1..{NUM_PARTS}, got {row[col['fold']]!r}")
        out.append(ParalysisVideo(video, subject, hb, grade, fold, i))
    if not out:
        raise BadInputError(f"{path}: no videos listed")
    return out

