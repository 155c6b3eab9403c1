"""One way to override a config from the command line, for every entry point.

The spelling of ml_collections' ``config_flags``: ``--config.train.lr=0.02`` (or ``--config.train.lr 0.02``),
and its alias ``--set train.lr=0.02`` (the older spelling, kept for scripts and docs). Both go through
:func:`apply_overrides`, in the order given, and every value is typed by the field it replaces:

=================  ==========================================================================
field holds        the text is read as
=================  ==========================================================================
bool               ``true``/``false`` (also ``1``/``0``, ``yes``/``no``, ``on``/``off``)
int                a decimal integer (``-1``, ``1_000``)
float              a number (``0.02``, ``5e-4``, ``1``)
str                the text itself, unchanged (``data.data_dir=123`` is the string "123")
tuple              ``1,2,4``, ``(1, 2, 4)`` or ``[1, 2, 4]``, each item typed like the field's items
None               a Python literal if it is one, else the text
=================  ==========================================================================

An unknown key or a value the field cannot hold raises :class:`OverrideError` (a UserError, exit 2 on the
command line) naming the override, the field and what it takes.

Entry points call :func:`add_override_arguments` on their parser and parse with :func:`parse_args`
(which turns ``--config.KEY=VALUE`` into ``--set KEY=VALUE`` first); the overrides are ``args.overrides``.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections

from algrnet_jax.configs.validate import ConfigError

FLAG_PREFIX = "--config."
SET_FLAG = "--set"
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


class OverrideError(ConfigError):
    """An override names no config field, is not ``key=value``, or gives a value the field cannot hold."""


def field_keys(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[str]:
    """Every dotted leaf key of ``config`` (sections are walked, not listed)."""
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict):
            yield from field_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"


def _scalar(raw: str, like: Any) -> Any:
    """``raw`` as a value of the type of ``like`` (a bool, int, float or str); ValueError if it is not one."""
    text = raw.strip()
    if isinstance(like, bool):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError
    if isinstance(like, int):
        return int(text, 10)
    if isinstance(like, float):
        return float(text)
    if isinstance(like, str):
        return raw
    raise ValueError


def _literal(raw: str) -> Any:
    """A Python literal, else the text itself."""
    try:
        return ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        return raw


def _tuple_items(raw: str) -> list[str]:
    """The items of ``1,2``, ``(1, 2)``, ``[1, 2]``, ``()`` or ``1`` as texts (quotes of string items removed)."""
    text = raw.strip()
    if text[:1] in "([" and text[-1:] in ")]":
        text = text[1:-1]
    items = [t.strip() for t in text.split(",")]
    if items and items[-1] == "":
        items = items[:-1]                              # "(1,)"
    return [t[1:-1] if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"" else t for t in items]


def parse_value(key: str, current: Any, raw: str) -> Any:
    """``raw`` typed by the field ``key`` whose value is now ``current``.

    Raises:
      OverrideError: the text is not a value of the field's type (the message names the field and the type).
    """
    if isinstance(current, ml_collections.ConfigDict):
        raise OverrideError(f"{key} is a config section, not a field; override one of its fields, e.g. "
                            f"{next(field_keys(current, key + '.'), key + '.<field>')}=...")
    try:
        if current is None:
            return _literal(raw)
        if isinstance(current, tuple):
            items = _tuple_items(raw)
            if not current:
                return tuple(_literal(t) for t in items)
            like = current[0]
            if any(t == "" for t in items):
                raise ValueError
            return tuple(_scalar(t, like) for t in items)
        if isinstance(current, (bool, int, float, str)):
            return _scalar(raw, current)
        value = _literal(raw)
        if not isinstance(value, type(current)):
            raise ValueError
        return value
    except ValueError:
        if isinstance(current, tuple):
            what = f"a tuple of {_type_name(current[0]).removeprefix('a ').removeprefix('an ')}s" if current \
                else "a tuple"
            what += " (e.g. 1,2,4 or (1, 2, 4))"
        else:
            what = _type_name(current)
        raise OverrideError(f"{key}={raw}: {key} takes {what} (now {current!r}); {raw!r} is not one") from None


def apply_override(config: ml_collections.ConfigDict, item: str) -> ml_collections.ConfigDict:
    """Applies one ``key=value`` override to ``config`` in place (see the module docstring for the typing)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise OverrideError(f"override {item!r} is not of the form key=value "
                            f"(e.g. {SET_FLAG} train.lr=0.02 or {FLAG_PREFIX}train.lr=0.02)")
    *sections, leaf = key.split(".")
    parent = config
    for part in sections:
        child = parent.get(part) if isinstance(parent, ml_collections.ConfigDict) else None
        if not isinstance(child, ml_collections.ConfigDict):
            parent = None
            break
        parent = child
    if parent is None or leaf not in parent:
        keys = list(field_keys(config))
        close = difflib.get_close_matches(key, keys, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; the fields are {', '.join(keys)}"
        raise OverrideError(f"override {item}: unknown config key {key!r}{hint}")
    parent[leaf] = parse_value(key, parent[leaf], raw)
    return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Applies ``["train.lr=0.02", "aus=1,2,4", ...]`` to ``config`` in order, in place; returns it."""
    for item in overrides:
        apply_override(config, item)
    return config


def add_override_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--set KEY=VALUE`` (repeatable, into ``args.overrides``); :func:`parse_args` maps
    ``--config.KEY=VALUE`` onto it, so both spellings are one list, in command-line order."""
    parser.add_argument(SET_FLAG, dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config field, typed by the field (repeatable), e.g. "
                             f"{FLAG_PREFIX}train.lr=0.02 or {SET_FLAG} data.batch_size=16; "
                             "bool: true/false, tuple: 1,2,4")


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """``--config.KEY=VALUE`` and ``--config.KEY VALUE`` rewritten as ``--set KEY=VALUE`` (before a ``--``)."""
    out: list[str] = []
    i = 0
    args = list(argv)
    while i < len(args):
        a = args[i]
        if a == "--":
            out.extend(args[i:])
            break
        if a.startswith(FLAG_PREFIX):
            key, sep, value = a[len(FLAG_PREFIX):].partition("=")
            if not sep:
                if i + 1 >= len(args):
                    raise OverrideError(f"{a}: no value (write {a}=VALUE)")
                i += 1
                value = args[i]
            out.extend([SET_FLAG, f"{key}={value}"])
        else:
            out.append(a)
        i += 1
    return out


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args`` of ``argv`` (default ``sys.argv[1:]``) with ``--config.KEY=VALUE`` accepted."""
    try:
        normalized = normalize_argv(sys.argv[1:] if argv is None else argv)
    except OverrideError as e:
        parser.error(str(e))
    return parser.parse_args(normalized)
