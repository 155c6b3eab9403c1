"""User-facing errors: one class every layer raises for bad input or configuration.

A ``UserError`` carries one clear message (the file or field, the problem, what to do). The command line
(``algrnet_jax.cli``) prints it without a traceback and exits with code 2; ``--debug`` (or
``ALGRNET_DEBUG=1``) shows the traceback instead.
"""
from __future__ import annotations

import os
import sys

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input, configuration or environment that the user can fix; the message says how."""


def run_main(main, argv, prog: str) -> int:
    """Runs ``main(argv) -> int`` for a script entry point: a UserError prints ``<prog>: error: <msg>`` on
    stderr and returns EXIT_USER_ERROR (the traceback only with ``ALGRNET_DEBUG=1``), as ``algrnet`` does."""
    try:
        return int(main(argv) or 0)
    except UserError as e:
        if os.environ.get("ALGRNET_DEBUG", "") not in ("", "0"):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
