"""`algrnet predict` benchmark: end-to-end frames/s on a 640x360 single-face video, by stage.

A synthetic face (the generator's, ~150 px) moves across a 640x360 video. Measured after a warm-up (the
compilation is not timed):

- ``keyframes``: MTCNN every ``--keyframe-every`` frames (two passes there), landmark tracking with one
  pass and an O-Net check in between, the tracked frames between two key frames run as one batch
  (``--frame-batch``, default 8 here; ``algrnet predict``'s default on a GPU);
- ``keyframes_fb1``: the same, frame by frame (``--frame-batch 1``: each frame aligned from the previous one;
  ``algrnet predict``'s default on CPU);
- ``every_frame``: MTCNN and two passes on every frame;
- the network alone per face (batch 1, the same aligned crops) for JAX ALGRNet, JAX JAA-Net and the
  PyTorch JAA-Net baseline (``reference.torch_jaanet``, ``torch.set_num_threads(2)``).

The paper-size weights are random (no trained paper-size checkpoint here): tracking is forced
(``track_threshold 0``) so every tracked frame does the work it does with a trained model (one warp,
one forward, one O-Net check). ``--refine-checkpoint DIR`` (e.g. the main job's ``train`` directory)
also measures landmark error after pass 1 and pass 2 on synthetic faces pasted into frames (ground truth
known), as a percentage of the inter-ocular distance.

    python -m experiments.bench_predict                                   # paper size, 60 frames
    python -m experiments.bench_predict --frames 20 --size small --refine-checkpoint runs/main_job/train

Prints a table and writes ``experiments/results/bench_predict.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import pathlib
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from algrnet_jax import configs, inference, predict  # noqa: E402
from algrnet_jax.models.networks import create_model  # noqa: E402
from algrnet_jax.predict import faces as faces_lib  # noqa: E402
from algrnet_jax.predict import media  # noqa: E402
from data_pipelines import alignment  # noqa: E402
from data_pipelines.synthetic import face as synth_face  # noqa: E402
from data_pipelines.synthetic import generator  # noqa: E402
from experiments import timing  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results" / "bench_predict.json"


def synth_faces(n: int, seed: int) -> list[dict]:
    cfg = dataclasses.replace(generator.SIZES["tiny"], num_subjects=max(n, 1), frames_per_sequence=1, seed=seed)
    return list(generator.generate(cfg))[:n]


def write_video(path: str, frames: int, fps: float = 30.0, size: tuple[int, int] = (640, 360)) -> None:
    """A face moving slowly (and drifting in scale) over a textured background: MJPG .avi."""
    ex = synth_faces(1, seed=3)[0]
    w, h = size
    rng = np.random.default_rng(0)
    bg = cv2.resize(rng.integers(60, 200, (h // 20, w // 20, 3)).astype(np.uint8), (w, h),
                    interpolation=cv2.INTER_CUBIC)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for i in range(frames):
        side = int(150 + 10 * np.sin(i / 15))
        face = cv2.resize(ex["image"], (side, side), interpolation=cv2.INTER_AREA)
        x, y = int(200 + 120 * np.sin(i / 40)), int(100 + 20 * np.cos(i / 25))
        canvas = bg.copy()
        canvas[y:y + side, x:x + side] = face
        writer.write(cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    writer.release()


def random_predictor(name: str, size: str, backend: str = "jax") -> inference.Predictor:
    """A Predictor with random weights drawn on the host (no compiled init): N(0, 0.02) kernels, unit
    scales and variances, zero biases and means; ``backend`` as ``Predictor`` (``export.choose_backend``)."""
    config = configs.get_config(name, size)
    c = config.crop_size
    shapes = jax.eval_shape(create_model(config).init, jax.random.PRNGKey(0), np.zeros((1, c, c, 3), np.float32))
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        key = jax.tree_util.keystr(path)
        if "scale" in key or "var" in key:
            return np.ones(leaf.shape, np.float32)
        if "bias" in key or "mean" in key:
            return np.zeros(leaf.shape, np.float32)
        return rng.normal(0, 0.02, leaf.shape).astype(np.float32)

    return inference.Predictor(config, jax.tree_util.tree_map_with_path(draw, shapes), batch_size=8,
                               backend=backend)


def time_video(predictor: inference.Predictor, video: str, detector, keyframe_every: int, frames: int,
               frame_batch: int = 1) -> dict:
    """Runs the engine over the first ``frames`` frames after a warm-up that compiles every batch bucket the run
    uses; seconds per stage."""
    options = predict.Options(keyframe_every=keyframe_every, track_threshold=0.0, frame_batch=frame_batch)
    warm = predict.Engine(predictor, options, detector)
    for _ in warm.video(_frames(video, 3 + 3 * keyframe_every)):   # both passes, tracking, every bucket
        pass
    engine = predict.Engine(predictor, options, detector)
    t0 = time.perf_counter()
    faces = sum(len(f) for *_, f in engine.video(_frames(video, frames)))
    wall = time.perf_counter() - t0
    t = engine.timing
    return {"frames": t.frames, "faces": faces, "frame_batch": frame_batch, "wall_s": wall, "fps": t.frames / wall,
            "ms_per_frame": {k: 1000 * getattr(t, k) / t.frames for k in ("decode", "detect", "align", "network")}}


def _frames(video: str, n: int):
    v = media.open_video(video)
    for i, ts, rgb in v:
        if i >= n:
            break
        yield i, ts, rgb


def network_ms(crops: np.ndarray, size: str, repeats: int) -> dict:
    """Median ms per face (batch 1) of the network alone on the same aligned crops; JAX ALGRNet, JAX JAA-Net and
    the PyTorch JAA-Net (if installed) interleaved in one process (``experiments.timing.interleaved``)."""
    runners = {}
    for name in ("algrnet", "jaanet"):
        p = random_predictor(name, size)
        faces = itertools.cycle(np.split(p.preprocess(crops), len(crops)))
        runners[f"jax_{name}"] = lambda p=p, faces=faces: jax.block_until_ready(p.forward(next(faces)))
    if timing.torch_available():
        import torch

        from algrnet_jax.reference import torch_jaanet

        timing.set_torch_threads()
        config = configs.get_config("jaanet", size)
        model = torch_jaanet.TorchJAANet(aus=tuple(config.aus), crop_size=config.crop_size,
                                         unit_dim=config.model.unit).eval()
        x = torch.from_numpy(np.ascontiguousarray(inference.preprocess(crops, config.aligned_size, config.crop_size)
                                                  .transpose(0, 3, 1, 2)))
        faces_t = itertools.cycle(x.split(1))

        def torch_forward():
            with torch.no_grad():
                model(next(faces_t))

        runners["torch_jaanet"] = torch_forward
    stats = timing.interleaved(runners, rounds=repeats, warmup=1)
    out = {k: 1000 * v["median_s"] for k, v in stats.items()}
    out.setdefault("torch_jaanet", None)
    return out


def refine_errors(checkpoint: str, detector, n: int) -> dict:
    """Landmark error (% of d_o, mean over points and faces) after pass 1 and pass 2 on pasted synthetic
    faces, and with the ground-truth alignment (the builder's) for reference."""
    p = inference.Predictor.from_checkpoint(checkpoint, batch_size=1, backend="jax")
    engine = predict.Engine(p, predict.Options(passes=2), detector)
    rng = np.random.default_rng(1)
    errs: dict[str, list[float]] = {"pass1": [], "pass2": [], "ground_truth_alignment": []}
    found = 0
    for ex in synth_faces(n, seed=11):
        raw, lm = synth_face.to_raw(ex["image"], ex["landmarks"], rng, frame_hw=(360, 640))
        d_o = float(alignment.interocular(lm))
        got = detector.detect(raw)
        if not got:
            continue
        found += 1
        res = engine.refine(raw, [alignment.alignment_matrix_from_points(got[0].points)])
        for key, r in zip(("pass1", "pass2"), res):
            errs[key].append(100 * float(np.linalg.norm(r[0][0] - lm, axis=1).mean()) / d_o)
        gt = engine.refine(raw, [alignment.alignment_matrix(lm)], passes=1)[0]
        errs["ground_truth_alignment"].append(100 * float(np.linalg.norm(gt[0][0] - lm, axis=1).mean()) / d_o)
    return {"checkpoint": checkpoint, "model": p.config.name, "size": p.config.size, "faces": n, "detected": found,
            **{f"{k}_mean_error_pct": (float(np.mean(v)) if v else None) for k, v in errs.items()}}


def overlay_picture(checkpoint: str, detector, path: str) -> None:
    """The README picture: ``algrnet predict``'s overlay of a trained checkpoint on the test photo
    (tests/fixtures/astronaut.jpg) beside a frame of pasted synthetic faces, side by side."""
    from algrnet_jax.predict import outputs

    p = inference.Predictor.from_checkpoint(checkpoint, batch_size=4, backend="jax")
    engine = predict.Engine(p, predict.Options(), detector)
    photo = media.read_image(str(pathlib.Path(__file__).parents[1] / "tests" / "fixtures" / "astronaut.jpg"))
    rng = np.random.default_rng(5)
    synth = np.full((512, 512, 3), 120, np.uint8)
    for k, ex in enumerate(synth_faces(2, seed=21)):
        face = cv2.resize(ex["image"], (230, 230), interpolation=cv2.INTER_AREA)
        x, y = 20 + 250 * k, 120 + int(rng.integers(0, 100))
        synth[y:y + 230, x:x + 230] = face
    panels = [outputs.draw(img, engine.image(img), p.class_names, 0.5) for img in (photo, synth)]
    cv2.imwrite(path, cv2.cvtColor(np.concatenate(panels, 1), cv2.COLOR_RGB2BGR))


def _print_refinement(r: dict) -> None:
    print(f"landmark error (% d_o), {r['model']} {r['size']}, {r['detected']}/{r['faces']} faces detected: "
          f"pass 1 {r['pass1_mean_error_pct']:.2f}, pass 2 {r['pass2_mean_error_pct']:.2f}, "
          f"ground-truth alignment {r['ground_truth_alignment_mean_error_pct']:.2f}")


_T0 = time.perf_counter()


def _log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.0f}s] {msg}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="paper", choices=sorted(configs.SIZES))
    ap.add_argument("--frames", type=int, default=60, help="timed frames of the key-frame run")
    ap.add_argument("--every-frame-frames", type=int, default=20, help="timed frames of the detect-every-frame run")
    ap.add_argument("--keyframe-every", type=int, default=10)
    ap.add_argument("--frame-batch", type=int, default=8, help="frames per network batch of the batched run")
    ap.add_argument("--repeats", type=int, default=10, help="timed forwards per network")
    ap.add_argument("--refine-checkpoint", help="a trained checkpoint for the pass-1 / pass-2 landmark errors")
    ap.add_argument("--refine-faces", type=int, default=20)
    ap.add_argument("--detect-threshold", type=float, default=0.6,
                    help="MTCNN O-Net threshold (synthetic faces score 0.75-0.99; default 0.6)")
    ap.add_argument("--refine-only", action="store_true",
                    help="only the refinement errors (and --picture), merged into an existing --out JSON")
    ap.add_argument("--picture", help="with --refine-checkpoint: write the README overlay picture here")
    ap.add_argument("--backend", default="jax", choices=("auto", "jax", "openvino", "onnxruntime"),
                    help="the video runs' Predictor backend (docs/usage_export.md); exported programs are cached "
                         "on disk, the first run of a batch size pays the export")
    ap.add_argument("--model", default="algrnet", choices=("algrnet", "jaanet"), help="the video runs' model")
    ap.add_argument("--runs", nargs="+", default=["keyframes", "keyframes_fb1", "every_frame"],
                    choices=["keyframes", "keyframes_fb1", "every_frame"], help="which video runs")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    load_before = os.getloadavg()
    detector = faces_lib.MTCNNDetector(threshold=args.detect_threshold)
    if args.refine_only:
        if not args.refine_checkpoint:
            ap.error("--refine-only needs --refine-checkpoint")
        result = json.loads(pathlib.Path(args.out).read_text()) if os.path.exists(args.out) else {}
        result["refinement"] = refine_errors(args.refine_checkpoint, detector, args.refine_faces)
        if args.picture:
            overlay_picture(args.refine_checkpoint, detector, args.picture)
        _print_refinement(result["refinement"])
        pathlib.Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"-> {args.out}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        video = os.path.join(tmp, "bench.avi")
        write_video(video, max(args.frames, args.every_frame_frames) + 3 + 3 * args.keyframe_every)
        _log(f"video written; compiling {args.size} {args.model}")
        t0 = time.perf_counter()
        predictor = random_predictor(args.model, args.size, args.backend)
        runs = {}
        if "keyframes" in args.runs:
            runs["keyframes"] = time_video(predictor, video, detector, args.keyframe_every, args.frames,
                                           args.frame_batch)
            _log(f"key-frame run, frame batch {args.frame_batch}: {runs['keyframes']['fps']:.2f} frames/s")
        if "keyframes_fb1" in args.runs:
            runs["keyframes_fb1"] = time_video(predictor, video, detector, args.keyframe_every, args.frames, 1)
            _log(f"key-frame run, frame by frame: {runs['keyframes_fb1']['fps']:.2f} frames/s")
        if "every_frame" in args.runs:
            runs["every_frame"] = time_video(predictor, video, detector, 1, args.every_frame_frames)
            _log(f"every-frame run: {runs['every_frame']['fps']:.2f} frames/s")
        startup_s = time.perf_counter() - t0 - sum(r["wall_s"] for r in runs.values())
        _log("timing the networks alone")
        crops = []
        for _, _, rgb in _frames(video, 10):
            for f in detector.detect(rgb)[:1]:
                crops.append(alignment.warp(rgb, alignment.alignment_matrix_from_points(f.points)))
        nets = network_ms(np.stack(crops), args.size, args.repeats)
    result = {"size": args.size, "model": args.model, "video": "640x360 synthetic single face, 30 fps",
              "backend": predictor.backend, "dtype": predictor.dtype,
              "startup_s": round(startup_s, 1),   # Predictor, warm-ups (compile or export + runtime compile)
              "keyframe_every": args.keyframe_every,
              "runs": runs, "network_ms_per_face_batch1": nets,
              "machine": {**timing.machine_info(), "platform": platform.platform(),
                          "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
              "date": time.strftime("%Y-%m-%d %H:%M")}
    if args.refine_checkpoint:
        result["refinement"] = refine_errors(args.refine_checkpoint, detector, args.refine_faces)
        if args.picture:
            overlay_picture(args.refine_checkpoint, detector, args.picture)
    print(f"predict benchmark, {args.size} {args.model} ({predictor.backend} {predictor.dtype}), 640x360 video "
          f"({os.cpu_count()} CPUs, load "
          f"{load_before[0]:.1f} -> {os.getloadavg()[0]:.1f})")
    print(f"{'run':<14} {'frames':>6} {'fps':>6} {'decode':>8} {'detect':>8} {'align':>8} {'network':>8}  (ms/frame)")
    for name, r in runs.items():
        ms = r["ms_per_frame"]
        print(f"{name:<14} {r['frames']:>6} {r['fps']:>6.2f} {ms['decode']:>8.1f} {ms['detect']:>8.1f} "
              f"{ms['align']:>8.1f} {ms['network']:>8.1f}")
    print("network alone, ms per face (batch 1): " + ", ".join(
        f"{k} {v:.1f}" if v is not None else f"{k} n/a" for k, v in nets.items()))
    if "refinement" in result:
        _print_refinement(result["refinement"])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
