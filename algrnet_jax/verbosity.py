"""What a run prints: our progress, results and warnings by default; third-party logs at a verbose level.

TensorFlow's C++ start-up lines (oneDNN, CPU features), absl / tensorflow / tfds / orbax log records below
ERROR and third-party deprecation warnings are hidden unless verbose: ``algrnet --verbose ...``,
``python -m experiments.main_job --verbose`` (``bash run_main.sh --verbose``) or ``ALGRNET_VERBOSE=1``.

Call :func:`configure` once at the start of an entry point, before TensorFlow is imported (its C++ log level
is read from the environment at import). Some of TensorFlow's start-up lines ignore that level: on CPUs where
it turns its oneDNN operations on (AVX-512 and newer x86), its bundled absl logs "oneDNN custom operations are
on" before its logging is initialised, straight to file descriptor 2. :func:`install_import_filter` (run when
``algrnet_jax`` is imported) therefore imports ``tensorflow`` with descriptor 2 captured and writes back every
captured line except absl's INFO / WARNING records; oneDNN itself stays as TensorFlow chooses. The setting is exported in the environment, so child processes
(tfds builds, benchmarks) follow it. Library code asks :func:`is_verbose` (e.g. whether to show a
third-party progress bar).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from absl import logging as absl_logging

ENV_VAR = "ALGRNET_VERBOSE"
FLAG = "--verbose"

# Python loggers of the stack whose records below ERROR are third-party noise by default.
THIRD_PARTY_LOGGERS: tuple[str, ...] = (
    "absl", "tensorflow", "tensorflow_datasets", "jax", "jax._src", "orbax", "orbax.checkpoint", "flax", "etils",
    "array_record", "grain", "matplotlib", "PIL", "h5py", "apache_beam", "mlcroissant",
)
# Environment of third-party C++ logging, set (when not set by the user) in quiet mode.
QUIET_ENV: dict[str, str] = {
    "TF_CPP_MIN_LOG_LEVEL": "3",      # TensorFlow / XLA C++: errors only (oneDNN and CPU-feature lines are INFO)
    "GRPC_VERBOSITY": "ERROR",
    "ABSL_MIN_LOG_LEVEL": "2",        # absl C++ logging of the bundled libraries
}
# Warning categories raised by third-party code that we hide in quiet mode.
QUIET_WARNINGS: tuple[type[Warning], ...] = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def add_argument(parser: argparse.ArgumentParser) -> None:
    """Adds ``--verbose`` (``args.verbose``) to an entry point's parser; pass it to :func:`configure`."""
    parser.add_argument(FLAG, action="store_true",
                        help=f"show third-party logs (TensorFlow, absl, tfds, orbax; also {ENV_VAR}=1)")


def is_verbose() -> bool:
    """Whether third-party logs are shown (``ALGRNET_VERBOSE`` set to anything but "" or "0")."""
    return os.environ.get(ENV_VAR, "") not in ("", "0")


def configure(verbose: bool | None = None) -> bool:
    """Sets this process's (and its children's) level of third-party output; returns whether verbose.

    Args:
      verbose: True forces the verbose level (and exports ``ALGRNET_VERBOSE=1``); None or False keeps the
        environment's choice (quiet unless ``ALGRNET_VERBOSE=1``).
    """
    if verbose:
        os.environ[ENV_VAR] = "1"
    if is_verbose():
        for name in THIRD_PARTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
        absl_logging.set_verbosity(absl_logging.INFO)
        return True
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", category=category)
    absl_logging.set_verbosity(absl_logging.ERROR)   # absl's Python logging (tfds, orbax)
    return False


# absl / glog records below ERROR ("I1206 16:24:31.123456   4552 port.cc:153] ...") and absl's note that it
# writes to stderr before its initialisation: the C++ start-up lines of TensorFlow's import.
# Before initialisation absl writes the time as "00:00:<epoch seconds>". cpu_feature_guard's record goes on
# in a second line ("To enable the following instructions: ...").
_STARTUP_LINE = re.compile(r"^(?:[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\]]+\] |"
                           r"WARNING: All log messages before absl::InitializeLog\(\) is called|"
                           r"To enable the following instructions: .* rebuild TensorFlow with the appropriate)")
# The modules whose import prints those lines.
FILTERED_IMPORTS: tuple[str, ...] = ("tensorflow",)


def is_startup_line(line: str) -> bool:
    """Whether ``line`` is a third-party C++ start-up record hidden in quiet mode (INFO / WARNING only)."""
    return bool(_STARTUP_LINE.match(line))


_capture: Any = None            # one temporary file per process receives what descriptor 2 is sent in a capture
_capture_lock = threading.Lock()


@contextlib.contextmanager
def stderr_captured() -> Iterator[list[str]]:
    """Points file descriptor 2 (where C and C++ libraries write: libjpeg, ffmpeg, TensorFlow's absl) at a
    temporary file for the block; the yielded list receives what was written there when the block ends. One
    capture at a time per process (another thread waits; not re-entrant). Without a descriptor 2 (a daemon)
    nothing is captured and the list receives ""."""
    global _capture
    text: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:
        yield text
        text.append("")
        return
    sys.stderr.flush()
    with _capture_lock:
        if _capture is None:
            _capture = tempfile.TemporaryFile()
        _capture.seek(0)
        _capture.truncate()
        try:
            os.dup2(_capture.fileno(), 2)
            yield text
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            _capture.seek(0)
            text.append(_capture.read().decode("utf-8", errors="replace"))


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """:func:`stderr_captured` for the block, then writes back every line but :func:`is_startup_line` ones.
    Output of other threads during the block is delayed, not lost."""
    captured: list[str] = []
    try:
        with stderr_captured() as captured:
            yield
    finally:
        kept = "".join(ln for ln in "".join(captured).splitlines(keepends=True) if not is_startup_line(ln))
        if kept:
            sys.stderr.write(kept)
            sys.stderr.flush()


class _FilteringLoader(importlib.abc.Loader):
    """Runs another loader's ``exec_module`` inside :func:`filtered_stderr`, then hands the module back to it."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):  # noqa: ANN001 - importlib's signature
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self.loader
        if is_verbose():
            self.loader.exec_module(module)
            return
        with filtered_stderr():
            self.loader.exec_module(module)


class _ImportFilter(importlib.abc.MetaPathFinder):
    """Finds :data:`FILTERED_IMPORTS` with the other finders and gives them a :class:`_FilteringLoader`."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 - importlib's signature
        if fullname not in FILTERED_IMPORTS:
            return None
        others = [finder for finder in sys.meta_path if finder is not self and hasattr(finder, "find_spec")]
        for finder in others:
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _FilteringLoader(spec.loader)
                return spec
        return None


def install_import_filter() -> None:
    """Hides TensorFlow's C++ start-up lines at its import unless verbose (idempotent; decided at the import)."""
    if not any(isinstance(finder, _ImportFilter) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ImportFilter())
