"""Does a trained ALGRNet use its relational parts? Knock-out tests at inference.

The ablation (experiments.ablation) trains each variant from scratch; it cannot tell whether a trained ALGRNet
*uses* its adaptive regions, skip-BiLSTM or fusion & refining, or learned to ignore them. Here the weights stay
as trained and one part's output is replaced at inference (``flax.linen.intercept_methods``), then the run's
selected checkpoint is evaluated on the test part of its fold as ``experiments.ablation`` did:

- ``intact``: the model as trained;
- ``relations zero``: s_t = v_t (the relation term removed);
- ``relations other face``: s_t = v_t + R(v')_t, the relation term of another face of the batch (keeps its
  scale and mean, removes what it says about this face);
- ``adaptive fixed``: offsets 0 and scales ``init_scale``, the fixed regions of JAA-Net;
- ``adaptive other face``: the offsets and scales predicted for another face of the batch;
- ``F&R global zero``: FusionRefine fuses a zero global feature into each local one (no global information);
- ``F&R global other face``: the global features come from another face of the batch.

"Another face" is the one half a batch away (faces are read in sequence order: the next one is usually the next
frame of the same sequence, whose labels are the same; with an evaluation batch of 64 and sequences of 32 frames,
half a batch away is another sequence).

A knock-out that costs nothing means the part carries no information the trained model relies on. Also reported:
the size of the relation term against its input, ||R(v)_t|| / ||v_t|| per AU (mean over test faces).
Only parts the model has are knocked out. Nothing is selected here: the checkpoint is the one the run reports.

    python -m experiments.relation_use runs/synth_hidden_rescale/algrnet/seed*/fold1 --select val_best \
        --out experiments/results/relation_use_hidden2_rescaled.json

Writes JSON (``--out``) and prints a Markdown table (also written beside the JSON as ``.md``).
"""
from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from algrnet_jax import checkpoints, evaluation, experiment
from algrnet_jax.errors import run_main
from algrnet_jax.models.adaptive import AdaptiveRegions
from algrnet_jax.models.fusion import FusionRefineAU
from algrnet_jax.models.networks import create_model
from algrnet_jax.models.relations import NONE, Relation
from experiments import run_args


def _other_face(x: jax.Array, axis: int) -> jax.Array:
    """The values of the face half a batch away along ``axis`` (a cyclic shift by max(B // 2, 1)): test parts are
    read in sequence order, so the next face is usually the next frame of the same sequence, with the same labels."""
    return jnp.roll(x, max(x.shape[axis] // 2, 1), axis=axis)


def _relations_zero(r: jax.Array, module: Any) -> jax.Array:
    return jnp.zeros_like(r)


def _relations_other(r: jax.Array, module: Any) -> jax.Array:
    return _other_face(r, axis=1)                                     # [n, B, H, W, F]


def _adaptive_fixed(out: tuple[jax.Array, jax.Array], module: Any) -> tuple[jax.Array, jax.Array]:
    offsets, scales = out
    return jnp.zeros_like(offsets), jnp.full_like(scales, module.init_scale)


def _adaptive_other(out: tuple[jax.Array, jax.Array], module: Any) -> tuple[jax.Array, ...]:
    return tuple(_other_face(a, axis=0) for a in out)


def _global_zero(args: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    local, glob = args
    return local, jnp.zeros_like(glob)


def _global_other(args: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    local, glob = args                        # one AU's [B, h, w, F] each (FusionRefine vmaps FusionRefineAU)
    return local, _other_face(glob, axis=0)


class Knockout(NamedTuple):
    """Replaces the inputs (``on_args``) or the output (``on_output``) of the ``modules``' ``__call__``."""
    modules: Any
    on_args: Callable | None = None
    on_output: Callable | None = None


KNOCKOUTS: dict[str, Knockout] = {
    "relations zero": Knockout(Relation, on_output=_relations_zero),
    "relations other face": Knockout(Relation, on_output=_relations_other),
    "adaptive fixed": Knockout(AdaptiveRegions, on_output=_adaptive_fixed),
    "adaptive other face": Knockout(AdaptiveRegions, on_output=_adaptive_other),
    "F&R global zero": Knockout(FusionRefineAU, on_args=_global_zero),
    "F&R global other face": Knockout(FusionRefineAU, on_args=_global_other),
}


def applicable(config: Any) -> list[str]:
    """The knock-outs of the parts ``config``'s model has."""
    m = config.model
    has = {Relation: m.get("relation", NONE) != NONE, AdaptiveRegions: bool(m.get("adaptive", False)),
           FusionRefineAU: bool(m.get("fusion_refine", False))}
    return [name for name, k in KNOCKOUTS.items() if has[k.modules]]


def knocked_forward(model: Any, knockouts: Sequence[str] = ()) -> Callable[[Any, jax.Array], dict[str, jax.Array]]:
    """The jitted eval forward with the named knock-outs (none: intact). Outputs: the model's, plus
    ``relation_ratio`` [B, n] = ||R(v)_t|| / ||v_t|| per face and AU where the model has relations (measured
    before any replacement)."""
    chosen = [KNOCKOUTS[k] for k in knockouts]

    def forward(variables, images):
        stash = {}

        def interceptor(next_fun, args, kwargs, context):
            if context.method_name != "__call__":
                return next_fun(*args, **kwargs)
            mine = [k for k in chosen if isinstance(context.module, k.modules)]
            for k in mine:
                args = k.on_args(args) if k.on_args else args
            out = next_fun(*args, **kwargs)
            if isinstance(context.module, Relation) and "relation_ratio" not in stash:
                axes = (2, 3, 4)
                stash["relation_ratio"] = (jnp.sqrt(jnp.sum(out * out, axes))
                                           / jnp.sqrt(jnp.sum(args[0] * args[0], axes) + 1e-12)).T
            for k in mine:
                out = k.on_output(out, context.module) if k.on_output else out
            return out

        with nn.intercept_methods(interceptor):
            outputs = model.apply(variables, images, train=False)
        return {**outputs, **stash}

    return jax.jit(forward)


def knockout_run(workdir: str | pathlib.Path, select: str) -> dict[str, Any]:
    """Evaluates the selected checkpoint of one run intact and with each applicable knock-out."""
    path = experiment.select_checkpoint(workdir, select)
    config, variables = checkpoints.load_for_inference(path)
    model = create_model(config)
    out: dict[str, Any] = {"run": str(workdir), "checkpoint": path, "model": config.name, "results": {}}
    for knockout in [None, *applicable(config)]:
        ratios: list[np.ndarray] = []

        def on_batch(batch, outputs, ratios=ratios):
            if "relation_ratio" in outputs:
                ratios.append(outputs["relation_ratio"][np.asarray(batch["mask"]) > 0])

        forward = knocked_forward(model, (knockout,) if knockout else ())
        result = evaluation.evaluate_variables(config, variables, apply_fn=forward,
                                               on_batch=on_batch)
        row = {kind: result["predictions"][kind]["mean_f1"] for kind in ("local", "integrated", "final")}
        row["final_f1_per_au"] = list(result["predictions"]["final"]["f1"])
        if ratios:
            row["relation_ratio_per_au"] = np.concatenate(ratios).mean(0).tolist()
        out["results"][knockout or "intact"] = row
        out["aus"] = result["aus"]
        print(f"{workdir}: {knockout or 'intact'}: final mean F1 {row['final']:.1f}", file=sys.stderr, flush=True)
    return out


def markdown(runs: Sequence[dict[str, Any]]) -> str:
    """Per knock-out: final and local mean F1 over runs, and the change to intact (mean, min, max over runs)."""
    names = list(dict.fromkeys(k for r in runs for k in r["results"]))
    lines = [f"**Knock-outs at inference, {len(runs)} run(s), mean F1 (%) on each run's test part**", "",
             "| output replaced | final | change (min, max) | local | change |", "|---|---|---|---|---|"]
    for name in names:
        have = [r for r in runs if name in r["results"]]
        final = np.array([r["results"][name]["final"] for r in have])
        local = np.array([r["results"][name]["local"] for r in have])
        d_final = final - np.array([r["results"]["intact"]["final"] for r in have])
        d_local = local - np.array([r["results"]["intact"]["local"] for r in have])
        lines.append(f"| {name} | {final.mean():.1f} | {d_final.mean():+.1f} ({d_final.min():+.1f}, "
                     f"{d_final.max():+.1f}) | {local.mean():.1f} | {d_local.mean():+.1f} |")
    ratios = [r["results"]["intact"]["relation_ratio_per_au"] for r in runs
              if "relation_ratio_per_au" in r["results"]["intact"]]
    if ratios:
        aus = runs[0]["aus"]
        lines += ["", "||R(v)_t|| / ||v_t|| per AU (mean over faces and runs): " + ", ".join(
            f"{au} {v:.2f}" for au, v in zip(aus, np.mean(ratios, 0)))]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = run_args.parse_run_args(run_args.run_parser(
        "relation_use", __doc__, "JSON path; the Markdown table goes beside it (.md)"), argv)
    runs = [knockout_run(run, args.select) for run in args.runs]
    md = markdown(runs)
    print(md)
    run_args.write_json(args.out, runs).with_suffix(".md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, "relation_use"))
