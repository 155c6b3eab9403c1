"""``algrnet run-arrays``: run a checkpoint in eval mode on an .npy array of cropped, scaled faces."""
from __future__ import annotations

import argparse
import os

import numpy as np

from algrnet_jax.errors import UserError
from algrnet_jax.fileio import check_writable_dir

NPY_MAGIC = b"\x93NUMPY"    # the first bytes of every .npy file (numpy.lib.format)


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
    parser.add_argument("--no-range-check", action="store_true",
                        help="run even when --input holds values outside [-1, 1] (e.g. unscaled 0..255 pixels)")


def output_path(out: str, input_path: str) -> str:
    """The file ``--out`` names: ``DIR/<input stem>.npz`` for an existing directory, else ``out`` with
    ``.npz`` appended when missing (what ``np.savez`` writes)."""
    if os.path.isdir(out):
        return os.path.join(out, os.path.splitext(os.path.basename(input_path))[0] + ".npz")
    return out if out.endswith(".npz") else out + ".npz"


def load_faces(path: str) -> np.ndarray:
    """The array of a NumPy ``.npy`` file (no pickled objects).

    Raises:
      UserError: the file is not a ``.npy`` array (a photo, a video, an ``.npz``, text, ...), saying what
        the command expects and which command takes photos and videos.
    """
    with open(path, "rb") as f:
        magic = f.read(len(NPY_MAGIC))
    if magic != NPY_MAGIC:
        raise UserError(f"run-arrays: {path} is not a NumPy .npy file; --input takes a float array of aligned, "
                        "cropped faces scaled to [-1, 1] (np.save), NCHW [B, 3, C, C] or NHWC [B, C, C, 3]; "
                        "for photos and videos use `algrnet predict`")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        if "pickle" in str(e):  # an object array: it needs pickle, which is not loaded from files
            raise UserError(f"run-arrays: {path} holds Python objects, not a numeric array; save the faces as "
                            "a float array (np.save of a float32 array)") from e
        raise UserError(f"run-arrays: cannot read {path} as a .npy array ({e})") from e


def run(args: argparse.Namespace) -> int:
    # jax, the model and orbax load here, not when the CLI builds its parser (``algrnet --help`` stays fast).
    from algrnet_jax.inference import Predictor, check_finite, check_range, to_nhwc
    from algrnet_jax.checkpoints import CheckpointError

    if not os.path.isfile(args.input):
        raise UserError(f"run-arrays: input file {args.input} does not exist")
    if args.batch_size < 1:
        raise UserError(f"run-arrays: --batch-size must be >= 1, got {args.batch_size}")
    out_dir = check_writable_dir(os.path.dirname(os.path.abspath(output_path(args.out, args.input))), "--out")
    x = load_faces(args.input)
    try:
        # the JAX forward in float32: these arrays are compared with the PyTorch release's
        predictor = Predictor.from_checkpoint(args.checkpoint, batch_size=args.batch_size, backend="jax")
    except CheckpointError as e:
        raise UserError(f"run-arrays: {e}") from e
    try:
        images, layout = to_nhwc(x, predictor.crop_size, args.layout, name=args.input)
        if images.shape[0] == 0:
            raise ValueError(f"{args.input}: holds no faces (shape {x.shape})")
        if not args.no_range_check:
            check_range(images, args.input)
        outputs = predictor.run_arrays(images, args.batch_size)
        check_finite(outputs, args.checkpoint)
    except ValueError as e:
        raise UserError(f"run-arrays: {e}") from e
    out = output_path(args.out, args.input)
    os.makedirs(out_dir, exist_ok=True)
    np.savez(out, **outputs)
    print(f"run-arrays: {images.shape[0]} faces ({layout.upper()}) through {predictor.config.name} -> {out}: "
          + ", ".join(f"{k} {list(v.shape)}" for k, v in outputs.items()))
    return 0
