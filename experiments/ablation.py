"""Ablation study (the paper's Tables V and VI): cross-validate each variant and tabulate.

Variants (``algrnet_jax.configs``): ``wo_full`` (no Ada, S-B, F&R), ``wo_fr``, ``wo_sb``, ``w_bi``
(plain ConvBiLSTM), ``wo_ada`` and the full ``algrnet``. Each runs ``experiments.cross_validation``
in ``<workdir>/<variant>``; the table shows our mean-over-folds F1 (final prediction) per variant beside
the paper's Table VI (BP4D AUs) or Table V (DISFA AUs). Each fold reports its LAST checkpoint, or with
``--select val_best`` the one with the best validation mean F1 (never one selected on the test part); the
table title says which. Writes ``<workdir>/ablation.json`` / ``.md``.

Examples::

    python -m experiments.ablation --dataset disfa --paper --workdir runs/disfa_ablation
    python -m experiments.ablation --size small --workdir runs/synth_ablation --folds 1 \
        --variants wo_full algrnet --config.train.num_epochs=2
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from algrnet_jax import configs, experiment, reporting, verbosity
from algrnet_jax.configs.validate import validate_config
from algrnet_jax.errors import run_main
from algrnet_jax.commands import config_args
from experiments import cross_validation

# variant config name -> the paper's row name (Tables V / VI), in the paper's order (from the config files).
VARIANTS: dict[str, str] = configs.ABLATION_ROWS


def ablation_table(aggregates: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Tables V/VI layout: one row per variant (ours, mean of folds, final) beside the paper's rows."""
    first = next(iter(aggregates.values()))
    columns = list(first["aus"])
    rows = [reporting.f1_row(f"ours {VARIANTS[name]}", columns, agg["predictions"]["final"]["mean_f1_per_au"],
                              agg["predictions"]["final"]["mean_f1"]) for name, agg in aggregates.items()]
    folds = ", ".join(str(f) for f in first["folds"])
    selected = cross_validation.SELECTION_LABELS[first.get("selection", experiment.LAST)]
    table = reporting.f1_table(f"Ablation, AU F1 (%) on {first['dataset']}/{first['builder_config']}, folds {folds}, "
                               f"{selected}", columns, rows, dataset=first["dataset"], label_set=first["label_set"],
                                paper=reporting.PAPER_ABLATION_TABLES.get(first["label_set"]))
    return [table]


def run_ablation(args: argparse.Namespace, variants: Sequence[str]) -> dict[str, Any]:
    """Cross-validates each variant (config from ``args``; ``args.select``: the checkpoint of each fold that
    is reported, ``"last"`` or ``"val_best"``) and writes ablation.json / ablation.md."""
    workdir = pathlib.Path(args.workdir)
    variant_configs = {name: validate_config(cross_validation.config_from_args(args, name=name), f"config {name}")
                       for name in variants}               # every variant checked before the first trains
    for config in variant_configs.values():
        experiment.check_selection(config, args.select)
    aggregates = {}
    for name, config in variant_configs.items():
        aggregates[name] = cross_validation.run_cross_validation(config, workdir / name, folds=args.folds,
                                                                 resume=args.resume, select=args.select)
    tables = ablation_table(aggregates)
    reporting.print_tables(tables)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "ablation.json").write_text(json.dumps(aggregates, indent=1))
    (workdir / "ablation.md").write_text("\n".join(reporting.markdown_table(t) for t in tables))
    print(f"wrote {workdir / 'ablation.md'}")
    return aggregates


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.ablation", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cross_validation.add_config_arguments(parser)
    parser.add_argument("--workdir", required=True, help="output directory (one sub-directory per variant)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--folds", type=int, nargs="+", default=list(config_args.FOLDS), choices=config_args.FOLDS)
    parser.add_argument("--resume", action="store_true")
    cross_validation.add_select_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = configs.parse_args(build_parser(), argv)
    verbosity.configure(args.verbose)
    run_ablation(args, args.variants)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, "ablation"))
