"""Training metrics: JSON lines (``<workdir>/metrics.jsonl``) and TensorBoard summaries (``<workdir>/tensorboard``).

Each JSON line is ``{"step": int, "epoch": int, "kind": "train" | "eval", ...scalars}``. Only process 0
writes. On resume ``truncate_after(step)`` drops lines logged after the checkpoint, so the file reads
as one uninterrupted run.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any


def flatten_scalars(d: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested dict -> ``{"a/b": float}`` of its int/float leaves (lists and strings are skipped)."""
    out: dict[str, float] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_scalars(v, name + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[name] = float(v)
        elif hasattr(v, "shape") and getattr(v, "shape", None) == ():
            out[name] = float(v)
    return out


class MetricWriter:
    """Writes scalars to ``metrics.jsonl`` and TensorBoard; a no-op on processes other than 0."""

    def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if enabled and tensorboard:
            import tensorflow as tf  # heavy import: only when a run actually logs
            from tensorflow.core.framework import summary_pb2

            tf.config.set_visible_devices([], "GPU")  # TF must not grab the accelerator JAX uses
            self._tf = tf
            # What tensorboard.summary.scalar writes, without needing the tensorboard package.
            self._scalar_metadata = summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
                data_class=summary_pb2.DATA_CLASS_SCALAR).SerializeToString()
            self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drops JSON lines with ``step`` > ``step`` (logged after the checkpoint we resume from)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = [ln for ln in f if ln.strip()]
        keep = []
        for ln in lines:
            try:
                if json.loads(ln).get("step", 0) <= step:
                    keep.append(ln)
            except json.JSONDecodeError:  # a line cut by a kill mid-write
                continue
        with open(self.path, "w") as f:
            f.writelines(keep)

    def write(self, step: int, epoch: int, kind: str, scalars: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "epoch": int(epoch), "kind": kind, **scalars}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            with self._tb.as_default(step=int(step)):
                for name, value in flatten_scalars(scalars).items():
                    self._tf.summary.write(f"{kind}/{name}", self._tf.constant(value, self._tf.float32),
                                           metadata=self._scalar_metadata)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
