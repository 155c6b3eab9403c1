"""Inputs of ``algrnet predict``: files, folders (recursive, sorted), videos and numpy arrays.

Images are read with OpenCV as RGB uint8 ``[H, W, 3]``; JPEG and PNG files must be complete (a truncated
file, which OpenCV would half-decode with a warning, is an error naming the file). Videos are read with
``cv2.VideoCapture``; timestamps are ``frame / fps`` from the container.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence

import cv2
import numpy as np

from data_pipelines import images
from data_pipelines.errors import BadInputError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


class MediaError(Exception):
    """An input that cannot be read; the message names the file and the problem."""


@dataclasses.dataclass
class Source:
    """One input: ``kind`` "image", "video" or "array"; ``name`` is the relative name its outputs take."""

    kind: str
    name: str
    path: str = ""
    array: np.ndarray | None = None


def kind_of(path: str) -> str | None:
    ext = os.path.splitext(path)[1].lower()
    return "image" if ext in IMAGE_EXTS else "video" if ext in VIDEO_EXTS else None


def discover(inputs: Sequence[str | os.PathLike | np.ndarray]) -> tuple[list[Source], list[str], list[str]]:
    """Expands inputs into sources. Returns (sources, failures, notes): failures are inputs that cannot
    be used (missing path, empty folder, unknown file type given explicitly); notes are files skipped
    inside folders (not an image or video)."""
    sources: list[Source] = []
    failures: list[str] = []
    notes: list[str] = []
    for i, item in enumerate(inputs):
        if isinstance(item, np.ndarray):
            sources.append(Source("array", f"array_{i}", array=item))
            continue
        path = os.fspath(item)
        if os.path.isdir(path):
            found = []
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for f in sorted(files):
                    full = os.path.join(root, f)
                    rel = os.path.relpath(full, path)
                    k = kind_of(f)
                    if k is None:
                        notes.append(f"{full}: skipped, not an image or video ({', '.join(IMAGE_EXTS + VIDEO_EXTS)})")
                    else:
                        found.append(Source(k, os.path.join(os.path.basename(os.path.normpath(path)), rel), full))
            if not found:
                failures.append(f"{path}: folder holds no images or videos")
            sources.extend(found)
        elif os.path.isfile(path):
            k = kind_of(path)
            if k is None:
                known = ", ".join(IMAGE_EXTS + VIDEO_EXTS)
                failures.append(f"{path}: not an image or video (known extensions: {known})")
            else:
                sources.append(Source(k, os.path.basename(path), path))
        else:
            failures.append(f"{path}: no such file or folder")
    return sources, failures, notes


def read_image(path: str) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` of an image file, read by the project's one image reader
    (``data_pipelines.images.load_image``: type by magic bytes, truncated JPEG/PNG and libjpeg warnings
    refused); MediaError naming the file if it cannot be used."""
    try:
        return images.load_image(path)
    except BadInputError as e:
        raise MediaError(str(e)) from e


def as_rgb(array: np.ndarray, name: str) -> np.ndarray:
    """A numpy frame from the Python API: uint8 ``[H, W, 3]`` RGB (or ``[H, W]`` grey)."""
    a = np.asarray(array)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise MediaError(f"{name}: expected an RGB uint8 image [H, W, 3], got {a.dtype} {a.shape}")
    return a


@dataclasses.dataclass
class Video:
    """An opened video: ``fps``, ``frames`` (container's count, may be 0 when unknown), ``size`` (w, h)."""

    path: str
    fps: float
    frames: int
    size: tuple[int, int]
    read: int = 0

    def __iter__(self) -> Iterator[tuple[int, float, np.ndarray]]:
        """Yields (frame index, timestamp s, RGB uint8 frame); ``read`` counts the frames decoded."""
        cap = cv2.VideoCapture(self.path)
        try:
            while True:
                ok, frame = cap.read()
                if not ok or frame is None:
                    break
                yield self.read, self.read / self.fps, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                self.read += 1
        finally:
            cap.release()

    def truncation(self) -> str | None:
        """A message when fewer frames were decoded than the container announces."""
        if self.frames > 0 and self.read < self.frames:
            return f"{self.path}: truncated or corrupt video: decoded {self.read} of {self.frames} frames"
        return None


def open_video(path: str) -> Video:
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise MediaError(f"{path}: cannot open as a video (corrupt or unsupported codec)")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    finally:
        cap.release()
    if not fps > 0:
        raise MediaError(f"{path}: the video has no frame rate; cannot compute timestamps")
    return Video(path, fps, frames, size)
