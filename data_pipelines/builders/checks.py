"""Checks of one frame's image, landmarks and labels before it becomes a record.

Each returns the checked value in the record's form or raises :class:`BadInputError` naming ``source``
(the image path, or ``<file>:<line>``) and the problem.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from algrnet_jax import au_sets, tasks
from data_pipelines.builders.label_sets import num_labels
from data_pipelines.errors import BadInputError


def check_image(image: Any, source: str, size: int | None = None) -> np.ndarray:
    """Checks an RGB image: uint8 ``[H, W, 3]`` (``[size, size, 3]`` when size is given)."""
    if image is None:
        raise BadInputError(f"{source}: missing image")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise BadInputError(f"{source}: image dtype must be uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[-1] != 3:
        raise BadInputError(f"{source}: image must be [H, W, 3], got shape {image.shape}")
    if size is not None and image.shape[:2] != (size, size):
        raise BadInputError(f"{source}: image must be {size}x{size}, got {image.shape[1]}x{image.shape[0]}")
    return image


def check_landmarks(landmarks: Any, source: str) -> np.ndarray:
    """Checks 49 (x, y) landmarks: accepts ``[49, 2]`` or flat ``[98]``; returns float64 ``[49, 2]``."""
    if landmarks is None:
        raise BadInputError(f"{source}: missing landmarks")
    try:
        lm = np.asarray(landmarks, np.float64)
    except (TypeError, ValueError) as e:
        raise BadInputError(f"{source}: landmarks are not numbers ({e})") from e
    n = au_sets.NUM_LANDMARKS
    if lm.size != 2 * n or lm.ndim not in (1, 2) or (lm.ndim == 2 and lm.shape != (n, 2)):
        raise BadInputError(f"{source}: expected {n} landmarks ({2 * n} numbers, shape (49, 2)), "
                            f"got shape {lm.shape}")
    lm = lm.reshape(n, 2)
    bad = ~np.isfinite(lm).all(-1)
    if bad.any():
        raise BadInputError(f"{source}: landmarks contain NaN/inf at (0-based) points "
                            f"{np.flatnonzero(bad).tolist()}")
    return lm


def check_labels(labels: Any, label_set: str, source: str) -> np.ndarray:
    """Checks a label vector: n AU values in {-1, 0, 1} (or [1] grade in 0..3); returns int8 ``[n]``."""
    n = num_labels(label_set)
    try:
        lab = np.asarray(labels, np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise BadInputError(f"{source}: labels are not numbers ({e})") from e
    task = tasks.task_for_label_set(label_set)
    if lab.size != n:
        raise BadInputError(f"{source}: expected {task.describe_record_labels(label_set)}, got {lab.size} values")
    if not np.isfinite(lab).all() or (lab != np.round(lab)).any():
        raise BadInputError(f"{source}: labels must be integers, got {lab.tolist()}")
    allowed = set(task.record_label_values())
    bad = sorted({int(v) for v in lab} - allowed)
    if bad:
        raise BadInputError(f"{source}: label values {bad} not in {sorted(allowed)}")
    return lab.astype(np.int8)
