"""``algrnet predict``: AU occurrence (or paralysis grade) per face per frame of photos, folders and videos."""
from __future__ import annotations

import argparse
import sys

from algrnet_jax import fileio
from algrnet_jax.errors import UserError

EXIT_INTERRUPTED = 130    # the shell's code for a command ended by SIGINT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  algrnet predict --checkpoint runs/main_job/train photo.jpg --out preds --overlay\n"
        "  algrnet predict --checkpoint ckpt videos/ --out preds --skip-existing\n"
        "outputs per input under --out: NAME.csv (OpenFace-style columns, docs/usage_predict.md),\n"
        "NAME.overlay.jpg|mp4 (--overlay), NAME.attention_K.png (--attention, photos), and for videos\n"
        "NAME.summary.json and NAME.probs.png; NAME is the input's path relative to the folder holding every\n"
        "input. Exit 0 when every input was processed, 1 when some failed (listed at the end), 2 for a usage\n"
        "error (also: another run holds --out), 130 when interrupted.")
    parser.add_argument("inputs", nargs="+", help="image files, video files or folders (searched recursively)")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (train or convert-jaanet output)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--overlay", action="store_true", help="write annotated images / mp4 videos")
    parser.add_argument("--attention", action="store_true", help="per-AU attention maps for photos (PNG)")
    parser.add_argument("--passes", type=int, choices=(1, 2), default=2,
                        help="2 (default): re-align from the predicted landmarks and run again; 1: detector "
                             "points only")
    parser.add_argument("--keyframe-every", type=int, default=10,
                        help="videos: run the detector every N frames (and when a tracked face is lost); "
                             "1 = every frame (default 10)")
    parser.add_argument("--frame-batch", type=int, default=0,
                        help="videos: frames run through the network together; tracked frames of a batch are aligned "
                             "from the landmarks before it (1 = from the previous frame's). 0 (default) = auto: "
                             "tracked frames 1 on CPU, 8 on GPU; --aligned / --landmarks videos 8")
    parser.add_argument("--track-threshold", type=float, default=0.5,
                        help="videos: re-detect when a tracked face's O-Net score falls below this (default 0.5)")
    parser.add_argument("--threshold", type=float, default=0.5, help="occurrence threshold for AUxx_c (default 0.5)")
    parser.add_argument("--max-faces", type=int, default=0, help="at most N faces per frame, best first (0 = all)")
    parser.add_argument("--min-face-size", type=int, default=40, help="ignore faces smaller than N pixels (default 40)")
    parser.add_argument("--landmarks", metavar="FILE",
                        help="your landmarks instead of detection: lines 'KEY x1 y1 ... xP yP', P = 49, 66 or 68, "
                             "KEY = image file name or video frame index")
    parser.add_argument("--aligned", action="store_true",
                        help="inputs (photos and videos) are already aligned 200x200 faces (no detection)")
    parser.add_argument("--skip-existing", action="store_true", help="skip inputs whose CSV exists (resume)")
    parser.add_argument("--batch-size", type=int, default=16, help="largest batch of faces per forward (default 16)")
    parser.add_argument("--backend", default="auto", choices=("auto", "jax", "openvino", "onnxruntime"),
                        help="what runs the network: auto (default) = OpenVINO bfloat16 on a CPU with bfloat16 "
                             "units when the export extra is installed, else the JAX forward (docs/usage_export.md)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="network precision (auto: bfloat16 only where the CPU has bfloat16 units)")


def run(args: argparse.Namespace) -> int:
    try:
        return _predict(args)
    except KeyboardInterrupt:
        # Ctrl-C, while loading or predicting: the unfinished input's temporary files are already removed (their
        # writers' cleanup) and the --out lock released; finished inputs are kept, so --skip-existing resumes.
        print("predict: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _predict(args: argparse.Namespace) -> int:
    # OpenCV, jax, the model and orbax load here, not when the CLI builds its parser (``--help`` stays fast).
    from algrnet_jax import export, predict
    from algrnet_jax.inference import Predictor
    from algrnet_jax.checkpoints import CheckpointError

    if args.frame_batch < 0:
        raise UserError(f"predict: --frame-batch must be >= 0 (0 = auto), got {args.frame_batch}")
    for name in ("keyframe_every", "batch_size", "min_face_size"):
        if getattr(args, name) < 1:
            raise UserError(f"predict: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_faces < 0:
        raise UserError(f"predict: --max-faces must be >= 0, got {args.max_faces}")
    if not 0.0 <= args.threshold <= 1.0:
        raise UserError(f"predict: --threshold must be in [0, 1], got {args.threshold}")
    if args.aligned and args.landmarks:
        raise UserError("predict: --aligned and --landmarks exclude each other")
    try:
        export.choose_backend(args.backend, args.dtype)
    except ValueError as e:
        raise UserError(f"predict: --backend {args.backend} --dtype {args.dtype}: {e}") from e
    fileio.check_writable_dir(args.out, "--out")
    landmarks = predict.read_landmarks(args.landmarks) if args.landmarks else None
    try:
        predictor = Predictor.from_checkpoint(args.checkpoint, batch_size=args.batch_size, backend=args.backend,
                                              dtype=args.dtype)
    except CheckpointError as e:
        raise UserError(f"predict: {e}") from e
    if args.attention and not predictor.task.branch_per_class:
        print(f"predict: --attention draws per-AU maps; this checkpoint's task is {predictor.task.title}, "
              "so none are written", file=sys.stderr)
    options = predict.Options(passes=args.passes, keyframe_every=args.keyframe_every, frame_batch=args.frame_batch,
                              track_threshold=args.track_threshold, threshold=args.threshold,
                              max_faces=args.max_faces, attention=args.attention, min_face_size=args.min_face_size)
    report = predict.run(predictor, args.inputs, out_dir=args.out, options=options, overlay=args.overlay,
                         skip_existing=args.skip_existing, landmarks=landmarks, aligned=args.aligned,
                         progress=True, keep_rows=False)
    for note in report.notes:
        print(f"predict: {note}", file=sys.stderr)
    t = report.timing
    csvs = [p for p in report.written if p.endswith(".csv")]
    seconds = max(t.decode + t.detect + t.align + t.network, 1e-9)
    rate = f", {t.frames / seconds:.2f} frames/s incl. compilation" if t.frames else ""
    print(f"predict: {len(csvs)} input(s) -> {args.out} ({t.frames} frames{rate})"
          + (f"; {len(report.skipped)} skipped (CSV exists)" if report.skipped else ""))
    if report.failures:
        print(f"predict: {len(report.failures)} failed:", file=sys.stderr)
        for f in report.failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    return 0
