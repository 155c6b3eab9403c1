"""The records (tfds examples) every builder writes (docs/design.md "Records"): their tfds features, the :class:`Frame` a
builder yields, how a frame becomes a record (:func:`make_example`), and per-part label counts.

Records hold the aligned face ``image`` uint8 ``[200, 200, 3]`` (JPEG), ``landmarks`` float32 ``[49, 2]``,
``interocular`` float32 ``[]``, ``labels`` int8 ``[n]`` (-1 unknown; paralysis ``[1]`` the grade),
``subject``, ``sequence``, ``frame`` and ``fold``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from algrnet_jax import au_sets, tasks
from data_pipelines import alignment
from data_pipelines.builders.checks import check_image, check_labels, check_landmarks
from data_pipelines.builders.label_sets import num_labels
from data_pipelines.builders.parts import NUM_PARTS
from data_pipelines.errors import BadInputError
from data_pipelines.images import encode_jpeg

IMAGE_SIZE = alignment.ALIGNED_SIZE


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


@dataclasses.dataclass
class Frame:
    """One frame to write; ``image``/``landmarks`` (aligned) or ``load`` (lazy, may raise).

    ``image`` RGB uint8 ``[200, 200, 3]``, ``landmarks`` ``[49, 2]`` aligned 0-based, ``labels`` ``[n]``;
    ``load() -> (image, landmarks)``. ``source`` is what error messages name (the image path, or
    ``subject/sequence/frame``). ``interocular`` defaults to the eye-centre distance of the aligned landmarks.
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
    """Per-part label statistics (``tasks.Task.count_labels`` of the label set's task): AU positives and
    labelled counts ``[n]``, or grade counts ``[4]``."""

    def __init__(self, label_set: str):
        self.label_set = label_set
        self.task = tasks.task_for_label_set(label_set)
        self.num_examples = 0
        self.counts = {k: np.zeros_like(v) for k, v in
                       self.task.count_labels(np.zeros((0, num_labels(label_set)), np.int64)).items()}

    def add(self, labels: np.ndarray) -> None:
        """Counts one record's labels ``[n]`` (int8, -1 unknown) or ``[1]`` grade."""
        self.num_examples += 1
        for k, v in self.task.count_labels(np.asarray(labels, np.int64)[None]).items():
            self.counts[k] += v

    def as_json(self) -> dict[str, Any]:
        """``{"num_examples", "positives" [n], "labelled" [n]}`` or ``{"num_examples", "grades" [4]}``."""
        return {"num_examples": self.num_examples, **{k: v.tolist() for k, v in self.counts.items()}}


def read_back(builder: tfds.core.DatasetBuilder, split: str, *, decode_images: bool = True
              ) -> Iterator[dict[str, Any]]:
    """The records of a built ``split`` (``"part1"``, ``"part2+part3"``) as numpy dicts, in stored order.

    ``image`` uint8 ``[200, 200, 3]`` (JPEG bytes with ``decode_images=False``), text features as bytes.
    Reads either record format (ArrayRecord through a tfds data source, TFRecord through tf.data).
    """
    decoders = None if decode_images else {"image": tfds.decode.SkipDecoding()}
    if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
        for name in split.split("+"):
            source = builder.as_data_source(split=name, decoders=decoders)
            for i in range(len(source)):
                yield source[i]
    else:
        yield from tfds.as_numpy(builder.as_dataset(split=split, decoders=decoders))
