"""Label files of the three releases (builders/label_files.py) on small hand-written files: values, and
errors naming file and line."""
from __future__ import annotations

import os

import numpy as np
import pytest

from algrnet_jax import au_sets
from data_pipelines import errors
from data_pipelines.builders import label_files

BP4D_AUS = au_sets.AU_SETS["bp4d"]
DISFA_AUS = au_sets.AU_SETS["disfa"]


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def _bp4d_csv(tmp_path, rows, header=None):
    header = header or ["", *map(str, range(1, 28))]
    lines = [",".join(header)] + [",".join(map(str, r)) for r in rows]
    return _write(tmp_path / "AU_OCC" / "F001_T1.csv", "\n".join(lines) + "\n")


def _bp4d_row(frame, on=(), unknown=()):
    return [frame] + [9 if a in unknown else int(a in on) for a in range(1, 28)]


def test_bp4d_labels_pick_au_columns_and_map_9_to_unknown(tmp_path):
    path = _bp4d_csv(tmp_path, [_bp4d_row(1, on=(1, 12)), _bp4d_row(2, unknown=(24,)), _bp4d_row(10, on=(3,))])
    rows = label_files.read_bp4d_labels(path, BP4D_AUS)
    assert rows.frames.tolist() == [1, 2, 10]
    assert rows.lines.tolist() == [2, 3, 4]
    assert rows.labels.dtype == np.int8 and rows.labels.shape == (3, 12)
    assert rows.labels[0].tolist() == [1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]
    assert rows.labels[1, -1] == -1 and (rows.labels[1, :-1] == 0).all()
    assert (rows.labels[2] == 0).all()  # AU3 is not a BP4D AU: its column is ignored


@pytest.mark.parametrize("header,rows,match", [
    (["frame", "1", "2", "smile"], [], r"F001_T1.csv:1: unknown AU column 'smile'"),
    (["frame", "1", "2"], [], r"F001_T1.csv:1: no column for AU 4, 6"),
    (None, [_bp4d_row(1), [2, 0, 5] + [0] * 25], r"F001_T1.csv:3: AU values \[5\] not in 0/1/9"),
    (None, [_bp4d_row(1), _bp4d_row(1)], r"F001_T1.csv:3: frame 1 repeated \(first on line 2\)"),
    (None, [_bp4d_row(1), [2, 0, 1]], r"F001_T1.csv:3: 3 columns, the header has 28"),
])
def test_bp4d_label_errors_name_file_and_line(tmp_path, header, rows, match):
    path = _bp4d_csv(tmp_path, rows, header)
    with pytest.raises(errors.BadInputError, match=match):
        label_files.read_bp4d_labels(path, BP4D_AUS)


def test_bp4d_label_file_missing(tmp_path):
    with pytest.raises(errors.BadInputError, match="nope.csv: label file not found"):
        label_files.read_bp4d_labels(str(tmp_path / "nope.csv"), BP4D_AUS)


def _disfa_labels(tmp_path, intensities, frames=None, aus=DISFA_AUS):
    d = tmp_path / "ActionUnit_Labels"
    for k, au in enumerate(aus):
        fr = frames[au] if frames and au in frames else range(1, len(intensities) + 1)
        _write(d / "SN001" / f"SN001_au{au}.txt",
               "".join(f"{f},{intensities[j][k]}\n" for j, f in enumerate(fr)))
    return str(d)


def test_disfa_occurrence_is_intensity_at_least_2(tmp_path):
    inten = [[0, 1, 2, 3, 4, 5, 0, 1], [5, 0, 0, 0, 0, 0, 2, 1]]
    d = _disfa_labels(tmp_path, inten)
    rows = label_files.read_disfa_labels(d, "SN001", DISFA_AUS)
    assert rows.frames.tolist() == [1, 2]
    assert rows.labels.tolist() == [[0, 0, 1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0, 1, 0]]


def test_disfa_label_errors(tmp_path):
    inten = [[0] * 8, [0] * 8, [0] * 8]
    d = _disfa_labels(tmp_path, inten, frames={9: [1, 2, 4]})
    with pytest.raises(errors.BadInputError, match=r"SN001_au9.txt:3: frames do not match .*SN001_au1.txt"):
        label_files.read_disfa_labels(d, "SN001", DISFA_AUS)
    os.remove(os.path.join(d, "SN001", "SN001_au9.txt"))
    with pytest.raises(errors.BadInputError, match=r"SN001_au9.txt: label file of AU9 not found"):
        label_files.read_disfa_labels(d, "SN001", DISFA_AUS)
    _write(os.path.join(d, "SN001", "SN001_au9.txt"), "1,0\n2,7\n3,0\n")
    with pytest.raises(errors.BadInputError, match=r"SN001_au9.txt:2: intensity must be an integer 0..5"):
        label_files.read_disfa_labels(d, "SN001", DISFA_AUS)


def _fpara_csv(tmp_path, rows, header="video,subject,house_brackmann"):
    return _write(tmp_path / "fpara.csv", header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))


def test_fpara_csv_grades_and_errors(tmp_path):
    path = _fpara_csv(tmp_path, [("a.avi", "P1", 1), ("b.avi", "P1", 2), ("c.avi", "P2", 4), ("d.avi", "P3", 6)])
    videos = label_files.read_fpara_csv(path)
    assert [v.grade for v in videos] == [0, 1, 2, 3] and [v.line for v in videos] == [2, 3, 4, 5]
    path = _fpara_csv(tmp_path, [("a.avi", "P1", 7)])
    with pytest.raises(errors.BadInputError, match=r"fpara.csv:2: House-Brackmann score: .*1..6"):
        label_files.read_fpara_csv(path)
    path = _fpara_csv(tmp_path, [("a.avi", "P1", 1)], header="video,house_brackmann")
    with pytest.raises(errors.BadInputError, match=r"fpara.csv:1: missing column\(s\) subject"):
        label_files.read_fpara_csv(path)
    path = _fpara_csv(tmp_path, [("a.avi", "P1", 1), ("a.avi", "P2", 1)])
    with pytest.raises(errors.BadInputError, match=r"fpara.csv:3: video 'a.avi' repeated"):
        label_files.read_fpara_csv(path)
