"""What a run prints: our progress, results and warnings by default; third-party logs at a verbose level.

TensorFlow's C++ start-up lines (oneDNN, CPU features), absl / tensorflow / tfds / orbax log records below
ERROR and third-party deprecation warnings are hidden unless verbose: ``algrnet --verbose ...``,
``python -m experiments.main_job --verbose`` (``bash run_main.sh --verbose``) or ``ALGRNET_VERBOSE=1``.

Call :func:`configure` once at the start of an entry point, before TensorFlow is imported (its C++ log level
is read from the environment at import). The setting is exported in the environment, so child processes
(tfds builds, benchmarks) follow it. Library code asks :func:`is_verbose` (e.g. whether to show a
third-party progress bar).
"""
from __future__ import annotations

import argparse
import logging
import os
import warnings

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
