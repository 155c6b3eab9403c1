"""What a built dataset holds, by random access: the builder a config names, its records, their subjects and labels.

- :func:`dataset_builder`: the prepared tfds builder of ``config.data`` (resolved once per
  :func:`data_pipelines.pipeline.make_source`), with one clear error when it is not built or is stored
  in the TFRecord format of older builds (random access needs ``array_record``: :data:`FILE_FORMAT`);
- :func:`check_shards`: every ArrayRecord shard a run will read is present and holds the record count the
  build wrote in ``dataset_info.json`` (one message with the rebuild command instead of reader tracebacks);
- :func:`reader`: serialized ``tf.train.Example`` records of a split by index (``tfds`` data source over
  the ArrayRecord shards, ``RAW_BYTES``: parsing and decoding stay in the tf.data pipeline);
- :func:`split_index`: the ``subject`` (str ``[N]``) and ``labels`` (int64 ``[N, L]``) of every record of a
  split, parsed without decoding images, read once per process and part (the validation split and the
  loss weights are computed from it).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from array_record.python import array_record_module

from algrnet_jax.errors import UserError
from data_pipelines import builders
from data_pipelines.builders import parts
from data_pipelines.builders.base import FILE_FORMAT

_INDEX_CHUNK = 1024               # records parsed per step when reading subjects and labels
# (data dir, mtime of its dataset_info.json, part) -> SplitIndex: each part is read once per process
_INDEX_CACHE: dict[tuple[str, int, str], "SplitIndex"] = {}


class DatasetNotBuiltError(UserError, FileNotFoundError):
    """The dataset a config names is not built (or not in a readable format); the message gives the command."""


class DataError(UserError, ValueError):
    """The built data does not fit the config (label set, AUs, splits, sizes); the message says which field."""


def build_command(config: ml_collections.ConfigDict, overwrite: bool = False) -> str:
    """The ``algrnet data build`` command that builds the dataset of ``config.data``."""
    d = config.data
    data_dir = d.data_dir or builders.default_data_dir()
    cmd = f"algrnet data build {d.dataset}"
    if d.builder_config:
        cmd += f" --config {d.builder_config}"
    if d.dataset in builders.NEEDS_MANUAL_DIR:
        cmd += " --manual-dir <release files>"
    cmd += f" --data-dir {data_dir}"
    return cmd + (" --overwrite" if overwrite else "")


def dataset_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """The prepared builder named by ``config.data`` (dataset, builder_config, data_dir), stored as array_record.

    Raises:
      DatasetNotBuiltError: not built, or built in the TFRecord format of older versions; the message
        holds the command that (re)builds it.
    """
    d = config.data
    data_dir = d.data_dir or builders.default_data_dir()
    builder = builders.get_builder(d.dataset, d.builder_config or None, data_dir)
    name = f"{d.dataset}{'/' + d.builder_config if d.builder_config else ''}"
    if not builder.is_prepared():
        raise DatasetNotBuiltError(f"dataset {name} is not built in {data_dir}; build it with "
                                   f"`{build_command(config)}`")
    fmt = builder.info.file_format
    if fmt is None or fmt.value != FILE_FORMAT:
        raise DatasetNotBuiltError(
            f"dataset {name} in {builder.data_dir} is stored as {fmt.value if fmt else 'unknown format'}, an older "
            f"build; the input pipeline reads {FILE_FORMAT} records: rebuild it with `{build_command(config, True)}`")
    return builder


def check_shards(builder: tfds.core.DatasetBuilder, splits: Sequence[str], rebuild: str) -> None:
    """Checks, before any record is read, that every shard of ``splits`` (part names) exists and that its
    ArrayRecord footer opens and counts the records the build recorded (``dataset_info.json``'s
    ``shardLengths``). Opening reads only the footer and index (milliseconds per shard). A deleted shard,
    a truncated one (its footer is at the end) or one of another build is reported; a shard damaged in the
    middle with an intact footer is not (the records carry no checksums).

    Raises:
      DatasetNotBuiltError: listing the bad shards, with ``rebuild`` (the command that rebuilds the data).
    """
    bad = []
    for split in splits:
        info = builder.info.splits[split]
        for path, want in zip(info.filepaths, info.shard_lengths):
            path = os.fspath(path)
            if not os.path.isfile(path):
                bad.append(f"{path}: missing")
                continue
            try:
                shard = array_record_module.ArrayRecordReader(path)
                try:
                    found = shard.num_records()
                finally:
                    shard.close()
            except (RuntimeError, OSError, ValueError) as e:
                first = str(e).split(";")[0]
                bad.append(f"{path}: truncated or corrupt ({os.path.getsize(path)} bytes; {first})")
                continue
            if found != want:
                bad.append(f"{path}: holds {found} records, the build wrote {want}")
    if bad:
        shown = bad[:5] + ([f"... and {len(bad) - 5} more"] if len(bad) > 5 else [])
        config = f"/{builder.builder_config.name}" if builder.builder_config else ""
        raise DatasetNotBuiltError(
            f"dataset {builder.name}{config} in {builder.data_dir} has damaged record "
            f"shards:\n  " + "\n  ".join(shown) + f"\nrebuild it with `{rebuild}`")


def label_set(builder: tfds.core.DatasetBuilder) -> str:
    """The label set of a built dataset (builder config, else metadata): an AU set name or "paralysis"."""
    found = getattr(builder.builder_config, "label_set", None) or (builder.info.metadata or {}).get("label_set")
    if found is None:
        raise DataError(f"dataset {builder.name} does not say its label set (builder config or metadata)")
    return found


def split_names(split: str) -> list[str]:
    """The parts of a split expression joined by "+" (``"part2+part3"`` -> ``["part2", "part3"]``)."""
    return [s.strip() for s in split.split("+")]


def num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
    """Number of records in ``split`` (a tfds split expression)."""
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, AssertionError) as e:
        raise DataError(f"split {split!r} is not in {builder.name}/{builder.builder_config.name} in "
                        f"{builder.data_dir} (its splits: {', '.join(builder.info.splits) or 'none'})") from e


def reader(builder: tfds.core.DatasetBuilder, split: str) -> Sequence[bytes]:
    """Random access to the serialized records of ``split``: ``len()`` and ``[i]`` (bytes).

    The array_record data source under tfds' (``builder.as_data_source(split, RAW_BYTES).data_source``):
    with raw bytes tfds' wrapper only adds a call per record (9 of 28 us).
    """
    return builder.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES).data_source


def read(source: Sequence[bytes], indices: np.ndarray) -> np.ndarray:
    """Serialized records at ``indices`` int ``[k]``: object array of bytes ``[k]``."""
    # One read per record: __getitems__ would start a thread pool per call, 3-4x slower for a batch here.
    return np.array([source[i] for i in np.asarray(indices).tolist()] + [b""], dtype=object)[:-1]


@dataclasses.dataclass(frozen=True, eq=False)
class SplitIndex:
    """Per-record subject and labels of a split, in record order.

    ``subjects`` str ``[N]``; ``labels`` int64 ``[N, L]`` (L = the record's label count: AUs of the label
    set, or 1 grade).
    """

    subjects: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.subjects)


def split_index(builder: tfds.core.DatasetBuilder, split: str) -> SplitIndex:
    """Subjects and labels of every record of ``split``; each plain part is read once per process."""
    info_file = os.path.join(os.fspath(builder.data_dir), "dataset_info.json")
    stamp = os.stat(info_file).st_mtime_ns if os.path.exists(info_file) else 0
    names = split_names(split)
    if not all(n in builder.info.splits for n in names):
        return _read_index(builder, split)
    indexes = []
    for name in names:
        key = (os.fspath(builder.data_dir), stamp, name)
        if key not in _INDEX_CACHE:
            _INDEX_CACHE[key] = _read_index(builder, name)
        indexes.append(_INDEX_CACHE[key])
    return SplitIndex(np.concatenate([i.subjects for i in indexes]), np.concatenate([i.labels for i in indexes]))


def _read_index(builder: tfds.core.DatasetBuilder, split: str) -> SplitIndex:
    n_labels = int(builder.info.features["labels"].shape[0])
    spec = {"subject": tf.io.FixedLenFeature([], tf.string),
            "labels": tf.io.FixedLenFeature([n_labels], tf.int64)}
    source = reader(builder, split)
    n = len(source)
    subjects, labels = [], []
    for lo in range(0, n, _INDEX_CHUNK):
        raw = read(source, np.arange(lo, min(n, lo + _INDEX_CHUNK)))
        ex = tf.io.parse_example(tf.constant(raw.tolist(), tf.string), spec)
        subjects.append(np.char.decode(ex["subject"].numpy().astype(bytes), "utf-8"))
        labels.append(ex["labels"].numpy())
    if not subjects:
        return SplitIndex(np.zeros(0, str), np.zeros((0, n_labels), np.int64))
    return SplitIndex(np.concatenate(subjects), np.concatenate(labels).astype(np.int64))


def train_split(fold: int) -> str:
    """The training split of a fold: the other two parts (``"part2+part3"`` for fold 1)."""
    return parts.train_split(fold)


def test_split(fold: int) -> str:
    """The test part of a fold (``"part1"`` for fold 1)."""
    return parts.test_split(fold)
