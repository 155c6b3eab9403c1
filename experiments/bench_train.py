"""Model benchmark: training step and eval forward, JAX JAA-Net / ALGRNet against PyTorch JAA-Net.

One process builds every runner of a size, then times them in turn, round after round (interleaved: all see the
same machine state), and reports medians:

- train: the project's jitted ``training.steps.train_step`` (our loss and SGD-Nesterov optimizer, state donated)
  for the JAX configs; the PyTorch JAA-Net baseline (``reference.torch_jaanet``: release structure, the release's
  losses, SGD Nesterov + weight decay) for PyTorch; batch ``--batch-size`` (paper: 8).
- eval: the jitted eval-mode forward (``model.apply(train=False)``) against PyTorch in ``inference_mode`` at
  batch 8 and 32 (``--eval-batch-sizes``).

Per row: compile seconds (JAX: lower + compile), median seconds per call, images/s, CPU utilisation (process CPU
time / wall, median over rounds: 2.0 = both cores of a 2-core machine busy), XLA's buffers of the compiled program
(``memory_analysis``: temporaries and arguments + outputs), the ratio to PyTorch JAA-Net in the same run, and with
``--rss`` the peak RSS of a fresh process doing the same work (one subprocess per row, after the timed run).
PyTorch runs on ``torch.get_num_threads()`` = the number of cores.

    python -m experiments.bench_train                               # paper size, train + eval, 5 rounds, RSS
    python -m experiments.bench_train --sizes tiny --rounds 2 --no-rss --out /tmp/b.json   # smoke run
    python -m experiments.bench_train --no-torch --conv-impl grouped   # e.g. on a GPU machine without torch

Prints a table and writes ``experiments/results/bench_train.json``.
"""
from __future__ import annotations

import argparse
import functools
import json
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from algrnet_jax import configs
from algrnet_jax.configs import get_config
from algrnet_jax.models.networks import create_model
from algrnet_jax.training import optim
from algrnet_jax.training import steps as train_steps
from algrnet_jax.training.state import new_train_state, run_init
from experiments import timing

RESULTS = pathlib.Path(__file__).parent / "results" / "bench_train.json"
JAX_MODELS = ("jaanet", "algrnet")


def make_batch(config, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic batch of the design.md layout (NHWC images in [-1, 1], landmarks near the face centre)."""
    rng = np.random.default_rng(seed)
    c, n = config.crop_size, len(config.aus)
    return {
        "image": rng.uniform(-1, 1, (batch_size, c, c, 3)).astype(np.float32),
        "landmarks": (c * (0.3 + 0.4 * rng.uniform(size=(batch_size, 49, 2)))).astype(np.float32),
        "interocular": np.full([batch_size], 0.3 * c, np.float32),
        "labels": rng.integers(0, 2, (batch_size, n)).astype(np.int32),
        "mask": np.ones([batch_size], np.float32),
    }


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    if m is None:
        return {}
    return {"xla_temp_gib": round(m.temp_size_in_bytes / 2 ** 30, 3),
            "xla_args_out_gib": round((m.argument_size_in_bytes + m.output_size_in_bytes) / 2 ** 30, 3)}


def bench_config(name: str, size: str, conv_impl: str, dtype: str):
    config = get_config(name, size=size)
    config.model.conv_impl = conv_impl
    config.model.dtype = dtype
    return config


def jax_train_runner(name: str, size: str, batch_size: int, conv_impl: str, dtype: str = "float32"):
    """(runner, facts): one jitted train step whose state is carried from call to call."""
    config = bench_config(name, size, conv_impl, dtype)
    model = create_model(config)
    state = new_train_state(model, config, optim.make_optimizer(config.train, 1000), jax.random.PRNGKey(0))
    batch = {k: jnp.asarray(v) for k, v in make_batch(config, batch_size).items()}
    loss_weights = jnp.ones([len(config.aus)], jnp.float32)
    t0 = time.perf_counter()
    compiled = jax.jit(functools.partial(train_steps.train_step, config=config), donate_argnums=(0,)).lower(
        state, batch, loss_weights).compile()
    facts = {"compile_s": round(time.perf_counter() - t0, 1), **_memory(compiled)}
    box = [state]

    def run():
        box[0], metrics = compiled(box[0], batch, loss_weights)
        jax.block_until_ready(metrics)
        if not np.isfinite(float(metrics["loss"])):
            raise FloatingPointError(f"{name}: non-finite loss")

    run.compiled = compiled          # for experiments.profile_step (HLO metadata)
    return run, facts


def jax_eval_runner(name: str, size: str, batch_size: int, conv_impl: str, dtype: str = "float32"):
    """(runner, facts): the jitted eval-mode forward on one batch."""
    config = bench_config(name, size, conv_impl, dtype)
    model = create_model(config)
    images = jnp.asarray(make_batch(config, batch_size)["image"])
    variables = run_init(model.init, jax.random.PRNGKey(0), images)
    t0 = time.perf_counter()
    compiled = jax.jit(functools.partial(model.apply, train=False)).lower(variables, images).compile()
    facts = {"compile_s": round(time.perf_counter() - t0, 1), **_memory(compiled)}

    def run():
        jax.block_until_ready(compiled(variables, images))

    run.compiled = compiled          # for experiments.profile_step (HLO metadata)
    return run, facts


def torch_runner(size: str, batch_size: int, mode: str, device: str = "cpu"):
    """(runner, facts): the PyTorch JAA-Net baseline, a train step or an inference-mode forward.

    ``device``: "cpu" (threads = cores) or "cuda" (cuDNN autotuning on, each call ends with a device sync so the
    wall time is the work's, as ``block_until_ready`` does for JAX).
    """
    import torch

    from algrnet_jax.reference import torch_jaanet

    timing.set_torch_threads()
    torch.manual_seed(0)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    config = get_config("jaanet", size=size)
    b = make_batch(config, batch_size)
    model = torch_jaanet.TorchJAANet(aus=config.aus, crop_size=config.crop_size,
                                     unit_dim=config.model.unit).to(device)
    x = torch.from_numpy(b["image"].transpose(0, 3, 1, 2).copy()).to(device)
    facts = {"compile_s": 0.0, "threads": torch.get_num_threads(), "torch_device": device}
    if mode == "eval":
        model.eval()

        def run_eval():
            with torch.inference_mode():
                model(x)
            sync()

        return run_eval, facts
    opt = torch_jaanet.make_sgd(model, lr=config.train.lr, momentum=config.train.momentum,
                                weight_decay=config.train.weight_decay, nesterov=config.train.nesterov)
    labels = torch.from_numpy(b["labels"]).long().to(device)
    land = torch.from_numpy(b["landmarks"].reshape(len(x), -1)).to(device)
    biocular = torch.from_numpy(b["interocular"]).to(device) ** 2
    weight = torch.ones(len(config.aus), device=device)

    def run_train():
        torch_jaanet.train_step(model, opt, x, labels, land, biocular, weight)
        sync()

    return run_train, facts


def build(spec: dict, conv_impl: str, dtype: str = "float32", torch_device: str = "cpu"):
    if spec["framework"] == "torch":
        return torch_runner(spec["size"], spec["batch"], spec["mode"], torch_device)
    make = jax_train_runner if spec["mode"] == "train" else jax_eval_runner
    return make(spec["model"], spec["size"], spec["batch"], conv_impl, dtype)


def specs(size: str, batch: int, eval_batches: list[int], torch_too: bool, modes: list[str],
          models: list[str]) -> list[dict]:
    rows = []
    frameworks = [("jax", m) for m in models] + ([("torch", "jaanet")] if torch_too else [])
    for mode in modes:
        for b in ([batch] if mode == "train" else eval_batches):
            rows += [{"mode": mode, "framework": fw, "model": m, "size": size, "batch": b} for fw, m in frameworks]
    return rows


def _key(s: dict) -> str:
    return f"{s['mode']} {s['framework']} {s['model']} {s['size']} b{s['batch']}"


def rss_of(spec: dict, conv_impl: str, dtype: str, timeout: int) -> float | None:
    """Peak RSS (MiB) of a fresh process that builds the runner and calls it twice."""
    cmd = [sys.executable, "-m", "experiments.bench_train", "--rss-one", json.dumps(spec), "--conv-impl", conv_impl,
           "--dtype", dtype]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        print(f"rss {_key(spec)} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return float(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    head = (f"{'mode':5} {'framework':9} {'model':8} {'size':5} {'batch':>5} {'compile s':>9} {'s/call':>8} "
            f"{'img/s':>7} {'CPU util':>8} {'XLA temp GiB':>12} {'peak RSS MiB':>12} {'vs PyTorch':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['mode']:5} {r['framework']:9} {r['model']:8} {r['size']:5} {r['batch']:>5} {r['compile_s']:>9.1f} "
            f"{r['median_s']:>8.3f} {r['images_per_s']:>7.2f} {r['cpu_util']:>8.2f} "
            f"{r.get('xla_temp_gib', float('nan')):>12.2f} {r.get('peak_rss_mib') or float('nan'):>12.0f} "
            f"{r.get('vs_torch_jaanet', float('nan')):>10.2f}")
    return "\n".join(lines)


def run_size(size: str, args: argparse.Namespace, torch_too: bool) -> list[dict]:
    todo = specs(size, args.batch_size, args.eval_batch_sizes, torch_too, args.modes, args.models)
    runners, facts = {}, {}
    for spec in todo:
        print(f"building {_key(spec)} ...", file=sys.stderr, flush=True)
        runners[_key(spec)], facts[_key(spec)] = build(spec, args.conv_impl, args.dtype, args.torch_device)
    stats = timing.interleaved(runners, rounds=args.rounds, warmup=args.warmup)
    rows = []
    for spec in todo:
        k = _key(spec)
        rows.append({**spec, **facts[k], **stats[k], "images_per_s": round(spec["batch"] / stats[k]["median_s"], 3)})
    for r in rows:
        base = next((b for b in rows if b["framework"] == "torch" and b["mode"] == r["mode"]
                     and b["batch"] == r["batch"]), None)
        if base and r["framework"] == "jax":
            r["vs_torch_jaanet"] = round(r["images_per_s"] / base["images_per_s"], 3)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["paper"], choices=list(configs.SIZES))
    p.add_argument("--modes", nargs="+", default=["train", "eval"], choices=["train", "eval"])
    p.add_argument("--models", nargs="+", default=list(JAX_MODELS), choices=list(JAX_MODELS), help="JAX models")
    p.add_argument("--batch-size", type=int, default=8, help="training batch (paper: 8)")
    p.add_argument("--eval-batch-sizes", type=int, nargs="+", default=[8, 32])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--conv-impl", default="auto", help="model.conv_impl of the JAX models (models/layers.py)")
    p.add_argument("--dtype", default="float32", help="model.dtype of the JAX models: float32 | bfloat16")
    p.add_argument("--no-torch", action="store_true", help="JAX only (no PyTorch installed, e.g. on a GPU box)")
    p.add_argument("--torch-device", default="cpu", choices=["cpu", "cuda"],
                   help="device of the PyTorch baseline (cuda on a GPU machine: JAX and PyTorch on the same GPU)")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--rss-timeout", type=int, default=900)
    p.add_argument("--rss-modes", nargs="+", default=["train"], choices=["train", "eval"],
                   help="rows whose peak RSS is measured (default: the training steps)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--rss-one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rss_one:
        run, _ = build(json.loads(args.rss_one), args.conv_impl, args.dtype)
        run()
        run()
        print(timing.peak_rss_mb())
        return 0
    torch_too = not args.no_torch and timing.torch_available()
    info = timing.machine_info()
    rows = []
    for size in args.sizes:
        group = run_size(size, args, torch_too)
        print(table(group), flush=True)
        rows += group
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        out.write_text(json.dumps({**info, "conv_impl": args.conv_impl, "dtype": args.dtype, "rounds": args.rounds,
                                   "torch_device": args.torch_device if torch_too else None,
                                   "rows": rows}, indent=2))
        print(f"wrote {out}", flush=True)

    write()   # the timings, before the (slow) peak-RSS subprocesses
    if not args.no_rss:
        for r in rows:
            if r["mode"] in args.rss_modes:
                spec = {k: r[k] for k in ("mode", "framework", "model", "size", "batch")}
                r["peak_rss_mib"] = rss_of(spec, args.conv_impl, args.dtype, args.rss_timeout)
                write()
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
