"""Small layers with PyTorch numerics: BatchNorm, conv/dense with PyTorch's default init, NCHW flatten.

Everything is NHWC with HWIO kernels. Parameter names: conv/dense ``kernel`` and ``bias``; BatchNorm params
``scale``/``bias`` and batch_stats ``mean``/``var`` (PyTorch ``weight``/``bias``/``running_mean``/``running_var``).
"""
from __future__ import annotations

import functools
import math

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


def conv(features: int, in_features: int, kernel: int = 3, padding: int | str = 1,
         name: str | None = None) -> nn.Conv:
    """A square conv (stride 1) initialised like torch.nn.Conv2d; ``padding`` as in PyTorch or "VALID".

    XLA's native convolution. Inside ``scan``/``vmap`` prefer ``Conv(features, kernel, padding, matmul=True)``
    (same params and values): XLA:CPU's native convolution has a very slow filter gradient there (a ConvLSTM
    scan, n = 12, batch 2, 44x44x128 -> 256: 44 s -> 2 s per backward).
    """
    return nn.Conv(features, (kernel, kernel), padding=padding, kernel_init=TORCH_KERNEL_INIT,
                   bias_init=torch_bias_init(in_features * kernel * kernel), name=name)


def dense(features: int, in_features: int, name: str | None = None) -> nn.Dense:
    """A dense layer initialised like torch.nn.Linear (kernel = weight.T)."""
    return nn.Dense(features, kernel_init=TORCH_KERNEL_INIT, bias_init=torch_bias_init(in_features), name=name)


@functools.partial(jax.checkpoint, static_argnums=(2,))
def stacked_conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """k independent convs at once: x [k, B, H, W, c], kernel [k, kh, kw, c, f] -> [k, B, H', W', f].

    Written as patches (kh*kw shifted slices) times a batched matmul: XLA:CPU runs the grouped convolution that
    ``vmap(conv)`` produces, and a conv inside a scan, with a very slow filter gradient; batched matmuls are fast
    in both directions. Rematerialised: the backward pass rebuilds the patches from x instead of keeping them
    (inside the ConvLSTM scan they would be saved per step: ALGRNet paper-size step 9.11 -> 7.69 GiB).
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


class Conv(nn.Module):
    """Square conv, stride 1, PyTorch init; with ``copies`` > 0, that many independent convs (params [copies, ...]).

    Without copies it is XLA's native convolution (fastest outside loops) unless ``matmul``.

    x [B, H, W, c] (or [copies, B, H, W, c]) -> [B, H', W', features] (or [copies, ...]); ``padding`` an int
    (PyTorch's) or "VALID". Params: kernel [(copies,) k, k, c, features] HWIO, bias [(copies,) features].
    """

    features: int
    kernel_size: int = 3
    padding: int | str = 1
    copies: int = 0
    matmul: bool = False   # patches x matmul even without copies (for convs inside scan / vmap)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, c = self.kernel_size, x.shape[-1]
        lead = (self.copies,) if self.copies else ()
        batch_axis = (0,) if self.copies else ()
        kernel = self.param("kernel", nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform",
                                                                       batch_axis=batch_axis),
                            lead + (k, k, c, self.features), jnp.float32)
        bias = self.param("bias", torch_bias_init(c * k * k), lead + (self.features,), jnp.float32)
        pad = 0 if self.padding == "VALID" else int(self.padding)
        if self.copies:
            if x.ndim != 5 or x.shape[0] != self.copies:
                raise ValueError(f"Conv with copies={self.copies}: expected [copies, B, H, W, C], got {x.shape}")
            return stacked_conv(x, kernel, pad) + bias[:, None, None, None, :]
        if self.matmul:
            return stacked_conv(x[None], kernel[None], pad)[0] + bias
        y = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((pad, pad), (pad, pad)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias


class Dense(nn.Module):
    """Dense layer with PyTorch init; with ``copies`` > 0, that many independent layers on [copies, B, D]."""

    features: int
    copies: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        lead = (self.copies,) if self.copies else ()
        kernel = self.param("kernel", nn.initializers.variance_scaling(
            1.0 / 3.0, "fan_in", "uniform", batch_axis=(0,) if self.copies else ()), lead + (d, self.features),
            jnp.float32)
        bias = self.param("bias", torch_bias_init(d), lead + (self.features,), jnp.float32)
        if self.copies:
            return jnp.einsum("kbd,kdf->kbf", x, kernel) + bias[:, None, :]
        return x @ kernel + bias


def flatten_nchw(x: jax.Array) -> jax.Array:
    """[..., B, H, W, C] -> [..., B, C*H*W] in PyTorch's NCHW order (what a converted nn.Linear expects)."""
    return jnp.moveaxis(x, -1, -3).reshape(x.shape[:-3] + (-1,))


def max_pool2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, floor mode, over the two axes before channels: [..., H, W, C] -> [..., H//2, W//2, C].

    Ties route the gradient to the first maximum in row-major window order, as PyTorch's max_pool2d does (a plain
    ``max`` would split it among tied elements, which differs on flat image regions). Elementwise selects: also far
    cheaper to differentiate on XLA:CPU than reduce_window's select-and-scatter.
    """
    *lead, h, w, c = x.shape
    x = x[..., : h // 2 * 2, : w // 2 * 2, :].reshape(*lead, h // 2, 2, w // 2, 2, c)
    y = x[..., 0, :, 0, :]
    for i, j in ((0, 1), (1, 0), (1, 1)):
        v = x[..., i, :, j, :]
        y = jnp.where(v > y, v, y)
    return y


class BatchNorm(nn.Module):
    """BatchNorm over all axes but the last (and the first with ``copies`` > 0), with PyTorch semantics.

    Training normalises with the biased batch variance and updates the running statistics as
    ``running = (1 - momentum) * running + momentum * batch`` with the UNBIASED batch variance
    (N / (N - 1)); ``momentum`` is PyTorch's (0.1). Running statistics are not updated during init.
    """

    train: bool = False
    momentum: float = 0.1
    epsilon: float = 1e-5
    copies: int = 0    # > 0: that many independent BatchNorms on [copies, ...] (params [copies, C])

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = ((self.copies,) if self.copies else ()) + (x.shape[-1],)
        scale = self.param("scale", nn.initializers.ones, shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, shape, jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros(shape, jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones(shape, jnp.float32))
        axes = tuple(range(1 if self.copies else 0, x.ndim - 1))
        if self.copies and (x.ndim < 2 or x.shape[0] != self.copies):
            raise ValueError(f"BatchNorm with copies={self.copies}: expected [copies, ..., C], got {x.shape}")
        expand = (slice(None),) + (None,) * (x.ndim - 2) + (slice(None),) if self.copies else (Ellipsis,)
        if self.train:
            mean = jnp.mean(x, axes, keepdims=True)
            var = jnp.mean(jnp.square(x - mean), axes, keepdims=True)
            if not self.is_initializing():
                n = math.prod(x.shape[a] for a in axes)
                mean_s, var_s = mean.reshape(shape), var.reshape(shape)
                ra_mean.value = (1.0 - self.momentum) * ra_mean.value + self.momentum * mean_s
                ra_var.value = ((1.0 - self.momentum) * ra_var.value
                                + self.momentum * var_s * (n / max(n - 1, 1)))
        else:
            mean, var = ra_mean.value[expand], ra_var.value[expand]
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale[expand] + bias[expand]
