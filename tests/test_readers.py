"""Parsers of the release and list layouts on small hand-written files: values, and errors naming
file and line."""
from __future__ import annotations

import collections
import os

import cv2
import numpy as np
import pytest

from algrnet_jax import au_sets
from data_pipelines import alignment, errors
from data_pipelines.builders import base, cache, examples, folds, label_files, landmark_files, list_layout, raw_frames

BP4D_AUS = au_sets.AU_SETS["bp4d"]
DISFA_AUS = au_sets.AU_SETS["disfa"]
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "jaanet_samples")


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


def test_landmark_rows_by_frame_and_errors(tmp_path):
    pts = np.arange(98, dtype=float).reshape(49, 2) + 1
    good = "".join(f"{f} " + " ".join(f"{v:.2f}" for v in (pts + f).ravel()) + "\n" for f in (3, 7))
    path = _write(tmp_path / "Landmarks" / "F001_T1.txt", "# frame x1 y1 ...\n" + good)
    rows = landmark_files.read_landmark_rows(path)
    assert sorted(rows) == [3, 7] and rows[7].line == 3
    np.testing.assert_allclose(rows[7].points, pts + 7)
    _write(path, good + "8 1 2 3\n")
    with pytest.raises(errors.BadInputError, match=r"F001_T1.txt:3: expected the frame number and 49"):
        landmark_files.read_landmark_rows(path)
    _write(path, good + good.splitlines()[0] + "\n")
    with pytest.raises(errors.BadInputError, match=r"F001_T1.txt:3: frame 3 repeated \(first on line 1\)"):
        landmark_files.read_landmark_rows(path)
    _write(path, good.replace("3 ", "3 x", 1))
    with pytest.raises(errors.BadInputError, match=r"F001_T1.txt:1: not a row of numbers"):
        landmark_files.read_landmark_rows(path)


def test_disfa_uses_points_18_to_66():
    pts = np.arange(132, dtype=float).reshape(66, 2)
    np.testing.assert_array_equal(landmark_files.disfa_49(pts), pts[17:])
    assert landmark_files.disfa_49(pts).shape == (49, 2)


def test_folds_json_subjects_and_unknown_subject():
    bp4d = folds.load_folds("BP4D")
    disfa = folds.load_folds("DISFA")
    assert len(bp4d) == 41 and len(disfa) == 27
    assert bp4d["F001"] == 1 and bp4d["M011"] == 2 and disfa["SN003"] == 3
    assert collections.Counter(bp4d.values()) == {1: 14, 2: 14, 3: 13}
    with pytest.raises(errors.BadInputError, match=r"x.csv: subject 'F999' is in no fold"):
        folds.fold_of("F999", bp4d, "x.csv")


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


def test_paralysis_folds_are_seeded_subject_exclusive_and_grade_stratified():
    rng = np.random.default_rng(0)
    videos = []
    for s in range(40):
        grade = s % 4
        for k in range(int(rng.integers(1, 4))):
            videos.append(label_files.ParalysisVideo(f"v{s}_{k}", f"S{s:02d}", 0, grade, None, len(videos) + 2))
    part_of = folds.paralysis_folds(videos, seed=0)
    assert set(part_of) == {f"S{s:02d}" for s in range(40)}        # one part per subject
    assert part_of == folds.paralysis_folds(videos, seed=0)         # deterministic
    assert part_of != folds.paralysis_folds(videos, seed=1)         # seeded
    per_part = collections.Counter(part_of.values())
    assert max(per_part.values()) - min(per_part.values()) <= 1
    for g in range(4):
        counts = collections.Counter(part_of[f"S{s:02d}"] for s in range(40) if s % 4 == g)
        assert sorted(counts) == [1, 2, 3] and max(counts.values()) - min(counts.values()) <= 1


def test_paralysis_folds_from_csv_column(tmp_path):
    path = _fpara_csv(tmp_path, [("a", "P1", 1, 2), ("b", "P2", 3, 1), ("c", "P1", 1, 3)],
                      header="video,subject,house_brackmann,fold")
    videos = label_files.read_fpara_csv(path)
    with pytest.raises(errors.BadInputError, match=r"line 4: subject 'P1' in folds 2 and 3"):
        folds.paralysis_folds(videos)
    path = _fpara_csv(tmp_path, [("a", "P1", 1, 2), ("b", "P2", 3, 1)], header="video,subject,house_brackmann,fold")
    assert folds.paralysis_folds(label_files.read_fpara_csv(path)) == {"P1": 2, "P2": 1}


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


def test_unreadable_video(tmp_path):
    bad = _write(tmp_path / "LeftVideoSN001_comp.avi", "not a video")
    with pytest.raises(errors.BadInputError, match=r"LeftVideoSN001_comp.avi: unreadable video"):
        list(raw_frames.iter_video(bad))
    with pytest.raises(errors.BadInputError, match=r"missing.avi: video file not found"):
        list(raw_frames.iter_video(str(tmp_path / "missing.avi")))


def test_subject_cache_replays_identical_frames(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (200, 200, 3), dtype=np.uint8) for _ in range(3)]
    calls = []

    def make():
        for i, im in enumerate(images):
            def load(i=i, im=im):
                calls.append(i)
                if i == 1:
                    raise errors.BadInputError(f"frame {i}: broken")
                return im, np.full((49, 2), float(i), np.float32)
            yield examples.Frame(key=f"S/T/{i}", subject="S", sequence="T", frame=i, fold=1, labels=[1, 0],
                               source=f"src{i}", load=load)

    def consume(frames):
        out = []
        for f in frames:
            try:
                out.append((f.key, f.labels, *(f.load() if f.load else (f.image, f.landmarks))))
            except errors.BadInputError as e:
                out.append((f.key, str(e)))
        return out

    inputs = [_write(tmp_path / "in.txt", "a")]
    subject_cache = cache.SubjectCache(str(tmp_path / "cache"))
    crashed = subject_cache.frames("S", inputs, make)
    next(crashed).load()                                  # a crash after one frame leaves no cache file
    crashed.close()
    assert os.listdir(tmp_path / "cache") == []
    first = consume(subject_cache.frames("S", inputs, make))
    assert calls == [0, 0, 1, 2] and os.path.exists(tmp_path / "cache" / "S.pkl")
    second = consume(subject_cache.frames("S", inputs, make))
    assert calls == [0, 0, 1, 2] and subject_cache.hits == 1       # replayed: nothing loaded again
    assert [x[0] for x in second] == [x[0] for x in first] and second[1] == first[1]
    for a, b in ((first[0], second[0]), (first[2], second[2])):
        np.testing.assert_array_equal(a[2], b[2])
        np.testing.assert_array_equal(a[3], b[3])
    _write(tmp_path / "in.txt", "changed input")             # inputs changed -> rebuilt
    consume(subject_cache.frames("S", inputs, make))
    assert calls[-3:] == [0, 1, 2]
