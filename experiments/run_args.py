"""The command line of the scripts that examine trained runs (``relation_use``, ``saliency``, ``region_moves``):
run directories, which checkpoint of each (``--select``, as the run reported it), a JSON ``--out``, ``--verbose``;
checked before any work; and the writing of that ``--out``."""
from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any

from algrnet_jax import experiment, verbosity
from algrnet_jax.errors import UserError


def run_parser(prog: str, doc: str, out_help: str) -> argparse.ArgumentParser:
    """A parser for ``prog`` (``python -m experiments.<prog>``) whose description is ``doc``'s first paragraph."""
    parser = argparse.ArgumentParser(prog=f"python -m experiments.{prog}", description=doc.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="training work directories (e.g. runs/x/algrnet/seed0/fold1)")
    parser.add_argument("--select", default=experiment.LAST, choices=experiment.SELECTIONS,
                        help="the checkpoint of each run that is examined (as the run reported it)")
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--force", action="store_true", help="replace --out (and what is written beside it) if it exists")
    verbosity.add_argument(parser)
    return parser


def parse_run_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parses ``argv``, applies ``--verbose``, and checks that ``--out`` is a new .json path (or ``--force``) and
    every run a directory."""
    args = parser.parse_args(argv)
    verbosity.configure(args.verbose)
    if not args.out.endswith(".json"):
        raise UserError(f"--out {args.out}: give a .json path")
    if pathlib.Path(args.out).exists() and not args.force:
        raise UserError(f"--out {args.out} exists; give another path, or --force to replace it")
    for run in args.runs:
        if not pathlib.Path(run).is_dir():
            raise UserError(f"{run}: not a directory (give training work directories)")
    return args


def write_json(out: str | pathlib.Path, data: Any) -> pathlib.Path:
    """Writes ``data`` as indented JSON to ``out`` (its folder made if missing); returns the path."""
    path = pathlib.Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path
