"""Subject -> part (builders/folds.py): folds.json, and the seeded, subject-exclusive, grade-stratified
paralysis split."""
from __future__ import annotations

import collections
import os

import numpy as np
import pytest

from data_pipelines import errors
from data_pipelines.builders import folds, label_files


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def _fpara_csv(tmp_path, rows, header="video,subject,house_brackmann"):
    return _write(tmp_path / "fpara.csv", header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))


def test_folds_json_subjects_and_unknown_subject():
    bp4d = folds.load_folds("BP4D")
    disfa = folds.load_folds("DISFA")
    assert len(bp4d) == 41 and len(disfa) == 27
    assert bp4d["F001"] == 1 and bp4d["M011"] == 2 and disfa["SN003"] == 3
    assert collections.Counter(bp4d.values()) == {1: 14, 2: 14, 3: 13}
    with pytest.raises(errors.BadInputError, match=r"x.csv: subject 'F999' is in no fold"):
        folds.fold_of("F999", bp4d, "x.csv")


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
