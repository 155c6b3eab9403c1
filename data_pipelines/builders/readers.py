"""Readers of the BP4D / DISFA / paralysis release layouts and of the JAA-Net list layout.

Every reader raises :class:`common.BadInputError` naming the file (and line, 1-based) and the problem.
The file layouts are documented in ``docs/usage_datasets.md``; in short:

- BP4D labels: ``AUCoding/AU_OCC/<subject>_<task>.csv`` (:func:`read_bp4d_labels`).
- DISFA labels: ``ActionUnit_Labels/<SN>/<SN>_au<k>.txt`` (:func:`read_disfa_labels`).
- Landmarks (our choice, the releases ship other formats): one text file per sequence,
  ``Landmarks/<sequence>.txt``, one row per frame: the frame number (the number in the frame's
  image name) then x1 y1 ... xP yP, 1-based pixel coordinates of the raw frame (P = 49; DISFA 66,
  of which points 18..66 are used) (:func:`read_landmark_rows`).
- Paralysis: ``fpara.csv`` with columns ``video,subject,house_brackmann[,fold]`` (:func:`read_fpara_csv`),
  folds by :func:`paralysis_folds` unless the CSV has a ``fold`` column.
- List layout: ``<prefix>_path.txt``, ``_land.txt``, ``_biocular.txt``, ``_AUoccur.txt`` (paralysis:
  ``_grade.txt``), optional ``_weight.txt`` (:func:`find_list_prefixes`, :func:`read_list`).

The module also holds :class:`SubjectCache`, the per-subject cache that makes release builds resumable.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import glob
import json
import os
import pickle
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import cv2
import numpy as np

from algrnet_jax import au_sets
from algrnet_jax.fileio import atomic_path
from data_pipelines.builders import common

BadInputError = common.BadInputError
log = logging.getLogger(__name__)

BP4D_NOT_CODED = 9
DISFA_OCCURRENCE_THRESHOLD = 2
DISFA_NUM_POINTS = 66
DISFA_FIRST_POINT = 17          # points 18..66 (1-based) are the 49 used
LIST_SUFFIXES = ("path", "land", "biocular", "AUoccur", "grade", "weight")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


# ------------------------------------------------------------------------------------------ folds


def load_folds(dataset: str) -> dict[str, int]:
    """``subject -> part`` (1..3) of ``algrnet_jax/resources/folds.json`` for "BP4D" or "DISFA"."""
    import algrnet_jax

    path = os.path.join(os.path.dirname(algrnet_jax.__file__), "resources", "folds.json")
    with open(path) as f:
        text = f.read()
    parts = json.loads(text)[dataset]
    return {subject: int(part) for part, subjects in parts.items() for subject in subjects}


def fold_of(subject: str, folds: dict[str, int], source: str) -> int:
    """The part of ``subject``; raises naming ``source`` when the subject is in no fold."""
    if subject not in folds:
        raise BadInputError(f"{source}: subject {subject!r} is in no fold of folds.json "
                            f"(known: {', '.join(sorted(folds)[:5])}, ...)")
    return folds[subject]


# ------------------------------------------------------------------------------------ text tables


def _split(line: str) -> list[str]:
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


def _frame_number(value: float, path: str, line: int) -> int:
    if value != int(value) or value < 0:
        raise BadInputError(f"{path}:{line}: frame number must be a non-negative integer, got {value}")
    return int(value)


# -------------------------------------------------------------------------------------- landmarks


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
                _frame_number(values[0], path, line)
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


# ----------------------------------------------------------------------------------------- labels


@dataclasses.dataclass(frozen=True)
class LabelRows:
    """Labels of one sequence: ``frames [N]`` int, ``labels [N, n]`` int8 (-1 unknown), ``lines [N]``."""

    path: str
    frames: np.ndarray
    labels: np.ndarray
    lines: np.ndarray


def _csv_rows(path: str, what: str) -> list[list[str]]:
    """All rows of a CSV file; a missing or empty file is a BadInputError naming it."""
    if not os.path.isfile(path):
        raise BadInputError(f"{path}: {what} not found")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise BadInputError(f"{path}: empty {what}")
    return rows


def read_bp4d_labels(path: str, aus: Sequence[int]) -> LabelRows:
    """Reads a BP4D ``AU_OCC`` CSV: header row, first column the frame, one column per AU number.

    Values 0/1/9; 9 ("not coded") -> -1. Columns of AUs not in ``aus`` are ignored.
    Raises:
      BadInputError: missing file, a header column that is not an AU number, a needed AU missing,
        other values, repeated frames (file and line).
    """
    rows = _csv_rows(path, "label file")
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
            _frame_number(frame, path, line)
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
    video: str
    subject: str
    house_brackmann: int
    grade: int
    fold: int | None
    line: int


def read_fpara_csv(path: str) -> list[ParalysisVideo]:
    """Reads the paralysis CSV: header ``video,subject,house_brackmann[,fold]``; grade via HB 1..6."""
    rows = _csv_rows(path, "label CSV")
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
            if not 1 <= fold <= common.NUM_PARTS:
                raise BadInputError(f"{path}:{i}: fold must be 1..{common.NUM_PARTS}, got {row[col['fold']]!r}")
        out.append(ParalysisVideo(video, subject, hb, grade, fold, i))
    if not out:
        raise BadInputError(f"{path}: no videos listed")
    return out


def paralysis_folds(videos: Sequence[ParalysisVideo], seed: int = 0) -> dict[str, int]:
    """Seeded, subject-exclusive, grade-stratified 3-fold split: ``subject -> part``.

    A subject's grade is its most frequent video grade (ties: the higher grade). Subjects are
    grouped by grade (0..3), each group is shuffled with ``np.random.default_rng(seed)`` (one
    generator, groups in grade order) and dealt round-robin to parts 1, 2, 3, the dealing position
    carrying on from one grade to the next, so every part gets the same number of subjects of each
    grade up to one and the same number of subjects overall up to one. If the CSV gives folds they
    are used instead (every video must then have one, and a subject only one).
    """
    by_subject: dict[str, list[ParalysisVideo]] = collections.defaultdict(list)
    for v in videos:
        by_subject[v.subject].append(v)
    given = [v for v in videos if v.fold is not None]
    if given:
        folds: dict[str, int] = {}
        for v in videos:
            if v.fold is None:
                raise BadInputError(f"line {v.line}: video {v.video!r} has no fold while others do")
            if folds.setdefault(v.subject, v.fold) != v.fold:
                raise BadInputError(f"line {v.line}: subject {v.subject!r} in folds {folds[v.subject]} and {v.fold}")
        return folds
    grade_of = {}
    for s, vs in by_subject.items():
        counts = collections.Counter(v.grade for v in vs)
        grade_of[s] = max(counts, key=lambda g: (counts[g], g))
    rng = np.random.default_rng(seed)
    folds, pos = {}, 0
    for g in range(len(au_sets.GRADES)):
        group = sorted(s for s in grade_of if grade_of[s] == g)
        for s in rng.permutation(np.array(group, dtype=object)) if group else []:
            folds[str(s)] = pos % common.NUM_PARTS + 1
            pos += 1
    return folds


# ------------------------------------------------------------------------------------ video frames


def iter_video(path: str) -> Iterator[tuple[int, np.ndarray]]:
    """Yields ``(index, RGB uint8 [H, W, 3])`` for every frame of a video, 0-based, one at a time."""
    if not os.path.isfile(path):
        raise BadInputError(f"{path}: video file not found")
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise BadInputError(f"{path}: unreadable video (OpenCV cannot open it)")
        i = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            yield i, np.ascontiguousarray(frame[..., ::-1])
            i += 1
        if i == 0:
            raise BadInputError(f"{path}: unreadable video (no frame could be decoded)")
    finally:
        cap.release()


def frame_image(folder: str, frame: int, pad: int = 0) -> str | None:
    """The image file of ``frame`` in ``folder`` (``.jpg``/``.png``/...; zero-padded to ``pad`` digits
    or not padded), or None."""
    names = [f"{frame:0{pad}d}", str(frame)] if pad else [str(frame)]
    for name in names:
        for ext in IMAGE_EXTS:
            p = os.path.join(folder, name + ext)
            if os.path.isfile(p):
                return p
    return None


def align_raw(image: np.ndarray | str, points: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Aligns a raw frame (an RGB array or an image path) with its 1-based 49 raw landmarks."""
    if isinstance(image, str):
        return common.load_and_align(image, points)
    from data_pipelines import alignment

    lm = alignment.from_one_based(common.check_landmarks(points, source))
    image = common.check_image(image, source)
    try:
        aligned, aligned_lm, _ = alignment.align_face(image, lm)
    except ValueError as e:
        raise BadInputError(f"{source}: {e}") from e
    return aligned, aligned_lm


def raise_bad(message: str) -> Callable[[], Any]:
    """A ``Frame.load`` that raises ``BadInputError(message)`` (a frame skippable with skip_bad)."""
    def load():
        raise BadInputError(message)
    return load


# -------------------------------------------------------------------------------------- list layout


@dataclasses.dataclass(frozen=True)
class ListRow:
    """One frame of a list layout: image path (as written), its file, aligned landmarks ``[49, 2]``,
    d_o (NOT squared), labels ``[n]``, and where it came from (``<prefix>_path.txt:<line>``)."""

    path: str
    image_file: str
    landmarks: np.ndarray
    interocular: float
    labels: np.ndarray
    source: str
    error: str | None = None     # a bad landmark row (NaN, wrong width): the frame is skippable


def find_list_prefixes(root: str) -> list[tuple[str, int | None]]:
    """List prefixes under ``root`` (searched recursively): ``[(prefix, part or None)]``.

    A prefix is ``<dir>/<name>`` with ``<name>_path.txt``. When some names contain ``part<k>``
    (JAA-Net: ``BP4D_part1``), only those are used (the ``combine_*`` training lists repeat them);
    otherwise all prefixes are used and folds come from the subjects alone.
    """
    paths = sorted(glob.glob(os.path.join(root, "**", "*_path.txt"), recursive=True))
    prefixes = [p[: -len("_path.txt")] for p in paths]
    parts = [(p, re.search(r"part([1-9])(?!\d)", os.path.basename(p))) for p in prefixes]
    with_part = [(p, int(m.group(1))) for p, m in parts if m]
    if with_part:
        return with_part
    return [(p, None) for p in prefixes]


def _list_values(path: str, rows: int, width: int | None, what: str,
                 problems: dict[int, str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a list file (one per frame). With ``problems`` given, bad rows (NaN, wrong width) are
    recorded there by row index (and filled with NaN) instead of raised: per-frame, skippable."""
    data = list(numeric_lines(path, width))
    if len(data) != rows:
        raise BadInputError(f"{path}: {len(data)} rows, but the path list has {rows} frames ({what} "
                            f"must have one row per frame, in the same order)")
    out = np.full((rows, width or 1), np.nan)
    for k, (_, values, problem) in enumerate(data):
        if problem:
            if problems is None:
                raise BadInputError(problem)
            problems[k] = problem
        else:
            out[k] = values
    lines = np.array([d[0] for d in data], np.int64)
    return lines, out.reshape(rows, -1) if data else np.zeros((0, width or 0))


def read_list(prefix: str, num_labels: int, label_suffix: str = "AUoccur",
              image_roots: Sequence[str] = ()) -> tuple[list[ListRow], np.ndarray | None]:
    """Reads a JAA-Net list: ``<prefix>_path.txt`` + ``_land.txt`` (98 numbers, aligned 200x200 coords)
    + ``_biocular.txt`` (SQUARED d_o) + ``_<label_suffix>.txt`` (n labels) [+ ``_weight.txt``].

    Image paths are resolved against the path list's folder, then ``image_roots`` (absolute paths as
    they are). Returns (rows, AU weights ``[n]`` or None).
    Raises:
      BadInputError: a missing file, rows whose counts or widths differ (file and line), a
        non-positive biocular value, or one that looks not squared (its value, not its square,
        matches the landmarks' eye distance).
    """
    path_file = prefix + "_path.txt"
    if not os.path.isfile(path_file):
        raise BadInputError(f"{path_file}: file not found")
    with open(path_file) as f:
        entries = [(i, line.strip()) for i, line in enumerate(f, 1) if line.strip()]
    n = len(entries)
    bad_land: dict[int, str] = {}
    _, land = _list_values(prefix + "_land.txt", n, 2 * au_sets.NUM_LANDMARKS, "landmarks", bad_land)
    bio_lines, bio = _list_values(prefix + "_biocular.txt", n, 1, "biocular")
    _, labels = _list_values(f"{prefix}_{label_suffix}.txt", n, num_labels, "labels")
    weights = None
    if os.path.isfile(prefix + "_weight.txt"):
        w = [v for _, v in numeric_rows(prefix + "_weight.txt")]
        weights = np.concatenate(w) if w else np.zeros(0)
        if weights.size != num_labels or (weights <= 0).any():
            raise BadInputError(f"{prefix}_weight.txt: expected {num_labels} positive AU weights, got "
                                f"{weights.tolist()}")
    from data_pipelines import alignment

    base = os.path.dirname(os.path.abspath(path_file))
    rows = []
    for k, (line, rel) in enumerate(entries):
        source = f"{path_file}:{line}"
        if bio[k, 0] <= 0:
            raise BadInputError(f"{prefix}_biocular.txt:{bio_lines[k]}: squared inter-ocular distance must be "
                                f"positive, got {bio[k, 0]}")
        lm = land[k].reshape(au_sets.NUM_LANDMARKS, 2)
        d_o = float(np.sqrt(bio[k, 0]))
        d_lm = d_o if k in bad_land else float(alignment.interocular(lm))
        if abs(d_o - d_lm) > 0.1 * d_lm and abs(bio[k, 0] - d_lm) <= 0.1 * d_lm:
            raise BadInputError(f"{prefix}_biocular.txt:{bio_lines[k]}: {bio[k, 0]} looks like the inter-ocular "
                                f"distance itself; the list layout stores it SQUARED")
        image_file = rel if os.path.isabs(rel) else next(
            (os.path.join(r, rel) for r in (base, *image_roots) if os.path.isfile(os.path.join(r, rel))),
            os.path.join(base, rel))
        rows.append(ListRow(rel, image_file, lm, d_o, labels[k], source, bad_land.get(k)))
    return rows, weights


def list_path_ids(path: str, source: str) -> tuple[str, str, int]:
    """``(subject, sequence, frame)`` from a list image path ``.../<subject>/<sequence>/<frame>.<ext>``
    (BP4D, paralysis) or ``.../<SN>/<frame>.<ext>`` (DISFA: the sequence is the subject's video).
    """
    parts = path.replace("\\", "/").split("/")
    stem = os.path.splitext(parts[-1])[0]
    if not stem.isdigit() or len(parts) < 2:
        raise BadInputError(f"{source}: image path {path!r} is not .../<subject>/[<sequence>/]<frame number>.jpg")
    if len(parts) >= 3 and not re.fullmatch(r"SN\d+", parts[-2]):
        return parts[-3], parts[-2], int(stem)
    return parts[-2], disfa_sequence(parts[-2]), int(stem)


def disfa_sequence(subject: str) -> str:
    """DISFA's one sequence per subject: the left-camera video ``LeftVideo<SN>_comp``."""
    return f"LeftVideo{subject}_comp"


# --------------------------------------------------------------------------------- layout choice


def detect_layout(manual_dir: str, release_marker: str, dataset: str) -> str:
    """"release" when ``manual_dir/release_marker`` exists, "list" when ``*_path.txt`` lists exist.

    Raises:
      BadInputError: when neither or both are present (choose with the ``release``/``list`` config).
    """
    release = os.path.exists(os.path.join(manual_dir, release_marker))
    lists = bool(glob.glob(os.path.join(manual_dir, "**", "*_path.txt"), recursive=True))
    if release and lists:
        raise BadInputError(f"{manual_dir}: holds both the {dataset} release layout ({release_marker}) and "
                            f"list files (*_path.txt); build config 'release' or 'list' to choose")
    if release:
        return "release"
    if lists:
        return "list"
    raise BadInputError(f"{manual_dir}: neither the {dataset} release layout ({release_marker}) nor list "
                        f"files (<prefix>_path.txt) found; see the manual download instructions")


# ---------------------------------------------------------------------------------- subject cache


def fingerprint(paths: Sequence[str]) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of each input file; a folder contributes every file in it.

    The files themselves, not the folder's own entry: an image rewritten in place changes its own size or
    mtime but not its folder's, and must invalidate the cache. Missing paths are ``(path, -1, -1)``.
    """
    out = []
    for p in sorted(set(paths)):
        if os.path.isdir(p):
            with os.scandir(p) as it:
                entries = sorted((e for e in it if e.is_file()), key=lambda e: e.name)
            out.append((p, -2, len(entries)))
            for e in entries:
                st = e.stat()
                out.append((e.path, st.st_size, st.st_mtime_ns))
            continue
        try:
            st = os.stat(p)
        except FileNotFoundError:
            out.append((p, -1, -1))
            continue
        out.append((p, st.st_size, st.st_mtime_ns))
    return out


class SubjectCache:
    """A per-subject cache of aligned frames that makes a crashed build resume where it stopped.

    ``frames(subject, inputs, make)`` replays a finished subject from ``<dir>/<subject>.pkl`` when its
    input fingerprint (size and mtime of every input file, folders file by file) is unchanged; otherwise it
    yields the frames of ``make()`` and records, as each frame is consumed, its aligned image (lossless PNG,
    so the records written are byte-identical), landmarks and metadata, or the error its loading raised.
    The file is renamed into place only after the subject's last frame has been consumed, so a crash leaves
    no partial cache. Only one subject is in memory at a time (one frame, in fact).
    """

    VERSION = 2

    def __init__(self, directory: str | None):
        self.directory = directory
        self.hits = 0

    def _path(self, subject: str) -> str:
        return os.path.join(self.directory, re.sub(r"[^A-Za-z0-9_.-]", "_", subject) + ".pkl")

    def frames(self, subject: str, inputs: Sequence[str],
               make: Callable[[], Iterator[common.Frame]]) -> Iterator[common.Frame]:
        if self.directory is None:
            yield from make()
            return
        path = self._path(subject)
        header = {"version": self.VERSION, "subject": subject, "inputs": fingerprint(inputs)}
        replay = self._replay(path, header)
        if replay is not None:
            self.hits += 1
            yield from replay
            return
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            pickle.dump(header, f, protocol=pickle.HIGHEST_PROTOCOL)
            for frame in make():
                outcome: dict[str, Any] = {}
                frame.load = self._recording(frame, outcome)
                yield frame
                pickle.dump(self._record(frame, outcome), f, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def _recording(frame: common.Frame, outcome: dict[str, Any]):
        load = frame.load if frame.load is not None else (lambda: (frame.image, frame.landmarks))

        def wrapped():
            try:
                image, landmarks = load()
            except BadInputError as e:
                outcome["error"] = str(e)
                raise
            outcome["image"], outcome["landmarks"] = image, landmarks
            return image, landmarks
        return wrapped

    @staticmethod
    def _record(frame: common.Frame, outcome: dict[str, Any]) -> dict[str, Any]:
        meta = {k: getattr(frame, k) for k in ("key", "subject", "sequence", "frame", "fold", "labels",
                                                "source", "interocular")}
        if "image" in outcome:
            image = np.asarray(outcome["image"])
            ok, png = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1]) \
                if image.dtype == np.uint8 and image.ndim == 3 else (False, None)
            if ok:
                meta["png"] = png.tobytes()
                meta["landmarks"] = np.asarray(outcome["landmarks"])
                return meta
        meta["error"] = outcome.get("error", f"{frame.source}: frame was not loaded")
        return meta

    def _replay(self, path: str, header: dict[str, Any]) -> Iterator[common.Frame] | None:
        if not os.path.isfile(path):
            return None
        try:
            f = open(path, "rb")
            if pickle.load(f) != header:
                f.close()
                return None
        except (OSError, pickle.UnpicklingError, EOFError):
            return None

        def gen():
            with f:
                while True:
                    try:
                        rec = pickle.load(f)
                    except EOFError:
                        return
                    frame = common.Frame(**{k: rec[k] for k in ("key", "subject", "sequence", "frame", "fold",
                                                                "labels", "source", "interocular")})
                    if "png" in rec:
                        image = cv2.imdecode(np.frombuffer(rec["png"], np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
                        frame.image, frame.landmarks = np.ascontiguousarray(image), rec["landmarks"]
                    else:
                        frame.load = raise_bad(rec["error"])
                    yield frame
        return gen()


# ------------------------------------------------------------------------- shared builder base


@dataclasses.dataclass(eq=False)
class ReleaseConfig(common.AlgrnetBuilderConfig):
    """A real-data builder config: ``layout`` "auto" (detected), "release" or "list";
    ``split_seed`` seeds the paralysis fold split."""

    layout: str = "auto"
    split_seed: int = 0


def release_configs(label_set: str, dataset: str) -> list[ReleaseConfig]:
    """The configs of a real-data builder: ``default`` (layout detected), ``release``, ``list``."""
    return [
        ReleaseConfig(name="default", label_set=label_set, layout="auto",
                      description=f"{dataset}: release or list layout, detected from the manual dir"),
        ReleaseConfig(name="release", label_set=label_set, layout="release",
                      description=f"{dataset}: the release layout (raw frames aligned at build time)"),
        ReleaseConfig(name="list", label_set=label_set, layout="list",
                      description=f"{dataset}: the JAA-Net list layout (aligned 200x200 frames kept)"),
    ]


def load_aligned(image_file: str, landmarks: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Loads an already aligned list-layout frame: it must be 200x200; kept as it is."""
    if not os.path.isfile(image_file):
        raise BadInputError(f"{source}: image file {image_file} not found")
    image = common.load_image(image_file)
    if image.shape[:2] != (common.IMAGE_SIZE, common.IMAGE_SIZE):
        raise BadInputError(f"{image_file} ({source}): the list layout holds aligned {common.IMAGE_SIZE}x"
                            f"{common.IMAGE_SIZE} faces, got {image.shape[1]}x{image.shape[0]}")
    return image, np.asarray(landmarks, np.float32)


@dataclasses.dataclass(frozen=True)
class ReleaseSubject:
    """A subject of a release layout: its part and the input files its cache entry depends on."""

    name: str
    part: int
    inputs: tuple[str, ...]


class ReleaseBuilder(common.AlgrnetBuilder, skip_registration=True):
    """Base of bp4d / disfa / fpara: layout choice, the list layout, per-subject resumable builds.

    Subclasses set ``RELEASE_MARKER`` (a path in the manual dir that marks the release layout) and
    implement ``_release_subjects(manual_dir) -> list[ReleaseSubject]`` and
    ``_subject_frames(subject, manual_dir) -> Iterator[Frame]`` (raw frames, aligned lazily), and
    for the list layout ``_list_folds(rows_by_prefix) -> subject -> part`` and ``_list_labels``.

    Release builds go subject by subject through a :class:`SubjectCache` in
    ``<data_dir>/downloads/algrnet_cache/<name>/<config>/<version>/``: a crashed build rerun with
    the same command replays finished subjects from there instead of decoding and aligning again.
    The cache is deleted after a successful build (keep it with ``$ALGRNET_KEEP_CACHE=1``); pass
    ``cache=False`` to build without it.
    """

    RELEASE_MARKER = ""
    LIST_LABEL_SUFFIX = "AUoccur"

    def __init__(self, *, cache: bool = True, **kwargs):
        self.use_cache = bool(cache)
        self.cache_dir: str | None = None     # set when a subject was replayed from the cache
        super().__init__(**kwargs)

    # ---- layout
    def layout(self, manual_dir: str) -> str:
        layout = self.builder_config.layout
        if layout == "auto":
            return detect_layout(manual_dir, self.RELEASE_MARKER, self.name)
        if layout not in ("release", "list"):
            raise ValueError(f"unknown layout {layout!r}; choose auto, release or list")
        if layout == "release" and not os.path.exists(os.path.join(manual_dir, self.RELEASE_MARKER)):
            raise BadInputError(f"{os.path.join(manual_dir, self.RELEASE_MARKER)}: not found; config 'release' "
                                f"needs the {self.name} release layout (see the manual download instructions)")
        return layout

    def _cache_dir(self, dl_manager) -> str | None:
        if not self.use_cache:
            return None
        root = os.fspath(dl_manager.download_dir) if getattr(dl_manager, "download_dir", None) else None
        if root is None:
            return None
        return os.path.join(root, "algrnet_cache", self.name, self.builder_config.name, str(self.version))

    def _frames(self, part: int, dl_manager) -> Iterator[common.Frame]:
        manual = os.fspath(dl_manager.manual_dir)
        if not os.path.isdir(manual):
            raise BadInputError(f"{manual}: manual dir not found. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        if self.layout(manual) == "list":
            yield from self._list_frames(part, manual)
            return
        from tensorflow_datasets.core.utils import tqdm_utils

        subjects = [s for s in self._release_subjects(manual) if s.part == part]
        cache = SubjectCache(self._cache_dir(dl_manager))
        bar = tqdm_utils.tqdm(subjects, desc=f"{self.name} part{part}", unit=" subject", leave=False)
        for subject in bar:
            bar.set_postfix_str(subject.name)
            hits = cache.hits
            yield from cache.frames(subject.name, subject.inputs,
                                    lambda s=subject.name: self._subject_frames(s, manual))
            if cache.hits > hits:
                self.cache_hits += 1
                self.cache_dir = cache.directory
                log.info("%s: replayed from the resume cache %s (its input files are unchanged)",
                         subject.name, cache.directory)

    def _check_parts(self, dl_manager) -> None:
        manual = os.fspath(dl_manager.manual_dir)
        if not os.path.isdir(manual):
            raise BadInputError(f"{manual}: manual dir not found. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        if self.layout(manual) == "list":
            prefixes = find_list_prefixes(manual)
            if not prefixes or any(part is None for _, part in prefixes):
                return                          # parts come from the subjects: checked as each part is built
            present, what = {part for _, part in prefixes}, "list files (<name>_part<k>_path.txt)"
        else:
            present, what = {s.part for s in self._release_subjects(manual)}, "subjects"
        empty = [p for p in self.parts if p not in present]
        if empty:
            raise BadInputError(
                f"{manual}: no {what} for {', '.join(common.part_name(p) for p in empty)} (present: "
                f"{', '.join(common.part_name(p) for p in sorted(present)) or 'none'}); "
                f"{common.empty_parts_hint(empty, self.parts)}")

    def _download_and_prepare(self, dl_manager, download_config):
        super()._download_and_prepare(dl_manager, download_config)
        cache_dir = self._cache_dir(dl_manager)
        if cache_dir and os.path.isdir(cache_dir) and os.environ.get("ALGRNET_KEEP_CACHE", "") not in ("1", "true"):
            import shutil

            shutil.rmtree(cache_dir, ignore_errors=True)
            for parent in (os.path.dirname(cache_dir), os.path.dirname(os.path.dirname(cache_dir)),
                           os.path.dirname(os.path.dirname(os.path.dirname(cache_dir)))):
                try:
                    os.rmdir(parent)          # only if empty: other configs' caches stay
                except OSError:
                    break

    def _release_subjects(self, manual_dir: str) -> list[ReleaseSubject]:
        raise NotImplementedError

    def _subject_frames(self, subject: str, manual_dir: str) -> Iterator[common.Frame]:
        raise NotImplementedError

    # ---- list layout
    def _list_labels(self, values: np.ndarray, source: str) -> np.ndarray:
        """List label row -> record labels (AU occurrence; BP4D's 9 = not coded -> -1)."""
        return np.where(values == BP4D_NOT_CODED, -1, values)

    def _list_folds(self, rows: dict[str, list[ListRow]], parts: dict[str, int | None]) -> Callable[[str, str], int]:
        """``(subject, source) -> part`` for the list layout."""
        raise NotImplementedError

    def _read_lists(self, manual: str) -> tuple[dict[str, list[ListRow]], dict[str, int | None]]:
        rows, parts = {}, {}
        weights = {}
        for prefix, part in find_list_prefixes(manual):
            rows[prefix], w = read_list(prefix, common.num_labels(self.label_set), self.LIST_LABEL_SUFFIX, (manual,))
            parts[prefix] = part
            if w is not None:
                weights[os.path.basename(prefix)] = w.tolist()
        if not rows:
            raise BadInputError(f"{manual}: no list files (<prefix>_path.txt) found")
        self.info.metadata["list_au_weights"] = weights
        return rows, parts

    def _list_frames(self, part: int, manual: str) -> Iterator[common.Frame]:
        rows, parts = self._read_lists(manual)
        fold_of_subject = self._list_folds(rows, parts)
        seen: dict[str, str] = {}
        for prefix, prefix_rows in rows.items():
            for row in prefix_rows:
                subject, sequence, frame = list_path_ids(row.path, row.source)
                fold = fold_of_subject(subject, row.source)
                if parts[prefix] is not None and fold != parts[prefix]:
                    raise BadInputError(f"{row.source}: subject {subject!r} is in part {fold}, but the list is "
                                        f"part {parts[prefix]}")
                if fold != part:
                    continue
                key = f"{subject}/{sequence}/{frame}"
                if key in seen:
                    raise BadInputError(f"{row.source}: frame {key} listed twice (also {seen[key]})")
                seen[key] = row.source
                yield common.Frame(
                    key=key, subject=subject, sequence=sequence, frame=frame, fold=fold,
                    labels=self._list_labels(row.labels, row.source), source=row.source,
                    interocular=row.interocular,
                    load=raise_bad(f"{row.error} (frame {key}, {row.source})") if row.error else
                    functools.partial(load_aligned, row.image_file, row.landmarks, row.source))


def folds_json_list_folds(dataset: str) -> Callable[[str, str], int]:
    """List-layout folds of BP4D/DISFA: from folds.json."""
    folds = load_folds(dataset)
    return lambda subject, source: fold_of(subject, folds, source)
