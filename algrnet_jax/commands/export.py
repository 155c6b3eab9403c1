"""``algrnet export``: write a checkpoint's eval forward as an ONNX file (weights inside)."""
from __future__ import annotations

import argparse
import os

from algrnet_jax.errors import UserError
from algrnet_jax.fileio import atomic_path, check_writable_dir

FORMATS = ("onnx",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "The ONNX graph takes one input, images: float32 [B, C, C, 3] (NHWC, aligned faces cropped to the\n"
        "checkpoint's crop size and scaled to [-1, 1], as `algrnet run-arrays --layout nhwc` takes them), and\n"
        "has one output per model output (landmarks [B, 49, 2], au_prob [B, n], ...), named after it; an output\n"
        "equal to another (JAA-Net's final_au_prob is its au_prob) appears once. B is fixed (--batch-size).\n"
        "Needs the export extra: pip install -r requirements-export.txt. See docs/usage_export.md.")
    parser.add_argument("checkpoint", help="checkpoint directory (train or convert-jaanet output)")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="file format (default onnx)")
    parser.add_argument("--out", required=True, help="output file (.onnx)")
    parser.add_argument("--batch-size", type=int, default=1, help="faces per call of the exported graph (default 1)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def run(args: argparse.Namespace) -> int:
    from algrnet_jax import export
    from algrnet_jax.checkpoints import CheckpointError, load_for_inference

    if args.batch_size < 1:
        raise UserError(f"export: --batch-size must be >= 1, got {args.batch_size}")
    if not _have("jax2onnx", "onnx"):
        raise UserError("export: the ONNX export needs jax2onnx and onnx; install the export extra "
                        "(pip install -r requirements-export.txt)")
    out = os.path.abspath(args.out)
    if os.path.isdir(out):
        raise UserError(f"export: --out {args.out} is a directory; give a file name such as model.onnx")
    if os.path.exists(out) and not args.force:
        raise UserError(f"export: --out {args.out} exists; pass --force to overwrite it")
    check_writable_dir(os.path.dirname(out), "--out")
    try:
        config, variables = load_for_inference(args.checkpoint)
    except CheckpointError as e:
        raise UserError(f"export: {e}") from e
    from algrnet_jax.models.networks import create_model

    try:
        data, outputs = export.export_onnx(create_model(config), variables, int(config.crop_size), args.batch_size)
    except export.ExportError as e:
        raise UserError(f"export: {args.checkpoint}: {e}") from e
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    print(f"export: {config.name} ({config.size}) eval forward -> {out} ({len(data) / 2 ** 20:.1f} MiB): "
          f"images [{args.batch_size}, {config.crop_size}, {config.crop_size}, 3] -> {', '.join(sorted(set(outputs.values())))}")
    return 0


def _have(*modules: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)
