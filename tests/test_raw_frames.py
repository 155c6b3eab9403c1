"""Raw release frames (builders/raw_frames.py): videos, frame folders, alignment of a raw frame."""
from __future__ import annotations

import os
import pathlib

import cv2
import numpy as np
import pytest

from data_pipelines import errors
from data_pipelines.builders import raw_frames

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "jaanet_samples"


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def test_unreadable_video(tmp_path):
    bad = _write(tmp_path / "LeftVideoSN001_comp.avi", "not a video")
    with pytest.raises(errors.BadInputError, match=r"LeftVideoSN001_comp.avi: unreadable video"):
        list(raw_frames.iter_video(bad))
    with pytest.raises(errors.BadInputError, match=r"missing.avi: video file not found"):
        list(raw_frames.iter_video(str(tmp_path / "missing.avi")))


def test_load_and_align_reads_one_based_release_files():
    raw = np.loadtxt(FIXTURES / "raw_land_49.txt")[1]
    aligned, lm = raw_frames.load_and_align(FIXTURES / "raw_BP4D_F001_T1_2441.jpg", raw)
    ref_lm = np.loadtxt(FIXTURES / "aligned_land_49.txt").reshape(-1, 49, 2)[1]
    ref_img = cv2.imread(str(FIXTURES / "aligned_BP4D_F001_T1_2441.jpg"))[..., ::-1]   # RGB
    np.testing.assert_allclose(lm, ref_lm, atol=1e-4)
    assert np.abs(aligned.astype(np.float64) - ref_img).mean() < 2.0


def test_a_frame_array_aligns_as_its_file_does():
    raw = np.loadtxt(FIXTURES / "raw_land_49.txt")[0]
    path = str(FIXTURES / "raw_BP4D_F001_T1_2440.jpg")
    from_file = raw_frames.align_raw(path, raw, path)
    from_array = raw_frames.align_raw(cv2.imread(path)[..., ::-1].copy(), raw, "video frame 0")
    np.testing.assert_array_equal(from_file[0], from_array[0])
    np.testing.assert_array_equal(from_file[1], from_array[1])
    with pytest.raises(errors.BadInputError, match="video frame 3: expected 49 landmarks"):
        raw_frames.align_raw(from_array[0], raw[:40], "video frame 3")


def test_frame_images_are_found_padded_or_plain(tmp_path):
    padded = _write(tmp_path / "0042.jpg", "x")
    plain = _write(tmp_path / "7.png", "x")
    assert raw_frames.frame_image(str(tmp_path), 42, pad=4) == padded
    assert raw_frames.frame_image(str(tmp_path), 7, pad=4) == plain
    assert raw_frames.frame_image(str(tmp_path), 42) is None          # unpadded name asked, padded on disk
    assert raw_frames.frame_image(str(tmp_path), 8) is None


def test_a_bad_frame_raises_when_loaded():
    load = raw_frames.raise_bad("x.csv:3: frame 5 is labelled but its image is missing")
    with pytest.raises(errors.BadInputError, match="x.csv:3: frame 5 is labelled"):
        load()
