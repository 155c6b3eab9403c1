"""``algrnet convert-jaanet``: released PyTorch JAA-Net state_dicts -> an orbax inference checkpoint."""
from __future__ import annotations

import argparse
import os

from algrnet_jax import au_sets
from algrnet_jax.errors import UserError
from algrnet_jax.fileio import check_writable_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "reads <torch-dir>/{region_learning,align_net,local_attention_refine,local_au_net,global_au_feat,\n"
        "au_net}_<epoch>.pth (needs the torch extra: pip install -r requirements-torch.txt), maps every entry\n"
        "into the 'jaanet' model (paper size: crop 176, unit 8) and writes a checkpoint that `algrnet eval`\n"
        "and `algrnet run-arrays` load. Any unused, missing or mis-shaped entry is an error listing them.")
    parser.add_argument("--torch-dir", required=True, help="directory holding the six <module>_<epoch>.pth files")
    parser.add_argument("--epoch", required=True, help="epoch in the file names, e.g. 12 for au_net_12.pth")
    sizes = {len(aus): name for name, aus in au_sets.AU_SETS.items()}   # the label sets a release may have
    parser.add_argument("--au-num", type=int, required=True, choices=tuple(sizes),
                        help="number of AUs of the release: " + " or ".join(f"{n} ({name.upper()})"
                                                                           for n, name in sizes.items()))
    parser.add_argument("--out", required=True, help="output checkpoint directory")


def run(args: argparse.Namespace) -> int:
    # orbax, jax and the model load here, not when the CLI builds its parser (``algrnet --help`` stays fast).
    from algrnet_jax.interop.convert import ConversionError, convert_release, count_parameters
    from algrnet_jax.checkpoints import check_inference_target

    check_inference_target(args.out)          # before the (slow) conversion: never overwrite other data
    check_writable_dir(args.out, "--out")
    if not os.path.isdir(args.torch_dir):
        raise UserError(f"--torch-dir {args.torch_dir}: not a directory (the released <module>_<epoch>.pth files)")
    try:
        config, variables = convert_release(args.torch_dir, args.epoch, args.au_num, args.out)
    except ConversionError as e:
        raise UserError(str(e)) from e
    print(f"convert-jaanet: {args.torch_dir} epoch {args.epoch} -> {args.out} "
          f"(jaanet, {config.label_set}, {len(config.aus)} AUs, {count_parameters(variables):,} parameters)")
    return 0
