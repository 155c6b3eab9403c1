"""The JAA-Net list layout (builders/list_layout.py) and the choice between it and a release layout."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from data_pipelines import alignment, errors
from data_pipelines.builders import base, list_layout

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "jaanet_samples")


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def _list_files(tmp_path, n=2, biocular=None, land_rows=None):
    root = tmp_path / "lists"
    aligned = np.loadtxt(os.path.join(FIXTURES, "aligned_land_49.txt")).reshape(-1, 98)
    paths, lands, bios = [], [], []
    for k in range(n):
        rel = f"imgs/F001/T1/{2440 + k}.jpg"
        img = cv2.imread(os.path.join(FIXTURES, f"aligned_BP4D_F001_T1_{2440 + k % 2}.jpg"))
        os.makedirs(os.path.dirname(root / rel), exist_ok=True)
        cv2.imwrite(str(root / rel), img)
        paths.append(rel)
        lands.append(aligned[k % 2])
        bios.append(float(alignment.interocular(aligned[k % 2].reshape(49, 2))) ** 2)
    if biocular is not None:
        bios = biocular
    prefix = root / "BP4D_part1"
    _write(f"{prefix}_path.txt", "\n".join(paths) + "\n")
    _write(f"{prefix}_land.txt", "\n".join(" ".join(f"{v:.6f}" for v in l) for l in (land_rows or lands)) + "\n")
    _write(f"{prefix}_biocular.txt", "\n".join(f"{b:.6f}" for b in bios) + "\n")
    _write(f"{prefix}_AUoccur.txt", "\n".join(" ".join(["1"] + ["0"] * 11) for _ in range(n)) + "\n")
    return str(root), str(prefix)


def test_list_layout_reads_rows_and_unsquares_biocular(tmp_path):
    root, prefix = _list_files(tmp_path)
    assert list_layout.find_list_prefixes(root) == [(prefix, 1)]
    rows, weights = list_layout.read_list(prefix, 12)
    assert weights is None and len(rows) == 2
    ref = np.loadtxt(os.path.join(FIXTURES, "aligned_biocular.txt"))
    np.testing.assert_allclose([r.interocular for r in rows], np.sqrt(ref), rtol=1e-4)
    assert rows[0].labels.tolist() == [1] + [0] * 11
    assert rows[1].source == f"{prefix}_path.txt:2" and os.path.isfile(rows[1].image_file)
    assert list_layout.list_path_ids(rows[1].path, rows[1].source) == ("F001", "T1", 2441)
    image, lm = list_layout.load_aligned(rows[0].image_file, rows[0].landmarks, rows[0].source)
    assert image.shape == (200, 200, 3) and lm.shape == (49, 2)
    _write(f"{prefix}_weight.txt", " ".join(["1"] * 12) + "\n")
    assert list_layout.read_list(prefix, 12)[1].tolist() == [1.0] * 12


def test_list_layout_errors(tmp_path):
    root, prefix = _list_files(tmp_path, biocular=[50.0 ** 2])
    with pytest.raises(errors.BadInputError, match=r"BP4D_part1_biocular.txt: 1 rows, but the path list has 2"):
        list_layout.read_list(prefix, 12)
    d = float(alignment.interocular(np.loadtxt(os.path.join(FIXTURES, "aligned_land_49.txt"))[0].reshape(49, 2)))
    root, prefix = _list_files(tmp_path, biocular=[d, d])
    with pytest.raises(errors.BadInputError, match=r"BP4D_part1_biocular.txt:1: .* stores it SQUARED"):
        list_layout.read_list(prefix, 12)
    root, prefix = _list_files(tmp_path, land_rows=[[1.0] * 98, [1.0] * 96])
    rows = list_layout.read_list(prefix, 12)[0]       # a bad landmark row is a per-frame (skippable) problem
    assert rows[0].error is None and rows[1].error.endswith("BP4D_part1_land.txt:2: expected 98 numbers, got 96")
    with pytest.raises(errors.BadInputError, match=r"x_path.txt:3: image path 'F001/T1/a.jpg' is not"):
        list_layout.list_path_ids("F001/T1/a.jpg", "x_path.txt:3")
    raw = os.path.join(FIXTURES, "raw_BP4D_F001_T1_2440.jpg")
    with pytest.raises(errors.BadInputError, match=r"list layout holds aligned 200x200 faces"):
        list_layout.load_aligned(raw, np.zeros((49, 2)), "x_path.txt:1")


def test_list_prefixes_prefer_parts(tmp_path):
    for name in ("BP4D_combine_1_2", "BP4D_part1", "BP4D_part2", "BP4D_part3"):
        _write(tmp_path / "list" / f"{name}_path.txt", "")
    assert [(os.path.basename(p), k) for p, k in list_layout.find_list_prefixes(str(tmp_path))] == [
        ("BP4D_part1", 1), ("BP4D_part2", 2), ("BP4D_part3", 3)]
    assert list_layout.list_path_ids("x/SN003/17.jpg", "s") == ("SN003", "LeftVideoSN003_comp", 17)


def test_layout_detection(tmp_path):
    with pytest.raises(errors.BadInputError, match="neither the bp4d release layout"):
        base.detect_layout(str(tmp_path), "AUCoding/AU_OCC", "bp4d")
    os.makedirs(tmp_path / "AUCoding" / "AU_OCC")
    assert base.detect_layout(str(tmp_path), "AUCoding/AU_OCC", "bp4d") == "release"
    _write(tmp_path / "l" / "a_path.txt", "")
    with pytest.raises(errors.BadInputError, match="holds both"):
        base.detect_layout(str(tmp_path), "AUCoding/AU_OCC", "bp4d")
