"""``algrnet data stats``: per-fold frame counts and AU base rates (or grade counts), with a plot.

Examples::

    algrnet data stats synth_au --builder-config bp4d_tiny
    algrnet data stats bp4d --data-dir /data/tfds --out bp4d_stats.png
    algrnet data stats fpara --subjects

Counts come from the label statistics stored in the dataset's metadata at build time (read from
the records when absent). A base rate is positives / labelled frames (unknown labels, BP4D's 9,
are not counted).
"""
from __future__ import annotations

import argparse
from typing import Any

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="tfds dataset: synth_au | bp4d | disfa | fpara")
    parser.add_argument("--builder-config", default=None,
                        help="builder config (default: the builder's default, e.g. bp4d_small for synth_au)")
    parser.add_argument("--data-dir", default=None, help="tfds data directory (default: $ALGRNET_DATA_DIR or ./data/tfds)")
    parser.add_argument("--out", default=None, help="PNG to write (default: <name>_<config>_stats.png)")
    parser.add_argument("--subjects", action="store_true",
                        help="also count subjects per part (reads every record's ids; slower)")


def dataset_stats(builder, subjects: bool = False) -> dict[str, Any]:
    """Per-part statistics of a prepared builder.

    Returns:
      ``{"label_set", "names" (AU names or grades), "parts": {part: {"frames", "positives" [n],
      "labelled" [n], "rate" [n]} or {"frames", "grades" [4], "rate" [4]}}, "total": {...}}`` (rates
      are NaN where nothing is labelled), plus ``"subjects"`` per part when asked.
    """
    from algrnet_jax import au_sets
    from data_pipelines.builders import common

    md = builder.info.metadata or {}
    label_set = getattr(builder.builder_config, "label_set", None) or md.get("label_set")
    paralysis = label_set == common.PARALYSIS
    names = list(au_sets.GRADES) if paralysis else [f"AU{a}" for a in common.label_set_aus(label_set)]
    stored = md.get("label_counts", {})
    parts: dict[str, dict[str, Any]] = {}
    for part in common.PARTS:
        if part not in builder.info.splits:
            continue
        counts = stored.get(part) or _count_labels(builder, part, label_set)
        entry: dict[str, Any] = {"frames": int(builder.info.splits[part].num_examples)}
        if paralysis:
            grades = np.asarray(counts["grades"], np.int64)
            entry.update(grades=grades, rate=grades / max(int(grades.sum()), 1))
        else:
            pos, lab = np.asarray(counts["positives"], np.int64), np.asarray(counts["labelled"], np.int64)
            entry.update(positives=pos, labelled=lab, rate=np.where(lab > 0, pos / np.maximum(lab, 1), np.nan))
        if subjects:
            entry["subjects"] = sorted(_subjects(builder, part))
        parts[part] = entry
    total: dict[str, Any] = {"frames": sum(p["frames"] for p in parts.values())}
    if paralysis:
        g = sum(p["grades"] for p in parts.values())
        total.update(grades=g, rate=g / max(int(g.sum()), 1))
    else:
        pos = sum(p["positives"] for p in parts.values())
        lab = sum(p["labelled"] for p in parts.values())
        total.update(positives=pos, labelled=lab, rate=np.where(lab > 0, pos / np.maximum(lab, 1), np.nan))
    return {"label_set": label_set, "names": names, "parts": parts, "total": total}


def _records(builder, split: str, keys: tuple[str, ...]):
    import tensorflow_datasets as tfds

    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    for ex in tfds.as_numpy(ds.map(lambda e: {k: e[k] for k in keys})):
        yield ex


def _count_labels(builder, split: str, label_set: str) -> dict[str, Any]:
    from data_pipelines.builders import common

    counter = common.LabelCounter(label_set)
    for ex in _records(builder, split, ("labels",)):
        counter.add(np.asarray(ex["labels"]))
    return counter.as_json()


def _subjects(builder, split: str) -> set[str]:
    return {bytes(ex["subject"]).decode() for ex in _records(builder, split, ("subject",))}


def format_stats(stats: dict[str, Any], title: str) -> str:
    """A text table: one row per part (+ total): frames, [subjects], rate per AU (%) or grade counts."""
    names = stats["names"]
    paralysis = stats["label_set"] == "paralysis"
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
    """Bar plots: frames per part, and the base rate (or grade share) of each AU per part."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, parts = stats["names"], stats["parts"]
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
    ax1.set_ylabel("share of frames" if stats["label_set"] == "paralysis" else "base rate")
    ax1.set_title("grades per part" if stats["label_set"] == "paralysis" else "AU base rate per part", fontsize=9)
    ax1.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def run(args: argparse.Namespace) -> int:
    import sys

    from data_pipelines import builders

    try:
        builder = builders.get_builder(args.name, args.builder_config, args.data_dir)
    except ValueError as e:
        print(f"algrnet data stats: {e}", file=sys.stderr)
        return 2
    config = builder.builder_config.name if builder.builder_config else ""
    if not builder.is_prepared():
        cfg = f" --config {config}" if config else ""
        print(f"algrnet data stats: {args.name}/{config} is not built in {builder.data_dir}; build it with "
              f"`algrnet data build {args.name}{cfg}`", file=sys.stderr)
        return 2
    stats = dataset_stats(builder, subjects=args.subjects)
    title = f"{args.name}/{config} ({stats['label_set']})"
    print(format_stats(stats, title))
    out = args.out or f"{args.name}_{config}_stats.png"
    print(f"wrote {plot_stats(stats, out, title)}")
    return 0
