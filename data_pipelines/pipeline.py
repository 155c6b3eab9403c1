"""Input pipeline: a config -> a :class:`DataSource` of global numpy batches (docs/design.md "Batches").

:func:`make_source` resolves the dataset once, checks it against the config (built, array_record, label
set and AUs, batch sizes) and splits the fold's records three ways, subject-exclusive:

- **train**: the two training parts minus the validation subjects; ``train_batches(epoch, start_batch)``;
- **val**: a seeded fraction ``config.data.val_fraction`` of the training subjects (``data.val_seed``;
  at least one subject when the fraction is > 0, none when it is 0), for model selection;
- **test**: the fold's test part, untouched; ``eval_batches("test")``.

Steps per epoch and loss weights are computed over the training records only.
``make_source(config, training=False)`` is for evaluation only: the training parts are not read.

Records are read by random access (tfds data source over ArrayRecord shards, ``data_pipelines.records``)
in an order fixed by ``(config.data.shuffle_seed, epoch)``: every epoch is a global permutation of the
training records, so a run resumed at ``(epoch, start_batch)`` sees exactly the batches it would have
seen. Augmentation (random crop inside the aligned face, horizontal flip p = 0.5 with landmark reflection)
draws its parameters from ``(seed, epoch, training record position)`` (:func:`epoch_augmentation`).
Decoding, cropping and normalising run in tf.data (parallel, prefetched); batches come out as numpy:

- ``image`` float32 ``[B, C, C, 3]`` in [-1, 1]; ``landmarks`` float32 ``[B, 49, 2]`` crop pixels;
- ``interocular`` float32 ``[B]`` (scaled with the image); ``mask`` float32 ``[B]``;
- ``labels`` int32 ``[B, n]`` (0/1, -1 unknown; the AUs of ``config.aus``) or ``[B]`` grades.

Eval batches are in record order, the last one padded (``mask`` 0, AU labels -1, ``subject`` "",
``frame`` -1) and also carry ``subject`` (str ``[B]``) and ``frame`` (int32 ``[B]``).

Batches are global: the trainer shards them over its device mesh, so batch sizes must be
divisible by the device count (multi-host training: each process gets its rows of the global batch).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from algrnet_jax import tasks
from data_pipelines import augment, records
from data_pipelines.records import DataError, DatasetNotBuiltError, dataset_builder

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]

# Configs saved before data.val_fraction existed (checkpoints) trained on every training subject: 0 keeps that.
# New configs have the field (algrnet_jax/configs: 0.1).
LEGACY_VAL_FRACTION = 0.0

__all__ = ["Batch", "DataSource", "make_source", "validation_subjects", "epoch_permutation", "epoch_augmentation",
           "label_columns", "loss_weights", "DataError", "DatasetNotBuiltError", "dataset_builder", "split_for"]


# -------------------------------------------------------------------------------------- labels


def label_columns(config: ml_collections.ConfigDict, label_set: str) -> np.ndarray | None:
    """Columns of the record labels that ``config.aus`` selects; ``None`` for paralysis grades
    (``tasks.Task.label_columns`` of the config's task).

    Raises:
      DataError: the config's task does not match the label set, or an AU of ``config.aus`` is not in it.
    """
    task = tasks.get_task(config)
    if not task.accepts_label_set(label_set):
        raise DataError(f"config task {task.name!r} does not match dataset {config.data.dataset}/"
                        f"{config.data.builder_config} (label set {label_set!r})")
    try:
        return task.label_columns(config, label_set)
    except ValueError as e:
        raise DataError(str(e)) from e


def loss_weights(task: tasks.Task, labels: np.ndarray, columns: np.ndarray | None) -> np.ndarray:
    """The task's loss weights from the record labels int ``[N, L]`` of the training records (docs/model.md §2).

    AUs: ``rate_i = positives_i / labelled_i`` over the ``columns`` (unknown labels excluded),
    ``w_i ∝ 1 / rate_i``, ``sum_i w_i = n``: float32 ``[n]``. Paralysis (``columns`` None): class-balanced
    grade weights ``[4]``, ``w_g ∝ 1 / count_g``, ``sum = 4``. A class without any positive example gets the
    largest weight of the others (``tasks.Task.loss_weights``).
    """
    return task.loss_weights(task.count_labels(np.asarray(labels, np.int64)), columns, log.warning)


# ------------------------------------------------------------------------------ order and splits


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the ``n`` training records in ``epoch``: positions int64 ``[n]``."""
    return np.random.default_rng([int(seed), int(epoch), 0]).permutation(n).astype(np.int64)


def epoch_augmentation(seed: int, epoch: int, n: int, aligned_size: int,
                       crop_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop offsets (x, y) int32 ``[n, 2]`` in ``[0, A - C]`` and flips bool ``[n]`` (p = 0.5) of ``epoch``.

    Row i belongs to training record i, whatever its position in the epoch: keyed by (seed, epoch, index).
    """
    rng = np.random.default_rng([int(seed), int(epoch), 1])
    offsets = rng.integers(0, aligned_size - crop_size + 1, size=(n, 2), dtype=np.int32)
    flips = rng.random(n) < 0.5
    return offsets, flips


def validation_subjects(subjects: Sequence[str], fraction: float, seed: int) -> tuple[str, ...]:
    """The validation subjects among the training ``subjects``: a seeded ``fraction`` of the distinct ones.

    ``k = max(1, round(fraction * S))`` of the S distinct subjects (none when ``fraction`` is 0), drawn by a
    permutation seeded with ``seed``; sorted. At least one subject stays for training.
    """
    if not 0.0 <= float(fraction) < 1.0:
        raise DataError(f"data.val_fraction = {fraction} must be in [0, 1)")
    unique = sorted(set(subjects))
    if fraction == 0 or not unique:
        return ()
    k = max(1, int(np.floor(float(fraction) * len(unique) + 0.5)))
    if k >= len(unique):
        raise DataError(f"data.val_fraction = {fraction} takes {k} of the {len(unique)} training subjects for "
                        f"validation and leaves none for training; lower it (0 = no validation split)")
    chosen = np.random.default_rng([int(seed), 2]).permutation(len(unique))[:k]
    return tuple(sorted(str(unique[i]) for i in chosen))


def split_for(config: ml_collections.ConfigDict, train: bool) -> str:
    """Training split of ``config.data.fold`` (the other two parts, validation included) or its test part."""
    fold = config.data.fold
    return records.train_split(fold) if train else records.test_split(fold)


def _check_divisible(config: ml_collections.ConfigDict, keys: Sequence[str]) -> None:
    n = jax.device_count()
    bad = [f"config.data.{k} = {v}" for k in keys
           for v in [int(config.data[k])] if v <= 0 or v % n]
    if bad:
        raise DataError(f"{' and '.join(bad)} must be a positive multiple of the number of devices ({n}); "
                        f"batches are global and sharded over all devices")


# ------------------------------------------------------------------------------------- batches


def _parse_spec(features: tfds.features.FeaturesDict) -> dict[str, tf.io.FixedLenFeature]:
    """tf.Example parsing spec of the record features (how tfds stores them: int64/float32/bytes)."""
    spec = {}
    for name, info in features.get_serialized_info().items():
        dtype = tf.dtypes.as_dtype(info.tf_dtype)
        storage = tf.string if dtype == tf.string else tf.float32 if dtype.is_floating else tf.int64
        spec[name] = tf.io.FixedLenFeature(info.shape, storage)
    return spec


class _Batcher:
    """Records of a split at given indices -> decoded, cropped, normalised batches (tf.data).

    Holds what every batch stream of one source shares: the builder, the parsing spec, sizes and label
    columns. Each stream opens its own random-access reader (a few ms), so streams alive at the same time
    (training and a mid-epoch evaluation) never share one.
    """

    def __init__(self, config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder,
                 columns: np.ndarray | None):
        features = builder.info.features
        self.builder = builder
        self.spec = _parse_spec(features)
        self.src_size = int(features["image"].shape[0])
        self.aligned, self.crop = int(config.aligned_size), int(config.crop_size)
        self.columns = columns
        self.prefetch = max(int(config.data.prefetch), 1)

    def dataset(self, split: str, indices: np.ndarray, valid: np.ndarray, offsets: np.ndarray, flips: np.ndarray,
                batch_size: int, with_ids: bool) -> tf.data.Dataset:
        """tf.data over records ``indices`` ``[steps * B]`` of ``split`` -> batch dicts.

        ``valid`` ``[N]`` marks real rows, ``offsets`` ``[N, 2]`` (x, y) and ``flips`` ``[N]`` give each
        row's crop and flip. Reading is by random access; parsing, landmark maths and normalisation are
        batched; JPEG decoding (only the crop window when no resize is needed) runs per image.
        """
        source = records.reader(self.builder, split)
        spec, src_size, aligned, crop, cols = self.spec, self.src_size, self.aligned, self.crop, self.columns
        b = batch_size

        def read_parse(idx, ok, offset, flip):
            raw = tf.ensure_shape(tf.numpy_function(lambda i: records.read(source, i), [idx], tf.string,
                                                    stateful=False), [b])
            ex = tf.io.parse_example(raw, spec)
            ex.update(ok=ok, offset=offset, flip=flip)
            return ex

        def decode(ex):
            ex = dict(ex)
            image = augment.tf_decode_crop(ex["image"], ex["offset"], src_size, aligned, crop)
            ex["image"] = augment.tf_flip_image(image, ex["flip"])
            return ex

        def finish(ex):
            ok, offset, flip = ex["ok"], ex["offset"], ex["flip"]
            lm = ex["landmarks"]
            if aligned != src_size:
                lm = augment.tf_resize_landmarks(lm, src_size, aligned)
            lm = augment.tf_crop_landmarks(lm, offset)
            lm = tf.where(flip[:, None, None], augment.tf_flip_landmarks(lm, crop), lm)
            labels = tf.cast(ex["labels"], tf.int32)
            if cols is None:
                labels = labels[:, 0]
            else:
                labels = tf.where(ok[:, None], tf.gather(labels, cols, axis=1), -1)
            out = {"image": augment.tf_normalize(ex["image"]),
                   "landmarks": lm, "interocular": ex["interocular"] * (aligned / src_size),
                   "labels": labels, "mask": tf.cast(ok, tf.float32)}
            if with_ids:
                out["subject"] = tf.where(ok, ex["subject"], "")
                out["frame"] = tf.where(ok, tf.cast(ex["frame"], tf.int32), -1)
            return out

        ds = tf.data.Dataset.from_tensor_slices(
            (indices.reshape(-1, b), valid.reshape(-1, b), offsets.reshape(-1, b, 2).astype(np.int32),
             flips.reshape(-1, b)))
        ds = ds.map(read_parse).unbatch()
        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(b, drop_remainder=True)
        ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.prefetch(self.prefetch)
        options = tf.data.Options()
        options.deterministic = True
        return ds.with_options(options)


@dataclasses.dataclass(frozen=True, eq=False)
class DataSource:
    """The data of one run (dataset, fold, validation split), resolved once by :func:`make_source`.

    Attributes:
      steps_per_epoch: training batches per epoch, ``len(train_records) // batch_size`` (remainder dropped).
      loss_weights: float32 ``[num_outputs]`` (AUs, or the 4 grades) from the training records' labels.
      has_validation: whether ``eval_batches("val")`` has records (``data.val_fraction`` > 0).
      description: one line for logs, e.g. ``synth_au/bp4d_tiny fold 1: 12 train frames (3 subjects) /
        4 val frames (1 subject) / 8 test frames``.
      train_records, val_records: int64 record indices within the fold's training split (``split_for``).
      val_subjects: the validation subjects (sorted).
      num_test: records of the test part (0 when it is not built).
      label_set: the dataset's label set (an AU set of ``au_sets.AU_SETS`` or the grading set).
    """

    steps_per_epoch: int
    loss_weights: np.ndarray
    has_validation: bool
    description: str
    train_records: np.ndarray
    val_records: np.ndarray
    val_subjects: tuple[str, ...]
    num_test: int
    label_set: str
    batch_size: int
    eval_batch_size: int
    shuffle_seed: int
    train_split: str
    test_split: str
    _batcher: _Batcher = dataclasses.field(repr=False)

    def train_batches(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """The training batches of ``epoch`` from ``start_batch`` on (global batch ``config.data.batch_size``).

        Deterministic in ``(config.data.shuffle_seed, epoch)``; ``train_batches(e, start_batch=k)`` yields
        exactly the batches ``k, k+1, ...`` of ``train_batches(e)``. With several JAX processes each yields its
        own ``B / process_count`` rows of every global batch.
        """
        b, steps = self.batch_size, self.steps_per_epoch
        if not 0 <= start_batch <= steps:
            raise ValueError(f"start_batch {start_batch} outside 0..{steps} (batches per epoch)")
        n = len(self.train_records)
        positions = epoch_permutation(self.shuffle_seed, epoch, n)[start_batch * b:steps * b]
        if positions.size == 0:
            return
        offsets, flips = epoch_augmentation(self.shuffle_seed, epoch, n, self._batcher.aligned, self._batcher.crop)
        rows = b
        if jax.process_count() > 1:        # multi-host: every process reads and decodes only its rows
            rows = b // jax.process_count()
            lo = jax.process_index() * rows
            positions = positions.reshape(-1, b)[:, lo:lo + rows].reshape(-1)
        ds = self._batcher.dataset(self.train_split, self.train_records[positions], np.ones(positions.size, bool),
                                   offsets[positions], flips[positions], rows, with_ids=False)
        yield from ds.as_numpy_iterator()

    def _part(self, part: str) -> tuple[str, np.ndarray]:
        """(split, record indices int64 [N] within it) of an eval ``part``; DataError when it has no records."""
        if part == "val":
            if not self.has_validation:
                raise DataError("no validation split: data.val_fraction is 0" if self.steps_per_epoch else
                                "no validation split: this source was made for evaluation only")
            return self.train_split, self.val_records
        split = self.test_split if part == "test" else part
        n = records.num_examples(self._batcher.builder, split)
        if n == 0:
            raise DataError(f"split {split} of {self._batcher.builder.name} in {self._batcher.builder.data_dir} "
                            f"is empty")
        return split, np.arange(n, dtype=np.int64)

    def num_records(self, part: str = "test") -> int:
        """Records of an eval ``part`` (see :meth:`eval_batches`); DataError when it is absent or empty."""
        return len(self._part(part)[1])

    def eval_batches(self, part: str = "test") -> Iterator[Batch]:
        """Batches of ``part`` in record order (``config.data.eval_batch_size``), the last one padded.

        ``part``: "val" (the validation subjects), "test" (the fold's test part) or any split expression of
        the dataset (e.g. "part2"). Also yields ``subject`` (str ``[B]``) and ``frame`` (int32 ``[B]``); drop
        them before sending a batch to devices.
        """
        b = self.eval_batch_size
        split, indices = self._part(part)
        n = len(indices)
        padded = -(-n // b) * b
        idx = np.full(padded, indices[0], np.int64)
        idx[:n] = indices
        valid = np.arange(padded) < n
        centre = augment.centre_offset(self._batcher.aligned, self._batcher.crop)
        ds = self._batcher.dataset(split, idx, valid, np.full((padded, 2), centre, np.int32),
                                   np.zeros(padded, bool), b, with_ids=True)
        for batch in ds.as_numpy_iterator():
            batch["subject"] = np.char.decode(batch["subject"].astype(bytes), "utf-8")
            yield batch


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def make_source(config: ml_collections.ConfigDict, *, training: bool = True) -> DataSource:
    """The :class:`DataSource` of ``config.data`` (dataset, fold, batch sizes, seeds, validation fraction).

    Checks everything before reading records: the dataset is built (array_record), its label set fits the
    config's task and AUs, batch sizes divide over the devices and, when ``training``, the training parts
    are built and their training records fill a batch. ``training=False`` makes a source for evaluating on
    the test part (or any split of the dataset): the training parts are not read (nor need they be built,
    ``--parts``); it has no training records, ``steps_per_epoch`` 0, ``loss_weights`` ``[0]`` and no
    validation part.

    Raises:
      DatasetNotBuiltError: with the command that builds the dataset.
      DataError: naming the config field that does not fit the data.
    """
    d = config.data
    _check_divisible(config, ("batch_size", "eval_batch_size") if training else ("eval_batch_size",))
    builder = dataset_builder(config)
    label_set = records.label_set(builder)
    columns = label_columns(config, label_set)
    train_split, test_split = split_for(config, True), split_for(config, False)
    built = set(builder.info.splits)
    num_test = records.num_examples(builder, test_split) if test_split in built else 0
    missing = [p for p in records.split_names(train_split) if p not in built]
    if training and missing:
        raise DataError(f"{d.dataset}/{builder.builder_config.name} in {builder.data_dir} has no {', '.join(missing)} "
                        f"(built with --parts {','.join(sorted(p[4:] for p in built))}); training on fold {d.fold} "
                        f"needs {train_split}: build the missing parts or choose data.fold")
    read = ([test_split] if test_split in built else []) + ([] if missing or not training
                                                             else records.split_names(train_split))
    records.check_shards(builder, read, records.build_command(config, overwrite=True))
    if missing or not training:
        index = records.SplitIndex(np.zeros(0, str), np.zeros((0, 1), np.int64))
    else:
        index = records.split_index(builder, train_split)
    fraction = float(d.get("val_fraction", LEGACY_VAL_FRACTION))
    val_subjects = validation_subjects(index.subjects, fraction, int(d.get("val_seed", 0)))
    is_val = np.isin(index.subjects, np.asarray(val_subjects, dtype=index.subjects.dtype))
    train_records = np.flatnonzero(~is_val).astype(np.int64)
    val_records = np.flatnonzero(is_val).astype(np.int64)
    batch_size = int(d.batch_size)
    steps = len(train_records) // batch_size
    if training and steps == 0:
        raise DataError(f"the training records of {d.dataset}/{d.builder_config} fold {d.fold} ({len(train_records)} "
                        f"in {train_split} without the validation subjects) are fewer than one batch of "
                        f"data.batch_size = {batch_size}")
    task = tasks.get_task(config)
    weights = (loss_weights(task, index.labels[train_records], columns) if len(train_records)
               else np.zeros(0, np.float32))
    n_train_subjects = len(set(index.subjects[train_records].tolist()))
    description = (f"{d.dataset}/{builder.builder_config.name} fold {d.fold}: "
                   f"{_plural(len(train_records), 'train frame')} ({_plural(n_train_subjects, 'subject')}) / "
                   f"{_plural(len(val_records), 'val frame')} ({_plural(len(val_subjects), 'subject')}) / "
                   f"{_plural(num_test, 'test frame')}")
    return DataSource(
        steps_per_epoch=steps, loss_weights=weights, has_validation=bool(len(val_records)), description=description,
        train_records=train_records, val_records=val_records, val_subjects=val_subjects, num_test=num_test,
        label_set=label_set, batch_size=batch_size, eval_batch_size=int(d.eval_batch_size),
        shuffle_seed=int(d.shuffle_seed), train_split=train_split, test_split=test_split,
        _batcher=_Batcher(config, builder, columns))
