"""Relations between AU features (SPEC section 4): the ConvLSTM cell, the skip-BiLSTM and the plain ConvBiLSTM.

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
  Memory: reverse-mode AD keeps the buffer of every step, O(n^2 B H W F); measured (XLA CPU memory analysis,
  grad of both directions, B = 8, 44x44x64, F = 64): temp 624 MiB at n = 4, 2562 MiB at n = 12, 7289 MiB at
  n = 24, against 1274 MiB for the plain ConvBiLSTM at n = 12; program size and compile time do not change.
ConvBiLSTM ("w/ Bi"): h_t = Cell((c_{t-1}, h_{t-1}), v_t) in each direction, same output.

Param trees (F = hidden, C = input channels; kernels HWIO, PyTorch OIHW -> transpose(2, 3, 1, 0)):
  ConvLSTMCell: conv {kernel [3, 3, C + F, 4F], bias [4F]}   input channels (x, h); output chunks (i, f, o, g)
  SkipBiLSTM:  forward / backward: {cell: ConvLSTMCell, gates: {kernel [n, 1, 1, F + C, F], bias [n, F]}}
               gates.kernel[j] is W_j of source AU j (AU order in both directions); input channels (h_j, v_t);
               forward never uses kernel[n-1], backward never kernel[0] (no gradient reaches them).
  ConvBiLSTM:  forward / backward: ConvLSTMCell tree ({conv}).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from algrnet_jax.models.layers import Conv, torch_bias_init

Carry = tuple[jax.Array, jax.Array]                      # (c, h), each [B, H, W, F]
SkipCarry = tuple[jax.Array, jax.Array, jax.Array]       # c [B, H, W, F], hs [n, B, H, W, F], hs_mean [n, B, F]
SkipInputs = tuple[jax.Array, jax.Array, jax.Array]      # t [], v_t [B, H, W, C], GAP(v_t) [B, C]


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

    @nn.compact
    def __call__(self, carry: Carry, x: jax.Array) -> tuple[Carry, jax.Array]:
        c, h = carry
        xh = jnp.concatenate([x, h], axis=-1)
        # Patches x matmul (same params as a native conv): XLA:CPU's filter gradient of a conv inside a scan is
        # ~25x slower than that of the equivalent batched matmul.
        z = Conv(4 * self.features, 3, 1, matmul=True, name="conv")(xh)
        i, f, o, g = jnp.split(z, 4, axis=-1)
        c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
        h = nn.sigmoid(o) * jnp.tanh(c)
        return (c, h), h


class SourceGates(nn.Module):
    """All n skip gates of one step: sigmoid(W_j(concat(GAP h_j, GAP v_t))) for j = 0..n-1.

    h_mean [n, B, F] (spatial means of the buffered hidden states), v_mean [B, C] -> gates [n, B, F].
    Params: kernel [n, 1, 1, F + C, F] (1x1 conv W_j per source j, HWIO), bias [n, F]; PyTorch Conv2d init.
    """

    features: int

    @nn.compact
    def __call__(self, h_mean: jax.Array, v_mean: jax.Array) -> jax.Array:
        n, fan_in = h_mean.shape[0], h_mean.shape[-1] + v_mean.shape[-1]
        init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", batch_axis=(0,))
        kernel = self.param("kernel", init, (n, 1, 1, fan_in, self.features), jnp.float32)
        bias = self.param("bias", torch_bias_init(fan_in), (n, self.features), jnp.float32)
        x = jnp.concatenate([h_mean, jnp.broadcast_to(v_mean, (n,) + v_mean.shape)], axis=-1)  # [n, B, F + C]
        return nn.sigmoid(jnp.einsum("jbi,jio->jbo", x, kernel[:, 0, 0]) + bias[:, None, :])


class SkipStep(nn.Module):
    """One step t of a skip-LSTM direction (scanned over t by ``nn.scan``).

    carry: c [B, H, W, F], buffer of hidden states hs [n, B, H, W, F] and their means [n, B, F];
    xs: t [] (AU index), v_t [B, H, W, C], GAP(v_t) [B, C]. Returns the new carry and h_t [B, H, W, F].
    ``reverse``: backward direction (sources j > t instead of j < t).
    """

    features: int
    reverse: bool = False

    @nn.compact
    def __call__(self, carry: SkipCarry, xs: SkipInputs) -> tuple[SkipCarry, jax.Array]:
        c, hs, hs_mean = carry
        t, v, v_mean = xs
        gates = SourceGates(self.features, name="gates")(hs_mean, v_mean)        # [n, B, F]
        j = jnp.arange(hs.shape[0])
        sources = (j > t) if self.reverse else (j < t)
        gates = jnp.where(sources[:, None, None], gates, 0.0)
        h_in = jnp.einsum("jbf,jbhwf->bhwf", gates, hs)                         # sum_j f_tj * h_j
        (c, h), _ = ConvLSTMCell(self.features, name="cell")((c, h_in), v)
        hs = jax.lax.dynamic_update_index_in_dim(hs, h, t, axis=0)
        hs_mean = jax.lax.dynamic_update_index_in_dim(hs_mean, jnp.mean(h, axis=(1, 2)), t, axis=0)
        return (c, hs, hs_mean), h


def _scanned(cls: type[nn.Module], reverse: bool) -> type[nn.Module]:
    """``cls`` scanned over the leading (AU) axis of its inputs and outputs; params shared over steps."""
    return nn.scan(cls, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=0, out_axes=0, reverse=reverse)


class SkipBiLSTM(nn.Module):
    """Skip-BiLSTM with scanned gates: v [n, B, H, W, C] -> (h_fwd + h_bwd) / 2 [n, B, H, W, hidden]."""

    hidden: int

    @nn.compact
    def __call__(self, v: jax.Array) -> jax.Array:
        _check_sequence(v, "SkipBiLSTM")
        n = v.shape[0]
        c0, _ = _zeros_carry(v, self.hidden)
        carry = (c0, jnp.zeros((n,) + c0.shape, v.dtype), jnp.zeros((n, v.shape[1], self.hidden), v.dtype))
        xs = (jnp.arange(n), v, jnp.mean(v, axis=(2, 3)))
        outs = [_scanned(SkipStep, reverse)(self.hidden, reverse, name=name)(carry, xs)[1]
                for name, reverse in (("forward", False), ("backward", True))]
        return (outs[0] + outs[1]) / 2.0


class ConvBiLSTM(nn.Module):
    """Plain ConvBiLSTM ("w/ Bi"): v [n, B, H, W, C] -> (h_fwd + h_bwd) / 2 [n, B, H, W, hidden]."""

    hidden: int

    @nn.compact
    def __call__(self, v: jax.Array) -> jax.Array:
        _check_sequence(v, "ConvBiLSTM")
        carry = _zeros_carry(v, self.hidden)
        outs = [_scanned(ConvLSTMCell, reverse)(self.hidden, name=name)(carry, v)[1]
                for name, reverse in (("forward", False), ("backward", True))]
        return (outs[0] + outs[1]) / 2.0
