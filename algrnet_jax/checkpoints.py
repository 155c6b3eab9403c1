"""The checkpoint format: orbax directories of training checkpoints (exact resume) and inference checkpoints
(variables + config), their checksum manifests, and how a path names one.

Every checkpoint is an orbax composite directory with the items

- ``variables``: ``{"params": ..., "batch_stats": ...}`` (what ``model.apply`` takes),
- ``train`` (training checkpoints only): ``{"opt_state": ..., "step": [], "rng": uint32 [2]}``,
- ``meta`` (JSON): ``{"kind": "train" | "inference", "config": <config as a dict>, ...}``; training
  checkpoints add the data position ``epoch`` / ``batch_in_epoch`` of the next batch, ``step``,
  ``best_mean_f1`` / ``best_step`` (validation) so far and the last evaluations ``metrics``,
- ``metrics`` (orbax's, JSON, only checkpoints saved after a validation): ``{"val_mean_f1": float}``,

plus ``algrnet_checksums.json`` (size and SHA-256 of every file), verified before anything is read.

A training work directory holds ``checkpoints/<step>/`` (written by ``training.checkpoint.TrainCheckpointer``).
``load_for_inference(path)`` accepts a work directory (its LAST checkpoint; ``best=True``: the
validation-best), a directory of step checkpoints (latest), or one checkpoint directory, e.g. one written
by ``save_inference_checkpoint`` (the JAA-Net converter's output).

This module sits below training, inference, interop and evaluation (it imports none of them) and above
``configs``, whose saved forms it reads.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from algrnet_jax import configs
from algrnet_jax.errors import UserError
from algrnet_jax.fileio import atomic_path

FORMAT_VERSION = 1
CHECKPOINTS_DIR = "checkpoints"
VAL_METRIC = "val_mean_f1"   # the orbax metric ranking checkpoints for the validation-best
MANIFEST = "algrnet_checksums.json"
ITEMS = ("variables", "train", "meta")   # the composite items of a training checkpoint
log = logging.getLogger(__name__)


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, incomplete, corrupt or unreadable; the message names the path."""


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
    """Inverse of ``config_to_dict``: JSON lists become tuples, as the named configs hold them; a config saved
    before a field was added or deleted reads as today's (``configs.saved_as_current``)."""
    return ml_collections.ConfigDict(_tuples(configs.saved_as_current(d)))


# ----------------------------------------------------------------------------------- directories

def list_steps(directory: str | os.PathLike) -> list[int]:
    """Finalised step numbers under an orbax manager directory, ascending (orbax writes to a temporary
    name and renames on commit, so an interrupted save never shows up as a bare number)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def last_checkpoint(workdir: str | os.PathLike) -> str | None:
    """The newest committed checkpoint of a training work directory (``<workdir>/checkpoints/<step>``)."""
    directory = os.path.join(os.fspath(workdir), CHECKPOINTS_DIR)
    steps = list_steps(directory)
    return os.path.join(directory, str(steps[-1])) if steps else None


def val_mean_f1(metrics: Mapping[str, Any]) -> float:
    """Orbax ``best_fn``: the validation mean F1 a checkpoint was saved with (its ``metrics`` item)."""
    return float(metrics[VAL_METRIC])


def best_checkpoint(workdir: str | os.PathLike) -> str | None:
    """The kept checkpoint of a training work directory with the best VALIDATION mean F1, or None when the
    run had no validation part (``data.val_fraction = 0``) or has not evaluated yet."""
    directory = os.path.join(os.path.abspath(os.fspath(workdir)), CHECKPOINTS_DIR)
    if not list_steps(directory):
        return None
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        read_only=True, best_fn=val_mean_f1, best_mode="max"), item_names=ITEMS)
    try:
        has_metrics = any(manager.metrics(s) is not None for s in manager.all_steps())
        step = manager.best_step() if has_metrics else None
    finally:
        manager.close()
    return None if step is None else os.path.join(directory, str(step))


TMP_MARK = ".orbax-checkpoint-tmp"   # orbax writes step N to "N.orbax-checkpoint-tmp-*", renamed on commit


def interrupted_saves(directory: str | os.PathLike) -> list[str]:
    """The temporary directories of saves under an orbax manager directory that never committed (a run
    killed while writing); orbax removes them when the next run opens the directory."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return []
    return sorted(os.path.join(directory, n) for n in os.listdir(directory) if TMP_MARK in n)


def no_checkpoint_reason(workdir: str | os.PathLike) -> str:
    """Why a training work directory has no committed checkpoint, in words naming the path: it does not
    exist, it has no checkpoints yet, or its only save was interrupted."""
    workdir = os.fspath(workdir)
    if not os.path.exists(workdir):
        return f"{workdir} does not exist (a new work directory)"
    directory = os.path.join(workdir, CHECKPOINTS_DIR)
    tmp = interrupted_saves(directory)
    if tmp:
        return (f"{workdir} holds no complete checkpoint: the save {os.path.basename(tmp[-1])} in {directory} was "
                "interrupted before it was committed")
    return f"{workdir} holds no checkpoint yet ({directory} has no step directories)"


def _is_checkpoint(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "variables")) and os.path.isdir(os.path.join(path, "meta"))


def resolve_checkpoint(path: str | os.PathLike, *, best: bool = False) -> str:
    """The single checkpoint directory that ``path`` designates.

    ``path`` may be a checkpoint directory, a directory of numbered step checkpoints (latest is taken)
    or a training work directory: its LAST checkpoint, or with ``best`` the one with the best validation
    mean F1 (``best_checkpoint``; an error when the run kept none). The test part never selects anything.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint or directory")
    if best:
        found = best_checkpoint(path)
        if found is None:
            raise CheckpointError(
                f"{path}: no validation-best checkpoint (a training work directory keeps one only when the run "
                "had a validation part, data.val_fraction > 0, and evaluated it); use the last checkpoint")
        return found
    if _is_checkpoint(path):
        return path
    for d in (os.path.join(path, CHECKPOINTS_DIR), path):
        steps = list_steps(d)
        if steps:
            return os.path.join(d, str(steps[-1]))
    for d, workdir in ((os.path.join(path, CHECKPOINTS_DIR), path), (path, os.path.dirname(path))):
        if interrupted_saves(d):
            raise CheckpointError(f"{no_checkpoint_reason(workdir)}; nothing to evaluate yet: `algrnet train ... "
                                  f"--workdir {workdir} --resume` trains it again from step 0")
    if os.path.isdir(os.path.join(path, CHECKPOINTS_DIR)):
        raise CheckpointError(f"{no_checkpoint_reason(path)}: training has not committed a checkpoint to evaluate")
    raise CheckpointError(
        f"{path}: not a checkpoint (expected 'variables/' and 'meta/' items, numbered step directories, "
        f"or a training work directory with '{CHECKPOINTS_DIR}/')")


# ------------------------------------------------------------------------------ reading / writing

def describe_error(e: BaseException, limit: int = 400) -> str:
    """``Type: message`` of a reading error on one line: orbax/TensorStore errors append the whole TensorStore
    spec (~60 lines of JSON), which names nothing the user can act on; the path is in the caller's message."""
    text = str(e).split(" See full TensorStore details")[0].strip()
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit] + " ..."
    return f"{type(e).__name__}: {text}"


def read_meta(ckpt: str) -> dict[str, Any]:
    """The ``meta`` item (JSON) of one checkpoint directory: kind, config, data position, ..."""
    ignore_closed_loop_callbacks()
    meta_dir = os.path.join(ckpt, "meta")
    try:
        meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(meta_dir)
    except Exception as e:  # orbax raises many types; the user needs the path
        raise CheckpointError(f"{ckpt}: cannot read checkpoint metadata 'meta' ({describe_error(e)})") from e
    if not isinstance(meta, dict) or "config" not in meta:
        raise CheckpointError(f"{ckpt}: checkpoint metadata has no 'config' entry")
    return meta


class _ItemMetadataFilter(logging.Filter):
    """Drops orbax's "Metadata file does not exist: <item>/_CHECKPOINT_METADATA" warning: an item of a composite
    checkpoint restored on its own has no such file (the composite keeps it one level up); nothing is wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "_CHECKPOINT_METADATA" not in record.getMessage()


logging.getLogger("absl").addFilter(_ItemMetadataFilter())


def ignore_closed_loop_callbacks() -> None:
    """After a failed async save or restore (a full disk, a truncated file of a checkpoint without its
    manifest), tensorstore completes futures of orbax's already closed event loops and Python reports each
    "RuntimeError: Event loop is closed" as unraisable (a traceback apiece). They carry nothing: the save's or
    restore's own error is raised as one message. This drops exactly those (others pass through); every
    reading and writing path installs it."""
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
    item_dir = os.path.abspath(item_dir)    # orbax finds no item metadata under a relative path
    ckptr = ocp.PyTreeCheckpointer()
    meta = ckptr.metadata(item_dir)
    tree = getattr(getattr(meta, "item_metadata", meta), "tree", None)
    if tree is None:
        tree = meta.tree if hasattr(meta, "tree") else meta
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return ckptr.restore(item_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args))


def load_for_inference(path: str | os.PathLike, *, best: bool = False) -> tuple[ml_collections.ConfigDict,
                                                                                 dict[str, Any]]:
    """Loads ``(config, variables)`` from a checkpoint, a step directory or a training work directory
    (its last checkpoint; with ``best`` its validation-best, ``resolve_checkpoint``).

    Returns:
      config: the ConfigDict the checkpoint was trained (or converted) with.
      variables: ``{"params": ..., "batch_stats": ...}`` of numpy arrays, ready for ``model.apply``.
    """
    ckpt = resolve_checkpoint(path, best=best)
    verify_manifest(ckpt)
    meta = read_meta(ckpt)
    try:
        variables = _restore_tree_numpy(os.path.join(ckpt, "variables"))
    except Exception as e:
        raise CheckpointError(f"{ckpt}: cannot read checkpoint item 'variables' ({describe_error(e)})") from e
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
    ignore_closed_loop_callbacks()
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
