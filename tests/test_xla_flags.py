"""algrnet_jax.xla_flags: the project's XLA:CPU flags are added at import, never over the user's own."""
from __future__ import annotations

import os
import subprocess
import sys

from algrnet_jax import xla_flags

FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def test_apply_adds_the_flags_and_keeps_the_users():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert xla_flags.apply(env) == f"--xla_force_host_platform_device_count=2 {FLAG}="
    assert xla_flags.apply(env) == env["XLA_FLAGS"]                       # idempotent
    mine = {"XLA_FLAGS": f"{FLAG}=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}
    assert xla_flags.apply(mine) == f"{FLAG}=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
    off = {"ALGRNET_XLA_DEFAULTS": "0"}
    assert xla_flags.apply(off) == "" and "XLA_FLAGS" not in off
    assert xla_flags.apply({}) == f"{FLAG}="


def _compiled_conv_hlo(env: dict[str, str]) -> str:
    code = ("import algrnet_jax, jax, jax.numpy as jnp\n"
            "x = jnp.ones((8, 50, 50, 64)); w = jnp.ones((3, 3, 64, 64))\n"
            "f = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', "
            "dimension_numbers=('NHWC', 'HWIO', 'NHWC')))\n"
            "print(f.lower(x, w).compile().as_text())\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_importing_the_package_turns_the_ynn_fusions_off_on_cpu():
    """The convolution is compiled without a YNNPACK fusion after ``import algrnet_jax`` (it ran on one core),
    and with one when the project's flags are turned off (jaxlib's default)."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "ALGRNET_XLA_DEFAULTS")}
    env["JAX_PLATFORMS"] = "cpu"
    assert "ynn_fusion" not in _compiled_conv_hlo(env)
    assert "ynn_fusion" in _compiled_conv_hlo({**env, "ALGRNET_XLA_DEFAULTS": "0"})
