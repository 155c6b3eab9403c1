"""The JAA-Net "list" layout: aligned 200x200 frames listed in parallel text files, one row per frame.

``<prefix>_path.txt`` (image path), ``<prefix>_land.txt`` (98 numbers x1 y1 ... in aligned 200x200
coordinates), ``<prefix>_biocular.txt`` (SQUARED inter-ocular distance), ``<prefix>_AUoccur.txt`` (0/1 per AU;
paralysis: ``_grade.txt``), optional ``<prefix>_weight.txt`` (AU loss weights); same row order in every file.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
from collections.abc import Sequence

import numpy as np

from algrnet_jax import au_sets
from data_pipelines import alignment
from data_pipelines.builders.tables import numeric_lines, numeric_rows
from data_pipelines.errors import BadInputError
from data_pipelines.images import load_image

LIST_SUFFIXES = ("path", "land", "biocular", "AUoccur", "grade", "weight")


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



def load_aligned(image_file: str, landmarks: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Loads an already aligned list-layout frame: it must be 200x200 (``[200, 200, 3]``); kept as it is.

    Returns (image, landmarks float32 ``[49, 2]``).
    """
    if not os.path.isfile(image_file):
        raise BadInputError(f"{source}: image file {image_file} not found")
    size = alignment.ALIGNED_SIZE
    image = load_image(image_file)
    if image.shape[:2] != (size, size):
        raise BadInputError(f"{image_file} ({source}): the list layout holds aligned {size}x"
                            f"{size} faces, got {image.shape[1]}x{image.shape[0]}")
    return image, np.asarray(landmarks, np.float32)
