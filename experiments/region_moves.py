"""Where did a trained model's adaptive regions go? Offsets, scales and region cells on the test part.

Adaptive regions (docs/model.md §4.1) move each AU's two centres by a predicted offset and replace the fixed
scale e0 by a predicted one. This reports, per AU and averaged over the test frames of a run: the offset length
in crop pixels, the scale, and how much of the fixed region (the landmark rule's centres at e0) the learned
region keeps: the intersection over union of their cells on the C/4 feature grid (``ALGRNet.region_cells``; 1
when Ada leaves the region where it was). A model without Ada reports offsets 0, scale e0 and overlap 1. The
checkpoint is the one the run reports (no selection on the test data).

On an ``ada`` mechanism set (``data_pipelines.synthetic.mechanisms``: the AU drawn shifted per subject) it also
reports whether the learned offset of the displaced AU follows each test subject's shift: per subject, the
mean learned offset (crop pixels) against the true shift (the generator's ``subject_offset`` times the
interocular distance), their cosine and the learned offset's projection on the shift's direction.

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
from data_pipelines.synthetic import generator
from data_pipelines.synthetic import mechanisms as sets
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


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The cosine of two vectors; 0 when either is zero."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def follows_subjects(offsets: np.ndarray, subjects: np.ndarray, shifts: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Does a learned offset follow each subject's shift? ``offsets`` [N, 2] (crop px, one AU, every test face),
    ``subjects`` [N] (str), ``shifts``: subject -> true shift (dx, dy) in crop px. Per subject the mean learned
    offset, the shift, their cosine and the offset's projection on the shift's direction (px); their means."""
    per = []
    for s in sorted(set(subjects.tolist())):
        learned = offsets[subjects == s].mean(0)
        true = np.asarray(shifts[s], np.float64)
        unit = true / np.linalg.norm(true)
        per.append({"subject": s, "frames": int((subjects == s).sum()), "learned_px": learned.tolist(),
                    "shift_px": true.tolist(), "cosine": cosine(learned, true),
                    "projection_px": float(learned @ unit)})
    return {"subjects": per, "cosine_mean": float(np.mean([p["cosine"] for p in per])),
            "projection_px_mean": float(np.mean([p["projection_px"] for p in per])),
            "shift_px_mean": float(np.mean([np.linalg.norm(p["shift_px"]) for p in per])),
            "cosine_positive": int(sum(p["cosine"] > 0 for p in per))}


def displaced(config: Any) -> tuple[sets.Mechanism, str] | None:
    """``(mechanism, size)`` when the run's dataset is an ``ada`` mechanism set whose AU the model has."""
    parsed = sets.parse_name(str(config.data.builder_config)) if config.data.dataset == "synth_au" else None
    if parsed is None or parsed[0].test != "ada" or parsed[0].au not in [int(a) for a in config.aus]:
        return None
    return parsed


def subject_shifts(mech: sets.Mechanism, size: str, subjects: np.ndarray,
                   interocular: np.ndarray) -> dict[str, np.ndarray]:
    """subject -> where the ``ada`` set draws its displaced AU, (dx, dy) in crop pixels: the generator's
    ``subject_offset`` (interocular units) times the subject's mean interocular distance over its ``subjects``
    [N] frames (``interocular`` [N], crop pixels)."""
    cfg = sets.synth_config(mech, size)
    index = {generator.subject_id(i): i for i in range(cfg.num_subjects)}
    return {s: generator.subject_offset(cfg, index[s]) * interocular[subjects == s].mean()
            for s in sorted(set(subjects.tolist()))}


def run_moves(workdir: str | pathlib.Path, select: str = experiment.LAST) -> dict[str, Any]:
    """Mean offset length, scale and overlap per AU of one run on its test part, with its local F1 per AU (and, on
    an ``ada`` set with Ada, whether the displaced AU's offsets follow each subject's shift)."""
    path = experiment.select_checkpoint(workdir, select)
    config, variables = checkpoints.load_for_inference(path)
    model = create_model(config)
    extra = ("landmarks", "offsets", "scales") if config.model.adaptive else ("landmarks",)
    rows: dict[str, list[np.ndarray]] = {"offset_px": [], "scale": [], "overlap": []}
    ada_set = displaced(config) if config.model.adaptive else None
    faces: dict[str, list[np.ndarray]] = {"offsets": [], "subject": [], "interocular": []}

    def on_batch(batch, outputs):
        keep = np.asarray(batch["mask"]) > 0
        for k, v in moves(model, outputs).items():
            rows[k].append(v[keep])
        if ada_set is not None:
            faces["offsets"].append(np.asarray(outputs["offsets"])[keep])
            faces["subject"].append(np.asarray(batch["subject"])[keep])
            faces["interocular"].append(np.asarray(batch["interocular"])[keep])

    result = evaluation.evaluate_variables(config, variables, on_batch=on_batch,
                                           apply_fn=evaluation.make_eval_step(config, extra))
    means = {k: np.concatenate(v).mean(0) for k, v in rows.items()}
    out = {"run": str(workdir), "checkpoint": str(path), "aus": [int(a) for a in config.aus],
           "adaptive": bool(config.model.adaptive), "offset_unit": config.model.offset_unit,
           "local_f1": [float(f) for f in result["predictions"]["local"]["f1"]],
           **{f"{k}_mean": [float(x) for x in v] for k, v in means.items()},
           "offset_px_max": float(np.concatenate(rows["offset_px"]).max())}
    if ada_set is not None:
        mech, size = ada_set
        subjects = np.concatenate(faces["subject"])
        shifts = subject_shifts(mech, size, subjects, np.concatenate(faces["interocular"]))
        j = [int(a) for a in config.aus].index(mech.au)
        out["follows_shift"] = {"au": mech.au, **follows_subjects(np.concatenate(faces["offsets"])[:, j], subjects,
                                                                  shifts)}
    return out


def main(argv: list[str] | None = None) -> int:
    args = run_args.parse_run_args(run_args.run_parser("region_moves", __doc__, "JSON path"), argv)
    results = []
    for run in args.runs:
        r = run_moves(run, args.select)
        print(f"{run}: " + "; ".join(
            f"AU{a} offset {o:.2f} px, scale {s:.3f}, overlap {v:.2f}, local F1 {f:.1f}" for a, o, s, v, f in zip(
                r["aus"], r["offset_px_mean"], r["scale_mean"], r["overlap_mean"], r["local_f1"])), flush=True)
        if "follows_shift" in r:
            f = r["follows_shift"]
            print(f"  AU{f['au']} offset against each subject's shift ({f['shift_px_mean']:.1f} px): cosine "
                  f"{f['cosine_mean']:+.2f} (positive for {f['cosine_positive']} of {len(f['subjects'])} subjects), "
                  f"projection {f['projection_px_mean']:+.2f} px", flush=True)
        results.append(r)
    print(f"wrote {run_args.write_json(args.out, results)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, "region_moves"))
