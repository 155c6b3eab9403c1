"""Where does a trained model's LOCAL head of one AU look? Input gradients on the test part.

The mechanism sets (docs/mechanisms.md) put an AU's evidence outside its region, or outside every AU region, and
ask whether a part that reaches there (relations, F&R) is needed. The knock-outs of ``experiments.relation_use``
say which part a trained model relies on; this says where in the image the local head's answer comes from: the
gradient of the AU's local logit (``local_au_logprob[..., 1] - [..., 0]``) with respect to the input pixels,
|d logit / d pixel| summed over colour channels, on every test frame where the AU is present.

Reported per run: the share of that gradient mass inside the AU's own attention map (``initial_au_maps``
resized to the crop, > 0) and outside the maps of every AU; the mean refined map of the AU on the cells of its
region (``regions.region_support``) and off them (the paper's refined map is a sigmoid, about 0.5 off the region
in trained models: the "local" branch reads the whole face; ``model.local_within_region`` zeroes it); a picture:
the mean input and the mean gradient map, with the AU's mean attention map outlined. The selected checkpoint is
the one the run reports (no selection on the test data).

    python -m experiments.saliency runs/mechanisms/bp4d_small_fr/wo_fr/seed0/fold1 --au 4 \
        --out experiments/results/saliency_fr.json
"""
from __future__ import annotations

import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from algrnet_jax import checkpoints, evaluation, experiment
from algrnet_jax.errors import UserError, run_main
from algrnet_jax.models.networks import create_model
from experiments import run_args


def local_gradient(model: Any, au_index: int):
    """``(variables, images [B, C, C, 3]) -> (|d local logit / d image| [B, C, C], initial_au_maps [B, n, h, w],
    refined map of the AU [B, C/4, C/4], its region's cells [B, C/4, C/4])`` (``ALGRNet.region_cells`` of the
    centres the model used: landmark rule plus adaptive offsets and scales where the model has them)."""
    def logit_sum(images, variables):
        out = model.apply(variables, images, train=False)
        lp = out["local_au_logprob"][:, au_index]
        return jnp.sum(lp[:, 1] - lp[:, 0]), out

    @jax.jit
    def run(variables, images):
        grad, out = jax.grad(logit_sum, has_aux=True)(images, variables)
        centres = model.region_centres(out["landmarks"], out.get("offsets"))
        support = model.region_cells(centres, out.get("scales", model.map_scale))
        return (jnp.abs(grad).sum(-1), out["initial_au_maps"], out["refined_au_maps"][:, au_index],
                support[:, au_index])
    return run


def run_saliency(workdir: str | pathlib.Path, au: int, select: str = experiment.LAST) -> dict[str, Any]:
    """Gradient shares and mean maps (numpy) of one run's local head of ``au`` on its test part."""
    path = experiment.select_checkpoint(workdir, select)
    config, variables = checkpoints.load_for_inference(path)
    aus = [int(a) for a in config.aus]
    if au not in aus:
        raise UserError(f"--au {au}: the run's AUs are {aus}")
    i = aus.index(au)
    grad_fn = local_gradient(create_model(config), i)
    c = config.crop_size
    sums = {"grad": np.zeros((c, c)), "image": np.zeros((c, c, 3)), "map": np.zeros((c, c))}
    inside, outside_all, refined_on, refined_off, frames = [], [], [], [], 0

    def on_batch(batch, outputs):
        nonlocal frames
        keep = (np.asarray(batch["mask"]) > 0) & (np.asarray(batch["labels"])[:, i] > 0)
        if not keep.any():
            return
        images = np.asarray(batch["image"])
        grad, maps, refined, support = (np.asarray(a) for a in grad_fn(variables, images))
        maps = np.stack([[cv2.resize(m, (c, c), interpolation=cv2.INTER_LINEAR) for m in face] for face in maps])
        for g, m, img, r, sup in zip(grad[keep], maps[keep], images[keep], refined[keep], support[keep]):
            total = g.sum() + 1e-30
            inside.append(float(g[m[i] > 0].sum() / total))
            outside_all.append(float(g[(m <= 0).all(0)].sum() / total))
            refined_on.append(float(r[sup > 0].mean()) if (sup > 0).any() else np.nan)
            refined_off.append(float(r[sup == 0].mean()) if (sup == 0).any() else np.nan)
            sums["grad"] += g / total
            sums["image"] += img
            sums["map"] += m[i]
            frames += 1

    evaluation.evaluate_variables(config, variables, on_batch=on_batch)
    if frames == 0:
        raise UserError(f"{workdir}: no test frame has AU{au} present")
    return {"run": str(workdir), "checkpoint": str(path), "au": au, "frames": frames,
            "share_inside_own_map": float(np.mean(inside)), "share_outside_every_map": float(np.mean(outside_all)),
            "refined_map_on_region": float(np.nanmean(refined_on)),
            "refined_map_off_region": float(np.nanmean(refined_off)),
            "local_within_region": config.model.local_within_region,
            "mean": {k: v / frames for k, v in sums.items()}}


def picture(results: Sequence[dict[str, Any]], png: pathlib.Path, scale: int = 4) -> None:
    """Per run: the mean input and the mean gradient map (hot), the AU's mean attention map outlined."""
    tiles = []
    for r in results:
        img = np.clip((r["mean"]["image"] + 1) * 127.5, 0, 255).astype(np.uint8)
        g = r["mean"]["grad"] / max(r["mean"]["grad"].max(), 1e-30)
        hot = cv2.applyColorMap((g * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1]
        pair = []
        for tile in (img, hot):
            tile = cv2.resize(np.ascontiguousarray(tile), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
            own = (r["mean"]["map"] > 0.05 * r["mean"]["map"].max()).astype(np.uint8)
            region = cv2.resize(own, tile.shape[:2][::-1], interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(tile, contours, -1, (0, 220, 0), 1)
            pair.append(tile)
        tile = np.concatenate(pair, 1)
        bar = np.full((18, tile.shape[1], 3), 255, np.uint8)
        label = f"{pathlib.Path(r['run']).parts[-3]}/{pathlib.Path(r['run']).parts[-2]} AU{r['au']}: " \
                f"inside {100 * r['share_inside_own_map']:.0f}%, outside all {100 * r['share_outside_every_map']:.0f}%"
        cv2.putText(bar, label, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([bar, tile], 0))
    width = max(t.shape[1] for t in tiles)
    tiles = [np.pad(t, ((0, 0), (0, width - t.shape[1]), (0, 0)), constant_values=255) for t in tiles]
    cv2.imwrite(str(png), cv2.cvtColor(np.concatenate(tiles, 0), cv2.COLOR_RGB2BGR))


def main(argv: list[str] | None = None) -> int:
    parser = run_args.run_parser("saliency", __doc__, "JSON path (the picture goes beside it as .png)")
    parser.add_argument("--au", type=int, required=True, help="the AU whose local head is examined")
    args = run_args.parse_run_args(parser, argv)
    results = []
    for run in args.runs:
        r = run_saliency(run, args.au, args.select)
        print(f"{run}: AU{args.au} local head, {r['frames']} present frames: gradient inside its own map "
              f"{100 * r['share_inside_own_map']:.1f}%, outside every AU map "
              f"{100 * r['share_outside_every_map']:.1f}%; "
              f"refined map on its region {r['refined_map_on_region']:.2f}, off it {r['refined_map_off_region']:.2f}",
              flush=True)
        results.append(r)
    out = run_args.write_json(args.out, [{k: v for k, v in r.items() if k != "mean"} for r in results])
    picture(results, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, "saliency"))
