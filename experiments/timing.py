"""Timing helpers shared by the benchmarks: interleaved rounds, medians, CPU utilisation, machine facts."""
from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from typing import Callable

import jax


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def set_torch_threads() -> None:
    """PyTorch on as many threads as there are cores (its default; stated explicitly for the record)."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def interleaved(runners: dict[str, Callable[[], object]], rounds: int = 5, warmup: int = 1) -> dict[str, dict]:
    """Times every runner once per round, in turn (so all see the same machine state), after ``warmup`` calls each.

    Returns per runner: ``median_s`` (wall), ``min_s``, ``cpu_util`` (median of process CPU time / wall: 2.0 means
    two cores busy) and ``times_s``.
    """
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    walls: dict[str, list[float]] = {k: [] for k in runners}
    utils: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            c0, t0 = _cpu_seconds(), time.perf_counter()
            fn()
            wall = time.perf_counter() - t0
            walls[name].append(wall)
            utils[name].append((_cpu_seconds() - c0) / wall)
    return {k: {"median_s": round(statistics.median(walls[k]), 5), "min_s": round(min(walls[k]), 5),
                "cpu_util": round(statistics.median(utils[k]), 2), "times_s": [round(t, 5) for t in walls[k]]}
            for k in runners}


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark in MiB.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this program's own memory. Not ``ru_maxrss``:
    Linux carries it over fork and exec, so a benchmark subprocess would report its (large) parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def machine_info() -> dict:
    info = {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "jax": jax.__version__, "backend": jax.default_backend(), "device": str(jax.devices()[0]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}
    if torch_available():
        import torch

        info["torch"] = torch.__version__
    return info
