"""Geometric augmentation: flip involution and eye swap, crop/resize consistent with pixels."""
from __future__ import annotations

import pathlib

import cv2
import numpy as np
import pytest
import tensorflow as tf

from algrnet_jax import au_sets
from data_pipelines import alignment, augment, images

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "jaanet_samples"


def _aligned_landmarks() -> np.ndarray:
    return np.loadtxt(FIXTURES / "aligned_land_49.txt").reshape(-1, 49, 2).astype(np.float32)


def test_reflect_matches_release_file():
    release = np.loadtxt(FIXTURES / "reflect_49.txt").astype(int) - 1
    np.testing.assert_array_equal(augment.REFLECT_49, release)


def test_flip_is_involution_and_swaps_eyes():
    lm = _aligned_landmarks()
    flipped = augment.flip_landmarks(lm, 176)
    np.testing.assert_allclose(augment.flip_landmarks(flipped, 176), lm, atol=1e-5)
    left, right = alignment.eye_centres(lm)
    f_left, f_right = alignment.eye_centres(flipped)
    # the new left eye is the mirrored old right eye, and vice versa
    np.testing.assert_allclose(f_left[:, 0], 175 - right[:, 0], atol=1e-4)
    np.testing.assert_allclose(f_left[:, 1], right[:, 1], atol=1e-4)
    np.testing.assert_allclose(f_right[:, 0], 175 - left[:, 0], atol=1e-4)
    np.testing.assert_allclose(f_right[:, 1], left[:, 1], atol=1e-4)
    # the left eye stays on the image's left
    assert (f_left[:, 0] < f_right[:, 0]).all()
    np.testing.assert_allclose(alignment.interocular(flipped), alignment.interocular(lm), rtol=1e-5)


def test_tf_and_numpy_landmark_maths_agree():
    lm = _aligned_landmarks()
    off = np.array([[3, 7], [12, 0]], np.int32)
    np.testing.assert_allclose(augment.tf_flip_landmarks(tf.constant(lm), 64).numpy(),
                               augment.flip_landmarks(lm, 64), atol=1e-6)
    np.testing.assert_allclose(augment.tf_crop_landmarks(tf.constant(lm), off).numpy(),
                               augment.crop_landmarks(lm, off), atol=1e-6)
    np.testing.assert_allclose(augment.tf_resize_landmarks(tf.constant(lm), 200, 72).numpy(),
                               augment.resize_landmarks(lm, 200, 72), atol=1e-5)
    np.testing.assert_allclose(augment.tf_normalize(tf.constant([0, 255], tf.uint8)).numpy(), [-1, 1])
    np.testing.assert_allclose(augment.normalize(np.array([0, 255], np.uint8)), [-1, 1])


def _dot_jpeg(x: int, y: int, size: int = 200) -> bytes:
    image = np.full((size, size, 3), 20, np.uint8)
    image[y - 2:y + 3, x - 2:x + 3] = 255
    return images.encode_jpeg(image, quality=100)


def _centroid(image: np.ndarray) -> np.ndarray:
    w = np.clip(image[..., 0].astype(np.float64) - 60.0, 0, None)
    ys, xs = np.mgrid[:w.shape[0], :w.shape[1]]
    return np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])


@pytest.mark.parametrize("aligned,crop,offset", [(200, 176, (17, 5)), (200, 176, (0, 24)), (72, 64, (5, 2)),
                                                 (36, 32, (4, 0))])
def test_crop_resize_flip_move_landmarks_with_pixels(aligned, crop, offset):
    point = np.array([[131.0, 77.0]], np.float32)
    jpeg = tf.constant(_dot_jpeg(131, 77))
    off = tf.constant(offset, tf.int32)
    image = augment.tf_decode_crop(jpeg, off, 200, aligned, crop)
    assert image.shape == (crop, crop, 3) and image.dtype == tf.uint8
    lm = augment.tf_resize_landmarks(tf.constant(point), 200, aligned) if aligned != 200 else tf.constant(point)
    lm = augment.tf_crop_landmarks(lm, off).numpy()
    tol = 0.25
    np.testing.assert_allclose(_centroid(image.numpy()), lm[0], atol=tol)
    flipped = augment.tf_flip_image(image, tf.constant(True)).numpy()
    mirrored_x = crop - 1 - lm[0, 0]
    np.testing.assert_allclose(_centroid(flipped), [mirrored_x, lm[0, 1]], atol=tol)
    np.testing.assert_array_equal(flipped, augment.flip_image(image.numpy()))
    not_flipped = augment.tf_flip_image(image, tf.constant(False)).numpy()
    np.testing.assert_array_equal(not_flipped, image.numpy())


@pytest.mark.parametrize("offset", [(12, 12), (0, 24), (17, 5), (24, 0), (3, 21)])
def test_decode_crop_equals_full_opencv_decode(offset):
    """Window decode = full decode (ISLOW IDCT, like PIL/OpenCV and the PyTorch reference) + crop."""
    jpeg = (FIXTURES / "aligned_BP4D_F001_T1_2440.jpg").read_bytes()
    full = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    got = augment.tf_decode_crop(tf.constant(jpeg), tf.constant(offset, tf.int32), 200, 200, 176).numpy()
    ox, oy = offset
    np.testing.assert_array_equal(got, full[oy:oy + 176, ox:ox + 176])


def test_centre_offset():
    assert augment.centre_offset(200, 176) == 12
    assert augment.centre_offset(72, 64) == 4
    with pytest.raises(ValueError, match="larger"):
        augment.centre_offset(32, 36)


def test_denormalize_roundtrip():
    pixels = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(augment.denormalize(augment.normalize(pixels)), pixels)


def test_left_eye_indices_are_mirror_pairs():
    reflect = np.asarray(au_sets.REFLECT_49)
    assert sorted(reflect[list(au_sets.LEFT_EYE)]) == sorted(au_sets.RIGHT_EYE)
