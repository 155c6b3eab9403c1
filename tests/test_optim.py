"""The optimizer equals torch.optim.SGD(nesterov, momentum 0.9, weight_decay 5e-4) step for step."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from algrnet_jax.configs import get_config
from algrnet_jax.training import optim


def _train_config(**kw):
    c = get_config("jaanet", "tiny").train
    for k, v in kw.items():
        c[k] = v
    return c


def test_schedule_halves_every_two_epochs():
    c = _train_config()
    spe = 5
    sched = optim.make_schedule(c, spe)
    for step, want in [(0, 0.01), (9, 0.01), (10, 0.005), (19, 0.005), (20, 0.0025), (45, 0.01 * 0.5 ** 4)]:
        assert float(sched(step)) == pytest.approx(want, rel=1e-6)


def test_bad_steps_per_epoch():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        optim.make_optimizer(_train_config(), 0)


def test_matches_torch_sgd_nesterov_with_decay_and_schedule():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    # Two "parameters" as the model has them: a weight matrix and a 1-D (bias / BN) vector.
    p0 = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=(3,)).astype(np.float32)}
    # A large lr and a decay every epoch of 2 steps, so the schedule is exercised inside 6 steps.
    c = _train_config(lr=0.1, lr_decay=0.5, lr_decay_every_epochs=1)
    spe = 2
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in p0.items()} for _ in range(6)]

    tx = optim.make_optimizer(c, spe)
    params = jax.tree.map(jnp.asarray, p0)
    opt_state = tx.init(params)
    update = jax.jit(tx.update)
    jax_traj = []
    for g in grads:
        updates, opt_state = update(jax.tree.map(jnp.asarray, g), opt_state, params)
        params = optax.apply_updates(params, updates)
        jax_traj.append(jax.tree.map(np.asarray, params))

    tp = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in p0.items()}
    topt = torch.optim.SGD(list(tp.values()), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.StepLR(topt, step_size=1, gamma=0.5)  # stepped once per epoch
    for i, g in enumerate(grads):
        topt.zero_grad()
        for k, p in tp.items():
            p.grad = torch.tensor(g[k])
        topt.step()
        if (i + 1) % spe == 0:
            sched.step()
        for k in p0:
            np.testing.assert_allclose(jax_traj[i][k], tp[k].detach().numpy(), rtol=1e-6, atol=1e-6,
                                       err_msg=f"step {i} param {k}")
