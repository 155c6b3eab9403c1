"""What throughput this CPU allows for the eval forward (``--target``: its speed-up over PyTorch): the matmul
peak, the eval program's FLOPs, and the one FLOP-reducing convolution algorithm, Winograd, measured one level down.

Three measurements, JAX and PyTorch interleaved in one process (medians, ``experiments.timing``):

1. **GEMM peak**: float32 n x n matmuls (``jnp.dot`` under jit, PyTorch ``@`` on as many threads as cores): the
   sustained rate of the machine's best-tuned kernel, an upper bound for any convolution done as direct
   arithmetic.
2. **Eval ceiling**: the JAX JAA-Net eval forward's FLOPs (``compiled.cost_analysis()``) and the PyTorch JAA-Net
   eval time at the same batch; from them the GFLOP/s a JAX forward would need to be ``--target`` x as fast as
   PyTorch, beside the GEMM peak and the JAX forward's own rate.
3. **Winograd**: the per-AU 3x3 convolution of the paper-size HLFeat block (12 copies of [8, 44, 44, 96] -> 96,
   stride 1, SAME) as unrolled native convolutions (``model.conv_impl`` "unrolled") against Winograd F(2x2, 3x3)
   and F(4x4, 3x3) in plain JAX (input / filter / output transforms around one batched matmul of the 12 copies;
   autodiff gives the backward pass), forward and forward+backward, with the error against the native convolution.

    python -m experiments.bench_ceiling                      # paper sizes (about 4 minutes on 2 cores)
    python -m experiments.bench_ceiling --tiny               # smoke run (the test suite)

Writes ``experiments/results/bench_ceiling.json`` (``--out``).
"""
from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from algrnet_jax.models.layers import native_conv
from experiments import bench_train, timing

RESULTS = pathlib.Path(__file__).parent / "results" / "bench_ceiling.json"

# Winograd F(m x m, 3 x 3) transforms (Lavin & Gray 2016): Y = A^T [(G g G^T) . (B^T d B)] A on (m+2)^2 tiles.
WINOGRAD = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                  [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)),
}


def _combine(coeffs: np.ndarray, xs: Sequence[jax.Array]) -> jax.Array:
    """sum_i coeffs[i] * xs[i], skipping zeros (elementwise ops XLA fuses into one loop)."""
    terms = [x if c == 1 else -x if c == -1 else x * float(c) for c, x in zip(coeffs, xs) if c != 0]
    return functools.reduce(lambda a, b: a + b, terms)


def winograd_input(x: jax.Array, m: int) -> tuple[jax.Array, tuple[int, int, int]]:
    """x [B, H, W, C] -> V [(m+2)^2, B*T*S, C] (T x S tiles of m x m outputs; SAME padding of 1)."""
    bt = WINOGRAD[m][0]
    a = m + 2
    b, h, w, c = x.shape
    t, s = -(-h // m), -(-w // m)
    xp = jnp.pad(x, ((0, 0), (1, t * m + 1 - h), (1, s * m + 1 - w), (0, 0)))
    rows = [xp[:, i:i + m * t:m] for i in range(a)]                                   # [B, T, W', C]
    rows = [_combine(bt[p], rows) for p in range(a)]
    out = []
    for p in range(a):
        cols = [rows[p][:, :, j:j + m * s:m] for j in range(a)]                      # [B, T, S, C]
        out += [_combine(bt[q], cols) for q in range(a)]
    return jnp.stack(out).reshape(a * a, b * t * s, c), (b, t, s)


def winograd_filter(w: jax.Array, m: int) -> jax.Array:
    """w [3, 3, Ci, Co] -> U [(m+2)^2, Ci, Co]."""
    g = jnp.asarray(WINOGRAD[m][1], w.dtype)
    return jnp.einsum("pi,ijco,qj->pqco", g, w, g).reshape((m + 2) ** 2, *w.shape[2:])


def winograd_output(mm: jax.Array, m: int, tiles: tuple[int, int, int], h: int, w: int) -> jax.Array:
    """M [(m+2)^2, B*T*S, Co] -> y [B, H, W, Co]."""
    at = WINOGRAD[m][2]
    a = m + 2
    b, t, s = tiles
    mm = mm.reshape(a, a, b, t, s, mm.shape[-1])
    rows = [_combine(at[r], [mm[p] for p in range(a)]) for r in range(m)]            # [a, B, T, S, Co]
    y = jnp.stack([jnp.stack([_combine(at[q], [rows[r][j] for j in range(a)]) for q in range(m)], axis=3)
                   for r in range(m)], axis=2)                                        # [B, T, m, S, m, Co]
    return y.reshape(b, t * m, s * m, -1)[:, :h, :w]


def winograd_copies(xs: Sequence[jax.Array], ws: Sequence[jax.Array], m: int) -> tuple[jax.Array, ...]:
    """k per-copy 3x3 SAME convolutions (x_i [B, H, W, Ci] with w_i [3, 3, Ci, Co]) as Winograd F(m, 3), the k
    products in one batched matmul."""
    vs, tiles = zip(*[winograd_input(x, m) for x in xs])
    u = jnp.stack([winograd_filter(w, m) for w in ws])
    mm = jnp.einsum("kpnc,kpco->kpno", jnp.stack(vs), u)
    return tuple(winograd_output(mm[i], m, tiles[i], x.shape[1], x.shape[2]) for i, x in enumerate(xs))


def native_copies(xs: Sequence[jax.Array], ws: Sequence[jax.Array]) -> tuple[jax.Array, ...]:
    """The same k convolutions as unrolled native convolutions (what ``conv_impl`` "unrolled" runs)."""
    return tuple(native_conv(x, w, padding=1) for x, w in zip(xs, ws))


def gemm_runners(sizes: Sequence[int], torch_too: bool) -> dict:
    runners, flops = {}, {}
    rng = np.random.default_rng(0)
    for n in sizes:
        a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        f = jax.jit(jnp.dot)
        runners[f"jax matmul {n}"] = lambda f=f, ja=ja, jb=jb: f(ja, jb).block_until_ready()
        flops[f"jax matmul {n}"] = 2 * n ** 3
        if torch_too:
            import torch

            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            runners[f"torch matmul {n}"] = lambda ta=ta, tb=tb: ta @ tb
            flops[f"torch matmul {n}"] = 2 * n ** 3
    return runners, flops


def layer_runners(k: int, shape: tuple[int, int, int, int], cout: int) -> tuple[dict, dict, dict]:
    rng = np.random.default_rng(0)
    b, h, w, c = shape
    xs = tuple(jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(k))
    ws = tuple(jnp.asarray(rng.standard_normal((3, 3, c, cout)) / np.sqrt(9 * c), jnp.float32) for _ in range(k))
    forms = {"native": native_copies, "winograd F(2,3)": functools.partial(winograd_copies, m=2),
             "winograd F(4,3)": functools.partial(winograd_copies, m=4)}
    reference = jax.jit(native_copies)(xs, ws)
    scale = max(float(jnp.abs(r).max()) for r in reference)
    runners, flops, errors = {}, {}, {}
    conv_flop = 2 * k * b * h * w * c * cout * 9
    for name, fn in forms.items():
        fwd = jax.jit(fn)
        error = max(float(jnp.abs(y - r).max()) for y, r in zip(fwd(xs, ws), reference)) / scale
        bwd = jax.jit(jax.grad(lambda xs, ws, fn=fn: sum(jnp.sum(y * y) for y in fn(xs, ws)), argnums=(0, 1)))
        runners[f"{name} fwd"] = lambda fwd=fwd: jax.block_until_ready(fwd(xs, ws))
        runners[f"{name} fwd+bwd"] = lambda bwd=bwd: jax.block_until_ready(bwd(xs, ws))
        flops[f"{name} fwd"], flops[f"{name} fwd+bwd"] = conv_flop, 3 * conv_flop
        errors[f"{name} fwd"] = errors[f"{name} fwd+bwd"] = error
    return runners, flops, errors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="small shapes (smoke run)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--eval-batch-sizes", type=int, nargs="+", default=[8, 32])
    p.add_argument("--target", type=float, default=1.5, help="eval speed-up over PyTorch to assess")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    torch_too = not args.no_torch and timing.torch_available()
    if torch_too:
        timing.set_torch_threads()
    size = "tiny" if args.tiny else "paper"
    gemm_sizes = (256,) if args.tiny else (1024, 2048, 4096)
    k, shape, cout = (2, (2, 12, 12, 8), 8) if args.tiny else (12, (8, 44, 44, 96), 96)

    runners, flops = gemm_runners(gemm_sizes, torch_too)
    layer, layer_flops, errors = layer_runners(k, shape, cout)
    runners.update(layer)
    flops.update(layer_flops)
    evals = {}
    for batch in args.eval_batch_sizes:
        run, facts = bench_train.jax_eval_runner("jaanet", size, batch, "auto")
        runners[f"jax jaanet eval b{batch}"] = run
        flops[f"jax jaanet eval b{batch}"] = run.compiled.cost_analysis()["flops"]
        evals[batch] = flops[f"jax jaanet eval b{batch}"]
        if torch_too:                   # the same network: the JAX program's FLOPs
            runners[f"torch jaanet eval b{batch}"] = bench_train.torch_runner(size, batch, "eval")[0]
            flops[f"torch jaanet eval b{batch}"] = evals[batch]
    stats = timing.interleaved(runners, rounds=args.rounds)

    rows = [{"name": n, **stats[n], "gflop": flops[n] / 1e9, "gflop_per_s": flops[n] / stats[n]["median_s"] / 1e9,
             **({"rel_error": errors[n]} if n in errors else {})} for n in runners]
    peak = max((r["gflop_per_s"] for r in rows if "matmul" in r["name"]), default=float("nan"))
    ceiling = []
    for batch, gflop in evals.items():
        jax_s = stats[f"jax jaanet eval b{batch}"]["median_s"]
        row = {"batch": batch, "gflop": gflop / 1e9, "jax_s": jax_s, "jax_gflop_per_s": gflop / jax_s / 1e9,
               "gemm_peak_gflop_per_s": peak}
        if torch_too:
            torch_s = stats[f"torch jaanet eval b{batch}"]["median_s"]
            row.update(torch_s=torch_s, ratio=torch_s / jax_s,
                       needed_gflop_per_s=gflop / (torch_s / args.target) / 1e9)
        ceiling.append(row)

    print(f"{'runner':28} {'median s':>9} {'CPU util':>8} {'GFLOP/s':>8} {'rel err':>8}")
    for r in rows:
        err = f"{r['rel_error']:.1e}" if "rel_error" in r else ""
        print(f"{r['name']:28} {r['median_s']:>9.4f} {r['cpu_util']:>8.2f} {r['gflop_per_s']:>8.1f} {err:>8}")
    for c in ceiling:
        line = (f"eval b{c['batch']}: {c['gflop']:.1f} GFLOP, JAX {c['jax_s']:.3f} s = {c['jax_gflop_per_s']:.0f} "
                f"GFLOP/s; GEMM peak {peak:.0f} GFLOP/s")
        if "torch_s" in c:
            line += (f"; PyTorch {c['torch_s']:.3f} s (JAX {c['ratio']:.2f}x); {args.target}x needs "
                     f"{c['needed_gflop_per_s']:.0f} GFLOP/s")
        print(line)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": timing.machine_info(), "size": size, "rounds": args.rounds,
                               "rows": rows, "eval_ceiling": ceiling}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
