"""Attention maps: the vectorised function equals the reference's per-sample loop exactly, and is differentiable."""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algrnet_jax import au_sets
from algrnet_jax.models import regions

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "jaanet_parity_bp4d" / "expected.npz"
BP4D = au_sets.AU_SETS["bp4d"]


def reference_map(crop_size, map_size, spatial_ratio, fill_coeff, c1x, c1y, c2x, c2y):
    """The JAA-Net release's ``generate_map`` (per sample, per AU, on the host)."""
    amap = np.zeros((map_size, map_size), np.float32)
    spatial_scale = float(map_size) / crop_size
    half_w = round((map_size - 1) / 2.0 * spatial_ratio)
    for cx, cy in ((c1x, c1y), (c2x, c2y)):
        au_cx, au_cy = round(cx * spatial_scale), round(cy * spatial_scale)
        start_w, start_h = round(au_cx - half_w), round(au_cy - half_w)
        end_w, end_h = round(au_cx + half_w), round(au_cy + half_w)
        start_h = min(max(start_h, 0), map_size - 1)
        start_w = min(max(start_w, 0), map_size - 1)
        end_h = min(max(end_h, 0), map_size - 1)
        end_w = min(max(end_w, 0), map_size - 1)
        for h in range(int(start_h), int(end_h) + 1):
            for w in range(int(start_w), int(end_w) + 1):
                amap[h, w] = max(1 - (abs(h - au_cy) + abs(w - au_cx)) * fill_coeff / (map_size * spatial_ratio),
                                 amap[h, w])
    return amap


def reference_bp4d_maps(land98: np.ndarray, crop_size=176, map_size=52, e=0.14) -> np.ndarray:
    """The release's BP4D AU-centre code (landmarks x1 y1 x2 y2 ..., float32) -> [12, M, M]."""
    arr = np.append(land98[0::2], land98[1::2]).reshape(2, 49)
    ruler = abs(arr[0, 22] - arr[0, 25])
    x, y = arr[0], arr[1]
    g = lambda i, j, dy=0: reference_map(crop_size, map_size, e, 0.56, x[i], y[i] + dy, x[j], y[j] + dy)
    return np.stack([g(4, 5, -ruler / 2), g(1, 8, -ruler / 3), g(2, 7, ruler / 3), g(24, 29, ruler), g(21, 26),
                     g(43, 45), g(31, 37), g(31, 37), g(31, 37), g(39, 41, ruler / 2), g(34, 40), g(34, 40)])


def random_faces(rng, batch, crop=176):
    """Mean-shape faces, randomly scaled, shifted (partly out of the crop) and jittered: [B, 98] float32."""
    ref = np.load(FIXTURE)["eval_landmarks"][0].astype(np.float64).reshape(49, 2)
    centre = ref.mean(0)
    out = []
    for _ in range(batch):
        s = rng.uniform(0.6, 1.5)
        p = (ref - centre) * s + centre + rng.uniform(-60, 60, 2) + rng.normal(0, 2, (49, 2))
        out.append(p.reshape(-1))
    return np.asarray(out, np.float32) * crop / 176


def test_au_centres_follow_the_rules():
    rng = np.random.default_rng(1)
    land = random_faces(rng, 3).reshape(3, 49, 2)
    c = np.asarray(regions.au_centres(jnp.asarray(land), (1, 6, 23, 9)))
    ruler = np.abs(land[:, 22, 0] - land[:, 25, 0])                      # float32, as the release
    np.testing.assert_array_equal(c[:, 0, 0], np.stack([land[:, 4, 0], land[:, 4, 1] - ruler / 2], -1))
    np.testing.assert_array_equal(c[:, 1, 1], np.stack([land[:, 29, 0], land[:, 29, 1] + ruler], -1))
    np.testing.assert_array_equal(c[:, 2, 1], land[:, 40])
    np.testing.assert_array_equal(c[:, 3, 1], np.stack([land[:, 17, 0], land[:, 17, 1] - ruler / 2], -1))


def test_maps_equal_reference_on_fixture():
    ref = np.load(FIXTURE)
    land = ref["eval_landmarks"]
    fn = jax.jit(lambda l: regions.attention_maps(regions.au_centres(l, BP4D), 0.14, 52, 176))
    maps = fn(jnp.asarray(land.reshape(-1, 49, 2)))
    np.testing.assert_array_equal(np.asarray(maps), ref["eval_initial_au_maps"])
    np.testing.assert_array_equal(np.stack([reference_bp4d_maps(x) for x in land]), ref["eval_initial_au_maps"])


@pytest.mark.parametrize("crop", [176, 64])
def test_maps_equal_reference_loop_on_random_faces(crop):
    rng = np.random.default_rng(crop)
    land = random_faces(rng, 6, crop)
    m = crop // 4 + 8
    fn = jax.jit(lambda l: regions.attention_maps(regions.au_centres(l.reshape(-1, 49, 2), BP4D), 0.14, m, crop))
    got = np.asarray(fn(jnp.asarray(land)))
    want = np.stack([reference_bp4d_maps(x, crop, m) for x in land])
    assert (want > 0).any(axis=(2, 3)).mean() > 0.5
    assert (want[..., 0, :] > 0).any() or (want[..., :, 0] > 0).any() or (want[..., -1, :] > 0).any()
    np.testing.assert_array_equal(got, want)


def test_maps_with_learned_scales_and_rounding_ties():
    # Traced (per-region) scales: same maps as the loop up to float32 rounding of the values.
    rng = np.random.default_rng(3)
    centres = rng.uniform(-20, 196, (4, 5, 2, 2)).astype(np.float32)
    centres[0, 0, 0] = [88.0, 44.0 / (52 / 176)]   # c * s lands on .5 / integer ties
    scales = rng.uniform(0.08, 0.3, (4, 5)).astype(np.float32)
    got = np.asarray(jax.jit(regions.attention_maps, static_argnums=(2, 3))(centres, scales, 52, 176))
    for b in range(4):
        for r in range(5):
            (x1, y1), (x2, y2) = centres[b, r]
            want = reference_map(176, 52, float(scales[b, r]), 0.56, x1, y1, x2, y2)
            np.testing.assert_allclose(got[b, r], want, atol=1e-6)
    assert (got > 0).sum() > 50


def test_maps_are_differentiable_in_centres_and_scales():
    rng = np.random.default_rng(4)
    centres = jnp.asarray(rng.uniform(40, 130, (2, 3, 2, 2)), jnp.float32)
    scales = jnp.full((2, 3), 0.14)
    target = jax.random.uniform(jax.random.PRNGKey(0), (2, 3, 52, 52))
    loss = lambda c, e: jnp.sum(regions.attention_maps(c, e, 52, 176) * target)
    gc, ge = jax.jit(jax.grad(loss, argnums=(0, 1)))(centres, scales)
    assert np.all(np.abs(np.asarray(ge)) > 0)
    assert np.all(np.abs(np.asarray(gc)).sum(axis=-1) > 0)  # every centre moves the map in x or y
    # The static-scale path is exact and still passes gradients to the centres.
    gs = jax.jit(jax.grad(lambda c: jnp.sum(regions.attention_maps(c, 0.14, 52, 176) * target)))(centres)
    np.testing.assert_allclose(gs, gc, rtol=1e-5, atol=1e-7)


def test_round_ste_is_half_to_even_with_identity_gradient():
    x = jnp.array([0.5, 1.5, 2.5, -0.5, 2.4999])
    np.testing.assert_array_equal(regions.round_ste(x), [0.0, 2.0, 2.0, -0.0, 2.0])
    np.testing.assert_array_equal(jax.grad(lambda v: regions.round_ste(v).sum())(x), np.ones(5))


def test_paralysis_centres():
    land = jnp.asarray(random_faces(np.random.default_rng(5), 2).reshape(2, 49, 2))
    c = np.asarray(regions.paralysis_centres(land))
    assert c.shape == (2, 12, 2, 2)
    np.testing.assert_array_equal(c[:, :, 0], c[:, :, 1])
    names = [r.name for r in regions.PARALYSIS_REGIONS]
    assert len(set(names)) == 12
    l = np.asarray(land)
    np.testing.assert_allclose(c[:, names.index("mouth_left"), 0], l[:, 31], rtol=1e-6)
    np.testing.assert_allclose(c[:, names.index("eye_right"), 0], l[:, 25:31].mean(1), rtol=1e-5)
    # left regions lie left of their right partners; brows above eyes above cheeks; chin lowest
    x, y = c[..., 0, 0], c[..., 0, 1]
    for k in range(0, 12, 2):
        assert np.all(x[:, k] < x[:, k + 1]), names[k]
    for upper, lower in (("brow_left", "eye_left"), ("eye_left", "cheek_left"), ("mouth_left", "chin_left")):
        assert np.all(y[:, names.index(upper)] < y[:, names.index(lower)])


@pytest.mark.parametrize("crop, scales", [(64, 0.14), (176, 0.14), (176, "learned")])
def test_region_support_covers_exactly_the_cells_the_map_touches(crop, scales):
    rng = np.random.default_rng(3)
    m, g = crop // 4 + 8, crop // 4
    centres = jnp.asarray(rng.uniform(-10, crop + 10, (4, 5, 2, 2)), jnp.float32)
    e = jnp.asarray(rng.uniform(0.08, 0.3, (4, 5)), jnp.float32) if scales == "learned" else scales
    maps = np.asarray(regions.attention_maps(centres, e, m, crop))
    support = np.asarray(regions.region_support(centres, e, m, crop, g))
    assert set(np.unique(support)) <= {0.0, 1.0}
    # Map cell k spans crop pixels ((k - 1/2) C/M, (k + 1/2) C/M): sample 5 x 5 points inside every cell of the
    # square (clipped to the map as the reference clips it) and mark the feature cells they fall in.
    s = m / crop
    for b in range(4):
        for r in range(5):
            expect = np.zeros((g, g), bool)
            half = round((m - 1) / 2 * float(np.broadcast_to(np.asarray(e), (4, 5))[b, r]))
            for cx, cy in np.asarray(centres[b, r]):
                y0, y1 = (min(max(round(cy * s) + d, 0), m - 1) for d in (-half, half))
                x0, x1 = (min(max(round(cx * s) + d, 0), m - 1) for d in (-half, half))
                for py in np.linspace(y0 - 0.499, y1 + 0.499, 5 * (y1 - y0 + 1)) / s:
                    for px in np.linspace(x0 - 0.499, x1 + 0.499, 5 * (x1 - x0 + 1)) / s:
                        i, j = int(np.floor(py / (crop / g))), int(np.floor(px / (crop / g)))
                        if 0 <= i < g and 0 <= j < g:
                            expect[i, j] = True
            np.testing.assert_array_equal(support[b, r] > 0, expect)
            assert (maps[b, r] > 0).sum() == 0 or support[b, r].sum() > 0


@pytest.mark.parametrize("crop,margin,expected", [(64, 8, 2 * 64 / 24), (176, 8, 4 * 176 / 52)])
def test_half_width_pixels_is_the_fixed_regions_half_width(crop, margin, expected):
    """``half_width_pixels``: the square of a fixed-scale map is 2 * half + 1 cells of C / M pixels."""
    m = crop // 4 + margin
    assert regions.half_width_pixels(0.14, m, crop) == pytest.approx(expected)
    maps = regions.attention_maps(jnp.full((1, 1, 2, 2), crop / 2.0), 0.14, m, crop)
    cells = int((np.asarray(maps[0, 0]) > 0).any(0).sum())
    assert cells == 2 * round(expected * m / crop) + 1
