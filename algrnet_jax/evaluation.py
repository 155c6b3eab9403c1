"""Evaluation loop and tables beside the paper's.

``evaluate_variables(config, variables)`` runs one jitted eval step (traced once: eval batches are
padded to a fixed size and carry a ``mask``) over the test part of ``config.data.fold`` and reports:

- AU task: per-AU F1 and accuracy of the local (per-AU branch), integrated and final (averaged)
  predictions, the trivial all-present predictor on the same frames, and landmark error / failure rate;
- paralysis task: per-grade one-vs-rest F1, accuracy and confusion matrix of the local (mean of the
  per-region heads), integrated and final (averaged) grade predictions, and landmark error.

Every F1 / accuracy / error in a result dict is a PERCENTAGE, as in the paper's tables. Top-level
``result["mean_f1"]`` is the headline number (final AU prediction, or grades) that the trainer uses
to keep the best checkpoint. Importing this module is cheap: the data pipeline and the model are
imported on first use.
"""
from __future__ import annotations

import functools
import json
import math
import pathlib
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from typing import Any

import numpy as np

from algrnet_jax import metrics, tasks
from algrnet_jax.errors import UserError

# Model outputs the evaluator reads (docs/design.md): every task's predictions and the landmarks; anything
# else is dropped inside the jitted step.
_EVAL_OUTPUTS = tuple(dict.fromkeys(
    [p.output for t in tasks.TASKS.values() for p in t.predictions] + ["landmarks"]))
# (result key, model output, row label) of each task's predictions (tasks.Task.predictions).
AU_PREDICTIONS = tuple((p.key, p.output, p.label) for p in tasks.get_task("au").predictions)
GRADE_PREDICTIONS = tuple((p.key, p.output, p.label) for p in tasks.get_task("paralysis").predictions)
TRIVIAL = tasks.TRIVIAL
# Paper table of each (task, label set) and the landmark-error column of each dataset.
PAPER_AU_TABLES = {"bp4d": ("table2_bp4d_f1", "Table II"), "disfa": ("table3_disfa_f1", "Table III")}
PAPER_ABLATION_TABLES = {"bp4d": ("table6_bp4d_ablation_f1", "Table VI"), "disfa": ("table5_disfa_ablation_f1", "Table V")}
PAPER_GRADE_TABLE = ("table4_fpara_f1", "Table IV")
PAPER_LANDMARK_TABLE = ("table7_landmark_mean_error_pct", "Table VII")
LANDMARK_COLUMNS = {"bp4d": "BP4D", "disfa": "DISFA", "fpara": "FPara"}

Batch = Mapping[str, Any]
ApplyFn = Callable[[Any, Any], Mapping[str, Any]]


class EvalDataError(UserError, ValueError):
    """The data to evaluate on is missing or does not fit the checkpoint; the message says what to do."""


# ----------------------------------------------------------------------------------------------
# The eval step


def eval_forward(model: Any, extra_outputs: tuple[str, ...] = ()) -> ApplyFn:
    """The jitted eval-mode forward of a (hashable) model keeping the outputs we read (plus ``extra_outputs``):
    images [B, C, C, 3] -> dict. One cache with the Predictor's (``inference.jitted_forward``)."""
    from algrnet_jax import inference   # imports jax: kept off this module's import

    return inference.jitted_forward(model, _EVAL_OUTPUTS + tuple(extra_outputs))


def make_eval_step(config: Any, extra_outputs: Sequence[str] = ()) -> ApplyFn:
    """The jitted eval step of ``config``'s model (cached, so repeated evaluations do not re-trace).

    ``extra_outputs`` names model outputs to return besides the ones the metrics need (e.g.
    ``("initial_au_maps", "refined_au_maps")`` for plots).
    """
    from algrnet_jax.models.networks import create_model

    return eval_forward(create_model(config), tuple(extra_outputs))


def _to_numpy(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in tree.items()}


def evaluate_variables(config: Any, variables: Any, *, split: str | None = None,
                       batches: Iterable[Batch] | None = None, apply_fn: ApplyFn | None = None,
                       max_batches: int | None = None,
                       on_batch: Callable[[Batch, dict[str, np.ndarray]], None] | None = None) -> dict[str, Any]:
    """Evaluates model variables on a test split.

    Args:
      config: full experiment config (``get_config``); ``config.data`` picks the dataset and fold.
      variables: ``{"params": ..., "batch_stats": ...}`` of the model.
      split: tfds split expression; None = the test part of ``config.data.fold``.
      batches: optional iterable of batches (docs/design.md) replacing the input pipeline.
      apply_fn: optional ``(variables, images) -> outputs``; default the jitted model of ``config``.
      max_batches: stop after this many batches (smoke runs).
      on_batch: called with each batch and its outputs (numpy) after they are counted.

    Returns:
      a JSON-serialisable dict (percentages); see the module docstring.
    """
    task = tasks.get_task(config)
    if batches is None:
        from data_pipelines.pipeline import eval_batches

        batches = eval_batches(config, split=split)
    apply_fn = apply_fn or make_eval_step(config)
    predictions = task.new_metrics(config)
    landmarks = metrics.LandmarkMetrics()
    frames = 0
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        out = _to_numpy(apply_fn(variables, batch["image"]))
        mask = np.asarray(batch["mask"])
        frames += int(np.sum(mask > 0))
        predictions.update(out, np.asarray(batch["labels"]), mask)
        landmarks.update(out["landmarks"], batch["landmarks"], batch["interocular"], mask)
        if on_batch is not None:
            on_batch(batch, out)
    if frames == 0:
        raise ValueError(f"no test frames for dataset {config.data.dataset!r} "
                         f"({config.data.builder_config!r}) fold {config.data.fold}, split {split!r}")

    result: dict[str, Any] = {
        "model": config.name, "size": config.size, "task": task.name, "dataset": config.data.dataset,
        "builder_config": config.data.builder_config, "label_set": config.label_set,
        "fold": int(config.data.fold), "split": split, "frames": frames,
        "landmarks": {"mean_error_pct": 100 * landmarks.mean_error(),
                      "failure_rate_pct": 100 * landmarks.failure_rate()},
    }
    result.update(task.summarize(config, predictions))
    return result


def check_eval_data(config: Any, split: str | None = None) -> str:
    """Checks, before any work, that ``config.data`` names a built dataset with ``split`` (default the fold's
    test part), non-empty, whose labels hold the config's AUs. Returns the dataset's label set.

    Raises:
      EvalDataError: naming the data dir, dataset, split or AUs, and what to do.
    """
    from data_pipelines import pipeline

    d = config.data
    try:
        builder = pipeline.dataset_builder(config)
    except FileNotFoundError as e:
        raise EvalDataError(f"{e} (or pass --data-dir / --dataset / --builder-config)") from e
    except ValueError as e:            # unknown dataset or builder config
        raise EvalDataError(str(e)) from e
    split = split or pipeline.split_for(config, False)
    where = f"{d.dataset}/{builder.builder_config.name} in {builder.data_dir}"
    try:
        n = int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, AssertionError) as e:
        raise EvalDataError(f"split {split!r} is not in {where} (its splits: "
                            f"{', '.join(builder.info.splits) or 'none'}); choose --fold or --split among them") from e
    if n == 0:
        raise EvalDataError(f"split {split!r} of {where} is empty")
    label_set = pipeline._label_set(builder)
    try:
        pipeline._label_columns(config, builder)
    except ValueError as e:
        raise EvalDataError(f"{where}: {e}; the checkpoint cannot be evaluated on these labels") from e
    return label_set


def evaluate_checkpoint(path: str | pathlib.Path, *, dataset: str | None = None,
                        builder_config: str | None = None, fold: int | None = None,
                        data_dir: str | None = None, split: str | None = None,
                        eval_batch_size: int | None = None) -> dict[str, Any]:
    """Loads a checkpoint (``load_for_inference``) and evaluates it; None keeps the checkpoint's setting.

    The config and the data are checked before the model runs (``validate_config``, ``check_eval_data``).
    The result records what the checkpoint was trained on (``trained_on``), the evaluated data's label set
    (``data_label_set``, which picks the paper table) and ``warnings`` when the two differ.
    """
    from algrnet_jax.configs.validate import validate_config
    from algrnet_jax.training.checkpoint import load_for_inference

    config, variables = load_for_inference(str(path))
    trained_on = {"dataset": config.data.dataset, "builder_config": config.data.builder_config,
                  "label_set": config.label_set}
    if dataset is not None and builder_config is None and dataset != config.data.dataset:
        from data_pipelines import builders

        try:                               # the other dataset's default config, not the checkpoint's
            builder_config = builders.default_builder_config(dataset, config)
        except ValueError as e:
            raise EvalDataError(str(e)) from e
    for key, value in (("dataset", dataset), ("builder_config", builder_config), ("fold", fold),
                       ("data_dir", data_dir), ("eval_batch_size", eval_batch_size)):
        if value is not None:
            config.data[key] = value
    validate_config(config, f"{path} (checkpoint config with the eval flags)")
    data_label_set = check_eval_data(config, split)
    result = evaluate_variables(config, variables, split=split)
    result["checkpoint"] = str(path)
    result["trained_on"] = trained_on
    result["data_label_set"] = data_label_set
    warnings = []
    if data_label_set != trained_on["label_set"] or config.data.dataset != trained_on["dataset"]:
        warnings.append(f"the checkpoint was trained on {trained_on['dataset']}/{trained_on['builder_config']} "
                        f"(label set {trained_on['label_set']}) and is evaluated on {config.data.dataset}/"
                        f"{config.data.builder_config} (label set {data_label_set}): the tables are those of the "
                        "evaluated data")
    result["warnings"] = warnings
    return result


# ----------------------------------------------------------------------------------------------
# Tables beside the paper's


def paper_tables() -> dict[str, Any]:
    """The paper's Tables II-VII (package resource ``paper_tables.json``)."""
    return json.loads(resources.files("algrnet_jax.resources").joinpath("paper_tables.json").read_text())


@functools.lru_cache(maxsize=1)
def _cached_paper_tables() -> dict[str, Any]:
    return paper_tables()


Row = tuple[str, Mapping[str, float]]


def paper_rows(table_key: str, columns: Sequence[str]) -> tuple[list[Row], str]:
    """Rows of a paper table restricted to ``columns`` (+ "avg"), and a note when a subset is shown.

    With every column of the paper's table, "avg" is the paper's; with a subset, it is the mean of the
    shown columns (and the note says so).
    """
    table = _cached_paper_tables()[table_key]
    all_columns = table.get("aus") or table.get("grades") or table.get("columns")
    missing = [c for c in columns if c not in all_columns]
    if missing:
        raise ValueError(f"{table_key} has no column(s) {missing}; it has {all_columns}")
    full = list(columns) == list(all_columns)
    rows: list[Row] = []
    for name, values in table["rows"].items():
        row = {c: values[c] for c in columns}
        if "avg" in values:
            row["avg"] = values["avg"] if full else float(np.mean([values[c] for c in columns]))
        rows.append((f"{name} (paper)", row))
    note = "" if full else (f"Paper rows restricted to {', '.join(columns)}; their avg is recomputed over "
                            "these columns.")
    return rows, note


def f1_row(label: str, columns: Sequence[str], f1: Sequence[float], mean: float) -> Row:
    """A table row: per-column F1 and the "avg" column."""
    return label, {**dict(zip(columns, f1)), "avg": mean}


def f1_table(title: str, columns: Sequence[str], ours: Sequence[Row], *, dataset: str,
             label_set: str, paper: tuple[str, str] | None = None) -> dict[str, Any]:
    """Our F1 rows beside a paper table (default the label set's Table II / III), "avg" last.

    ``paper`` is (table key, table name); the rows of the paper are restricted to ``columns``.
    """
    paper = paper or PAPER_AU_TABLES.get(label_set)
    prows, note = paper_rows(paper[0], columns) if paper else ([], "")
    if dataset not in LANDMARK_COLUMNS:
        note = " ".join(filter(None, [note, f"The paper's numbers are on real data, ours on {dataset}: "
                                      "not comparable, shown for layout."]))
    return {"title": f"{title} — beside the paper's {paper[1]}" if paper else title,
            "columns": list(columns) + ["avg"], "rows": list(ours) + prows, "note": note}


def landmark_table(mean_error_pct: float, failure_rate_pct: float, *, dataset: str, label_set: str,
                   title: str = "Landmark mean error (% of inter-ocular distance)") -> dict[str, Any]:
    """Our landmark error and failure rate beside the paper's Table VII column of the dataset."""
    column = LANDMARK_COLUMNS.get(dataset, LANDMARK_COLUMNS.get(label_set, "BP4D"))
    prows, _ = paper_rows(PAPER_LANDMARK_TABLE[0], [column])
    failure = "failure rate (>10%)"
    return {"title": f"{title} — beside the paper's {PAPER_LANDMARK_TABLE[1]}", "columns": [column, failure],
            "rows": [("ours", {column: mean_error_pct, failure: failure_rate_pct})]
            + [(name, {column: row[column]}) for name, row in prows],
            "precision": 2,
            "note": "" if dataset in LANDMARK_COLUMNS else f"Ours on {dataset}, the paper's on real {column}."}


def result_tables(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The tables of one evaluation result: dicts with ``title``, ``columns``, ``rows`` and ``note``.

    AU task: per-AU F1 of ours (local / integrated / final) and the all-present predictor beside the
    paper's Table II (BP4D AUs) or III (DISFA AUs); paralysis: per-grade F1 beside Table IV; both:
    landmark mean error and failure rate beside Table VII.
    """
    where = f"{result['dataset']}/{result['builder_config']} fold {result['fold']}, {result['frames']} frames"
    # The paper table of the data actually evaluated (a BP4D checkpoint run on DISFA is tabled beside DISFA's).
    common = {"dataset": result["dataset"], "label_set": result.get("data_label_set") or result["label_set"]}
    if result["task"] == "paralysis":
        columns = list(result["grades"])
        ours = [f1_row(f"ours ({label})", columns, result["predictions"][key]["f1"], result["predictions"][key]["mean_f1"])
                for key, _, label in GRADE_PREDICTIONS if key in result["predictions"]]
        table = f1_table(f"Grade F1 (%) on {where}", columns, ours, paper=PAPER_GRADE_TABLE, **common)
    else:
        columns = list(result["aus"])
        ours = [f1_row(f"ours ({label})" if key != TRIVIAL else label, columns, result["predictions"][key]["f1"],
                       result["predictions"][key]["mean_f1"])
                for key, _, label in AU_PREDICTIONS + ((TRIVIAL, None, "all-present baseline"),)]
        table = f1_table(f"AU F1 (%) on {where}", columns, ours, **common)
    lm = result["landmarks"]
    return [table, landmark_table(lm["mean_error_pct"], lm["failure_rate_pct"], **common)]


def _cell(value: float | None, precision: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{precision}f}"


def markdown_table(table: Mapping[str, Any]) -> str:
    """One table (``result_tables`` format) as GitHub Markdown, with its title and note."""
    columns = list(table["columns"])
    lines = [f"**{table['title']}**", "", "| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in table["rows"]:
        cells = [_cell(row.get(c), table.get("precision", 1)) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if table.get("note"):
        lines += ["", f"_{table['note']}_"]
    return "\n".join(lines) + "\n"


def print_tables(tables: Sequence[Mapping[str, Any]], console: Any = None) -> None:
    """Prints tables (``result_tables`` format) with rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for table in tables:
        t = Table(title=table["title"], title_justify="left")
        t.add_column("")
        for c in table["columns"]:
            t.add_column(c, justify="right")
        for name, row in table["rows"]:
            style = "bold" if name.startswith("ours") else None
            t.add_row(name, *[_cell(row.get(c), table.get("precision", 1)) for c in table["columns"]], style=style)
        console.print(t)
        if table.get("note"):
            console.print(f"[dim]{table['note']}[/dim]")


def result_markdown(result: Mapping[str, Any]) -> str:
    """All tables of one result as Markdown (its warnings first)."""
    warnings = "".join(f"**Warning:** {w}\n\n" for w in result.get("warnings") or ())
    return warnings + "\n".join(markdown_table(t) for t in result_tables(result))


def write_result(result: Mapping[str, Any], out_dir: str | pathlib.Path, stem: str = "eval") -> dict[str, pathlib.Path]:
    """Writes ``<stem>.json`` (the full result) and ``<stem>.md`` (the tables) under ``out_dir``."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    paths["json"].write_text(json.dumps(result, indent=1))
    paths["markdown"].write_text(result_markdown(result))
    return paths


def report_result(result: Mapping[str, Any], out_dir: str | pathlib.Path | None = None,
                  console: Any = None) -> dict[str, pathlib.Path]:
    """Prints the tables of a result and, with ``out_dir``, writes them as JSON and Markdown."""
    for w in result.get("warnings") or ():
        print(f"warning: {w}", file=sys.stderr)
    print_tables(result_tables(result), console)
    return write_result(result, out_dir) if out_dir is not None else {}
