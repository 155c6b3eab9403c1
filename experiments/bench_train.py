"""Training-step benchmark (issue 4): JAX JAA-Net and ALGRNet against the PyTorch JAA-Net baseline.

For each (framework, model, size) one fresh subprocess measures: compile time (JAX: lower + compile of
the train step; PyTorch: none, eager), training images/s (median over timed steps after warm-up) and
peak memory (the subprocess's RSS high-water mark, ``resource.getrusage``). The JAX step is the project's
``training.steps.train_step`` (our loss and optimizer); the PyTorch step is ``interop.torch_jaanet``
(release structure, SGD Nesterov + weight decay) with ``torch.set_num_threads(2)``. Same batch size.

    python -m experiments.bench_train                       # paper (176, batch 8) and small sizes
    python -m experiments.bench_train --sizes small --steps 5

Prints a table and writes ``experiments/results/bench_train.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

RESULTS = pathlib.Path(__file__).parent / "results" / "bench_train.json"
# (framework, model config name); PyTorch has only the JAA-Net baseline.
RUNS = (("jax", "jaanet"), ("jax", "algrnet"), ("torch", "jaanet"))


def _batch(config, batch_size: int, seed: int = 0) -> dict:
    """Synthetic batch of the design.md layout (NHWC images in [-1, 1], landmarks near the face centre)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    c, n = config.crop_size, len(config.aus)
    return {
        "image": rng.uniform(-1, 1, (batch_size, c, c, 3)).astype(np.float32),
        "landmarks": (c * (0.3 + 0.4 * rng.uniform(size=(batch_size, 49, 2)))).astype(np.float32),
        "interocular": np.full([batch_size], 0.3 * c, np.float32),
        "labels": rng.integers(0, 2, (batch_size, n)).astype(np.int32),
        "mask": np.ones([batch_size], np.float32),
    }


def _measure_jax(config, batch: dict, warmup: int, steps: int) -> dict:
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np

    from algrnet_jax.models.networks import create_model
    from algrnet_jax.training import optim
    from algrnet_jax.training import steps as train_steps
    from algrnet_jax.training.state import create_train_state

    model = create_model(config)
    state = create_train_state(model, config, optim.make_optimizer(config.train, 1000), jax.random.PRNGKey(0))
    au_weight = jnp.ones([len(config.aus)], jnp.float32)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    step = jax.jit(functools.partial(train_steps.train_step, config=config), donate_argnums=(0,))
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, au_weight).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch, au_weight)
        jax.block_until_ready((state, metrics))
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    assert np.isfinite(float(metrics["loss"])), "non-finite loss"
    return {"compile_s": compile_s, "step_times_s": times, "device": str(jax.devices()[0])}


def _measure_torch(config, batch: dict, warmup: int, steps: int) -> dict:
    import torch

    from algrnet_jax.interop import torch_jaanet

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = torch_jaanet.TorchJAANet(aus=config.aus, crop_size=config.crop_size, unit_dim=config.model.unit)
    opt = torch_jaanet.make_sgd(model, lr=config.train.lr, momentum=config.train.momentum,
                                weight_decay=config.train.weight_decay, nesterov=config.train.nesterov)
    x = torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).copy())
    labels = torch.from_numpy(batch["labels"]).long()
    land = torch.from_numpy(batch["landmarks"].reshape(len(x), -1))
    biocular = torch.from_numpy(batch["interocular"]) ** 2
    weight = torch.ones(len(config.aus))
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        out = torch_jaanet.train_step(model, opt, x, labels, land, biocular, weight)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    assert torch.isfinite(out["loss_total"]), "non-finite loss"
    return {"compile_s": 0.0, "step_times_s": times, "device": f"cpu, torch {torch.__version__}, 2 threads"}


def measure(framework: str, name: str, size: str, batch_size: int, warmup: int, steps: int) -> dict:
    """One measurement in this process (call it in a fresh subprocess for a clean RSS high-water mark)."""
    from algrnet_jax.configs import get_config

    config = get_config(name, size=size)
    batch = _batch(config, batch_size)
    fn = _measure_jax if framework == "jax" else _measure_torch
    r = fn(config, batch, warmup, steps)
    median = statistics.median(r["step_times_s"])
    return {"framework": framework, "model": name, "size": size, "crop": config.crop_size,
            "batch": batch_size, "compile_s": round(r["compile_s"], 2), "step_s_median": round(median, 4),
            "images_per_s": round(batch_size / median, 3), "steps_timed": steps, "warmup": warmup,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "device": r["device"]}


def _child(args: argparse.Namespace, framework: str, name: str, size: str, batch: int) -> dict:
    cmd = [sys.executable, "-m", "experiments.bench_train", "--one", framework, name, size, str(batch),
           "--warmup", str(args.warmup), "--steps", str(args.steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        return {"framework": framework, "model": name, "size": size, "batch": batch,
                "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(rows: list[dict]) -> str:
    head = f"{'framework':9} {'model':8} {'size':5} {'batch':>5} {'compile s':>9} {'step s':>8} {'img/s':>8} {'peak RSS MB':>11} {'JAX/PyTorch img/s':>17}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['framework']:9} {r['model']:8} {r['size']:5} {r['batch']:>5}  ERROR {r['error']}")
            continue
        ratio = r.get("speed_ratio_vs_torch_jaanet")
        lines.append(f"{r['framework']:9} {r['model']:8} {r['size']:5} {r['batch']:>5} {r['compile_s']:>9.1f} "
                     f"{r['step_s_median']:>8.3f} {r['images_per_s']:>8.2f} {r['peak_rss_mb']:>11.0f} "
                     f"{'' if ratio is None else f'{ratio:.2f}':>17}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["paper", "small"], choices=["paper", "small", "tiny"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--timeout", type=int, default=1800, help="seconds per measurement subprocess")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--one", nargs=4, metavar=("FRAMEWORK", "MODEL", "SIZE", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        framework, name, size, batch = args.one
        print(json.dumps(measure(framework, name, size, int(batch), args.warmup, args.steps)))
        return 0
    rows = []
    for size in args.sizes:
        group = [_child(args, fw, name, size, args.batch_size) for fw, name in RUNS]
        base = next((r for r in group if r["framework"] == "torch" and "error" not in r), None)
        for r in group:
            if base and "error" not in r and r["framework"] == "jax":
                r["speed_ratio_vs_torch_jaanet"] = round(r["images_per_s"] / base["images_per_s"], 3)
        rows += group
        print(_table(group), flush=True)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                               "note": "CPU; the machine is shared, so times are upper bounds",
                               "rows": rows}, indent=2))
    print(_table(rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
