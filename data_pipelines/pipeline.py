"""Input pipeline: tfds records -> global numpy batches (docs/design.md "Batches").

Records are read by random access (:class:`RecordReader` over the TFRecord shards) in an order
fixed by ``(config.data.shuffle_seed, epoch)``: every epoch is a global permutation of the training
part, so a run resumed at ``(epoch, start_batch)`` sees exactly the batches it would have seen.
Augmentation (random crop inside the aligned face, horizontal flip p = 0.5 with landmark
reflection) draws its parameters from ``(seed, epoch, example index)`` (:func:`epoch_augmentation`).
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

import logging
import os
import struct
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from algrnet_jax import au_sets
from data_pipelines import augment, builders
from data_pipelines.builders import common

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]


# ------------------------------------------------------------------------------------- builder


def dataset_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """The prepared builder named by ``config.data`` (dataset, builder_config, data_dir).

    Raises:
      FileNotFoundError: when the dataset has not been built, with the command that builds it.
    """
    d = config.data
    data_dir = d.data_dir or builders.default_data_dir()
    builder = builders.get_builder(d.dataset, d.builder_config or None, data_dir)
    if not builder.is_prepared():
        cfg = f" --config {d.builder_config}" if d.builder_config else ""
        raise FileNotFoundError(
            f"dataset {d.dataset}{'/' + d.builder_config if d.builder_config else ''} is not built in "
            f"{data_dir}; build it with `algrnet data build {d.dataset}{cfg} --data-dir {data_dir}`")
    return builder


def split_for(config: ml_collections.ConfigDict, train: bool) -> str:
    """Training split of ``config.data.fold`` (the other two parts) or its test part."""
    fold = config.data.fold
    return common.train_split(fold) if train else common.test_split(fold)


def num_examples(config: ml_collections.ConfigDict, train: bool) -> int:
    """Number of records in the training (or test) split of the fold."""
    return _num_examples(dataset_builder(config), split_for(config, train))


def _num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
    return int(builder.info.splits[split].num_examples)


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
    """Training batches per epoch: ``num_examples // batch_size`` (the remainder is dropped)."""
    return num_examples(config, True) // int(config.data.batch_size)


# -------------------------------------------------------------------------------------- labels


def _label_set(builder: tfds.core.DatasetBuilder) -> str:
    cfg = builder.builder_config
    label_set = getattr(cfg, "label_set", None) or (builder.info.metadata or {}).get("label_set")
    if label_set is None:
        raise ValueError(f"dataset {builder.name} does not say its label set (builder config or metadata)")
    return label_set


def _label_columns(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder) -> np.ndarray | None:
    """Columns of the record labels that ``config.aus`` selects; ``None`` for paralysis grades."""
    label_set = _label_set(builder)
    paralysis = config.model.task == "paralysis"
    if (label_set == common.PARALYSIS) != paralysis:
        raise ValueError(f"config task {config.model.task!r} does not match dataset "
                         f"{builder.name}/{builder.builder_config.name} (label set {label_set!r})")
    if paralysis:
        return None
    aus = common.label_set_aus(label_set)
    missing = [a for a in config.aus if a not in aus]
    if missing:
        raise ValueError(f"config.aus {tuple(config.aus)} has AUs {missing} that label set {label_set!r} "
                         f"({aus}) does not have")
    return np.asarray([aus.index(a) for a in config.aus], np.int32)


def _part_counts(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, np.ndarray]:
    """Summed label counts of the parts of ``split`` (from metadata, else by reading the labels)."""
    parts = split.split("+")
    stored = (builder.info.metadata or {}).get("label_counts", {})
    if all(p in stored for p in parts):
        keys = [k for k in ("positives", "labelled", "grades") if k in stored[parts[0]]]
        return {k: np.sum([np.asarray(stored[p][k], np.int64) for p in parts], 0) for k in keys}
    log.info("no label counts in the metadata of %s; reading labels of %s", builder.name, split)
    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    labels = np.concatenate([b["labels"] for b in tfds.as_numpy(ds.map(lambda e: {"labels": e["labels"]})
                                                                  .batch(4096))]).astype(np.int64)
    if _label_set(builder) == common.PARALYSIS:
        return {"grades": np.bincount(labels[:, 0], minlength=len(au_sets.GRADES))}
    return {"positives": (labels == 1).sum(0), "labelled": (labels >= 0).sum(0)}


def _inverse_rate_weights(rate: np.ndarray, what: str) -> np.ndarray:
    rate = np.asarray(rate, np.float64)
    if (rate <= 0).any():
        log.warning("%s: zero rates at %s; clipped to the smallest positive rate", what, np.flatnonzero(rate <= 0))
        positive = rate[rate > 0]
        rate = np.where(rate > 0, rate, positive.min() if positive.size else 1.0)
    w = 1.0 / rate
    return (w * (len(w) / w.sum())).astype(np.float32)


def au_loss_weights(config: ml_collections.ConfigDict) -> np.ndarray:
    """AU loss weights ``[n]`` from the training split of the fold (SPEC section 2).

    ``rate_i = positives_i / labelled_i`` (unknown labels excluded), ``w_i ∝ 1 / rate_i``,
    ``sum_i w_i = n``. Paralysis: class-balanced grade weights ``[4]``, ``w_g ∝ 1 / count_g``,
    ``sum = 4``. An AU (grade) without any positive example gets the largest weight of the others.
    """
    builder = dataset_builder(config)
    cols = _label_columns(config, builder)
    counts = _part_counts(builder, split_for(config, True))
    if cols is None:
        return _inverse_rate_weights(counts["grades"], "grade weights")
    pos = counts["positives"][cols].astype(np.float64)
    lab = np.maximum(counts["labelled"][cols], 1).astype(np.float64)
    return _inverse_rate_weights(pos / lab, "AU weights")


# ------------------------------------------------------------------------------------- batches


def _check_divisible(batch_size: int, what: str) -> None:
    n = jax.device_count()
    if batch_size <= 0 or batch_size % n:
        raise ValueError(f"{what} = {batch_size} must be a positive multiple of the number of devices ({n}); "
                         f"batches are global and sharded over all devices")


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the ``n`` training records in ``epoch``: int64 ``[n]``."""
    return np.random.default_rng([int(seed), int(epoch), 0]).permutation(n).astype(np.int64)


def epoch_augmentation(seed: int, epoch: int, n: int, aligned_size: int,
                       crop_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop offsets (x, y) int32 ``[n, 2]`` in ``[0, A - C]`` and flips bool ``[n]`` (p = 0.5) of ``epoch``.

    Row i belongs to record i, whatever its position in the epoch: keyed by (seed, epoch, index).
    """
    rng = np.random.default_rng([int(seed), int(epoch), 1])
    offsets = rng.integers(0, aligned_size - crop_size + 1, size=(n, 2), dtype=np.int32)
    flips = rng.random(n) < 0.5
    return offsets, flips


class RecordReader:
    """Random access to the serialized records of a split (TFRecord shards, tfds's default format).

    Scans the 12-byte record headers of the split's shards once (no payload is read), then serves
    any list of record indices with ``os.pread``. ``split`` may be any tfds split expression.
    """

    def __init__(self, builder: tfds.core.DatasetBuilder, split: str):
        from tensorflow_datasets.core.data_sources import base

        if builder.info.file_format is not None and builder.info.file_format.value != "tfrecord":
            raise ValueError(f"dataset {builder.name} in {builder.data_dir} is stored as "
                             f"{builder.info.file_format.value}, not TFRecord; rebuild it with `algrnet data build`")
        self._fds: list[int] = []
        files, offsets, lengths = [], [], []
        for k, ins in enumerate(base.file_instructions(builder.info, split)):
            fd = os.open(ins.filename, os.O_RDONLY)
            self._fds.append(fd)
            off, length = self._scan(fd, ins.filename, ins.examples_in_shard)
            sel = slice(ins.skip, ins.skip + ins.take)
            files.append(np.full(ins.take, k, np.int32))
            offsets.append(off[sel])
            lengths.append(length[sel])
        self._file = np.concatenate(files) if files else np.zeros(0, np.int32)
        self._offset = np.concatenate(offsets) if offsets else np.zeros(0, np.int64)
        self._length = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)

    @staticmethod
    def _scan(fd: int, filename: str, expected: int) -> tuple[np.ndarray, np.ndarray]:
        size = os.fstat(fd).st_size
        offsets, lengths, pos = [], [], 0
        while pos < size:
            header = os.pread(fd, 12, pos)
            if len(header) < 12:
                raise ValueError(f"{filename}: truncated TFRecord header at byte {pos}")
            (n,) = struct.unpack("<Q", header[:8])
            offsets.append(pos + 12)
            lengths.append(n)
            pos += 16 + n
        if pos != size or len(offsets) != expected:
            raise ValueError(f"{filename}: corrupt TFRecord shard ({len(offsets)} records, {expected} expected)")
        return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64)

    def __len__(self) -> int:
        return len(self._offset)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Serialized records at ``indices`` ``[k]``: object array of bytes ``[k]``."""
        fds = self._fds
        return np.array([os.pread(fds[f], n, o) for f, o, n in
                         zip(self._file[indices].tolist(), self._offset[indices].tolist(),
                             self._length[indices].tolist())] + [b""], dtype=object)[:-1]

    def close(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            try:
                os.close(fd)
            except (OSError, TypeError, AttributeError):   # already closed / interpreter shutdown
                pass

    def __del__(self):
        self.close()


def _parse_spec(features: tfds.features.FeaturesDict) -> dict[str, tf.io.FixedLenFeature]:
    """tf.Example parsing spec of the record features (how tfds stores them: int64/float32/bytes)."""
    spec = {}
    for name, info in features.get_serialized_info().items():
        dtype = tf.dtypes.as_dtype(info.tf_dtype)
        storage = tf.string if dtype == tf.string else tf.float32 if dtype.is_floating else tf.int64
        spec[name] = tf.io.FixedLenFeature(info.shape, storage)
    return spec


def _dataset(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder, split: str,
             indices: np.ndarray, valid: np.ndarray, offsets: np.ndarray, flips: np.ndarray,
             batch_size: int, with_ids: bool) -> tf.data.Dataset:
    """tf.data over record ``indices`` ``[steps * B]`` -> batch dicts.

    ``valid`` ``[N]`` marks real rows, ``offsets`` ``[N, 2]`` (x, y) and ``flips`` ``[N]`` give each
    row's crop and flip. Reading is by random access; parsing, landmark maths and normalisation are
    batched; JPEG decoding (only the crop window when no resize is needed) runs per image.
    """
    reader = RecordReader(builder, split)
    features = builder.info.features
    spec = _parse_spec(features)
    src_size = int(features["image"].shape[0])
    aligned, crop = int(config.aligned_size), int(config.crop_size)
    cols = _label_columns(config, builder)
    b = batch_size

    def read_parse(idx, ok, offset, flip):
        raw = tf.ensure_shape(tf.numpy_function(reader.read, [idx], tf.string, stateful=False), [b])
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
    ds = ds.prefetch(max(int(config.data.prefetch), 1))
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)


def train_batches(config: ml_collections.ConfigDict, *, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
    """The training batches of ``epoch`` from ``start_batch`` on (global batch ``config.data.batch_size``).

    Deterministic in ``(config.data.shuffle_seed, epoch)``; ``train_batches(c, epoch=e, start_batch=k)``
    yields exactly the batches ``k, k+1, ...`` of ``train_batches(c, epoch=e)``. With several JAX
    processes each yields its own ``B / process_count`` rows of every global batch.
    """
    batch_size = int(config.data.batch_size)
    _check_divisible(batch_size, "config.data.batch_size")
    builder = dataset_builder(config)
    split = split_for(config, True)
    n = _num_examples(builder, split)
    steps = n // batch_size
    if steps == 0:
        raise ValueError(f"training split {split} has {n} examples, fewer than one batch of {batch_size}")
    if not 0 <= start_batch <= steps:
        raise ValueError(f"start_batch {start_batch} outside 0..{steps} (batches per epoch)")
    seed = int(config.data.shuffle_seed)
    order = epoch_permutation(seed, epoch, n)[start_batch * batch_size:steps * batch_size]
    if order.size == 0:
        return
    offsets, flips = epoch_augmentation(seed, epoch, n, int(config.aligned_size), int(config.crop_size))
    rows = batch_size
    if jax.process_count() > 1:        # multi-host: every process reads and decodes only its rows
        rows = batch_size // jax.process_count()
        lo = jax.process_index() * rows
        order = order.reshape(-1, batch_size)[:, lo:lo + rows].reshape(-1)
    ds = _dataset(config, builder, split, order, np.ones(order.size, bool), offsets[order], flips[order],
                  rows, with_ids=False)
    yield from ds.as_numpy_iterator()


def eval_batches(config: ml_collections.ConfigDict, *, split: str | None = None) -> Iterator[Batch]:
    """Test batches in record order (``config.data.eval_batch_size``), the last one padded.

    Also yields ``subject`` (str ``[B]``) and ``frame`` (int32 ``[B]``); drop them before sending a
    batch to devices. ``split`` defaults to the fold's test part.
    """
    batch_size = int(config.data.eval_batch_size)
    _check_divisible(batch_size, "config.data.eval_batch_size")
    builder = dataset_builder(config)
    split = split or split_for(config, False)
    n = _num_examples(builder, split)
    if n == 0:
        raise ValueError(f"split {split} of {builder.name} is empty")
    padded = -(-n // batch_size) * batch_size
    indices = np.zeros(padded, np.int64)
    indices[:n] = np.arange(n)
    valid = np.arange(padded) < n
    centre = augment.centre_offset(int(config.aligned_size), int(config.crop_size))
    ds = _dataset(config, builder, split, indices, valid, np.full((padded, 2), centre, np.int32),
                  np.zeros(padded, bool), batch_size, with_ids=True)
    for b in ds.as_numpy_iterator():
        b["subject"] = np.char.decode(b["subject"].astype(bytes), "utf-8")
        yield b

