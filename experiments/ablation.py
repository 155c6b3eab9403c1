"""Ablation study (the paper's Tables V and VI): cross-validate each variant over seeds and tabulate.

Variants (``algrnet_jax.configs``): the ``jaanet`` baseline, ``wo_full`` (no Ada, S-B, F&R), ``wo_fr``, ``wo_sb``,
``w_bi`` (plain ConvBiLSTM), ``wo_ada`` and the full ``algrnet``. Each variant and seed runs
``experiments.cross_validation`` in ``<workdir>/<variant>/seed<s>`` (the seed sets ``train.seed``, i.e. the
initialisation, and ``data.shuffle_seed``; the data, the validation subjects and the budget are the same for all).
Each fold reports its LAST checkpoint, or with ``--select val_best`` the one with the best validation mean F1
(never one selected on the test part); the titles say which. Tables: per variant the mean over seeds of the
mean-over-folds F1 (final prediction) beside the paper's Table VI (BP4D AUs) or Table V (DISFA AUs), and
mean +- std over seeds of the mean F1 and of each AU's F1, and the paired differences between variants (the same
seed gives every variant the same initialisation of shared parts and the same data order, so per-seed
differences cancel the seed-to-seed spread; mean, 95% t interval, wins). Writes ``<workdir>/ablation.json``, ``.md`` and
``ablation.png`` (bar chart of mean F1 +- std with the seeds as dots, and per-AU F1).

Examples::

    python -m experiments.ablation --dataset disfa --paper --workdir runs/disfa_ablation
    # the synthetic study of docs/ablation_synthetic.md (7 variants x 3 seeds, ~80 min on 2 CPU cores)
    python -m experiments.ablation --size small --workdir runs/synth_ablation --folds 1 --seeds 0 1 2 \
        --select val_best --set data.batch_size=8 --set train.num_epochs=2
    # more seeds later, then one report over all of them (seeds must not repeat)
    python -m experiments.ablation --merge runs/a/ablation.json runs/b/ablation.json:jaanet,algrnet --workdir runs/ab
"""
from __future__ import annotations

import argparse
import copy
import json
import pathlib
import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from algrnet_jax import configs, experiment, reporting, verbosity
from algrnet_jax.configs.validate import validate_config
from algrnet_jax.errors import UserError, run_main
from algrnet_jax.commands import config_args
from experiments import cross_validation, report

# variant config name -> the paper's row name (Tables V / VI), in the paper's order (from the config files).
VARIANTS: dict[str, str] = configs.ABLATION_ROWS
# Baselines run beside the variants (not rows of the paper's ablation tables).
BASELINES: dict[str, str] = {"jaanet": "JAA-Net"}
CHOICES: dict[str, str] = {**BASELINES, **VARIANTS}
KINDS = ("local", "integrated", "final")


def seed_config(config: Any, seed: int) -> Any:
    """``config`` with ``train.seed`` (initialisation) and ``data.shuffle_seed`` set to ``seed``; a copy."""
    config = copy.deepcopy(config)
    config.train.seed = seed
    config.data.shuffle_seed = seed
    return config


def over_seeds(runs: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """One variant's cross-validation aggregates per seed -> mean +- std over seeds (sample std, ddof=1; 0 for a
    single seed) of the mean F1 and of each AU's F1, per prediction kind."""
    first = next(iter(runs.values()))
    out: dict[str, Any] = {"seeds": {str(s): agg for s, agg in runs.items()}, "aus": first["aus"],
                           "folds": first["folds"], "dataset": first["dataset"], "label_set": first["label_set"],
                           "builder_config": first["builder_config"],
                           "selection": first.get("selection", experiment.LAST), "predictions": {}}
    ddof = 1 if len(runs) > 1 else 0
    for kind in KINDS:
        means = np.array([agg["predictions"][kind]["mean_f1"] for agg in runs.values()])
        per_au = np.array([agg["predictions"][kind]["mean_f1_per_au"] for agg in runs.values()])
        out["predictions"][kind] = {"mean_f1": float(means.mean()), "std_f1": float(means.std(ddof=ddof)),
                                    "per_seed_mean_f1": means.tolist(),
                                    "mean_f1_per_au": per_au.mean(0).tolist(),
                                    "std_f1_per_au": per_au.std(0, ddof=ddof).tolist()}
    out["mean_f1"] = out["predictions"]["final"]["mean_f1"]
    out["std_f1"] = out["predictions"]["final"]["std_f1"]
    return out


def _title(first: Mapping[str, Any], what: str) -> str:
    folds = ", ".join(str(f) for f in first["folds"])
    selected = cross_validation.SELECTION_LABELS[first.get("selection", experiment.LAST)]
    seeds = len(first.get("seeds", {})) or 1
    return (f"Ablation, {what} on {first['dataset']}/{first['builder_config']}, folds {folds}, {selected}, "
            f"mean of {seeds} seed{'s' if seeds > 1 else ''}")


def ablation_table(aggregates: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Tables V/VI layout: one row per variant (ours, mean over seeds of the mean of folds, final) beside the
    paper's rows."""
    first = next(iter(aggregates.values()))
    columns = list(first["aus"])
    rows = [reporting.f1_row(f"ours {CHOICES[name]}", columns, agg["predictions"]["final"]["mean_f1_per_au"],
                              agg["predictions"]["final"]["mean_f1"]) for name, agg in aggregates.items()]
    table = reporting.f1_table(_title(first, "AU F1 (%)"), columns, rows, dataset=first["dataset"],
                               label_set=first["label_set"],
                               paper=reporting.PAPER_ABLATION_TABLES.get(first["label_set"]))
    return [table]


def spread_markdown(aggregates: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: mean +- std over seeds of the mean F1 per prediction kind with the per-seed values (and the
    training time), then each AU's F1 mean +- std (final prediction)."""
    first = next(iter(aggregates.values()))
    lines = [f"**{_title(first, 'mean F1 (%) +- std over seeds')}**", "",
             "| variant | final | integrated | local | final per seed | minutes |", "|---|---|---|---|---|---|"]
    for name, agg in aggregates.items():
        p = agg["predictions"]
        cells = [f"{p[k]['mean_f1']:.1f} +- {p[k]['std_f1']:.1f}" for k in ("final", "integrated", "local")]
        per_seed = ", ".join(f"{v:.1f}" for v in p["final"]["per_seed_mean_f1"])
        minutes = f"{agg['seconds'] / 60:.1f}" if "seconds" in agg else ""
        lines.append(f"| {CHOICES[name]} | {' | '.join(cells)} | {per_seed} | {minutes} |")
    aus = list(first["aus"])
    lines += ["", f"**{_title(first, 'per-AU F1 (%) +- std over seeds, final prediction')}**", "",
              "| variant | " + " | ".join(aus) + " |", "|---|" + "---|" * len(aus)]
    for name, agg in aggregates.items():
        p = agg["predictions"]["final"]
        lines.append(f"| {CHOICES[name]} | " + " | ".join(
            f"{m:.1f} +- {s:.1f}" for m, s in zip(p["mean_f1_per_au"], p["std_f1_per_au"])) + " |")
    return "\n".join(lines) + "\n"


def final_mean_f1(run: Mapping[str, Any]) -> float:
    """The final prediction's mean F1 of one seed's cross-validation aggregate."""
    return run["predictions"]["final"]["mean_f1"]


def paired_differences(aggregates: Mapping[str, Mapping[str, Any]], base: str,
                       value: Callable[[Mapping[str, Any]], float] = final_mean_f1) -> dict[str, dict[str, Any]]:
    """``value`` (default: the final mean F1) of each variant minus ``base``'s, seed by seed (the seeds both
    have): per variant the differences, their mean, sample std, the 95% t interval of the mean and the number
    of seeds it wins. ``value`` reads one seed's cross-validation aggregate."""
    base_runs = aggregates[base]["seeds"]
    out = {}
    for name, agg in aggregates.items():
        seeds = [s for s in agg["seeds"] if s in base_runs and name != base]
        if not seeds:
            continue
        d = np.array([value(agg["seeds"][s]) - value(base_runs[s]) for s in seeds])
        std = float(d.std(ddof=1)) if len(d) > 1 else 0.0
        half = float(stats.t.ppf(0.975, len(d) - 1)) * std / np.sqrt(len(d)) if len(d) > 1 else float("nan")
        mean = float(d.mean())
        out[name] = {"seeds": seeds, "diffs": d.tolist(), "mean": mean, "std": std,
                     "ci95": [mean - half, mean + half], "wins": int((d > 0).sum())}
    return out


def paired_markdown(aggregates: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: per variant, the paired difference of its final mean F1 to the first variant (the baseline) and
    to ``wo_full`` (what the adaptive / relational parts add), each as mean [95% t interval] and wins / seeds."""
    first = next(iter(aggregates.values()))
    bases = [b for b in dict.fromkeys([next(iter(aggregates)), "wo_full"]) if b in aggregates]
    paired = {b: paired_differences(aggregates, b) for b in bases}
    lines = [f"**{_title(first, 'paired difference of the final mean F1 (points), same seeds')}**", "",
             "| variant | " + " | ".join(f"minus {CHOICES[b]}: mean [95% CI] | wins" for b in bases) + " | per seed |",
             "|---|" + "---|---|" * len(bases) + "---|"]
    order = list(aggregates)
    for name in order[1:]:
        cells = []
        for b in bases:
            p = paired[b].get(name) if order.index(name) > order.index(b) else None
            cells += ["", ""] if p is None else [f"{p['mean']:+.1f} [{p['ci95'][0]:+.1f}, {p['ci95'][1]:+.1f}]",
                                                 f"{p['wins']}/{len(p['seeds'])}"]
        first_base = paired[bases[0]].get(name)
        per_seed = ", ".join(f"{v:+.1f}" for v in first_base["diffs"]) if first_base else ""
        lines.append(f"| {CHOICES[name]} | " + " | ".join(cells) + f" | {per_seed} |")
    lines += ["", f"_Per seed: the difference to {CHOICES[bases[0]]} (seeds in order). An interval that excludes 0 "
                  "is a difference the seeds support; one that contains 0 is not evidence either way._"]
    return "\n".join(lines) + "\n"


def plot_ablation(aggregates: Mapping[str, Mapping[str, Any]], out_png: str | pathlib.Path) -> None:
    """Bar chart: mean F1 (final) +- std over seeds per variant with each seed as a dot; per-AU F1 below."""
    plt = report._pyplot()
    names = list(aggregates)
    first = aggregates[names[0]]
    aus = list(first["aus"])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, 0.9 * len(aus) * len(names) / 4), 8))
    x = np.arange(len(names))
    final = [aggregates[n]["predictions"]["final"] for n in names]
    top.bar(x, [p["mean_f1"] for p in final], yerr=[p["std_f1"] for p in final], capsize=4, color="tab:blue",
            alpha=0.7)
    for i, p in enumerate(final):
        top.plot([i] * len(p["per_seed_mean_f1"]), p["per_seed_mean_f1"], "k.", ms=6)
    top.set_xticks(x, [CHOICES[n] for n in names])
    top.set_ylabel("mean F1 (%)")
    lows = [min(p["per_seed_mean_f1"]) for p in final]
    top.set_ylim(max(0.0, min(lows) - 10), min(100.0, max(p["mean_f1"] + p["std_f1"] for p in final) + 5))
    top.set_title(textwrap.fill(_title(first, "mean F1 +- std over seeds (dots: seeds)"), 110), fontsize=9)
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        p = aggregates[n]["predictions"]["final"]
        bottom.bar(np.arange(len(aus)) + (i - (len(names) - 1) / 2) * width, p["mean_f1_per_au"], width,
                   yerr=p["std_f1_per_au"], capsize=1, label=CHOICES[n])
    bottom.set_xticks(np.arange(len(aus)), aus)
    bottom.set_ylabel("F1 (%)")
    bottom.legend(fontsize=7, ncol=min(len(names), 4))
    bottom.set_title("per-AU F1 (final prediction), mean over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def run_ablation(args: argparse.Namespace, variants: Sequence[str]) -> dict[str, Any]:
    """Cross-validates each variant for each seed of ``args.seeds`` (config from ``args``; ``args.select``: the
    checkpoint of each fold that is reported, ``"last"`` or ``"val_best"``) and writes ablation.json / .md /
    .png."""
    workdir = pathlib.Path(args.workdir)
    variant_configs = {name: validate_config(cross_validation.config_from_args(args, name=name), f"config {name}")
                       for name in variants}               # every variant checked before the first trains
    for config in variant_configs.values():
        experiment.check_selection(config, args.select)
    aggregates = {}
    for name, config in variant_configs.items():
        t0 = time.time()
        runs = {seed: cross_validation.run_cross_validation(seed_config(config, seed), workdir / name / f"seed{seed}",
                                                            folds=args.folds, resume=args.resume, select=args.select)
                for seed in args.seeds}
        aggregates[name] = {**over_seeds(runs), "seconds": time.time() - t0}
    write_reports(aggregates, workdir)
    minutes = sum(agg["seconds"] for agg in aggregates.values()) / 60
    print(f"wrote {workdir / 'ablation.md'}, ablation.json, ablation.png ({minutes:.1f} min)")
    return aggregates


def merge_aggregates(specs: Sequence[str]) -> dict[str, Any]:
    """Aggregates of earlier runs joined over seeds: each spec is ``ablation.json`` or ``ablation.json:v1,v2`` (only
    those variants). A variant in several files gets the union of their seeds (a seed twice is an error)."""
    seeds: dict[str, dict[int, Any]] = {}
    for spec in specs:
        path, _, names = spec.partition(":")
        try:
            aggregates = json.loads(pathlib.Path(path).read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"--merge {path}: cannot read an ablation.json there ({e})") from None
        for name in (names.split(",") if names else aggregates):
            if name not in aggregates:
                raise UserError(f"--merge {path}: no variant {name!r} (it has {', '.join(aggregates)})")
            for seed, agg in aggregates[name]["seeds"].items():
                if int(seed) in seeds.setdefault(name, {}):
                    raise UserError(f"--merge {spec}: seed {seed} of {name} is already in an earlier file")
                seeds[name][int(seed)] = agg
    return {name: over_seeds(dict(sorted(runs.items()))) for name, runs in seeds.items()}


def write_reports(aggregates: Mapping[str, Mapping[str, Any]], workdir: pathlib.Path) -> None:
    """Prints the tables and writes ablation.json / .md / .png into ``workdir``."""
    tables = ablation_table(aggregates)
    reporting.print_tables(tables)
    spread = spread_markdown(aggregates)
    if len(aggregates) > 1:
        spread += "\n" + paired_markdown(aggregates)
    print(spread)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "ablation.json").write_text(json.dumps(aggregates, indent=1))
    (workdir / "ablation.md").write_text("\n".join(reporting.markdown_table(t) for t in tables) + "\n" + spread)
    plot_ablation(aggregates, workdir / "ablation.png")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.ablation", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cross_validation.add_config_arguments(parser)
    parser.add_argument("--workdir", required=True, help="output directory (one sub-directory per variant)")
    parser.add_argument("--variants", nargs="+", default=list(CHOICES), choices=list(CHOICES),
                        help="default: the jaanet baseline and every variant of the paper's ablation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="train.seed and data.shuffle_seed of the repeated runs (default: 0)")
    parser.add_argument("--folds", type=int, nargs="+", default=list(config_args.FOLDS), choices=config_args.FOLDS)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--merge", nargs="+", metavar="JSON[:VARIANTS]",
                        help="train nothing: join earlier ablation.json files over seeds (optionally only the "
                             "comma-separated variants of a file) and write the reports into --workdir")
    cross_validation.add_select_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = configs.parse_args(build_parser(), argv)
    verbosity.configure(args.verbose)
    if args.merge:
        write_reports(merge_aggregates(args.merge), pathlib.Path(args.workdir))
        return 0
    run_ablation(args, args.variants)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, "ablation"))
