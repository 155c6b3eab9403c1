"""``algrnet run-arrays``: run a checkpoint in eval mode on an .npy array of cropped, scaled faces."""
from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "input: float .npy of faces already aligned, cropped to the checkpoint's crop size (176 for paper\n"
        "models) and scaled to [-1, 1]; NCHW [B, 3, C, C] as the PyTorch release (and the parity fixture)\n"
        "or NHWC [B, C, C, 3].\n"
        "output .npz (PyTorch JAA-Net names and layouts): landmarks [B, 98] (x1, y1, ...), initial_au_maps\n"
        "[B, n, M, M], refined_au_maps [B, n, M-8, M-8], au_prob / local_au_prob [B, n], au_logprob /\n"
        "local_au_logprob [B, 2, n]; plus final_au_prob [B, n] (and offsets, scales, grade_logprob)\n"
        "where the model has them.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (train or convert-jaanet output)")
    parser.add_argument("--input", required=True, help=".npy array of faces, NCHW or NHWC (see below)")
    parser.add_argument("--out", required=True, help="output .npz")
    parser.add_argument("--layout", choices=("auto", "nchw", "nhwc"), default="auto",
                        help="layout of --input: nchw [B,3,C,C], nhwc [B,C,C,3], or auto (from where the "
                             "3 channels are; default)")
    parser.add_argument("--batch-size", type=int, default=16, help="faces per forward pass (default 16)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from algrnet_jax.interop.arrays import run_arrays, to_nhwc
    from algrnet_jax.training.checkpoint import load_for_inference

    if not os.path.isfile(args.input):
        raise SystemExit(f"run-arrays: input file {args.input} does not exist")
    try:
        x = np.load(args.input, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise SystemExit(f"run-arrays: cannot read {args.input} as a .npy array ({e})") from e
    config, variables = load_for_inference(args.checkpoint)
    try:
        images, layout = to_nhwc(x, int(config.crop_size), args.layout, name=args.input)
    except ValueError as e:
        raise SystemExit(f"run-arrays: {e}") from e
    outputs = run_arrays(config, variables, images, args.batch_size)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    np.savez(args.out, **outputs)
    print(f"run-arrays: {images.shape[0]} faces ({layout.upper()}) through {config.name} -> {args.out}: "
          + ", ".join(f"{k} {list(v.shape)}" for k, v in outputs.items()))
    return 0
