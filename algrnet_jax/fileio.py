"""Files a reader never sees half-written: write under a temporary name beside the target, rename when complete."""
from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

from algrnet_jax.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary name beside ``path`` (``<path>.partial<ext>``: the extension is kept for writers that
    choose the format by it); renames it to ``path`` only if the block succeeds, and removes it otherwise."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.partial{os.path.splitext(path)[1]}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_writable_dir(path: str | os.PathLike, what: str) -> str:
    """Checks, before any work and without creating anything, that directory ``path`` exists or can be created,
    and can be written: it is not a file, and it (or its nearest existing ancestor) is a writable directory
    (``os.access`` also reports a read-only file system). Returns the absolute path.

    Raises:
      UserError: naming ``what`` (the flag, e.g. ``--workdir``) and the path, and what to do.
    """
    path = os.path.abspath(os.fspath(path))
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is" if existing == path else f"is inside {existing}, which is"
        raise UserError(f"{what} {path}: {where} a file, not a directory; give a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "on a read-only file system" if _read_only_fs(existing) else "not writable by this user"
        where = "is" if existing == path else f"cannot be created: {existing} is"
        raise UserError(f"{what} {path}: {where} {why}; choose a writable directory")
    return path


def _read_only_fs(path: str) -> bool:
    """Whether ``path`` lies on a file system mounted read-only."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError as e:
        return e.errno == errno.EROFS
