"""Relations between AU features (docs/model.md §4.2): the registry of relation modules, the ConvLSTM cell, the
skip-BiLSTM and the plain ConvBiLSTM.

Registry: ``config.model.relation`` names a relation module registered with :func:`register` (``RELATIONS``:
name -> class), or ``"none"`` (no relation term: s_t = v_t). A relation module subclasses :class:`Relation`
(fields ``hidden``, ``dtype``, ``param_dtype``) and maps v [n, B, H, W, C] -> [n, B, H, W, hidden]; the network
builds it as ``cls(hidden=lstm_hidden, dtype=..., param_dtype=..., name="relations")``. A new variant is one class
and one ``@register("<name>")`` (docs/usage_relations.md).

Input ``v``: [n, B, H, W, C], one feature map per AU (v_t = region features * refined map t, n AUs in table
order). Output: [n, B, H, W, hidden] = (h_fwd_t + h_bwd_t) / 2; the network adds it: s_t = v_t + output_t.

ConvLSTM cell (Shi et al. 2015): z = conv3x3(concat(x, h)) split into i, f, o, g;
  c' = sigmoid(f) * c + sigmoid(i) * tanh(g);  h' = sigmoid(o) * tanh(c').
Skip-BiLSTM, forward direction (t = 1..n), paper eqs (6)-(10):
  f_tj = sigmoid(GAP(W_j(concat(h_j, v_t))))  for every j < t   (W_j: 1x1 conv, one per SOURCE position j)
  (c_t, h_t) = Cell((c_{t-1}, sum_{j<t} f_tj * h_j), v_t),  with c_0 = 0 and an empty sum (zeros) at t = 1.
  Backward direction: the same over t = n..1 with its own weights and j > t.
  Each direction is ONE scan over t whose carry is a fixed-size buffer of hidden states [n, B, H, W, hidden]
  (zeros where not yet written) plus their spatial means; at step t all n gates are computed at once with the
  stacked W_j, masked to the causal sources, and h_t is written to the buffer at t. The program holds one
  step, so its size and compile time do not grow with n.
  Because a 1x1 conv and GAP are both linear, GAP(W_j(concat(h_j, v_t))) = W_j(concat(GAP(h_j), GAP(v_t)))
  exactly; the gates are computed on the means ([n, B, hidden + C] @ [n, hidden + C, hidden]).
  Memory: plain reverse-mode AD of that scan would keep the buffer of every step, O(n^2 B H W F)
  (docs/performance.md, "Skip-BiLSTM backward memory"). The direction therefore has a custom VJP
  (``skip_direction``): its residuals are the n hidden and cell states only, O(n B H W F), and the backward
  pass is a reverse scan that recomputes each step from them. At step t the buffer holds exactly h_j for the
  sources j (zeros elsewhere) and the gates of every other j are masked to 0, so the step can be recomputed
  from the final stack of hidden states: the same values and gradients.
ConvBiLSTM ("w/ Bi"): h_t = Cell((c_{t-1}, h_{t-1}), v_t) in each direction, same output.

Param trees (F = hidden, C = input channels; kernels HWIO, PyTorch OIHW -> transpose(2, 3, 1, 0)):
  ConvLSTMCell: conv {kernel [3, 3, C + F, 4F], bias [4F]}   input channels (x, h); output chunks (i, f, o, g)
  SkipBiLSTM:  forward / backward: {cell: ConvLSTMCell, gates: {kernel [n, 1, 1, F + C, F], bias [n, F]}}
               gates.kernel[j] is W_j of source AU j (AU order in both directions); input channels (h_j, v_t);
               forward never uses kernel[n-1], backward never kernel[0] (no gradient reaches them).
  ConvBiLSTM:  forward / backward: ConvLSTMCell tree ({conv}).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from algrnet_jax.models.layers import TORCH_KERNEL_INIT, Conv, matmul_conv, torch_bias_init

Carry = tuple[jax.Array, jax.Array]                      # (c, h), each [B, H, W, F]

NONE = "none"                                             # config.model.relation without a relation term
RELATIONS: dict[str, type[Relation]] = {}                 # config.model.relation name -> module class


class Relation(nn.Module):
    """Base of the relation modules: v [n, B, H, W, C] (one feature map per AU) -> [n, B, H, W, hidden].

    The network adds the output to its input, s_t = v_t + output_t, so ``hidden`` equals C there
    (configs/validate.py checks ``model.lstm_hidden == 8 * model.unit``)."""

    hidden: int
    dtype: Any = None
    param_dtype: Any = jnp.float32


def register(name: str) -> Callable[[type[Relation]], type[Relation]]:
    """Class decorator: makes a :class:`Relation` subclass selectable as ``config.model.relation = name``."""
    def add(cls: type[Relation]) -> type[Relation]:
        if name == NONE or name in RELATIONS:
            raise ValueError(f"relation name {name!r} is taken ({', '.join(relation_names())})")
        if not issubclass(cls, Relation):
            raise TypeError(f"relation {name!r}: {cls.__name__} must subclass relations.Relation")
        RELATIONS[name] = cls
        return cls
    return add


def relation_names() -> tuple[str, ...]:
    """The values ``config.model.relation`` accepts: the registered names and ``"none"``."""
    return (*RELATIONS, NONE)


def get_relation(name: str) -> type[Relation]:
    """The module class registered under ``name`` (ValueError naming the registered ones otherwise)."""
    if name not in RELATIONS:
        raise ValueError(f"model.relation must be one of {', '.join(relation_names())}, got {name!r}")
    return RELATIONS[name]


def _check_sequence(v: jax.Array, name: str) -> None:
    if v.ndim != 5:
        raise ValueError(f"{name}: expected AU feature maps [n, B, H, W, C], got shape {v.shape}")
    if v.shape[0] < 1:
        raise ValueError(f"{name}: needs at least one AU, got shape {v.shape}")


def _zeros_carry(v: jax.Array, hidden: int) -> Carry:
    """(c_0, h_0) = zeros [B, H, W, hidden] for a sequence v [n, B, H, W, C]."""
    z = jnp.zeros(v.shape[1:-1] + (hidden,), v.dtype)
    return z, z


class ConvLSTMCell(nn.Module):
    """ConvLSTM cell: carry (c, h) [B, H, W, F], input x [B, H, W, C] -> ((c', h'), h')."""

    features: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, carry: Carry, x: jax.Array) -> tuple[Carry, jax.Array]:
        c, h = carry
        xh = jnp.concatenate([x, h], axis=-1)
        # Patches x matmul (same params as a native conv): XLA:CPU's filter gradient of a conv inside a scan is
        # ~25x slower than that of the equivalent batched matmul.
        z = Conv(4 * self.features, 3, 1, impl="matmul", dtype=self.dtype, param_dtype=self.param_dtype,
                 name="conv")(xh)
        c, h = lstm_update(z, c)
        return (c, h), h


def lstm_update(z: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The LSTM update from the cell conv's output z [..., 4F] (chunks i, f, o, g) and c [..., F] -> (c', h')."""
    i, f, o, g = jnp.split(z, 4, axis=-1)
    c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
    return c, nn.sigmoid(o) * jnp.tanh(c)


def skip_step(params: dict, c: jax.Array, hs: jax.Array, hs_mean: jax.Array, t: jax.Array, v: jax.Array,
              reverse: bool) -> tuple[jax.Array, jax.Array]:
    """One step t of a skip-LSTM direction: (c_t, h_t), each [B, H, W, F].

    params: one direction's tree (``cell.conv`` and ``gates``); c: c_{t-1}; hs [n, B, H, W, F] hidden states of
    the sources (any values at non-sources: their gates are masked to 0) and hs_mean [n, B, F] their spatial means;
    t: AU index; v: v_t [B, H, W, C]; ``reverse``: sources j > t instead of j < t.
    """
    gk, gb = params["gates"]["kernel"][:, 0, 0], params["gates"]["bias"]      # [n, F + C, F], [n, F]
    v_mean = jnp.mean(v, axis=(1, 2))                                            # GAP(v_t) [B, C]
    x = jnp.concatenate([hs_mean, jnp.broadcast_to(v_mean, (hs.shape[0],) + v_mean.shape)], axis=-1)
    gates = nn.sigmoid(jnp.einsum("jbi,jio->jbo", x, gk) + gb[:, None, :])      # [n, B, F]
    j = jnp.arange(hs.shape[0])
    gates = jnp.where(((j > t) if reverse else (j < t))[:, None, None], gates, 0.0)
    h_in = jnp.einsum("jbf,jbhwf->bhwf", gates, hs)                             # sum_j f_tj * h_j
    ck, cb = params["cell"]["conv"]["kernel"], params["cell"]["conv"]["bias"]
    # Patches x matmul (same params as a native conv): XLA:CPU's filter gradient of a conv inside a scan is
    # ~25x slower than that of the equivalent batched matmul.
    z = matmul_conv(jnp.concatenate([v, h_in], axis=-1)[None], ck[None], 1)[0] + cb
    return lstm_update(z, c)


def _skip_forward(params: dict, v: jax.Array, reverse: bool) -> tuple[jax.Array, jax.Array]:
    """One direction over v [n, B, H, W, C] -> (h [n, B, H, W, F], c [n, B, H, W, F]) for every t."""
    n, f = v.shape[0], params["gates"]["bias"].shape[-1]
    c0 = jnp.zeros(v.shape[1:-1] + (f,), v.dtype)

    def body(carry, xs):
        c, hs, hs_mean = carry
        t, v_t = xs
        c, h = skip_step(params, c, hs, hs_mean, t, v_t, reverse)
        hs = jax.lax.dynamic_update_index_in_dim(hs, h, t, axis=0)
        hs_mean = jax.lax.dynamic_update_index_in_dim(hs_mean, jnp.mean(h, axis=(1, 2)), t, axis=0)
        return (c, hs, hs_mean), (h, c)

    carry = (c0, jnp.zeros((n,) + c0.shape, v.dtype), jnp.zeros((n, v.shape[1], f), v.dtype))
    _, (h, c) = jax.lax.scan(body, carry, (jnp.arange(n), v), reverse=reverse)
    return h, c


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def skip_direction(params: dict, v: jax.Array, reverse: bool) -> jax.Array:
    """One skip-LSTM direction: v [n, B, H, W, C] -> h [n, B, H, W, F]; backward pass in O(n) memory."""
    return _skip_forward(params, v, reverse)[0]


def _skip_direction_fwd(params: dict, v: jax.Array, reverse: bool):
    h, c = _skip_forward(params, v, reverse)
    return h, (params, v, h, c)


def _skip_direction_bwd(reverse: bool, residuals, h_bar: jax.Array):
    params, v, h_all, c_all = residuals
    h_mean = jnp.mean(h_all, axis=(2, 3))
    zeros = jnp.zeros_like(c_all[:1])
    # c_{t-1} in processing order (zeros before the first step).
    c_prev = jnp.concatenate([c_all[1:], zeros]) if reverse else jnp.concatenate([zeros, c_all[:-1]])
    spatial = h_all.shape[2] * h_all.shape[3]

    def body(carry, xs):
        dc, dh_all, dh_mean, dparams = carry
        t, v_t, c_t1, g_t = xs
        step = lambda p, c, hs, hm, vv: skip_step(p, c, hs, hm, t, vv, reverse)
        _, vjp = jax.vjp(step, params, c_t1, h_all, h_mean, v_t)
        # h_t is read later through the buffer (dh_all) and its mean (dh_mean), and is an output (g_t).
        dh = g_t + dh_all[t] + (dh_mean[t] / spatial)[:, None, None, :]
        dp, dc, dhs, dhm, dv = vjp((dc, dh))
        return (dc, dh_all + dhs, dh_mean + dhm, jax.tree.map(jnp.add, dparams, dp)), dv

    carry = (zeros[0], jnp.zeros_like(h_all), jnp.zeros_like(h_mean), jax.tree.map(jnp.zeros_like, params))
    (_, _, _, dparams), dv = jax.lax.scan(body, carry, (jnp.arange(v.shape[0]), v, c_prev, h_bar),
                                          reverse=not reverse)
    return dparams, dv


skip_direction.defvjp(_skip_direction_fwd, _skip_direction_bwd)


def init_skip_direction(rng: jax.Array, n: int, channels: int, hidden: int, dtype=jnp.float32) -> dict:
    """Parameters of one direction with PyTorch Conv2d init: cell.conv [3, 3, C + F, 4F] and the n 1x1 gates
    W_j [n, 1, 1, F + C, F] (bias [n, F]), as in the module docstring."""
    k1, k2, k3, k4 = jax.random.split(rng, 4)
    cell_in, gate_in = 9 * (channels + hidden), hidden + channels
    return {
        "cell": {"conv": {
            "kernel": TORCH_KERNEL_INIT(k1, (3, 3, channels + hidden, 4 * hidden), dtype),
            "bias": torch_bias_init(cell_in)(k2, (4 * hidden,), dtype)}},
        "gates": {
            "kernel": nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", batch_axis=(0,))(
                k3, (n, 1, 1, gate_in, hidden), dtype),
            "bias": torch_bias_init(gate_in)(k4, (n, hidden), dtype)},
    }


@register("skip_bilstm")
class SkipBiLSTM(Relation):
    """Skip-BiLSTM with scanned gates: v [n, B, H, W, C] -> (h_fwd + h_bwd) / 2 [n, B, H, W, hidden]."""

    @nn.compact
    def __call__(self, v: jax.Array) -> jax.Array:
        _check_sequence(v, "SkipBiLSTM")
        init = functools.partial(init_skip_direction, n=v.shape[0], channels=v.shape[-1], hidden=self.hidden,
                                 dtype=self.param_dtype)
        dtype = self.dtype or jnp.result_type(v.dtype, self.param_dtype)
        x, outs = v.astype(dtype), []
        for name, reverse in (("forward", False), ("backward", True)):
            params = jax.tree.map(lambda a: a.astype(dtype), self.param(name, init))
            outs.append(skip_direction(params, x, reverse))
        return (outs[0] + outs[1]) / 2.0


@register("bilstm")
class ConvBiLSTM(Relation):
    """Plain ConvBiLSTM ("w/ Bi"): v [n, B, H, W, C] -> (h_fwd + h_bwd) / 2 [n, B, H, W, hidden].

    Each direction is ``nn.scan`` over AUs of one ``ConvLSTMCell`` (params shared over steps)."""

    @nn.compact
    def __call__(self, v: jax.Array) -> jax.Array:
        _check_sequence(v, "ConvBiLSTM")
        carry = _zeros_carry(v, self.hidden)
        scanned = {reverse: nn.scan(ConvLSTMCell, variable_broadcast="params", split_rngs={"params": False},
                                    in_axes=0, out_axes=0, reverse=reverse) for reverse in (False, True)}
        outs = [scanned[reverse](self.hidden, self.dtype, self.param_dtype, name=name)(carry, v)[1]
                for name, reverse in (("forward", False), ("backward", True))]
        return (outs[0] + outs[1]) / 2.0
