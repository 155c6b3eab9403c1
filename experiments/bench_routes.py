"""CPU inference routes one level down: one 3x3 convolution and one matmul, float32 and bfloat16.

The two operations that dominate the eval forward, run by every CPU route considered for inference:

- ``conv``: NHWC ``[8, 44, 44, 96]`` -> 96 channels, 3x3, SAME (the largest per-AU layer of JAA-Net's paper
  size); ``matmul``: ``[2048, 2048] @ [2048, 2048]``.
- JAX (XLA:CPU, this process's ``XLA_FLAGS``) float32 and bfloat16; the same in a fresh process per
  ``--xla-variants`` flag set (XLA reads its flags once per process);
- ONNX Runtime (CPU execution provider) float32 on an ONNX graph of the op (ONNX Runtime's CPU provider has no
  bfloat16 Conv or MatMul kernel);
- OpenVINO (CPU plugin) on the same ONNX graph with ``INFERENCE_PRECISION_HINT`` f32 and bf16 (the plugin runs
  bf16 on avx512_bf16 / AMX, and emulates nothing: without the units the hint falls back to f32);
- PyTorch float32, bfloat16 and bfloat16 channels-last (oneDNN).

All runners of one op are timed in turn, round after round (``experiments.timing.interleaved``), medians; the
1-minute load average is recorded before and after each op (other processes on the machine distort the numbers:
read them against the load). Prints a table and writes ``experiments/results/bench_routes.json`` with GFLOP/s,
the ratio to JAX float32, the CPU model and its vector / matrix flags.

    python -m experiments.bench_routes                        # ~2 minutes on 2 cores
    python -m experiments.bench_routes --rounds 3 --no-xla-variants --out /tmp/r.json
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments import timing  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results" / "bench_routes.json"
CONV = dict(batch=8, hw=44, cin=96, cout=96, k=3)
MATMUL_N = 2048
# XLA:CPU flag sets tried for bfloat16 (each in a fresh process).
XLA_VARIANTS: dict[str, str] = {
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_custom_call": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "onednn_fusion_dot": "--xla_cpu_experimental_onednn_fusion_type=dot",
    "xnnpack_off": "--xla_cpu_use_xnnpack=false",
}
CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16",
                         "amx_int8", "amx_tile", "amx_fp16")


def cpu_facts() -> dict:
    """CPU model name and which of the vector / matrix units that matter here it has (/proc/cpuinfo)."""
    # Imported here, not at the top: importing algrnet_jax sets the project's XLA flags, and this benchmark
    # chooses XLA's flags itself (XLA_VARIANTS).
    from algrnet_jax import export

    flags = export.cpu_flags()
    return {"model": export.cpu_field("model name") or "unknown", "cores": os.cpu_count(),
            "flags": [f for f in CPU_FLAGS_OF_INTEREST if f in flags]}


def flops(op: str) -> float:
    if op == "conv":
        c = CONV
        return 2.0 * c["batch"] * c["hw"] ** 2 * c["cin"] * c["cout"] * c["k"] ** 2
    return 2.0 * MATMUL_N ** 3


def inputs(op: str) -> tuple[np.ndarray, np.ndarray]:
    """float32 operands: conv (x NHWC, w HWIO); matmul (a, b)."""
    rng = np.random.default_rng(0)
    if op == "conv":
        c = CONV
        x = rng.standard_normal((c["batch"], c["hw"], c["hw"], c["cin"]), np.float32)
        w = (rng.standard_normal((c["k"], c["k"], c["cin"], c["cout"]), np.float32) * 0.05).astype(np.float32)
        return x, w
    a = rng.standard_normal((MATMUL_N, MATMUL_N), np.float32)
    b = rng.standard_normal((MATMUL_N, MATMUL_N), np.float32) * (1 / np.sqrt(MATMUL_N))
    return a, b.astype(np.float32)


def reference(op: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32 result from XLA (the value every runner's output is compared with)."""
    return np.asarray(jax_fn(op)(a, b))


def jax_fn(op: str):
    if op == "conv":
        return jax.jit(lambda x, w: jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    return jax.jit(lambda a, b: a @ b)


# ------------------------------------------------------------------------------------------------ runners


def jax_runners(op: str, a: np.ndarray, b: np.ndarray, prefix: str = "jax") -> dict:
    f = jax_fn(op)
    out = {}
    for dt in ("float32", "bfloat16"):
        da, db = jax.device_put(a.astype(dt)), jax.device_put(b.astype(dt))
        out[f"{prefix}_{dt}"] = (lambda da=da, db=db: jax.block_until_ready(f(da, db)),
                                 lambda da=da, db=db: np.asarray(f(da, db), np.float32))
    return out


def onnx_model(op: str, b: np.ndarray) -> bytes:
    """The op as an ONNX graph with the second operand as a constant (weights, as in the model): conv in ONNX's
    NCHW layout (the runtimes' native one), matmul as MatMul."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if op == "conv":
        c = CONV
        w = numpy_helper.from_array(np.ascontiguousarray(b.transpose(3, 2, 0, 1)), "w")    # HWIO -> OIHW
        node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        shape_in = [c["batch"], c["cin"], c["hw"], c["hw"]]
        shape_out = [c["batch"], c["cout"], c["hw"], c["hw"]]
    else:
        w = numpy_helper.from_array(b, "w")
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        shape_in = shape_out = [MATMUL_N, MATMUL_N]
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape_in)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape_out)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def _runtime_input(op: str, a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2)) if op == "conv" else a


def _runtime_output(op: str, y: np.ndarray) -> np.ndarray:
    return y.transpose(0, 2, 3, 1) if op == "conv" else y


def ort_runners(op: str, a: np.ndarray, b: np.ndarray) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    sess = ort.InferenceSession(onnx_model(op, b), opts, providers=["CPUExecutionProvider"])
    x = _runtime_input(op, a)
    return {"onnxruntime_float32": (lambda: sess.run(None, {"x": x}),
                                    lambda: _runtime_output(op, sess.run(None, {"x": x})[0]))}


def openvino_runners(op: str, a: np.ndarray, b: np.ndarray) -> dict:
    from algrnet_jax.export import import_openvino

    core = import_openvino().Core()
    model = core.read_model(onnx_model(op, b), b"")   # ONNX bytes in memory (weights inside)
    x = _runtime_input(op, a)
    out = {}
    for hint, name in (("f32", "float32"), ("bf16", "bfloat16")):
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                     "PERFORMANCE_HINT": "LATENCY"})
        req = compiled.create_infer_request()
        precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))   # what the plugin will run
        out[f"openvino_{name}"] = (lambda req=req: req.infer({0: x}),
                                   lambda req=req: _runtime_output(op, np.array(req.infer({0: x})[0])), precision)
    return out


def torch_runners(op: str, a: np.ndarray, b: np.ndarray) -> dict:
    import torch
    import torch.nn.functional as F

    timing.set_torch_threads()
    out = {}
    if op == "conv":
        x = torch.from_numpy(_runtime_input(op, a))
        w = torch.from_numpy(np.ascontiguousarray(b.transpose(3, 2, 0, 1)))
        variants = {"torch_float32": (x, w), "torch_bfloat16": (x.bfloat16(), w.bfloat16()),
                    "torch_bfloat16_channels_last": (x.bfloat16().contiguous(memory_format=torch.channels_last),
                                                     w.bfloat16().contiguous(memory_format=torch.channels_last))}
        for name, (xx, ww) in variants.items():
            def run(xx=xx, ww=ww):
                with torch.inference_mode():
                    return F.conv2d(xx, ww, padding=1)
            out[name] = (run, lambda run=run: _runtime_output(op, run().float().numpy()))
    else:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        for name, (xa, xb) in {"torch_float32": (ta, tb), "torch_bfloat16": (ta.bfloat16(), tb.bfloat16())}.items():
            def run(xa=xa, xb=xb):
                with torch.inference_mode():
                    return xa @ xb
            out[name] = (run, lambda run=run: run().float().numpy())
    return out


# ------------------------------------------------------------------------------------------------ driver


def bench_op(op: str, rounds: int, only_jax: bool) -> dict:
    a, b = inputs(op)
    ref = reference(op, a, b)
    scale = float(np.abs(ref).max())
    runners: dict = {}
    runners.update(jax_runners(op, a, b))
    notes: dict[str, str] = {}
    if not only_jax:
        for name, build in (("onnxruntime", ort_runners), ("openvino", openvino_runners), ("torch", torch_runners)):
            try:
                runners.update(build(op, a, b))
            except ImportError as e:
                notes[name] = f"not installed ({e})"
    errors = {k: float(np.abs(v[1]() - ref).max() / scale) for k, v in runners.items()}
    precisions = {k: v[2] for k, v in runners.items() if len(v) > 2}
    load_before = os.getloadavg()
    stats = timing.interleaved({k: v[0] for k, v in runners.items()}, rounds=rounds, warmup=2)
    load_after = os.getloadavg()
    f = flops(op)
    base = stats["jax_float32"]["median_s"]
    rows = {k: {"median_ms": round(1000 * s["median_s"], 3), "min_ms": round(1000 * s["min_s"], 3),
                "gflops": round(f / s["median_s"] / 1e9, 1), "vs_jax_float32": round(base / s["median_s"], 2),
                "cpu_util": s["cpu_util"], "max_rel_error_vs_xla_f32": float(f"{errors[k]:.3g}"),
                **({"runtime_precision": precisions[k]} if k in precisions else {})}
            for k, s in stats.items()}
    return {"flops": f, "rows": rows, "notes": notes, "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after]}


def xla_variant(flags: str, rounds: int) -> dict:
    """JAX float32 / bfloat16 of both ops in a fresh process with ``flags`` added to XLA_FLAGS."""
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip())
    cmd = [sys.executable, "-m", "experiments.bench_routes", "--only-jax", "--rounds", str(rounds),
           "--no-xla-variants", "--print-json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=pathlib.Path(__file__).parents[1])
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])["ops"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--only-jax", action="store_true", help="JAX runners only (used for the XLA flag variants)")
    ap.add_argument("--no-xla-variants", action="store_true", help="skip the fresh processes with other XLA flags")
    ap.add_argument("--print-json", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    ops = {op: bench_op(op, args.rounds, args.only_jax) for op in ("conv", "matmul")}
    if args.print_json:
        print(json.dumps({"ops": ops}))
        return
    result = {"cpu": cpu_facts(), "xla_flags": os.environ.get("XLA_FLAGS", ""), "ops": ops,
              "machine": timing.machine_info(), "versions": _versions()}
    if not args.no_xla_variants:
        result["xla_variants"] = {}
        for name, flags in XLA_VARIANTS.items():
            v = xla_variant(flags, args.rounds)
            result["xla_variants"][name] = {"flags": flags, "ops": v}
    cpu = result["cpu"]
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores, units: {' '.join(cpu['flags'])}")
    for op, r in ops.items():
        print(f"\n{op}: {r['flops'] / 1e9:.1f} GFLOP; load {r['loadavg_before'][0]:.2f} -> {r['loadavg_after'][0]:.2f}")
        print(f"{'runner':<32} {'ms':>9} {'GFLOP/s':>8} {'x JAX f32':>9} {'util':>5} {'rel err':>9}")
        for k, row in r["rows"].items():
            print(f"{k:<32} {row['median_ms']:>9.2f} {row['gflops']:>8.1f} {row['vs_jax_float32']:>9.2f} "
                  f"{row['cpu_util']:>5.2f} {row['max_rel_error_vs_xla_f32']:>9.2g}")
    for name, v in result.get("xla_variants", {}).items():
        if "error" in v["ops"]:
            print(f"XLA {name}: {v['ops']['error']}")
            continue
        print(f"XLA {name} ({v['flags']}): " + "; ".join(
            f"{op} f32 {r['rows']['jax_float32']['gflops']:.0f} / bf16 {r['rows']['jax_bfloat16']['gflops']:.0f} "
            f"GFLOP/s (load {r['loadavg_before'][0]:.2f})" for op, r in v["ops"].items()))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"-> {args.out}")


def _versions() -> dict:
    out = {"jax": jax.__version__, "jaxlib": getattr(jax.lib, "__version__", None) or jax.__version__}
    for mod in ("onnxruntime", "openvino", "torch"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out


if __name__ == "__main__":
    main()
