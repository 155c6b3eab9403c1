"""Why a local AU head dies: per-AU measurements along the local branch while the main job's model trains.

Trains the main job's model (``experiments.main_job.MAIN_JOB``: the same config, data, optimiser, train step and
batches as the trainer) and, every ``--probe-every`` steps, measures on one fixed probe batch of the training part:

- **gradients reaching each local head and the parts below it**: the norm of dL/dr_t (the local classifier's input),
  of dL/dl_t (the per-AU HLFeat output, below F&R), and of the parameter gradients of ``local_au_output``,
  ``fusion_refine`` and ``local_au_feat`` per AU (the total loss of ``losses.total_loss``, train mode);
- **each head's input scale**: RMS of the entries of l_t (HLFeat output), of C_l l_t and C_g G before the L2
  normalisation (and their per-position norms, which divide the gradient through L2N), and of r_t (after it);
- **F&R gates** alpha_t (mean, fraction below 0.05 / above 0.95) and the **skip-BiLSTM gates** f_tj of both
  directions over the sources j (mean, fraction below 0.05: saturated at 0);
- **effective learning rates** per module: ||theta_{k+1} - theta_k|| / ||theta_k|| of the step after the probe
  (per AU for the per-AU modules);
- **the local logits**: per AU, the mean local probability of "present" on probe frames where the AU is present
  and where it is absent (a dead head gives the same value for both).

Output: ``<workdir>/diagnose_heads.json`` (every probe) and ``<workdir>/diagnose_heads.md`` (tables of the first,
middle and last probe). Takes about as long as the main job's training (no evaluation, a few probes).

Usage::

    python -m experiments.diagnose_heads --workdir runs/diagnose          # the main job's model (rescaled F&R)
    python -m experiments.diagnose_heads --workdir runs/diagnose_paper --set model.fusion_refine_rescale=false
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from algrnet_jax import configs, verbosity
from algrnet_jax.configs.validate import validate_config
from algrnet_jax.errors import UserError, run_main
from algrnet_jax.losses import total_loss
from algrnet_jax.models.fusion import l2_normalize
from algrnet_jax.models.heads import DenseHead
from algrnet_jax.models.networks import create_model
from algrnet_jax.models.relations import SkipBiLSTM, skip_direction
from algrnet_jax.models.stem import HLFeat
from algrnet_jax.training import optim, parallel, precision, state as state_lib, steps
from data_pipelines.pipeline import make_source
from experiments import main_job

PER_AU_MODULES = ("attention_refine", "local_au_feat", "fusion_refine", "local_au_output")
SATURATED = 0.05       # a gate below this (or above 1 - this) counts as saturated


def _norm(tree: Any) -> float:
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree))))


def _per_au_norms(tree: Any, n: int) -> list[float]:
    """Norm of each AU's slice of a per-AU tree (every leaf has a leading [n] axis)."""
    leaves = [np.asarray(x, np.float64).reshape(n, -1) for x in jax.tree.leaves(tree)]
    return [float(np.sqrt(sum(np.sum(np.square(leaf[t])) for leaf in leaves))) for t in range(n)]


def module_norms(tree: Mapping[str, Any], n: int) -> dict[str, Any]:
    """``{module: norm}`` of a params-shaped tree; the per-AU modules get a list of n norms."""
    return {k: (_per_au_norms(v, n) if k in PER_AU_MODULES else _norm(v)) for k, v in tree.items()}


def _ratio(a: Any, b: Any) -> Any:
    if isinstance(a, list):
        return [x / max(y, 1e-30) for x, y in zip(a, b)]
    return a / max(b, 1e-30)


def skip_gates(params: Mapping[str, Any], v: jax.Array, reverse: bool) -> jax.Array:
    """The skip gates f_tj of one skip-BiLSTM direction on v [n, B, H, W, C] -> [n (t), n (j), B, F], with NaN
    where j is not a source of t (j >= t forward, j <= t backward) (relations.skip_step's formula)."""
    h = skip_direction(params, v, reverse)                                   # [n, B, H, W, F]
    hs_mean, v_mean = jnp.mean(h, axis=(2, 3)), jnp.mean(v, axis=(2, 3))      # [n, B, F], [n, B, C]
    gk, gb = params["gates"]["kernel"][:, 0, 0], params["gates"]["bias"]     # [n, F + C, F], [n, F]
    n = v.shape[0]
    x = jnp.concatenate([jnp.broadcast_to(hs_mean[None], (n,) + hs_mean.shape),
                         jnp.broadcast_to(v_mean[:, None], (n, n) + v_mean.shape[1:])], axis=-1)  # [t, j, B, F+C]
    gates = nn.sigmoid(jnp.einsum("tjbi,jio->tjbo", x, gk) + gb[None, :, None, :])
    t, j = jnp.arange(n)[:, None], jnp.arange(n)[None, :]
    source = (j > t) if reverse else (j < t)
    return jnp.where(source[:, :, None, None], gates, jnp.nan)


def make_probe(config: ml_collections.ConfigDict, model: nn.Module):
    """A jitted ``probe(state, batch, loss_weights) -> dict of arrays``: the gradients of the total loss with
    respect to the parameters and to the local heads' inputs, and the activations named in the module docstring."""
    has_fr = bool(config.model.fusion_refine)

    def probe(state, batch, loss_weights):
        images = jnp.asarray(batch["image"]).astype(precision.compute_dtype(config))
        variables = {"batch_stats": state.batch_stats}

        def loss_fn(params, eps_head, eps_feat):
            stash = {}

            def interceptor(next_fun, args, kwargs, context):
                module = context.module
                if context.method_name != "__call__":
                    return next_fun(*args, **kwargs)
                if isinstance(module, SkipBiLSTM):
                    stash["v"] = args[0]
                if isinstance(module, DenseHead) and module.name == "local_au_output":
                    stash["head_input"] = args[0]
                    args = (args[0] + eps_head,) + tuple(args[1:])
                out = next_fun(*args, **kwargs)
                if isinstance(module, HLFeat) and module.name == "local_au_feat":
                    stash["l"] = out
                    out = out + eps_feat
                if isinstance(module, HLFeat) and module.name == "global_au_feat":
                    stash["g"] = out
                return out

            with nn.intercept_methods(interceptor):
                outputs, _ = state.apply_fn({"params": params, **variables}, images, train=True,
                                            mutable=["batch_stats"], rngs={"dropout": state.rng})
            loss, _ = total_loss(outputs, batch, loss_weights, config)
            return loss, (outputs, stash)

        feat = jax.eval_shape(lambda p: loss_fn(p, 0.0, 0.0)[1][1]["l"], state.params)   # [n, B, h, w, F]
        zeros = jnp.zeros(feat.shape, feat.dtype)
        (_, (outputs, stash)), (g_params, g_head, g_feat) = jax.value_and_grad(
            loss_fn, argnums=(0, 1, 2), has_aux=True)(state.params, zeros, zeros)
        axes = (1, 2, 3, 4)
        rms = lambda x: jnp.sqrt(jnp.mean(jnp.square(x), axis=axes))          # per AU [n]
        out = {"grads": g_params, "grad_head_input": jnp.sqrt(jnp.sum(jnp.square(g_head), axes)),
               "grad_l": jnp.sqrt(jnp.sum(jnp.square(g_feat), axes)),
               "rms_l": rms(stash["l"]), "rms_head_input": rms(stash["head_input"]),
               "local_prob": outputs["local_au_prob"], "integrated_prob": outputs["au_prob"]}
        if has_fr:
            fr = state.params["fusion_refine"]
            conv = lambda p, x: jnp.einsum("...c,ncf->n...f", x, p["kernel"][:, 0, 0]) + p["bias"][:, None, None, None]
            conv_per = lambda p, x: jnp.einsum("n...c,ncf->n...f", x, p["kernel"][:, 0, 0]) + \
                p["bias"][:, None, None, None]
            cl, cg = conv_per(fr["conv_l"], stash["l"]), conv(fr["conv_g"], stash["g"])
            alpha = nn.sigmoid(conv(fr["gate_g"], stash["g"]) + conv_per(fr["gate_l"], stash["l"]))
            pos_norm = lambda x: jnp.mean(jnp.sqrt(jnp.sum(jnp.square(x), -1)), axis=(1, 2, 3))
            out.update(rms_conv_l=rms(cl), rms_conv_g=rms(cg), posnorm_conv_l=pos_norm(cl),
                       posnorm_conv_g=pos_norm(cg), rms_l2n_l=rms(l2_normalize(cl)),
                       alpha_mean=jnp.mean(alpha, axis=axes),
                       alpha_low=jnp.mean(alpha < SATURATED, axis=axes),
                       alpha_high=jnp.mean(alpha > 1 - SATURATED, axis=axes))
        if "v" in stash:
            for name, reverse in (("forward", False), ("backward", True)):
                gates = skip_gates(state.params["relations"][name], stash["v"], reverse)
                out[f"skip_gate_mean_{name}"] = jnp.nanmean(gates)
                out[f"skip_gate_low_{name}"] = jnp.nansum(gates < SATURATED) / jnp.sum(~jnp.isnan(gates))
                out[f"skip_gate_by_target_{name}"] = jnp.nanmean(gates, axis=(1, 2, 3))   # [n]: mean over sources
        return out

    return jax.jit(probe)


def summarise_probe(raw: Mapping[str, Any], labels: np.ndarray, n: int) -> dict[str, Any]:
    """Host-side summary of one probe (``make_probe``'s arrays) on labels [B, n]."""
    rec: dict[str, Any] = {"grad_norm": module_norms(raw["grads"], n)}
    for k, v in raw.items():
        if k in ("grads", "local_prob", "integrated_prob"):
            continue
        arr = np.asarray(v, np.float64)
        rec[k] = arr.tolist() if arr.ndim else float(arr)
    for key, name in (("local_prob", "local"), ("integrated_prob", "integrated")):
        prob = np.asarray(raw[key], np.float64)
        rec[f"{name}_p_present"] = [float(prob[labels[:, t] == 1, t].mean()) if np.any(labels[:, t] == 1)
                                    else None for t in range(n)]
        rec[f"{name}_p_absent"] = [float(prob[labels[:, t] == 0, t].mean()) if np.any(labels[:, t] == 0)
                                   else None for t in range(n)]
    return rec


def diagnose(config: ml_collections.ConfigDict, probe_every: int, *, probe_batches: int = 2,
             progress: bool = True) -> dict[str, Any]:
    """Trains ``config`` as the trainer does (no evaluation, no checkpoints) and probes every ``probe_every``
    steps (and after the last); returns ``{"aus", "steps", "probes": [{"step", ...}], "config"}``."""
    validate_config(config)
    model = create_model(config)
    data = make_source(config)
    mesh = parallel.make_mesh()
    tc = config.train
    spe = int(data.steps_per_epoch)
    total = int(tc.num_epochs) * spe if int(tc.max_steps) <= 0 else min(int(tc.max_steps), int(tc.num_epochs) * spe)
    tx, learning_rate = optim.make_optimizer(tc, spe), optim.make_schedule(tc, spe)
    state = state_lib.new_train_state(model, config, tx, jax.random.PRNGKey(int(tc.seed)),
                                      out_shardings=parallel.replicated(mesh))
    weights = parallel.replicate(np.asarray(data.loss_weights, np.float32), mesh)
    train_step = steps.make_train_step(config, mesh, donate=False)
    probe = make_probe(config, model)
    n = len(config.aus)

    # Probe batch: the first ``probe_batches`` training batches of epoch 0 joined (a fixed set of frames).
    it = iter(data.train_batches(0))
    first = [next(it) for _ in range(max(1, min(probe_batches, spe)))]
    probe_batch = {k: np.concatenate([np.asarray(b[k]) for b in first]) for k in first[0]}
    labels = np.asarray(probe_batch["labels"])

    records, step = [], 0
    for epoch in range(int(tc.num_epochs)):
        for host_batch in data.train_batches(epoch):
            if step >= total:
                break
            batch = parallel.shard_batch(host_batch, mesh, global_batch=int(config.data.batch_size))
            probing = step % probe_every == 0 or step == total - 1
            if probing:
                rec = {"step": step, "lr": float(learning_rate(step))}
                rec.update(summarise_probe(jax.device_get(probe(state, probe_batch, weights)), labels, n))
                before = jax.device_get(state.params)
            state, metrics = train_step(state, batch, weights)
            step += 1
            if probing:
                after = jax.device_get(state.params)
                delta = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64), after, before)
                rec["effective_lr"] = {k: _ratio(v, w) for (k, v), w in zip(
                    module_norms(delta, n).items(), module_norms(before, n).values())}
                rec["loss"] = float(metrics["loss"])
                records.append(rec)
                if progress:
                    print(f"[diagnose] step {step - 1}: local p(present | AU present / absent) "
                          + ", ".join(f"AU{a} {p:.2f}/{q:.2f}" for a, p, q in zip(
                              config.aus, rec["local_p_present"], rec["local_p_absent"]) if p is not None),
                          flush=True)
    return {"aus": list(config.aus), "steps": total, "probe_frames": int(labels.shape[0]), "probes": records,
            "config": {"fusion_refine": bool(config.model.fusion_refine),
                       "fusion_refine_rescale": config.model.fusion_refine_rescale,
                       "relation": config.model.relation, "seed": int(tc.seed)}}


def _fmt(v: Any) -> str:
    if isinstance(v, list):
        return " / ".join(_fmt(x) for x in v)
    if v is None:
        return "-"
    return f"{v:.3g}"


ROWS = (("loss", "loss (total)"), ("grad_head_input", "||dL/dr_t|| (local head input)"),
        ("grad_l", "||dL/dl_t|| (HLFeat output)"), ("rms_l", "RMS l_t (HLFeat output)"),
        ("rms_conv_l", "RMS C_l l_t (before L2N)"), ("posnorm_conv_l", "per-position ||C_l l_t|| (divides dL/dx in L2N)"),
        ("rms_conv_g", "RMS C_g G (before L2N)"), ("rms_head_input", "RMS local head input (r_t, or l_t w/o F&R)"),
        ("alpha_mean", "F&R alpha mean"), ("alpha_low", "F&R alpha < 0.05 (fraction)"),
        ("alpha_high", "F&R alpha > 0.95 (fraction)"),
        ("skip_gate_mean_forward", "skip gate f_tj mean, forward"), ("skip_gate_low_forward", "skip gates < 0.05, forward"),
        ("skip_gate_mean_backward", "skip gate f_tj mean, backward"),
        ("skip_gate_low_backward", "skip gates < 0.05, backward"),
        ("local_p_present", "local p(present), AU present"), ("local_p_absent", "local p(present), AU absent"),
        ("integrated_p_present", "integrated p(present), AU present"),
        ("integrated_p_absent", "integrated p(present), AU absent"))


def markdown(result: Mapping[str, Any]) -> str:
    """Tables of the first, middle and last probe: per-AU values as ``AU1 / AU2 / ...``."""
    probes = result["probes"]
    chosen = [probes[0], probes[len(probes) // 2], probes[-1]] if len(probes) > 2 else list(probes)
    aus = " / ".join(f"AU{a}" for a in result["aus"])
    lines = [f"Per-AU values are {aus}; probe set {result['probe_frames']} training frames; config "
             f"{json.dumps(result['config'])}.", "", "| quantity | " + " | ".join(f"step {p['step']}" for p in chosen)
             + " |", "|---|" + "---|" * len(chosen)]
    for key, label in ROWS:
        if all(key not in p for p in chosen):
            continue
        lines.append(f"| {label} | " + " | ".join(_fmt(p.get(key)) for p in chosen) + " |")
    modules = [m for m in chosen[-1]["grad_norm"]]
    for m in modules:
        lines.append(f"| grad norm {m} | " + " | ".join(_fmt(p["grad_norm"].get(m)) for p in chosen) + " |")
    for m in modules:
        lines.append(f"| effective lr {m} | " + " | ".join(_fmt(p["effective_lr"].get(m)) for p in chosen) + " |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.diagnose_heads", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/diagnose_heads", help="writes diagnose_heads.json and .md here")
    parser.add_argument("--data-dir", default="", help="tfds data dir (default $ALGRNET_DATA_DIR or ./data/tfds)")
    parser.add_argument("--probe-every", type=int, default=25, help="steps between probes (default 25)")
    parser.add_argument("--quick", action="store_true", help="the main job's --quick settings (tests)")
    verbosity.add_argument(parser)
    configs.add_override_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = configs.parse_args(build_parser(), argv)
    verbosity.configure(args.verbose)
    if args.probe_every < 1:
        raise UserError(f"--probe-every must be at least 1, got {args.probe_every}")
    settings = main_job.QUICK if args.quick else main_job.MAIN_JOB
    config = main_job.job_config(settings, data_dir=args.data_dir, overrides=args.overrides)
    main_job.ensure_dataset(config)
    result = diagnose(config, args.probe_every)
    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "diagnose_heads.json").write_text(json.dumps(result, indent=1))
    (workdir / "diagnose_heads.md").write_text(markdown(result))
    print(f"[diagnose] {workdir / 'diagnose_heads.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, "diagnose_heads"))
