"""The ``algrnet`` command line. Thin: it parses arguments and calls the library.

Each subcommand lives in ``algrnet_jax/commands/<module>.py`` and exposes
``add_arguments(parser)`` (cheap imports only, so ``--help`` is fast) and ``run(args) -> int``.
Config overrides are one mechanism for every subcommand (``algrnet_jax.configs.overrides``):
``--config.train.lr=0.02`` or ``--set train.lr=0.02``, typed by the field. Third-party logs (TensorFlow,
absl, tfds, orbax) are hidden unless ``--verbose`` or ``ALGRNET_VERBOSE=1`` (``algrnet_jax.verbosity``).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from algrnet_jax import verbosity
from algrnet_jax.configs import overrides
from algrnet_jax.errors import EXIT_USER_ERROR, UserError

# (words, module, one-line help). Nested words ("data", "build") become nested subcommands.
COMMANDS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("data", "build"), "data_build", "build a tfds dataset of the project (data_pipelines.builders)"),
    (("data", "show"), "data_show", "write a PNG grid of one input-pipeline batch with landmarks"),
    (("data", "stats"), "data_stats", "per-fold frame counts and AU base rates, with a plot"),
    (("train",), "train", "train a model (data-parallel over all local devices)"),
    (("eval",), "evaluate", "evaluate a checkpoint on a fold; tables beside the paper's"),
    (("convert-jaanet",), "convert_jaanet", "convert released PyTorch JAA-Net state_dicts to an orbax checkpoint"),
    (("run-arrays",), "run_arrays", "run a checkpoint in eval mode on an .npy array of cropped faces"),
    (("export",), "export", "write a checkpoint's eval forward as an ONNX file (docs/usage_export.md)"),
    (("predict",), "predict", "AU occurrence per face per frame of photos, folders and videos (CSV, overlays)"),
    (("check-step",), "check_step", "one float64 training step against a PyTorch JAA-Net reference step"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="algrnet", description="ALGRNet / JAA-Net facial action unit recognition in JAX.")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks for user errors (also ALGRNET_DEBUG=1)")
    verbosity.add_argument(parser)
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {(): parser.add_subparsers(dest="command", required=True)}
    for words, module, help_text in COMMANDS:
        for depth in range(1, len(words)):
            prefix = words[:depth]
            if prefix not in groups:
                sub = groups[prefix[:-1]].add_parser(prefix[-1], help=f"{prefix[-1]} subcommands")
                groups[prefix] = sub.add_subparsers(dest=f"command_{depth}", required=True)
        p = groups[words[:-1]].add_parser(words[-1], help=help_text, description=help_text)
        mod = importlib.import_module(f"algrnet_jax.commands.{module}")
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    for group in groups.values():   # a missing subcommand is reported by its choices, not by its dest
        group.metavar = "{" + ",".join(group.choices) + "}"
    return parser


def _global_flags(argv: Sequence[str]) -> list[str]:
    """The options before the subcommand (the first word that is not an option)."""
    out = []
    for a in argv:
        if not a.startswith("-"):
            break
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Before any command module is imported: TensorFlow reads its C++ log level at import.
    verbosity.configure(verbosity.FLAG in _global_flags(argv))
    args = overrides.parse_args(build_parser(), argv)
    debug = args.debug or os.environ.get("ALGRNET_DEBUG", "") not in ("", "0")
    try:
        return int(args._module.run(args) or 0)
    except UserError as e:
        if debug:
            raise
        print(f"algrnet: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
