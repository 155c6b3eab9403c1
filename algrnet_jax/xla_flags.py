"""XLA:CPU settings the project runs with, applied when ``algrnet_jax`` is imported (issue 10).

``--xla_cpu_experimental_ynn_fusion_type=`` (empty: no YNNPACK fusions). The pinned jaxlib 0.10.2 hands
convolutions to YNNPACK fusions by default, and these ran on ONE core for this model's layers: the 12 per-AU
attention-refinement convolutions (12x [8, 50, 50, 64] -> 64, 3x3) took 744 ms forward at 1.03 cores busy, and
178 ms at 1.69 cores without the fusions (PyTorch: 193 ms); the paper-size JAA-Net eval forward went from
2.57 s to 1.50 s (batch 8), measured on the 2-core development CPU (README, "Measured"). The flag only touches
the CPU backend (GPU runs are unaffected).

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
