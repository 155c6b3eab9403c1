"""data_pipelines.images: the one image reader (builds and predict) refuses what OpenCV would half-decode."""
from __future__ import annotations

import os
import pathlib

import cv2
import numpy as np
import pytest

from algrnet_jax.errors import UserError
from data_pipelines import errors, images

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "jaanet_samples"
RAW = FIXTURES / "raw_BP4D_F001_T1_2440.jpg"


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def test_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(errors.BadInputError, match=f"{missing}: image file not found"):
        images.load_image(missing)
    good = RAW.read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(errors.BadInputError, match=f"{truncated}: corrupt image \\(truncated JPEG"):
        images.load_image(truncated)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(errors.BadInputError, match=f"{garbage}: corrupt image \\(cannot be decoded\\)"):
        images.load_image(garbage)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(errors.BadInputError, match=f"{empty}: image file is empty"):
        images.load_image(empty)
    with pytest.raises(UserError, match="image file not found"):       # the CLI turns it into exit 2
        images.load_image(tmp_path)
    assert images.load_image(RAW).shape == (1392, 1040, 3)


def test_truncated_png_is_refused(tmp_path):
    data = _png(np.full((40, 30, 3), 128, np.uint8))
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[:-12])                         # IEND chunk lost
    with pytest.raises(errors.BadInputError, match=f"{cut}: corrupt image \\(truncated PNG: no IEND chunk\\)"):
        images.load_image(cut)
    (tmp_path / "ok.png").write_bytes(data)
    assert images.load_image(tmp_path / "ok.png").shape == (40, 30, 3)


def test_file_type_comes_from_the_magic_bytes_not_the_extension(tmp_path):
    good = RAW.read_bytes()
    named_png = tmp_path / "really_a_jpeg.png"
    named_png.write_bytes(good[: len(good) // 2])       # a truncated JPEG is caught whatever its name
    with pytest.raises(errors.BadInputError, match="truncated JPEG"):
        images.load_image(named_png)
    named_jpg = tmp_path / "really_a_png.jpg"
    named_jpg.write_bytes(_png(np.zeros((8, 9, 3), np.uint8)))
    assert images.load_image(named_jpg).shape == (8, 9, 3)


def test_colours_are_rgb_and_grey_becomes_three_channels(tmp_path):
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 2] = 200                                   # red in OpenCV's BGR order
    (tmp_path / "red.png").write_bytes(_png(bgr))
    rgb = images.load_image(tmp_path / "red.png")
    assert rgb.dtype == np.uint8 and rgb[0, 0].tolist() == [200, 0, 0]
    (tmp_path / "grey.png").write_bytes(_png(np.full((4, 5), 77, np.uint8)))
    assert images.load_image(tmp_path / "grey.png").shape == (4, 5, 3)


def test_damaged_jpeg_data_is_refused_with_the_decoders_words(tmp_path):
    data = bytearray(RAW.read_bytes())
    half = len(data) // 2
    data[half:-2] = bytes(len(data) - 2 - half)         # zeroed second half, end-of-image marker kept
    path = tmp_path / "zeroed.jpg"
    path.write_bytes(bytes(data))
    assert images.decode_jpeg_strict(bytes(data))[0] is not None          # OpenCV alone would accept it
    with pytest.raises(errors.BadInputError, match=f"{path}: corrupt image \\(the JPEG decoder reports: "):
        images.load_image(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
def test_unreadable_file(tmp_path):
    path = tmp_path / "locked.jpg"
    path.write_bytes(RAW.read_bytes())
    path.chmod(0)
    with pytest.raises(errors.BadInputError, match=f"{path}: cannot read \\(Permission denied\\)"):
        images.load_image(path)


def test_jpeg_encoding_round_trips():
    image = np.tile(np.arange(64, dtype=np.uint8)[:, None, None], (1, 64, 3))
    data = images.encode_jpeg(image)
    assert data[:2] == images.JPEG_MAGIC
    np.testing.assert_allclose(images.decode_image(data, "mem").astype(float), image, atol=3)
