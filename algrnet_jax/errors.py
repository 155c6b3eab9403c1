"""User-facing errors: one class every layer raises for bad input or configuration.

A ``UserError`` carries one clear message (the file or field, the problem, what to do). The command line
(``algrnet_jax.cli``) prints it without a traceback and exits with code 2; ``--debug`` (or
``ALGRNET_DEBUG=1``) shows the traceback instead.
"""
from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input, configuration or environment that the user can fix; the message says how."""
