"""Adaptive regions: exact initial offsets/scales, gradients, jit."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algrnet_jax.models.adaptive import AdaptiveRegions

B, D, N = 3, 40, 5


@pytest.fixture(scope="module")
def setup():
    feat = jnp.asarray(np.abs(np.random.default_rng(0).standard_normal((B, D))), jnp.float32)
    model = AdaptiveRegions(N, init_scale=0.14, hidden=16)
    variables = jax.jit(model.init)(jax.random.key(1), feat)
    return model, variables, feat


def test_initial_regions_are_exact(setup):
    model, variables, feat = setup
    offsets, scales = jax.jit(model.apply)(variables, feat)
    assert offsets.shape == (B, N, 2) and scales.shape == (B, N)
    np.testing.assert_array_equal(np.asarray(offsets), 0.0)
    np.testing.assert_array_equal(np.asarray(scales), np.float32(0.14))
    shapes = jax.tree.map(jnp.shape, variables["params"])
    assert shapes == {"offset_hidden": {"kernel": (D, 16), "bias": (16,)},
                      "offset_out": {"kernel": (16, 2 * N), "bias": (2 * N,)},
                      "scale_hidden": {"kernel": (D, 16), "bias": (16,)},
                      "scale_out": {"kernel": (16, N), "bias": (N,)}}


def test_gradients_and_update_moves_regions(setup):
    model, variables, feat = setup
    target_offsets = jnp.asarray(np.random.default_rng(2).standard_normal((B, N, 2)), jnp.float32)

    @jax.jit
    def loss(params):
        offsets, scales = model.apply({"params": params}, feat)
        return jnp.sum(jnp.square(offsets - target_offsets)) + jnp.sum(jnp.square(scales - 0.2))

    grads = jax.grad(loss)(variables["params"])
    for name in ("offset_out", "scale_out"):
        for leaf in ("kernel", "bias"):
            assert np.abs(np.asarray(grads[name][leaf])).max() > 0, (name, leaf)
    # One SGD step moves offsets off 0 and scales off 0.14; scales stay positive; then the first layers learn too.
    params = jax.tree.map(lambda p, g: p - 0.01 * g, variables["params"], grads)
    offsets, scales = jax.jit(model.apply)({"params": params}, feat)
    assert np.abs(np.asarray(offsets)).min() > 0 and np.all(np.asarray(scales) > 0.14)
    grads = jax.grad(loss)(params)
    assert np.abs(np.asarray(grads["offset_hidden"]["kernel"])).max() > 0
    assert np.abs(np.asarray(grads["scale_hidden"]["kernel"])).max() > 0


def test_bad_input():
    with pytest.raises(ValueError, match=r"AdaptiveRegions: expected flattened alignment features \[B, D\]"):
        jax.eval_shape(AdaptiveRegions(N).init, jax.random.key(0), jnp.zeros((B, 5, 5, 8)))


def test_offset_unit_scales_the_offsets_and_their_learning(setup):
    """``unit`` multiplies the offsets for the same parameters, starts them at 0 as well, and one SGD step on
    the same offset loss moves them unit**2 times as far (the gradient scales by unit, and so does the output)."""
    model, variables, feat = setup
    unit = 5.0
    scaled = AdaptiveRegions(N, init_scale=0.14, hidden=16, unit=unit)
    params = jax.tree.map(lambda p: p + 0.01, variables["params"])
    (o1, s1), (o5, s5) = (jax.jit(m.apply)({"params": params}, feat) for m in (model, scaled))
    np.testing.assert_allclose(np.asarray(o5), unit * np.asarray(o1), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(s5), np.asarray(s1))
    np.testing.assert_array_equal(np.asarray(jax.jit(scaled.apply)(variables, feat)[0]), 0.0)

    def step(m):
        g = jax.grad(lambda p: jnp.sum(m.apply({"params": p}, feat)[0]))(variables["params"])
        return m.apply({"params": jax.tree.map(lambda p, d: p - 1e-3 * d, variables["params"], g)}, feat)[0]

    moved1, moved5 = np.asarray(step(model)), np.asarray(step(scaled))
    np.testing.assert_allclose(moved5, unit ** 2 * moved1, rtol=1e-4)
