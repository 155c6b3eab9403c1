"""A Markdown report of one training run, with PNG plots.

- ``plot_curves``: training loss terms and learning rate against the step, from the trainer's
  ``metrics.jsonl`` (one JSON object per line; numeric fields are plotted, ``step`` is the x axis);
- ``plot_f1_bars``: per-AU F1 of our local / integrated / final predictions beside the trivial
  all-present predictor on the same test frames;
- ``plot_attention_maps``: a few test faces with the predicted landmarks, and the initial (from
  landmarks) and refined attention maps of each AU overlaid;
- ``heads_not_above_trivial``: every (head, AU) whose F1 is at or below the all-present predictor's (the
  report and the main job name them);
- ``write_report``: the Markdown file that links them together with the evaluation tables.
"""
from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np

from algrnet_jax import evaluation, reporting

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


def _pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    matplotlib.use("Agg")
    return plt


def read_metrics_jsonl(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """Reads a metrics.jsonl file; a clear error names the file and line of a malformed record."""
    records = []
    path = pathlib.Path(path)
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not a JSON record ({e.msg})") from None
    return records


def _series(records: Sequence[Mapping[str, Any]], key: str, kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in records
           if "step" in r and (kind is None or r.get("kind", kind) == kind) and isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return (np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)) if pts else (np.zeros(0), np.zeros(0))


def plot_curves(records: Sequence[Mapping[str, Any]], out_png: str | pathlib.Path) -> list[str]:
    """Plots loss terms (any key containing "loss") and the learning rate ("lr" or "learning_rate").

    Records carry ``kind`` "train", "val" or "test" (``algrnet_jax.training.metric_writers``; "eval" in runs
    written before the validation part existed): losses come from train records, mean F1 (keys ending in
    ``mean_f1``) from the evaluation records, one line per part, on a third panel. Returns the keys plotted.
    """
    plt = _pyplot()
    def numeric_keys(kind: str | None) -> list[str]:
        return sorted({k for r in records if kind is None or r.get("kind", kind) == kind for k, v in r.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)})

    eval_kinds = sorted({r["kind"] for r in records if r.get("kind") not in (None, "train")})
    loss_keys = [k for k in numeric_keys("train") if "loss" in k]
    lr_keys = [k for k in numeric_keys(None) if k in ("lr", "learning_rate")]
    f1_series = []
    for kind in eval_kinds:
        keys = [k for k in numeric_keys(kind) if k.endswith("mean_f1")]
        if len(keys) > 1 and "mean_f1" in keys:  # the headline duplicates predictions/final/mean_f1
            keys.remove("mean_f1")
        f1_series += [(k, kind) for k in keys]
    panels = [([(k, "train") for k in loss_keys], "loss", True), ([(k, None) for k in lr_keys], "learning rate", False),
              (f1_series, "mean F1 (%) per evaluated part", False)]
    panels = [p for p in panels if p[0]]
    if not panels:
        raise ValueError("no loss, learning-rate or F1 fields in the metrics records")
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (series, label, logy) in zip(axes[0], panels):
        for k, kind in series:
            x, y = _series(records, k, kind)
            ax.plot(x, y, marker="." if len(x) < 30 else None, label=k if kind in (None, "train") else f"{kind} {k}")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        if logy and all(np.all(_series(records, k, kind)[1] > 0) for k, kind in series):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return loss_keys + lr_keys + list(dict.fromkeys(k for k, _ in f1_series))


def plot_f1_bars(result: Mapping[str, Any], out_png: str | pathlib.Path) -> None:
    """Per-AU F1 bars: ours (local, integrated, final) and the all-present predictor."""
    plt = _pyplot()
    aus = list(result["aus"]) + ["mean"]
    series = [("ours (final)", "final"), ("ours (local)", "local"), ("ours (integrated)", "integrated"),
              ("all-present", evaluation.TRIVIAL)]
    width = 0.8 / len(series)
    x = np.arange(len(aus))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(aus) + 2), 3.8))
    for i, (label, key) in enumerate(series):
        p = result["predictions"][key]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, list(p["f1"]) + [p["mean_f1"]], width, label=label,
               color=None if key != evaluation.TRIVIAL else "0.6")
    ax.set_xticks(x, aus)
    ax.set_ylabel("F1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Per-AU F1 on {result['dataset']} fold {result['fold']} ({result['frames']} frames)")
    ax.legend(fontsize=7, ncols=4, loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def plot_attention_maps(images: np.ndarray, outputs: Mapping[str, np.ndarray], aus: Sequence[str],
                        out_png: str | pathlib.Path, labels: np.ndarray | None = None) -> None:
    """Faces with predicted landmarks, then per AU the initial and refined attention maps.

    Args:
      images: float [F, C, C, 3] in [-1, 1].
      outputs: model outputs of those faces: ``landmarks`` [F, 49, 2], ``initial_au_maps`` [F, n, M, M],
        ``refined_au_maps`` [F, n, M-8, M-8], optional ``final_au_prob`` [F, n].
      aus: n AU names.
      labels: optional int [F, n] ground truth shown in the titles.
    """
    plt = _pyplot()
    faces, n = images.shape[0], len(aus)
    fig, axes = plt.subplots(2 * faces, n + 1, figsize=(1.6 * (n + 1), 3.2 * faces), squeeze=False)
    crop = images.shape[1]
    for f in range(faces):
        rgb = np.clip((images[f] + 1) / 2, 0, 1)
        for row, key in ((2 * f, "initial_au_maps"), (2 * f + 1, "refined_au_maps")):
            ax = axes[row, 0]
            ax.imshow(rgb)
            if row == 2 * f:
                lm = outputs["landmarks"][f]
                ax.scatter(lm[:, 0], lm[:, 1], s=3, c="lime")
            ax.set_title(f"face {f + 1}: {key.split('_')[0]}", fontsize=7)
            ax.axis("off")
            for i in range(n):
                m = np.asarray(outputs[key][f, i])
                # Initial map pixel h sits at crop coordinate h * C / M (docs/model.md §3.4: c = round(p * M / C)); the
                # refined map (valid 3x3 convs x4) loses 4 pixels on each side.
                border = 0 if key == "initial_au_maps" else (outputs["initial_au_maps"].shape[-1] - m.shape[0]) / 2
                size = m.shape[0] + 2 * border
                lo, hi = border * crop / size, (size - border) * crop / size
                extent = (lo, hi, hi, lo)
                ax = axes[row, i + 1]
                ax.imshow(rgb, extent=(0, crop, crop, 0))
                ax.imshow(m, cmap="jet", alpha=0.5, extent=extent, vmin=0, vmax=1)
                ax.set_xlim(0, crop)
                ax.set_ylim(crop, 0)
                title = aus[i]
                if row == 2 * f and "final_au_prob" in outputs:
                    title += f" p={float(outputs['final_au_prob'][f, i]):.2f}"
                    if labels is not None:
                        title += f" y={int(labels[f, i])}"
                ax.set_title(title, fontsize=7)
                ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


HEADS = (("local", "local"), ("integrated", "integrated"), ("final", "final"))


def heads_not_above_trivial(result: Mapping[str, Any], heads: Sequence[tuple[str, str]] = HEADS
                            ) -> list[tuple[str, str, float, float]]:
    """Every (head, AU) whose F1 is at or below the all-present predictor's F1 of that AU on the same frames.

    Args:
      result: an AU evaluation result (``predictions[key]["f1"]`` per AU, percent, and ``aus``).
      heads: (result key, name in the message) of the predictions to check.

    Returns:
      ``[(head name, AU, F1, all-present F1), ...]`` in head then AU order; empty when every head is above.
    """
    p = result["predictions"]
    trivial = p[evaluation.TRIVIAL]["f1"]
    return [(name, str(au), float(f1), float(t)) for key, name in heads if key in p
            for au, f1, t in zip(result["aus"], p[key]["f1"], trivial) if not f1 > t]


def weak_heads_message(weak: Sequence[tuple[str, str, float, float]]) -> str:
    """One line naming the heads of :func:`heads_not_above_trivial` ("" when there are none)."""
    if not weak:
        return ""
    return ("NOT above the all-present predictor: " + "; ".join(
        f"{head} AU{au.removeprefix('AU')} F1 {f1:.1f} <= {t:.1f}" for head, au, f1, t in weak)
            + " (such a head predicts no better than 'always present')")


def write_report(out_dir: str | pathlib.Path, result: Mapping[str, Any], *, metrics_jsonl: str | pathlib.Path | None,
                 attention: tuple[np.ndarray, Mapping[str, np.ndarray], np.ndarray | None] | None = None,
                 summary: Mapping[str, Any] | None = None, title: str = "ALGRNet run report") -> pathlib.Path:
    """Writes ``report.md`` with its plots (``curves.png``, ``f1_bars.png``, ``attention_maps.png``).

    Args:
      out_dir: report directory.
      result: ``evaluate_variables`` result (AU task).
      metrics_jsonl: the trainer's metrics file (None: no curves).
      attention: (images [F, C, C, 3], outputs, labels [F, n] or None) of a few test faces.
      summary: extra key/value lines shown first (settings, wall times, ...).
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    if summary:
        lines += [f"- **{k}**: {v}" for k, v in summary.items()] + [""]
    p = result["predictions"]
    lines += ["## Result", "",
              f"Mean F1 on the held-out fold ({result['frames']} frames): **ours (final) "
              f"{p['final']['mean_f1']:.1f}%** (local {p['local']['mean_f1']:.1f}%, integrated "
              f"{p['integrated']['mean_f1']:.1f}%) vs the trivial all-present predictor "
              f"**{p[evaluation.TRIVIAL]['mean_f1']:.1f}%**; landmark mean error "
              f"{result['landmarks']['mean_error_pct']:.2f}% of the inter-ocular distance, failure rate "
              f"{result['landmarks']['failure_rate_pct']:.1f}%.", ""]
    weak = weak_heads_message(heads_not_above_trivial(result))
    lines += [f"**Warning: per-AU heads {weak}.**" if weak else
              "Every per-AU head (local, integrated, final) is above the all-present predictor's F1 of its AU.", "",
              reporting.result_markdown(result)]
    if metrics_jsonl is not None and pathlib.Path(metrics_jsonl).exists():
        plotted = plot_curves(read_metrics_jsonl(metrics_jsonl), out / "curves.png")
        lines += ["## Training curves", "", f"![curves](curves.png)", "", f"Plotted: {', '.join(plotted)}.", ""]
    plot_f1_bars(result, out / "f1_bars.png")
    lines += ["## Per-AU F1", "", "![F1 per AU](f1_bars.png)", ""]
    if attention is not None:
        images, outputs, labels = attention
        plot_attention_maps(images, outputs, result["aus"], out / "attention_maps.png", labels)
        lines += ["## Attention maps", "",
                  "Per face: the top row shows the predicted landmarks and the initial maps generated from them "
                  "(with the adaptive offsets and scales); the bottom row the refined maps.", "",
                  "![attention maps](attention_maps.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
