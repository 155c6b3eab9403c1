"""The training loop: ``train(config, workdir, *, resume=False) -> dict``.

Per step: the pipeline's next batch (``data_pipelines.pipeline.train_batches``) is sharded over the
device mesh and the jitted ``train_step`` runs (``steps.py``). Metrics of step i are read while step
i+1 runs, so the host never waits on the device except to save. Checkpoints (``checkpoint.py``) are
written asynchronously every ``train.checkpoint_every_steps`` steps and at every epoch end, after an
evaluation of the test part of the fold (``evaluation.evaluate_variables``); the best mean F1 is kept
in ``<workdir>/best``.

Exact resume: a checkpoint holds params, BatchNorm statistics, optimizer state, step, RNG and the data
position (epoch, batch in epoch); the pipeline is deterministic given seed and epoch and can start at any
batch, so a resumed run sees the same batches in the same order and ends with the same parameters.

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
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from algrnet_jax.errors import UserError
from algrnet_jax.locking import DirLock
from algrnet_jax.training import checkpoint as ckpt_lib
from algrnet_jax.training import optim, parallel, state as state_lib, steps
from algrnet_jax.training.metric_writers import MetricWriter

# Config keys that may change between a run and its resumption (they do not change the result).
RESUMABLE_CHANGES = ("train.num_epochs", "train.max_steps", "train.log_every_steps", "train.checkpoint_every_steps",
                     "train.keep_checkpoints", "data.data_dir", "data.prefetch", "data.eval_batch_size",
                     "data.skip_bad")
StepCallback = Callable[[int, dict[str, float]], None]
LOCK_FILE = ".lock"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class ResumeError(UserError, ValueError):
    """The work directory cannot be (re)used with this config: other config, or a run without --resume."""


@dataclasses.dataclass
class _Position:
    """Data position of the NEXT batch."""
    epoch: int
    batch: int


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resumable(saved: dict[str, Any], config: ml_collections.ConfigDict, where: str) -> None:
    """Raises ResumeError listing the config keys that differ from the run being resumed."""
    a, b = _flat(saved), _flat(ckpt_lib.config_to_dict(config))
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)
    if diff:
        lines = "\n".join(f"  {k}: checkpoint {a.get(k)!r}, now {b.get(k)!r}" for k in diff)
        raise ResumeError(f"{where}: the config differs from the run being resumed in {len(diff)} field(s) (an "
                          f"exact resume needs the same config; only {', '.join(RESUMABLE_CHANGES)} may change):\n"
                          f"{lines}\nrun with the checkpoint's values, or choose a new --workdir")


def _check_saved_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Compares ``config`` with the config of the newest checkpoint in ``workdir`` before any work.

    Only the small JSON ``meta`` item is read. A checkpoint whose ``meta`` is unreadable is left to the
    restore (which names it and can fall back to an older one).
    """
    steps_ = ckpt_lib._step_dirs(os.path.join(workdir, ckpt_lib.CHECKPOINTS_DIR))
    if not steps_:
        return
    latest = os.path.join(workdir, ckpt_lib.CHECKPOINTS_DIR, str(steps_[-1]))
    try:
        saved = ckpt_lib.read_meta(latest)
    except ckpt_lib.CheckpointError:
        return
    check_resumable(saved["config"], config, latest)


def _disk_full(error: BaseException, workdir: str) -> ckpt_lib.DiskFullError:
    good = last_good_path(workdir)
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


def _eval_scalars(result: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The headline numbers of an evaluation result (no per-AU lists) for the logs."""
    out: dict[str, Any] = {"mean_f1": float(result["mean_f1"]), "eval_seconds": seconds}
    for key, pred in (result.get("predictions") or {}).items():
        out[f"{key}_mean_f1"] = pred.get("mean_f1")
        out[f"{key}_mean_accuracy"] = pred.get("mean_accuracy")
    for key in ("accuracy", "landmarks"):
        if key in result:
            out[key] = result[key]
    return out


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


def _make_evaluate(model: nn.Module) -> Callable[[ml_collections.ConfigDict, Any], dict[str, Any]]:
    """``evaluation.evaluate_variables`` with ``model``'s eval forward, jitted once for the whole run."""
    from algrnet_jax.evaluation import eval_forward, evaluate_variables

    apply_fn = eval_forward(model)

    def evaluate(config: ml_collections.ConfigDict, variables: Any) -> dict[str, Any]:
        return evaluate_variables(config, variables, apply_fn=apply_fn)

    return evaluate


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, resume: bool = False,
          resume_from_previous: bool = False, evaluate: bool | Callable[[ml_collections.ConfigDict, Any], dict] = True,
          progress: bool = True, tensorboard: bool = True, callbacks: Sequence[StepCallback] = (),
          batches_fn: Callable[..., Iterable[dict[str, Any]]] | None = None,
          model: nn.Module | None = None) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (data-parallel over every device of every process).

    Args:
      config: full experiment config (``configs.get_config`` plus overrides).
      workdir: output directory: ``checkpoints/``, ``best/``, ``config.json``, ``metrics.jsonl``,
        ``tensorboard/``.
      resume: continue from the latest checkpoint in ``workdir`` (start fresh if there is none).
      resume_from_previous: if the latest checkpoint cannot be read, fall back to older ones.
      evaluate: evaluate at each epoch end (True: ``evaluation.evaluate_variables``; or a callable
        ``(config, variables) -> {"mean_f1": ..., ...}``; False: no evaluation, no best checkpoint).
      progress: show a progress bar (process 0).
      tensorboard: also write TensorBoard summaries.
      callbacks: ``f(step, metrics)`` called with each step's host metrics (``step`` counts from 1).
      batches_fn: replaces ``data_pipelines.pipeline.train_batches`` (same signature).
      model: replaces ``models.networks.create_model(config)`` (any Flax module with the same inputs,
        ``batch_stats`` collection and output dict).

    Returns:
      ``{"step", "epoch", "metrics" (last evaluation), "best_mean_f1", "best_checkpoint",
      "last_checkpoint", "interrupted", "resumed_from_step", "workdir"}``.
    """
    from algrnet_jax.configs.validate import validate_config
    from data_pipelines import builders

    validate_config(config)
    workdir = os.path.abspath(os.fspath(workdir))
    os.makedirs(workdir, exist_ok=True)
    # One writer per work directory (process 0 of a multi-host run speaks for all of them). The OS drops the
    # lock when the process dies, SIGKILL included, so a killed run can be resumed at once.
    lock = DirLock(os.path.join(workdir, LOCK_FILE), f"work directory {workdir}",
                   "wait for that run to end (or stop it), or choose another --workdir")
    if jax.process_index() == 0:
        lock.acquire()
    try:
        if not resume and ckpt_lib._step_dirs(os.path.join(workdir, ckpt_lib.CHECKPOINTS_DIR)):
            raise ResumeError(f"{workdir}: holds checkpoints already; pass --resume to continue that run "
                              "or choose a new --workdir")
        if resume:
            _check_saved_config(workdir, config)
        # The checkpoint stores where the data is, resolved: eval works from any working directory.
        config.data.data_dir = os.path.abspath(config.data.data_dir or builders.default_data_dir())
        return _train(config, workdir, resume_from_previous=resume_from_previous, evaluate=evaluate,
                      progress=progress, tensorboard=tensorboard, callbacks=callbacks, batches_fn=batches_fn,
                      model=model)
    except ckpt_lib.DiskFullError:
        raise
    except Exception as e:
        # A full disk can surface anywhere an asynchronous save is awaited (saving, waiting, closing).
        if ckpt_lib.is_disk_full(e):
            raise _disk_full(e, workdir) from e
        raise
    finally:
        lock.release()


def _train(config: ml_collections.ConfigDict, workdir: str, *, resume_from_previous: bool,
           evaluate: bool | Callable[[ml_collections.ConfigDict, Any], dict], progress: bool, tensorboard: bool,
           callbacks: Sequence[StepCallback], batches_fn: Callable[..., Iterable[dict[str, Any]]] | None,
           model: nn.Module | None) -> dict[str, Any]:
    """``train`` once the work directory is locked and the config checked."""
    from data_pipelines import pipeline

    is_main = jax.process_index() == 0
    tc = config.train
    config_path = os.path.join(workdir, "config.json")

    # ---- data and devices
    mesh = parallel.make_mesh()
    global_batch = int(config.data.batch_size)
    parallel.check_batch_size(global_batch, mesh)
    steps_per_epoch = int(pipeline.steps_per_epoch(config))
    if steps_per_epoch < 1:
        raise ValueError(f"dataset {config.data.dataset!r} ({config.data.builder_config!r}) fold {config.data.fold} "
                         f"has fewer training examples than one batch ({global_batch})")
    au_weight = parallel.replicate(np.asarray(pipeline.au_loss_weights(config), np.float32), mesh)
    batches_fn = batches_fn or pipeline.train_batches
    num_epochs = int(tc.num_epochs)
    max_steps = int(tc.max_steps) if int(tc.max_steps) > 0 else num_epochs * steps_per_epoch
    max_steps = min(max_steps, num_epochs * steps_per_epoch)

    # ---- state
    if model is None:
        from algrnet_jax.models.networks import create_model

        model = create_model(config)
    tx = optim.make_optimizer(tc, steps_per_epoch)
    state = state_lib.new_train_state(model, config, tx, jax.random.PRNGKey(int(tc.seed)),
                                      out_shardings=parallel.replicated(mesh))
    manager = ckpt_lib.TrainCheckpointer(workdir, keep=int(tc.keep_checkpoints))
    pos = _Position(0, 0)
    best_f1, best_step, last_eval, resumed_from = -math.inf, None, None, None
    if manager.latest_step() is not None:
        try:
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
            variables, train_items, saved = manager.restore(abstract.variables(), abstract.train_items(),
                                                            fall_back=resume_from_previous)
            check_resumable(saved["config"], config,
                            os.path.join(workdir, ckpt_lib.CHECKPOINTS_DIR, str(saved["step"])))
        except Exception:
            manager.close()
            raise
        state = state.replace_items(variables, train_items)
        pos = _Position(int(saved["epoch"]), int(saved["batch_in_epoch"]))
        best_f1 = -math.inf if saved.get("best_mean_f1") is None else float(saved["best_mean_f1"])
        best_step = saved.get("best_step")
        last_eval = saved.get("metrics")
        resumed_from = int(saved["step"])
        if int(parallel.to_host(state.step)) != resumed_from or pos.epoch * steps_per_epoch + pos.batch != resumed_from:
            manager.close()
            raise ckpt_lib.CheckpointError(
                f"{workdir}: checkpoint step {resumed_from} does not match its data position "
                f"(epoch {pos.epoch}, batch {pos.batch}) with {steps_per_epoch} steps per epoch: "
                "was the dataset or batch size changed?")
    if is_main:
        with open(config_path, "w") as f:
            json.dump(ckpt_lib.config_to_dict(config), f, indent=2)
    writer = MetricWriter(workdir, enabled=is_main, tensorboard=tensorboard)
    # Lines logged after the checkpoint we resume from (or, with none, by a run killed before its first
    # save) would repeat steps: drop them.
    writer.truncate_after(resumed_from or 0)

    evaluate_fn = (_make_evaluate(model) if evaluate is True else evaluate) if evaluate else None
    train_step = steps.make_train_step(config, mesh)
    step = int(parallel.to_host(state.step))

    def meta(position: _Position, metrics: dict | None) -> dict[str, Any]:
        return {"kind": "train", "format_version": ckpt_lib.FORMAT_VERSION, "config": ckpt_lib.config_to_dict(config),
                "step": step, "epoch": position.epoch, "batch_in_epoch": position.batch,
                "steps_per_epoch": steps_per_epoch, "best_mean_f1": best_f1 if math.isfinite(best_f1) else None,
                "best_step": best_step,
                "metrics": metrics}

    def save(position: _Position, metrics: dict | None = None) -> None:
        try:
            manager.save(step, state.variables(), state.train_items(), meta(position, metrics))
        except Exception as e:
            if ckpt_lib.is_disk_full(e):
                raise _disk_full(e, workdir) from e
            raise

    def last_good() -> str:
        manager.wait()
        s = manager.latest_step()
        return "none" if s is None else os.path.join(workdir, ckpt_lib.CHECKPOINTS_DIR, str(s))

    def check_finite(at_step: int, m: dict[str, float]) -> None:
        bad = {k: v for k, v in m.items() if not math.isfinite(v)}
        if bad:
            raise NonFiniteLossError(
                f"non-finite training metrics at step {at_step}: {bad}. Stopping; nothing after step "
                f"{at_step - 1} was saved. Last good checkpoint: {last_good()}. Lower train.lr "
                "(--set train.lr=...) or check the data, then rerun with --resume.")

    def run_eval(position: _Position) -> dict[str, Any] | None:
        nonlocal best_f1, best_step, last_eval, t_window
        if evaluate_fn is None:
            save(position)
            return None
        variables = parallel.to_host(state.variables()) if jax.process_count() > 1 else state.variables()
        t0 = time.time()
        result = evaluate_fn(config, variables)
        last_eval = result
        f1 = float(result["mean_f1"])
        t_window += time.time() - t0    # images/s counts training time only
        writer.write(step, max(step - 1, 0) // steps_per_epoch, "eval", _eval_scalars(result, time.time() - t0))
        improved = f1 > best_f1
        if improved:
            best_f1, best_step = f1, step
        save(position, result)
        if improved:
            manager.save_best(step, state.variables(), state.train_items(), meta(position, result))
        return result

    if resumed_from is not None and best_step == resumed_from and not manager.has_best(best_step):
        # The run was killed after this checkpoint but before its copy in best/ committed.
        manager.save_best(step, state.variables(), state.train_items(), meta(pos, last_eval))
    interrupted = None
    pending: tuple[int, Any] | None = None    # (step, device metrics) not yet read
    window: list[dict[str, float]] = []
    t_window, n_window = time.time(), 0

    def drain() -> None:
        """Reads the pending step's metrics: NaN check, callbacks, logging."""
        nonlocal pending, t_window, n_window
        if pending is None:
            return
        at, dev_metrics = pending
        pending = None
        m = {k: float(v) for k, v in parallel.to_host(dev_metrics).items()}
        check_finite(at, m)
        m["lr"] = optim.learning_rate_at(tc, at - 1, steps_per_epoch)
        window.append(m)
        for cb in callbacks:
            cb(at, m)
        if at % int(tc.log_every_steps) == 0 or at == max_steps:
            dt = max(time.time() - t_window, 1e-9)
            avg = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            avg["images_per_sec"] = n_window * global_batch / dt
            writer.write(at, (at - 1) // steps_per_epoch, "train", avg)
            window.clear()
            t_window, n_window = time.time(), 0
        bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}",
                        img_s=f"{(n_window * global_batch) / max(time.time() - t_window, 1e-9):.0f}", refresh=False)

    bar = _progress(max_steps, step, os.path.basename(workdir) or "train", progress and is_main)
    try:
        with _SigtermFlag() as sigterm:
            while step < max_steps and interrupted is None:
                epoch = pos.epoch
                n_batches = min(steps_per_epoch - pos.batch, max_steps - step)
                it = iter(batches_fn(config, epoch=epoch, start_batch=pos.batch))
                for _ in range(n_batches):
                    try:
                        host_batch = next(it)
                    except StopIteration:
                        raise RuntimeError(f"the training pipeline ended after {pos.batch} of {steps_per_epoch} "
                                           f"batches in epoch {epoch}") from None
                    batch = parallel.shard_batch(host_batch, mesh, global_batch=global_batch)
                    state, dev_metrics = train_step(state, batch, au_weight)
                    step += 1
                    n_window += 1
                    pos = _Position(epoch, pos.batch + 1)
                    drain()  # the previous step's metrics, read while this step runs
                    pending = (step, dev_metrics)
                    bar.update(1)
                    end_of_epoch = pos.batch == steps_per_epoch
                    if sigterm.set:
                        interrupted = "SIGTERM"
                        break
                    if not end_of_epoch and step % int(tc.checkpoint_every_steps) == 0 and step < max_steps:
                        drain()
                        save(pos)
                drain()
                if interrupted:
                    save(_Position(epoch + 1, 0) if pos.batch == steps_per_epoch else pos, last_eval)
                    break
                if pos.batch == steps_per_epoch:
                    pos = _Position(epoch + 1, 0)
                    run_eval(pos)
                elif step >= max_steps:
                    run_eval(pos)   # stopped mid-epoch by train.max_steps
                writer.flush()
    finally:
        bar.close()
        try:
            manager.wait()
        except Exception as e:
            if ckpt_lib.is_disk_full(e):
                raise _disk_full(e, workdir) from e
            raise
        finally:
            best_path = manager.best_path()
            manager.close()
            writer.close()
    return {"step": step, "epoch": pos.epoch, "batch_in_epoch": pos.batch, "metrics": last_eval,
            "best_mean_f1": best_f1 if math.isfinite(best_f1) else None, "best_checkpoint": best_path,
            "last_checkpoint": last_good_path(workdir), "interrupted": interrupted,
            "resumed_from_step": resumed_from, "workdir": workdir}


def last_good_path(workdir: str) -> str | None:
    """Path of the newest committed step checkpoint in ``workdir/checkpoints``."""
    steps_ = ckpt_lib._step_dirs(os.path.join(workdir, ckpt_lib.CHECKPOINTS_DIR))
    return os.path.join(workdir, ckpt_lib.CHECKPOINTS_DIR, str(steps_[-1])) if steps_ else None
