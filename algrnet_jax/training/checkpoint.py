"""The training work directory's checkpoint manager (``TrainCheckpointer``) and its disk-full handling.

The format itself (items, checksum manifest, which path names which checkpoint, loading for inference) is
``algrnet_jax.checkpoints``. A training work directory holds ``checkpoints/<step>/``, written by ONE orbax
manager every epoch and every ``train.checkpoint_every_steps`` steps, whose preservation policy keeps the last
``train.keep_checkpoints`` plus the one with the best VALIDATION mean F1 (never selected on the test part).
"""
from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as ocp_managers

from algrnet_jax import checkpoints
from algrnet_jax.errors import UserError

log = logging.getLogger(__name__)


class DiskFullError(UserError, OSError):
    """A checkpoint could not be written for lack of disk space; the message names the directory."""


def _says_disk_full(text: str) -> bool:
    text = text.lower()
    return "no space left on device" in text or "disk quota exceeded" in text


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or anything in its cause/context chain) is "no space left on device"."""
    seen = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if _says_disk_full(str(e)):
            return True
        e = e.__cause__ or e.__context__
    return False


class _DiskFullFilter(logging.Filter):
    """Drops orbax's log records (with their tracebacks, hundreds of lines) about a full disk: the failed save
    also raises, and the trainer turns that into one message (``DiskFullError``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and is_disk_full(record.exc_info[1]):
            return False
        return not _says_disk_full(record.getMessage())


logging.getLogger("absl").addFilter(_DiskFullFilter())
# A failed async save can also leave a future whose exception nobody retrieves; asyncio logs it at garbage
# collection ("Future exception was never retrieved"), with the same disk-full traceback.
logging.getLogger("asyncio").addFilter(_DiskFullFilter())


class _MissingMetricsFilter(logging.Filter):
    """Drops orbax's "Requested `tracked_metric`; did not provide metrics." warning: mid-epoch checkpoints have
    no validation result by design (they are kept by recency, never as the best)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_MissingMetricsFilter())


class TrainCheckpointer:
    """The one orbax manager of a training work directory: ``checkpoints/<step>``, async saves.

    Preservation policy: the latest ``keep`` checkpoints, plus (``track_best``) the one with the best
    validation mean F1 (``save(..., val_mean_f1=...)``; saves without it are kept by recency only). Every
    checkpoint holds the full training state, so any can be resumed from or used for inference.
    """

    def __init__(self, workdir: str | os.PathLike, keep: int = 3, *, track_best: bool = False,
                 async_save: bool = True):
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.directory = os.path.join(self.workdir, checkpoints.CHECKPOINTS_DIR)
        self.track_best = track_best
        checkpoints.ignore_closed_loop_callbacks()
        self._unsealed: int | None = None   # step whose checksum manifest is still to be written
        self._seal_lock = threading.Lock()
        policy: ocp_managers.PreservationPolicy = ocp_managers.LatestN(max(1, int(keep)))
        if track_best:
            policy = ocp_managers.AnyPreservationPolicy([policy, ocp_managers.BestN(
                get_metric_fn=checkpoints.val_mean_f1, reverse=False, n=1, keep_checkpoints_without_metrics=False)])
        opts = ocp.CheckpointManagerOptions(
            create=True, cleanup_tmp_directories=True, enable_async_checkpointing=async_save,
            preservation_policy=policy, best_fn=checkpoints.val_mean_f1 if track_best else None, best_mode="max",
            async_options=ocp.AsyncOptions(post_finalization_callback=self._seal))
        self.manager = ocp.CheckpointManager(self.directory, options=opts, item_names=checkpoints.ITEMS)

    def _seal(self) -> None:
        """Writes the checksum manifest of the save orbax has just finalised (process 0).

        Orbax calls this after the items are finalised but before it renames the temporary directory
        ``<step>.orbax-checkpoint-tmp-*`` to ``<step>``, so the manifest is part of the atomic commit: every
        committed checkpoint has one. Without a temporary directory (synchronous save) the final one is used.
        """
        with self._seal_lock:
            step, self._unsealed = self._unsealed, None
        if step is None or jax.process_index() != 0:
            return
        final = self.path(step)
        tmp = [os.path.join(self.directory, n) for n in os.listdir(self.directory)
               if n.startswith(f"{step}.orbax-checkpoint-tmp")]
        target = tmp[0] if len(tmp) == 1 else final
        if os.path.isdir(target):
            try:
                checkpoints.write_manifest(target)
            except OSError as e:  # disk full: the save itself fails and is reported by the trainer
                if not is_disk_full(e):
                    log.warning("%s: could not write the checksum manifest (%s)", final, e)

    def path(self, step: int) -> str:
        """The directory of step ``step``'s checkpoint."""
        return os.path.join(self.directory, str(step))

    def save(self, step: int, variables: Any, train: Any, meta: Mapping[str, Any], *,
             val_mean_f1: float | None = None) -> bool:
        """Starts an async save of step ``step`` (no-op if it exists); ``val_mean_f1`` ranks it for best."""
        if step in self.manager.all_steps():
            return False
        self.manager.wait_until_finished()
        self._unsealed = step
        args = ocp.args.Composite(variables=ocp.args.StandardSave(variables), train=ocp.args.StandardSave(train),
                                  meta=ocp.args.JsonSave(dict(meta)))
        metrics = {checkpoints.VAL_METRIC: float(val_mean_f1)} if self.track_best and val_mean_f1 is not None else None
        return self.manager.save(step, args=args, metrics=metrics, force=True)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The kept step with the best validation mean F1; None without ``track_best`` or before any."""
        return self.manager.best_step() if self.track_best else None

    def restore(self, abstract_variables: Any, abstract_train: Any, *, step: int | None = None,
                fall_back: bool = False) -> tuple[Any, Any, dict[str, Any]]:
        """Restores ``(variables, train, meta)`` into the given abstract trees (shapes, dtypes, shardings).

        Tries ``step`` (default: the latest). Its files are first checked against the checksum manifest.
        A checkpoint that is corrupt or cannot be read raises CheckpointError naming it, unless ``fall_back``
        is set, in which case older checkpoints are tried in turn.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        if step is not None:
            steps = [s for s in steps if s <= step]
        if not steps:
            raise checkpoints.CheckpointError(f"{self.directory}: no checkpoint to resume from")
        errors, unreadable = [], []
        for s in steps:
            ckpt = self.path(s)
            try:
                checkpoints.verify_manifest(ckpt)
                restored = self.manager.restore(s, args=ocp.args.Composite(
                    variables=ocp.args.StandardRestore(abstract_variables),
                    train=ocp.args.StandardRestore(abstract_train),
                    meta=ocp.args.JsonRestore()))
                if unreadable:
                    self._set_aside(unreadable)
                return restored["variables"], restored["train"], dict(restored["meta"])
            except Exception as e:
                unreadable.append(ckpt)
                why = str(e) if isinstance(e, checkpoints.CheckpointError) else checkpoints.describe_error(e)
                errors.append(f"{ckpt}: {why}")
                if not fall_back:
                    raise checkpoints.CheckpointError(
                        f"{ckpt}: cannot read checkpoint ({why}); "
                        "pass --resume-from-previous to fall back to the previous checkpoint") from e
        raise checkpoints.CheckpointError("no readable checkpoint:\n  " + "\n  ".join(errors))

    def _set_aside(self, paths: list[str]) -> None:
        """Renames unreadable checkpoints to ``<step>.unreadable`` (kept for inspection, ignored by orbax),
        so the resumed run can write those steps again."""
        if jax.process_index() == 0:
            for path in paths:
                target = path + ".unreadable"
                n = 1
                while os.path.exists(target):
                    target, n = f"{path}.unreadable{n}", n + 1
                os.rename(path, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("algrnet_set_aside_unreadable_checkpoints")
        self.manager.reload()

    def wait(self) -> None:
        """Blocks until pending async saves are committed (and their checksum manifests written)."""
        self.manager.wait_until_finished()
        self._seal()   # a synchronous save may finish without the callback

    def close(self) -> None:
        self.manager.close()
