"""Region centres from landmarks and the JAA-Net attention maps (docs/model.md §3.4), vectorised.

``au_centres`` turns 49 landmarks into two centres per AU (``au_sets.AU_CENTRE_RULES``);
``paralysis_centres`` into the 12 muscle-region centres of the paralysis model (``PARALYSIS_REGIONS``);
``attention_maps`` renders the maps for a whole batch in one jit-able, differentiable function.

The map of one region with centres p1, p2 (crop pixels), scale e, map size M, crop size C:
  s = M / C, c = round(p * s) (half to even), half = round((M - 1) / 2 * e),
  value(h, w) = max(1 - (|h - c_y| + |w - c_x|) * 0.56 / (M * e), 0) for h in [clip(c_y - half), clip(c_y + half)]
  and w likewise (clip to [0, M - 1], exactly as the reference's loop bounds), 0 elsewhere; max over both centres.
Rounding is straight-through (``round_ste``): values are exact, gradients flow to centres and scales.
Precision: maps and centres are computed in the input's dtype promoted to at least float32 (bfloat16
landmarks -> float32 maps, bit-exact with the reference; float64 under ``jax_enable_x64`` -> float64, as the
reference run in float64).
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from algrnet_jax import au_sets

FILL_COEFF = 0.56


@jax.custom_jvp
def round_ste(x: jax.Array) -> jax.Array:
    """Round half to even with an identity gradient (straight-through estimator)."""
    return jnp.round(x)


@round_ste.defjvp
def _round_ste_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return jnp.round(x), dx


def _dtype(*xs: jax.Array | float) -> jnp.dtype:
    """The arithmetic dtype of region geometry: the inputs' float dtype, at least float32."""
    return jnp.promote_types(jnp.result_type(*xs), jnp.float32)


def _ruler(landmarks: jax.Array) -> jax.Array:
    """|x[22] - x[25]| (inner eye corners) of landmarks [B, 49, 2] -> [B]."""
    i, j = au_sets.RULER_INDICES
    return jnp.abs(landmarks[:, i, 0] - landmarks[:, j, 0])


def _ruler_shift(landmarks: jax.Array, dy_ruler: np.ndarray) -> jax.Array:
    """ruler * dy for every region, [B, n], computed as ``ruler / k`` (k = 1 / dy rounded: 2, 3, 1, ...)
    exactly as the reference writes ``y - ruler / 2`` (ruler * float32(1/3) can differ from ruler / 3)."""
    with np.errstate(divide="ignore"):
        k = np.round(1.0 / np.asarray(dy_ruler, np.float64), 6).astype(np.float32)  # inf where dy = 0
    return _ruler(landmarks)[:, None] / jnp.asarray(k)[None]


def au_centres(landmarks: jax.Array, aus: Sequence[int]) -> jax.Array:
    """Two centres per AU from 49 landmarks.

    Args:
      landmarks: [B, 49, 2] (x, y) crop pixels.
      aus: AU numbers (order of the output).
    Returns:
      [B, n, 2 centres, 2 (x, y)].
    """
    idx, dy = au_sets.centre_rule_arrays(tuple(aus))
    pts = landmarks[:, idx, :].astype(_dtype(landmarks))        # [B, n, 2, 2]
    return pts.at[..., 1].add(_ruler_shift(landmarks, dy)[:, :, None])


# The 12 muscle regions of the paralysis model (data: au_sets.PARALYSIS_REGIONS).
MuscleRegion = au_sets.MuscleRegion
PARALYSIS_REGIONS = au_sets.PARALYSIS_REGIONS


def paralysis_rule_arrays(dtype: np.dtype | type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Returns (mean weights [12, 49], dy_ruler [12]) of ``PARALYSIS_REGIONS`` in ``dtype``."""
    weights = np.zeros((len(PARALYSIS_REGIONS), au_sets.NUM_LANDMARKS), dtype)
    for r, region in enumerate(PARALYSIS_REGIONS):
        weights[r, list(region.indices)] = 1.0 / len(region.indices)
    dy = np.array([region.dy_ruler for region in PARALYSIS_REGIONS], dtype)
    return weights, dy


def paralysis_centres(landmarks: jax.Array) -> jax.Array:
    """The 12 muscle-region centres, each used as both centres of its map: [B, 49, 2] -> [B, 12, 2, 2]."""
    dtype = _dtype(landmarks)
    weights, dy = paralysis_rule_arrays(dtype)
    pts = jnp.einsum("rl,blc->brc", jnp.asarray(weights), landmarks.astype(dtype))  # [B, 12, 2]
    pts = pts.at[..., 1].add(_ruler_shift(landmarks, dy))
    return jnp.stack([pts, pts], axis=2)


def half_width_pixels(scale: float, map_size: int, crop_size: int) -> float:
    """Half-width of a region of fixed scale ``scale`` in crop pixels: ``round((M - 1) / 2 * e)`` map cells of
    C / M pixels each (:func:`attention_maps`); 5.33 at crop 64 (M = 24), 13.5 at crop 176 (M = 52), e = 0.14."""
    return float(round((map_size - 1) / 2.0 * scale)) * crop_size / map_size


def attention_maps(centres: jax.Array, scales: jax.Array | float, map_size: int, crop_size: int) -> jax.Array:
    """JAA-Net attention maps for every region of a batch.

    Args:
      centres: [B, n, 2, 2] two (x, y) centres per region, crop pixels.
      scales: [B, n] region scales e (traced, learned), or one Python float (0.14 in JAA-Net). With a
        Python float, half-widths and map values are computed in float64 exactly as the reference does
        (then stored in the map dtype), so maps equal the reference bit for bit.
      map_size: M (crop/4 + 8 = 52 in the paper).
      crop_size: C (176 in the paper).
    Returns:
      [B, n, M, M] maps in the dtype of centres and scales promoted to at least float32 (float32, or
      float64 under ``jax_enable_x64``), differentiable in centres and (traced) scales.
    """
    static = isinstance(scales, (int, float))
    dtype = _dtype(centres) if static else _dtype(centres, scales)
    centres = jnp.asarray(centres, dtype)
    if static:
        half = float(round((map_size - 1) / 2.0 * scales))
        e = jnp.asarray(scales, dtype)
    else:
        e = jnp.broadcast_to(jnp.asarray(scales, dtype), centres.shape[:2])[:, :, None, None, None]
        half = round_ste((map_size - 1) / 2.0 * e)               # [B, n, 1, 1, 1]
    c = round_ste(centres * np.asarray(map_size / crop_size, dtype))  # [B, n, 2, 2]
    cx = c[..., 0][..., None, None]                               # [B, n, 2, 1, 1]
    cy = c[..., 1][..., None, None]
    grid = jnp.arange(map_size, dtype=dtype)
    h, w = grid[:, None], grid[None, :]
    hi = map_size - 1.0
    inside = ((h >= jnp.clip(cy - half, 0.0, hi)) & (h <= jnp.clip(cy + half, 0.0, hi))
              & (w >= jnp.clip(cx - half, 0.0, hi)) & (w <= jnp.clip(cx + half, 0.0, hi)))
    dist = jnp.abs(h - cy) + jnp.abs(w - cx)                      # integer valued
    value = 1.0 - dist * FILL_COEFF / (map_size * e)
    if static:  # exact float64 values from a table, gradients of the float32 formula
        table = (1.0 - np.arange(2 * map_size + 1) * FILL_COEFF / (map_size * float(scales))).astype(dtype)
        exact = jnp.asarray(table)[jnp.clip(dist, 0, 2 * map_size).astype(jnp.int32)]
        value = exact + (value - jax.lax.stop_gradient(value))
    value = jnp.where(inside, jnp.maximum(value, 0.0), 0.0)      # [B, n, 2, M, M]
    return jnp.max(value, axis=2)


def region_support(centres: jax.Array, scales: jax.Array | float, map_size: int, crop_size: int,
                   grid_size: int) -> jax.Array:
    """Where each region's attention map is non-zero, on the feature grid: 1 on the cells that overlap it, else 0.

    The map of :func:`attention_maps` lives on the square of map cells [c - half, c + half] (clipped to
    [0, M - 1] as the reference does) around each rounded centre c = round(p * M / C), ``half = round((M - 1)
    / 2 * e)``; map cell k spans crop pixels ((k - 1/2) * C / M, (k + 1/2) * C / M). Feature cell i of a
    ``grid_size`` grid covers crop pixels [i * C / G, (i + 1) * C / G); it is in the support when it overlaps
    that square for either centre.
    No gradient (a hard mask).

    Args:
      centres: [B, n, 2, 2] (x, y) crop pixels, as for :func:`attention_maps`.
      scales: [B, n] or one Python float.
      map_size: M; crop_size: C; grid_size: G (the region features' size, C / 4).
    Returns:
      [B, n, G, G] float32 in {0, 1}.
    """
    s = map_size / crop_size
    c = jnp.round(jax.lax.stop_gradient(jnp.asarray(centres, jnp.float32)) * s)          # [B, n, 2, 2] map cells
    e = jax.lax.stop_gradient(jnp.broadcast_to(jnp.asarray(scales, jnp.float32), centres.shape[:2]))
    half = jnp.round((map_size - 1) / 2.0 * e)[:, :, None, None, None]                  # map cells
    first = jnp.clip(c[..., None] - half, 0, map_size - 1)                             # [B, n, 2, 2, 1]
    last = jnp.clip(c[..., None] + half, 0, map_size - 1)
    lo_px, hi_px = (first - 0.5) / s, (last + 0.5) / s
    cell = crop_size / grid_size
    lo = jnp.arange(grid_size, dtype=jnp.float32) * cell                                 # cell i: [lo, lo + cell)
    near = (lo + cell > lo_px) & (lo < hi_px)                                            # [B, n, 2, 2 (x, y), G]
    support = near[..., 1, :, None] & near[..., 0, None, :]                              # [B, n, 2, G, G]
    return jnp.any(support, axis=2).astype(jnp.float32)


# Region scheme (``tasks.Task.region_scheme``) -> (landmarks [B, 49, 2], AUs) -> centres [B, n, 2, 2].
CENTRE_SCHEMES: dict[str, Callable[[jax.Array, Sequence[int]], jax.Array]] = {
    "au": au_centres,
    "muscle": lambda landmarks, aus: paralysis_centres(landmarks),
}
