"""Suite-wide settings, applied before any test imports JAX.

The tests compile many small programs and run each only a few times, so XLA:CPU's LLVM optimisation is most of
their cost and buys nothing: the suite compiles with ``--xla_backend_optimization_level=0`` and
``--xla_llvm_disable_expensive_passes=true`` (compile time of the tiny JAA-Net train step 24 -> 16 s; the same
HLO, so the same semantics). Subprocesses started by tests inherit the setting. Benchmarks and user runs are not
affected: they never load this file. ``ALGRNET_TEST_XLA_OPT=1`` keeps the full optimisation.
"""
import os

from algrnet_jax import xla_flags

FAST_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")

if os.environ.get("ALGRNET_TEST_XLA_OPT", "0") != "1":
    xla_flags.add_flags(os.environ, FAST_FLAGS)
