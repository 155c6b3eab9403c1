"""Small layers with PyTorch numerics: BatchNorm, conv/dense with PyTorch's default init, NCHW flatten.

Everything is NHWC with HWIO kernels. Parameter names: conv/dense ``kernel`` and ``bias``; BatchNorm params
``scale``/``bias`` and batch_stats ``mean``/``var`` (PyTorch ``weight``/``bias``/``running_mean``/``running_var``).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's default Conv2d/Linear init: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default bias init U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv(features: int, in_features: int, kernel: int = 3, padding: int | str = 1, name: str | None = None,
         **dtypes: Any) -> nn.Conv:
    """A square conv (stride 1) initialised like torch.nn.Conv2d; ``padding`` as in PyTorch or "VALID".

    XLA's native convolution. Inside ``scan``/``vmap`` prefer ``Conv(features, kernel, padding, impl="matmul")``
    (same params and values): XLA:CPU's native convolution has a very slow filter gradient there (a ConvLSTM
    scan, n = 12, batch 2, 44x44x128 -> 256: 44 s -> 2 s per backward). ``dtypes``: ``dtype``, ``param_dtype``.
    """
    return nn.Conv(features, (kernel, kernel), padding=padding, kernel_init=TORCH_KERNEL_INIT,
                   bias_init=torch_bias_init(in_features * kernel * kernel), name=name, **dtypes)


def dense(features: int, in_features: int, name: str | None = None, **dtypes: Any) -> nn.Dense:
    """A dense layer initialised like torch.nn.Linear (kernel = weight.T); ``dtypes``: ``dtype``, ``param_dtype``."""
    return nn.Dense(features, kernel_init=TORCH_KERNEL_INIT, bias_init=torch_bias_init(in_features), name=name,
                    **dtypes)


# How the k independent convolutions of a per-copy layer (per-AU branches, attention refinement, region cells)
# are computed. Parameters and values are the same for all; ``auto`` picks per backend and layer kind.
CONV_IMPLS = ("auto", "unrolled", "grouped", "matmul")


def resolve_conv_impl(impl: str, kind: str = "copies", backend: str | None = None, train: bool = True) -> str:
    """The implementation ``auto`` stands for on a backend, for a layer ``kind``: "copies" (per-AU / per-region
    layers, few large convs) or "cells1" / "cells2" (the cells of region layer 1 / 2, many small convs), in a
    training (``train``) or an inference program. Explicit choices pass through.

    Measured (``experiments/bench_layers.py``, docs/performance.md): on CPU, k unrolled native convolutions beat the
    patches x matmul form and PyTorch's loop in every layer; the grouped convolution of ``vmap(conv)`` has a very slow
    filter gradient on XLA:CPU. On GPU, cuDNN runs grouped convolutions natively (best or within 0.5 ms per layer).
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"model.conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    backend = backend or jax.default_backend()
    if backend == "cpu":
        return (CPU_AUTO if train else CPU_AUTO_EVAL)[kind]
    return "grouped"


# What ``auto`` means on CPU per layer kind, chosen from the paper-size train-step and eval-forward timings in
# docs/performance.md ("The training step: three changes from its profile", "Per-copy chains, one-pass BatchNorm
# sums, ..."): in training programs the per-copy layers and the cells of region layer 1 are unrolled and the cells
# of layer 2 use the matmul form (unrolling them as well is no faster and pushes the ALGRNet compile over its 60 s
# budget); inference programs unroll everything (a faster forward for a longer compile, paid once). The relational
# models pass their layer-1 cells as kind "cells2" (networks.py): unrolled, they lengthen the compile for no gain.
CPU_AUTO = {"copies": "unrolled", "cells1": "unrolled", "cells2": "matmul"}
CPU_AUTO_EVAL = {"copies": "unrolled", "cells1": "unrolled", "cells2": "unrolled"}


def native_conv(x: jax.Array, kernel: jax.Array, padding: int, groups: int = 1) -> jax.Array:
    """XLA's convolution, stride 1: x [B, H, W, c], kernel [kh, kw, c / groups, f] HWIO -> [B, H', W', f]."""
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((padding, padding), (padding, padding)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


@functools.partial(jax.checkpoint, static_argnums=(2,))
def matmul_conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """k independent convs as patches x batched matmul: x [k, B, H, W, c], kernel [k, kh, kw, c, f] -> [k, B, H', W', f].

    The form to use where a conv sits inside ``scan`` (the ConvLSTM cell): XLA:CPU's native convolution has a very
    slow filter gradient inside loops, batched matmuls are fast in both directions. Rematerialised: the backward
    pass rebuilds the kh*kw shifted copies from x instead of keeping them (inside a scan they would be saved per step).
    """
    k, kh, kw, c, f = kernel.shape
    if padding:
        x = jnp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding), (0, 0)))
    h, w = x.shape[2] - kh + 1, x.shape[3] - kw + 1
    if kh * kw == 1:
        patches = x
    else:
        patches = jnp.concatenate([x[:, :, i:i + h, j:j + w] for i in range(kh) for j in range(kw)], axis=-1)
    return jnp.einsum("kbhwi,kio->kbhwo", patches, kernel.reshape(k, kh * kw * c, f))


# The per-copy form: a tuple of k arrays [B, ...] instead of one stacked [k, B, ...]. A chain of per-copy layers
# (conv, BatchNorm, ReLU, pooling) on it keeps every copy separate from the chain's first layer to its last: no
# stack after each convolution and no split before the next one (two copies of every activation per layer).
PerCopy = tuple[jax.Array, ...]


def unstack(x: jax.Array) -> PerCopy:
    """[k, ...] -> k arrays [...], taken apart with ``split``: its transpose is one concatenate, while the
    transpose of indexing ``x[i]`` pads each gradient back to the full [k, ...] shape (k^2 memory traffic)."""
    return tuple(part[0] for part in jnp.split(x, x.shape[0], axis=0))


def each(fn: Any, x: jax.Array | PerCopy) -> jax.Array | PerCopy:
    """``fn`` on an array, or on every copy of a per-copy tuple."""
    return tuple(fn(part) for part in x) if isinstance(x, tuple) else fn(x)


def per_copy_form(x: jax.Array | PerCopy, copies: int, impl: str, train: bool) -> jax.Array | PerCopy:
    """The form a chain of per-copy layers (kind "copies") runs in: a per-copy tuple where ``impl`` resolves to
    "unrolled" in this program (``train``: a training program), else stacked [copies, ...]. x: either form."""
    if copies and resolve_conv_impl(impl, "copies", train=train) == "unrolled":
        return x if isinstance(x, tuple) else unstack(x)
    return stacked(x)


def stacked(x: jax.Array | PerCopy) -> jax.Array:
    """A per-copy tuple stacked to [k, ...]; an array as it is."""
    return jnp.stack(x) if isinstance(x, tuple) else x


def unrolled_conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """k independent native convs, unrolled in the program: x [k, B, H, W, c], kernel [k, kh, kw, c, f] -> [k, B, H', W', f].

    No patch copies; the k convolutions are independent operations that XLA:CPU can run concurrently. The copies
    are taken apart with ``split`` (whose transpose is one concatenate), not by indexing: the transpose of ``x[i]``
    pads each gradient back to the full [k, ...] shape, and the sum of those k padded arrays was re-read by every
    fusion of the following BatchNorm backward (k^2 slices of memory traffic; the paper-size JAA-Net train step went
    from 7.46 to 6.0 s without it).
    """
    return jnp.stack([native_conv(xi, ki, padding) for xi, ki in zip(unstack(x), unstack(kernel))])


def grouped_conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """k independent convs as ONE grouped convolution (``feature_group_count`` = k, what ``vmap(conv)`` gives):
    x [k, B, H, W, c], kernel [k, kh, kw, c, f] -> [k, B, H', W', f]. Fast on GPU (cuDNN); slow to differentiate on CPU.
    """
    k, kh, kw, c, f = kernel.shape
    _, b, h, w, _ = x.shape
    xg = x.transpose(1, 2, 3, 0, 4).reshape(b, h, w, k * c)                  # channels (k, c)
    kg = kernel.transpose(1, 2, 3, 0, 4).reshape(kh, kw, c, k * f)           # outputs (k, f)
    y = native_conv(xg, kg, padding, groups=k)
    return y.reshape(b, y.shape[1], y.shape[2], k, f).transpose(3, 0, 1, 2, 4)


COPIES_CONV = {"unrolled": unrolled_conv, "grouped": grouped_conv, "matmul": matmul_conv}


class Conv(nn.Module):
    """Square conv, stride 1, PyTorch init; with ``copies`` > 0, that many independent convs (params [copies, ...]).

    x [B, H, W, c] (or [copies, B, H, W, c], or a per-copy tuple of ``copies`` arrays [B, H, W, c]) ->
    [B, H', W', features] (or [copies, ...], or a per-copy tuple); ``padding`` an int (PyTorch's) or "VALID".
    Params: kernel [(copies,) k, k, c, features] HWIO, bias [(copies,) features].
    ``impl`` (``CONV_IMPLS``) says how stacked copies are computed (a per-copy tuple: one native convolution per
    copy; without copies: XLA's native convolution, or "matmul" for a conv inside ``scan``); ``kind`` is the layer
    kind ``auto`` resolves for, in a training program when ``train`` (``resolve_conv_impl``).
    ``normalised``: the output reaches the loss only through BatchNorms over its channels, which in training
    (``train``) cancel any per-channel constant, so the bias gradient is exactly zero: it is then added under
    ``stop_gradient`` and its full-size reduction is not computed (the values are unchanged).
    ``dtype``: computation dtype (None: that of the input and params); ``param_dtype``: the parameters'.
    """

    features: int
    kernel_size: int = 3
    padding: int | str = 1
    copies: int = 0
    impl: str = "auto"
    kind: str = "copies"
    train: bool = True
    normalised: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array | PerCopy) -> jax.Array | PerCopy:
        per_copy = isinstance(x, tuple)
        k, c = self.kernel_size, (x[0] if per_copy else x).shape[-1]
        lead = (self.copies,) if self.copies else ()
        batch_axis = (0,) if self.copies else ()
        kernel = self.param("kernel", nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform",
                                                                       batch_axis=batch_axis),
                            lead + (k, k, c, self.features), self.param_dtype)
        bias = self.param("bias", torch_bias_init(c * k * k), lead + (self.features,), self.param_dtype)
        if self.normalised and self.train:
            bias = jax.lax.stop_gradient(bias)
        pad = 0 if self.padding == "VALID" else int(self.padding)
        if per_copy:
            if len(x) != self.copies:
                raise ValueError(f"Conv with copies={self.copies}: got a per-copy tuple of {len(x)} arrays")
            dtype = nn.dtypes.canonicalize_dtype(*x, kernel, bias, dtype=self.dtype)
            return tuple(native_conv(xi.astype(dtype), ki.astype(dtype), pad) + bi.astype(dtype)
                         for xi, ki, bi in zip(x, unstack(kernel), unstack(bias)))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        impl = resolve_conv_impl(self.impl, self.kind, train=self.train)
        if self.copies:
            if x.ndim != 5 or x.shape[0] != self.copies:
                raise ValueError(f"Conv with copies={self.copies}: expected [copies, B, H, W, C], got {x.shape}")
            return COPIES_CONV[impl](x, kernel, pad) + bias[:, None, None, None, :]
        if impl == "matmul":
            return matmul_conv(x[None], kernel[None], pad)[0] + bias
        return native_conv(x, kernel, pad) + bias


class Dense(nn.Module):
    """Dense layer with PyTorch init; with ``copies`` > 0, that many independent layers on [copies, B, D]."""

    features: int
    copies: int = 0
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        lead = (self.copies,) if self.copies else ()
        kernel = self.param("kernel", nn.initializers.variance_scaling(
            1.0 / 3.0, "fan_in", "uniform", batch_axis=(0,) if self.copies else ()), lead + (d, self.features),
            self.param_dtype)
        bias = self.param("bias", torch_bias_init(d), lead + (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        if self.copies:
            return jnp.einsum("kbd,kdf->kbf", x, kernel) + bias[:, None, :]
        return x @ kernel + bias


def flatten_nchw(x: jax.Array) -> jax.Array:
    """[..., B, H, W, C] -> [..., B, C*H*W] in PyTorch's NCHW order (what a converted nn.Linear expects)."""
    return jnp.moveaxis(x, -1, -3).reshape(x.shape[:-3] + (-1,))


@jax.custom_vjp
def max_pool2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, floor mode, over the two axes before channels: [..., H, W, C] -> [..., H//2, W//2, C].

    Ties route the gradient to the first maximum in row-major window order, as PyTorch's max_pool2d does (a plain
    ``max`` would split it among tied elements, which differs on flat image regions). Elementwise selects, and a
    backward pass that writes the input gradient in one pass from the winner's index (autodiff of the select
    chain wrote one masked copy per window position and added them; reduce_window's select-and-scatter is far
    slower on XLA:CPU).
    """
    return _max_pool2_fwd(x)[0]


_WINDOW = ((0, 0), (0, 1), (1, 0), (1, 1))   # row-major positions in the 2x2 window


def _max_pool2_fwd(x):
    *lead, h, w, c = x.shape
    xr = x[..., : h // 2 * 2, : w // 2 * 2, :].reshape(*lead, h // 2, 2, w // 2, 2, c)
    y = xr[..., 0, :, 0, :]
    winner = jnp.zeros(y.shape, jnp.int8)
    for k, (i, j) in enumerate(_WINDOW[1:], start=1):
        v = xr[..., i, :, j, :]
        take = v > y
        y, winner = jnp.where(take, v, y), jnp.where(take, jnp.int8(k), winner)
    return y, (winner, x.shape)


def _max_pool2_bwd(residuals, dy):
    winner, shape = residuals
    *lead, h, w, c = shape
    zero = jnp.zeros((), dy.dtype)
    parts = [jnp.where(winner == k, dy, zero) for k in range(4)]          # [..., h/2, w/2, c] each
    rows = [jnp.stack(parts[2 * i:2 * i + 2], axis=-2) for i in range(2)]  # [..., h/2, w/2, 2, c]
    dx = jnp.stack(rows, axis=-4).reshape(*lead, h // 2 * 2, w // 2 * 2, c)
    return (jnp.pad(dx, [(0, 0)] * len(lead) + [(0, h % 2), (0, w % 2), (0, 0)]),)


max_pool2.defvjp(_max_pool2_fwd, _max_pool2_bwd)


def _pair_sums(a: jax.Array, b: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """(sum(a), sum(b)) over ``axes`` (removed) in one pass: a variadic reduce, in two stages (the last axis of
    ``axes``, then the rest). On XLA:CPU one variadic pass over a [8, 44, 44, 96] activation takes ~1/5 of the time
    of one plain ``jnp.sum`` (which goes through a slow reduce-window first stage), and the two stages keep the
    float32 summation chains short (error below ``jnp.sum``'s; measured in docs/performance.md)."""
    zero = jnp.zeros((), a.dtype)
    add = lambda p, q: (p[0] + q[0], p[1] + q[1])   # noqa: E731
    axes = tuple(sorted(axes))
    a, b = jax.lax.reduce((a, b), (zero, zero), add, axes[-1:])
    if len(axes) > 1:   # the remaining axes come before the reduced one: their numbers do not change
        a, b = jax.lax.reduce((a, b), (zero, zero), add, axes[:-1])
    return a, b


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, axes: tuple[int, ...],
                     epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training-mode batch norm over ``axes`` with the textbook backward pass: (y, mean, var).

    x [..., C]; scale, bias broadcastable to x (one value per normalised group); mean and var (biased) have x's
    shape with ``axes`` kept as 1. The statistics outputs are for the running averages only: their cotangents are
    ignored (wrap them in ``stop_gradient`` where they are used). Each direction makes one pass over x for its
    reductions (``_pair_sums``): forward sum(d) and sum(d^2) of d = x - K, K the mean of a slice of x (one row
    per image), so that var = E[d^2] - E[d]^2 does not cancel; backward sum(dy) and sum(dy * xhat). Autodiff of
    the mean/variance formula gave XLA four or five full passes in the backward pass.
    """
    return _batch_norm_fwd(x, scale, bias, axes, epsilon)[0]


def _batch_norm_fwd(x, scale, bias, axes, epsilon):
    keep = tuple(1 if ax in axes else n for ax, n in enumerate(x.shape))
    row = axes[1] if len(axes) > 1 else axes[0]     # the shift K: the mean over the first index of this axis
    shift = jnp.mean(jax.lax.slice_in_dim(x, 0, 1, axis=row), axes, keepdims=True)
    d = x - shift
    n = math.prod(x.shape[a] for a in axes)
    sd, sdd = (s.reshape(keep) / n for s in _pair_sums(d, d * d, axes))
    mean, var = shift + sd, sdd - jnp.square(sd)
    rstd = jax.lax.rsqrt(var + epsilon)
    y = (x - mean) * rstd * scale + bias
    return (y, mean, var), (x, mean, rstd, scale, bias)


def _batch_norm_bwd(axes, epsilon, residuals, cotangents):
    x, mean, rstd, scale, bias = residuals
    dy = cotangents[0]
    n = math.prod(x.shape[a] for a in axes)
    xhat = (x - mean) * rstd
    dbias, dscale = (s.reshape(mean.shape) for s in _pair_sums(dy, dy * xhat, axes))   # mean: axes kept as 1
    dx = (scale * rstd) * (dy - dbias / n - xhat * (dscale / n))
    # One value per normalised group, as scale and bias hold them ([C] or [copies, 1, .., 1, C]).
    return (dx.astype(x.dtype), dscale.reshape(scale.shape).astype(scale.dtype),
            dbias.reshape(bias.shape).astype(bias.dtype))


batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd)


class BatchNorm(nn.Module):
    """BatchNorm over all axes but the last (and the first with ``copies`` > 0), with PyTorch semantics.

    Training normalises with the biased batch variance and updates the running statistics as
    ``running = (1 - momentum) * running + momentum * batch`` with the UNBIASED batch variance
    (N / (N - 1)); ``momentum`` is PyTorch's (0.1). Running statistics are not updated during init.
    """

    train: bool = False
    momentum: float = 0.1
    epsilon: float = 1e-5
    copies: int = 0    # > 0: that many independent BatchNorms on [copies, ...] or a per-copy tuple (params [copies, C])
    dtype: Any = None  # output dtype (None: the input's); statistics are computed in at least float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array | PerCopy) -> jax.Array | PerCopy:
        per_copy = isinstance(x, tuple)
        shape = ((self.copies,) if self.copies else ()) + ((x[0] if per_copy else x).shape[-1],)
        scale = self.param("scale", nn.initializers.ones, shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, shape, self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros(shape, self.param_dtype))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones(shape, self.param_dtype))
        if per_copy:    # one BatchNorm per copy: [B, ..., C] each, statistics over all but the channel axis
            if len(x) != self.copies:
                raise ValueError(f"BatchNorm with copies={self.copies}: got a per-copy tuple of {len(x)} arrays")
            parts = [self._normalise(xi, *p) for xi, *p in zip(x, *map(unstack, (scale, bias, ra_mean.value,
                                                                                 ra_var.value)))]
            y = tuple(part[0] for part in parts)
            stats = (jnp.stack([part[1] for part in parts]), jnp.stack([part[2] for part in parts]), parts[0][3])
        else:
            if self.copies and (x.ndim < 2 or x.shape[0] != self.copies):
                raise ValueError(f"BatchNorm with copies={self.copies}: expected [copies, ..., C], got {x.shape}")
            expand = (slice(None),) + (None,) * (x.ndim - 2) + (slice(None),) if self.copies else (Ellipsis,)
            y, *stats = self._normalise(x, scale[expand], bias[expand], ra_mean.value[expand],
                                        ra_var.value[expand], first_axis=1 if self.copies else 0)
        if self.train and not self.is_initializing():
            mean, var, n = stats
            ra_mean.value = (1.0 - self.momentum) * ra_mean.value + self.momentum * mean.reshape(shape)
            ra_var.value = ((1.0 - self.momentum) * ra_var.value
                            + self.momentum * var.reshape(shape) * (n / max(n - 1, 1)))
        return y

    def _normalise(self, x: jax.Array, scale: jax.Array, bias: jax.Array, ra_mean: jax.Array, ra_var: jax.Array,
                   first_axis: int = 0) -> tuple[jax.Array, jax.Array, jax.Array, int]:
        """x [..., C] normalised over axes ``first_axis`` .. ndim-2 -> (y, batch mean, batch var, count); scale,
        bias and the running statistics broadcast against x. Statistics in at least float32."""
        out_dtype = self.dtype or x.dtype
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        axes = tuple(range(first_axis, x.ndim - 1))
        n = math.prod(x.shape[a] for a in axes)
        if self.train:
            y, mean, var = batch_norm_train(x, scale, bias, axes, self.epsilon)
            mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
        else:
            mean, var = ra_mean, ra_var
            y = (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(out_dtype), mean, var, n
