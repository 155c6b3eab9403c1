"""Where did a trained model's adaptive regions go? Offsets, scales and region cells on the test part.

Adaptive regions (docs/model.md §4.1) move each AU's two centres by a predicted offset and replace the fixed
scale e0 by a predicted one. This reports, per AU and averaged over the test frames of a run: the offset length
in crop pixels, the scale, and how much of the fixed region (the landmark rule's centres at e0) the learned
region keeps: the intersection over union of their cells on the C/4 feature grid (``ALGRNet.region_cells``; 1
when Ada leaves the region where it was). A model without Ada reports offsets 0, scale e0 and overlap 1. The
checkpoint is the one the run reports (no selection on the test data).

    python -m experiments.region_moves runs/mechloc/bp4d_small_ada/ada_only/seed0/fold1 \
        --out experiments/results/region_moves_ada.json
"""
from __future__ import annotations

import pathlib
import sys
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from algrnet_jax import checkpoints, evaluation, experiment
from algrnet_jax.errors import run_main
from algrnet_jax.models.networks import ALGRNet, create_model
from experiments import run_args


def moves(model: ALGRNet, outputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Per face and AU [B, n]: ``offset_px`` (length of the offset, crop pixels), ``scale`` and ``overlap`` (IoU of
    the learned region's cells with the fixed region's) from a forward's ``landmarks`` (and ``offsets`` and
    ``scales`` where the model has Ada)."""
    landmarks = jnp.asarray(outputs["landmarks"])
    fixed = np.asarray(model.region_cells(model.region_centres(landmarks), model.map_scale))
    if "offsets" not in outputs:
        ones = np.ones(fixed.shape[:2])
        return {"offset_px": 0 * ones, "scale": model.map_scale * ones, "overlap": ones}
    offsets, scales = jnp.asarray(outputs["offsets"]), jnp.asarray(outputs["scales"])
    learned = np.asarray(model.region_cells(model.region_centres(landmarks, offsets), scales))
    inter = (learned * fixed).sum((-1, -2))
    union = np.maximum(learned, fixed).sum((-1, -2))
    return {"offset_px": np.linalg.norm(np.asarray(offsets), axis=-1), "scale": np.asarray(scales),
            "overlap": inter / np.maximum(union, 1)}


def run_moves(workdir: str | pathlib.Path, select: str = experiment.LAST) -> dict[str, Any]:
    """Mean offset length, scale and overlap per AU of one run on its test part, with its local F1 per AU."""
    path = experiment.select_checkpoint(workdir, select)
    config, variables = checkpoints.load_for_inference(path)
    model = create_model(config)
    extra = ("landmarks", "offsets", "scales") if config.model.adaptive else ("landmarks",)
    rows: dict[str, list[np.ndarray]] = {"offset_px": [], "scale": [], "overlap": []}

    def on_batch(batch, outputs):
        keep = np.asarray(batch["mask"]) > 0
        for k, v in moves(model, outputs).items():
            rows[k].append(v[keep])

    result = evaluation.evaluate_variables(config, variables, on_batch=on_batch,
                                           apply_fn=evaluation.make_eval_step(config, extra))
    means = {k: np.concatenate(v).mean(0) for k, v in rows.items()}
    return {"run": str(workdir), "checkpoint": str(path), "aus": [int(a) for a in config.aus],
            "adaptive": bool(config.model.adaptive), "offset_unit": config.model.offset_unit,
            "local_f1": [float(f) for f in result["predictions"]["local"]["f1"]],
            **{f"{k}_mean": [float(x) for x in v] for k, v in means.items()},
            "offset_px_max": float(np.concatenate(rows["offset_px"]).max())}


def main(argv: list[str] | None = None) -> int:
    args = run_args.parse_run_args(run_args.run_parser("region_moves", __doc__, "JSON path"), argv)
    results = []
    for run in args.runs:
        r = run_moves(run, args.select)
        print(f"{run}: " + "; ".join(
            f"AU{a} offset {o:.2f} px, scale {s:.3f}, overlap {v:.2f}, local F1 {f:.1f}" for a, o, s, v, f in zip(
                r["aus"], r["offset_px_mean"], r["scale_mean"], r["overlap_mean"], r["local_f1"])), flush=True)
        results.append(r)
    print(f"wrote {run_args.write_json(args.out, results)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, "region_moves"))
