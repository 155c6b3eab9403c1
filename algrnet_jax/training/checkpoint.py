"""Orbax checkpoints: training checkpoints (exact resume) and inference checkpoints (variables + config).

Every checkpoint is an orbax composite directory with the items

- ``variables``: ``{"params": ..., "batch_stats": ...}`` (what ``model.apply`` takes),
- ``train`` (training checkpoints only): ``{"opt_state": ..., "step": [], "rng": uint32 [2]}``,
- ``meta`` (JSON): ``{"kind": "train" | "inference", "config": <config as a dict>, ...}``; training
  checkpoints add the data position ``epoch`` / ``batch_in_epoch`` of the next batch, ``step``,
  ``best_mean_f1`` so far and the last evaluation ``metrics``.

A training work directory holds ``checkpoints/<step>/`` (the last ``train.keep_checkpoints`` saves, every
epoch and every ``train.checkpoint_every_steps`` steps) and ``best/<step>/`` (the one with the best
validation mean F1). ``load_for_inference(path)`` accepts a work directory (best, else latest), a
directory of step checkpoints (latest), or one checkpoint directory, e.g. one written by
``save_inference_checkpoint`` (the JAA-Net converter's output).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from algrnet_jax.errors import UserError
from algrnet_jax.fileio import atomic_path

FORMAT_VERSION = 1
CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
MANIFEST = "algrnet_checksums.json"
_ITEMS = ("variables", "train", "meta")
log = logging.getLogger(__name__)


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, incomplete, corrupt or unreadable; the message names the path."""


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


# ------------------------------------------------------------------------------------- checksums

def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# Top-level files orbax rewrites when it commits (after the manifest): bookkeeping, not checkpoint data.
_UNSEALED_FILES = (MANIFEST, "_CHECKPOINT_METADATA", "commit_success.txt")


def _files(ckpt: str) -> list[str]:
    out = []
    for root, _, names in os.walk(ckpt):
        out += [os.path.relpath(os.path.join(root, n), ckpt) for n in names
                if not (root == ckpt and n in _UNSEALED_FILES) and ".tmp" not in n]
    return sorted(out)


def write_manifest(ckpt: str) -> str:
    """Writes ``<ckpt>/algrnet_checksums.json``: size and SHA-256 of every file of a finished checkpoint.

    Written to a temporary name and renamed, so a manifest is either complete or absent.
    """
    files = {rel: {"size": os.path.getsize(os.path.join(ckpt, rel)), "sha256": _sha256(os.path.join(ckpt, rel))}
             for rel in _files(ckpt)}
    path = os.path.join(ckpt, MANIFEST)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump({"algorithm": "sha256", "files": files}, f, indent=0)
        f.flush()
        os.fsync(f.fileno())
    return path


def verify_manifest(ckpt: str) -> bool:
    """Checks every file of ``ckpt`` against its checksum manifest.

    Returns False when the checkpoint has no manifest (written before manifests existed, or killed between
    the commit and the manifest), True when every file matches.
    Raises:
      CheckpointError: naming the first file that is missing, of another size or of another SHA-256.
    """
    path = os.path.join(ckpt, MANIFEST)
    if not os.path.isfile(path):
        return False
    try:
        with open(path) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable checksum manifest ({e})") from e
    for rel, want in sorted(files.items()):
        p = os.path.join(ckpt, rel)
        if not os.path.isfile(p):
            raise CheckpointError(f"{p}: file of the checkpoint is missing (listed in {MANIFEST})")
        size = os.path.getsize(p)
        if size != want["size"]:
            raise CheckpointError(f"{p}: corrupt checkpoint file ({size} bytes, {want['size']} when written)")
        if _sha256(p) != want["sha256"]:
            raise CheckpointError(f"{p}: corrupt checkpoint file (SHA-256 differs from the one recorded when "
                                  f"it was written, in {MANIFEST})")
    return True


# ----------------------------------------------------------------------------------------- config

def config_to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """JSON-able dict of a config (tuples become lists; ``config_from_dict`` turns them back)."""
    return json.loads(config.to_json())


def _tuples(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


def config_from_dict(d: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Inverse of ``config_to_dict``: JSON lists become tuples, as the named configs hold them."""
    return ml_collections.ConfigDict(_tuples(dict(d)))


# ----------------------------------------------------------------------------------- directories

def _step_dirs(directory: str) -> list[int]:
    """Finalised step numbers under an orbax manager directory (orbax writes to a temporary name
    and renames on commit, so an interrupted save never shows up as a bare number)."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def _is_checkpoint(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "variables")) and os.path.isdir(os.path.join(path, "meta"))


def resolve_checkpoint(path: str | os.PathLike) -> str:
    """The single checkpoint directory that ``path`` designates.

    ``path`` may be a checkpoint directory, a directory of numbered step checkpoints (latest is taken)
    or a training work directory (the latest of ``checkpoints/``, i.e. the LAST checkpoint). The trainer's
    ``best/`` copy is chosen by F1 on the fold's test part, so it is used only when named explicitly
    (``<workdir>/best``): numbers reported on the test part must not be selected on it.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint or directory")
    if _is_checkpoint(path):
        return path
    for sub in (CHECKPOINTS_DIR, BEST_DIR, ""):
        d = os.path.join(path, sub) if sub else path
        steps = _step_dirs(d)
        if steps:
            return os.path.join(d, str(steps[-1]))
    raise CheckpointError(
        f"{path}: not a checkpoint (expected 'variables/' and 'meta/' items, numbered step directories, "
        f"or a training work directory with '{BEST_DIR}/' or '{CHECKPOINTS_DIR}/')")


# ------------------------------------------------------------------------------ reading / writing

def read_meta(ckpt: str) -> dict[str, Any]:
    """The ``meta`` item (JSON) of one checkpoint directory: kind, config, data position, ..."""
    meta_dir = os.path.join(ckpt, "meta")
    try:
        meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(meta_dir)
    except Exception as e:  # orbax raises many types; the user needs the path
        raise CheckpointError(f"{ckpt}: cannot read checkpoint metadata 'meta' ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict) or "config" not in meta:
        raise CheckpointError(f"{ckpt}: checkpoint metadata has no 'config' entry")
    return meta


class _ItemMetadataFilter(logging.Filter):
    """Drops orbax's "Metadata file does not exist: <item>/_CHECKPOINT_METADATA" warning: an item of a composite
    checkpoint restored on its own has no such file (the composite keeps it one level up); nothing is wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "_CHECKPOINT_METADATA" not in record.getMessage()


logging.getLogger("absl").addFilter(_ItemMetadataFilter())


class _DiskFullFilter(logging.Filter):
    """Drops orbax's log records (with their tracebacks, hundreds of lines) about a full disk: the failed save
    also raises, and the trainer turns that into one message (``DiskFullError``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and is_disk_full(record.exc_info[1]):
            return False
        return not _says_disk_full(record.getMessage())


logging.getLogger("absl").addFilter(_DiskFullFilter())


def _ignore_closed_loop_callbacks() -> None:
    """After a failed async save, tensorstore completes futures of orbax's already closed event loops and
    Python reports each "RuntimeError: Event loop is closed" as unraisable (a traceback apiece). They carry
    nothing: the save's own error is raised to the trainer. This drops exactly those (others pass through)."""
    previous = sys.unraisablehook
    if getattr(previous, "_algrnet", False):
        return

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
            return
        previous(unraisable)

    hook._algrnet = True
    sys.unraisablehook = hook


def _restore_tree_numpy(item_dir: str) -> Any:
    """Restores a saved pytree as host numpy arrays, whatever devices/sharding it was saved with."""
    ckptr = ocp.PyTreeCheckpointer()
    meta = ckptr.metadata(item_dir)
    tree = getattr(getattr(meta, "item_metadata", meta), "tree", None)
    if tree is None:
        tree = meta.tree if hasattr(meta, "tree") else meta
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return ckptr.restore(item_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args))


def load_for_inference(path: str | os.PathLike) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """Loads ``(config, variables)`` from a checkpoint, a step directory or a training work directory.

    Returns:
      config: the ConfigDict the checkpoint was trained (or converted) with.
      variables: ``{"params": ..., "batch_stats": ...}`` of numpy arrays, ready for ``model.apply``.
    """
    ckpt = resolve_checkpoint(path)
    verify_manifest(ckpt)
    meta = read_meta(ckpt)
    try:
        variables = _restore_tree_numpy(os.path.join(ckpt, "variables"))
    except Exception as e:
        raise CheckpointError(f"{ckpt}: cannot read checkpoint item 'variables' ({type(e).__name__}: {e})") from e
    if not isinstance(variables, dict) or "params" not in variables:
        raise CheckpointError(f"{ckpt}: item 'variables' has no 'params'")
    variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    return config_from_dict(meta["config"]), variables


def check_inference_target(path: str | os.PathLike) -> str:
    """The absolute path if an inference checkpoint may be written there (new, empty, or an inference
    checkpoint to replace); raises CheckpointError for any other existing file or directory."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isfile(path):
        raise CheckpointError(f"{path}: is a file; give a directory for the checkpoint")
    if os.path.exists(path) and os.listdir(path):
        try:
            kind = read_meta(path).get("kind") if _is_checkpoint(path) else None
        except CheckpointError:
            kind = None
        if kind != "inference":
            raise CheckpointError(f"{path}: exists and is not an inference checkpoint; refusing to overwrite it "
                                  "(choose a new or empty directory)")
    return path


def save_inference_checkpoint(path: str | os.PathLike, config: ml_collections.ConfigDict,
                              variables: Mapping[str, Any], **extra_meta: Any) -> str:
    """Writes ``variables`` ({"params", "batch_stats"}) and the config to one checkpoint directory.

    Overwrites an existing inference checkpoint at ``path``; refuses any other existing directory.
    Returns the absolute path.
    """
    path = check_inference_target(path)
    if "params" not in variables:
        raise ValueError("variables must hold 'params' (and 'batch_stats')")
    tree = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    tree = jax.tree.map(np.asarray, tree)
    meta = {"kind": "inference", "format_version": FORMAT_VERSION, "config": config_to_dict(config), **extra_meta}
    ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    ckptr.save(path, ocp.args.Composite(variables=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)),
               force=True)
    write_manifest(path)
    return path


# ------------------------------------------------------------------------------ training manager

class TrainCheckpointer:
    """Latest-K and best-by-mean-F1 orbax managers of a training work directory (async saves).

    ``save`` writes ``checkpoints/<step>``; ``save_best`` writes ``best/<step>`` (one kept). Both hold
    the full training state, so either can be resumed from or used for inference.
    """

    def __init__(self, workdir: str | os.PathLike, keep: int = 3, async_save: bool = True):
        self.workdir = os.path.abspath(os.fspath(workdir))
        _ignore_closed_loop_callbacks()
        # Step whose checksum manifest is still to be written, per manager; orbax runs one save at a time.
        self._unsealed: dict[str, int | None] = {CHECKPOINTS_DIR: None, BEST_DIR: None}
        self._seal_lock = threading.Lock()

        def manager(sub: str, max_to_keep: int) -> ocp.CheckpointManager:
            # Distinct barrier prefixes: both managers save the same step at an epoch end, and multi-host
            # barriers are named after the step.
            opts = ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
                enable_async_checkpointing=async_save,
                async_options=ocp.AsyncOptions(post_finalization_callback=lambda: self._seal(sub)),
                multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=sub))
            return ocp.CheckpointManager(os.path.join(self.workdir, sub), options=opts, item_names=_ITEMS)
        self.latest = manager(CHECKPOINTS_DIR, max(1, int(keep)))
        self.best = manager(BEST_DIR, 1)

    def _seal(self, sub: str) -> None:
        """Writes the checksum manifest of the save of ``sub`` that orbax has just finalised (process 0).

        Orbax calls this after the items are finalised but before it renames the temporary directory
        ``<step>.orbax-checkpoint-tmp-*`` to ``<step>``, so the manifest is part of the atomic commit: every
        committed checkpoint has one. Without a temporary directory (synchronous save) the final one is used.
        """
        with self._seal_lock:
            step, self._unsealed[sub] = self._unsealed[sub], None
        if step is None or jax.process_index() != 0:
            return
        final = os.path.join(self.workdir, sub, str(step))
        tmp = [os.path.join(self.workdir, sub, n) for n in os.listdir(os.path.join(self.workdir, sub))
               if n.startswith(f"{step}.orbax-checkpoint-tmp")]
        target = tmp[0] if len(tmp) == 1 else final
        if os.path.isdir(target):
            try:
                write_manifest(target)
            except OSError as e:  # disk full: the save itself fails and is reported by the trainer
                if not is_disk_full(e):
                    log.warning("%s: could not write the checksum manifest (%s)", final, e)

    @staticmethod
    def _args(variables: Any, train: Any, meta: Mapping[str, Any]) -> ocp.args.Composite:
        return ocp.args.Composite(variables=ocp.args.StandardSave(variables), train=ocp.args.StandardSave(train),
                                  meta=ocp.args.JsonSave(dict(meta)))

    def save(self, step: int, variables: Any, train: Any, meta: Mapping[str, Any]) -> bool:
        """Starts an async save of step ``step`` to ``checkpoints/`` (no-op if it exists)."""
        if step in self.latest.all_steps():
            return False
        # A pending best checkpoint commits before any later step checkpoint, so resuming from step k
        # never finds a best checkpoint older than k missing.
        self.best.wait_until_finished()
        self.latest.wait_until_finished()
        self._unsealed[CHECKPOINTS_DIR] = step
        return self.latest.save(step, args=self._args(variables, train, meta), force=True)

    def save_best(self, step: int, variables: Any, train: Any, meta: Mapping[str, Any]) -> bool:
        """Replaces ``best/`` by step ``step``."""
        if step in self.best.all_steps():
            return False
        self.best.wait_until_finished()
        self._unsealed[BEST_DIR] = step
        return self.best.save(step, args=self._args(variables, train, meta), force=True)

    def has_best(self, step: int) -> bool:
        return step in self.best.all_steps()

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def best_path(self) -> str | None:
        step = self.best.latest_step()
        return None if step is None else os.path.join(self.workdir, BEST_DIR, str(step))

    def restore(self, abstract_variables: Any, abstract_train: Any, *, step: int | None = None,
                fall_back: bool = False) -> tuple[Any, Any, dict[str, Any]]:
        """Restores ``(variables, train, meta)`` into the given abstract trees (shapes, dtypes, shardings).

        Tries ``step`` (default: the latest). Its files are first checked against the checksum manifest.
        A checkpoint that is corrupt or cannot be read raises CheckpointError naming it, unless ``fall_back``
        is set, in which case older checkpoints are tried in turn.
        """
        steps = sorted(self.latest.all_steps(), reverse=True)
        if step is not None:
            steps = [s for s in steps if s <= step]
        if not steps:
            raise CheckpointError(f"{os.path.join(self.workdir, CHECKPOINTS_DIR)}: no checkpoint to resume from")
        errors, unreadable = [], []
        for s in steps:
            ckpt = os.path.join(self.workdir, CHECKPOINTS_DIR, str(s))
            try:
                verify_manifest(ckpt)
                restored = self.latest.restore(s, args=ocp.args.Composite(
                    variables=ocp.args.StandardRestore(abstract_variables),
                    train=ocp.args.StandardRestore(abstract_train),
                    meta=ocp.args.JsonRestore()))
                if unreadable:
                    self._set_aside(unreadable)
                return restored["variables"], restored["train"], dict(restored["meta"])
            except Exception as e:
                unreadable.append(ckpt)
                why = str(e) if isinstance(e, CheckpointError) else f"{type(e).__name__}: {e}"
                errors.append(f"{ckpt}: {why}")
                if not fall_back:
                    raise CheckpointError(
                        f"{ckpt}: cannot read checkpoint ({why}); "
                        "pass --resume-from-previous to fall back to the previous checkpoint") from e
        raise CheckpointError("no readable checkpoint:\n  " + "\n  ".join(errors))

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
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("algrnet_set_aside_unreadable_checkpoints")
        self.latest.reload()

    def wait(self) -> None:
        """Blocks until pending async saves are committed (and their checksum manifests written)."""
        self.latest.wait_until_finished()
        self.best.wait_until_finished()
        for sub in (CHECKPOINTS_DIR, BEST_DIR):   # synchronous saves may finish without the callback
            self._seal(sub)

    def close(self) -> None:
        self.latest.close()
        self.best.close()
