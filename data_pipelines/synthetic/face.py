"""Procedural aligned faces: identity, AU-driven 49-point geometry, OpenCV rendering, AU regions.

Coordinates are aligned-crop pixels ``(x, y)`` of a 200x200 crop (scaled for other sizes). The base
geometry is the mean of the reference aligned landmarks (``tests/fixtures/jaanet_samples/
aligned_land_49.txt``), so landmark ``i`` sits where real aligned point ``i`` does: brows 0-9
(image-left brow 0-4), nose 10-18, eyes 19-30 (image-left eye 19-24), mouth 31-48 (outer 31-42,
inner 43-48). Every AU moves only the points of its muscle region and draws only there.
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from algrnet_jax import au_sets
from data_pipelines.alignment import interocular

BASE_SIZE = 200
# Mean of the two reference aligned landmark rows (aligned_land_49.txt), [49, 2] (x, y).
TEMPLATE = np.array([
    38.8, 46.4, 49.3, 40.2, 60.9, 39.1, 72.4, 41.8, 83.4, 46.1, 114.6, 44.7, 125.0, 40.3, 136.0, 37.5,
    147.9, 37.4, 157.5, 44.3, 100.4, 62.2, 101.0, 76.2, 101.6, 90.0, 101.9, 104.2, 84.6, 110.2, 92.6, 111.7,
    100.9, 112.8, 108.2, 111.7, 115.5, 110.4, 52.8, 64.7, 62.0, 59.4, 72.0, 60.0, 79.2, 67.8, 70.3, 69.7,
    61.1, 69.6, 120.2, 67.1, 127.8, 60.1, 137.2, 59.6, 145.6, 64.9, 137.4, 69.7, 128.5, 69.9, 67.9, 132.0,
    77.0, 125.1, 88.7, 121.7, 100.7, 122.4, 112.2, 122.2, 122.3, 126.1, 129.4, 133.8, 123.3, 146.0, 113.0,
    153.3, 100.2, 154.8, 86.8, 151.8, 75.5, 144.3, 86.6, 130.6, 100.4, 131.5, 112.9, 130.9, 113.0, 138.3,
    100.5, 140.1, 86.4, 137.7], np.float64).reshape(49, 2)

AU_INDEX = {a: i for i, a in enumerate(au_sets.SYNTH_AUS)}
NUM_AUS = len(au_sets.SYNTH_AUS)

# Landmark groups (0-based).
L_BROW, R_BROW = np.arange(0, 5), np.arange(5, 10)
NOSE = np.arange(10, 19)
L_EYE, R_EYE = np.arange(19, 25), np.arange(25, 31)
MOUTH = np.arange(31, 49)
UPPER_LID = np.array([20, 21, 26, 27])
LOWER_LID = np.array([23, 24, 29, 30])
CORNERS = np.array([31, 37])
OUTER_UPPER = np.arange(32, 37)
OUTER_LOWER = np.arange(38, 43)
INNER_UPPER = np.array([43, 44, 45])
INNER_LOWER = np.array([46, 47, 48])
NUM_JAW = 15                  # extra (non-landmark) face-outline points, temple to temple via the chin
PARALYSIS_FACTOR = (1.0, 0.6, 0.3, 0.05)
PARALYSIS_DROOP = (0.0, 0.02, 0.045, 0.08)   # resting droop in interocular units


@dataclasses.dataclass(frozen=True)
class Identity:
    """One subject's appearance: neutral geometry and colours (all in 200-px template units)."""

    landmarks: np.ndarray      # [49, 2] neutral
    jaw: np.ndarray            # [NUM_JAW, 2] face outline (temple -> chin -> temple)
    skin: np.ndarray           # [3] RGB float
    lip: np.ndarray            # [3]
    brow: np.ndarray           # [3]
    hair: np.ndarray           # [3]
    iris: np.ndarray           # [3]
    background: np.ndarray     # [2, 3] top / bottom colours
    light: np.ndarray          # [2] (side gradient, brightness)
    brow_thickness: float
    lip_scale: float
    grade: int = 0
    side: int = 0              # paralysed side: 0 image-left, 1 image-right


def _scale_about(points: np.ndarray, idx: np.ndarray, sx: float, sy: float) -> None:
    c = points[idx].mean(0)
    points[idx] = c + (points[idx] - c) * (sx, sy)


def sample_identity(rng: np.random.Generator, grade: int = 0) -> Identity:
    """Draws a subject: face shape/proportions, skin tone, colours, lighting; ``grade`` 0..3."""
    lm = TEMPLATE.copy()
    # Proportions: eye spacing, eye size, brow height, nose length, mouth width, lip thickness.
    spread = rng.uniform(-3.0, 3.0)
    lm[L_EYE, 0] -= spread
    lm[R_EYE, 0] += spread
    lm[L_BROW, 0] -= spread
    lm[R_BROW, 0] += spread
    for eye in (L_EYE, R_EYE):
        _scale_about(lm, eye, rng.uniform(0.9, 1.1), rng.uniform(0.85, 1.25))
    lm[:10, 1] -= rng.uniform(-3.0, 3.0)
    nose_len = rng.uniform(-4.0, 4.0)
    lm[14:19, 1] += nose_len
    lm[10:14, 1] += nose_len * np.linspace(0.2, 0.9, 4)
    _scale_about(lm, NOSE[4:], rng.uniform(0.85, 1.2), 1.0)
    # Neutral: lips closed, thinner lower lip than the (smiling) reference.
    closed = lm[INNER_UPPER[::-1], 1] + 0.3
    lm[OUTER_LOWER[1:4], 1] = closed + 0.6 * (lm[OUTER_LOWER[1:4], 1] - lm[INNER_LOWER, 1])
    lm[[38, 42], 1] = lm[[37, 31], 1] + 0.75 * (lm[[39, 41], 1] - lm[[37, 31], 1])
    lm[INNER_LOWER, 1] = closed
    mouth_dy = rng.uniform(-3.0, 4.0) + 0.5 * nose_len
    lm[MOUTH, 1] += mouth_dy
    lip_scale = rng.uniform(0.8, 1.25)
    _scale_about(lm, MOUTH, rng.uniform(0.88, 1.12), lip_scale)
    # Face outline: an egg through the temples, cheeks and chin.
    width = rng.uniform(76.0, 92.0)
    chin = lm[MOUTH, 1].max() + rng.uniform(26.0, 38.0)
    cx, top = 100.5, lm[:10, 1].min() - 6.0
    t = np.linspace(0.0, np.pi, NUM_JAW)
    jaw_round = rng.uniform(0.55, 0.9)
    x = cx - width * np.cos(t) * (1 - (1 - jaw_round) * np.sin(t) ** 4)
    y = top + (chin - top) * np.sin(t) ** 0.7
    jaw = np.stack([x, y], -1)
    tone = rng.uniform(0.0, 1.0)
    skin = (1 - tone) * np.array([235.0, 196.0, 170.0]) + tone * np.array([95.0, 62.0, 45.0])
    skin = skin * rng.uniform(0.9, 1.1, 3)
    lip = skin * np.array([0.82, 0.58, 0.58]) + rng.uniform(-8, 8, 3)
    hair_dark = rng.uniform(0.05, 0.55)
    hair = np.array([110.0, 80.0, 55.0]) * hair_dark * 2 + 10
    brow = np.minimum(hair, skin * 0.45)
    iris = rng.choice([np.array([70.0, 45.0, 25.0]), np.array([60.0, 90.0, 120.0]), np.array([80.0, 90.0, 50.0])])
    bg = rng.uniform(20, 200, 3)
    background = np.stack([bg, bg * rng.uniform(0.5, 1.0)])
    light = np.array([rng.uniform(-0.25, 0.25), rng.uniform(0.75, 1.2)])
    return Identity(landmarks=lm, jaw=jaw, skin=np.clip(skin, 0, 255), lip=np.clip(lip, 0, 255),
                    brow=brow, hair=hair, iris=iris, background=background, light=light,
                    brow_thickness=rng.uniform(4.0, 7.5), lip_scale=lip_scale, grade=int(grade),
                    side=int(rng.integers(2)))


def side_factors(ident: Identity, x: np.ndarray) -> np.ndarray:
    """Per-point movement factor: 1 on the healthy side, PARALYSIS_FACTOR[grade] on the weak one."""
    f = PARALYSIS_FACTOR[ident.grade]
    weak = (x < 100.5) if ident.side == 0 else (x > 100.5)
    return np.where(weak, f, 1.0)


def geometry(ident: Identity, intensity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AU-deformed (landmarks [49, 2], jaw [NUM_JAW, 2]) in template pixels; intensity [15] in 0..5."""
    s = np.clip(np.asarray(intensity, np.float64), 0.0, 5.0) / 5.0
    a = {au: s[i] for au, i in AU_INDEX.items()}
    lm0 = ident.landmarks
    d = float(interocular(lm0))
    dv = np.zeros_like(lm0)
    cx = lm0[:, 0].mean()
    inward = np.sign(cx - lm0[:, 0])
    # Brows: AU1 inner raise, AU2 outer raise, AU4 lower + draw together.
    inner_w = np.array([0.0, 0.15, 0.45, 0.8, 1.0, 1.0, 0.8, 0.45, 0.15, 0.0])
    dv[:10, 1] -= 0.17 * d * a[1] * inner_w + 0.16 * d * a[2] * (1 - inner_w)
    dv[:10, 1] += 0.09 * d * a[4] * (0.5 + 0.5 * inner_w)
    dv[:10, 0] += 0.07 * d * a[4] * inner_w * inward[:10]
    # Eyes: AU6 lower lid up (cheek push), AU7 both lids tighten.
    dv[LOWER_LID, 1] -= 0.05 * d * a[6] + 0.045 * d * a[7]
    dv[UPPER_LID, 1] += 0.05 * d * a[7]
    # Nose: AU9 wings up; AU10 wings slightly up.
    dv[14:19, 1] -= 0.05 * d * a[9] + 0.02 * d * a[10]
    dv[12:14, 1] -= 0.02 * d * a[9]
    # Mouth.
    up_w = np.array([0.4, 0.9, 1.0, 0.9, 0.4])
    dv[OUTER_UPPER, 1] -= 0.09 * d * a[10] * up_w
    dv[INNER_UPPER, 1] -= 0.07 * d * a[10] * np.array([0.8, 1.0, 0.8])
    dv[CORNERS, 0] -= 0.15 * d * a[12] * inward[CORNERS]
    dv[CORNERS, 1] -= 0.09 * d * a[12]
    dv[[32, 42, 36, 38], 1] -= 0.03 * d * a[12]
    dv[CORNERS, 0] += 0.04 * d * a[14] * inward[CORNERS]
    dv[CORNERS, 1] += 0.13 * d * a[15]
    dv[[32, 42, 36, 38], 1] += 0.05 * d * a[15]
    dv[OUTER_LOWER, 1] -= 0.06 * d * a[17]
    dv[INNER_LOWER, 1] -= 0.03 * d * a[17]
    dv[CORNERS, 0] += 0.08 * d * a[23] * inward[CORNERS]
    dv[[32, 33, 35, 36, 38, 39, 41, 42], 0] += 0.05 * d * a[23] * inward[[32, 33, 35, 36, 38, 39, 41, 42]]
    dv[OUTER_UPPER, 1] += 0.05 * d * a[24]
    dv[OUTER_LOWER, 1] -= 0.05 * d * a[24]
    dv[INNER_UPPER, 1] += 0.01 * d * a[24]
    dv[INNER_UPPER, 1] -= 0.03 * d * a[25]
    dv[INNER_LOWER, 1] += 0.12 * d * a[25]
    dv[OUTER_LOWER, 1] += 0.04 * d * a[25]
    dv[INNER_LOWER, 1] += 0.22 * d * a[26]
    dv[OUTER_LOWER, 1] += 0.24 * d * a[26]
    dv[CORNERS, 1] += 0.06 * d * a[26]
    lm = lm0 + dv * side_factors(ident, lm0[:, 0])[:, None]
    jaw = ident.jaw.copy()
    mid = lm0[MOUTH, 1].mean()
    jw = np.clip((jaw[:, 1] - mid) / (jaw[:, 1].max() - mid), 0, 1)        # only the chin part moves
    jaw[:, 1] += 0.24 * d * a[26] * jw * side_factors(ident, jaw[:, 0])
    if ident.grade:
        g = PARALYSIS_DROOP[ident.grade] * d
        brow = L_BROW if ident.side == 0 else R_BROW
        corner = 31 if ident.side == 0 else 37
        lower = np.array([23, 24]) if ident.side == 0 else np.array([29, 30])
        lm[brow, 1] += g
        lm[corner, 1] += 1.5 * g
        lm[[32, 42] if ident.side == 0 else [36, 38], 1] += 0.7 * g
        lm[lower, 1] += 0.5 * g
    return lm, jaw


# ---------------------------------------------------------------------------------------------
# Rendering.

_SHIFT = 4
_ONE = 1 << _SHIFT


def _pts(p: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(p) * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _fill(img: np.ndarray, p: np.ndarray, color) -> None:
    cv2.fillPoly(img, [_pts(p)], tuple(map(float, color)), cv2.LINE_AA, _SHIFT)


def _line(img: np.ndarray, p: np.ndarray, color, thickness: int = 1, closed: bool = False) -> None:
    cv2.polylines(img, [_pts(p)], closed, tuple(map(float, color)), thickness, cv2.LINE_AA, _SHIFT)


def _ellipse(img, c, axes, angle, color, thickness=-1, start=0, end=360) -> None:
    cv2.ellipse(img, (int(round(c[0] * _ONE)), int(round(c[1] * _ONE))),
                (max(1, int(round(axes[0] * _ONE))), max(1, int(round(axes[1] * _ONE)))),
                float(angle), start, end, tuple(float(x) for x in color), thickness, cv2.LINE_AA, _SHIFT)


def _mix(c, k: float, target=(0.0, 0.0, 0.0)) -> tuple[float, float, float]:
    return (c[0] * (1 - k) + target[0] * k, c[1] * (1 - k) + target[1] * k, c[2] * (1 - k) + target[2] * k)


_BZ_T = np.linspace(0, 1, 8)[:, None]


def _bezier(p0, p1, p2) -> np.ndarray:
    t = _BZ_T
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


_CR_T = {}


def _smooth_closed(p: np.ndarray, n: int = 4) -> np.ndarray:
    """Catmull-Rom densified closed polygon (n points per edge)."""
    p = np.asarray(p, np.float64)
    k = len(p)
    if (k, n) not in _CR_T:
        t = np.linspace(0, 1, n, endpoint=False)[:, None]
        w = np.stack([-t + 2 * t ** 2 - t ** 3, 2 - 5 * t ** 2 + 3 * t ** 3, t + 4 * t ** 2 - 3 * t ** 3,
                      -t ** 2 + t ** 3], 0)[..., 0] * 0.5          # [4, n]
        idx = (np.arange(k)[:, None] + np.arange(-1, 3)[None]) % k  # [k, 4]
        _CR_T[(k, n)] = (w, idx)
    w, idx = _CR_T[(k, n)]
    return np.einsum("kjd,jn->knd", p[idx], w).reshape(-1, 2)


def background(ident: Identity, size: int) -> np.ndarray:
    """Per-subject background: vertical gradient ``[S, S, 3]`` uint8."""
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    bg = ident.background.astype(np.float32)
    return np.broadcast_to((1 - t) * bg[0] + t * bg[1], (size, size, 3)).astype(np.uint8)


def lighting(ident: Identity, size: int) -> np.ndarray:
    """Per-subject multiplicative lighting ``[S, S, 3]`` uint8 (128 = 1.0; side gradient, vignette)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    lit = ident.light[1] * (1 + ident.light[0] * (x - 0.5) * 2) * (1 - 0.25 * ((x - 0.5) ** 2 + (y - 0.45) ** 2))
    return np.repeat(np.clip(lit * 128 + 0.5, 0, 255).astype(np.uint8)[..., None], 3, -1)


def _corner_distance(lm: np.ndarray) -> float:
    """Distance of the eye-corner midpoints (a size unit no AU changes)."""
    return float(np.linalg.norm((lm[25] + lm[28]) / 2 - (lm[19] + lm[22]) / 2))


def render(ident: Identity, lm: np.ndarray, jaw: np.ndarray, intensity: np.ndarray, size: int,
           noise: np.ndarray | None, bg: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Draws one face. ``lm``/``jaw`` are final crop pixels (already posed and scaled to ``size``);
    ``noise`` ``[S, S, 3]`` int16 sensor noise or None; ``bg``/``light`` from :func:`background` /
    :func:`lighting`. Returns uint8 RGB ``[S, S, 3]``."""
    s = (np.clip(np.asarray(intensity, np.float64), 0.0, 5.0) / 5.0) ** 1.5   # wrinkles fade in late
    a = {au: float(s[i]) for au, i in AU_INDEX.items()}
    k = size / BASE_SIZE
    d = _corner_distance(lm)
    img = bg.copy()
    skin = tuple(map(float, ident.skin))
    # Hair, ears, neck, face.
    top = jaw[0]
    hair_c = (np.array([jaw[:, 0].mean(), top[1] - 2 * k]))
    _ellipse(img, hair_c, ((jaw[:, 0].max() - jaw[:, 0].min()) * 0.56, 0.6 * d), 0, ident.hair)
    for side in (0, -1):
        e = jaw[2 if side == 0 else -3]
        _ellipse(img, e + (-6 * k if side == 0 else 6 * k, -2 * k), (8 * k, 16 * k), 0, _mix(skin, 0.12))
    neck_x = lm[MOUTH, 0].mean()
    _fill(img, np.array([[neck_x - 0.55 * d, jaw[:, 1].max() - 30 * k], [neck_x + 0.55 * d, jaw[:, 1].max() - 30 * k],
                         [neck_x + 0.65 * d, size + 5], [neck_x - 0.65 * d, size + 5]]), _mix(skin, 0.3))
    face = np.concatenate([jaw, [[jaw[-1, 0], jaw[-1, 1] - 40 * k], [jaw[:, 0].mean(), jaw[0, 1] - 45 * k],
                                 [jaw[0, 0], jaw[0, 1] - 40 * k]]])
    _fill(img, _smooth_closed(face, 3), skin)
    # Hairline fringe.
    _ellipse(img, (jaw[:, 0].mean(), jaw[0, 1] - 0.45 * d), ((jaw[-1, 0] - jaw[0, 0]) * 0.5, 0.42 * d), 0,
             ident.hair, -1, 180, 360)
    # Cheeks (AU6: raised cheek highlight + infraorbital furrow), nasolabial folds (AU12/AU10/AU9).
    f_side = side_factors(ident, np.array([0.0, 200.0]))   # (image-left, image-right) factors
    for sd, eye in ((0, L_EYE), (1, R_EYE)):
        fs = f_side[sd]
        e = lm[eye]
        ec = (e[0] + e[3]) / 2          # eye corners: no AU moves them
        c = ec + (0, 0.42 * d)
        _ellipse(img, c + (0, -0.06 * d * a[6] * fs), (0.36 * d, 0.2 * d), 0,
                 _mix(skin, 0.03 + 0.13 * a[6] * fs, (255, 165, 150)))
        arc = _bezier(e[0] + (0, 0.12 * d), ec + (0, 0.3 * d - 0.08 * d * a[6] * fs), e[3] + (0, 0.1 * d))
        _line(img, arc, _mix(skin, 0.04 + 0.35 * a[6] * fs), max(1, int(round(1.5 * k))))
    for sd in (0, 1):
        fs = f_side[sd]
        wing = lm[14] if sd == 0 else lm[18]
        corner = lm[31] if sd == 0 else lm[37]
        out = -1 if sd == 0 else 1
        depth = 0.06 + 0.4 * max(a[12], 0.7 * a[10], 0.5 * a[9]) * fs
        mid = (wing + corner) / 2 + (out * (0.14 * d + 0.08 * d * a[12] * fs), 0)
        fold = _bezier(wing + (out * 0.08 * d, -0.02 * d), mid, corner + (out * 0.1 * d, 0.08 * d))
        _line(img, fold, _mix(skin, depth), max(1, int(round(2 * k))))
        # AU14 dimples (subtle).
        if a[14] > 0:
            _ellipse(img, corner + (out * 0.12 * d, 0.0), (0.025 * d, 0.07 * d), 0,
                     _mix(skin, 0.22 * a[14] * fs), max(1, int(round(1.5 * k))), 60 if sd else -120,
                     300 if sd else 120)
    # Forehead wrinkles (AU1 centre, AU2 lateral), glabella furrows (AU4).
    bc = lm[:10].mean(0)
    for j in range(3):
        y = lm[:10, 1].min() - (0.12 + 0.08 * j) * d
        if a[1] > 0:
            _line(img, _bezier(np.array([bc[0] - 0.35 * d, y + 3 * k]), np.array([bc[0], y - 2 * k]),
                               np.array([bc[0] + 0.35 * d, y + 3 * k])), _mix(skin, 0.28 * a[1]), 1)
        if a[2] > 0:
            for sd in (0, 1):
                fs = f_side[sd]
                br = lm[1] if sd == 0 else lm[8]
                _line(img, _bezier(br + (-0.2 * d, -(0.16 + 0.07 * j) * d), br + (0, -(0.22 + 0.07 * j) * d),
                                   br + (0.2 * d, -(0.16 + 0.07 * j) * d)), _mix(skin, 0.2 * a[2] * fs), 1)
    if a[4] > 0:
        for off in (-0.07, 0.07):
            x = (lm[4, 0] + lm[5, 0]) / 2 + off * d
            y0 = min(lm[4, 1], lm[5, 1])
            _line(img, np.array([[x, y0 - 0.05 * d], [x - np.sign(off) * 0.02 * d, y0 + 0.2 * d]]),
                  _mix(skin, 0.4 * a[4]), max(1, int(round(1.5 * k))))
    # Nose: bridge shading, wrinkles (AU9), wings and nostrils.
    _line(img, lm[10:14] + (-0.08 * d, 0), _mix(skin, 0.12), max(1, int(round(2 * k))))
    if a[9] > 0:
        for j in range(3):
            y = lm[10, 1] + (0.05 + 0.07 * j) * d
            _line(img, np.array([[lm[11, 0] - 0.12 * d, y + 1 * k], [lm[11, 0], y - 1 * k],
                                 [lm[11, 0] + 0.12 * d, y + 1 * k]]), _mix(skin, 0.45 * a[9]), 1)
    _ellipse(img, lm[13] + (0, -0.03 * d), (0.1 * d, 0.08 * d), 0, _mix(skin, 0.12, (255, 255, 255)))
    _line(img, lm[14:19], _mix(skin, 0.35), max(1, int(round(1.5 * k))))
    for n in (15, 17):
        _ellipse(img, lm[n] + (0, -0.035 * d), (0.05 * d, 0.025 * d), 0, _mix(skin, 0.6))
    # Eyes: upper crease, sclera, iris (clipped), lid lines.
    for sd, eye in ((0, L_EYE), (1, R_EYE)):
        e = lm[eye]
        fs = f_side[sd]
        crease = _bezier(e[0] + (0, -0.04 * d), (e[1] + e[2]) / 2 + (0, -0.14 * d + 0.04 * d * a[7] * fs),
                         e[3] + (0, -0.05 * d))
        _line(img, crease, _mix(skin, 0.3), 1)
        if a[7] > 0:   # AU7: bulging lower lid (subtle)
            _line(img, _bezier(e[3] + (0, 0.02 * d), (e[4] + e[5]) / 2 + (0, 0.07 * d), e[0] + (0, 0.02 * d)),
                  _mix(skin, 0.15 * a[7] * fs), 1)
        poly = _smooth_closed(e, 4)
        x0, y0 = np.floor(poly.min(0)).astype(int) - 1
        x1, y1 = np.ceil(poly.max(0)).astype(int) + 2
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, size), min(y1, size)
        if x1 <= x0 or y1 <= y0:
            continue
        roi = img[y0:y1, x0:x1]
        eye_img = roi.copy()
        m = np.zeros(roi.shape[:2], np.uint8)
        _fill(m, poly - (x0, y0), (255,))
        _fill(eye_img, poly - (x0, y0), (235, 232, 225))
        ic = e.mean(0) - (x0, y0)
        r = 0.13 * d
        _ellipse(eye_img, ic, (r, r), 0, ident.iris)
        _ellipse(eye_img, ic, (0.45 * r, 0.45 * r), 0, (15, 12, 12))
        _ellipse(eye_img, ic + (0.3 * r, -0.3 * r), (0.2 * r, 0.2 * r), 0, (245, 245, 245))
        w = (m.astype(np.float32) / 255.0)[..., None]
        roi[:] = (roi * (1 - w) + eye_img * w).astype(np.uint8)
        _line(img, e[[0, 1, 2, 3]], _mix(ident.brow, 0.2), max(1, int(round(2 * k))))
        _line(img, e[[3, 4, 5, 0]], _mix(skin, 0.45), 1)
    # Brows: a band around the landmarks, thicker at the inner end.
    for br in (lm[L_BROW], lm[R_BROW][::-1]):
        th = ident.brow_thickness * k * np.array([0.5, 0.8, 1.0, 1.1, 1.15])
        band = np.concatenate([br + np.stack([0 * th, -0.5 * th], -1), (br + np.stack([0 * th, 0.5 * th], -1))[::-1]])
        _fill(img, band, ident.brow)
    # Mouth: chin boss (AU17), lips, opening, teeth.
    if a[17] > 0:
        c = lm[OUTER_LOWER].mean(0) + (0, 0.3 * d)
        _ellipse(img, c, (0.3 * d, 0.13 * d), 0, _mix(skin, 0.1 * a[17], (255, 255, 255)))
        _ellipse(img, c + (0, -0.12 * d), (0.22 * d, 0.05 * d), 0, _mix(skin, 0.28 * a[17]), 1, 0, 180)
    outer = _smooth_closed(lm[31:43], 3)
    _fill(img, outer, ident.lip)
    inner_up = lm[[31, 43, 44, 45, 37]]
    inner_lo = lm[[37, 46, 47, 48, 31]]
    gap = float(np.mean(inner_lo[1:4][::-1, 1] - inner_up[1:4, 1]))
    if gap > 1.0 * k:
        hole = _smooth_closed(np.concatenate([inner_up, inner_lo[1:4]]), 3)
        _fill(img, hole, (45, 15, 20))
        teeth = np.concatenate([inner_up[1:4], (inner_up[1:4] + (0, min(gap * 0.5, 0.1 * d)))[::-1]])
        _fill(img, teeth, (225, 220, 205))
        _fill(img, np.concatenate([inner_up, inner_up[::-1] + (0, 0.01)]), ident.lip)
    _line(img, np.concatenate([inner_up, inner_lo[1:4][::-1][::-1]]) if gap <= 1.0 * k else inner_up,
          _mix(ident.lip, 0.5), 1)
    if gap > 1.0 * k:
        _line(img, inner_lo, _mix(ident.lip, 0.4), 1)
    # Lip highlight (AU24 pressed lips go pale).
    _line(img, lm[[40, 41, 42]] + (0, -0.03 * d), _mix(ident.lip, 0.15 + 0.2 * a[24], (255, 255, 255)), 1)
    img = cv2.GaussianBlur(img, (3, 3), 0.7)
    img = cv2.multiply(img, light, scale=1.0 / 128)
    if noise is None:
        return img
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# AU regions.

def _region_points(au: int, lm: np.ndarray, d: float) -> np.ndarray | list[np.ndarray]:
    """Points (or a list of point sets) whose convex hull(s) bound the pixels AU ``au`` may change."""
    up = np.array([0.0, -1.0]) * d
    brows = lm[:10]
    if au in (1, 2, 4):
        pts = np.concatenate([brows, brows + 0.55 * up, brows - 0.3 * up])
        if au == 4:
            pts = np.concatenate([pts, lm[[20, 21, 26, 27, 10, 11]]])
        return pts
    if au in (6, 7):   # one hull per eye (and cheek)
        hulls = []
        for eye, outer, inner in ((lm[19:25], lm[19], lm[22]), (lm[25:31], lm[28], lm[25])):
            pts = np.concatenate([eye, eye - 0.2 * up, eye + 0.2 * up])
            if au == 6:
                c = eye.mean(0)
                pts = np.concatenate([pts, eye - 0.7 * up, [outer + (np.sign(outer[0] - c[0]) * 0.2 * d, 0.75 * d),
                                                            inner + (np.sign(inner[0] - c[0]) * 0.2 * d, 0.75 * d)]])
            hulls.append(pts)
        return hulls
    if au in (9, 10, 12, 14, 15, 17, 23, 24, 25, 26):
        m = lm[31:49]
        pts = np.concatenate([m, m + 0.15 * up, m - 0.15 * up])
        if au in (9, 10, 12, 14, 15, 23, 26):    # nasolabial folds (they end at the lip corners)
            wl, wr, cl, cr = lm[14], lm[18], lm[31], lm[37]
            pts = np.concatenate([pts, lm[14:19], lm[14:19] + 0.1 * up,
                                  [wl + (-0.15 * d, -0.05 * d), wr + (0.15 * d, -0.05 * d),
                                   (wl + cl) / 2 + (-0.3 * d, 0), (wr + cr) / 2 + (0.3 * d, 0),
                                   cl + (-0.2 * d, 0.12 * d), cr + (0.2 * d, 0.12 * d)]])
        if au == 9:
            pts = np.concatenate([pts, lm[10:14], lm[10:14] + (0.25 * d, 0), lm[10:14] - (0.25 * d, 0)])
        if au == 14:
            pts = np.concatenate([pts, lm[[31]] + (-0.25 * d, 0), lm[[37]] + (0.25 * d, 0)])
        if au == 17:
            pts = np.concatenate([pts, m - 0.6 * up])
        if au == 26:   # jaw drop: the lower face down to the crop bottom
            bottom = 1e4
            pts = np.concatenate([pts, [lm[31] + (-1.0 * d, -0.35 * d), lm[37] + (1.0 * d, -0.35 * d),
                                        (lm[31, 0] - 1.0 * d, bottom), (lm[37, 0] + 1.0 * d, bottom)]])
        return pts
    raise ValueError(f"AU{au} is not rendered by the synthetic generator (choose from {au_sets.SYNTH_AUS})")


def au_region_mask(au: int, landmarks: np.ndarray, image_size: int = BASE_SIZE, margin: float = 0.12) -> np.ndarray:
    """Bool ``[S, S]``: where AU ``au`` may change pixels of a face with (neutral) ``landmarks`` ``[49, 2]``.

    ``margin`` (interocular units) dilates the region hull (covers the AU's landmark motion and blur).
    """
    lm = np.asarray(landmarks, np.float64)
    if lm.shape != (au_sets.NUM_LANDMARKS, 2):
        raise ValueError(f"landmarks must have shape (49, 2), got {lm.shape}")
    d = float(interocular(lm))
    hulls = _region_points(au, lm, d)
    m = np.zeros((image_size, image_size), np.uint8)
    for pts in hulls if isinstance(hulls, list) else [hulls]:
        pts = np.clip(pts, -2 * image_size, 3 * image_size)
        cv2.fillConvexPoly(m, np.round(cv2.convexHull(pts.astype(np.float32))).astype(np.int32), 1)
    r = max(1, int(np.ceil(margin * d)))
    m = cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    return m.astype(bool)


# ---------------------------------------------------------------------------------------------
# Raw frames.

def to_raw(image: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
           frame_hw: tuple[int, int] = (480, 640)) -> tuple[np.ndarray, np.ndarray]:
    """Places an aligned face into a bigger frame by a random similarity (rotation up to +-15 deg,
    scale 1.1..1.6, translation keeping the face inside). Returns raw uint8 ``[H, W, 3]`` (textured
    background) and raw landmarks float32 ``[49, 2]``."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be [S, S, 3], got {img.shape}")
    h, w = frame_hw
    size = img.shape[0]
    ang = rng.uniform(-15.0, 15.0)
    scale = rng.uniform(1.1, 1.6) * min(h, w) / 480.0
    half = 0.5 * size * scale * 1.42
    cx = rng.uniform(half, max(half, w - half)) if w > 2 * half else w / 2
    cy = rng.uniform(half, max(half, h - half)) if h > 2 * half else h / 2
    m = cv2.getRotationMatrix2D((size / 2, size / 2), ang, scale)
    m[:, 2] += (cx - size / 2, cy - size / 2)
    # Background: smooth colour gradient + low-frequency texture.
    c0, c1 = rng.uniform(30, 220, 3), rng.uniform(30, 220, 3)
    t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    bg = np.broadcast_to((1 - t) * c0 + t * c1, (h, w, 3)).astype(np.float32)
    tex = cv2.resize(rng.normal(0, 12, (h // 16 + 1, w // 16 + 1, 1)).astype(np.float32), (w, h))
    bg = np.clip(bg + tex[..., None], 0, 255).astype(np.uint8)
    raw = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    cover = cv2.warpAffine(np.full(img.shape[:2], 255, np.uint8), m, (w, h), flags=cv2.INTER_LINEAR)
    a = (cover.astype(np.float32) / 255.0)[..., None]
    raw = (raw * a + bg * (1 - a) + 0.5).astype(np.uint8)
    lm = np.asarray(landmarks, np.float64)
    raw_lm = lm @ m[:, :2].T + m[:, 2]
    return raw, raw_lm.astype(np.float32)
