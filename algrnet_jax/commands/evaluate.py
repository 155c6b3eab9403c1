"""``algrnet eval``: evaluate a checkpoint on a fold and print the tables beside the paper's.

A training work directory is evaluated at its LAST checkpoint; ``--best`` takes the one the trainer kept for
the best VALIDATION mean F1 (an error when the run had no validation part). Nothing is selected on the
test part.

Examples::

    algrnet eval --checkpoint runs/bp4d_f1 --dataset bp4d --fold 1 --out runs/bp4d_f1/eval
    algrnet eval --checkpoint runs/bp4d_f1 --best --out runs/bp4d_f1/eval_best
"""
from __future__ import annotations

import argparse

from algrnet_jax.commands import config_args
from algrnet_jax.fileio import check_writable_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="orbax checkpoint directory (a step or a run directory)")
    parser.add_argument("--dataset", default=None, choices=config_args.DATASETS,
                        help="tfds dataset (default: the checkpoint's)")
    parser.add_argument("--builder-config", default=None, help="tfds builder config (default: the checkpoint's)")
    parser.add_argument("--fold", type=int, choices=config_args.FOLDS, default=None,
                        help=f"{config_args.fold_help()} (default: the checkpoint's)")
    parser.add_argument("--data-dir", default=None, help="tfds data directory (default: the checkpoint's)")
    parser.add_argument("--split", default=None, help="tfds split expression instead of the fold's test part")
    parser.add_argument("--batch-size", type=int, default=None, help="eval batch size (default: the checkpoint's)")
    parser.add_argument("--out", default=None, help="write eval.json and eval.md here")
    parser.add_argument("--best", action="store_true",
                        help="a training work directory: its validation-best checkpoint instead of the last one")


def run(args: argparse.Namespace) -> int:
    # The library (JAX, TF) is imported here, not at the top: the command line imports every command module to
    # build its --help.
    if args.out is not None:
        check_writable_dir(args.out, "--out")      # before the evaluation, not after it
    from algrnet_jax import evaluation, experiment, reporting

    # Every user error (no checkpoint, corrupt checkpoint, data not built, no such split, AUs the data lacks,
    # bad config values) is a UserError: one message, exit 2 (``algrnet --debug`` for the traceback).
    select = experiment.VAL_BEST if args.best else experiment.LAST
    try:
        result = experiment.evaluate_selected(
            args.checkpoint, select, dataset=args.dataset, builder_config=args.builder_config, fold=args.fold,
            data_dir=args.data_dir, split=args.split, eval_batch_size=args.batch_size)
    except evaluation.NonFiniteOutputError as e:   # a diverged checkpoint: no table, no eval.json
        raise evaluation.NonFiniteOutputError(f"checkpoint {args.checkpoint}: {e}") from e
    if result["checkpoint"] != str(args.checkpoint):
        print(f"evaluated the {'validation-best' if args.best else 'last'} checkpoint of {args.checkpoint}: "
              f"{result['checkpoint']}")
    paths = reporting.report_result(result, args.out)
    for kind, written in paths.items():
        print(f"wrote {kind}: {written}")
    return 0
