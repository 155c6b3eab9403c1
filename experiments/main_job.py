"""The main job (README command 1): synthetic data -> small ALGRNet on the CPU -> held-out evaluation -> report.

1. builds the synthetic AU set ``synth_au`` (if it is not built yet) in ``--data-dir``;
2. trains a small ALGRNet (``MAIN_JOB`` settings below: the ``algrnet`` config at ``size="small"``
   plus overrides) on parts 2 + 3 for a few epochs, with the paper's optimiser (SGD Nesterov, coupled
   weight decay, step-halved learning rate). One override changes the model: ``model.fusion_refine_rescale``
   feeds each local classifier the F&R output times sqrt(F) (unit-RMS entries, the scale of the features it
   reads without F&R). With the unit-norm output of the paper's formula, two of the four local heads end at
   or below the all-present F1 within this budget (docs/ablation_synthetic.md, "Dead local heads");
3. evaluates the LAST checkpoint on the held-out part 1 (fold 1: subject-exclusive), beside the
   trivial all-present predictor on the same frames, and prints the tables beside the paper's;
4. writes ``<workdir>/report/report.md`` with loss / lr curves, per-AU F1 bars and attention maps.

Everything finishes within 10 minutes on a 2-core CPU (dataset build and compilation included);
``--quick`` is a much smaller smoke version (< 1 minute after imports) used by the tests.

Usage::

    python -m experiments.main_job                      # the full main job, outputs in runs/main_job
    python -m experiments.main_job --workdir /tmp/mj --epochs 3
    python -m experiments.main_job --quick --workdir /tmp/mj_quick
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

_IMPORTS_START = time.time()

import ml_collections  # noqa: E402

from algrnet_jax import configs, evaluation, experiment, reporting, verbosity  # noqa: E402
from algrnet_jax.configs.validate import validate_config  # noqa: E402
from algrnet_jax.errors import UserError, run_main  # noqa: E402
from data_pipelines import builders  # noqa: E402
from experiments import report  # noqa: E402

IMPORT_SECONDS = time.time() - _IMPORTS_START     # the library's imports (JAX, TF, ...), reported in the timings

# Settings of the main job: (config name, size, label set, builder config, overrides). The overrides are
# config data (``configs.apply_overrides``), not a copy of the model definition.
MAIN_JOB: dict[str, Any] = {
    "name": "algrnet", "size": "small", "label_set": "bp4d", "builder_config": "bp4d_small",
    "overrides": [
        "model.fusion_refine_rescale=true",
        "train.num_epochs=2", "train.lr_decay_every_epochs=2",
        "data.batch_size=16", "data.eval_batch_size=64",
        "train.log_every_steps=10", "train.checkpoint_every_steps=100000", "train.keep_checkpoints=1",
    ],
}
QUICK: dict[str, Any] = {
    "name": "algrnet", "size": "tiny", "label_set": "bp4d", "builder_config": "bp4d_tiny",
    "overrides": [
        "model.fusion_refine_rescale=true",
        "train.num_epochs=1", "train.max_steps=4", "data.batch_size=8", "data.eval_batch_size=32",
        "train.log_every_steps=2", "train.checkpoint_every_steps=100000", "train.keep_checkpoints=1",
    ],
}
ATTENTION_FACES = 3


def job_config(settings: dict[str, Any], *, data_dir: str, epochs: int | None = None,
               overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The config of the main job (or of ``--quick``): the named config, the job's data and overrides, then
    ``--epochs`` and the command line's overrides, all through ``configs.apply_overrides`` (typed by the field)."""
    return configs.from_args(settings["name"], settings["size"], settings["label_set"], [
        "data.dataset=synth_au", f"data.builder_config={settings['builder_config']}", f"data.data_dir={data_dir}",
        "data.fold=1", *settings["overrides"], *([f"train.num_epochs={epochs}"] if epochs is not None else []),
        *overrides])


def ensure_dataset(config: Any) -> float:
    """Builds ``config.data``'s synth_au config if it is not built yet; returns the seconds spent."""
    t0 = time.time()
    builder = builders.get_builder(config.data.dataset, config.data.builder_config, config.data.data_dir or None)
    if builder.is_prepared():
        print(f"[data] {config.data.dataset}/{config.data.builder_config} found in {builder.data_dir}")
        return 0.0
    print(f"[data] building {config.data.dataset}/{config.data.builder_config} ...", flush=True)
    builder.download_and_prepare()
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    print(f"[data] built in {time.time() - t0:.0f}s -> {builder.data_dir}: {splits}")
    return time.time() - t0


def _prepare_workdir(train_dir: pathlib.Path, resume: bool) -> None:
    """A fresh training directory unless resuming; refuses to delete a directory the job did not write."""
    if resume or not train_dir.exists():
        return
    if not (train_dir / "config.json").exists():
        raise UserError(f"{train_dir} exists but is not a training directory of this job; choose another --workdir")
    print(f"[train] removing the previous run in {train_dir} (use --resume to continue it)")
    shutil.rmtree(train_dir)


class FirstFaces:
    """``on_batch`` hook of the evaluator keeping the first faces, their labels and outputs for the plots."""

    def __init__(self, faces: int = ATTENTION_FACES):
        self.faces, self.images, self.outputs, self.labels = faces, None, None, None

    def __call__(self, batch: dict, outputs: dict) -> None:
        if self.images is None:
            f = self.faces
            self.images, self.labels = batch["image"][:f], batch["labels"][:f]
            self.outputs = {k: v[:f] for k, v in outputs.items()}

    def examples(self) -> tuple[Any, dict, Any]:
        return self.images, self.outputs, self.labels


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the job; returns the evaluation result with ``timings`` added."""
    t_start = time.time() - IMPORT_SECONDS
    workdir = pathlib.Path(args.workdir)
    settings = QUICK if args.quick else MAIN_JOB
    config = job_config(settings, data_dir=args.data_dir, epochs=args.epochs, overrides=args.overrides)
    validate_config(config)
    rescaled = (" with F&R output x sqrt(F) (model.fusion_refine_rescale)"
                if config.model.fusion_refine and config.model.fusion_refine_rescale else "")
    print(f"[config] {config.name}{rescaled} size={config.size} crop={config.crop_size} unit={config.model.unit} "
          f"AUs={tuple(config.aus)} epochs={config.train.num_epochs} batch={config.data.batch_size} "
          f"data={config.data.dataset}/{config.data.builder_config} test fold={config.data.fold}", flush=True)
    t_imports = IMPORT_SECONDS
    t_data = ensure_dataset(config)

    train_dir = workdir / "train"
    _prepare_workdir(train_dir, args.resume)
    # One jitted eval step for the per-epoch evaluations and the final one (with the maps for the plots).
    extra_outputs = ("initial_au_maps", "refined_au_maps")
    t0 = time.time()
    summary = experiment.train_and_evaluate(config, train_dir, resume=args.resume, progress=not args.quiet,
                                            tensorboard=False, eval_outputs=extra_outputs)
    t_train = time.time() - t0
    val = summary["evaluations"].get("val")
    print(f"[train] {summary['step']} steps in {t_train:.0f}s (compilation and per-epoch evaluation included)"
          + (f"; validation mean F1 {val['mean_f1']:.1f} (best {summary['best_mean_f1']:.1f} at step "
             f"{summary['best_step']})" if val else ""), flush=True)

    t0 = time.time()
    faces = FirstFaces()
    result = experiment.evaluate_selected(train_dir, experiment.LAST, on_batch=faces,
                                          apply_fn=evaluation.make_eval_step(config, extra_outputs))
    last = result["checkpoint"]
    t_eval = time.time() - t0
    reporting.print_tables(reporting.result_tables(result))
    final, trivial = result["predictions"]["final"]["mean_f1"], result["predictions"][evaluation.TRIVIAL]["mean_f1"]
    verdict = "ABOVE" if final > trivial else "NOT above"
    print(f"[result] mean F1 on held-out fold {config.data.fold}: ours (final) {final:.1f}% vs all-present "
          f"{trivial:.1f}% -> {verdict} the trivial predictor")
    weak = report.weak_heads_message(report.heads_not_above_trivial(result))
    print(f"[result] WARNING: per-AU heads {weak}" if weak else
          "[result] every per-AU head (local, integrated, final) is above the all-present F1 of its AU")

    t0 = time.time()
    attention = faces.examples()
    result["timings_s"] = {"imports": t_imports, "dataset": t_data, "train": t_train, "evaluate": t_eval}
    summary_lines = {
        "model": f"{config.name}{rescaled} (size {config.size}: crop {config.crop_size}, unit {config.model.unit}, "
                 f"ConvLSTM hidden {config.model.lstm_hidden}, AUs {', '.join(result['aus'])})",
        "data": f"{config.data.dataset}/{config.data.builder_config}: train on parts 2+3, test on part 1 "
                f"({result['frames']} frames)",
        "training": f"{summary['step']} steps, {config.train.num_epochs} epochs, batch {config.data.batch_size}, "
                    f"lr {config.train.lr} x{config.train.lr_decay} every {config.train.lr_decay_every_epochs} epochs",
        "evaluated checkpoint": f"the last one ({last}); nothing is selected on the test part (the trainer's "
                                "best checkpoint is chosen on the validation part)",
        "wall time (s)": ", ".join(f"{k} {v:.0f}" for k, v in result["timings_s"].items()),
    }
    report_path = report.write_report(workdir / "report", result, metrics_jsonl=train_dir / "metrics.jsonl",
                                      attention=attention, summary=summary_lines,
                                      title="Main job: small ALGRNet on synthetic AUs")
    result["timings_s"]["report"] = time.time() - t0
    result["timings_s"]["total"] = time.time() - t_start
    reporting.write_result(result, workdir / "report")
    (workdir / "report" / "train_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"[report] {report_path}")
    print(f"[done] total wall time {result['timings_s']['total']:.0f}s "
          f"({', '.join(f'{k} {v:.0f}s' for k, v in result['timings_s'].items() if k != 'total')})")
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.main_job", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/main_job", help="outputs: train/ (checkpoints, metrics) and report/")
    parser.add_argument("--data-dir", default="", help="tfds data dir (default $ALGRNET_DATA_DIR or ./data/tfds)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the job's setting)")
    parser.add_argument("--quick", action="store_true", help="a much smaller smoke run (< 1 min) for tests")
    parser.add_argument("--resume", action="store_true", help="continue the run in --workdir instead of restarting")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    verbosity.add_argument(parser)
    configs.add_override_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = configs.parse_args(build_parser(), argv)
    verbosity.configure(args.verbose)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, "main_job"))
