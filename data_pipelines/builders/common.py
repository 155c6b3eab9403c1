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
import glob
import inspect
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from algrnet_jax import au_sets
from algrnet_jax.errors import UserError
from algrnet_jax.locking import DirLock
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
STAGING_DIR = ".algrnet_staging"    # under the data dir: build lock, rebuilds in progress, replaced data
SKIP_BAD_HINT = "pass --skip-bad to skip such frames (they are then listed in bad_frames.json)"


class BadInputError(UserError, ValueError):
    """Release files that cannot be used; the message names the file (and line) and the problem."""


class BadFrameError(BadInputError):
    """One frame cannot be used (skippable with ``skip_bad``); the message says so."""


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
    is_jpeg = data[:2] == b"\xff\xd8"
    if is_jpeg and b"\xff\xd9" not in data[-64:]:
        raise BadInputError(f"{path}: corrupt image (truncated JPEG: no end-of-image marker)")
    if is_jpeg:
        image, warning = decode_jpeg_strict(data)
        if warning:
            raise BadInputError(f"{path}: corrupt image (the JPEG decoder reports: {warning})")
    else:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise BadInputError(f"{path}: corrupt image (cannot be decoded)")
    return np.ascontiguousarray(image[..., ::-1])


# libjpeg's warnings for damaged data ("Corrupt JPEG data: ...", "Premature end of JPEG file", ...).
_JPEG_WARNING = re.compile(r"^.*(corrupt jpeg|premature end|jpeg datastream|invalid jpeg|bogus|"
                           r"unsupported marker|huffman|warning).*$", re.IGNORECASE | re.MULTILINE)


_capture: Any = None            # one temporary file per process receives the decoder's messages
_capture_lock = threading.Lock()


def decode_jpeg_strict(data: bytes) -> tuple[np.ndarray | None, str]:
    """Decodes JPEG bytes with OpenCV; returns (BGR image or None, the decoder's warning or "").

    libjpeg decodes damaged data (e.g. a zeroed second half) into a grey-filled image and only prints a
    warning to the C stderr. The warning is captured by pointing file descriptor 2 at a temporary file
    for the call; anything else written there meanwhile is passed on to stderr.
    """
    global _capture
    sys.stderr.flush()
    with _capture_lock:
        if _capture is None:
            _capture = tempfile.TemporaryFile()
        _capture.seek(0)
        _capture.truncate()
        saved = os.dup(2)
        try:
            os.dup2(_capture.fileno(), 2)
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        _capture.seek(0)
        text = _capture.read().decode(errors="replace")
    warnings = [m.group(0).strip() for m in _JPEG_WARNING.finditer(text)]
    rest = _JPEG_WARNING.sub("", text).strip()
    if rest:
        print(rest, file=sys.stderr)
    return image, "; ".join(warnings)


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
    ``tfds build``) to skip bad frames instead of failing on the first one, and ``parts=(1,)`` to build
    only some parts (a subset, e.g. when the release files of the others are absent).

    ``download_and_prepare`` holds a lock per dataset config while it builds (a second build of the same
    config fails at once naming the first one's PID), first cleans what a killed build left (tfds'
    ``incomplete.*`` directories), and rebuilds over an existing dataset (``overwrite``) into a staging
    directory that replaces the old data only once the new build is complete: until then, and if the
    rebuild fails or is killed, the old dataset stays as it was.
    """

    def __init__(self, *, skip_bad: bool | None = None, parts: Sequence[int] | None = None, **kwargs):
        if skip_bad is None:
            skip_bad = os.environ.get(SKIP_BAD_ENV, "").lower() in ("1", "true", "yes")
        self.skip_bad = bool(skip_bad)
        self.parts = tuple(range(1, NUM_PARTS + 1)) if not parts else tuple(sorted({int(p) for p in parts}))
        bad = [p for p in self.parts if not 1 <= p <= NUM_PARTS]
        if bad:
            raise BadInputError(f"parts {bad}: a part is 1..{NUM_PARTS}")
        self.cache_hits = 0      # subjects replayed from the resume cache (release builds)
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
        md["parts"] = list(self.parts)
        self._check_parts(dl_manager)
        return {part_name(k): self._generate_examples(k, dl_manager) for k in self.parts}

    def _check_parts(self, dl_manager: tfds.download.DownloadManager) -> None:
        """Raises BadInputError naming the requested parts that the release files have no frames for.

        The base class finds out only when a part yields nothing; subclasses that can tell up front do so.
        """

    def _generate_examples(self, part: int, dl_manager) -> Iterator[tuple[str, dict[str, Any]]]:
        name = part_name(part)
        counter = LabelCounter(self.label_set)
        bad: list[dict[str, Any]] = []
        for frame in self._frames(part, dl_manager):
            try:
                example = make_example(frame, self.label_set)
            except BadInputError as e:
                if not self.skip_bad:
                    raise BadFrameError(f"{e}\n({SKIP_BAD_HINT})") from e
                log.warning("skipping bad frame: %s", e)
                bad.append({"key": frame.key, "source": frame.source, "subject": str(frame.subject),
                            "sequence": str(frame.sequence), "frame": int(frame.frame), "error": str(e)})
                continue
            if int(frame.fold) != part:
                raise BadInputError(f"{frame.source}: frame of fold {frame.fold} generated for {name}")
            counter.add(example["labels"])
            yield frame.key, example
        if counter.num_examples == 0:
            why = f"all {len(bad)} of its frames are bad (see the warnings above)" if bad else "no frames found"
            raise BadInputError(f"{self.name}/{self.builder_config.name}: {name} is empty ({why}); "
                                f"{empty_parts_hint([part], self.parts)}")
        self.info.metadata["label_counts"][name] = counter.as_json()
        self.info.metadata["bad_frames"][name] = bad
        if bad:
            log.warning("%s/%s: skipped %d bad frames (listed in %s)", self.name, name, len(bad), BAD_FRAMES_FILE)

    # ---- building: one build per config, stale leftovers cleaned, atomic rebuild
    def _staging(self) -> tuple[str, str, str]:
        """(version dir, config dir, staging dir of this config under ``<data_dir>/.algrnet_staging``)."""
        version_dir = os.fspath(self.data_dir)
        config_dir = os.path.dirname(version_dir)
        root = os.fspath(self.data_dir_root)
        return version_dir, config_dir, os.path.join(root, STAGING_DIR, os.path.relpath(config_dir, root))

    def download_and_prepare(self, *, download_dir: Any = None,
                             download_config: tfds.download.DownloadConfig | None = None, **kwargs: Any) -> None:
        download_config = download_config or tfds.download.DownloadConfig()
        version_dir, config_dir, staging = self._staging()
        full_name = f"{self.name}/{self.builder_config.name}"
        with DirLock(os.path.join(staging, "build.lock"), f"dataset {full_name} in {self.data_dir_root}",
                     "another build of it is running; wait for it to end (or stop it)"):
            self._clean_stale(version_dir, config_dir, staging)
            exists = os.path.isfile(os.path.join(version_dir, "dataset_info.json"))
            if not (exists and download_config.download_mode.overwrite_dataset):
                super().download_and_prepare(download_dir=download_dir, download_config=download_config, **kwargs)
                return
            # Rebuild beside the old data (same file system), then swap.
            # <staging>/new/<config>/<version>: what tfds writes beside a version dir stays inside new/.
            new_dir = os.path.join(staging, "new", os.path.basename(config_dir), os.path.basename(version_dir))
            fresh = dataclasses.replace(download_config,
                                        download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
            real = self._data_dir
            self._data_dir = new_dir
            try:
                super().download_and_prepare(
                    download_dir=download_dir or os.path.join(os.fspath(self.data_dir_root), "downloads"),
                    download_config=fresh, **kwargs)
            finally:
                self._data_dir = real
            replaced = os.path.join(staging, "replaced")
            os.rename(version_dir, replaced)        # a kill between these two renames is undone by the
            os.rename(new_dir, version_dir)         # next build's _clean_stale (old data put back)
            shutil.rmtree(replaced)
            shutil.rmtree(os.path.join(staging, "new"), ignore_errors=True)
            self.info.update_data_dir(version_dir)

    def _clean_stale(self, version_dir: str, config_dir: str, staging: str) -> None:
        """Removes what a killed build left (under the build lock, so no build is using it)."""
        replaced = os.path.join(staging, "replaced")
        if os.path.isdir(replaced):
            if os.path.isdir(version_dir):
                shutil.rmtree(replaced)
            else:                                   # killed mid-swap: the old dataset goes back in place
                os.rename(replaced, version_dir)
                self.info.read_from_directory(version_dir)
                log.warning("%s: restored the dataset an interrupted rebuild had moved aside", version_dir)
        stale = sorted(glob.glob(os.path.join(config_dir, "incomplete.*")))
        stale += [d for d in (os.path.join(staging, "new"),) if os.path.exists(d)]
        for d in stale:
            shutil.rmtree(d, ignore_errors=True)
        if stale:
            log.warning("removed %d unfinished build director%s left by an interrupted build: %s", len(stale),
                        "y" if len(stale) == 1 else "ies", ", ".join(stale))


def empty_parts_hint(empty: Sequence[int], requested: Sequence[int]) -> str:
    """What to do when some requested parts have no frames: build the others with ``--parts``."""
    present = [p for p in requested if p not in empty]
    if not present:
        return "check the manual dir against the manual download instructions"
    return (f"add the missing release files, or build only the parts present with --parts "
            f"{','.join(map(str, present))} (a subset: training needs the two parts other than the test part)")
