"""Train step, training loop (resume, SIGTERM, NaN, reproducibility) and the ``algrnet train`` command."""
import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_au_model import tiny_model  # noqa: E402

from algrnet_jax.configs import get_config  # noqa: E402
from algrnet_jax.training import optim, parallel, state as state_lib, steps  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _random_batch(config, b=4, seed=0):
    rng = np.random.default_rng(seed)
    n, c = len(config.aus), config.crop_size
    return {"image": rng.uniform(-1, 1, (b, c, c, 3)).astype(np.float32),
            "landmarks": rng.uniform(6, c - 6, (b, 49, 2)).astype(np.float32),
            "interocular": rng.uniform(8, 12, (b,)).astype(np.float32),
            "labels": rng.integers(-1, 2, (b, len(config.aus))).astype(np.int32),
            "mask": np.ones([b], np.float32)}


# ------------------------------------------------------------------------------------ train step

def test_step_is_sgd_nesterov_with_coupled_decay_on_the_total_loss():
    """First step from scratch: p1 = p0 - lr * (1 + momentum) * (grad + wd * p0) (PyTorch SGD, empty buffer)."""
    from algrnet_jax.losses import total_loss

    config = get_config("jaanet", "tiny")
    model = tiny_model(config)
    tx = optim.make_optimizer(config.train, 5)
    st = state_lib.create_train_state(model, config, tx, jax.random.PRNGKey(0))
    batch = _random_batch(config)
    w = np.linspace(0.5, 1.5, len(config.aus)).astype(np.float32)

    def loss_fn(params):
        out, new = model.apply({"params": params, "batch_stats": st.batch_stats}, batch["image"], train=True,
                               mutable=["batch_stats"])
        return total_loss(out, batch, w, config)[0], new["batch_stats"]

    (loss, new_bs), grads = jax.value_and_grad(loss_fn, has_aux=True)(st.params)
    want = jax.tree.map(lambda p, g: p - 0.01 * 1.9 * (g + 5e-4 * p), st.params, grads)

    mesh = parallel.make_mesh(jax.devices()[:1])
    step = steps.make_train_step(config, mesh, donate=False)
    st1, m = step(st, parallel.shard_batch(batch, mesh), w)
    assert int(st1.step) == 1
    assert float(m["loss"]) == pytest.approx(float(loss), rel=1e-6)
    for key in ("loss_au", "loss_local_au", "loss_align", "grad_norm", "param_norm"):
        assert np.isfinite(float(m[key]))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), st1.params, want)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), st1.batch_stats, new_bs)
    # BatchNorm running mean moved from 0 by 0.1 * batch mean (PyTorch momentum 0.1).
    assert np.any(np.asarray(st1.batch_stats["bn"]["mean"]) != 0)


def test_steps_reduce_the_loss_on_a_fixed_batch():
    config = get_config("jaanet", "tiny")
    config.train.lr = 0.05
    model = tiny_model(config)
    mesh = parallel.make_mesh(jax.devices()[:1])
    st = state_lib.create_train_state(model, config, optim.make_optimizer(config.train, 100), jax.random.PRNGKey(1))
    step = steps.make_train_step(config, mesh)
    batch = parallel.shard_batch(_random_batch(config, 8, 3), mesh)
    w = jnp.ones([len(config.aus)])
    losses = []
    for _ in range(15):
        st, m = step(st, batch, w)
        losses.append(float(m["loss"]))
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.98 * losses[0], losses


# ------------------------------------------------------------------------------------------- CLI

def _args(*extra):
    from algrnet_jax.commands import train as cmd

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    return cmd, p.parse_args(["--config", "jaanet", "--size", "tiny", "--dataset", "synth_au", "--fold", "2",
                              "--workdir", "w", *extra])


def test_cli_config_and_typed_overrides():
    cmd, args = _args("--builder-config", "bp4d_tiny", "--set", "train.lr=1", "--set", "data.data_dir=123",
                      "--set", "aus=(1, 2)", "--set", "train.num_epochs=3")
    c = cmd.build_config(args)
    assert (c.data.dataset, c.data.builder_config, c.data.fold) == ("synth_au", "bp4d_tiny", 2)
    assert c.train.lr == 1.0 and isinstance(c.train.lr, float)
    assert c.data.data_dir == "123"            # str entries take the raw text
    assert c.aus == (1, 2) and c.train.num_epochs == 3
    with pytest.raises(ValueError, match="train.lr=abc"):
        cmd.build_config(_args("--set", "train.lr=abc")[1])
    with pytest.raises(ValueError, match="unknown config key"):
        cmd.build_config(_args("--set", "train.nope=1")[1])
    with pytest.raises(ValueError, match="key=value"):
        cmd.build_config(_args("--set", "train.lr")[1])
