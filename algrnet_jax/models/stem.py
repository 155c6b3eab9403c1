"""The JAA-Net stem (docs/model.md §3.1-§3.2): hierarchical multi-scale region learning and the HLFeat block.

Per-cell (and, in heads, per-AU) layers hold their copies' weights stacked on a leading axis and run as
one batched computation (``layers.Conv(copies=k)``), with no Python loop and no vmap over cells.

Param trees (u = unit width; PyTorch names of the JAA-Net release in brackets):

RegionLearning  [region_learning.multiscale_feat]
  layer1 [.0], layer2 [.2]: RegionLayer
RegionLayer(c)
  conv  {kernel [3,3,c_in,c], bias [c]}                                 [.conv]
  branch1 / branch2 / branch3: CellBlock over an 8x8 / 4x4 / 2x2 grid (64 / 16 / 4 cells)  [.local_conv_branch{1,2,3}]
    bn   {scale, bias} [cells, c_k]; batch_stats {mean, var} [cells, c_k]   [.bns.<cell>]
    conv {kernel [cells, 3, 3, c_k, c_k'], bias [cells, c_k']}              [.convs.<cell>]
  bn    {scale, bias}, batch_stats {mean, var} [c]                       [.bn]
  cells are row-major (cell = i * grid + j, i the row), as the release's loops.
HLFeat  [feat_extract]
  conv1..conv6 {kernel, bias} [feat_extract.{0,3,7,10,14,17}], bn1..bn6 [feat_extract.{1,4,8,11,15,18}]
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from algrnet_jax.models.layers import (BatchNorm, Conv, PerCopy, each, max_pool2, per_copy_form, resolve_conv_impl,
                                      stacked)


class CellBlock(nn.Module):
    """BN -> ReLU -> conv3x3 (pad 1) on every cell, own weights per cell: [cells, B, h, w, c] -> [cells, B, h, w, features]
    (or per-copy tuples of ``cells`` arrays)."""

    features: int
    cells: int
    train: bool = False
    conv_impl: str = "auto"
    kind: str = "cells1"    # the layer kind conv_impl "auto" resolves for (layers.resolve_conv_impl)
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array | PerCopy) -> jax.Array | PerCopy:
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = each(nn.relu, BatchNorm(self.train, copies=self.cells, name="bn", **dt)(x))
        return Conv(self.features, copies=self.cells, impl=self.conv_impl, kind=self.kind, train=self.train,
                    name="conv", **dt)(x)


def _cell_size(hh: int, ww: int, grid: int) -> tuple[int, int]:
    if hh % grid or ww % grid:
        raise ValueError(f"region layer: feature map {hh}x{ww} is not divisible into a {grid}x{grid} grid; "
                         "use a crop size divisible by 16")
    return hh // grid, ww // grid


def to_cells(x: jax.Array, grid: int) -> jax.Array:
    """[B, H, W, c] -> [grid*grid, B, H/grid, W/grid, c], cells row-major (cell = i * grid + j)."""
    b, hh, ww, c = x.shape
    h, w = _cell_size(hh, ww, grid)
    return x.reshape(b, grid, h, grid, w, c).transpose(1, 3, 0, 2, 4, 5).reshape(grid * grid, b, h, w, c)


def from_cells(y: jax.Array, grid: int) -> jax.Array:
    """Inverse of ``to_cells``: [grid*grid, B, h, w, c] -> [B, grid*h, grid*w, c]."""
    _, b, h, w, c = y.shape
    return y.reshape(grid, grid, b, h, w, c).transpose(2, 0, 3, 1, 4, 5).reshape(b, grid * h, grid * w, c)


def to_cell_list(x: jax.Array, grid: int) -> PerCopy:
    """``to_cells`` as a per-copy tuple of grid*grid arrays [B, H/grid, W/grid, c] (row-major), by ``split``."""
    _cell_size(x.shape[1], x.shape[2], grid)
    return tuple(cell for row in jnp.split(x, grid, axis=1) for cell in jnp.split(row, grid, axis=2))


def from_cell_list(cells: PerCopy, grid: int) -> jax.Array:
    """Inverse of ``to_cell_list``: grid*grid arrays [B, h, w, c] -> [B, grid*h, grid*w, c]."""
    return jnp.concatenate([jnp.concatenate(cells[i * grid:(i + 1) * grid], axis=2) for i in range(grid)], axis=1)


def cell_convs(x: jax.Array, grid: int, features: int, train: bool, name: str, conv_impl: str = "auto",
               kind: str = "cells1", **dtypes: Any) -> jax.Array:
    """A grid x grid split of x [B, H, W, c], each cell its own BN -> ReLU -> conv3x3 (padding inside the cell).

    In inference programs where ``conv_impl`` resolves to "unrolled" for ``kind`` the cells are a per-copy tuple
    from end to end (sliced out of x and concatenated back), else stacked [grid*grid, B, h, w, c] (in training the
    per-copy cells were no faster, 4.26 vs 4.32 s per JAA-Net step, for 12 s more compile time: per-cell
    BatchNorms). ``dtypes``: dtype, param_dtype."""
    block = CellBlock(features, grid * grid, train, conv_impl, kind, name=name, **dtypes)
    if not train and resolve_conv_impl(conv_impl, kind, train=train) == "unrolled":
        return from_cell_list(block(to_cell_list(x, grid)), grid)
    return from_cells(block(to_cells(x, grid)), grid)


class RegionLayer(nn.Module):
    """Hierarchical multi-scale region layer: [B, H, W, c_in] -> [B, H, W, features].

    x = conv3x3(in); b1 = cells8x8(x) (c/2), b2 = cells4x4(b1) (c/4), b3 = cells2x2(b2) (c/4);
    out = ReLU(BN(x + concat(b1, b2, b3))).
    """

    features: int
    train: bool = False
    conv_impl: str = "auto"
    cell_kind: str = "cells1"   # "cells1" | "cells2": which region layer, for conv_impl "auto"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.features
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = Conv(c, train=self.train, normalised=True, name="conv", **dt)(x)   # every path to the loss: a BatchNorm
        kw = dict(conv_impl=self.conv_impl, kind=self.cell_kind, **dt)
        b1 = cell_convs(x, 8, c // 2, self.train, "branch1", **kw)
        b2 = cell_convs(b1, 4, c // 4, self.train, "branch2", **kw)
        b3 = cell_convs(b2, 2, c // 4, self.train, "branch3", **kw)
        out = x + jnp.concatenate([b1, b2, b3], axis=-1)
        return nn.relu(BatchNorm(self.train, name="bn", **dt)(out))


class RegionLearning(nn.Module):
    """Region learning: RegionLayer(4u), maxpool, RegionLayer(8u), maxpool: [B, C, C, 3] -> [B, C/4, C/4, 8u]."""

    unit: int = 8
    train: bool = False
    conv_impl: str = "auto"
    cell_kinds: tuple[str, str] = ("cells1", "cells2")   # the kinds conv_impl "auto" resolves for, per layer
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(conv_impl=self.conv_impl, dtype=self.dtype, param_dtype=self.param_dtype)
        kind1, kind2 = self.cell_kinds
        x = max_pool2(RegionLayer(4 * self.unit, self.train, cell_kind=kind1, name="layer1", **kw)(x))
        return max_pool2(RegionLayer(8 * self.unit, self.train, cell_kind=kind2, name="layer2", **kw)(x))


class HLFeat(nn.Module):
    """High-level feature block: ([conv3x3 BN ReLU] x2 -> maxpool) x3, widths 12u, 16u, 20u.

    [B, 44, 44, 8u] -> [B, 5, 5, 20u] at paper size. The same module serves alignment, global and
    per-AU local features (``copies`` = n: n independent blocks on [n, B, H, W, C] or a per-copy tuple of n
    [B, H, W, C], params [n, ...]; the copies run as a per-copy tuple where ``conv_impl`` resolves to "unrolled").
    """

    unit: int = 8
    train: bool = False
    copies: int = 0
    conv_impl: str = "auto"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array | PerCopy) -> jax.Array:
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = per_copy_form(x, self.copies, self.conv_impl, self.train)
        k = 0
        for width in (12 * self.unit, 16 * self.unit, 20 * self.unit):
            for _ in range(2):
                k += 1
                x = Conv(width, copies=self.copies, impl=self.conv_impl, train=self.train, normalised=True,
                         name=f"conv{k}", **dt)(x)
                x = each(nn.relu, BatchNorm(self.train, copies=self.copies, name=f"bn{k}", **dt)(x))
            x = each(max_pool2, x)
        return stacked(x)
