"""The trainer: ``Trainer(config, workdir, model, data, evaluators).run(resume=...) -> dict``.

The trainer receives everything it works with (the anchor is flax's examples/imagenet
``train_and_evaluate``): a Flax ``model``, a ``data`` source (``DataSource``: training batches of an epoch
from any batch, steps per epoch, loss weights, built once by ``data_pipelines``) and ``evaluators``
(``{"val": f, "test": g}``, each ``variables -> {"mean_f1": ..., ...}``). It imports nothing from
``data_pipelines``, ``algrnet_jax.evaluation``, ``experiments`` or ``commands``; the command layer
(``algrnet_jax.experiment.train_and_evaluate``) wires them together.

A run, step by step (``Trainer.run``): lock the work directory, check it (``check_workdir``), set up
devices, state, the checkpoint manager and the metric writer (``_setup``), ``restore`` the latest
checkpoint when resuming, then per epoch ``train_epoch`` (the pipeline's batches sharded over the device
mesh through the jitted ``train_step``; the metrics of step i are read while step i+1 runs, by
``_MetricsReader``) and ``evaluate_and_save`` (every evaluator, then an asynchronous checkpoint). Mid-epoch
checkpoints every ``train.checkpoint_every_steps`` steps.

Model selection is honest: the checkpoint manager keeps the checkpoint with the best mean F1 of the
``"val"`` evaluator (``SELECT_ON``), a part carved from the training subjects; the ``"test"`` evaluator
is logged (``metrics.jsonl`` rows of kind ``"test"``) and never selects anything. Without a ``"val"``
evaluator there is no best checkpoint.

Exact resume: a checkpoint holds params, BatchNorm statistics, optimizer state, step, RNG and the data
position (epoch, batch in epoch); the data source is deterministic given seed and epoch and can start at
any batch, so a resumed run sees the same batches in the same order and ends with the same parameters.

Stops: ``SIGTERM`` finishes the current step, saves, and returns (``result["interrupted"]``); a
non-finite loss raises ``NonFiniteLossError`` before anything non-finite is saved, so the last
checkpoint is the last good one.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from flax import traverse_util
from tqdm.auto import tqdm

from algrnet_jax import checkpoints, configs
from algrnet_jax.errors import UserError
from algrnet_jax.locking import DirLock
from algrnet_jax.training import checkpoint as ckpt_lib
from algrnet_jax.training import optim, parallel, state as state_lib, steps
from algrnet_jax.training.metric_writers import MetricWriter

# Config keys that may change between a run and its resumption (they do not change the result).
RESUMABLE_CHANGES = ("train.num_epochs", "train.max_steps", "train.log_every_steps", "train.checkpoint_every_steps",
                     "train.keep_checkpoints", "data.data_dir", "data.prefetch", "data.eval_batch_size",
                     "data.skip_bad")
SELECT_ON = "val"          # the evaluator whose mean F1 selects the best checkpoint
LOCK_FILE = ".lock"
Batch = Mapping[str, Any]
Evaluator = Callable[[Any], dict[str, Any]]
StepCallback = Callable[[int, dict[str, float]], None]


class DataSource(Protocol):
    """What the trainer needs from the data (``data_pipelines.pipeline.make_source`` builds one).

    ``train_batches(epoch, start_batch)`` yields host batches (docs/design.md: ``image`` [B, C, C, 3],
    ``landmarks`` [B, 49, 2], ``interocular`` [B], ``labels`` [B, n], ...) of ``epoch`` from batch
    ``start_batch`` on, the same ones for the same config, seed and epoch; ``loss_weights`` is float32
    [num_outputs] of the training part.
    """

    steps_per_epoch: int
    loss_weights: np.ndarray
    description: str

    def train_batches(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]: ...


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class ResumeError(UserError, ValueError):
    """The work directory cannot be (re)used with this config: other config, or a run without --resume."""


@dataclasses.dataclass(frozen=True)
class Position:
    """Data position of the NEXT batch."""
    epoch: int
    batch: int


@dataclasses.dataclass
class RunState:
    """The bookkeeping of a run besides the train state; saved in each checkpoint's ``meta``."""
    step: int = 0
    position: Position = Position(0, 0)
    best_mean_f1: float | None = None           # validation mean F1 of ``best_step``
    best_step: int | None = None
    evaluations: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)   # last result per evaluator
    resumed_from: int | None = None
    interrupted: str | None = None


def _flat(d: Mapping[str, Any]) -> dict[str, Any]:
    return traverse_util.flatten_dict(dict(d), sep=".")


def check_resumable(saved: Mapping[str, Any], config: ml_collections.ConfigDict, where: str) -> None:
    """Raises ResumeError listing the config keys that differ from the run being resumed."""
    # Fields deleted from the configs since (configs.DELETED_FIELDS) do not block a resume; fields added since
    # (configs.ADDED_FIELDS) are compared with their old value.
    a = _flat(configs.saved_as_current(saved))
    b = _flat(checkpoints.config_to_dict(config))
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)
    if diff:
        lines = "\n".join(f"  {k}: checkpoint {a.get(k)!r}, now {b.get(k)!r}" for k in diff)
        raise ResumeError(f"{where}: the config differs from the run being resumed in {len(diff)} field(s) (an "
                          f"exact resume needs the same config; only {', '.join(RESUMABLE_CHANGES)} may change):\n"
                          f"{lines}\nrun with the checkpoint's values, or choose a new --workdir")


def check_workdir(workdir: str, config: ml_collections.ConfigDict, resume: bool) -> None:
    """Before any work: a work directory with checkpoints needs ``resume``, and then the config of its newest
    checkpoint (only the small JSON ``meta`` item is read) must equal ``config`` up to RESUMABLE_CHANGES. A
    checkpoint whose ``meta`` is unreadable is left to the restore (which names it and can fall back)."""
    latest = checkpoints.last_checkpoint(workdir)
    if latest is None:
        return
    if not resume:
        raise ResumeError(f"{workdir}: holds checkpoints already; pass --resume to continue that run "
                          "or choose a new --workdir")
    try:
        saved = checkpoints.read_meta(latest)
    except checkpoints.CheckpointError:
        return
    check_resumable(saved["config"], config, latest)


def _disk_full(error: BaseException, workdir: str) -> ckpt_lib.DiskFullError:
    good = checkpoints.last_checkpoint(workdir)
    return ckpt_lib.DiskFullError(
        f"{workdir}: no space left on the device while writing a checkpoint ({type(error).__name__}). "
        f"The last complete checkpoint is {good or 'none'}; free some space and rerun with --resume.")


class _SigtermFlag:
    """Turns SIGTERM into a flag the loop polls after each step (main thread only)."""

    def __init__(self) -> None:
        self.set = False
        self._previous = None

    def __enter__(self) -> "_SigtermFlag":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.set = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def eval_scalars(result: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    """The headline numbers of an evaluation result (no per-AU lists) for the logs."""
    out: dict[str, Any] = {"mean_f1": float(result["mean_f1"]), "eval_seconds": seconds}
    for key, pred in (result.get("predictions") or {}).items():
        out[f"{key}_mean_f1"] = pred.get("mean_f1")
        out[f"{key}_mean_accuracy"] = pred.get("mean_accuracy")
    for key in ("accuracy", "landmarks"):
        if key in result:
            out[key] = result[key]
    return out


class _MetricsReader:
    """Reads each step's device metrics one step late (while the next step runs): NaN check, learning rate,
    callbacks, the ``train`` rows of ``metrics.jsonl`` every ``train.log_every_steps`` and the progress bar."""

    def __init__(self, trainer: "Trainer", bar: Any):
        self.trainer, self.bar = trainer, bar
        self.pending: tuple[int, Any] | None = None     # (step, device metrics) not yet read
        self.window: list[dict[str, float]] = []
        self.t_window, self.n_window = time.time(), 0
        self.rate = 0.0                                 # images/s of the last full window (progress bar)

    def push(self, step: int, dev_metrics: Any) -> None:
        """Queues step ``step``'s metrics after reading the previous step's."""
        self.n_window += 1
        self.drain()
        self.pending = (step, dev_metrics)
        self.bar.update(1)

    def exclude(self, seconds: float) -> None:
        """Leaves ``seconds`` (an evaluation) out of the images/s of the current window."""
        self.t_window += seconds

    def drain(self) -> None:
        """Reads the pending step's metrics."""
        if self.pending is None:
            return
        trainer, (at, dev_metrics) = self.trainer, self.pending
        self.pending = None
        m = {k: float(v) for k, v in parallel.to_host(dev_metrics).items()}
        trainer.check_finite(at, m)
        # The optimizer's schedule at update at - 1, as the shortest decimal of its float32 value (0.01).
        m["lr"] = float(str(np.float32(trainer.learning_rate(at - 1))))
        self.window.append(m)
        for cb in trainer.callbacks:
            cb(at, m)
        if at % int(trainer.config.train.log_every_steps) == 0 or at == trainer.max_steps:
            dt = max(time.time() - self.t_window, 1e-9)
            avg = {k: float(np.mean([w[k] for w in self.window])) for k in self.window[0]}
            avg["images_per_sec"] = self.rate = self.n_window * trainer.global_batch / dt
            trainer.writer.write(at, (at - 1) // trainer.steps_per_epoch, "train", avg)
            self.window.clear()
            self.t_window, self.n_window = time.time(), 0
        # Right after a window closes its own count is 0 steps: show the closed window's rate instead of 0.
        img_s = (self.n_window * trainer.global_batch / max(time.time() - self.t_window, 1e-9) if self.n_window
                 else self.rate)
        self.bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}", img_s=f"{img_s:.0f}", refresh=False)


class Trainer:
    """Trains ``model`` on ``data`` in ``workdir`` (data-parallel over every device of every process).

    Args:
      config: full experiment config (validated by the caller).
      workdir: output directory: ``checkpoints/``, ``config.json``, ``metrics.jsonl``, ``tensorboard/``.
      model: the Flax module (``batch_stats`` collection, the output dict of docs/design.md).
      data: the ``DataSource`` of the training part.
      evaluators: ``{name: variables -> result}`` run at each epoch end (and at ``train.max_steps``);
        ``"val"`` selects the best checkpoint, any other (``"test"``) is only logged. Empty: no evaluation,
        no best checkpoint.
      progress: show a progress bar (process 0).
      tensorboard: also write TensorBoard summaries.
      callbacks: ``f(step, metrics)`` called with each step's host metrics (``step`` counts from 1).
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | os.PathLike, model: nn.Module,
                 data: DataSource, evaluators: Mapping[str, Evaluator] | None = None, *, progress: bool = True,
                 tensorboard: bool = True, callbacks: Sequence[StepCallback] = ()):
        self.config, self.model, self.data = config, model, data
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.evaluators = dict(evaluators or {})
        self.progress, self.tensorboard, self.callbacks = progress, tensorboard, tuple(callbacks)
        self.is_main = jax.process_index() == 0
        self.steps_per_epoch = int(data.steps_per_epoch)
        self.global_batch = int(config.data.batch_size)
        tc = config.train
        max_steps = int(tc.max_steps) if int(tc.max_steps) > 0 else int(tc.num_epochs) * self.steps_per_epoch
        self.max_steps = min(max_steps, int(tc.num_epochs) * self.steps_per_epoch)
        self.run_state = RunState()

    # ------------------------------------------------------------------------------------------ run

    def run(self, *, resume: bool = False, resume_from_previous: bool = False) -> dict[str, Any]:
        """Trains to ``train.max_steps`` / ``train.num_epochs`` (``resume``: from the latest checkpoint;
        ``resume_from_previous``: falling back to older ones if it cannot be read); returns ``summary()``."""
        os.makedirs(self.workdir, exist_ok=True)
        # One writer per work directory (process 0 of a multi-host run speaks for all of them). The OS drops the
        # lock when the process dies, SIGKILL included, so a killed run can be resumed at once.
        lock = DirLock(os.path.join(self.workdir, LOCK_FILE), f"work directory {self.workdir}",
                       "wait for that run to end (or stop it), or choose another --workdir")
        if self.is_main:
            lock.acquire()
        try:
            check_workdir(self.workdir, self.config, resume)
            try:
                self._setup()
                if self.manager.latest_step() is not None:
                    self.restore(fall_back=resume_from_previous)
                self._start_logs()
                self._train()
            finally:
                self._close()
            return self.summary()
        except ckpt_lib.DiskFullError:
            raise
        except Exception as e:
            # A full disk can surface anywhere an asynchronous save is awaited (saving, waiting, closing).
            if ckpt_lib.is_disk_full(e):
                raise _disk_full(e, self.workdir) from e
            raise
        finally:
            lock.release()

    def _setup(self) -> None:
        """Devices, the initial train state, the checkpoint manager and the compiled train step."""
        if self.steps_per_epoch < 1:
            raise ValueError(f"{self.data.description}: fewer training examples than one batch ({self.global_batch})")
        self.mesh = parallel.make_mesh()
        parallel.check_batch_size(self.global_batch, self.mesh)
        tc = self.config.train
        self.loss_weights = parallel.replicate(np.asarray(self.data.loss_weights, np.float32), self.mesh)
        self.learning_rate = optim.make_schedule(tc, self.steps_per_epoch)     # the optimizer's: update -> lr
        tx = optim.make_optimizer(tc, self.steps_per_epoch)
        self.state = state_lib.new_train_state(self.model, self.config, tx, jax.random.PRNGKey(int(tc.seed)),
                                               out_shardings=parallel.replicated(self.mesh))
        self.manager = ckpt_lib.TrainCheckpointer(self.workdir, keep=int(tc.keep_checkpoints),
                                                  track_best=SELECT_ON in self.evaluators)
        self.writer = MetricWriter(self.workdir, enabled=self.is_main, tensorboard=self.tensorboard)
        self.train_step = steps.make_train_step(self.config, self.mesh)
        self.outputs_finite = steps.make_output_check(self.config, self.mesh)
        self.last_images: Any = None     # the last training batch's images: the output check before a save
        self.run_state.step = int(parallel.to_host(self.state.step))

    def restore(self, *, fall_back: bool) -> None:
        """Restores the latest readable checkpoint: train state, data position, best so far, last evaluations."""
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.state)
        variables, train_items, saved = self.manager.restore(abstract.variables(), abstract.train_items(),
                                                             fall_back=fall_back)
        at = int(saved["step"])
        check_resumable(saved["config"], self.config, self.manager.path(at))
        self.state = self.state.replace_items(variables, train_items)
        pos = Position(int(saved["epoch"]), int(saved["batch_in_epoch"]))
        if int(parallel.to_host(self.state.step)) != at or pos.epoch * self.steps_per_epoch + pos.batch != at:
            raise checkpoints.CheckpointError(
                f"{self.workdir}: checkpoint step {at} does not match its data position (epoch {pos.epoch}, batch "
                f"{pos.batch}) with {self.steps_per_epoch} steps per epoch: was the dataset or batch size changed?")
        self.run_state = RunState(step=at, position=pos, best_mean_f1=saved.get("best_mean_f1"),
                                  best_step=saved.get("best_step"), evaluations=dict(saved.get("evaluations") or {}),
                                  resumed_from=at)

    def _start_logs(self) -> None:
        """``config.json``; ``metrics.jsonl`` without the lines logged after the checkpoint resumed from (or, with
        none, by a run killed before its first save): they would repeat steps."""
        if self.is_main:
            with open(os.path.join(self.workdir, "config.json"), "w") as f:
                json.dump(checkpoints.config_to_dict(self.config), f, indent=2)
        self.writer.truncate_after(self.run_state.resumed_from or 0)

    def _train(self) -> None:
        """Epochs until ``max_steps`` or SIGTERM."""
        run_state = self.run_state
        bar = tqdm(total=self.max_steps, initial=run_state.step, desc=os.path.basename(self.workdir) or "train",
                   disable=not (self.progress and self.is_main), dynamic_ncols=True, leave=False)
        self.reader = _MetricsReader(self, bar)
        try:
            with _SigtermFlag() as sigterm:
                while run_state.step < self.max_steps and run_state.interrupted is None:
                    self.train_epoch(sigterm)
                    if run_state.interrupted:
                        self.save()
                    elif run_state.position.batch == 0 or run_state.step >= self.max_steps:   # epoch end or max_steps
                        self.evaluate_and_save()
                    self.writer.flush()
        finally:
            bar.close()

    def train_epoch(self, sigterm: _SigtermFlag) -> None:
        """Runs the rest of the current epoch (or up to ``max_steps``), saving every
        ``train.checkpoint_every_steps`` steps; stops after the step during which SIGTERM came."""
        run_state, steps_per_epoch = self.run_state, self.steps_per_epoch
        epoch, start = run_state.position.epoch, run_state.position.batch
        every = int(self.config.train.checkpoint_every_steps)
        it = iter(self.data.train_batches(epoch, start))
        for batch_index in range(start, start + min(steps_per_epoch - start, self.max_steps - run_state.step)):
            try:
                host_batch = next(it)
            except StopIteration:
                raise RuntimeError(f"the training pipeline ended after {batch_index} of {steps_per_epoch} batches in "
                                   f"epoch {epoch}") from None
            batch = parallel.shard_batch(host_batch, self.mesh, global_batch=self.global_batch)
            self.state, dev_metrics = self.train_step(self.state, batch, self.loss_weights)
            self.last_images = batch["image"]
            run_state.step += 1
            end_of_epoch = batch_index + 1 == steps_per_epoch
            run_state.position = Position(epoch + 1, 0) if end_of_epoch else Position(epoch, batch_index + 1)
            self.reader.push(run_state.step, dev_metrics)
            if sigterm.set:
                run_state.interrupted = "SIGTERM"
                break
            if not end_of_epoch and run_state.step % every == 0 and run_state.step < self.max_steps:
                self.reader.drain()
                self.save()
        self.reader.drain()

    def evaluate_and_save(self) -> None:
        """Runs every evaluator (``metrics.jsonl`` rows of its name), then saves; the ``"val"`` mean F1 ranks
        the checkpoint for the best one (ties: the later checkpoint, as orbax's ``BestN``)."""
        run_state = self.run_state
        if not self.evaluators:
            self.save()
            return
        self.check_outputs()      # a diverged model is reported as such, not evaluated
        variables = parallel.to_host(self.state.variables()) if jax.process_count() > 1 else self.state.variables()
        epoch = max(run_state.step - 1, 0) // self.steps_per_epoch
        for name, evaluate in self.evaluators.items():
            t0 = time.time()
            result = evaluate(variables)
            seconds = time.time() - t0
            self.reader.exclude(seconds)     # images/s counts training time only
            run_state.evaluations[name] = result
            self.writer.write(run_state.step, epoch, name, eval_scalars(result, seconds))
        val_f1 = None
        if SELECT_ON in self.evaluators:
            val_f1 = float(run_state.evaluations[SELECT_ON]["mean_f1"])
            if run_state.best_mean_f1 is None or val_f1 >= run_state.best_mean_f1:
                run_state.best_mean_f1, run_state.best_step = val_f1, run_state.step
        self.save(val_mean_f1=val_f1, checked=True)

    def meta(self) -> dict[str, Any]:
        """The ``meta`` item of a checkpoint of the current step."""
        run_state = self.run_state
        return {"kind": "train", "format_version": checkpoints.FORMAT_VERSION,
                "config": checkpoints.config_to_dict(self.config), "step": run_state.step,
                "epoch": run_state.position.epoch, "batch_in_epoch": run_state.position.batch,
                "steps_per_epoch": self.steps_per_epoch, "best_mean_f1": run_state.best_mean_f1,
                "best_step": run_state.best_step, "evaluations": run_state.evaluations}

    def save(self, *, val_mean_f1: float | None = None, checked: bool = False) -> None:
        """Starts an asynchronous save of the current step (a no-op if it exists), after ``check_outputs``
        (``checked``: already done for this step)."""
        if not checked:
            self.check_outputs()
        try:
            self.manager.save(self.run_state.step, self.state.variables(), self.state.train_items(), self.meta(),
                              val_mean_f1=val_mean_f1)
        except Exception as e:
            if ckpt_lib.is_disk_full(e):
                raise _disk_full(e, self.workdir) from e
            raise

    def check_outputs(self) -> None:
        """Raises NonFiniteLossError when the current parameters give non-finite eval-mode outputs on the last
        training batch (``steps.outputs_finite``; one forward per save). Such a state is never saved, so every
        checkpoint, and hence the "last good checkpoint" of the messages, gives finite outputs on its data."""
        if self.last_images is None or bool(parallel.to_host(self.outputs_finite(self.state, self.last_images))):
            return
        raise NonFiniteLossError(
            f"non-finite eval-mode outputs at step {self.run_state.step} (the parameters have diverged, although "
            f"the training loss was still finite). Stopping; this step was not saved. Last good checkpoint: "
            f"{self.last_good_checkpoint()}. Lower train.lr (--set train.lr=...), then rerun with --resume.")

    def last_good_checkpoint(self) -> str:
        """The newest saved checkpoint once pending saves are written (every saved one has finite outputs), or
        "none"."""
        self.manager.wait()
        latest = self.manager.latest_step()
        return "none" if latest is None else str(self.manager.path(latest))

    def check_finite(self, at_step: int, metrics: Mapping[str, float]) -> None:
        """Raises NonFiniteLossError naming the step and the last good checkpoint."""
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        if bad:
            raise NonFiniteLossError(
                f"non-finite training metrics at step {at_step}: {bad}. Stopping; nothing after step "
                f"{at_step - 1} was saved. Last good checkpoint: {self.last_good_checkpoint()}. Lower train.lr "
                "(--set train.lr=...) or check the data, then rerun with --resume.")

    def _close(self) -> None:
        """Waits for pending saves (a full disk becomes one DiskFullError), then closes manager and writer (those
        ``_setup`` got to create)."""
        try:
            if hasattr(self, "manager"):
                self.manager.wait()
        except Exception as e:
            if ckpt_lib.is_disk_full(e):
                raise _disk_full(e, self.workdir) from e
            raise
        finally:
            if hasattr(self, "manager"):
                self.manager.close()
            if hasattr(self, "writer"):
                self.writer.close()

    def summary(self) -> dict[str, Any]:
        """``{"step", "epoch", "batch_in_epoch", "evaluations" ({name: last result}), "best_mean_f1",
        "best_step", "best_checkpoint" (validation-best; None without a "val" evaluator), "last_checkpoint",
        "interrupted", "resumed_from_step", "workdir"}``."""
        run_state = self.run_state
        best = (self.manager.path(run_state.best_step)
                if run_state.best_step is not None and SELECT_ON in self.evaluators else None)
        return {"step": run_state.step, "epoch": run_state.position.epoch,
                "batch_in_epoch": run_state.position.batch, "evaluations": run_state.evaluations,
                "best_mean_f1": run_state.best_mean_f1, "best_step": run_state.best_step,
                "best_checkpoint": best if best and os.path.isdir(best) else None,
                "last_checkpoint": checkpoints.last_checkpoint(self.workdir), "interrupted": run_state.interrupted,
                "resumed_from_step": run_state.resumed_from, "workdir": self.workdir}


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike, model: nn.Module, data: DataSource,
          evaluators: Mapping[str, Evaluator] | None = None, *, resume: bool = False,
          resume_from_previous: bool = False, progress: bool = True, tensorboard: bool = True,
          callbacks: Sequence[StepCallback] = ()) -> dict[str, Any]:
    """``Trainer(...).run(...)`` in one call; see ``Trainer``."""
    return Trainer(config, workdir, model, data, evaluators, progress=progress, tensorboard=tensorboard,
                   callbacks=callbacks).run(resume=resume, resume_from_previous=resume_from_previous)
