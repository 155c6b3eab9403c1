"""Skip-BiLSTM and ConvBiLSTM against plain unrolled numpy (float64) implementations of the equations,
program size independent of n, jit + grad."""
from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algrnet_jax.configs import get_config, validate
from algrnet_jax.models import networks, relations
from algrnet_jax.models.relations import ConvBiLSTM, ConvLSTMCell, SkipBiLSTM

B, H, W, C, F = 2, 6, 6, 8, 8


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def conv_same(x, kernel, bias):
    """Plain conv, stride 1, SAME zero padding: x [B, H, W, I], kernel [k, k, I, O] -> [B, H, W, O]."""
    k = kernel.shape[0]
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    hh, ww = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
    for a in range(k):
        for b in range(k):
            out += np.einsum("bhwi,io->bhwo", xp[:, a:a + hh, b:b + ww], kernel[a, b])
    return out + bias


def cell(p, c, h, x):
    """Shi et al.: z = conv3x3([x, h]); i, f, o, g; c' = s(f) c + s(i) tanh(g); h' = s(o) tanh(c')."""
    z = conv_same(np.concatenate([x, h], -1), p["conv"]["kernel"], p["conv"]["bias"])
    i, f, o, g = np.split(z, 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return c, sigmoid(o) * np.tanh(c)


def skip_direction(p, v, order):
    """Eqs (6)-(10) written out: for each t in ``order``, gates from every earlier-processed j."""
    c = np.zeros(v.shape[1:-1] + (F,))
    hs = {}
    out = np.zeros(v.shape[:-1] + (F,))
    for t in order:
        h_in = np.zeros_like(c)
        for j, h_j in hs.items():
            z = conv_same(np.concatenate([h_j, v[t]], -1), p["gates"]["kernel"][j], p["gates"]["bias"][j])
            f_tj = sigmoid(z.mean(axis=(1, 2)))                      # GAP -> [B, F]
            h_in = h_in + f_tj[:, None, None, :] * h_j
        c, h = cell(p["cell"], c, h_in, v[t])
        hs[t] = h
        out[t] = h
    return out


def plain_direction(p, v, order):
    c = h = np.zeros(v.shape[1:-1] + (F,))
    out = np.zeros(v.shape[:-1] + (F,))
    for t in order:
        c, h = cell(p, c, h, v[t])
        out[t] = h
    return out


def random_variables(model, *args, seed=0, scale=0.3):
    """The model's variable tree (shapes from ``init`` without compiling it) filled with N(0, scale^2) values."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), *args)
    leaves, treedef = jax.tree.flatten(shapes)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(treedef, [jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype) for x in leaves])


def _normal(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _inputs(n, seed=0):
    return _normal((n, B, H, W, C), seed)


@pytest.mark.parametrize("n", [1, 5])
def test_skip_bilstm_matches_unrolled_equations(n):
    v = _inputs(n)
    model = SkipBiLSTM(F)
    variables = random_variables(model, v, seed=1)
    p = _np(variables["params"])
    assert p["forward"]["gates"]["kernel"].shape == (n, 1, 1, F + C, F)
    assert p["forward"]["cell"]["conv"]["kernel"].shape == (3, 3, C + F, 4 * F)
    if n > 1:  # one W_j per source position, each its own values
        assert not np.allclose(p["forward"]["gates"]["kernel"][0], p["forward"]["gates"]["kernel"][-1])
    got = np.asarray(jax.jit(model.apply)(variables, v))
    vn = np.asarray(v, np.float64)
    want = (skip_direction(p["forward"], vn, range(n)) + skip_direction(p["backward"], vn, reversed(range(n)))) / 2
    assert got.shape == (n, B, H, W, F)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # The skip connections matter: differs from the plain ConvBiLSTM with the same cells (n > 2 has skips).
    if n > 2:
        plain = (plain_direction(p["forward"]["cell"], vn, range(n))
                 + plain_direction(p["backward"]["cell"], vn, reversed(range(n)))) / 2
        assert np.abs(got - plain).max() > 1e-3


def test_conv_bilstm_matches_unrolled_equations():
    n = 5
    v = _inputs(n, seed=2)
    model = ConvBiLSTM(F)
    variables = random_variables(model, v, seed=3)
    p = _np(variables["params"])
    got = np.asarray(jax.jit(model.apply)(variables, v))
    vn = np.asarray(v, np.float64)
    want = (plain_direction(p["forward"], vn, range(n)) + plain_direction(p["backward"], vn, reversed(range(n)))) / 2
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_conv_lstm_cell_gate_order():
    x, c0, h0 = _normal((B, H, W, C), 4), _normal((B, H, W, F), 5), _normal((B, H, W, F), 6)
    model = ConvLSTMCell(F)
    variables = random_variables(model, (c0, h0), x, seed=7)
    (c, h), out = jax.jit(model.apply)(variables, (c0, h0), x)
    want_c, want_h = cell(_np(variables["params"]), *(np.asarray(a, np.float64) for a in (c0, h0, x)))
    np.testing.assert_allclose(np.asarray(c), want_c, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(h), want_h, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(h))


def _unrolled_jax(params, v):
    """A Python-unrolled jnp version (one program block per t and j), for the size comparison."""
    def jcell(p, c, h, x):
        z = jax.lax.conv_general_dilated(jnp.concatenate([x, h], -1), p["conv"]["kernel"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["conv"]["bias"]
        i, f, o, g = jnp.split(z, 4, -1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return c, jax.nn.sigmoid(o) * jnp.tanh(c)

    p = params["forward"]
    c = jnp.zeros(v.shape[1:-1] + (p["gates"]["bias"].shape[-1],))
    hs = []
    for t in range(v.shape[0]):
        h_in = jnp.zeros_like(c)
        for j, h_j in enumerate(hs):
            z = jax.lax.conv_general_dilated(jnp.concatenate([h_j, v[t]], -1), p["gates"]["kernel"][j], (1, 1),
                                             "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            h_in = h_in + jax.nn.sigmoid(z.mean((1, 2)) + p["gates"]["bias"][j])[:, None, None] * h_j
        c, h = jcell(p["cell"], c, h_in, v[t])
        hs.append(h)
    return jnp.stack(hs)


def _program_stats(fn, *args):
    """(number of convolution + dot ops, length) of the lowered StableHLO text."""
    text = jax.jit(fn).lower(*args).as_text()
    return len(re.findall(r"stablehlo\.(?:convolution|dot_general)", text)), len(text)


def test_program_size_does_not_grow_with_n():
    stats, unrolled = {}, {}
    for n in (8, 12):
        v = jnp.zeros((n, 1, 4, 4, 4))
        model = SkipBiLSTM(4)
        variables = jax.eval_shape(model.init, jax.random.key(0), v)
        stats[n] = _program_stats(model.apply, variables, v)
        unrolled[n] = _program_stats(_unrolled_jax, variables["params"], v)
    # Scanned: the same contractions (per direction: one cell conv as patches x matmul, one batched gate matmul)
    # and the same text up to the digits of n.
    assert stats[8][0] == stats[12][0] <= 8, stats
    assert abs(stats[12][1] - stats[8][1]) < 200, stats
    # The metric is sensitive: an unrolled program grows with n (n cell convs + n(n-1)/2 gate convs).
    assert unrolled[8][0] == 8 + 28 and unrolled[12][0] == 12 + 66, unrolled
    assert unrolled[12][1] > 1.4 * unrolled[8][1], unrolled


@pytest.mark.parametrize("cls", [SkipBiLSTM, ConvBiLSTM])
def test_jit_and_grad(cls):
    v = _inputs(4, seed=8)
    model = cls(F)
    variables = jax.jit(model.init)(jax.random.key(9), v)

    @jax.jit
    def loss(params, v):
        return jnp.mean(jnp.square(v[..., :F] + model.apply({"params": params}, v)))

    g_params, g_v = jax.grad(loss, argnums=(0, 1))(variables["params"], v)
    if cls is SkipBiLSTM:  # PyTorch Conv2d init of the stacked 1x1 gates: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) each
        kernel = np.asarray(variables["params"]["forward"]["gates"]["kernel"])
        bound = 1.0 / np.sqrt(F + C)
        assert np.abs(kernel).max() <= bound and np.abs(kernel).reshape(4, -1).max(-1).min() > 0.8 * bound
    if cls is SkipBiLSTM:
        # W_j is a gate from SOURCE j: the forward direction never uses the last AU as a source, the backward
        # one never the first, so exactly those slices get no gradient.
        for name, unused in (("forward", -1), ("backward", 0)):
            for leaf in ("kernel", "bias"):
                g = np.asarray(g_params[name]["gates"][leaf])
                assert np.all(g[unused] == 0), (name, leaf)
                g_params[name]["gates"][leaf] = np.delete(g, unused % g.shape[0], axis=0)
    for path, g in jax.tree_util.tree_leaves_with_path(g_params):
        assert np.all(np.isfinite(g)), path
        assert np.all(np.abs(g).reshape(g.shape[0], -1).max(-1) > 0), path
    assert np.abs(np.asarray(g_v)).max() > 0


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"SkipBiLSTM: expected AU feature maps \[n, B, H, W, C\]"):
        SkipBiLSTM(F).init(jax.random.key(0), jnp.zeros((B, H, W, C)))
    with pytest.raises(ValueError, match=r"ConvBiLSTM: expected"):
        ConvBiLSTM(F).init(jax.random.key(0), jnp.zeros((B, H, W, C)))


def _skip_loss(direction):
    """Loss of both skip-LSTM directions of SkipBiLSTM params, computed with ``direction(params, v, reverse)``."""
    def loss(params, v):
        out = (direction(params["forward"], v, False) + direction(params["backward"], v, True)) / 2
        return jnp.sum(jnp.sin(out) * v[..., :F])
    return loss


def test_skip_direction_custom_vjp_equals_autodiff():
    """The O(n)-memory backward pass gives the gradients of plain reverse-mode AD through the scan."""
    v = _inputs(5, seed=10)
    params = random_variables(SkipBiLSTM(F), v, seed=11)["params"]
    plain = lambda p, v, reverse: relations._skip_forward(p, v, reverse)[0]   # noqa: E731 - autodiff through the scan
    got = jax.jit(jax.grad(_skip_loss(relations.skip_direction), argnums=(0, 1)))(params, v)
    want = jax.jit(jax.grad(_skip_loss(plain), argnums=(0, 1)))(params, v)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6, err_msg=str(path))
        assert np.abs(np.asarray(w)).max() > 0, path


def _grad_temp_bytes(fn, n):
    v = jnp.zeros((n, 2, 8, 8, 8))
    params = jax.eval_shape(SkipBiLSTM(8).init, jax.random.key(0), v)["params"]
    return jax.jit(jax.grad(_skip_loss(fn), argnums=(0, 1))).lower(params, v).compile().memory_analysis() \
        .temp_size_in_bytes


def test_skip_direction_backward_memory_linear_in_n():
    """Temporaries of the gradient grow linearly with the number of AUs (autodiff of the scan: quadratically)."""
    got = {n: _grad_temp_bytes(relations.skip_direction, n) for n in (12, 24)}
    assert got[24] < 2 * got[12], got
    plain = lambda p, v, reverse: relations._skip_forward(p, v, reverse)[0]   # noqa: E731
    ad = {n: _grad_temp_bytes(plain, n) for n in (12, 24)}
    assert ad[24] > 2.5 * ad[12], ad          # the metric sees the quadratic history of the buffer
    assert got[24] < ad[24] / 2, (got, ad)


def test_a_registered_relation_is_chosen_by_name_from_the_config(monkeypatch):
    """A new variant is one Relation subclass and one registered name; config.model.relation selects it."""
    monkeypatch.setattr(relations, "RELATIONS", dict(relations.RELATIONS))

    @relations.register("scaled")
    class Scaled(relations.Relation):
        @nn.compact
        def __call__(self, v):
            return v * self.param("scale", nn.initializers.ones, (self.hidden,))

    config = get_config("algrnet", "tiny")
    config.model.relation = "scaled"
    assert validate.config_problems(config) == [] and "scaled" in relations.relation_names()
    model = networks.create_model(config)
    images = jnp.zeros((1, config.crop_size, config.crop_size, 3))
    params = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
    assert jax.tree.map(lambda a: a.shape, params["relations"]) == {"scale": (config.model.lstm_hidden,)}
    with pytest.raises(ValueError, match="relation name 'scaled' is taken"):
        relations.register("scaled")(Scaled)
    with pytest.raises(TypeError, match="must subclass relations.Relation"):
        relations.register("plain")(nn.Dense)
    config.model.relation = "gru"
    with pytest.raises(ValueError, match="model.relation = 'gru': must be one of skip_bilstm, bilstm, scaled, none"):
        networks.create_model(config)
