"""Errors of the data side: input files that cannot be used.

Both are :class:`algrnet_jax.errors.UserError` (the command line prints the message and exits with 2) and
``ValueError``; the message names the file (and line, 1-based) and the problem.
"""
from __future__ import annotations

from algrnet_jax.errors import UserError


class BadInputError(UserError, ValueError):
    """Release files or images that cannot be used; the message names the file (and line) and the problem."""


class BadFrameError(BadInputError):
    """One frame cannot be used (skippable with ``skip_bad``); the message says so."""
