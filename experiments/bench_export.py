"""CPU inference routes at model level: the JAX eval forward against its ONNX export (OpenVINO float32 / bfloat16,
ONNX Runtime float32) and the PyTorch JAA-Net reference (float32 and ``torch.autocast`` bfloat16).

Two parts, one process:

1. ``checks``: for JAA-Net and ALGRNet at ``--check-size`` (the models' own initialization, key 0,
   and ``--trained-checkpoint`` if given), on the real aligned BP4D faces of ``tests/fixtures/jaanet_samples``
   (2 faces, their mirror images, shifted by up to 2 px: 24 inputs): export seconds, runtime compile seconds,
   the exported float32 program's largest difference from the JAX forward per output, and for bfloat16 the
   share of (face, AU) decisions (p > 0.5) equal to float32's, the largest |dp| and landmark difference (px);
   a trained checkpoint also on its own test part (``check_records``: every frame, each route's F1).
2. ``speed``: JAA-Net at ``--size`` (paper), batch 8 and 32 (``--batches``): every runner timed in turn, round
   after round (``experiments.timing.interleaved``), medians; the load average before and after. The PyTorch
   bf16 runner wraps the reference in ``torch.autocast("cpu", torch.bfloat16)``.

The exported programs have a fixed batch size, so each batch size is exported once (the time is reported);
the ``Predictor`` caches its exports on disk (``export.cached_export``), this script does not.

    python -m experiments.bench_export --rounds 3                            # the full run (quiet machine)
    python -m experiments.bench_export --size small --check-size tiny --rounds 2 --batches 2 --out /tmp/e.json

Prints tables and writes ``experiments/results/bench_export.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from algrnet_jax import configs, evaluation, export, inference  # noqa: E402
from algrnet_jax.models.networks import create_model  # noqa: E402
from experiments import timing  # noqa: E402
from experiments.bench_predict import random_predictor  # noqa: E402
from experiments.bench_routes import cpu_facts  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results" / "bench_export.json"
SAMPLES = pathlib.Path(__file__).parents[1] / "tests" / "fixtures" / "jaanet_samples"
ROUTES = (("openvino", "float32"), ("openvino", "bfloat16"), ("onnxruntime", "float32"))

_T0 = time.perf_counter()


def _log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.0f}s] {msg}", flush=True)


def real_faces(crop: int, aligned: int) -> np.ndarray:
    """The fixtures' two aligned BP4D faces, mirrored, shifted by up to 2 px: float32 [24, crop, crop, 3]."""
    faces = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(SAMPLES.glob("aligned_*.jpg"))]
    faces += [f[:, ::-1] for f in faces]
    shifts = ((0, 0), (2, 0), (0, 2), (-2, -2), (2, 2), (-2, 0))
    return inference.preprocess(np.stack([np.roll(f, s, (0, 1)) for f in faces for s in shifts]), aligned, crop)


def initialized_predictor(name: str, size: str) -> inference.Predictor:
    """A Predictor with the model's own initialization (``model.init``, key 0): varied outputs, where the small
    N(0, 0.02) weights of ``random_predictor`` give near-constant ones (no decision to compare)."""
    config = configs.get_config(name, size)
    model = create_model(config)
    c = config.crop_size
    variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(
        np.zeros((1, c, c, 3), np.float32))
    return inference.Predictor(config, variables, model=model, batch_size=8, backend="jax")


def routes_available() -> list[tuple[str, str]]:
    native = export.bf16_native()
    return [(b, d) for b, d in ROUTES if export.runtime_available(b) and (d == "float32" or native)]


def check(predictor: inference.Predictor, label: str, batch: int = 8) -> dict:
    """Exported programs against the JAX forward on the real faces (see the module docstring)."""
    x = real_faces(predictor.crop_size, predictor.aligned_size)
    t0 = time.perf_counter()
    try:
        data, outputs = export.export_onnx(predictor.model, predictor.variables, predictor.crop_size, batch)
    except export.ExportError as e:
        _log(f"check {label}: not exported ({e})")
        return {"model": label, "not_exported": str(e)}
    export_s = time.perf_counter() - t0
    ref = predictor.run(x, batch_size=batch, fixed_shape=True)
    row = {"model": label, "faces": len(x), "export_s": round(export_s, 1),
           "onnx_mib": round(len(data) / 2 ** 20, 1), "routes": {}}
    prob = predictor.prob_key
    for backend, dtype in routes_available():
        t0 = time.perf_counter()
        fwd = export.ExportedForward(data, outputs, backend, dtype)
        compile_s = time.perf_counter() - t0
        got = {k: np.concatenate([fwd(x[i:i + batch])[k] for i in range(0, len(x), batch)]) for k in ref}
        r = {"compile_s": round(compile_s, 1),
             "max_abs_diff": {k: float(f"{np.abs(got[k] - ref[k]).max():.3g}") for k in ref}}
        if dtype == "bfloat16":
            r["decisions_agree"] = round(float(np.mean((got[prob] > 0.5) == (ref[prob] > 0.5))), 4)
            r["pairs"] = int(ref[prob].size)
        row["routes"][f"{backend}_{dtype}"] = r
        _log(f"check {label} {backend} {dtype}: max |d{prob}| {r['max_abs_diff'][prob]:.2g}, landmarks "
             f"{r['max_abs_diff']['landmarks']:.2g} px" + (f", decisions agree {r['decisions_agree']:.4f}"
                                                          if "decisions_agree" in r else ""))
    row["jax_prob_range"] = [round(float(ref[prob].min()), 4), round(float(ref[prob].max()), 4)]
    return row


def check_records(ref: inference.Predictor, path: str) -> dict:
    """A trained checkpoint on its own test part (``evaluation.evaluate_variables``), once per route:
    every route's outputs against the JAX forward's on the real (unpadded) frames: for bfloat16 the share of equal
    (frame, AU) decisions, the largest |dp| and landmark difference, and each route's final mean F1.
    ``ref``: the checkpoint at ``path`` loaded with the JAX backend (the reference route)."""
    prob, batch = ref.prob_key, int(ref.config.data.eval_batch_size)

    def collect(apply_fn=None) -> tuple[dict, dict]:
        kept: dict[str, list] = {prob: [], "landmarks": []}

        def on_batch(b, out):
            real = np.asarray(b["mask"]) > 0
            for k in kept:
                kept[k].append(np.asarray(out[k])[real])
        result = evaluation.evaluate_variables(ref.config, ref.variables, apply_fn=apply_fn, on_batch=on_batch)
        return {k: np.concatenate(v) for k, v in kept.items()}, result
    t0 = time.perf_counter()
    base, base_result = collect(lambda v, x: ref.run(np.asarray(x), fixed_shape=True))
    row = {"model": f"{ref.config.name} {ref.config.size} trained", "checkpoint": str(path),
           "frames": int(len(base[prob])),
           "jax_final_mean_f1": round(base_result["predictions"]["final"]["mean_f1"], 2),
           "jax_s": round(time.perf_counter() - t0, 1), "routes": {}}
    for backend, dtype in routes_available():
        p = inference.Predictor(ref.config, ref.variables, model=ref.model, batch_size=batch, backend=backend,
                                dtype=dtype)
        t0 = time.perf_counter()
        got, result = collect(lambda v, x, p=p: p.run(np.asarray(x), fixed_shape=True))
        r = {"s_incl_export": round(time.perf_counter() - t0, 1),
             "final_mean_f1": round(result["predictions"]["final"]["mean_f1"], 2),
             "decisions_agree": round(float(np.mean((got[prob] > 0.5) == (base[prob] > 0.5))), 5),
             "pairs": int(base[prob].size),
             "max_abs_dp": float(f"{np.abs(got[prob] - base[prob]).max():.3g}"),
             "max_landmark_px": float(f"{np.abs(got['landmarks'] - base['landmarks']).max():.3g}")}
        row["routes"][f"{backend}_{dtype}"] = r
        _log(f"records {row['model']} {backend} {dtype}: decisions agree {r['decisions_agree']:.4f} of "
             f"{r['pairs']}, max |dp| {r['max_abs_dp']:.2g}, landmarks {r['max_landmark_px']:.2g} px, final mean F1 "
             f"{r['final_mean_f1']:.2f} (jax {row['jax_final_mean_f1']:.2f})")
    return row


def torch_runners(size: str, x: np.ndarray) -> dict:
    import torch

    from algrnet_jax.reference import torch_jaanet

    timing.set_torch_threads()
    config = configs.get_config("jaanet", size)
    model = torch_jaanet.TorchJAANet(aus=tuple(config.aus), crop_size=config.crop_size,
                                     unit_dim=config.model.unit).eval()
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    # AlignNet hands its landmarks to numpy (the attention maps are drawn on the host), which has no bfloat16:
    # it runs in float32 under autocast too (a no-op for the float32 runner).
    align_forward = model.align_net.forward

    def align_float32(feat):
        with torch.autocast("cpu", enabled=False):
            return align_forward(feat.float())

    model.align_net.forward = align_float32

    def f32():
        with torch.inference_mode():
            model(xt)

    def bf16():
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
            model(xt)

    return {"torch_float32": f32, "torch_bfloat16_autocast": bf16}


def speed(size: str, batch: int, rounds: int, torch_too: bool, model: str = "jaanet") -> dict:
    p = random_predictor(model, size)
    x = np.random.default_rng(0).uniform(-1, 1, (batch, p.crop_size, p.crop_size, 3)).astype(np.float32)
    facts: dict[str, dict] = {}
    t0 = time.perf_counter()
    compiled = jax.jit(lambda v, im: p.model.apply(v, im, train=False)).lower(p.variables, x).compile()
    facts["jax_float32"] = {"compile_s": round(time.perf_counter() - t0, 1)}
    xd = jax.device_put(x)
    runners = {"jax_float32": lambda: jax.block_until_ready(compiled(p.variables, xd))}
    t0 = time.perf_counter()
    data, outputs = export.export_onnx(p.model, p.variables, p.crop_size, batch)
    export_s = round(time.perf_counter() - t0, 1)
    _log(f"batch {batch}: JAX compiled in {facts['jax_float32']['compile_s']} s, exported in {export_s} s")
    for backend, dtype in routes_available():
        t0 = time.perf_counter()
        fwd = export.ExportedForward(data, outputs, backend, dtype)
        name = f"{backend}_{dtype}"
        facts[name] = {"compile_s": round(time.perf_counter() - t0, 1), "export_s": export_s}
        runners[name] = lambda fwd=fwd: fwd(x)
    if torch_too and model == "jaanet":       # the PyTorch reference is JAA-Net's
        runners.update(torch_runners(size, x))
    load_before = os.getloadavg()
    stats = timing.interleaved(runners, rounds=rounds, warmup=1)
    load_after = os.getloadavg()
    best_torch = min((s["median_s"] for k, s in stats.items() if k.startswith("torch")), default=None)
    rows = {}
    for k, s in stats.items():
        rows[k] = {"median_s": s["median_s"], "min_s": s["min_s"], "images_per_s": round(batch / s["median_s"], 2),
                   "cpu_util": s["cpu_util"], "vs_jax_float32": round(stats["jax_float32"]["median_s"]
                                                                      / s["median_s"], 2),
                   **({"vs_best_torch": round(best_torch / s["median_s"], 2)} if best_torch else {}),
                   **facts.get(k, {})}
    return {"batch": batch, "rows": rows, "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in load_after]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="paper", choices=sorted(configs.SIZES), help="size of the speed runs")
    ap.add_argument("--check-size", default="small", choices=sorted(configs.SIZES), help="size of the checks")
    ap.add_argument("--batches", type=int, nargs="*", default=[8, 32], help="speed runs (none: checks only)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--speed-model", default="jaanet", choices=("jaanet", "algrnet"),
                    help="the speed runs' model (PyTorch runs only beside JAA-Net, the reference's model)")
    ap.add_argument("--trained-checkpoint", nargs="*", default=[],
                    help="also check trained checkpoints (e.g. runs/<job>/train): on the real faces and on their "
                         "own test part")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-checks", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    torch_too = not args.no_torch and timing.torch_available()
    result: dict = {"cpu": cpu_facts(), "bf16_native": export.bf16_native(), "machine": timing.machine_info(),
                    "size": args.size, "speed_model": args.speed_model, "checks": [], "speed": []}
    if not args.no_checks:
        for name in ("jaanet", "algrnet"):
            result["checks"].append(check(initialized_predictor(name, args.check_size),
                                          f"{name} {args.check_size} model.init"))
        for path in args.trained_checkpoint:
            p = inference.Predictor.from_checkpoint(path, backend="jax")
            result["checks"].append(check(p, f"{p.config.name} {p.config.size} trained"))
            result["checks"].append(check_records(p, path))
    for batch in args.batches:
        result["speed"].append(speed(args.size, batch, args.rounds, torch_too, args.speed_model))
    cpu = result["cpu"]
    print(f"\nCPU: {cpu['model']}, {cpu['cores']} cores, units: {' '.join(cpu['flags'])}")
    for s in result["speed"]:
        print(f"\n{args.speed_model} {args.size} eval forward, batch {s['batch']} "
              f"(load {s['loadavg_before'][0]:.2f} -> {s['loadavg_after'][0]:.2f})")
        print(f"{'runner':<26} {'median s':>9} {'img/s':>7} {'util':>5} {'x JAX':>6} {'x best torch':>12}")
        for k, r in s["rows"].items():
            print(f"{k:<26} {r['median_s']:>9.3f} {r['images_per_s']:>7.2f} {r['cpu_util']:>5.2f} "
                  f"{r['vs_jax_float32']:>6.2f} {r.get('vs_best_torch', float('nan')):>12.2f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
