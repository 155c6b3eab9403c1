"""3-fold subject-exclusive cross-validation: train and evaluate each fold, aggregate, print the table.

Fold k tests on part k and trains on the other two (``config.data.fold = k``). Each fold trains in
``<workdir>/fold<k>`` (``algrnet_jax.experiment.train_and_evaluate``); the checkpoint reported is its LAST
one (``--select last``, the default) or the one the trainer kept for the best mean F1 on the VALIDATION part
carved from the training subjects (``--select val_best``); never one selected on the test part. It is
evaluated on the test part, and the folds are aggregated two ways: the mean over folds of the per-AU F1
(what the paper reports) and the pooled F1 (counts summed over the folds, i.e. F1 of the concatenated
predictions). The tables and ``cv.json`` say which checkpoint was reported. Writes ``<workdir>/cv.json``
and ``<workdir>/cv.md``.

Examples::

    # paper setting on BP4D (licensed data built with ``algrnet data build bp4d``)
    python -m experiments.cross_validation --dataset bp4d --paper --workdir runs/bp4d_cv
    # a quick look on the synthetic set, small model, 2 epochs
    python -m experiments.cross_validation --config algrnet --size small --workdir runs/synth_cv \
        --config.train.num_epochs=2
"""
from __future__ import annotations

import argparse
import copy
import json
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from algrnet_jax import configs, evaluation, experiment, metrics, reporting, verbosity
from algrnet_jax.commands import config_args
from algrnet_jax.configs.validate import validate_config
from algrnet_jax.errors import run_main
from experiments import paper_configs

FOLDS = config_args.FOLDS


SELECTION_LABELS = {experiment.LAST: "last checkpoint", experiment.VAL_BEST: "validation-best checkpoint"}


def run_fold(config: Any, workdir: str | pathlib.Path, fold: int, *, resume: bool = False,
             select: str = experiment.LAST) -> dict[str, Any]:
    """Trains ``config`` with test part ``fold`` in ``workdir`` and evaluates the ``select``-ed checkpoint
    (``experiment.select_checkpoint``: ``"last"`` or ``"val_best"``) on the test part."""
    config = copy.deepcopy(config)
    config.data.fold = fold
    workdir = pathlib.Path(workdir)
    summary = experiment.train_and_evaluate(config, workdir, resume=resume)
    result = experiment.evaluate_selected(workdir, select)
    result["train_summary"] = _jsonable(summary)
    reporting.write_result(result, workdir)
    return result


def _jsonable(x: Any) -> Any:
    try:
        return json.loads(json.dumps(x, default=float))
    except (TypeError, ValueError):
        return str(x)


def aggregate(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregates fold results (``evaluate_variables`` dicts of the AU task, same AUs).

    Returns a dict with ``folds``, ``aus``, per prediction kind (``local``, ``integrated``, ``final``,
    ``all_present``) ``{"mean_f1_per_au", "std_f1_per_au", "mean_f1", "pooled_f1_per_au",
    "pooled_mean_f1"}`` in percent, the fold-mean landmark error / failure rate, and ``mean_f1``
    (final, mean over folds).
    """
    if not results:
        raise ValueError("no fold results to aggregate")
    aus = results[0]["aus"]
    if any(r["aus"] != aus for r in results):
        raise ValueError("fold results disagree on the AU list")
    out: dict[str, Any] = {"folds": [r["fold"] for r in results], "aus": aus, "dataset": results[0]["dataset"],
                           "selection": results[0].get("selection", experiment.LAST),
                           "builder_config": results[0]["builder_config"], "label_set": results[0]["label_set"],
                           "model": results[0].get("model"), "frames": sum(r["frames"] for r in results),
                           "predictions": {}}
    for key in results[0]["predictions"]:
        agg = metrics.aggregate_folds([[v / 100 for v in r["predictions"][key]["f1"]] for r in results],
                                      [r["predictions"][key]["counts"] for r in results])
        out["predictions"][key] = {k: (100 * v).tolist() if hasattr(v, "tolist") else 100 * v for k, v in agg.items()}
    out["mean_f1"] = out["predictions"]["final"]["mean_f1"]
    out["landmarks"] = {k: sum(r["landmarks"][k] for r in results) / len(results)
                        for k in ("mean_error_pct", "failure_rate_pct")}
    return out


def cv_tables(results: Sequence[Mapping[str, Any]], agg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Paper-layout tables: ours per fold, mean over folds and pooled, beside the paper's rows."""
    columns = list(agg["aus"])
    rows = [reporting.f1_row(f"ours fold {r['fold']} (final)", columns, r["predictions"]["final"]["f1"],
                              r["predictions"]["final"]["mean_f1"]) for r in results]
    for key in ("local", "integrated", "final"):
        p = agg["predictions"][key]
        rows.append(reporting.f1_row(f"ours mean of folds ({key})", columns, p["mean_f1_per_au"], p["mean_f1"]))
    p = agg["predictions"]["final"]
    rows.append(reporting.f1_row("ours pooled (final)", columns, p["pooled_f1_per_au"], p["pooled_mean_f1"]))
    p = agg["predictions"][evaluation.TRIVIAL]
    rows.append(reporting.f1_row("all-present baseline (mean of folds)", columns, p["mean_f1_per_au"], p["mean_f1"]))
    common = {"dataset": agg["dataset"], "label_set": agg["label_set"]}
    folds = ", ".join(str(f) for f in agg["folds"])
    selected = SELECTION_LABELS[agg.get("selection", experiment.LAST)]
    title = f"AU F1 (%), {agg['dataset']}/{agg['builder_config']}, folds {folds}, {selected}"
    return [reporting.f1_table(title, columns, rows, **common),
            reporting.landmark_table(agg["landmarks"]["mean_error_pct"], agg["landmarks"]["failure_rate_pct"],
                                     title=f"Landmark mean error (% of inter-ocular distance), mean of folds, {selected}",
                                     **common)]


def run_cross_validation(config: Any, workdir: str | pathlib.Path, *, folds: Sequence[int] = FOLDS,
                         resume: bool = False, select: str = experiment.LAST) -> dict[str, Any]:
    """Runs ``folds`` of ``config`` under ``workdir`` and writes cv.json / cv.md; returns the aggregate.

    ``select``: the checkpoint of each fold that is reported, ``"last"`` or ``"val_best"``."""
    validate_config(config)
    experiment.check_selection(config, select)      # before the first fold trains
    workdir = pathlib.Path(workdir)
    results = [run_fold(config, workdir / f"fold{k}", k, resume=resume, select=select) for k in folds]
    agg = aggregate(results)
    tables = cv_tables(results, agg)
    reporting.print_tables(tables)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "cv.json").write_text(json.dumps({"aggregate": agg, "folds": results}, indent=1))
    (workdir / "cv.md").write_text("\n".join(reporting.markdown_table(t) for t in tables))
    print(f"wrote {workdir / 'cv.md'} and {workdir / 'cv.json'}")
    return agg


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by the experiment runners to pick a config (``commands.config_args``; defaults: the
    ``algrnet`` config, size small, the synthetic set) and ``--paper``."""
    config_args.add_config_arguments(parser, config="algrnet", size="small", dataset="synth_au", data_dir="")
    verbosity.add_argument(parser)
    parser.add_argument("--paper", action="store_true",
                        help=f"the paper's setting of a real dataset ({', '.join(paper_configs.PAPER_DATASETS)}; "
                             "experiments.paper_configs)")


def config_from_args(args: argparse.Namespace, name: str | None = None) -> Any:
    """Builds a config from ``add_config_arguments`` arguments (``name`` replaces ``--config``)."""
    if args.paper:
        config = paper_configs.paper_config(args.dataset, name or args.config, data_dir=args.data_dir,
                                            builder_config=args.builder_config)
        return configs.apply_overrides(config, args.overrides)
    return config_args.config_from_args(args, name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.cross_validation",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--workdir", required=True, help="output directory (one sub-directory per fold)")
    parser.add_argument("--folds", type=int, nargs="+", default=list(config_args.FOLDS), choices=config_args.FOLDS)
    parser.add_argument("--resume", action="store_true", help="resume each fold from its latest checkpoint")
    add_select_argument(parser)
    return parser


def add_select_argument(parser: argparse.ArgumentParser) -> None:
    """``--select last|val_best``: the checkpoint of each fold that is reported."""
    parser.add_argument("--select", default=experiment.LAST, choices=experiment.SELECTIONS,
                        help="checkpoint of each fold to report: the last (default) or the one with the best mean F1 "
                             "on the validation part (needs data.val_fraction > 0); never selected on the test part")


def main(argv: list[str] | None = None) -> int:
    args = configs.parse_args(build_parser(), argv)
    verbosity.configure(args.verbose)
    run_cross_validation(config_from_args(args), args.workdir, folds=args.folds, resume=args.resume,
                         select=args.select)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, "cross_validation"))
