"""Faces in a frame: the MTCNN detector (boxes, scores, five points), box scoring for tracking, IoU,
and bring-your-own landmarks (49, 66 or 68 points -> the 49-point scheme).

MTCNN's five points (eye centres, nose tip, mouth corners; left/right as seen in the image) are the
five alignment anchors of ``data_pipelines.alignment.five_points``.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from algrnet_jax.errors import UserError
from data_pipelines import alignment

FIVE_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclasses.dataclass
class Face:
    """A detected (or tracked) face: ``box`` float ``[4]`` (x, y, w, h) pixels, ``score`` in [0, 1],
    ``points`` float64 ``[5, 2]`` alignment anchors (see module docstring)."""

    box: np.ndarray
    score: float
    points: np.ndarray


class MTCNNDetector:
    """The ``mtcnn`` package (MIT, weights inside the wheel) on TensorFlow's CPU.

    ``detect(rgb)`` -> faces sorted by score; ``score_boxes(rgb, boxes)`` -> MTCNN's last stage (O-Net)
    face probability of given boxes, used to check a tracked face without a full detection.
    """

    def __init__(self, min_face_size: int = 40, threshold: float = 0.8):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        try:
            from mtcnn import MTCNN
        except ImportError as e:
            raise UserError("predict: the face detector needs the 'mtcnn' package (pip install mtcnn==1.0.0; "
                            "it is in requirements.txt), or pass --landmarks FILE or --aligned") from e
        self._mtcnn = MTCNN()
        self.min_face_size = int(min_face_size)
        self.threshold = float(threshold)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 ``[H, W, 3]`` frame, best first."""
        import tensorflow as tf
        from mtcnn.utils.bboxes import fix_bboxes_offsets, limit_bboxes, to_json
        from mtcnn.utils.images import load_images_batch, standarize_batch

        # MTCNN.detect_faces run stage by stage, stopping when a stage leaves no candidate: mtcnn 1.0 runs the
        # next stage on zero patches, which TensorFlow rejects with a logged "Incompatible shapes [0,48,48,3]".
        # mtcnn 1.0's pyramid breaks for min_face_size > 20 (scales below its 12-pixel minimum): its default is
        # used and smaller faces are dropped here.
        images, shapes, pad = standarize_batch(load_images_batch([np.ascontiguousarray(rgb)]), normalize=True)
        boxes = None
        try:
            for stage in self._mtcnn.stages:
                boxes = stage(bboxes_batch=boxes, images_normalized=images, images_oshapes=shapes,
                              threshold_onet=self.threshold)
                if len(boxes) == 0:
                    return []
        except tf.errors.InvalidArgumentError:     # what detect_faces takes for "no face"
            return []
        boxes = limit_bboxes(fix_bboxes_offsets(boxes, pad), images_shapes=shapes, limit_landmarks=False)
        found = to_json(boxes, images_count=1, output_as_width_height=True, input_as_width_height=False)[0]
        faces = [Face(np.asarray(f["box"], np.float64), float(f["confidence"]),
                      np.asarray([f["keypoints"][k] for k in FIVE_NAMES], np.float64)) for f in found
                 if min(f["box"][2], f["box"][3]) >= self.min_face_size]
        return sorted(faces, key=lambda f: -f.score)

    def score_boxes(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """O-Net face probability ``[K]`` of boxes ``[K, 4]`` (x, y, w, h; squared about their centre)."""
        from mtcnn.utils.images import extract_patches, standarize_batch

        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if boxes.shape[0] == 0:
            return np.zeros(0)
        side = boxes[:, 2:].max(1)
        cx, cy = boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2
        rows = np.stack([np.zeros(len(boxes)), cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)
        images, _, _ = standarize_batch([np.asarray(rgb, np.float32)], normalize=True)
        # mtcnn 1.0 (pinned) exposes no box-scoring call: run its O-Net stage's network as the stage does.
        onet = self._mtcnn.get_stage(stage_id=3)
        _, _, scores = onet._model(extract_patches(images, rows, expected_size=(48, 48)))
        return np.asarray(scores)[:, -1]


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


def landmarks_box(landmarks: np.ndarray) -> np.ndarray:
    """(x, y, w, h) of the extent of points ``[P, 2]``."""
    lo, hi = landmarks.min(0), landmarks.max(0)
    return np.array([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]], np.float64)


# 68-point (iBUG/OpenFace) -> 49: drop the 17 jaw points (0-16) and the inner mouth corners (60, 64).
_FROM_68 = tuple(i for i in range(17, 68) if i not in (60, 64))
# DISFA's 66 points: 18..66 (1-based) are the 49 (docs/model.md §1).
_FROM_66 = tuple(range(17, 66))


def check_landmarks(landmarks: np.ndarray, size: tuple[int, int]) -> str | None:
    """Why given 49-point ``landmarks`` ``[49, 2]`` cannot be a face of a ``size`` (w, h) frame, or None.

    Refused: non-finite values, eye centres less than 2 pixels apart (all-zero or collapsed points: the
    alignment needs an eye line), fewer than half of the points inside the frame (wrong scale or frame).
    """
    lm = np.asarray(landmarks, np.float64)
    if not np.all(np.isfinite(lm)):
        return "landmarks contain NaN or infinite values"
    d_o = float(alignment.interocular(lm))
    if d_o < 2.0:
        return f"eye centres {d_o:.2g} pixels apart (all-zero or collapsed landmarks); cannot align"
    w, h = size
    inside = np.sum((lm[:, 0] >= 0) & (lm[:, 0] < w) & (lm[:, 1] >= 0) & (lm[:, 1] < h))
    if inside < len(lm) / 2:
        box = landmarks_box(lm)
        return (f"landmarks lie outside the {w}x{h} frame ({inside} of {len(lm)} points inside; box at "
                f"x={box[0]:.6g}, y={box[1]:.6g}, {box[2]:.6g}x{box[3]:.6g})")
    return None


def reduce_to_49(points: np.ndarray, where: str = "landmarks") -> np.ndarray:
    """Landmarks ``[49|66|68, 2]`` -> the 49-point scheme ``[49, 2]`` (68: jaw and inner mouth corners
    dropped; 66: DISFA's points 18..66)."""
    p = np.asarray(points, np.float64)
    if p.ndim == 1 and p.size % 2 == 0:
        p = p.reshape(-1, 2)
    if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] not in (49, 66, 68):
        raise UserError(f"{where}: expected 49, 66 or 68 (x, y) points, got {p.size} numbers")
    if p.shape[0] == 68:
        p = p[list(_FROM_68)]
    elif p.shape[0] == 66:
        p = p[list(_FROM_66)]
    return p
