"""Mechanism suite: does each ALGRNet part learn what it exists for, on data built to need it?

One synthetic set per part (``data_pipelines.synthetic.mechanisms``, docs/mechanisms.md), on which exactly one
part is necessary for the tested AU's LOCAL head (the per-AU classifier on the AU's own region):

- ``sb``: a hidden AU whose label is the AND of far partners: the skip-BiLSTM. ``w/o F&R`` (Ada + S-B) against
  the same network without the relation term (Ada only). F&R is off in both: the global feature it fuses into
  every local one sees the partners too, a second road to the answer that would hide the relation term.
- ``skip``: the last branch hidden, determined by the first, distractors between: the skip-BiLSTM against the
  plain ConvBiLSTM and against no relation term (all without F&R, as for ``sb``).
- ``ada``: the AU's appearance change drawn at a per-subject offset from its landmark-defined centre: adaptive
  regions against fixed ones, without relations or F&R (Ada only against ``w/o full``).
- ``fr``: the AU drawn only outside every AU region: ALGRNet against ``w/o F&R`` (the paper's pair).

Each test also runs JAA-Net. Every variant trains on fold 1 per seed (``experiments.cross_validation``; the seed
sets ``train.seed`` and ``data.shuffle_seed``, ``experiments.ablation.seed_config``), then the tested variant is
compared with each other variant seed by seed (``experiments.ablation.paired_differences``: mean and 95% t
interval) on the tested AU's local F1 and on the final mean F1, beside the rule ceiling of the set; the trained
tested variant's part is knocked out at inference (``experiments.relation_use``) to show whether it is used.

Writes ``<workdir>/<set>/mechanism.json`` (everything), merges the summary into ``--out``
(``experiments/results/mechanisms.json``: ``{"tests": [{"part", "au", "metric", "variant", "baseline",
"paired_diff_mean", "ci95", "seeds", "rule_ceiling", ...}]}``; entries of other tests are kept), tabulates it
(``.md`` beside it) and plots it (``.png``). Progress goes to stdout; the results are rewritten after every seed.

    python -m experiments.mechanisms --test sb --seeds 5
    python -m experiments.mechanisms --test sb --au 1 --partners 12 25 --seeds 3 --workdir runs/mech_sb_au1
    python -m experiments.mechanisms --test all --seeds 5 --set train.num_epochs=8
    python -m experiments.mechanisms --test sb --seeds 8 --reuse runs/mechanisms/bp4d_small_sb/mechanism.json

``--reuse`` takes the seeds of an earlier run's per-test JSON (same set, ``--set`` values and selection) instead
of training them again, so a committed record can be extended by more seeds without its checkpoints.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import pathlib
import sys
import tempfile
import textwrap
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from algrnet_jax import checkpoints, configs, evaluation, experiment, fileio, locking, verbosity
from algrnet_jax.configs.validate import validate_config
from algrnet_jax.errors import UserError, run_main
from algrnet_jax.models.networks import create_model
from data_pipelines.builders import build, synth_au
from data_pipelines.synthetic import mechanisms as sets
from experiments import ablation, cross_validation, relation_use, report


@dataclasses.dataclass(frozen=True)
class Variant:
    """A named config with overrides."""

    config: str
    overrides: tuple[str, ...]
    label: str


VARIANTS: dict[str, Variant] = {
    "algrnet": Variant("algrnet", (), "ALGRNet"),
    "wo_fr": Variant("wo_fr", (), "w/o F&R (Ada + S-B)"),
    "wo_fr_bi": Variant("wo_fr", ("model.relation=bilstm",), "w/o F&R, w/ Bi (Ada + BiLSTM)"),
    "ada_only": Variant("wo_fr", ("model.relation=none",), "Ada only (w/o F&R, w/o S-B)"),
    "wo_full": Variant("wo_full", (), "w/o full"),
    "jaanet": Variant("jaanet", (), "JAA-Net"),
}
# test -> (tested variant, the variants it is compared with: its ablation(s) first, JAA-Net last)
PLAN: dict[str, tuple[str, tuple[str, ...]]] = {
    "sb": ("wo_fr", ("ada_only", "jaanet")),
    "skip": ("wo_fr", ("wo_fr_bi", "ada_only", "jaanet")),
    "ada": ("ada_only", ("wo_full", "jaanet")),
    "fr": ("algrnet", ("wo_fr", "jaanet")),
}
# test -> the knock-outs of relation_use whose names start with this (the tested part's)
KNOCKOUT_PREFIX = {"sb": "relations", "skip": "relations", "ada": "adaptive", "fr": "F&R"}
# 6 epochs (1344 steps): at 2 (448 steps) every variant still sat on the all-absent plateau of the AU losses
# (docs/mechanisms.md, "Budget")
DEFAULT_BUDGET = ("data.batch_size=8", "train.num_epochs=6", "train.lr_decay_every_epochs=4",
                  "data.eval_batch_size=64", "train.checkpoint_every_steps=100000", "train.keep_checkpoints=1",
                  "train.log_every_steps=50")


def local_f1(au: int):
    """``value`` for ``ablation.paired_differences``: the local F1 of ``au`` in one seed's aggregate."""
    def value(run: Mapping[str, Any]) -> float:
        return run["predictions"]["local"]["mean_f1_per_au"][run["aus"].index(f"AU{au}")]
    return value


def knockouts(run_dir: pathlib.Path, select: str, test: str, au: int, every: bool = False) -> dict[str, Any]:
    """The tested AU's local F1 and the final mean F1 of one trained run, intact and with each knock-out of the
    tested part (``every``: of every part the model has; ``relation_use.knocked_forward``)."""
    path = experiment.select_checkpoint(run_dir, select)
    config, variables = checkpoints.load_for_inference(path)
    model = create_model(config)
    names = [k for k in relation_use.applicable(config) if every or k.startswith(KNOCKOUT_PREFIX[test])]
    out = {}
    for name in [None, *names]:
        ratios: list[np.ndarray] = []

        def on_batch(batch, outputs, ratios=ratios):
            if "relation_ratio" in outputs:        # ||R(v)_t|| / ||v_t|| per face and AU [B, n]
                ratios.append(np.asarray(outputs["relation_ratio"])[np.asarray(batch["mask"]) > 0])

        result = evaluation.evaluate_variables(config, variables, on_batch=on_batch,
                                               apply_fn=relation_use.knocked_forward(model, (name,) if name else ()))
        p = result["predictions"]
        row = {"local_f1": p["local"]["f1"][result["aus"].index(f"AU{au}")], "final_mean_f1": p["final"]["mean_f1"]}
        if ratios and name is None:
            row["relation_ratio_per_au"] = np.concatenate(ratios).mean(0).tolist()
        out[name or "intact"] = row
    return out


def train_variant(args: argparse.Namespace, mech: sets.Mechanism, builder_config: str, key: str, seed: int,
                  workdir: pathlib.Path) -> dict[str, Any]:
    """Trains and evaluates one variant and seed on fold 1 (resumes a finished or interrupted run)."""
    v = VARIANTS[key]
    config = cross_validation.config_from_args(args, name=v.config)
    configs.apply_overrides(config, [*DEFAULT_BUDGET, *args.overrides, *v.overrides])
    config.data.builder_config = builder_config
    config = validate_config(ablation.seed_config(config, seed), f"config {key}")
    if f"AU{mech.au}" not in [f"AU{a}" for a in config.aus]:
        raise UserError(f"AU{mech.au} is not among the model's AUs {list(config.aus)} (--set aus=... or --au)")
    run_dir = workdir / key / f"seed{seed}"
    if args.select != experiment.LAST:
        return cross_validation.run_cross_validation(config, run_dir, folds=[1], resume=True, select=args.select)
    # The last checkpoint is reported: no evaluation while training (it would only be logged).
    config.data.fold = 1
    experiment.train_and_evaluate(config, run_dir / "fold1", resume=True, evaluate=False)
    agg = cross_validation.aggregate([experiment.evaluate_selected(run_dir / "fold1", args.select)])
    (run_dir / "cv.json").write_text(json.dumps({"aggregate": agg}, indent=1))
    return agg


def summarise(test: str, mech: sets.Mechanism, tested: str, aggregates: Mapping[str, Any],
              ceiling: Mapping[str, float], overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The ``--out`` entries of one test: the tested variant against each other variant, per metric
    (``overrides``: the ``--set`` values every variant ran with, recorded in each entry)."""
    rows = []
    for metric, value in (("local_f1", local_f1(mech.au)), ("final_mean_f1", ablation.final_mean_f1)):
        for base in aggregates:
            if base == tested:
                continue
            pair = {tested: aggregates[tested], base: aggregates[base]}
            p = ablation.paired_differences(pair, base, value).get(tested)
            if p is None:
                continue
            rows.append({"part": test, "au": f"AU{mech.au}", "metric": metric, "variant": VARIANTS[tested].label,
                         "baseline": VARIANTS[base].label, "paired_diff_mean": p["mean"],
                         "ci95": [None if np.isnan(c) else c for c in p["ci95"]], "seeds": len(p["seeds"]),
                         "wins": p["wins"], "diffs": p["diffs"],
                         "variant_per_seed": [value(aggregates[tested]["seeds"][s]) for s in p["seeds"]],
                         "baseline_per_seed": [value(aggregates[base]["seeds"][s]) for s in p["seeds"]],
                         "rule_ceiling": ceiling["rule_ceiling"], "blind_f1": ceiling["blind_f1"],
                         "set": mech.describe(), "set_options": mech.options(),
                         "overrides": list(overrides)})
    return rows


def _lock_file(out: pathlib.Path) -> pathlib.Path:
    """The lock of summary ``out``, in the temporary directory (nothing is left beside the results)."""
    digest = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:16]
    return pathlib.Path(tempfile.gettempdir()) / f"algrnet_mechanisms_{digest}.lock"


def options(row: Mapping[str, Any]) -> str:
    """The options an entry ran with, short: the set's (``Mechanism.options``), its ``model.*`` overrides that are on (a
    switch by its name, any other value as ``name=value``), and the epochs where they differ from the runner's
    default budget (``displacement 0.6, local_within_region, offset_unit=region, 18 epochs``)."""
    overrides = dict(o.split("=", 1) for o in row.get("overrides", []) if "=" in o)
    default_epochs = dict(o.split("=", 1) for o in DEFAULT_BUDGET)["train.num_epochs"]
    names = [row["set_options"]] if row.get("set_options") else []
    names += [k.removeprefix("model.") + ("" if v.lower() in ("true", "1") else f"={v}")
              for k, v in overrides.items() if k.startswith("model.") and v.lower() not in ("false", "0")]
    if overrides.get("train.num_epochs", default_epochs) != default_epochs:
        names.append(f"{overrides['train.num_epochs']} epochs")
    return ", ".join(names)


def write_summary(out: pathlib.Path, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merges ``rows`` into ``out`` (entries with the same part, AU, metric, variant, baseline and options
    are replaced, all others kept), writes it and the plot beside it; returns every entry."""
    key = lambda r: (r["part"], r["au"], r["metric"], r["variant"], r["baseline"], options(r))  # noqa: E731
    out.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(600):                     # several tests may run at once, each merging its entries
        try:
            lock = locking.DirLock(_lock_file(out), f"summary {out}").acquire()
            break
        except locking.LockedError:
            time.sleep(0.5)
    else:
        raise UserError(f"{out}: another process holds its lock for more than 5 minutes; give another --out")
    try:
        old = []
        if out.exists():
            try:
                old = json.loads(out.read_text())["tests"]
            except (OSError, ValueError, KeyError) as e:
                raise UserError(f"{out}: not a mechanisms summary ({e}); give another --out") from None
        new = {key(r) for r in rows}
        tests = [r for r in old if key(r) not in new] + list(rows)
        with fileio.atomic_path(str(out)) as tmp:
            pathlib.Path(tmp).write_text(json.dumps({"tests": tests}, indent=1))
        out.with_suffix(".md").write_text(markdown(tests))
        plot(tests, out.with_suffix(".png"))
    finally:
        lock.release()
    return tests


def markdown(tests: Sequence[Mapping[str, Any]]) -> str:
    """The summary as a Markdown table: per test and metric, the tested variant minus each compared one (mean of
    the per-seed differences, 95% t interval, seeds won), both means, the rule ceiling and the knock-outs."""
    lines = ["| part | AU | options | metric | variant | baseline | variant mean | baseline mean "
             "| paired diff [95% CI] | wins | rule ceiling | blind | knock-outs (local F1 change) |", "|---" * 13 + "|"]
    for t in tests:
        ci = t["ci95"]
        ci_text = f"[{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci and ci[0] is not None else "(one seed)"
        ko = "; ".join(f"{k} {v:+.1f}" for k, v in t.get("knockouts_local_f1_change", {}).items()) \
            if t["metric"] == "local_f1" else ""
        means = [f"{np.mean(t[k]):.1f}" if t.get(k) else "" for k in ("variant_per_seed", "baseline_per_seed")]
        blind = f"{t['blind_f1']:.1f}" if "blind_f1" in t else ""
        lines.append(f"| {t['part']} | {t['au']} | {options(t) or 'paper'} | {t['metric']} | {t['variant']} | "
                     f"{t['baseline']} | {means[0]} | {means[1]} | {t['paired_diff_mean']:+.1f} {ci_text} | "
                     f"{t.get('wins', '')}/{t['seeds']} | {t['rule_ceiling']:.1f} | {blind} | {ko} |")
    return "\n".join(lines) + "\n"


def plot(tests: Sequence[Mapping[str, Any]], png: pathlib.Path) -> None:
    """One panel per (part, AU): the tested AU's local F1 of each variant (bars: mean over seeds, dots: seeds),
    with the rule ceiling and the blind F1 as lines (entries without per-seed values are left out)."""
    plt = report._pyplot()
    local = [t for t in tests if t["metric"] == "local_f1" and "variant_per_seed" in t and "baseline_per_seed" in t]
    panels = list(dict.fromkeys((t["part"], t["au"], options(t)) for t in local))
    if not panels:
        return
    cols = min(len(panels), 4)
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 4.4 * rows_n), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (part, au, opts) in zip(axes.flat, panels):
        rows = [t for t in local if (t["part"], t["au"], options(t)) == (part, au, opts)]
        values = {rows[0]["variant"]: rows[0]["variant_per_seed"]}
        values.update({t["baseline"]: t["baseline_per_seed"] for t in rows})
        for i, (name, v) in enumerate(values.items()):
            ax.bar(i, np.mean(v), color="tab:orange" if i == 0 else "tab:blue", alpha=0.7)
            ax.plot([i] * len(v), v, "k.", ms=5)
        ax.axhline(rows[0]["rule_ceiling"], color="tab:green", ls="--", label="rule ceiling")
        ax.axhline(rows[0]["blind_f1"], color="tab:red", ls=":", label="blind (all present)")
        ax.set_xticks(range(len(values)), [textwrap.fill(n, 14) for n in values], fontsize=7)
        ax.set_ylim(0, 105)
        ax.set_ylabel(f"local F1 of {au} (%)")
        lines = [f"{t['baseline'].split(' (')[0]}: {t['paired_diff_mean']:+.1f}" for t in rows]
        ax.set_title(f"{part}: {au}, {rows[0]['seeds']} seed(s)" + (f" [{opts}]" if opts else "") + "\n"
                     + "; ".join(lines), fontsize=7)
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def load_record(path: str, test: str, mech: sets.Mechanism, builder_config: str,
                overrides: Sequence[str], select: str) -> dict[str, Any]:
    """A per-test JSON of an earlier run (``mechanism.json``, or its copy in experiments/results) whose seeds are
    taken instead of trained: it must be of the same set and size (builder config), the same ``--set`` values
    and the same checkpoint selection, else ``UserError`` names the field that differs."""
    try:
        record = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--reuse {path}: cannot read it as JSON ({e})") from None
    want = {"test": test, "mechanism": json.loads(json.dumps(dataclasses.asdict(mech))),
            "builder_config": builder_config, "overrides": list(overrides), "select": select}
    for field, value in want.items():
        if record.get(field) != value:
            raise UserError(f"--reuse {path}: its {field!r} is {record.get(field)!r}, this run's is {value!r}; "
                            "reuse only a record of the same test, set, --set values and --select")
    return record


def run_test(args: argparse.Namespace, test: str, mech: sets.Mechanism, builder_config: str) -> list[dict[str, Any]]:
    """Trains every variant of ``test`` for every seed (seed-major, so that partial results are paired), writes
    the per-test JSON and the summary after each seed, then the knock-outs. Seeds found in ``--reuse``'s record
    are taken from it (results and knock-outs) instead of trained."""
    tested, others = PLAN[test]
    keys = [tested, *(k for k in others if k in args.variants or k == others[0])]
    workdir = pathlib.Path(args.workdir) / builder_config
    workdir.mkdir(parents=True, exist_ok=True)
    ceiling = sets.ceilings(mech, args.data_size)
    record = (load_record(args.reuse, test, mech, builder_config, args.overrides, args.select) if args.reuse
              else {"aggregates": {}})
    reused = {k: record["aggregates"].get(k, {}).get("seeds", {}) for k in keys}
    print(f"[{test}] {mech.describe()}; rule ceiling {ceiling['rule_ceiling']:.1f}, blind F1 "
          f"{ceiling['blind_f1']:.1f}; variants {', '.join(keys)}; seeds {list(range(args.seeds))}", flush=True)
    runs: dict[str, dict[int, Any]] = {k: {} for k in keys}
    # a record's time is its seeds' total; kept only if every one of its seeds is reused
    seconds: dict[str, float] = {k: 0.0 for k in keys}
    for k in keys:
        if reused[k] and all(int(s) < args.seeds for s in reused[k]):
            seconds[k] = record["aggregates"][k].get("seconds", 0.0)
    detail: dict[str, Any] = {"test": test, "mechanism": dataclasses.asdict(mech), "builder_config": builder_config,
                              "overrides": list(args.overrides), "select": args.select, **ceiling}
    rows: list[dict[str, Any]] = []

    def save() -> None:
        (workdir / "mechanism.json").write_text(json.dumps(detail, indent=1))

    for seed in range(args.seeds):
        for key in keys:
            t0 = time.time()
            if str(seed) in reused[key]:
                runs[key][seed] = reused[key][str(seed)]
                source = f"from {args.reuse}"
            else:
                runs[key][seed] = train_variant(args, mech, builder_config, key, seed, workdir)
                seconds[key] += time.time() - t0
                source = f"{time.time() - t0:.0f} s"
            loc = local_f1(mech.au)(runs[key][seed])
            print(f"[{test}] seed {seed} {VARIANTS[key].label}: local AU{mech.au} F1 {loc:.1f}, final mean F1 "
                  f"{runs[key][seed]['predictions']['final']['mean_f1']:.1f} ({source})", flush=True)
        aggregates = {k: {**ablation.over_seeds(r), "seconds": seconds[k]} for k, r in runs.items()}
        rows = summarise(test, mech, tested, aggregates, ceiling, args.overrides)
        detail["aggregates"] = aggregates
        save()
        if len(runs[tested]) > 1:
            write_summary(pathlib.Path(args.out), rows)

    def seed_knockouts(variant: str, old: Mapping[str, Any], every: bool = False) -> dict[int, Any]:
        """Per seed, the knock-outs of ``variant``: the record's where the seed's run came from it, else measured."""
        return {seed: old[str(seed)] if str(seed) in reused[variant] and str(seed) in old else
                knockouts(workdir / variant / f"seed{seed}" / "fold1", args.select, test, mech.au, every=every)
                for seed in range(args.seeds)}

    if args.knockouts:
        detail["knockouts"] = seed_knockouts(tested, record.get("knockouts", {}))
        names = list(next(iter(detail["knockouts"].values())))
        effects = {n: [k[n]["local_f1"] - k["intact"]["local_f1"] for k in detail["knockouts"].values()]
                   for n in names[1:]}
        for row in rows:
            row["knockouts_local_f1_change"] = {n: float(np.mean(v)) for n, v in effects.items()}
        print(f"[{test}] knock-outs of {VARIANTS[tested].label}, change of local AU{mech.au} F1 (mean over seeds): "
              + ", ".join(f"{n} {np.mean(v):+.1f}" for n, v in effects.items()), flush=True)
        save()
    if args.knockout_baseline:
        base = keys[1]
        old = record.get("knockouts_baseline", {})
        old = old.get("seeds", {}) if old.get("variant") == base else {}
        detail["knockouts_baseline"] = {"variant": base, "seeds": seed_knockouts(base, old, every=True)}
        runs_ko = detail["knockouts_baseline"]["seeds"].values()
        names = list(next(iter(runs_ko)))[1:]
        print(f"[{test}] knock-outs of {VARIANTS[base].label}, change of local AU{mech.au} F1 (mean over seeds): "
              + ", ".join(f"{n} {np.mean([k[n]['local_f1'] - k['intact']['local_f1'] for k in runs_ko]):+.1f}"
                          for n in names), flush=True)
        save()
    if rows:
        write_summary(pathlib.Path(args.out), rows)
    for row in rows:
        ci = row["ci95"]
        ci_text = f"[{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci[0] is not None else "(one seed)"
        print(f"[{test}] {row['metric']}: {row['variant']} minus {row['baseline']}: {row['paired_diff_mean']:+.1f} "
              f"{ci_text}, wins {row['wins']}/{row['seeds']}; rule ceiling {row['rule_ceiling']:.1f}", flush=True)
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.mechanisms", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cross_validation.add_config_arguments(parser)
    parser.add_argument("--test", required=True, choices=[*sets.TESTS, "all"])
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds, 0..N-1 (default 5)")
    parser.add_argument("--au", type=int, help="the tested AU (default per test: sb 2, skip 12, ada 12, fr 4)")
    parser.add_argument("--partners", type=int, nargs="+", help="sb/skip: the AUs whose AND is the hidden AU")
    parser.add_argument("--displacement", type=float, help="ada: offset length, interocular units (default 0.3)")
    parser.add_argument("--data-size", default="small", choices=list(sets.SIZES),
                        help="generator size of the synthetic set (default small)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS),
                        help="restrict the compared variants (the tested one and its first ablation always run)")
    parser.add_argument("--workdir", default="runs/mechanisms")
    parser.add_argument("--out", default="experiments/results/mechanisms.json")
    parser.add_argument("--reuse", metavar="RECORD",
                        help="a per-test JSON of an earlier run of the same set and --set values (its "
                             "mechanism.json or the copy in experiments/results): its seeds are taken, not trained")
    parser.add_argument("--no-knockouts", dest="knockouts", action="store_false")
    parser.add_argument("--knockout-baseline", action="store_true",
                        help="also knock out every part of the first compared variant (where does it find the AU?)")
    cross_validation.add_select_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = configs.parse_args(build_parser(), argv)
    verbosity.configure(args.verbose)
    if args.builder_config:
        raise UserError("--builder-config: the mechanism sets name their own (use --test and its options)")
    if args.seeds < 1:
        raise UserError(f"--seeds {args.seeds}: give at least 1")
    if not args.out.endswith(".json"):
        raise UserError(f"--out {args.out}: give a .json path (the plot goes beside it as .png)")
    if args.reuse and args.test == "all":
        raise UserError("--reuse: a record is of one test; give --test sb|skip|ada|fr")
    tests = list(sets.TESTS) if args.test == "all" else [args.test]
    given = {"au": args.au, "partners": args.partners, "displacement": args.displacement}
    if args.test == "all" and any(v is not None for v in given.values()):
        raise UserError("--au, --partners and --displacement apply to one --test, not all")
    try:
        mechs = {t: sets.mechanism(t, **given) for t in tests}
    except ValueError as e:
        raise UserError(str(e)) from None
    names = {t: synth_au.register(m, args.data_size) for t, m in mechs.items()}
    data_dir = args.data_dir or str(pathlib.Path(args.workdir) / "tfds")
    args.data_dir = data_dir
    t_all = time.time()
    for test in tests:
        t0 = time.time()
        print(f"[{test}] building synth_au/{names[test]} in {data_dir} (reused if there)", flush=True)
        build.build_dataset("synth_au", names[test], data_dir)
        run_test(args, test, mechs[test], names[test])
        print(f"[{test}] done in {(time.time() - t0) / 60:.1f} min", flush=True)
    print(f"wrote {args.out} and {pathlib.Path(args.out).with_suffix('.png')} ({(time.time() - t_all) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, "mechanisms"))
