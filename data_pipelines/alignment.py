"""Face alignment from 49 landmarks, exactly as the JAA-Net release (docs/model.md §2).

The face is rotated so that the line between the eye centres is horizontal, then scaled and shifted
so that a square box around five key points (both eye centres, nose tip landmark 14, mouth corners 32
and 38, 1-based), enlarged by ``enlarge``, maps onto ``size x size`` pixels. The box is centred on the
middle of the five rotated points' extent (``(max + min) / 2``), its half size is
``0.5 * enlarge * max(x-extent, y-extent)`` and the scale is ``(size - 1) / 2 / half``. Pixels are
resampled with ``cv2.warpAffine`` (bilinear, constant border 128). Landmarks are 0-based pixel
coordinates throughout; raw landmark files of the JAA-Net release are 1-based (use
:func:`from_one_based`).
"""
from __future__ import annotations

import cv2
import numpy as np

from algrnet_jax import au_sets
from algrnet_jax.au_sets import ALIGNED_SIZE

BOX_ENLARGE = 2.9
BORDER_VALUE = (128, 128, 128)
# 0-based indices of the box points besides the eye centres: landmarks 14, 32, 38 (1-based).
BOX_POINTS = (13, 31, 37)


def from_one_based(landmarks: np.ndarray) -> np.ndarray:
    """Converts 1-based pixel coordinates (raw JAA-Net landmark files) to 0-based: ``x - 1``."""
    return np.asarray(landmarks, np.float64) - 1.0


def eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left and right eye centres ``[..., 2]`` (means of landmarks 20-25 and 26-31, 1-based).

    Args:
      landmarks: ``[..., 49, 2]`` (x, y).
    """
    lm = np.asarray(landmarks)
    return lm[..., au_sets.LEFT_EYE, :].mean(-2), lm[..., au_sets.RIGHT_EYE, :].mean(-2)


def interocular(landmarks: np.ndarray) -> np.ndarray:
    """Inter-ocular distance d_o (eye-centre distance, NOT squared): ``[..., 49, 2] -> [...]``."""
    left, right = eye_centres(landmarks)
    return np.sqrt(((right - left) ** 2).sum(-1))


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """The five alignment anchors ``[5, 2]`` of 49 landmarks ``[49, 2]``: left eye centre, right eye centre,
    nose (landmark 14), left and right mouth corners (32, 38); left/right as seen in the image.

    A face detector's five points (eye centres, nose tip, mouth corners: MTCNN's order) align with the
    same :func:`alignment_matrix_from_points`.
    """
    lm = np.asarray(landmarks, np.float64)
    if lm.shape != (au_sets.NUM_LANDMARKS, 2):
        raise ValueError(f"landmarks must have shape (49, 2), got {lm.shape}")
    left, right = eye_centres(lm)
    return np.concatenate([left[None], right[None], lm[list(BOX_POINTS)]], 0)


def alignment_matrix_from_points(points: np.ndarray, size: int = ALIGNED_SIZE,
                                 enlarge: float = BOX_ENLARGE) -> np.ndarray:
    """The 2x3 affine matrix of docs/model.md §2 from the five anchors (see :func:`five_points`).

    Args:
      points: ``[5, 2]`` (left eye centre, right eye centre, nose, left and right mouth corner), raw
        0-based pixel coordinates.
      size: output side in pixels.
      enlarge: box enlargement factor.
    Returns:
      float64 ``[2, 3]`` mapping raw coordinates to aligned ones.
    """
    pts = np.asarray(points, np.float64)
    if pts.shape != (5, 2):
        raise ValueError(f"alignment points must have shape (5, 2), got {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ValueError("landmarks contain NaN or infinite values")
    delta = pts[1] - pts[0]
    dist = float(np.hypot(delta[0], delta[1]))
    if dist <= 0.0:
        raise ValueError("eye centres coincide; cannot align")
    cos, sin = delta[0] / dist, delta[1] / dist
    rot = np.array([[cos, sin, 0.0], [-sin, cos, 0.0], [0.0, 0.0, 1.0]])
    pts = pts @ rot[:2, :2].T
    lo, hi = pts.min(0), pts.max(0)
    cx, cy = (hi + lo) * 0.5
    half = 0.5 * enlarge * float((hi - lo).max())
    if half <= 0.0:
        raise ValueError("degenerate landmark box; cannot align")
    scale = (size - 1) / 2.0 / half
    shift = np.array([[scale, 0.0, scale * (half - cx)], [0.0, scale, scale * (half - cy)], [0.0, 0.0, 1.0]])
    return (shift @ rot)[:2]


def alignment_matrix(landmarks: np.ndarray, size: int = ALIGNED_SIZE,
                     enlarge: float = BOX_ENLARGE) -> np.ndarray:
    """The 2x3 affine matrix mapping raw 0-based pixel coordinates to aligned ones.

    Args:
      landmarks: ``[49, 2]`` raw landmarks, 0-based pixel coordinates.
      size: output side in pixels.
      enlarge: box enlargement factor.
    Returns:
      float64 ``[2, 3]``.
    """
    lm = np.asarray(landmarks, np.float64)
    if lm.shape == (au_sets.NUM_LANDMARKS, 2) and not np.all(np.isfinite(lm)):
        raise ValueError("landmarks contain NaN or infinite values")
    return alignment_matrix_from_points(five_points(lm), size, enlarge)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Applies a ``[2, 3]`` affine matrix to points ``[..., 2]``."""
    pts = np.asarray(points, np.float64)
    m = np.asarray(matrix, np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE,
               enlarge: float = BOX_ENLARGE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Aligns a face image.

    Args:
      image: uint8 ``[H, W, 3]`` (any channel order; the border is grey in all of them).
      landmarks: ``[49, 2]`` raw landmarks, 0-based pixel coordinates.
      size: output side (200 in the paper).
      enlarge: box enlargement (2.9 in the paper).
    Returns:
      (aligned image uint8 ``[size, size, 3]``, aligned landmarks float32 ``[49, 2]``,
      matrix float64 ``[2, 3]``).
    """
    matrix = alignment_matrix(landmarks, size, enlarge)
    return warp(image, matrix, size), apply_affine(matrix, landmarks).astype(np.float32), matrix


def warp(image: np.ndarray, matrix: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Resamples ``image`` uint8 ``[H, W, 3]`` with a ``[2, 3]`` alignment matrix: ``[size, size, 3]``
    (bilinear, constant grey border, as the JAA-Net release)."""
    return cv2.warpAffine(np.ascontiguousarray(image), matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=BORDER_VALUE)
