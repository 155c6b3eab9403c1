"""Which way does the displaced AU's loss pull its adaptive region? Per subject of an ``ada`` set.

Ada (docs/model.md §4.1) learns its offsets only through the gradient of the AU losses with respect to the
region centres. On an ``ada`` set (``data_pipelines.synthetic.mechanisms``) every subject draws the displaced
AU shifted by its own (dx, dy); a region that is to follow it must be pulled that way, subject by subject. For
each run (or each kept checkpoint of it, ``--every-checkpoint``) and each subject of the fold's test part (or
training part, ``--part train``) this reports, for the displaced AU's local head:

- ``pull``: minus the gradient of its cross-entropy (mean over the subject's frames) with respect to one common
  shift of the AU's offset on every frame of the subject (loss per crop pixel), on all frames and on the
  frames where the AU is present; the cosine of each with the subject's true shift (their means over subjects:
  the present frames' over the subjects that have any);
- ``along``: the same cross-entropy, and the mean local probability on the present frames, with the offset
  moved by ``t`` times the true shift, ``t`` = 0, 0.25, ..., 1 (would the shifted region serve this model?).

A plot beside ``--out`` (``.png``): per run, each subject's cosine at each checkpoint, and the mean loss along
the shift.

The shift enters through the offset MLP's last bias (offsets = unit * (h W + b), so moving every frame's offset
by δ crop pixels is b += δ / unit, exact). A positive mean cosine says the loss points Ada at the shifted
change; about zero says the loss gives it no direction to learn.

    python -m experiments.offset_pull runs/mechgrad/bp4d_small_ada_au12_d0.45/ada_only/seed0/fold1 \
        --every-checkpoint --out experiments/results/offset_pull.json
"""
from __future__ import annotations

import pathlib
import sys
import textwrap
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from algrnet_jax import checkpoints, experiment, losses
from algrnet_jax.errors import UserError, run_main
from algrnet_jax.models import networks
from data_pipelines import pipeline
from experiments import region_moves, report, run_args

ALONG = (0.0, 0.25, 0.5, 0.75, 1.0)


def pull_fn(model: networks.ALGRNet, j: int, unit: float) -> Callable[..., tuple[jax.Array, jax.Array | None]]:
    """``(delta [2], variables, images [B, C, C, 3], labels [B], weight [B], jacobian=True) -> (sums [3],
    d sums[:2] / d delta [2, 2], or None without ``jacobian``)``: sums over the batch of the local cross-entropy of
    AU ``j`` on all frames and on the present ones, and of its local probability on the present ones, with AU
    ``j``'s offset moved by ``delta`` crop pixels."""
    def sums(delta, variables, images, labels, weight):
        params = jax.tree.map(lambda p: p, variables["params"])
        bias = params["adaptive"]["offset_out"]["bias"]
        params["adaptive"]["offset_out"]["bias"] = bias.at[2 * j:2 * j + 2].add(delta / unit)
        out = model.apply({**variables, "params": params}, images, train=False)
        logprob = out["local_au_logprob"][:, j]                                      # [B, 2]
        nll = losses.nll(logprob, labels)
        present = weight * labels
        return jnp.stack([jnp.sum(nll * weight), jnp.sum(nll * present), jnp.sum(jnp.exp(logprob[:, 1]) * present)])

    def value_and_jacobian(delta, variables, images, labels, weight, jacobian=True):
        values = sums(delta, variables, images, labels, weight)
        if not jacobian:
            return values, None
        return values, jax.jacrev(lambda d: sums(d, variables, images, labels, weight)[:2])(delta)

    return jax.jit(value_and_jacobian, static_argnames="jacobian")


def faces(config: Any, part: str) -> dict[str, np.ndarray]:
    """Every real frame of ``part`` ("test": the fold's test part; "train": its training part) in record order:
    ``image`` [N, C, C, 3], ``labels`` [N, n], ``subject`` [N], ``interocular`` [N] (crop px)."""
    split = pipeline.split_for(config, part == "train")
    keep: dict[str, list[np.ndarray]] = {"image": [], "labels": [], "subject": [], "interocular": []}
    for batch in pipeline.make_source(config, training=False).eval_batches(split):
        real = np.asarray(batch["mask"]) > 0
        for k in keep:
            keep[k].append(np.asarray(batch[k])[real])
    return {k: np.concatenate(v) for k, v in keep.items()}


def subject_pull(fn: Callable[..., Any], variables: Any, data: Mapping[str, np.ndarray], j: int,
                 shift: np.ndarray, batch: int) -> dict[str, Any]:
    """The pull on, and the loss along the shift of, AU ``j``'s offset for one subject's frames ``data``."""
    n = len(data["image"])
    labels = (np.asarray(data["labels"])[:, j] == 1).astype(np.int32)
    known = (np.asarray(data["labels"])[:, j] >= 0).astype(np.float32)
    along, pull = [], np.zeros((2, 2))
    for t in ALONG:
        total = np.zeros(3)
        for start in range(0, n, batch):
            idx = np.arange(start, start + batch)
            real = idx < n
            idx = np.where(real, idx, 0)
            values, jac = fn(jnp.asarray(t * shift, jnp.float32), variables, data["image"][idx], labels[idx],
                             (known[idx] * real).astype(np.float32), jacobian=t == 0.0)
            total += np.asarray(values, np.float64)
            if jac is not None:
                pull -= np.asarray(jac, np.float64)
        along.append(total)
    frames, present = float(known.sum()), float((labels * known).sum())
    pull_all, pull_present = pull[0] / max(frames, 1), pull[1] / max(present, 1)
    return {"frames": int(frames), "present": int(present), "shift_px": shift.tolist(),
            "pull": pull_all.tolist(), "pull_norm": float(np.linalg.norm(pull_all)),
            "cosine": region_moves.cosine(pull_all, shift), "pull_present": pull_present.tolist(),
            "cosine_present": region_moves.cosine(pull_present, shift),
            "loss_along": [a[0] / max(frames, 1) for a in along],
            "present_prob_along": [a[2] / present if present else None for a in along]}


def run_pull(ckpt: str, part: str) -> dict[str, Any]:
    """Per subject of ``part``, the pull on the displaced AU's offset and its loss along the subject's shift,
    for one checkpoint of an Ada model trained on an ``ada`` set; their means over subjects."""
    config, variables = checkpoints.load_for_inference(ckpt)
    found = region_moves.displaced(config)
    if not config.model.adaptive or found is None:
        raise UserError(f"{ckpt}: not an Ada model of an ada mechanism set (dataset {config.data.dataset}/"
                        f"{config.data.builder_config}, model.adaptive={config.model.adaptive})")
    mech, size = found
    model = networks.create_model(config)
    j = [int(a) for a in config.aus].index(mech.au)
    unit = networks.OFFSET_UNITS[model.offset_unit](model.map_scale, model.map_size, model.crop_size)
    fn = pull_fn(model, j, unit)
    data = faces(config, part)
    shifts = region_moves.subject_shifts(mech, size, data["subject"], data["interocular"])
    per = []
    for s, shift in shifts.items():
        rows = data["subject"] == s
        per.append({"subject": s, **subject_pull(fn, variables, {k: v[rows] for k, v in data.items()}, j,
                                                 np.asarray(shift, np.float32), int(config.data.eval_batch_size))})
    mean = lambda k: float(np.mean([p[k] for p in per]))  # noqa: E731
    return {"checkpoint": ckpt, "step": int(pathlib.Path(ckpt).name) if pathlib.Path(ckpt).name.isdigit() else None,
            "part": part, "au": mech.au, "offset_unit": config.model.offset_unit, "subjects": per,
            "cosine_mean": mean("cosine"), "cosine_positive": int(sum(p["cosine"] > 0 for p in per)),
            "cosine_present_mean": float(np.mean([p["cosine_present"] for p in per if p["present"]] or [0.0])),
            "pull_norm_mean": mean("pull_norm"),
            "loss_along_mean": np.mean([p["loss_along"] for p in per], 0).tolist()}


def plot(results: list[dict[str, Any]], png: pathlib.Path) -> None:
    """Per run: the cosine of each subject's pull with its shift at each checkpoint (dots; line: the mean), and
    the mean cross-entropy along the shift, one line per checkpoint."""
    plt = report._pyplot()
    runs = list(dict.fromkeys(r["run"] for r in results))
    fig, axes = plt.subplots(len(runs), 2, figsize=(9, 3.4 * len(runs)), squeeze=False)
    for (ax_cos, ax_loss), run in zip(axes, runs):
        rows = [r for r in results if r["run"] == run]
        x = [r["step"] if r["step"] is not None else i for i, r in enumerate(rows)]
        for xi, r in zip(x, rows):
            ax_cos.plot([xi] * len(r["subjects"]), [p["cosine"] for p in r["subjects"]], "k.", ms=4)
            ax_loss.plot(ALONG, r["loss_along_mean"], marker="o", ms=3, label=f"step {xi}")
        ax_cos.plot(x, [r["cosine_mean"] for r in rows], "tab:orange", label="mean over subjects")
        ax_cos.axhline(0, color="gray", lw=0.5)
        ax_cos.set_ylim(-1.05, 1.05)
        ax_cos.set_xlabel("training step")
        ax_cos.set_ylabel("cosine(pull, shift)")
        ax_cos.set_title(f"AU{rows[0]['au']} pull, {rows[0]['part']} subjects\n{textwrap.shorten(run, 70)}", fontsize=7)
        ax_cos.legend(fontsize=6)
        ax_loss.set_xlabel("offset moved by t x the subject's shift")
        ax_loss.set_ylabel("local cross-entropy")
        ax_loss.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = run_args.run_parser("offset_pull", __doc__, "JSON path")
    parser.add_argument("--part", choices=("test", "train"), default="test",
                        help="the fold's part whose subjects are examined (default test)")
    parser.add_argument("--every-checkpoint", action="store_true",
                        help="every kept checkpoint of each run, in step order (else the --select one)")
    args = run_args.parse_run_args(parser, argv)
    results = []
    for run in args.runs:
        steps = checkpoints.list_steps(pathlib.Path(run) / checkpoints.CHECKPOINTS_DIR) if args.every_checkpoint else []
        ckpts = ([str(pathlib.Path(run) / checkpoints.CHECKPOINTS_DIR / str(s)) for s in steps] if steps
                 else [experiment.select_checkpoint(run, args.select)])
        for ckpt in ckpts:
            r = run_pull(ckpt, args.part)
            loss = r["loss_along_mean"]
            print(f"{ckpt}: AU{r['au']} pull against the shift, {r['part']} subjects: cosine {r['cosine_mean']:+.2f} "
                  f"(positive for {r['cosine_positive']} of {len(r['subjects'])}; present frames "
                  f"{r['cosine_present_mean']:+.2f}), |pull| {r['pull_norm_mean']:.2e} per px; cross-entropy "
                  f"{loss[0]:.3f} at the region, {loss[-1]:.3f} at the shift", flush=True)
            results.append({"run": run, **r})
    path = run_args.write_json(args.out, results)
    plot(results, path.with_suffix(".png"))
    print(f"wrote {path} and its plot {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, "offset_pull"))
