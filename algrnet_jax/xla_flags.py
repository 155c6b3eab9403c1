"""XLA:CPU settings the project runs with, applied when ``algrnet_jax`` is imported.

``--xla_cpu_experimental_ynn_fusion_type=`` (empty: no YNNPACK fusions). The pinned jaxlib 0.10.2 hands
convolutions to YNNPACK fusions by default, and these run on ONE core for this model's layers; without them the
per-AU convolutions use both cores and run about four times faster (docs/performance.md, "What held the CPU step
back, and the fix"). The flag only touches the CPU backend (GPU runs are unaffected).

XLA reads ``XLA_FLAGS`` when JAX creates its first backend, so the flags are added to the environment at import,
before any computation. A flag the user already set in ``XLA_FLAGS`` is left as it is; ``ALGRNET_XLA_DEFAULTS=0``
turns the project's flags off.
"""
from __future__ import annotations

import os
from collections.abc import MutableMapping

CPU_FLAGS: tuple[str, ...] = ("--xla_cpu_experimental_ynn_fusion_type=",)


def add_flags(environ: MutableMapping[str, str], flags: tuple[str, ...]) -> str:
    """Appends each of ``flags`` to ``environ["XLA_FLAGS"]`` unless a flag of that name is set there already;
    returns the result."""
    current = environ.get("XLA_FLAGS", "")
    for flag in flags:
        if flag.split("=")[0] not in current:
            current = f"{current} {flag}".strip()
    environ["XLA_FLAGS"] = current
    return current


def apply(environ: MutableMapping[str, str] = os.environ) -> str:
    """Adds :data:`CPU_FLAGS` to ``environ["XLA_FLAGS"]`` (unless set there already or turned off); returns it."""
    if environ.get("ALGRNET_XLA_DEFAULTS", "1") != "0":
        return add_flags(environ, CPU_FLAGS)
    return environ.get("XLA_FLAGS", "")
