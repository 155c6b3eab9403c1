"""What ``algrnet predict`` writes: OpenFace-style CSV rows, per-video summary JSON, overlays and the
probability-over-time plot. Files are written under a temporary name and renamed when complete.

CSV columns, in this order: ``input, frame, face_id, timestamp, confidence, success, face_x, face_y,
face_w, face_h, x_0..x_48, y_0..y_48`` (original-frame pixels), then for an AU checkpoint ``AU01_p ..``
(probabilities, config.aus order) and ``AU01_c ..`` (0/1 at the threshold); for a grading checkpoint
``normal_p, low_p, medium_p, high_p, grade`` (argmax). A frame without a face is one row with
``success = 0``, ``face_id = -1`` and empty geometry and predictions; a face whose network outputs are not
finite is a row with ``success = 0``, its id, box and confidence, and empty landmarks and predictions.
Temporary names carry the process id (``NAME.csv.partial.<pid>``), so no two runs share one.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import matplotlib
from matplotlib.figure import Figure   # the object-oriented API: no pyplot state, no backend to choose

from algrnet_jax import tasks
from algrnet_jax.fileio import atomic_path
from algrnet_jax.predict.engine import FaceResult

NUM_LANDMARKS = 49


def columns(class_names: Sequence[str], task: str | tasks.Task) -> list[str]:
    """The CSV header (module docstring); ``task`` a ``tasks`` name or object."""
    head = ["input", "frame", "face_id", "timestamp", "confidence", "success", "face_x", "face_y", "face_w", "face_h"]
    head += [f"x_{i}" for i in range(NUM_LANDMARKS)] + [f"y_{i}" for i in range(NUM_LANDMARKS)]
    if tasks.get_task(task).exclusive:
        return head + [f"{c}_p" for c in class_names] + ["grade"]
    return head + [f"{c}_p" for c in class_names] + [f"{c}_c" for c in class_names]


def face_row(name: str, frame: int, timestamp: float, face: FaceResult | None, class_names: Sequence[str],
             task: str | tasks.Task, threshold: float) -> dict[str, Any]:
    """One CSV row as a dict (``face`` None: the no-face row)."""
    row: dict[str, Any] = {"input": name, "frame": frame, "timestamp": round(float(timestamp), 6)}
    if face is None:
        row.update(face_id=-1, confidence=0.0, success=0)
        return row
    row.update(face_id=face.face_id, confidence=round(face.confidence, 6), success=int(face.finite))
    for k, v in zip(("face_x", "face_y", "face_w", "face_h"), face.box):
        row[k] = round(float(v), 2)
    if not face.finite:            # never a NaN presented as a result
        return row
    for i, (x, y) in enumerate(face.landmarks):
        row[f"x_{i}"], row[f"y_{i}"] = round(float(x), 3), round(float(y), 3)
    probs = np.asarray(face.probs, np.float64)
    for c, p in zip(class_names, probs):
        row[f"{c}_p"] = round(float(p), 6)
    if tasks.get_task(task).exclusive:
        row["grade"] = class_names[int(np.argmax(probs))]
    else:
        for c, p in zip(class_names, probs):
            row[f"{c}_c"] = int(p >= threshold)
    return row


class _Partial:
    """A file written under ``tmp`` and renamed to ``path`` by ``close(ok=True)`` (removed otherwise)."""

    def __init__(self, path: str, tmp: str):
        self.path, self.tmp = path, tmp
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def _release(self) -> None:
        raise NotImplementedError

    def close(self, ok: bool) -> None:
        self._release()
        if ok:
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.remove(self.tmp)


class CsvWriter(_Partial):
    """Streams rows to ``path`` (via ``path.partial.<pid>``, renamed by ``close(ok=True)``)."""

    def __init__(self, path: str, header: list[str]):
        super().__init__(path, f"{path}.partial.{os.getpid()}")
        self._f = open(self.tmp, "w", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=header, restval="")
        self._w.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        self._w.writerow(row)

    def _release(self) -> None:
        self._f.close()


def summary(rows: list[dict[str, Any]], class_names: Sequence[str], task: str | tasks.Task,
            fps: float | None) -> dict[str, Any]:
    """Per-video summary: frames, faces, success rate, per-AU occurrence rate (or the mean grade
    probabilities and the video's grade)."""
    frames = sorted({r["frame"] for r in rows})
    ok = [r for r in rows if r["success"] == 1]
    ok_frames = {r["frame"] for r in ok}
    out: dict[str, Any] = {"frames": len(frames), "fps": fps, "faces": len({r["face_id"] for r in ok}),
                           "face_rows": len(ok), "success_rate": len(ok_frames) / max(len(frames), 1)}
    if tasks.get_task(task).exclusive:
        mean = [float(np.mean([r[f"{c}_p"] for r in ok])) if ok else None for c in class_names]
        out["mean_grade_prob"] = dict(zip(class_names, mean))
        out["grade"] = class_names[int(np.argmax(mean))] if ok else None
    else:
        out["occurrence_rate"] = {c: (float(np.mean([r[f"{c}_c"] for r in ok])) if ok else None) for c in class_names}
        out["mean_prob"] = {c: (float(np.mean([r[f"{c}_p"] for r in ok])) if ok else None) for c in class_names}
    return out


def write_json(path: str, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2)


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


# ------------------------------------------------------------------------------------ pictures

_COLOURS = [(66, 135, 245), (245, 130, 48), (60, 180, 75), (230, 25, 75), (145, 30, 180), (70, 240, 240)]


def draw(rgb: np.ndarray, faces: Sequence[FaceResult], class_names: Sequence[str], threshold: float) -> np.ndarray:
    """Overlay: box, face id, landmarks and a bar per class (probability; filled at/over the threshold)."""
    img = np.ascontiguousarray(rgb).copy()
    h, w = img.shape[:2]
    scale = max(min(h, w) / 480.0, 0.5)
    thick = max(int(round(scale)), 1)
    for face in (f for f in faces if f.finite):
        colour = _COLOURS[face.face_id % len(_COLOURS)]
        x, y, bw, bh = [int(round(v)) for v in face.box]
        cv2.rectangle(img, (x, y), (x + bw, y + bh), colour, thick)
        cv2.putText(img, f"id {face.face_id} {face.confidence:.2f}", (x, max(y - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45 * scale, colour, thick, cv2.LINE_AA)
        for px, py in face.landmarks:
            cv2.circle(img, (int(round(px)), int(round(py))), thick + 1, (255, 255, 0), -1, cv2.LINE_AA)
        bar_w, row = int(70 * scale), int(13 * scale)
        bx = min(x + bw + 6, w - bar_w - int(45 * scale))
        for k, (c, p) in enumerate(zip(class_names, face.probs)):
            by = y + k * row
            cv2.putText(img, c, (bx, by + row - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.35 * scale, (255, 255, 255), 1,
                        cv2.LINE_AA)
            x0 = bx + int(42 * scale)
            cv2.rectangle(img, (x0, by + 2), (x0 + bar_w, by + row - 2), (90, 90, 90), 1)
            fill = (230, 60, 60) if p >= threshold else (160, 160, 160)
            cv2.rectangle(img, (x0, by + 2), (x0 + int(bar_w * float(p)), by + row - 2), fill, -1)
    return img


def save_image(path: str, rgb: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        if not cv2.imwrite(tmp, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{path}: cannot write image")


def attention_figure(path: str, face: FaceResult, class_names: Sequence[str], crop: int) -> None:
    """Per-AU refined attention maps over the aligned face's centre crop (as in the training report)."""
    maps = np.asarray(face.maps)
    o = (face.aligned.shape[0] - crop) // 2
    base = face.aligned[o:o + crop, o:o + crop] if 0 <= o else face.aligned
    n = maps.shape[0]
    cols = min(n, 6)
    rows = -(-n // cols)
    fig = Figure(figsize=(2 * cols, 2.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < n:
            ax.imshow(base)
            ax.imshow(cv2.resize(maps[k].astype(np.float32), base.shape[:2][::-1]), alpha=0.5, cmap="jet",
                      vmin=0, vmax=1)
            ax.set_title(f"{class_names[k]} {float(face.probs[k]):.2f}", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)


def time_plot(path: str, rows: list[dict[str, Any]], class_names: Sequence[str], title: str) -> None:
    """Probability of each class over time (first face id seen; gaps where no face)."""
    ok = [r for r in rows if r["success"] == 1]
    fig = Figure(figsize=(10, 3.5))
    ax = fig.subplots()
    if ok:
        fid = min(r["face_id"] for r in ok)
        by_frame = {r["frame"]: r for r in ok if r["face_id"] == fid}
        t = np.array(sorted({r["timestamp"] for r in rows}))
        frames = sorted({r["frame"] for r in rows})
        for k, c in enumerate(class_names):
            y = np.array([by_frame[f][f"{c}_p"] if f in by_frame else np.nan for f in frames], np.float64)
            ax.plot(t, y, label=c, color=matplotlib.colormaps["tab20"](k % 20), lw=1.2)
        ax.set_title(f"{title} (face {fid})", fontsize=9)
        ax.legend(ncol=min(len(class_names), 6), fontsize=7, loc="upper right")
    else:
        ax.set_title(f"{title}: no face found", fontsize=9)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


class VideoOverlay(_Partial):
    """Annotated mp4 (mp4v), written to a temporary name and renamed by ``close(ok=True)``."""

    def __init__(self, path: str, fps: float, size: tuple[int, int]):
        super().__init__(path, f"{path}.partial.{os.getpid()}.mp4")
        self._w = cv2.VideoWriter(self.tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)

    def write(self, rgb: np.ndarray) -> None:
        self._w.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def _release(self) -> None:
        self._w.release()
