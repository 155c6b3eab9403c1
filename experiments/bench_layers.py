"""Layer benchmark: each implementation of the per-copy convolutions against PyTorch, interleaved.

The layers that hold k independent 3x3 convolutions (per-AU HLFeat branches, attention refinement, region-layer
cells) at the paper size, batch 8. For each layer and each implementation of ``models.layers.CONV_IMPLS``
(unrolled native convs, one grouped conv, patches x batched matmul) it times the jitted forward and
forward+backward (gradients of input and kernels), beside PyTorch running the same k convs in a loop
(``torch.nn.functional.conv2d``, NCHW, ``torch.set_num_threads`` = the CPU count). All runners are timed in turn in
each round, in one process, and the medians over rounds are reported, with the process CPU time / wall time
(CPU utilisation; 2.0 = both cores of a 2-core machine busy).

    python -m experiments.bench_layers                     # all layers, 5 rounds
    python -m experiments.bench_layers --layers au_branch --rounds 3 --skip grouped

Prints a table and writes ``experiments/results/bench_layers.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from algrnet_jax.models import layers
from experiments import timing

RESULTS = pathlib.Path(__file__).parent / "results" / "bench_layers.json"
# name: (copies k, batch, height = width, in channels, out channels, padding), paper size (crop 176, unit 8).
LAYERS = {
    "au_branch": (12, 8, 44, 96, 96, 1),        # per-AU HLFeat conv2 (12u -> 12u at 44x44)
    "refine": (12, 8, 50, 64, 64, 0),           # per-AU attention refinement conv2 (valid)
    "cells_l1_8x8": (64, 8, 22, 32, 16, 1),     # region layer 1, 8x8 grid of 22x22 cells
    "cells_l2_8x8": (64, 8, 11, 64, 32, 1),     # region layer 2, 8x8 grid of 11x11 cells
    "cells_l1_2x2": (4, 8, 88, 8, 8, 1),        # region layer 1, 2x2 grid of 88x88 cells
}
TINY = (3, 2, 8, 4, 4, 1)                       # --tiny: every layer at this shape (smoke runs, tests)


def _jax_runners(x: np.ndarray, w: np.ndarray, pad: int, impls: list[str]) -> dict:
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    runners = {}
    for impl in impls:
        fn = layers.COPIES_CONV[impl]
        fwd = jax.jit(lambda x, w, fn=fn: fn(x, w, pad))
        grad = jax.jit(jax.grad(lambda x, w, fn=fn: jnp.sum(jnp.square(fn(x, w, pad))), argnums=(0, 1)))
        runners[f"jax {impl} fwd"] = lambda f=fwd: jax.block_until_ready(f(xj, wj))
        runners[f"jax {impl} fwd+bwd"] = lambda g=grad: jax.block_until_ready(g(xj, wj))
    return runners


def _torch_runners(x: np.ndarray, w: np.ndarray, pad: int) -> dict:
    import torch

    xt = torch.from_numpy(x.transpose(0, 1, 4, 2, 3).copy()).requires_grad_(True)   # [k, B, c, H, W]
    wt = torch.from_numpy(w.transpose(0, 4, 3, 1, 2).copy()).requires_grad_(True)   # [k, f, c, kh, kw]
    conv = torch.nn.functional.conv2d

    def fwd():
        with torch.no_grad():
            return [conv(xt[i], wt[i], padding=pad) for i in range(len(wt))]

    def fwd_bwd():
        loss = sum(torch.sum(conv(xt[i], wt[i], padding=pad) ** 2) for i in range(len(wt)))
        loss.backward()
        xt.grad = wt.grad = None

    return {"torch loop fwd": fwd, "torch loop fwd+bwd": fwd_bwd}


def bench_layer(name: str, impls: list[str], rounds: int, torch_too: bool, tiny: bool = False) -> list[dict]:
    k, b, h, c, f, pad = TINY if tiny else LAYERS[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((k, b, h, h, c)).astype(np.float32)
    w = (rng.standard_normal((k, 3, 3, c, f)) * 0.05).astype(np.float32)
    runners = _jax_runners(x, w, pad, impls)
    if torch_too:
        runners.update(_torch_runners(x, w, pad))
    stats = timing.interleaved(runners, rounds=rounds, warmup=1)
    flops = 2 * k * b * (h + 2 * pad - 2) ** 2 * 9 * c * f
    rows = []
    for runner, s in stats.items():
        kind = "fwd+bwd" if runner.endswith("fwd+bwd") else "fwd"
        gflop = flops * (3 if kind == "fwd+bwd" else 1) / 1e9
        rows.append({"layer": name, "shape": f"{k}x [{b},{h},{h},{c}]->{f}", "runner": runner.rsplit(" ", 1)[0],
                     "pass": kind, **s, "gflop_per_s": round(gflop / s["median_s"], 1)})
    return rows


def table(rows: list[dict]) -> str:
    head = f"{'layer':13} {'shape':24} {'runner':14} {'pass':8} {'median ms':>10} {'CPU util':>8} {'GFLOP/s':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['layer']:13} {r['shape']:24} {r['runner']:14} {r['pass']:8} {1000 * r['median_s']:>10.1f} "
                     f"{r['cpu_util']:>8.2f} {r['gflop_per_s']:>8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    p.add_argument("--skip", nargs="*", default=[], choices=[i for i in layers.CONV_IMPLS if i != "auto"],
                   help="implementations not to time (grouped takes minutes per backward on CPU)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-torch", action="store_true", help="JAX only (no PyTorch installed, e.g. on a GPU box)")
    p.add_argument("--tiny", action="store_true", help="every layer at a tiny shape (smoke run)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    torch_too = not args.no_torch and timing.torch_available()
    impls = [i for i in layers.CONV_IMPLS if i not in ("auto", *args.skip)]
    rows = []
    for name in args.layers:
        group = bench_layer(name, impls, args.rounds, torch_too, args.tiny)
        print(table(group), flush=True)
        rows += group
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**timing.machine_info(), "rounds": args.rounds, "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
