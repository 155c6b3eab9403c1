"""``algrnet train``: train a model, data-parallel over every local device (and every host with --distributed).

Examples::

    algrnet data build synth_au --config bp4d_tiny
    algrnet train --config algrnet --size tiny --dataset synth_au --builder-config bp4d_tiny --fold 1 \\
        --workdir runs/synth_tiny --config.train.num_epochs=2
    algrnet train --config algrnet --dataset bp4d --fold 1 --workdir runs/bp4d_f1 --resume
"""
from __future__ import annotations

import argparse
import json
import sys

import ml_collections

from algrnet_jax.commands import config_args
from algrnet_jax.configs.validate import validate_config
from algrnet_jax.errors import UserError
from algrnet_jax.fileio import check_writable_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config_args.add_config_arguments(parser)
    parser.add_argument("--fold", type=int, choices=config_args.FOLDS, required=True, help=config_args.fold_help())
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, TensorBoard summaries")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in --workdir; a workdir without one starts from "
                             "scratch (with a note)")
    parser.add_argument("--resume-required", action="store_true",
                        help="as --resume, but an error when --workdir holds no checkpoint (a new or mistyped "
                             "workdir) instead of starting from scratch")
    parser.add_argument("--resume-from-previous", action="store_true",
                        help="with --resume: if the latest checkpoint cannot be read, use the previous one")
    parser.add_argument("--no-eval", action="store_true", help="no evaluation (and no best checkpoint) at epoch ends")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--distributed", action="store_true",
                        help="multi-host: call jax.distributed.initialize() first (cluster auto-detected)")
    parser.add_argument("--coordinator-address", default=None, help="with --distributed: host:port of process 0")
    parser.add_argument("--num-processes", type=int, default=None, help="with --distributed")
    parser.add_argument("--process-id", type=int, default=None, help="with --distributed")


def build_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
    """The config of the command line: named config, data flags, then the overrides (``configs.apply_overrides``)."""
    return config_args.config_from_args(args)


def check_resume_target(workdir: str, *, required: bool) -> None:
    """``--resume`` on a work directory without a committed checkpoint: an error with ``required``
    (``--resume-required``), else a note on stderr that the run starts from scratch."""
    from algrnet_jax import checkpoints   # orbax: not at --help time

    if checkpoints.last_checkpoint(workdir) is not None:
        return
    why = checkpoints.no_checkpoint_reason(workdir)
    if required:
        raise UserError(f"--resume-required: {why}; check --workdir (or drop --resume-required to start a new run)")
    print(f"algrnet train: --resume: {why}; starting from scratch", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    config = build_config(args)
    validate_config(config, "config (named config, flags and --set overrides)")
    check_writable_dir(args.workdir, "--workdir")
    resume = args.resume or args.resume_required
    if resume:
        check_resume_target(args.workdir, required=args.resume_required)
    # The trainer (JAX, TF) is imported here, not at the top: the command line imports every command module to
    # build its --help.
    from algrnet_jax import checkpoints, evaluation, experiment
    from algrnet_jax.training import loop, parallel
    if args.distributed:
        parallel.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    try:
        result = experiment.train_and_evaluate(config, args.workdir, resume=resume,
                                               resume_from_previous=args.resume_from_previous,
                                               evaluate=not args.no_eval, progress=not args.no_progress)
    except loop.NonFiniteLossError as e:
        print(f"algrnet train: {e}", file=sys.stderr)
        return 1
    except evaluation.NonFiniteOutputError as e:   # finite on the training batch, not on the evaluated part
        good = checkpoints.last_checkpoint(args.workdir) or "none"
        print(f"algrnet train: {e}. Stopping; this step was not saved. Last good checkpoint: {good}. Lower "
              "train.lr (--set train.lr=...), then rerun with --resume.", file=sys.stderr)
        return 1
    except UserError:
        raise
    except (FileNotFoundError, ValueError) as e:   # the data layer: dataset not built, labels do not fit, ...
        raise UserError(str(e)) from e
    summary = {k: result[k] for k in ("step", "epoch", "best_mean_f1", "best_step", "best_checkpoint",
                                      "last_checkpoint", "interrupted", "resumed_from_step", "workdir")}
    for part, evaluated in result["evaluations"].items():
        summary[f"{part}_mean_f1"] = evaluated.get("mean_f1")
    print(json.dumps(summary, indent=2))
    if result["interrupted"]:
        print(f"algrnet train: stopped by {result['interrupted']} at step {result['step']}; checkpoint saved, "
              "continue with --resume", file=sys.stderr)
    return 0
