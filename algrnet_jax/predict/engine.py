"""Faces -> aligned crops -> the network -> per-face results, for photos and videos.

Per face: align from five anchors (detector points, or five points of given landmarks) with the JAA-Net
affine (``data_pipelines.alignment``), preprocess (``Predictor.preprocess``), run the network, map the
predicted landmarks back to the original frame; pass 2 re-aligns from those landmarks and runs again
(removing the detector's bias). Videos: detection on key frames (every ``keyframe_every`` frames, and
whenever a tracked face's confidence falls below ``track_threshold``), in between each face is aligned
from its landmarks of the previous frame and checked by MTCNN's last stage (O-Net) on its box; faces
keep a ``face_id`` by IoU with the previous boxes.

Batching: videos are read ``frame_batch`` frames at a time and every face of those frames runs through the
network as one batch (padded to a power-of-two bucket up to the predictor's batch size: one compilation per
bucket). Tracked frames between two key frames are aligned from the landmarks of the last frame before the batch
(``frame_batch = 1``: from the previous frame's, the exact per-frame tracking); a frame whose tracked face the
O-Net rejects is re-detected and the frames after it are recomputed. Frames with given landmarks
(``--landmarks``) and already aligned frames (``--aligned``) are independent and batch fully.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import cv2
import jax
import numpy as np

from algrnet_jax.predict.faces import Face, MTCNNDetector, box_iou, landmarks_box
from data_pipelines import alignment

ALIGNED = alignment.ALIGNED_SIZE


@dataclasses.dataclass
class Options:
    """What ``algrnet predict`` tunes. ``passes`` 1 or 2; ``keyframe_every`` frames between detections
    (1: detect on every frame); ``track_threshold`` O-Net score under which a tracked face is re-detected;
    ``threshold`` the occurrence threshold for ``AUxx_c``; ``max_faces`` per frame (0: all);
    ``frame_batch`` video frames run together (see the module docstring; 0 = auto: tracked frames one at a time on
    CPU, where batching them measured no gain, 8 on accelerators; independent frames 8 at a time)."""

    passes: int = 2
    keyframe_every: int = 10
    track_threshold: float = 0.5
    threshold: float = 0.5
    max_faces: int = 0
    attention: bool = False
    min_face_size: int = 40
    frame_batch: int = 0


AUTO_FRAME_BATCH = 8   # Options.frame_batch = 0: frames per batch on accelerators, and of independent frames
# Frames with a longer side are searched for faces at this side: the detector's memory and time grow with the
# pixels (docs/usage_predict.md, "Measured"), and faces too small to be found after the reduction are rare in so
# large a frame.
DETECT_MAX_SIDE = 2048


@dataclasses.dataclass
class FaceResult:
    """One face in one frame: ``landmarks`` [49, 2] original pixels, ``probs`` [n], ``box`` (x, y, w, h),
    ``aligned`` uint8 [200, 200, 3] (the last pass's crop), ``maps`` [n, m, m] (with attention)."""

    face_id: int
    box: np.ndarray
    confidence: float
    landmarks: np.ndarray
    probs: np.ndarray
    aligned: np.ndarray
    maps: np.ndarray | None = None

    @property
    def finite(self) -> bool:
        """Whether the network's outputs for this face (landmarks, probabilities) are all finite."""
        return bool(np.all(np.isfinite(self.landmarks)) and np.all(np.isfinite(self.probs)))


@dataclasses.dataclass
class Timing:
    """Seconds spent per stage (the benchmark's split)."""

    decode: float = 0.0
    detect: float = 0.0
    align: float = 0.0
    network: float = 0.0
    frames: int = 0

    def add(self, other: "Timing") -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def _bucket(n: int, cap: int) -> int:
    b = 1
    while b < n:
        b *= 2
    return max(min(b, cap), 1)


def _invert(matrix: np.ndarray) -> np.ndarray:
    m = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(m)[:2]


class Engine:
    """Runs a :class:`algrnet_jax.inference.Predictor` on faces of frames.

    ``detector`` is created on first use (``faces.MTCNNDetector``) unless given (tests pass their own).
    """

    def __init__(self, predictor: Any, options: Options | None = None, detector: Any = None):
        self.predictor = predictor
        self.options = options or Options()
        if self.options.passes not in (1, 2):
            raise ValueError(f"passes must be 1 or 2, got {self.options.passes}")
        if self.options.frame_batch < 0:
            raise ValueError(f"frame_batch must be >= 0 (0 = auto), got {self.options.frame_batch}")
        fb = self.options.frame_batch
        # Tracked frames: batching them measured no gain on the 2-core CPU at the paper size (README, predict).
        self.track_batch = fb or (1 if jax.default_backend() == "cpu" else AUTO_FRAME_BATCH)
        self.independent_batch = fb or AUTO_FRAME_BATCH
        self._detector = detector
        self.timing = Timing()
        self.keys = ("landmarks", predictor.prob_key) + (("refined_au_maps",) if self.options.attention else ())

    @property
    def detector(self) -> Any:
        if self._detector is None:      # min_face_size applies in frame pixels (detect), not the detector's
            self._detector = MTCNNDetector(min_face_size=0)
        return self._detector

    # -- the network on aligned crops
    def run_aligned(self, aligned: np.ndarray) -> dict[str, np.ndarray]:
        """Aligned faces uint8 [K, 200, 200, 3] -> outputs (``landmarks`` in aligned 200-pixel coordinates)."""
        t = time.perf_counter()
        k = aligned.shape[0]
        bs = _bucket(k, self.predictor.batch_size)
        out = self.predictor.run(self.predictor.preprocess(aligned), keys=self.keys, batch_size=bs, fixed_shape=True)
        out["landmarks"] = self.predictor.landmarks_to_aligned(out["landmarks"])
        self.timing.network += time.perf_counter() - t
        return out

    def _warp(self, frames: list[np.ndarray], matrices: list[np.ndarray]) -> np.ndarray:
        t = time.perf_counter()
        aligned = np.stack([alignment.warp(rgb, m, ALIGNED) for rgb, m in zip(frames, matrices)])
        self.timing.align += time.perf_counter() - t
        return aligned

    def _pass(self, frames: list[np.ndarray],
              matrices: list[np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """One pass over K faces (``frames[k]`` the frame of face k): (landmarks in the frames [K, 49, 2],
        outputs, aligned crops)."""
        aligned = self._warp(frames, matrices)
        out = self.run_aligned(aligned)
        lm = np.stack([alignment.apply_affine(_invert(m), p) for m, p in zip(matrices, out["landmarks"])])
        return lm, out, aligned

    def refine(self, frames: np.ndarray | list[np.ndarray], matrices: list[np.ndarray], passes: int | None = None
               ) -> list[tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray]]:
        """Runs ``passes`` passes from first alignments ``matrices`` of K faces; pass k+1 aligns from pass k's
        landmarks. ``frames``: one RGB frame for every face, or a list of K frames (faces of several frames
        run as one batch).

        Returns per pass (landmarks [K, 49, 2] frame pixels, outputs, aligned crops, matrices [K, 2, 3]).
        """
        if isinstance(frames, np.ndarray):
            frames = [frames] * len(matrices)
        results = []
        for p in range(passes or self.options.passes):
            if p > 0:
                matrices = [self._matrix_or(lm, m) for lm, m in zip(results[-1][0], matrices)]
            lm, out, aligned = self._pass(frames, matrices)
            results.append((lm, out, aligned, np.stack(matrices)))
        return results

    @staticmethod
    def _matrix_or(landmarks: np.ndarray, fallback: np.ndarray) -> np.ndarray:
        try:
            return alignment.alignment_matrix(landmarks)
        except ValueError:   # degenerate prediction: keep the previous alignment
            return fallback

    def _results(self, ids: list[int], boxes: list[np.ndarray], scores: list[float],
                 final: tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray]) -> list[FaceResult]:
        lm, out, aligned, _ = final
        maps = out.get("refined_au_maps")
        return [FaceResult(i, np.asarray(b, np.float64), float(s), lm[j], out[self.predictor.prob_key][j],
                           aligned[j], None if maps is None else maps[j])
                for j, (i, b, s) in enumerate(zip(ids, boxes, scores))]

    # -- images
    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces of an RGB frame ``[H, W, 3]`` at least ``min_face_size`` pixels wide and high, best first, in its
        pixels; a frame whose longer side exceeds ``DETECT_MAX_SIDE`` is searched at that side (the boxes and
        points scaled back)."""
        t = time.perf_counter()
        scale = max(rgb.shape[:2]) / DETECT_MAX_SIDE
        if scale > 1.0:
            h, w = rgb.shape[:2]
            small = cv2.resize(rgb, (max(round(w / scale), 1), max(round(h / scale), 1)), interpolation=cv2.INTER_AREA)
            faces = [Face(f.box * scale, f.score, f.points * scale) for f in self.detector.detect(small)]
        else:
            faces = self.detector.detect(rgb)
        self.timing.detect += time.perf_counter() - t
        faces = [f for f in faces if min(f.box[2], f.box[3]) >= self.options.min_face_size]
        if self.options.max_faces > 0:
            faces = faces[:self.options.max_faces]
        return faces

    def gives_numbers(self) -> bool:
        """Whether any output of the network for a plain grey face is finite: False for a checkpoint whose every
        output is NaN or infinite (e.g. diverged training), which no input can make usable."""
        out = self.run_aligned(np.full((1, ALIGNED, ALIGNED, 3), 128, np.uint8))
        return any(bool(np.any(np.isfinite(v))) for v in out.values())

    def image(self, rgb: np.ndarray, landmarks: list[np.ndarray] | None = None) -> list[FaceResult]:
        """Faces of one photo (detected, or from given 49-point ``landmarks``), face_id = rank."""
        if landmarks is not None:
            return self.with_landmarks([rgb], [landmarks])[0]
        faces = self.detect(rgb)
        if not faces:
            return []
        matrices = [alignment.alignment_matrix_from_points(f.points) for f in faces]
        passes = self.refine(rgb, matrices)
        return self._results(list(range(len(faces))), [f.box for f in faces], [f.score for f in faces], passes[-1])

    def with_landmarks(self, frames: list[np.ndarray], landmarks: list[list[np.ndarray]]) -> list[list[FaceResult]]:
        """Faces of several frames from given 49-point ``landmarks`` (a list per frame), all in one batch;
        per frame its results, face_id = rank in the frame."""
        faces = [[Face(landmarks_box(lm), 1.0, alignment.five_points(lm)) for lm in given] for given in landmarks]
        owners = [rgb for rgb, fs in zip(frames, faces) for _ in fs]
        if not owners:
            return [[] for _ in frames]
        matrices = [alignment.alignment_matrix_from_points(f.points) for fs in faces for f in fs]
        final = self.refine(owners, matrices)[-1]
        results, start = [], 0
        for fs in faces:
            part = _take(final, slice(start, start + len(fs)))
            results.append(self._results(list(range(len(fs))), [f.box for f in fs], [f.score for f in fs], part))
            start += len(fs)
        return results

    def aligned_face(self, aligned: np.ndarray) -> list[FaceResult]:
        """An already aligned 200x200 face: one result, landmarks in its own pixels."""
        return self.aligned_faces(aligned[None])[0]

    def aligned_faces(self, aligned: np.ndarray) -> list[list[FaceResult]]:
        """Already aligned 200x200 faces uint8 ``[N, 200, 200, 3]`` (e.g. frames of an aligned video) in one
        batch: per face a one-result list, landmarks in its own pixels."""
        out = self.run_aligned(aligned)
        box = np.array([0.0, 0.0, aligned.shape[2], aligned.shape[1]])
        final = (out["landmarks"], out, aligned, np.zeros((len(aligned), 2, 3)))
        return [self._results([0], [box], [1.0], _take(final, slice(i, i + 1))) for i in range(len(aligned))]

    # -- videos
    def _read(self, frames: Iterator[tuple[int, float, np.ndarray]], n: int) -> list[tuple[int, float, np.ndarray]]:
        """Up to ``n`` next frames (timed as decoding)."""
        t = time.perf_counter()
        chunk = [item for _, item in zip(range(n), frames)]
        self.timing.decode += time.perf_counter() - t
        self.timing.frames += len(chunk)
        return chunk

    def video(self, frames: Iterator[tuple[int, float, np.ndarray]],
              landmarks: dict[int, list[np.ndarray]] | None = None, aligned: bool = False
              ) -> Iterator[tuple[int, float, np.ndarray, list[FaceResult]]]:
        """Faces over ``(index, timestamp, rgb)`` frames, ``frame_batch`` frames at a time: tracked (default),
        from given ``landmarks`` per frame index, or ``aligned`` frames; yields (index, timestamp, rgb, faces)."""
        tracker = _Tracker(self)
        it = iter(frames)
        size = self.independent_batch if aligned or landmarks is not None else self.track_batch
        while chunk := self._read(it, size):
            idxs, rgbs = [c[0] for c in chunk], [c[2] for c in chunk]
            if aligned:
                faces = self.aligned_faces(np.stack(rgbs))
            elif landmarks is not None:
                faces = self.with_landmarks(rgbs, [landmarks.get(i, []) for i in idxs])
            else:
                faces = tracker.steps(idxs, rgbs)
            for (idx, ts, rgb), found in zip(chunk, faces):
                yield idx, ts, rgb, found


def _take(final: tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray],
          part: slice) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The faces ``part`` of a pass result (landmarks, outputs, aligned crops, matrices)."""
    lm, out, aligned, matrices = final
    return lm[part], {k: v[part] for k, v in out.items()}, aligned[part], matrices[part]


@dataclasses.dataclass
class _Track:
    face_id: int
    landmarks: np.ndarray        # [49, 2] frame pixels
    box: np.ndarray              # (x, y, w, h)
    corners: np.ndarray          # [4, 2] the detection box in the aligned frame of its landmarks
    last_seen: int
    matrix: np.ndarray           # [2, 3] alignment from its landmarks (the previous one if they degenerate)


class _Tracker:
    """Key-frame detection + landmark tracking + IoU face ids (see module docstring)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.tracks: list[_Track] = []
        self.lost: list[_Track] = []
        self.next_id = 0
        self.last_key = -10 ** 9

    @staticmethod
    def _follow(track: _Track, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(alignment [2, 3] of the new ``landmarks``, the detection box carried along with it); the track's
        current ones when the landmarks are degenerate."""
        try:
            m = alignment.alignment_matrix(landmarks)
        except ValueError:
            return track.matrix, track.box
        return m, landmarks_box(alignment.apply_affine(_invert(m), track.corners))

    def steps(self, idxs: list[int], frames: list[np.ndarray]) -> list[list[FaceResult]]:
        """Results of consecutive frames: key frames are detected; the tracked frames up to the next key frame
        run as one batch, aligned from the tracks' current landmarks; the first frame whose tracked face the
        O-Net rejects is re-detected and the frames after it run again."""
        every = self.engine.options.keyframe_every
        results: list[list[FaceResult]] = []
        i = 0
        while i < len(idxs):
            if not self.tracks or idxs[i] - self.last_key >= every:
                results.append(self._detect(idxs[i], frames[i]))
                i += 1
                continue
            n = min(len(idxs) - i, every - (idxs[i] - self.last_key))     # frames before the next key frame
            tracked = self._track(idxs[i:i + n], frames[i:i + n])
            results += tracked
            i += len(tracked)
            if len(tracked) < n:                                         # lost at frame i: detect there
                results.append(self._detect(idxs[i], frames[i]))
                i += 1
        return results

    def _track(self, idxs: list[int], frames: list[np.ndarray]) -> list[list[FaceResult]]:
        """Tracked frames in one batch; stops before the first frame the O-Net rejects."""
        eng = self.engine
        k = len(self.tracks)
        matrices = [t.matrix for _ in frames for t in self.tracks]
        final = eng.refine([rgb for rgb in frames for _ in self.tracks], matrices, passes=1)[-1]
        results = []
        for f, (idx, rgb) in enumerate(zip(idxs, frames)):
            part = _take(final, slice(f * k, (f + 1) * k))
            followed = [self._follow(t, lm) for t, lm in zip(self.tracks, part[0])]
            boxes = [b for _, b in followed]
            t0 = time.perf_counter()
            scores = eng.detector.score_boxes(rgb, np.stack(boxes))
            eng.timing.detect += time.perf_counter() - t0
            if float(np.min(scores)) < eng.options.track_threshold:
                break
            for t, lm, (m, b) in zip(self.tracks, part[0], followed):
                t.landmarks, t.box, t.last_seen, t.matrix = lm, b, idx, m
            results.append(eng._results([t.face_id for t in self.tracks], boxes, list(scores), part))
        return results

    def _detect(self, idx: int, rgb: np.ndarray) -> list[FaceResult]:
        eng = self.engine
        self.last_key = idx
        faces = eng.detect(rgb)
        previous = self.tracks + [t for t in self.lost if idx - t.last_seen <= 10 * eng.options.keyframe_every]
        if not faces:
            self.lost, self.tracks = previous, []
            return []
        ids: list[int] = []
        used: set[int] = set()
        for f in faces:
            best, best_iou = None, 0.3
            for t in previous:
                iou = box_iou(f.box, t.box)
                if t.face_id not in used and iou > best_iou:
                    best, best_iou = t.face_id, iou
            if best is None:
                best, self.next_id = self.next_id, self.next_id + 1
            used.add(best)
            ids.append(best)
        matrices = [alignment.alignment_matrix_from_points(f.points) for f in faces]
        final = eng.refine(rgb, matrices)[-1]
        self.lost = [t for t in previous if t.face_id not in used]
        self.tracks = []
        for i, f, lm, m0 in zip(ids, faces, final[0], final[3]):
            m = eng._matrix_or(lm, m0)
            x, y, w, h = f.box
            corners = alignment.apply_affine(m, np.array([[x, y], [x + w, y], [x, y + h], [x + w, y + h]]))
            self.tracks.append(_Track(i, lm, f.box, corners, idx, m))
        return eng._results(ids, [f.box for f in faces], [f.score for f in faces], final)
