"""Fusion & refining against the equations computed per AU in numpy (float64); per-AU weights; jit + grad."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algrnet_jax.models.fusion import FusionRefine, l2_normalize

N, B, H, W, F = 4, 2, 5, 5, 8


def _normal(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def conv1x1(x, p):
    return np.einsum("bhwi,io->bhwo", x, p["kernel"][0, 0]) + p["bias"]


def l2n(x):
    return x / np.maximum(np.sqrt(np.sum(x * x, axis=-1, keepdims=True)), 1e-12)


def fusion_reference(params, l, g):
    """alpha = s(C'_g G + C'_l l_t); r_t = alpha L2N(C_g G) + (1 - alpha) L2N(C_l l_t), AU by AU."""
    out = []
    for t in range(l.shape[0]):
        p = jax.tree.map(lambda a: np.asarray(a, np.float64)[t], params)
        alpha = sigmoid(conv1x1(g, p["gate_g"]) + conv1x1(l[t], p["gate_l"]))
        out.append(alpha * l2n(conv1x1(g, p["conv_g"])) + (1 - alpha) * l2n(conv1x1(l[t], p["conv_l"])))
    return np.stack(out)


@pytest.fixture(scope="module")
def setup():
    l, g = _normal((N, B, H, W, F), 0), _normal((B, H, W, F), 1)
    model = FusionRefine(F)
    variables = jax.jit(model.init)(jax.random.key(2), l, g)
    return model, variables, l, g


def test_matches_per_au_equations(setup):
    model, variables, l, g = setup
    params = variables["params"]
    assert set(params) == {"conv_g", "conv_l", "gate_g", "gate_l"}
    for name, p in params.items():
        assert p["kernel"].shape == (N, 1, 1, F, F) and p["bias"].shape == (N, F), name
        k = np.asarray(p["kernel"])
        assert not np.allclose(k[0], k[1]), f"{name}: AUs share weights"
        assert np.abs(k).max() <= 1 / np.sqrt(F)               # PyTorch Conv2d init bound (fan_in = F)
    got = np.asarray(jax.jit(model.apply)(variables, l, g))
    want = fusion_reference(params, np.asarray(l, np.float64), np.asarray(g, np.float64))
    assert got.shape == (N, B, H, W, F)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # Per-AU weights act per AU: the same local feature for every AU still gives different outputs.
    same = jnp.broadcast_to(l[:1], l.shape)
    r = np.asarray(jax.jit(model.apply)(variables, same, g))
    assert np.abs(r[0] - r[1]).max() > 1e-3


def test_l2_normalize_matches_torch_clamp():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-14, 0.0]], np.float32)
    got = np.asarray(l2_normalize(jnp.asarray(x)))
    np.testing.assert_allclose(got, [[0.6, 0.8], [0.0, 0.0], [1e-2, 0.0]], rtol=1e-6)
    grad = jax.grad(lambda a: l2_normalize(a).sum())(jnp.zeros((2, 3)))
    assert np.all(np.isfinite(np.asarray(grad)))


def test_jit_and_grad(setup):
    model, variables, l, g = setup

    @jax.jit
    def loss(params, l, g):
        return jnp.sum(jnp.square(model.apply({"params": params}, l, g) - 0.1))

    gp, gl, gg = jax.grad(loss, argnums=(0, 1, 2))(variables["params"], l, g)
    for path, x in jax.tree_util.tree_leaves_with_path(gp):
        x = np.asarray(x)
        assert np.all(np.isfinite(x)), path
        assert np.all(np.abs(x).reshape(N, -1).max(-1) > 0), path  # every AU's weights get gradient
    assert np.abs(np.asarray(gl)).max() > 0 and np.abs(np.asarray(gg)).max() > 0


def test_bad_shapes():
    l, g = jnp.zeros((N, B, H, W, F)), jnp.zeros((B, H, W, F))
    with pytest.raises(ValueError, match="FusionRefine: expected"):
        jax.eval_shape(FusionRefine(F).init, jax.random.key(0), l, g[:, :4])
    with pytest.raises(ValueError, match="FusionRefine: expected"):
        jax.eval_shape(FusionRefine(F).init, jax.random.key(0), l[0], g)


def test_rescale_gives_unit_rms_output(setup):
    """``rescale`` (off by default, not the paper's): r * sqrt(F), so the entries of r have RMS near 1 instead of
    1/sqrt(F); the same parameters."""
    model, variables, l, g = setup
    r = np.asarray(model.apply(variables, l, g))
    scaled = np.asarray(FusionRefine(F, rescale=True).apply(variables, l, g))
    np.testing.assert_allclose(scaled, r * np.sqrt(F), rtol=1e-6, atol=1e-6)
    assert np.sqrt(np.mean(r ** 2)) <= 1 / np.sqrt(F) + 1e-6            # convex mix of two unit vectors per position
    assert 0.3 < np.sqrt(np.mean(scaled ** 2)) <= 1.0 + 1e-6
