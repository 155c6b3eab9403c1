"""Exclusive directory locks: one writer per training work directory, one build per dataset.

``DirLock(path, what)`` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on a lock file and writes the holder's PID
into it. The operating system releases the lock when the process ends, however it ends (SIGKILL included),
so a killed run never leaves a stale lock behind and ``--resume`` works at once. A second process asking
for a held lock fails at once with :class:`LockedError` naming the holder's PID.
"""
from __future__ import annotations

import fcntl
import os
import socket

from algrnet_jax.errors import UserError


class LockedError(UserError):
    """The directory is locked by another live process; the message names its PID."""


class DirLock:
    """An exclusive, non-blocking lock on ``lock_file`` (created with its folder); a context manager.

    Args:
      lock_file: path of the lock file (it is left in place; only the flock matters).
      what: how the message calls the locked thing, e.g. ``"work directory runs/x"``.
      hint: what the user should do, appended to the message.
    """

    def __init__(self, lock_file: str | os.PathLike, what: str, hint: str = ""):
        self.path = os.fspath(lock_file)
        self.what = what
        self.hint = hint
        self._fd: int | None = None

    def acquire(self) -> "DirLock":
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockedError(f"{self.what} is in use by another process ({holder}; lock file {self.path})"
                              + (f"; {self.hint}" if self.hint else "")) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "PID unknown"
