"""Small layers with PyTorch numerics: BatchNorm, conv/dense with PyTorch's default init, NCHW flatten.

Everything is NHWC with HWIO kernels. Parameter names: conv/dense ``kernel`` and ``bias``; BatchNorm params
``scale``/``bias`` and batch_stats ``mean``/``var`` (PyTorch ``weight``/``bias``/``running_mean``/``running_var``).
"""
from __future__ import annotations

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
    """A square conv (stride 1) initialised like torch.nn.Conv2d; ``padding`` as in PyTorch or "VALID"."""
    return nn.Conv(features, (kernel, kernel), padding=padding, kernel_init=TORCH_KERNEL_INIT,
                   bias_init=torch_bias_init(in_features * kernel * kernel), name=name)


def dense(features: int, in_features: int, name: str | None = None) -> nn.Dense:
    """A dense layer initialised like torch.nn.Linear (kernel = weight.T)."""
    return nn.Dense(features, kernel_init=TORCH_KERNEL_INIT, bias_init=torch_bias_init(in_features), name=name)


def flatten_nchw(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, C*H*W] in PyTorch's NCHW order (what a converted nn.Linear expects)."""
    return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)


def max_pool2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, floor mode: [B, H, W, C] -> [B, H//2, W//2, C]."""
    return nn.max_pool(x, (2, 2), strides=(2, 2))


class BatchNorm(nn.Module):
    """BatchNorm over all axes but the last, with PyTorch semantics.

    Training normalises with the biased batch variance and updates the running statistics as
    ``running = (1 - momentum) * running + momentum * batch`` with the UNBIASED batch variance
    (N / (N - 1)); ``momentum`` is PyTorch's (0.1). Running statistics are not updated during init.
    """

    train: bool = False
    momentum: float = 0.1
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        if self.train:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axes)
            var = jnp.mean(jnp.square(x - mean), axes)
            if not self.is_initializing():
                n = math.prod(x.shape[:-1])
                ra_mean.value = (1.0 - self.momentum) * ra_mean.value + self.momentum * mean
                ra_var.value = ((1.0 - self.momentum) * ra_var.value
                                + self.momentum * var * (n / max(n - 1, 1)))
        else:
            mean, var = ra_mean.value, ra_var.value
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
