"""Raw release frames: where they come from (a video, a frame folder) and how one is aligned.

Frames are RGB uint8 ``[H, W, 3]``; raw landmarks ``[49, 2]`` are 1-based pixel coordinates of the raw
frame (JAA-Net's convention); aligned frames are ``[200, 200, 3]`` with 0-based landmarks (docs/model.md §2).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import numpy as np

from data_pipelines import alignment
from data_pipelines.builders.checks import check_image, check_landmarks
from data_pipelines.errors import BadInputError
from data_pipelines.images import load_image

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


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


def load_and_align(image_path: str | os.PathLike, raw_landmarks: Any, *, one_based: bool = True,
                   size: int = alignment.ALIGNED_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Loads a raw release frame and aligns it (docs/model.md §2).

    Args:
      image_path: the raw frame (any format OpenCV reads).
      raw_landmarks: ``[49, 2]`` or ``[98]`` raw landmarks; 1-based unless ``one_based=False``.
    Returns:
      (aligned RGB uint8 ``[size, size, 3]``, aligned 0-based landmarks float32 ``[49, 2]``).
    Raises:
      BadInputError: naming the file for missing/corrupt images or bad landmarks.
    """
    source = os.fspath(image_path)
    lm = check_landmarks(raw_landmarks, source)
    if one_based:
        lm = alignment.from_one_based(lm)
    image = check_image(load_image(image_path), source)
    try:
        aligned, aligned_lm, _ = alignment.align_face(image, lm, size=size)
    except ValueError as e:
        raise BadInputError(f"{source}: {e}") from e
    return aligned, aligned_lm


def align_raw(image: np.ndarray | str, points: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Aligns a raw frame (an RGB array ``[H, W, 3]`` or an image path) with its 1-based 49 raw landmarks
    ``[49, 2]``; returns (aligned ``[200, 200, 3]``, 0-based aligned landmarks ``[49, 2]``)."""
    if isinstance(image, str):
        return load_and_align(image, points)
    lm = alignment.from_one_based(check_landmarks(points, source))
    image = check_image(image, source)
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

