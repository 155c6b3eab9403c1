"""The real-data builders (bp4d, disfa, fpara) end to end on FAKE data in each original layout.

Tiny fake sets (1 subject per part x 2 sequences x 3 frames) are written by
``data_pipelines.synthetic.raw_layouts`` from the synthetic generator, built with tfds, and every
record is checked against what was written: ids, folds, labels, aligned landmarks, d_o, images.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from algrnet_jax import au_sets, cli
from data_pipelines import alignment, builders, errors, images
from data_pipelines.builders import base, bp4d, disfa, examples, folds, fpara, label_files, parts, raw_frames
from data_pipelines.synthetic import raw_layouts


LABEL_SET = {"bp4d": "bp4d", "disfa": "disfa", "fpara": "paralysis"}
SIZE = dict(subjects_per_part=1, sequences=2, frames=3)


@functools.lru_cache(maxsize=None)
def _examples(label_set: str):
    return raw_layouts.synthetic_examples(label_set, **SIZE)


def _write(name: str, layout: str, root: str, **kw):
    ex = _examples(LABEL_SET[name])
    if layout == "list":
        return raw_layouts.write_list(root, ex, LABEL_SET[name], **kw)
    writer = {"bp4d": raw_layouts.write_bp4d_release, "disfa": raw_layouts.write_disfa_release,
              "fpara": raw_layouts.write_fpara_release}[name]
    return writer(root, ex, **kw)


def _build(name, manual_dir, data_dir, config="default", **kwargs):
    tfds.disable_progress_bar()
    b = builders.get_builder(name, config, str(data_dir), **kwargs)
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return b


def _records(b, split="part1+part2+part3"):
    out = {}
    for r in examples.read_back(b, split):
        key = (r["subject"].decode(), r["sequence"].decode(), int(r["frame"]))
        assert key not in out
        out[key] = r
    return out


CASES = [("bp4d", "release", {}), ("bp4d", "list", {}), ("disfa", "release", {"frames_as": "video"}),
         ("disfa", "release", {"frames_as": "jpg"}), ("disfa", "list", {}), ("fpara", "release", {}),
         ("fpara", "list", {})]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(name, layout, kwargs) -> (builder, fake frames, manual dir); built lazily, once."""
    root = tmp_path_factory.mktemp("real")
    cache = {}

    def get(name, layout, kw):
        key = (name, layout, tuple(sorted(kw.items())))
        if key not in cache:
            tag = "_".join([name, layout, *map(str, kw.values())])
            manual = root / "manual" / tag
            frames = _write(name, layout, str(manual), **kw)
            cache[key] = (_build(name, manual, root / "tfds" / tag), frames, manual)
        return cache[key]
    return get


@pytest.mark.parametrize("name,layout,kw", CASES, ids=["-".join([n, l, *map(str, k.values())]) for n, l, k in CASES])
def test_records_match_the_files_written(built, name, layout, kw):
    b, frames, manual = built(name, layout, kw)
    recs = _records(b)
    if name == "fpara" and layout == "release":                   # parts: the seeded stratified split
        part_of = folds.paralysis_folds(label_files.read_fpara_csv(os.path.join(manual, "fpara.csv")))
        frames = [dataclasses.replace(f, fold=part_of[f.subject]) for f in frames]
    assert {s: b.info.splits[s].num_examples for s in parts.PARTS} == {
        f"part{p}": len(fs) for p, fs in raw_layouts.iter_parts(frames)}
    assert len(recs) == len(frames) == 18
    part_of = folds.load_folds(name.upper()) if name != "fpara" else None
    for f in frames:
        r = recs[(f.subject, f.sequence, f.frame)]
        assert r["image"].shape == (200, 200, 3) and r["image"].dtype == np.uint8
        assert int(r["fold"]) == f.fold
        if part_of is not None:
            assert part_of[f.subject] == f.fold                      # fake ids sit in their folds.json part
        np.testing.assert_array_equal(r["labels"], f.labels)
        np.testing.assert_allclose(r["landmarks"], f.aligned_landmarks, atol=1e-3)
        np.testing.assert_allclose(r["interocular"], alignment.interocular(f.aligned_landmarks), rtol=1e-4)
    # per-part label statistics in the metadata (what the AU loss weights come from)
    for p, fs in raw_layouts.iter_parts(frames):
        counts = b.info.metadata["label_counts"][f"part{p}"]
        labels = np.stack([f.labels for f in fs])
        if name == "fpara":
            assert counts["grades"] == np.bincount(labels[:, 0], minlength=4).tolist()
        else:
            assert counts["positives"] == (labels == 1).sum(0).tolist()
            assert counts["labelled"] == (labels >= 0).sum(0).tolist()


def test_bp4d_raw_frames_are_aligned_at_build_time(built):
    b, frames, _ = built("bp4d", "release", {})
    recs = _records(b)
    assert any(f.frame < 1000 for f in frames) and any(f.frame >= 1000 for f in frames)
    assert sum((f.labels == -1).sum() for f in frames) == 6           # BP4D 9 -> -1, AU24 of 6 frames
    for f in frames:
        raw = images.load_image(f.image_path)
        assert raw.shape[:2] != (200, 200)
        expected, _, _ = alignment.align_face(raw, f.raw_landmarks)
        got = recs[(f.subject, f.sequence, f.frame)]["image"]
        assert np.abs(got.astype(float) - expected).mean() < 3.0     # JPEG noise only (noisy faces)


def test_list_frames_are_kept(built):
    b, frames, _ = built("bp4d", "list", {})
    recs = _records(b)
    for f in frames:
        kept = images.load_image(f.image_path)
        assert np.abs(recs[(f.subject, f.sequence, f.frame)]["image"].astype(float) - kept).mean() < 3.0
    assert b.info.metadata["list_au_weights"] == {f"BP4D_part{k}": [1.0] * 12 for k in (1, 2, 3)}


def test_explicit_layout_configs(built, tmp_path):
    _, _, manual = built("disfa", "list", {})
    b = _build("disfa", manual, tmp_path, config="list")
    assert b.info.splits["part1"].num_examples == 6
    with pytest.raises(errors.BadInputError, match=r"ActionUnit_Labels: not found; config 'release' needs the disfa release layout"):
        _build("disfa", manual, tmp_path / "r", config="release")


def test_paralysis_split_is_seeded_subject_exclusive_and_stratified(built, tmp_path):
    b, frames, manual = built("fpara", "release", {})
    recs = _records(b)
    videos = label_files.read_fpara_csv(os.path.join(manual, "fpara.csv"))
    expected = folds.paralysis_folds(videos, seed=0)
    parts_of = collections.defaultdict(set)
    for r in recs.values():
        parts_of[r["subject"].decode()].add(int(r["fold"]))
    assert {s: p.pop() for s, p in parts_of.items() if len(p) == 1} == expected
    assert b.info.metadata["subject_folds"] == expected
    # a fold column in the CSV replaces the seeded split
    _write("fpara", "release", str(tmp_path / "m"), with_folds=True)
    b2 = _build("fpara", tmp_path / "m", tmp_path / "d")
    assert {(r["subject"].decode(), int(r["fold"])) for r in _records(b2).values()} == {
        (f.subject, f.fold) for f in frames}


def _copy(manual, tmp_path):
    dst = tmp_path / "manual"
    shutil.copytree(manual, dst)
    return dst


def _bad_build(name, manual, tmp_path, match, **kwargs):
    with pytest.raises(errors.BadInputError, match=match):
        _build(name, manual, tmp_path / "tfds_bad", **kwargs)


def test_bp4d_errors_name_file_and_line(built, tmp_path):
    _, frames, manual = built("bp4d", "release", {})
    m = _copy(manual, tmp_path)
    f = frames[1]
    os.remove(m / f.subject / f.sequence / f"{f.frame:04d}.jpg")
    _bad_build("bp4d", m, tmp_path, rf"{f.subject}_{f.sequence}.csv:3: frame {f.frame} is labelled but its image")
    b = _build("bp4d", m, tmp_path / "skip", skip_bad=True)          # skip_bad: skipped and reported
    assert sum(s.num_examples for s in b.info.splits.values()) == 17
    with open(os.path.join(b.data_dir, base.BAD_FRAMES_FILE)) as fh:
        assert json.load(fh)["num_bad_frames"] == 1
    m = _copy(manual, tmp_path / "2")
    lm_file = m / "Landmarks" / f"{f.subject}_{f.sequence}.txt"
    lines = lm_file.read_text().splitlines(keepends=True)
    lm_file.write_text(lines[0] + lines[2])
    _bad_build("bp4d", m, tmp_path, rf"{f.subject}_{f.sequence}.txt: no landmark row for frame {f.frame} "
                                    rf"\(labelled at .*csv:3\)")
    m = _copy(manual, tmp_path / "3")
    csv = m / "AUCoding" / "AU_OCC" / f"{f.subject}_{f.sequence}.csv"
    csv.write_text(csv.read_text().replace(",27", ",AU27x", 1))
    _bad_build("bp4d", m, tmp_path, r"csv:1: unknown AU column 'AU27x'")
    m = _copy(manual, tmp_path / "4")
    os.rename(m / "AUCoding" / "AU_OCC" / f"{f.subject}_{f.sequence}.csv", m / "AUCoding" / "AU_OCC" / "X999_T1.csv")
    _bad_build("bp4d", m, tmp_path, r"X999_T1.csv: subject 'X999' is in no fold of folds.json")


def test_disfa_errors_name_file_and_line(built, tmp_path):
    _, frames, manual = built("disfa", "release", {"frames_as": "video"})
    sid = frames[0].subject
    m = _copy(manual, tmp_path)
    (m / "Videos_LeftCamera" / f"LeftVideo{sid}_comp.avi").write_bytes(b"garbage")
    _bad_build("disfa", m, tmp_path, rf"LeftVideo{sid}_comp.avi: unreadable video")
    m = _copy(manual, tmp_path / "2")
    au = m / "ActionUnit_Labels" / sid / f"{sid}_au9.txt"
    au.write_text(au.read_text().replace("2,", "7,", 1))
    _bad_build("disfa", m, tmp_path, rf"{sid}_au9.txt:2: frames do not match .*{sid}_au1.txt")
    m = _copy(manual, tmp_path / "3")
    lm = m / "Landmarks" / f"{sid}.txt"
    lm.write_text(lm.read_text().replace("\n", " 5.0\n", 1))
    _bad_build("disfa", m, tmp_path, rf"{sid}.txt:1: expected the frame number and 66")
    m = _copy(manual, tmp_path / "4")
    for k in au_sets.AU_SETS["disfa"]:                               # a label row past the video's end
        au = m / "ActionUnit_Labels" / sid / f"{sid}_au{k}.txt"
        au.write_text(au.read_text() + "99,0\n")
    _bad_build("disfa", m, tmp_path, rf"{sid}_au1.txt:7: frame 98 is labelled but .*has only 6 readable frames")


def test_list_layout_errors_name_file_and_line(built, tmp_path):
    _, _, manual = built("bp4d", "list", {})
    m = _copy(manual, tmp_path)
    land = m / "list" / "BP4D_part2_land.txt"
    land.write_text("".join(land.read_text().splitlines(keepends=True)[:-1]))
    _bad_build("bp4d", m, tmp_path, r"BP4D_part2_land.txt: 5 rows, but the path list has 6 frames")
    m = _copy(manual, tmp_path / "2")
    os.rename(m / "list" / "BP4D_part1_path.txt", m / "list" / "BP4D_part3x_path.txt")
    for s in ("land", "biocular", "AUoccur", "weight"):
        os.rename(m / "list" / f"BP4D_part1_{s}.txt", m / "list" / f"BP4D_part3x_{s}.txt")
    p2 = (m / "list" / "BP4D_part2_path.txt").read_text()
    (m / "list" / "BP4D_part3_path.txt").write_text(p2)            # part-2 subjects listed as part 3
    _bad_build("bp4d", m, tmp_path, r"no list files \(<name>_part<k>_path.txt\) for part1 \(present: part2, part3\)"
                                    r".*--parts 2,3")
    _bad_build("bp4d", m, tmp_path, r"BP4D_part3_path.txt:1: subject '\w+' is in part 2, but the list is part 3",
               parts=(2, 3))


def test_release_build_resumes_from_finished_subjects(built, tmp_path, monkeypatch):
    _, frames, manual = built("bp4d", "release", {})
    m = _copy(manual, tmp_path)
    part2 = [f for f in frames if f.fold == 2]
    broken = m / part2[1].subject / part2[1].sequence / f"{part2[1].frame:04d}.jpg"
    good = broken.read_bytes()
    broken.write_bytes(good[: len(good) // 2])                         # truncated JPEG: the build crashes
    with pytest.raises(errors.BadInputError, match="truncated JPEG"):
        _build("bp4d", m, tmp_path / "tfds")
    broken.write_bytes(good)
    calls = []
    align = raw_frames.align_raw
    monkeypatch.setattr(raw_frames, "align_raw", lambda *a: calls.append(a[-1]) or align(*a))
    b = _build("bp4d", m, tmp_path / "tfds")                          # rerun: part 1 comes from the cache
    assert len(calls) == 12 and not any(f.image_path.endswith(c) for f in frames if f.fold == 1 for c in calls)
    assert not os.path.exists(os.path.join(tmp_path, "tfds", "downloads", "algrnet_cache"))  # removed after success
    fresh = _build("bp4d", m, tmp_path / "fresh", cache=False)
    a, c = _records(b), _records(fresh)
    assert a.keys() == c.keys()
    for k in a:                                                       # resumed records == a clean build
        np.testing.assert_array_equal(a[k]["image"], c[k]["image"])
        np.testing.assert_array_equal(a[k]["landmarks"], c[k]["landmarks"])


def test_data_stats_command(built, tmp_path, capsys):
    b, frames, _ = built("bp4d", "release", {})
    data_dir = os.path.dirname(os.path.dirname(os.path.dirname(b.data_dir)))
    out = tmp_path / "stats.png"
    assert cli.main(["data", "stats", "bp4d", "--data-dir", data_dir, "--out", str(out), "--subjects"]) == 0
    text = capsys.readouterr().out
    assert "bp4d/default (bp4d)" in text and os.path.getsize(out) > 1000
    part1 = next(line for line in text.splitlines() if line.startswith("part1"))
    labels = np.stack([f.labels for f in frames if f.fold == 1])
    rate = 100 * (labels == 1).sum(0) / (labels >= 0).sum(0)
    assert part1.split() == ["part1", "6", "1", *[f"{r:.1f}" for r in rate]]
    fb, _, _ = built("fpara", "list", {})
    fdir = os.path.dirname(os.path.dirname(os.path.dirname(fb.data_dir)))
    assert cli.main(["data", "stats", "fpara", "--data-dir", fdir, "--out", str(tmp_path / "f.png")]) == 0
    assert "normal" in capsys.readouterr().out
    assert cli.main(["data", "stats", "disfa", "--data-dir", str(tmp_path / "none")]) == 2
    assert "not built" in capsys.readouterr().err


def test_data_stats_on_synth_au(tmp_path, capsys):
    _build("synth_au", tmp_path, tmp_path / "tfds", config="bp4d_tiny")
    assert cli.main(["data", "stats", "synth_au", "--builder-config", "bp4d_tiny", "--data-dir",
                     str(tmp_path / "tfds"), "--out", str(tmp_path / "s.png")]) == 0
    text = capsys.readouterr().out
    assert "synth_au/bp4d_tiny (bp4d)" in text and "AU24" in text and os.path.isfile(tmp_path / "s.png")


def test_manual_instructions_name_every_file():
    for text, names in ((bp4d.Bp4d.MANUAL_DOWNLOAD_INSTRUCTIONS, ["AUCoding/AU_OCC", "Landmarks/", "_path.txt",
                                                                  "_biocular.txt", "SQUARED"]),
                        (disfa.Disfa.MANUAL_DOWNLOAD_INSTRUCTIONS, ["ActionUnit_Labels", "LeftVideo", "x66 y66"]),
                        (fpara.Fpara.MANUAL_DOWNLOAD_INSTRUCTIONS, ["fpara.csv", "house_brackmann", "_grade.txt"])):
        for n in names:
            assert n in text
    assert au_sets.AU_SETS["disfa"] == (1, 2, 4, 6, 9, 12, 25, 26)


def test_data_build_command_on_a_release_dir(built, tmp_path, capsys):
    _, _, manual = built("fpara", "release", {})
    assert cli.main(["data", "build", "fpara", "--manual-dir", str(manual), "--data-dir", str(tmp_path / "d")]) == 0
    assert "part1: 6 examples" in capsys.readouterr().out
    m = _copy(manual, tmp_path)
    csv = m / "fpara.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0], lines[1].rsplit(",", 1)[0] + ",9", *lines[2:]]) + "\n")
    assert cli.main(["data", "build", "fpara", "--manual-dir", str(m), "--data-dir", str(tmp_path / "e")]) == 2
    assert "fpara.csv:2: House-Brackmann score" in capsys.readouterr().err
