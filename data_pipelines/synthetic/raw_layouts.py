"""FAKE datasets in the original file layouts, written from synthetic faces (for tests and demos).

Each writer lays out a tiny set exactly as the real release (or the JAA-Net list layout) so that the
real builders (``bp4d``, ``disfa``, ``fpara``) can be exercised end to end without the real data:

- :func:`write_bp4d_release`: ``AUCoding/AU_OCC/<subject>_<task>.csv`` (0/1/9), raw unaligned frames
  ``<subject>/<task>/<frame>.jpg`` (4-digit zero padding below 1000), ``Landmarks/<subject>_<task>.txt``;
- :func:`write_disfa_release`: ``ActionUnit_Labels/<SN>/<SN>_au<k>.txt`` (intensities 0..5), a real
  MJPG ``Videos_LeftCamera/LeftVideo<SN>_comp.avi`` (cv2.VideoWriter) or extracted ``<SN>/<i>.jpg``,
  ``Landmarks/<SN>.txt`` with 66 points (17 made-up jaw points + the 49);
- :func:`write_fpara_release`: ``fpara.csv`` (House-Brackmann scores), ``videos/<video>.avi``,
  ``Landmarks/<video>.txt``;
- :func:`write_list`: ``<Name>_part<k>_{path,land,biocular,AUoccur|grade,weight}.txt`` + aligned frames.

Subjects get ids that exist in ``folds.json`` (BP4D ``F001``..., DISFA ``SN001``...) for the part the
generator put them in, so the builders' folds work. Every writer returns the list of
:class:`FakeFrame` it wrote (what the built records must hold).
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

import cv2
import numpy as np

from algrnet_jax import au_sets
from data_pipelines import alignment, synthetic
from data_pipelines.builders import folds

PARTS = (1, 2, 3)
BP4D_COLUMNS = tuple(range(1, 28))     # the AU columns of a fake AU_OCC csv
BP4D_FIRST_FRAME = 998                 # frames 998, 999, 1000, ...: padded and unpadded names
VIDEO_FPS = 25.0


@dataclasses.dataclass
class FakeFrame:
    """One written frame: ids as the builder must read them, labels ``[n]`` (or ``[1]`` grade),
    raw 0-based landmarks ``[49, 2]`` (None in the list layout) and the aligned ones ``[49, 2]``."""

    subject: str
    sequence: str
    frame: int
    fold: int
    labels: np.ndarray
    raw_landmarks: np.ndarray | None
    aligned_landmarks: np.ndarray
    image_path: str | None = None


# ------------------------------------------------------------------------------------ selection


def synthetic_examples(label_set: str = "bp4d", *, subjects_per_part: int = 1, sequences: int = 2,
                       frames: int = 3, size: str = "tiny", seed: int | None = None) -> list[dict[str, Any]]:
    """A few synthetic examples (dicts of ``synthetic.generate``): per part ``subjects_per_part``
    subjects x ``sequences`` sequences x ``frames`` frames, read lazily from the generator."""
    cfg = synthetic.SIZES[size]
    changes: dict[str, Any] = {"paralysis": label_set == "paralysis"}
    # Only as many subjects/sequences/frames as needed (the generator deals subjects to parts round robin).
    for field, value in (("num_subjects", len(PARTS) * subjects_per_part), ("sequences_per_subject", sequences),
                         ("frames_per_sequence", frames), ("seed", seed)):
        if value is not None and hasattr(cfg, field):
            changes[field] = value
    cfg = dataclasses.replace(cfg, **changes)
    return select(synthetic.generate(cfg), subjects_per_part=subjects_per_part, sequences=sequences, frames=frames)


def select(examples: Iterable[dict[str, Any]], *, subjects_per_part: int, sequences: int,
           frames: int) -> list[dict[str, Any]]:
    """The first ``frames`` frames of the first ``sequences`` sequences of the first
    ``subjects_per_part`` subjects of every part; stops reading once all are complete."""
    chosen: dict[int, dict[str, dict[str, list]]] = {p: {} for p in PARTS}

    def complete() -> bool:
        return all(len(subj) == subjects_per_part and all(
            len(seqs) == sequences and all(len(f) == frames for f in seqs.values()) for seqs in subj.values())
            for subj in chosen.values())

    for ex in examples:
        part, subject, seq = int(ex["fold"]), str(ex["subject"]), str(ex["sequence"])
        subj = chosen[part]
        if subject not in subj:
            if len(subj) >= subjects_per_part:
                continue
            subj[subject] = {}
        seqs = subj[subject]
        if seq not in seqs:
            if len(seqs) >= sequences:
                continue
            seqs[seq] = []
        if len(seqs[seq]) < frames:
            seqs[seq].append(ex)
        if complete():
            break
    if not complete():
        have = {p: {s: {q: len(f) for q, f in seqs.items()} for s, seqs in chosen[p].items()} for p in PARTS}
        raise ValueError(f"the generator gave fewer than {subjects_per_part} subject(s) per part x {sequences} "
                         f"sequence(s) x {frames} frame(s): {have}")
    return [ex for p in PARTS for seqs in chosen[p].values() for f in seqs.values() for ex in f]


def subject_ids(examples: list[dict[str, Any]], dataset: str) -> dict[str, str]:
    """Synthetic subject -> a real id of the same part in folds.json (``dataset`` "BP4D"/"DISFA"),
    or ``P<k>`` for the paralysis set."""
    out: dict[str, str] = {}
    if dataset == "paralysis":
        for ex in examples:
            out.setdefault(str(ex["subject"]), f"P{len(out) + 1:02d}")
        return out
    part_of = folds.load_folds(dataset)
    free = {p: sorted(s for s, q in part_of.items() if q == p) for p in PARTS}
    for ex in examples:
        s = str(ex["subject"])
        if s not in out:
            out[s] = free[int(ex["fold"])].pop(0)
    return out


def _sequences(examples: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for ex in examples:
        out.setdefault((str(ex["subject"]), str(ex["sequence"])), []).append(ex)
    return out


def _raw(ex: dict[str, Any], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    image, lm = synthetic.to_raw(np.asarray(ex["image"]), np.asarray(ex["landmarks"], np.float64), rng)
    return np.asarray(image, np.uint8), np.asarray(lm, np.float64)


def _aligned(raw_image: np.ndarray, raw_lm: np.ndarray) -> np.ndarray:
    return alignment.align_face(raw_image, raw_lm)[1]


def _write_image(path: str, rgb: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise OSError(f"cannot write {path}")


def _landmark_row(frame: int, points: np.ndarray) -> str:
    """A landmark-file row: the frame then 1-based coordinates."""
    return f"{frame} " + " ".join(f"{v:.4f}" for v in (np.asarray(points) + 1.0).ravel()) + "\n"


def _occurrence(ex: dict[str, Any], label_set: str) -> np.ndarray:
    return np.asarray(synthetic.occurrence(ex["intensity"], label_set), np.int8).reshape(-1)


def _intensity(ex: dict[str, Any], au: int) -> int:
    """Integer DISFA intensity 0..5 of one AU from the generator's intensity vector."""
    value = float(np.asarray(ex["intensity"])[au_sets.SYNTH_AUS.index(au)])
    return int(np.clip(np.round(value), 0, 5))


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


# --------------------------------------------------------------------------------------- BP4D


def write_bp4d_release(root: str, examples: list[dict[str, Any]], seed: int = 0) -> list[FakeFrame]:
    """BP4D release layout from synthetic examples (see module docstring).

    Sequences become tasks T1, T2, ... per subject; frames are numbered 998, 999, 1000, ...; the
    second frame of each task has AU24 "not coded" (9 -> label -1).
    """
    rng = np.random.default_rng(seed)
    ids = subject_ids(examples, "BP4D")
    aus = au_sets.AU_SETS["bp4d"]
    tasks: dict[str, int] = {}
    out = []
    for (subject, seq), exs in _sequences(examples).items():
        sid = ids[subject]
        tasks[sid] = tasks.get(sid, 0) + 1
        task = f"T{tasks[sid]}"
        rows, lm_rows = [",".join(["", *map(str, BP4D_COLUMNS)])], []
        for k, ex in enumerate(exs):
            frame = BP4D_FIRST_FRAME + k
            labels = _occurrence(ex, "bp4d")
            if k == 1:
                labels[aus.index(24)] = -1
            values = {a: (9 if v < 0 else int(v)) for a, v in zip(aus, labels)}
            rows.append(",".join([str(frame)] + [str(values.get(a, 0)) for a in BP4D_COLUMNS]))
            image, lm = _raw(ex, rng)
            path = os.path.join(root, sid, task, f"{frame:04d}.jpg")
            _write_image(path, image)
            lm_rows.append(_landmark_row(frame, lm))
            out.append(FakeFrame(sid, task, frame, int(ex["fold"]), labels, lm, _aligned(image, lm), path))
        _write(os.path.join(root, "AUCoding", "AU_OCC", f"{sid}_{task}.csv"), "\n".join(rows) + "\n")
        _write(os.path.join(root, "Landmarks", f"{sid}_{task}.txt"), "".join(lm_rows))
    return out


# -------------------------------------------------------------------------------------- DISFA


def jaw_points(landmarks: np.ndarray) -> np.ndarray:
    """17 made-up jaw points ``[17, 2]`` (DISFA's points 1..17) on an arc below the 49 points."""
    lm = np.asarray(landmarks, np.float64)
    lo, hi = lm.min(0), lm.max(0)
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    t = np.linspace(np.pi, 0, 17)
    return np.stack([centre[0] + 1.1 * half[0] * np.cos(t), centre[1] + 1.2 * half[1] * np.sin(t)], -1)


def _canvas(images: list[np.ndarray]) -> tuple[int, int]:
    return max(i.shape[0] for i in images), max(i.shape[1] for i in images)


def _pad(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    out = np.zeros((*hw, 3), np.uint8)
    out[:image.shape[0], :image.shape[1]] = image
    return out


def write_video(path: str, frames: list[np.ndarray], fps: float = VIDEO_FPS) -> None:
    """Writes RGB frames (same size) to an MJPG .avi with cv2.VideoWriter."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise OSError(f"cv2.VideoWriter cannot write {path}")
    for f in frames:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()


def write_disfa_release(root: str, examples: list[dict[str, Any]], seed: int = 0,
                        frames_as: str = "video") -> list[FakeFrame]:
    """DISFA release layout: one left-camera video per subject (all its sequences in a row), written
    as an MJPG .avi (``frames_as="video"``) or as extracted frames ``<SN>/<i>.jpg`` ("jpg")."""
    rng = np.random.default_rng(seed)
    ids = subject_ids(examples, "DISFA")
    aus = au_sets.AU_SETS["disfa"]
    by_subject: dict[str, list[dict[str, Any]]] = {}
    for ex in examples:
        by_subject.setdefault(ids[str(ex["subject"])], []).append(ex)
    out = []
    for sid, exs in by_subject.items():
        raws = [_raw(ex, rng) for ex in exs]
        hw = _canvas([r[0] for r in raws])
        images = [_pad(r[0], hw) for r in raws]
        sequence = f"LeftVideo{sid}_comp"
        label_rows = {au: [] for au in aus}
        lm_rows = []
        for i, (ex, image, (_, lm)) in enumerate(zip(exs, images, raws)):
            inten = {au: _intensity(ex, au) for au in aus}
            for au in aus:
                label_rows[au].append(f"{i + 1},{inten[au]}\n")
            lm_rows.append(_landmark_row(i, np.concatenate([jaw_points(lm), lm])))
            labels = np.array([int(inten[au] >= 2) for au in aus], np.int8)
            path = None
            if frames_as == "jpg":
                path = os.path.join(root, sid, f"{i}.jpg")
                _write_image(path, image)
            out.append(FakeFrame(sid, sequence, i, int(ex["fold"]), labels, lm, _aligned(image, lm), path))
        if frames_as == "video":
            write_video(os.path.join(root, "Videos_LeftCamera", f"{sequence}.avi"), images)
        elif frames_as != "jpg":
            raise ValueError(f"frames_as must be 'video' or 'jpg', got {frames_as!r}")
        for au in aus:
            _write(os.path.join(root, "ActionUnit_Labels", sid, f"{sid}_au{au}.txt"), "".join(label_rows[au]))
        _write(os.path.join(root, "Landmarks", f"{sid}.txt"), "".join(lm_rows))
    return out


# ---------------------------------------------------------------------------------- paralysis

# A House-Brackmann score of each grade (1 / 2 / 3-4 / 5-6); the writer alternates within a grade.
GRADE_SCORES = ((1,), (2,), (3, 4), (5, 6))


def write_fpara_release(root: str, examples: list[dict[str, Any]], seed: int = 0,
                        with_folds: bool = False) -> list[FakeFrame]:
    """Paralysis layout: one MJPG video per (subject, sequence), ``fpara.csv`` with a House-Brackmann
    score of the sequence's grade (and the generator's folds when ``with_folds``), landmark files."""
    rng = np.random.default_rng(seed)
    ids = subject_ids(examples, "paralysis")
    csv_rows = ["video,subject,house_brackmann" + (",fold" if with_folds else "")]
    out = []
    for n, ((subject, seq), exs) in enumerate(_sequences(examples).items()):
        sid = ids[subject]
        stem = f"{sid}_{seq}".replace("/", "_")
        grade = int(exs[0]["grade"])
        scores = GRADE_SCORES[grade]
        csv_rows.append(f"{stem}.avi,{sid},{scores[n % len(scores)]}" + (f",{int(exs[0]['fold'])}" if with_folds else ""))
        raws = [_raw(ex, rng) for ex in exs]
        hw = _canvas([r[0] for r in raws])
        images = [_pad(r[0], hw) for r in raws]
        write_video(os.path.join(root, "videos", f"{stem}.avi"), images)
        lm_rows = []
        for i, (ex, image, (_, lm)) in enumerate(zip(exs, images, raws)):
            lm_rows.append(_landmark_row(i, lm))
            out.append(FakeFrame(sid, stem, i, int(ex["fold"]), np.array([grade], np.int8), lm,
                                 _aligned(image, lm)))
        _write(os.path.join(root, "Landmarks", f"{stem}.txt"), "".join(lm_rows))
    _write(os.path.join(root, "fpara.csv"), "\n".join(csv_rows) + "\n")
    return out


# --------------------------------------------------------------------------------- list layout


def write_list(root: str, examples: list[dict[str, Any]], label_set: str, name: str = "",
               weights: bool = True) -> list[FakeFrame]:
    """JAA-Net list layout of aligned frames: ``<root>/list/<Name>_part<k>_*.txt`` and images
    ``<root>/imgs/<subject>/<sequence>/<frame>.jpg`` (DISFA: ``imgs/<SN>/<i>.jpg``); labels
    ``_AUoccur.txt`` (paralysis: ``_grade.txt``), biocular SQUARED, ``_weight.txt`` if ``weights``."""
    dataset = {"bp4d": "BP4D", "disfa": "DISFA", "paralysis": "paralysis"}[label_set]
    name = name or {"bp4d": "BP4D", "disfa": "DISFA", "paralysis": "FPara"}[label_set]
    ids = subject_ids(examples, dataset)
    files: dict[int, dict[str, list[str]]] = {p: {k: [] for k in ("path", "land", "biocular", "labels")} for p in PARTS}
    out = []
    counters: dict[str, int] = {}
    for (subject, seq), exs in _sequences(examples).items():
        sid = ids[subject]
        for k, ex in enumerate(exs):
            part = int(ex["fold"])
            if label_set == "disfa":
                frame = counters.get(sid, 0)
                counters[sid] = frame + 1
                rel, sequence = f"{sid}/{frame}.jpg", f"LeftVideo{sid}_comp"
            else:
                frame, sequence = int(ex["frame"]), str(seq).replace("/", "_")
                rel = f"{sid}/{sequence}/{frame}.jpg"
            _write_image(os.path.join(root, "imgs", rel), np.asarray(ex["image"], np.uint8))
            lm = np.asarray(ex["landmarks"], np.float64)
            labels = (np.array([int(ex["grade"])], np.int8) if label_set == "paralysis"
                      else _occurrence(ex, label_set))
            f = files[part]
            f["path"].append(f"../imgs/{rel}")
            f["land"].append(" ".join(f"{v:.6f}" for v in lm.ravel()))
            f["biocular"].append(f"{float(alignment.interocular(lm)) ** 2:.6f}")
            f["labels"].append(" ".join(str(int(v)) for v in labels))
            out.append(FakeFrame(sid, sequence, frame, part, labels, None, lm.astype(np.float32),
                                 os.path.join(root, "imgs", rel)))
    suffix = "grade" if label_set == "paralysis" else "AUoccur"
    for part, f in files.items():
        prefix = os.path.join(root, "list", f"{name}_part{part}")
        for key, values in f.items():
            _write(f"{prefix}_{suffix if key == 'labels' else key}.txt", "\n".join(values) + "\n")
        if weights and label_set != "paralysis":
            n = len(au_sets.AU_SETS[label_set])
            _write(f"{prefix}_weight.txt", " ".join(["1.0"] * n) + "\n")
    return out


def manifest(frames: list[FakeFrame]) -> str:
    """A JSON summary of written frames (ids, fold, labels) for demos."""
    return json.dumps([{"subject": f.subject, "sequence": f.sequence, "frame": f.frame, "fold": f.fold,
                        "labels": np.asarray(f.labels).tolist()} for f in frames], indent=1)


def iter_parts(frames: list[FakeFrame]) -> Iterator[tuple[int, list[FakeFrame]]]:
    """``(part, frames of that part)`` for parts 1..3."""
    for p in PARTS:
        yield p, [f for f in frames if f.fold == p]
