"""Per-part statistics of a built dataset: frame counts, AU base rates (or grade counts), subjects; as a
text table and as a plot.

Counts come from the label statistics stored in the dataset's metadata at build time (read from the
records when absent). A base rate is positives / labelled frames (unknown labels, BP4D's 9, are not counted).
"""
from __future__ import annotations

import os
from typing import Any

import matplotlib
import numpy as np
import tensorflow_datasets as tfds

from algrnet_jax import tasks
from data_pipelines.builders.examples import LabelCounter, read_back
from data_pipelines.builders.parts import PARTS

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)


def dataset_stats(builder: tfds.core.DatasetBuilder, subjects: bool = False) -> dict[str, Any]:
    """Per-part statistics of a prepared builder.

    Returns:
      ``{"label_set", "names" (AU names or grades), "parts": {part: {"frames", "positives" [n],
      "labelled" [n], "rate" [n]} or {"frames", "grades" [4], "rate" [4]}}, "total": {...}}`` (rates
      are NaN where nothing is labelled), plus ``"subjects"`` (sorted ids) per part when asked.
    """
    md = builder.info.metadata or {}
    label_set = getattr(builder.builder_config, "label_set", None) or md.get("label_set")
    task = tasks.task_for_label_set(label_set)    # its count_labels keys and rates
    names = task.label_set_classes(label_set)
    stored = md.get("label_counts", {})
    parts: dict[str, dict[str, Any]] = {}
    for part in PARTS:
        if part not in builder.info.splits:
            continue
        counts = stored.get(part) or _count_labels(builder, part, label_set)
        entry: dict[str, Any] = {"frames": int(builder.info.splits[part].num_examples)}
        entry.update({k: np.asarray(v, np.int64) for k, v in counts.items() if k != "num_examples"})
        entry["rate"] = task.rates(entry)
        if subjects:
            entry["subjects"] = sorted(_subjects(builder, part))
        parts[part] = entry
    total: dict[str, Any] = {"frames": sum(p["frames"] for p in parts.values())}
    keys = [k for k in next(iter(parts.values()), {}) if k not in ("frames", "rate", "subjects")]
    total.update({k: sum(p[k] for p in parts.values()) for k in keys})
    total["rate"] = task.rates(total) if keys else np.full(len(names), np.nan)
    return {"label_set": label_set, "names": names, "parts": parts, "total": total}


def _count_labels(builder: tfds.core.DatasetBuilder, split: str, label_set: str) -> dict[str, Any]:
    """Label counts of a split read from its records (datasets built without stored counts)."""
    counter = LabelCounter(label_set)
    for ex in read_back(builder, split, decode_images=False):
        counter.add(np.asarray(ex["labels"]))
    return counter.as_json()


def _subjects(builder: tfds.core.DatasetBuilder, split: str) -> set[str]:
    return {bytes(ex["subject"]).decode() for ex in read_back(builder, split, decode_images=False)}


def format_stats(stats: dict[str, Any], title: str) -> str:
    """A text table: one row per part (+ total): frames, [subjects], rate per AU (%) or grade counts."""
    names = stats["names"]
    paralysis = tasks.task_for_label_set(stats["label_set"]).exclusive    # grade counts, not AU rates
    rows = [*stats["parts"].items(), ("total", stats["total"])]
    has_subj = any("subjects" in p for p in stats["parts"].values())
    head = f"{'split':<7}{'frames':>8}" + (f"{'subj':>6}" if has_subj else "") + "".join(f"{n:>8}" for n in names)
    lines = [title, ("grade counts" if paralysis else "AU base rate, % of labelled frames"), head]
    for name, p in rows:
        cells = (p["grades"].tolist() if paralysis else
                 [("   -" if np.isnan(r) else f"{100 * r:.1f}") for r in p["rate"]])
        subj = ""
        if has_subj:
            subj = f"{len(p['subjects']):>6}" if "subjects" in p else \
                f"{sum(len(q['subjects']) for q in stats['parts'].values()):>6}"
        lines.append(f"{name:<7}{p['frames']:>8}{subj}" + "".join(f"{c:>8}" for c in cells))
        if not paralysis and (p["labelled"] < p["frames"]).any():
            unk = 100 * (1 - p["labelled"] / max(p["frames"], 1))
            lines.append(f"{'  unknown %':<15}" + ("      " if has_subj else "") + "".join(f"{u:>8.1f}" for u in unk))
    return "\n".join(lines)


def plot_stats(stats: dict[str, Any], out: str, title: str) -> str:
    """Bar plots written to ``out`` (PNG): frames per part, and the base rate (or grade share) of each AU
    per part. Returns ``out``."""
    names, parts = stats["names"], stats["parts"]
    paralysis = tasks.task_for_label_set(stats["label_set"]).exclusive    # grade shares, not AU rates
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(3 + 0.6 * len(names) + 3, 3.4),
                                   gridspec_kw={"width_ratios": [1, max(2, len(names) / 2)]})
    ax0.bar(list(parts), [p["frames"] for p in parts.values()], color="tab:gray")
    ax0.set_title("frames per part", fontsize=9)
    width = 0.8 / max(len(parts), 1)
    x = np.arange(len(names))
    for k, (name, p) in enumerate(parts.items()):
        ax1.bar(x + (k - (len(parts) - 1) / 2) * width, np.nan_to_num(p["rate"]), width, label=name)
    ax1.set_xticks(x, names, fontsize=8, rotation=45 if len(names) > 8 else 0)
    ax1.set_ylim(0, 1)
    ax1.set_ylabel("share of frames" if paralysis else "base rate")
    ax1.set_title("grades per part" if paralysis else "AU base rate per part", fontsize=9)
    ax1.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
