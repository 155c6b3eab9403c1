"""Data parallelism: a step on 2 (forced host) devices equals the step on 1 device with the same global batch.

XLA_FLAGS must be set before JAX initialises, so the comparison runs in a subprocess.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
    import jax, numpy as np
    from algrnet_jax.configs import get_config
    from algrnet_jax.training import optim, parallel, state as state_lib, steps
    name, real = sys.argv[2], sys.argv[3] == "real"
    config = get_config(name, "tiny")
    if real:
        from algrnet_jax.models.networks import create_model
        model = create_model(config)
    else:
        from tiny_au_model import tiny_model
        model = tiny_model(config)
    tx = optim.make_optimizer(config.train, 10)
    rng = np.random.default_rng(0)
    B, n, C = 4, len(config.aus), config.crop_size
    batches = [{"image": rng.uniform(-1, 1, (B, C, C, 3)).astype(np.float32),
                "landmarks": rng.uniform(8, C - 8, (B, 49, 2)).astype(np.float32),
                "interocular": rng.uniform(8, 12, (B,)).astype(np.float32),
                "labels": rng.integers(-1, 2, (B, n)).astype(np.int32),
                "mask": np.ones([B], np.float32)} for _ in range(3)]
    w = rng.uniform(0.5, 1.5, [n]).astype(np.float32)
    out = {}
    assert jax.device_count() == 2
    for devs in (jax.devices()[:1], jax.devices()):
        mesh = parallel.make_mesh(devs)
        st = state_lib.new_train_state(model, config, tx, jax.random.PRNGKey(0),
                                       out_shardings=parallel.replicated(mesh))
        step = steps.make_train_step(config, mesh)
        ms = []
        for b in batches:
            sharded = parallel.shard_batch(b, mesh)
            assert len(sharded["image"].sharding.device_set) == len(devs)
            st, m = step(st, sharded, parallel.replicate(w, mesh))
            ms.append({k: float(v) for k, v in m.items()})
        assert step._cache_size() == 1  # traced once for all steps
        out[len(devs)] = (parallel.to_host(st.variables()), ms)
    diff = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), out[1][0], out[2][0])
    scale = jax.tree.map(lambda a: float(np.max(np.abs(a))), out[1][0])
    print(json.dumps({"max_abs_diff": max(jax.tree.leaves(diff)), "max_abs": max(jax.tree.leaves(scale)),
                      "metrics1": out[1][1], "metrics2": out[2][1],
                      "bn_changed": bool(np.any(out[1][0]["batch_stats"]["bn"]["mean"] != 0)) if not real else True}))
""")


def _run(name: str, which: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, ROOT, name, which], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check(r: dict) -> None:
    assert r["max_abs_diff"] < 1e-5 * max(1.0, r["max_abs"]), r
    for m1, m2 in zip(r["metrics1"], r["metrics2"]):
        for k in m1:
            assert m2[k] == pytest.approx(m1[k], rel=1e-5, abs=1e-6), (k, m1[k], m2[k])
    assert r["bn_changed"]


def test_two_devices_equal_one_device():
    """Params, BatchNorm statistics and metrics after 3 steps agree across 1 and 2 devices (stand-in model)."""
    _check(_run("jaanet", "tiny_stand_in"))


@pytest.mark.slow
def test_two_devices_equal_one_device_real_model():
    """The same with the real tiny ALGRNet (slow: two compiles of the full train step on CPU)."""
    _check(_run("algrnet", "real"))


MULTI_PROCESS = textwrap.dedent("""
    import os, sys
    root, port, pid, data_dir, workdir = sys.argv[1:6]
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=int(pid))
    sys.path.insert(0, os.path.join(root, "tests"))
    import test_training as t
    result = t._run(t._loop_config(data_dir), workdir)
    assert jax.process_count() == 2 and result["step"] > 0
""")


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    """Multi-host path on CPU: 2 processes x 1 device (jax.distributed, gloo) run the whole training loop
    (per-process input rows, collective orbax checkpoints) and end where a single process ends."""
    import socket

    import jax
    import numpy as np

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import test_training as t
    data_dir = str(tmp_path / "tfds")
    t.build_synthetic(data_dir)
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    procs = [subprocess.Popen([sys.executable, "-c", MULTI_PROCESS, ROOT, str(port), str(i), data_dir,
                               str(tmp_path / "multi")], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    t._run(t._loop_config(data_dir), tmp_path / "single")
    multi, single = t._final_params(tmp_path / "multi"), t._final_params(tmp_path / "single")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), multi, single)
