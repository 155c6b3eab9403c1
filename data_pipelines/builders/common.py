"""What every tfds builder of this project shares (synth_au, bp4d, disfa, fpara).

- the record features (docs/design.md "Records"): :func:`features`;
- split naming (``part1..part3``, subject-exclusive; fold k tests on part k): :func:`part_name`,
  :func:`train_split`, :func:`test_split`;
- bad-input checks that raise :class:`BadInputError` naming the file / record and the problem:
  :func:`load_image`, :func:`check_image`, :func:`check_landmarks`, :func:`check_labels`,
  :func:`load_and_align`;
- :class:`AlgrnetBuilder`, a ``GeneratorBasedBuilder`` base class. A subclass sets ``BUILDER_CONFIGS``
  (of :class:`AlgrnetBuilderConfig`, which carries the label set) and implements
  ``_frames(part, dl_manager) -> Iterator[Frame]``. The base class validates and encodes every frame,
  skips bad ones when built with ``skip_bad=True`` (reported in ``bad_frames.json`` next to the
  dataset and logged), and stores per-part label counts in the dataset metadata (``metadata.json``)
  from which the input pipeline derives the AU loss weights.

A real-data builder in a few lines::

    class Bp4d(common.AlgrnetBuilder):
      VERSION = tfds.core.Version("1.0.0")
      BUILDER_CONFIGS = [common.AlgrnetBuilderConfig(name="default", label_set="bp4d")]
      MANUAL_DOWNLOAD_INSTRUCTIONS = "..."

      def _frames(self, part, dl_manager):
        for ...:
          yield common.Frame(key=..., subject=..., sequence=..., frame=..., fold=part, labels=...,
                             source=image_path,
                             load=functools.partial(common.load_and_align, image_path, raw_landmarks))
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from algrnet_jax import au_sets
from data_pipelines import alignment

log = logging.getLogger(__name__)

NUM_PARTS = 3
PARTS: tuple[str, ...] = tuple(f"part{k}" for k in range(1, NUM_PARTS + 1))
IMAGE_SIZE = alignment.ALIGNED_SIZE
JPEG_QUALITY = 95
PARALYSIS = "paralysis"
LABEL_SETS: tuple[str, ...] = (*au_sets.AU_SETS, PARALYSIS)
BAD_FRAMES_FILE = "bad_frames.json"
SKIP_BAD_ENV = "ALGRNET_SKIP_BAD"


class BadInputError(ValueError):
    """A frame of a release cannot be used; the message names the file / record and the problem."""


# ----------------------------------------------------------------------------------- splits, dirs


def default_data_dir() -> str:
    """Where datasets live: ``$ALGRNET_DATA_DIR`` or ``./data/tfds`` in the working directory."""
    return os.environ.get("ALGRNET_DATA_DIR") or os.path.join(os.getcwd(), "data", "tfds")


def part_name(part: int) -> str:
    """``part_name(2) == "part2"``."""
    if not 1 <= int(part) <= NUM_PARTS:
        raise ValueError(f"part/fold must be in 1..{NUM_PARTS}, got {part!r}")
    return f"part{int(part)}"


def train_split(fold: int) -> str:
    """The training split of a fold: the other two parts, e.g. ``train_split(1) == "part2+part3"``."""
    test = part_name(fold)
    return "+".join(p for p in PARTS if p != test)


def test_split(fold: int) -> str:
    """The test split of a fold: ``test_split(k) == f"part{k}"``."""
    return part_name(fold)


def label_set_aus(label_set: str) -> tuple[int, ...]:
    """AU numbers of a label set; ``()`` for paralysis (its single label is the grade)."""
    if label_set == PARALYSIS:
        return ()
    if label_set not in au_sets.AU_SETS:
        raise ValueError(f"unknown label set {label_set!r}; choose from {', '.join(LABEL_SETS)}")
    return au_sets.AU_SETS[label_set]


def num_labels(label_set: str) -> int:
    """Length of the ``labels`` record feature: n AUs, or 1 (the grade) for paralysis."""
    return 1 if label_set == PARALYSIS else len(label_set_aus(label_set))


# ------------------------------------------------------------------------------------ features


def features(n_labels: int, image_size: int = IMAGE_SIZE) -> tfds.features.FeaturesDict:
    """The record features of docs/design.md; ``labels`` int8 ``[n_labels]``."""
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(image_size, image_size, 3), encoding_format="jpeg"),
        "landmarks": tfds.features.Tensor(shape=(au_sets.NUM_LANDMARKS, 2), dtype=np.float32),
        "interocular": tfds.features.Scalar(dtype=np.float32),
        "labels": tfds.features.Tensor(shape=(n_labels,), dtype=np.int8),
        "subject": tfds.features.Text(),
        "sequence": tfds.features.Text(),
        "frame": tfds.features.Scalar(dtype=np.int32),
        "fold": tfds.features.Scalar(dtype=np.int32),
    })


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """RGB uint8 ``[H, W, 3]`` -> JPEG bytes (OpenCV, 4:2:0, given quality)."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise BadInputError("JPEG encoding failed")
    return buf.tobytes()


# ---------------------------------------------------------------------------------------- checks


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as RGB uint8 ``[H, W, 3]``.

    Raises:
      BadInputError: naming the file when it is missing, empty, truncated (JPEG without its end
        marker) or cannot be decoded.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadInputError(f"{path}: image file not found")
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise BadInputError(f"{path}: image file is empty")
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-64:]:
        raise BadInputError(f"{path}: corrupt image (truncated JPEG: no end-of-image marker)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise BadInputError(f"{path}: corrupt image (cannot be decoded)")
    return np.ascontiguousarray(image[..., ::-1])


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
    if lab.size != n:
        what = "1 grade" if label_set == PARALYSIS else f"{n} AU labels ({', '.join(au_sets.au_names(label_set))})"
        raise BadInputError(f"{source}: expected {what}, got {lab.size} values")
    if not np.isfinite(lab).all() or (lab != np.round(lab)).any():
        raise BadInputError(f"{source}: labels must be integers, got {lab.tolist()}")
    allowed = set(range(len(au_sets.GRADES))) if label_set == PARALYSIS else {-1, 0, 1}
    bad = sorted({int(v) for v in lab} - allowed)
    if bad:
        raise BadInputError(f"{source}: label values {bad} not in {sorted(allowed)}")
    return lab.astype(np.int8)


def load_and_align(image_path: str | os.PathLike, raw_landmarks: Any, *, one_based: bool = True,
                   size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Loads a raw release frame and aligns it (SPEC section 2).

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


# -------------------------------------------------------------------------------------- frames


@dataclasses.dataclass
class Frame:
    """One frame to write; ``image``/``landmarks`` (aligned) or ``load`` (lazy, may raise).

    ``source`` is what error messages name (the image path, or ``subject/sequence/frame``).
    ``interocular`` defaults to the eye-centre distance of the aligned landmarks.
    """

    key: str
    subject: str
    sequence: str
    frame: int
    fold: int
    labels: Any
    source: str
    image: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    interocular: float | None = None
    load: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None


def make_example(frame: Frame, label_set: str) -> dict[str, Any]:
    """Validates a frame and returns the tfds example (JPEG-encoded image); raises BadInputError."""
    src = frame.source
    labels = check_labels(frame.labels, label_set, src)
    if frame.load is not None:
        image, landmarks = frame.load()
    else:
        image, landmarks = frame.image, frame.landmarks
    image = check_image(image, src, IMAGE_SIZE)
    landmarks = check_landmarks(landmarks, src)
    d_o = float(alignment.interocular(landmarks)) if frame.interocular is None else float(frame.interocular)
    if not np.isfinite(d_o) or d_o <= 0:
        raise BadInputError(f"{src}: inter-ocular distance must be positive and finite, got {d_o}")
    if not 1 <= int(frame.fold) <= NUM_PARTS:
        raise BadInputError(f"{src}: fold must be in 1..{NUM_PARTS}, got {frame.fold}")
    return {
        "image": encode_jpeg(image),
        "landmarks": landmarks.astype(np.float32),
        "interocular": np.float32(d_o),
        "labels": labels,
        "subject": str(frame.subject),
        "sequence": str(frame.sequence),
        "frame": np.int32(frame.frame),
        "fold": np.int32(frame.fold),
    }


class LabelCounter:
    """Per-part label statistics: AU positives and labelled counts ``[n]``, or grade counts ``[4]``."""

    def __init__(self, label_set: str):
        self.label_set = label_set
        self.num_examples = 0
        if label_set == PARALYSIS:
            self.grades = np.zeros(len(au_sets.GRADES), np.int64)
        else:
            n = num_labels(label_set)
            self.positives = np.zeros(n, np.int64)
            self.labelled = np.zeros(n, np.int64)

    def add(self, labels: np.ndarray) -> None:
        self.num_examples += 1
        if self.label_set == PARALYSIS:
            self.grades[int(labels[0])] += 1
        else:
            self.positives += labels == 1
            self.labelled += labels >= 0

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"num_examples": self.num_examples}
        if self.label_set == PARALYSIS:
            out["grades"] = self.grades.tolist()
        else:
            out["positives"] = self.positives.tolist()
            out["labelled"] = self.labelled.tolist()
        return out


# ------------------------------------------------------------------------------------- builder


class AlgrnetMetadata(tfds.core.MetadataDict):
    """Dataset metadata (``metadata.json``); also writes the bad-frame report ``bad_frames.json``."""

    def save_metadata(self, data_dir):
        super().save_metadata(data_dir)
        bad = self.get("bad_frames")
        if bad is not None:
            report = {"num_bad_frames": sum(len(v) for v in bad.values()), "bad_frames": bad}
            with epath.Path(data_dir, BAD_FRAMES_FILE).open("w") as f:
                json.dump(report, f, indent=1)


@dataclasses.dataclass(eq=False)
class AlgrnetBuilderConfig(tfds.core.BuilderConfig):
    """A builder config that carries the label set ("bp4d", "disfa" or "paralysis")."""

    label_set: str = "bp4d"


class AlgrnetBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the project's builders: features, validation, skip_bad, label counts.

    Subclasses implement ``_frames(part, dl_manager) -> Iterator[Frame]`` for part 1..3 (frames
    whose ``fold`` is that part). Pass ``skip_bad=True`` (or set ``$ALGRNET_SKIP_BAD=1``, e.g. for
    ``tfds build``) to skip bad frames instead of failing on the first one.
    """

    def __init__(self, *, skip_bad: bool | None = None, **kwargs):
        if skip_bad is None:
            skip_bad = os.environ.get(SKIP_BAD_ENV, "").lower() in ("1", "true", "yes")
        self.skip_bad = bool(skip_bad)
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """The builder's source file.

        tfds 4.9.10 finds it through ``importlib_resources``, a package it only requires on
        Python < 3.9; reading the class's file directly avoids that dependency.
        """
        return epath.Path(inspect.getfile(cls))

    @property
    def label_set(self) -> str:
        return self.builder_config.label_set

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=features(num_labels(self.label_set)),
            metadata=AlgrnetMetadata(),
            supervised_keys=None,
            # Records stay in generation order (subject, sequence, frame): eval batches follow it
            # and the training pipeline shuffles globally per epoch anyway.
            disable_shuffling=True,
        )

    def _frames(self, part: int, dl_manager: tfds.download.DownloadManager) -> Iterator[Frame]:
        raise NotImplementedError

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        md = self.info.metadata
        md["label_set"] = self.label_set
        md["aus"] = list(label_set_aus(self.label_set))
        md["label_counts"] = {}
        md["bad_frames"] = {}
        return {part_name(k): self._generate_examples(k, dl_manager) for k in range(1, NUM_PARTS + 1)}

    def _generate_examples(self, part: int, dl_manager) -> Iterator[tuple[str, dict[str, Any]]]:
        name = part_name(part)
        counter = LabelCounter(self.label_set)
        bad: list[dict[str, Any]] = []
        for frame in self._frames(part, dl_manager):
            try:
                example = make_example(frame, self.label_set)
            except BadInputError as e:
                if not self.skip_bad:
                    raise
                log.warning("skipping bad frame: %s", e)
                bad.append({"key": frame.key, "source": frame.source, "subject": str(frame.subject),
                            "sequence": str(frame.sequence), "frame": int(frame.frame), "error": str(e)})
                continue
            if int(frame.fold) != part:
                raise BadInputError(f"{frame.source}: frame of fold {frame.fold} generated for {name}")
            counter.add(example["labels"])
            yield frame.key, example
        self.info.metadata["label_counts"][name] = counter.as_json()
        self.info.metadata["bad_frames"][name] = bad
        if bad:
            log.warning("%s/%s: skipped %d bad frames (listed in %s)", self.name, name, len(bad), BAD_FRAMES_FILE)
