"""Tables beside the paper's: rendering of evaluation results (no evaluation happens here).

A table is a dict ``{"title", "columns", "rows": [(name, {column: value})], "note", "precision"?}``:
``result_tables(result)`` makes them from one ``evaluation.evaluate_variables`` result (per-AU or per-grade
F1 beside the paper's Table II / III / IV, landmark error beside Table VII), ``f1_table`` / ``f1_row`` /
``landmark_table`` build them for the experiment runners (cross-validation, ablation: Tables V / VI);
``markdown_table`` / ``print_tables`` (rich) render them, ``write_result`` / ``report_result`` write
``eval.json`` and ``eval.md``. Every number is a percentage, as in the paper.
"""
from __future__ import annotations

import functools
import json
import math
import pathlib
import sys
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from algrnet_jax import tasks

# Paper table of each (task, label set) and the landmark-error column of each dataset.
PAPER_AU_TABLES = tasks.AUTask.PAPER_TABLES   # the AU task's (tasks.Task.paper_table); grades: Table IV
PAPER_ABLATION_TABLES = {"bp4d": ("table6_bp4d_ablation_f1", "Table VI"), "disfa": ("table5_disfa_ablation_f1", "Table V")}
PAPER_LANDMARK_TABLE = ("table7_landmark_mean_error_pct", "Table VII")
LANDMARK_COLUMNS = {"bp4d": "BP4D", "disfa": "DISFA", "fpara": "FPara"}


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
    task = tasks.get_task(result["task"])
    columns, predictions = list(result[task.classes_key]), result["predictions"]
    labelled = [(p.key, f"ours ({p.label})") for p in task.predictions] + list(task.baselines())
    ours = [f1_row(label, columns, predictions[key]["f1"], predictions[key]["mean_f1"])
            for key, label in labelled if key in predictions]   # a grading model may lack the per-region heads
    table = f1_table(f"{task.table_label} F1 (%) on {where}", columns, ours,
                     paper=task.paper_table(common["label_set"]), **common)
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


def json_safe(value: Any) -> Any:
    """``value`` with every float that is NaN or infinite replaced by None (JSON ``null``: a value that is not
    defined, e.g. the F1 of an AU without labelled frames) and numpy scalars and arrays made Python values,
    so that ``json.dumps(..., allow_nan=False)`` writes valid JSON."""
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_result(result: Mapping[str, Any], out_dir: str | pathlib.Path, stem: str = "eval") -> dict[str, pathlib.Path]:
    """Writes ``<stem>.json`` (the full result; undefined values as ``null``, never a bare ``NaN``, which is
    not JSON) and ``<stem>.md`` (the tables) under ``out_dir``."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    paths["json"].write_text(json.dumps(json_safe(result), indent=1, allow_nan=False))
    paths["markdown"].write_text(result_markdown(result))
    return paths


def report_result(result: Mapping[str, Any], out_dir: str | pathlib.Path | None = None,
                  console: Any = None) -> dict[str, pathlib.Path]:
    """Prints the tables of a result and, with ``out_dir``, writes them as JSON and Markdown."""
    for w in result.get("warnings") or ():
        print(f"warning: {w}", file=sys.stderr)
    print_tables(result_tables(result), console)
    return write_result(result, out_dir) if out_dir is not None else {}
