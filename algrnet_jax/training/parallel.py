"""Data parallelism: one device mesh with a ``data`` axis; batches sharded over it, state replicated.

The train step is a single ``jax.jit`` program over the mesh (GSPMD): the global batch [B, ...] is split
along B over the devices of every process and parameters, optimizer state and BatchNorm statistics are
replicated. Every reduction over the batch, including BatchNorm's batch mean and variance, therefore
runs over the *global* batch, which is the same as averaging the per-device statistics (and gradients)
across devices (``pmean`` in a ``pmap`` formulation): a step on D devices equals the step on one
device with the same global batch (``tests/test_parallel.py``).

Multi-host: call ``initialize_distributed()`` (``algrnet train --distributed``) before any other JAX
call; each process feeds its own slice of the global batch (``process_slice``) and
``shard_batch`` assembles the global array with ``jax.make_array_from_process_local_data``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
# Batch keys that enter the train step (docs/design.md); anything else (ids, strings) stays on the host.
STEP_KEYS = ("image", "landmarks", "interocular", "labels", "mask")


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """``jax.distributed.initialize``; with no arguments the cluster (SLURM, Open MPI, TPU, Kubernetes
    JobSet...) is auto-detected, otherwise ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
    ``JAX_PROCESS_ID`` style arguments are passed through."""
    kwargs = {k: v for k, v in (("coordinator_address", coordinator_address), ("num_processes", num_processes),
                                ("process_id", process_id)) if v is not None}
    jax.distributed.initialize(**kwargs)


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """1-D mesh over ``devices`` (default: every device of every process) named ``data``."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the devices and the processes."""
    n, p = mesh.devices.size, jax.process_count()
    if global_batch % n or global_batch % p:
        raise ValueError(f"data.batch_size ({global_batch}) must be divisible by the number of devices ({n}) "
                         f"and processes ({p})")


def process_slice(global_batch: int) -> slice:
    """Rows of the global batch this process feeds (all rows on a single host)."""
    per = global_batch // jax.process_count()
    return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def shard_batch(batch: Mapping[str, Any], mesh: Mesh, *, global_batch: int | None = None) -> dict[str, jax.Array]:
    """Host batch -> global arrays sharded over ``data``.

    ``batch`` holds this process's rows; if it holds the whole global batch (``global_batch`` rows, the
    same on every process) the process takes its own slice first.
    """
    sharding = batch_sharding(mesh)
    out = {}
    for key in STEP_KEYS:
        if key not in batch:
            continue
        x = np.asarray(batch[key])
        if jax.process_count() > 1 and global_batch is not None and x.shape[0] == global_batch:
            x = x[process_slice(global_batch)]
        out[key] = jax.make_array_from_process_local_data(sharding, x)
    return out


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a host pytree on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def to_host(tree: Any) -> Any:
    """Replicated global arrays -> numpy (works on every process of a multi-host run)."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)
    return jax.tree.map(get, tree)
