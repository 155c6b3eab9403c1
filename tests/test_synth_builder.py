"""synth_au builder (records = what the generator made) and the frame checks of builders/checks.py."""
from __future__ import annotations

import functools
import importlib.util
import json
import pathlib
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from algrnet_jax import au_sets
from data_pipelines import alignment, builders, errors, images, synthetic
from data_pipelines.builders import base, checks, examples, parts, raw_frames, synth_au


FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "jaanet_samples"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _read(builder, split, decode=True):
    return list(examples.read_back(builder, split, decode_images=decode))


@pytest.mark.parametrize("label_set", ["bp4d", "disfa", "paralysis"])
def test_builder_records_equal_generator(data_dir, label_set):
    builder = builders.get_builder("synth_au", f"{label_set}_tiny", data_dir)
    builder.download_and_prepare()
    cfg = builder.builder_config.synth_config()
    generated = list(synthetic.generate(cfg))
    assert sum(s.num_examples for s in builder.info.splits.values()) == len(generated) == synthetic.num_frames(cfg)
    n_labels = 1 if label_set == "paralysis" else len(au_sets.AU_SETS[label_set])
    for k in (1, 2, 3):
        want = [g for g in generated if g["fold"] == k]
        got = _read(builder, f"part{k}")
        for r, raw in zip(got, _read(builder, f"part{k}", decode=False)):
            r["jpeg"] = raw["image"]
        assert len(got) == len(want) > 0
        for g, r in zip(want, got):        # records keep the generation order
            assert r["subject"].decode() == g["subject"] and r["sequence"].decode() == g["sequence"]
            assert int(r["frame"]) == g["frame"] and int(r["fold"]) == k
            assert r["image"].shape == (200, 200, 3) and r["image"].dtype == np.uint8
            # the stored bytes are the generator's image as a q95 JPEG ...
            assert r["jpeg"] == images.encode_jpeg(g["image"])
            # ... which is that image up to JPEG's removal of the generator's sensor noise (std 3)
            decoded = cv2.imdecode(np.frombuffer(r["jpeg"], np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
            assert np.abs(decoded.astype(np.float64) - g["image"]).mean() < 4.0
            np.testing.assert_array_equal(r["landmarks"], g["landmarks"].astype(np.float32))
            np.testing.assert_allclose(r["interocular"], alignment.interocular(g["landmarks"]), rtol=1e-5)
            assert r["labels"].dtype == np.int8 and r["labels"].shape == (n_labels,)
            if label_set == "paralysis":
                assert int(r["labels"][0]) == g["grade"]
            else:
                np.testing.assert_array_equal(r["labels"], synthetic.occurrence(g["intensity"], label_set))
        # subject-exclusive parts
    subjects = [{r["subject"] for r in _read(builder, f"part{k}")} for k in (1, 2, 3)]
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])


def test_metadata_label_counts(data_dir):
    builder = builders.get_builder("synth_au", "bp4d_tiny", data_dir)
    builder.download_and_prepare()
    md = builders.get_builder("synth_au", "bp4d_tiny", data_dir).info.metadata     # read back from disk
    assert md["label_set"] == "bp4d" and md["aus"] == list(au_sets.AU_SETS["bp4d"])
    for k in (1, 2, 3):
        labels = np.stack([r["labels"] for r in _read(builder, f"part{k}")])
        counts = md["label_counts"][f"part{k}"]
        assert counts["num_examples"] == len(labels)
        assert counts["positives"] == (labels == 1).sum(0).tolist()
        assert counts["labelled"] == (labels >= 0).sum(0).tolist()
    report = json.loads((epath.Path(builder.data_dir) / base.BAD_FRAMES_FILE).read_text())
    assert report["num_bad_frames"] == 0


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("apache_beam", "mlcroissant")),
                    reason="the tfds command line needs the tfds-cli extra (requirements-tfds-cli.txt)")
def test_tfds_command_line_builds_the_dataset(tmp_path):
    """The shell command `tfds build data_pipelines/builders/synth_au.py --config bp4d_tiny` itself."""
    tfds_cli = pathlib.Path(sys.executable).parent / "tfds"
    proc = subprocess.run([str(tfds_cli), "build", synth_au.__file__, "--config", "bp4d_tiny",
                           "--data_dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = builders.get_builder("synth_au", "bp4d_tiny", str(tmp_path))
    assert built.is_prepared() and sum(s.num_examples for s in built.info.splits.values()) == 24


def test_tfds_build_finds_the_builder_module(tmp_path):
    """What `tfds build data_pipelines/builders/synth_au.py --config bp4d_tiny` runs (minus its beam import)."""
    from tensorflow_datasets.scripts.cli import build, cli_utils     # the tfds command line's own modules

    path = pathlib.Path(synth_au.__file__)
    build.Args(positional_datasets=[str(path)], paths=cli_utils.PathOptions(data_dir=str(tmp_path)),
               generation=cli_utils.GenerationOptions(config="bp4d_tiny")).execute()
    built = builders.get_builder("synth_au", "bp4d_tiny", str(tmp_path))
    assert built.is_prepared() and built.info.splits["part1"].num_examples > 0


def test_configs_and_registry():
    names = {c.name for c in synth_au.SynthAu.BUILDER_CONFIGS}
    for label_set in ("bp4d", "disfa", "paralysis"):
        for size in synthetic.SIZES:
            assert f"{label_set}_{size}" in names
    assert builders.builder_class("synth_au") is synth_au.SynthAu
    assert builders.REGISTRY["bp4d"] == "data_pipelines.builders.bp4d:Bp4d"
    with pytest.raises(ValueError, match="unknown dataset"):
        builders.builder_class("nope")
    with pytest.raises(ValueError, match="unknown config 'bp4d_huge'"):
        builders.get_builder("synth_au", "bp4d_huge", "/tmp/unused")


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("ALGRNET_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert builders.default_data_dir() == str(tmp_path / "data" / "tfds")
    monkeypatch.setenv("ALGRNET_DATA_DIR", "/somewhere/tfds")
    assert builders.default_data_dir() == "/somewhere/tfds"


def test_split_names():
    assert parts.train_split(1) == "part2+part3" and parts.test_split(1) == "part1"
    assert parts.train_split(3) == "part1+part2"
    with pytest.raises(ValueError, match="1..3"):
        parts.part_name(4)


# ----------------------------------------------------------------------------- bad input


def test_landmark_and_label_checks_name_the_source():
    lm = np.zeros((49, 2))
    with pytest.raises(errors.BadInputError, match="F001/T1/12: expected 49 landmarks"):
        checks.check_landmarks(np.zeros(96), "F001/T1/12")
    bad = lm.copy()
    bad[20, 1] = np.nan
    with pytest.raises(errors.BadInputError, match=r"F001/T1/12: landmarks contain NaN/inf at \(0-based\) points \[20\]"):
        checks.check_landmarks(bad, "F001/T1/12")
    assert checks.check_landmarks(np.arange(98.0), "x").shape == (49, 2)
    with pytest.raises(errors.BadInputError, match="a.csv row 3: expected 12 AU labels .*got 11"):
        checks.check_labels(np.zeros(11), "bp4d", "a.csv row 3")
    with pytest.raises(errors.BadInputError, match=r"label values \[9\]"):
        checks.check_labels([9] + [0] * 11, "bp4d", "a.csv row 3")
    with pytest.raises(errors.BadInputError, match="expected 1 grade"):
        checks.check_labels([1, 2], "paralysis", "video 7")
    np.testing.assert_array_equal(checks.check_labels([-1, 0, 1, 0, 0, 0, 0, 0], "disfa", "x"),
                                  [-1, 0, 1, 0, 0, 0, 0, 0])


class RawFiles(base.AlgrnetBuilder, skip_registration=True):
    """Raw release-style frames (the JAA-Net BP4D samples) aligned at build time; part 1 has a bad one."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [base.AlgrnetBuilderConfig(name="bp4d", label_set="bp4d")]
    pkg_dir_path = epath.Path(__file__).parent      # tests/ is not a package; tfds looks for metadata here
    ROOT: pathlib.Path = FIXTURES
    BAD: str = "missing.jpg"

    def _frames(self, part, dl_manager):
        raw = np.loadtxt(FIXTURES / "raw_land_49.txt")
        names = ["raw_BP4D_F001_T1_2440.jpg", "raw_BP4D_F001_T1_2441.jpg"]
        if part == 1:
            names.insert(1, self.BAD)
        for k, name in enumerate(names):
            path = self.ROOT / name
            lm = raw[0] if name.endswith("2440.jpg") else raw[1]
            yield examples.Frame(key=f"{part}/{k}", subject=f"F00{part}", sequence="T1", frame=k, fold=part,
                               labels=[0, 1] * 6, source=str(path),
                               load=functools.partial(raw_frames.load_and_align, path, lm))


def test_build_fails_naming_the_bad_file(tmp_path):
    with pytest.raises(errors.BadInputError, match="missing.jpg: image file not found"):
        RawFiles(data_dir=str(tmp_path / "d")).download_and_prepare()


def test_skip_bad_reports_the_skipped_frames(tmp_path):
    root = tmp_path / "release"
    shutil.copytree(FIXTURES, root)
    (root / "corrupt.jpg").write_bytes((FIXTURES / "raw_BP4D_F001_T1_2440.jpg").read_bytes()[:5000])

    class Corrupt(RawFiles, skip_registration=True):
        ROOT = root
        BAD = "corrupt.jpg"

    builder = Corrupt(data_dir=str(tmp_path / "d"), skip_bad=True)
    builder.download_and_prepare()
    assert builder.info.splits["part1"].num_examples == 2 and builder.info.splits["part2"].num_examples == 2
    report = json.loads((epath.Path(builder.data_dir) / base.BAD_FRAMES_FILE).read_text())
    assert report["num_bad_frames"] == 1
    (bad,) = report["bad_frames"]["part1"]
    assert bad["source"] == str(root / "corrupt.jpg") and "corrupt image" in bad["error"]
    assert bad["subject"] == "F001" and bad["frame"] == 1
    rec = _read(builder, "part1")[1]
    ref = np.loadtxt(FIXTURES / "aligned_land_49.txt").reshape(-1, 49, 2)[1]
    np.testing.assert_allclose(rec["landmarks"], ref, atol=1e-4)      # aligned at build time
