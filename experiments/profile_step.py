"""Where the time of one compiled step goes: a jax.profiler trace of the XLA:CPU thunks, grouped.

Compiles the eval forward or the train step of a named config (the programs ``experiments.bench_train`` times),
runs it once to warm up, traces ``--calls`` calls with ``jax.profiler.trace`` and reads the thunk events of the
trace (``hlo_op`` of each executed thunk, start, duration, thread). Each thunk is attributed to the model part
that emitted it (the Flax module path in the HLO metadata's ``op_name``) and to its kind (the thunk name without
its number: ``ynn_fusion`` = XNNPACK, ``convolution``, ``dot``, ``concatenate``, ``fusion`` ...). Prints:

- wall time per call, thunk time summed over threads, and their ratio = the mean number of thunks running at
  once (the parallelism of the executor; each thunk may use more threads inside, not counted here), and the
  program's FLOPs (``compiled.cost_analysis()``) per second of traced wall time;
- time per model part and per kind (share of the summed thunk time), and the longest single thunks.

    python -m experiments.profile_step --config jaanet --mode eval --batch 8
    python -m experiments.profile_step --config algrnet --mode train --out /tmp/profile.json

Writes JSON (``--out``, default ``experiments/results/profile_<config>_<mode>.json``).
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import pathlib
import re
import sys
import tempfile
import time
from typing import Any

import jax

from experiments import bench_train

RESULTS = pathlib.Path(__file__).parent / "results"
_META = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?metadata=\{[^}]*?op_name="([^"]+)"')


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> its metadata ``op_name`` (the JAX/Flax source path)."""
    out = {}
    for line in hlo_text.splitlines():
        m = _META.match(line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def model_part(op_name: str, depth: int) -> str:
    """The Flax module path of an ``op_name`` below the model's own module, ``depth`` modules deep; the backward
    pass (``transpose(...)`` in the path) is tagged ``bwd``. ``jit(apply)/ALGRNet/local_au_feat/conv2/conv`` and
    ``jit(train_step)/transpose(jvp(ALGRNet))/local_au_feat/conv2/reduce_sum`` both give ``local_au_feat/conv2``."""
    parts = [p for p in op_name.split("/") if p]
    bwd = any(p.startswith("transpose(") for p in parts)
    # Drop transforms (``jit(f)``, ``jvp(...)``), the model's class name (capitalised) and the primitive (last).
    modules = [p for p in parts[:-1] if not re.match(r"^\w+\(", p) and not re.match(r"^[A-Z]", p)
               and p not in ("checkpoint", "rem")]
    return ("bwd " if bwd else "") + ("/".join(modules[:depth]) or "(outside modules)")


def kind(hlo_op: str) -> str:
    return re.sub(r"(\.\d+)+$", "", hlo_op)


def thunk_events(trace_dir: str) -> list[dict[str, Any]]:
    paths = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
    if not paths:
        raise RuntimeError(f"no perfetto trace under {trace_dir}")
    with gzip.open(paths[0]) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return [e for e in events if e.get("ph") == "X" and "hlo_op" in (e.get("args") or {})]


def profile(config_name: str, mode: str, batch: int, size: str, conv_impl: str, calls: int,
            depth: int) -> dict[str, Any]:
    make = bench_train.jax_train_runner if mode == "train" else bench_train.jax_eval_runner
    run, facts = make(config_name, size, batch, conv_impl)
    compiled = getattr(run, "compiled", None)
    run()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(calls):
                run()
        wall = (time.perf_counter() - t0) / calls
        events = thunk_events(d)
    names = op_names(compiled.as_text()) if compiled is not None else {}
    cost = (compiled.cost_analysis() if compiled is not None else None) or {}
    if isinstance(cost, list):                     # older jax: one dict per computation
        cost = cost[0] if cost else {}
    flops = float(cost.get("flops", 0.0))
    total = sum(e["dur"] for e in events) / 1e6 / calls
    start = min(e["ts"] for e in events)
    span = (max(e["ts"] + e["dur"] for e in events) - start) / 1e6 / calls
    by_part: dict[str, float] = collections.Counter()
    by_kind: dict[str, float] = collections.Counter()
    longest: dict[str, float] = collections.Counter()
    for e in events:
        op = e["args"]["hlo_op"]
        s = e["dur"] / 1e6 / calls
        by_part[model_part(names.get(op, ""), depth)] += s
        by_kind[kind(op)] += s
        longest[op] += s

    def share(counter: dict[str, float], n: int) -> list[dict[str, Any]]:
        return [{"name": k, "s": round(v, 4), "share": round(v / total, 4)}
                for k, v in sorted(counter.items(), key=lambda kv: -kv[1])[:n]]

    return {"config": config_name, "mode": mode, "batch": batch, "size": size, "conv_impl": conv_impl,
            "calls": calls, "wall_s_per_call": round(wall, 4), "thunk_span_s_per_call": round(span, 4),
            "thunk_s_per_call": round(total, 4), "mean_thunks_at_once": round(total / span, 3),
            "threads": len({e["tid"] for e in events}), **facts,
            "gflop_per_call": round(flops / 1e9, 6), "gflop_per_s": round(flops / 1e9 / wall, 3),
            "by_part": share(by_part, 25), "by_kind": share(by_kind, 15),
            "longest": [{**r, "op_name": names.get(r["name"], "")} for r in share(longest, 15)]}


def print_profile(r: dict[str, Any]) -> None:
    print(f"{r['config']} {r['mode']} {r['size']} b{r['batch']} ({r['conv_impl']}): {r['wall_s_per_call']:.3f} s per "
          f"call, thunks {r['thunk_s_per_call']:.3f} s over {r['threads']} threads -> "
          f"{r['mean_thunks_at_once']:.2f} thunks at once on average; {r['gflop_per_call']:.1f} GFLOP per call "
          f"(cost_analysis) = {r['gflop_per_s']:.0f} GFLOP/s while traced")
    for title, key in (("model part", "by_part"), ("thunk kind", "by_kind"), ("longest thunks", "longest")):
        print(f"\n{title:<60} {'s/call':>8} {'share':>6}")
        for row in r[key]:
            print(f"{row['name'][:60]:<60} {row['s']:>8.3f} {100 * row['share']:>5.1f}%"
                  + (f"  {row['op_name'][-70:]}" if row.get("op_name") else ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="jaanet", choices=list(bench_train.JAX_MODELS))
    p.add_argument("--mode", default="eval", choices=["eval", "train"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", default="paper")
    p.add_argument("--conv-impl", default="auto")
    p.add_argument("--calls", type=int, default=2)
    p.add_argument("--depth", type=int, default=2, help="module path depth of the model-part grouping")
    p.add_argument("--out")
    args = p.parse_args(argv)
    r = profile(args.config, args.mode, args.batch, args.size, args.conv_impl, args.calls, args.depth)
    print_profile(r)
    out = pathlib.Path(args.out or RESULTS / f"profile_{args.config}_{args.mode}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
