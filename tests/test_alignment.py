"""Face alignment against the JAA-Net release's own output on two real BP4D frames."""
from __future__ import annotations

import pathlib

import cv2
import numpy as np
import pytest

from data_pipelines import alignment

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "jaanet_samples"
FRAMES = ("2440", "2441")


def _raw(i: int) -> tuple[np.ndarray, np.ndarray]:
    image = cv2.imread(str(FIXTURES / f"raw_BP4D_F001_T1_{FRAMES[i]}.jpg"))
    raw = np.loadtxt(FIXTURES / "raw_land_49.txt").reshape(-1, 49, 2)[i]
    return image, raw


@pytest.mark.parametrize("i", [0, 1])
def test_align_face_matches_reference(i):
    image, raw = _raw(i)
    aligned, lm, matrix = alignment.align_face(image, alignment.from_one_based(raw))
    ref_lm = np.loadtxt(FIXTURES / "aligned_land_49.txt").reshape(-1, 49, 2)[i]
    ref_img = cv2.imread(str(FIXTURES / f"aligned_BP4D_F001_T1_{FRAMES[i]}.jpg"))
    assert aligned.shape == (200, 200, 3) and aligned.dtype == np.uint8
    assert lm.shape == (49, 2) and lm.dtype == np.float32
    np.testing.assert_allclose(lm, ref_lm, atol=1e-4)
    assert np.abs(aligned.astype(np.float64) - ref_img).mean() < 2.0
    assert matrix.shape == (2, 3)
    np.testing.assert_allclose(alignment.apply_affine(matrix, alignment.from_one_based(raw)), ref_lm, atol=1e-4)


def test_interocular_is_eye_centre_distance_not_squared():
    ref_lm = np.loadtxt(FIXTURES / "aligned_land_49.txt").reshape(-1, 49, 2)
    squared = np.loadtxt(FIXTURES / "aligned_biocular.txt")
    np.testing.assert_allclose(alignment.interocular(ref_lm) ** 2, squared, rtol=1e-6)
    left, right = alignment.eye_centres(ref_lm[0])
    np.testing.assert_allclose(alignment.interocular(ref_lm[0]), np.linalg.norm(right - left))


def test_aligned_eyes_horizontal_and_box_geometry():
    image, raw = _raw(0)
    _, lm, _ = alignment.align_face(image, alignment.from_one_based(raw))
    left, right = alignment.eye_centres(lm)
    assert abs(left[1] - right[1]) < 1e-4
    pts = np.concatenate([left[None], right[None], lm[list(alignment.BOX_POINTS)]])
    extent = (pts.max(0) - pts.min(0)).max()
    # the box is 2.9 times the five points' extent and maps onto 199 pixels, centred at 99.5
    np.testing.assert_allclose(extent * alignment.BOX_ENLARGE, 199.0, rtol=1e-5)
    np.testing.assert_allclose((pts.max(0) + pts.min(0)) / 2, [99.5, 99.5], atol=1e-4)


def test_border_is_grey_and_size_parameter():
    image, raw = _raw(0)
    aligned, _, _ = alignment.align_face(image[:900], alignment.from_one_based(raw), size=100)
    assert aligned.shape == (100, 100, 3)
    assert (aligned[-1] == 128).all()          # below the cut image: border value
    assert not (aligned[0] == 128).all()


def test_bad_landmarks_rejected():
    image, raw = _raw(0)
    with pytest.raises(ValueError, match="shape"):
        alignment.align_face(image, raw[:48])
    bad = raw.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        alignment.align_face(image, bad)
