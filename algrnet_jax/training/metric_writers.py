"""Training metrics: JSON lines (``<workdir>/metrics.jsonl``) and TensorBoard summaries (``<workdir>/tensorboard``).

Each JSON line is ``{"step": int, "epoch": int, "kind": "train" | "val" | "test", ...values}`` (nested
values such as ``landmarks`` stay nested). TensorBoard gets every numeric leaf as ``<kind>/<a>/<b>`` through
clu's ``SummaryWriter`` (``clu.metric_writers``). Only process 0 writes. On resume ``truncate_after(step)``
drops lines logged after the checkpoint, so the file reads as one uninterrupted run.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import tensorflow as tf
from clu import metric_writers
from flax import traverse_util


def flatten_scalars(d: Mapping[str, Any]) -> dict[str, float]:
    """Nested dict -> ``{"a/b": float}`` of its int/float (or 0-d array) leaves; lists and strings are skipped."""
    flat = traverse_util.flatten_dict(dict(d), sep="/")
    return {k: float(v) for k, v in flat.items()
            if (isinstance(v, (int, float)) and not isinstance(v, bool)) or getattr(v, "shape", None) == ()}


class MetricWriter:
    """Writes scalars to ``metrics.jsonl`` and TensorBoard; a no-op on processes other than 0."""

    def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb: metric_writers.MetricWriter | None = None
        if enabled and tensorboard:
            tf.config.set_visible_devices([], "GPU")  # TF must not grab the accelerator JAX uses
            self._tb = metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard"))

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

    def write(self, step: int, epoch: int, kind: str, values: Mapping[str, Any]) -> None:
        """One JSON line ``{"step", "epoch", "kind", **values}`` and the numeric leaves to TensorBoard."""
        if not self.enabled:
            return
        record = {"step": int(step), "epoch": int(epoch), "kind": kind, **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            self._tb.write_scalars(int(step), {f"{kind}/{k}": v for k, v in flatten_scalars(values).items()})

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
