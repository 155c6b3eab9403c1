"""Geometric augmentation of aligned faces and their landmarks (docs/model.md §2).

Pure functions; the ``tf_*`` ones run inside tf.data (they accept numpy too), the others are the
numpy equivalents used by tests and plots. Coordinates are (x, y) pixels, 0-based, pixel centres at
integers.

- resize (aligned S=200 -> A, when ``aligned_size`` differs): half-pixel-centre convention,
  ``x' = (x + 0.5) * A / S - 0.5`` (what ``tf.image.resize`` does to pixels);
- crop at offset (ox, oy): ``x' = x - ox``, ``y' = y - oy``;
- horizontal flip of a C-wide crop: ``x' = C - 1 - x``, then landmark i takes the mirrored point
  ``REFLECT_49[i]`` (left and right swap);
- pixels: ``v / 127.5 - 1`` in [-1, 1].
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from algrnet_jax import au_sets

REFLECT_49 = np.asarray(au_sets.REFLECT_49, np.int32)


# ------------------------------------------------------------------------------------- numpy


def resize_landmarks(landmarks: np.ndarray, src_size: int, dst_size: int) -> np.ndarray:
    """Landmarks ``[..., 49, 2]`` of an S-pixel image resized to ``dst_size`` (half-pixel centres)."""
    s = dst_size / src_size
    return (np.asarray(landmarks, np.float32) + 0.5) * np.float32(s) - 0.5


def crop_landmarks(landmarks: np.ndarray, offset_xy: np.ndarray) -> np.ndarray:
    """Landmarks ``[..., 49, 2]`` in a crop at ``offset_xy`` ``[..., 2]`` (x, y)."""
    return np.asarray(landmarks, np.float32) - np.asarray(offset_xy, np.float32)[..., None, :]


def flip_landmarks(landmarks: np.ndarray, width: int) -> np.ndarray:
    """Landmarks ``[..., 49, 2]`` of a horizontally flipped ``width``-wide image (mirror + permute)."""
    lm = np.array(landmarks, np.float32)
    lm[..., 0] = width - 1 - lm[..., 0]
    return lm[..., REFLECT_49, :]


def flip_image(image: np.ndarray) -> np.ndarray:
    """Horizontal flip of ``[..., H, W, C]``."""
    return np.asarray(image)[..., ::-1, :]


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [-1, 1]."""
    return np.asarray(image, np.float32) * np.float32(1.0 / 127.5) - np.float32(1.0)


def denormalize(image: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> uint8 (for plots)."""
    return np.clip(np.round((np.asarray(image, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def centre_offset(aligned_size: int, crop_size: int) -> int:
    """Test-time crop offset ``(aligned - crop) // 2`` (12 for 200 -> 176)."""
    if crop_size > aligned_size:
        raise ValueError(f"crop_size {crop_size} larger than aligned_size {aligned_size}")
    return (aligned_size - crop_size) // 2


# ---------------------------------------------------------------------------------------- tf


def tf_crop_landmarks(landmarks: tf.Tensor, offset_xy: tf.Tensor) -> tf.Tensor:
    """``[..., 49, 2]`` minus the crop offset ``[..., 2]`` (x, y)."""
    return landmarks - tf.cast(offset_xy, tf.float32)[..., None, :]


def tf_flip_landmarks(landmarks: tf.Tensor, width: int) -> tf.Tensor:
    """Mirror x (``width - 1 - x``) and permute by ``REFLECT_49``: ``[..., 49, 2]``."""
    mirrored = tf.stack([width - 1.0 - landmarks[..., 0], landmarks[..., 1]], axis=-1)
    return tf.gather(mirrored, REFLECT_49, axis=-2)


def tf_resize_landmarks(landmarks: tf.Tensor, src_size: int, dst_size: int) -> tf.Tensor:
    """Half-pixel-centre rescaling of landmarks, matching ``tf.image.resize``."""
    return (landmarks + 0.5) * (dst_size / src_size) - 0.5


JPEG_DCT = "INTEGER_ACCURATE"   # libjpeg's ISLOW IDCT, as PIL and OpenCV decode (TF's default is the fast one)
_MCU = 16                      # largest JPEG iMCU side (4:2:0 chroma subsampling)


def tf_decode_crop(jpeg: tf.Tensor, offset_xy: tf.Tensor, src_size: int, aligned_size: int,
                   crop_size: int) -> tf.Tensor:
    """Decodes a JPEG (``src_size`` square), resizes to ``aligned_size`` if needed, crops: uint8 ``[C, C, 3]``.

    Pixels equal a full PIL/OpenCV decode followed by the crop. Without resizing only a window of
    whole iMCUs around the crop (one extra iMCU of context for chroma upsampling) is decoded.
    """
    if aligned_size == src_size:
        ox, oy = offset_xy[0], offset_xy[1]
        x0, y0 = tf.maximum(0, (ox // _MCU - 1) * _MCU), tf.maximum(0, (oy // _MCU - 1) * _MCU)
        x1 = tf.minimum(src_size, ((ox + crop_size + _MCU - 1) // _MCU + 1) * _MCU)
        y1 = tf.minimum(src_size, ((oy + crop_size + _MCU - 1) // _MCU + 1) * _MCU)
        image = tf.image.decode_and_crop_jpeg(jpeg, tf.stack([y0, x0, y1 - y0, x1 - x0]), channels=3,
                                              dct_method=JPEG_DCT)
        image = image[oy - y0:oy - y0 + crop_size, ox - x0:ox - x0 + crop_size]
    else:
        image = tf.io.decode_jpeg(jpeg, channels=3, dct_method=JPEG_DCT)
        image = tf.image.resize(image, [aligned_size, aligned_size], method="bilinear", antialias=True)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
        image = image[offset_xy[1]:offset_xy[1] + crop_size, offset_xy[0]:offset_xy[0] + crop_size]
    return tf.ensure_shape(image, [crop_size, crop_size, 3])


def tf_flip_image(image: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
    """Flips one image ``[H, W, C]`` horizontally if ``flip`` (scalar bool); only flipped ones pay."""
    return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def tf_normalize(images: tf.Tensor) -> tf.Tensor:
    """uint8 -> float32 in [-1, 1]."""
    return tf.cast(images, tf.float32) * (1.0 / 127.5) - 1.0
