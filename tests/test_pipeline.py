"""Input pipeline: shapes, ranges, determinism, exact resume, eval padding, AU weights, geometry, the
subject-exclusive validation split and the record format."""
from __future__ import annotations

import pathlib

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from algrnet_jax import au_sets, configs
from algrnet_jax.errors import UserError
from data_pipelines import augment, builders, pipeline
from data_pipelines.builders import base, examples

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "jaanet_samples"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tfds"))
    for name in ("bp4d_tiny", "paralysis_tiny"):
        builders.get_builder("synth_au", name, d).download_and_prepare()
    return d


def _config(data_dir, size="tiny", name="algrnet", builder_config="bp4d_tiny", batch=4, val_fraction=0.0):
    """A config of the tiny synthetic set; ``val_fraction`` 0 (every training subject trains) unless asked."""
    c = configs.get_config(name, size)
    c.data.data_dir = data_dir
    c.data.builder_config = builder_config
    c.data.batch_size = batch
    c.data.eval_batch_size = batch
    c.data.val_fraction = val_fraction
    return c


def _records(data_dir, builder_config, split):
    b = builders.get_builder("synth_au", builder_config, data_dir)
    return list(examples.read_back(b, split))


def test_splits_and_counts(data_dir):
    c = _config(data_dir)
    assert pipeline.split_for(c, True) == "part2+part3" and pipeline.split_for(c, False) == "part1"
    c.data.fold = 2
    assert pipeline.split_for(c, True) == "part1+part3" and pipeline.split_for(c, False) == "part2"
    n = len(_records(data_dir, "bp4d_tiny", "part1+part3"))
    s = pipeline.make_source(c)
    assert s.train_split == "part1+part3" and s.test_split == "part2"
    assert len(s.train_records) == n and s.steps_per_epoch == n // 4


def test_train_batch_shapes_dtypes_range(data_dir):
    c = _config(data_dir)
    s = pipeline.make_source(c)
    batches = list(s.train_batches(0))
    assert len(batches) == s.steps_per_epoch
    b = batches[0]
    assert set(b) == {"image", "landmarks", "interocular", "labels", "mask"}
    assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.float32
    assert b["landmarks"].shape == (4, 49, 2) and b["landmarks"].dtype == np.float32
    assert b["interocular"].shape == (4,) and b["interocular"].dtype == np.float32
    assert b["labels"].shape == (4, 3) and b["labels"].dtype == np.int32
    assert b["mask"].shape == (4,) and (b["mask"] == 1).all()
    images = np.stack([x["image"] for x in batches])
    assert images.min() >= -1.0 and images.max() <= 1.0 and images.std() > 0.05
    assert set(np.unique(b["labels"])) <= {-1, 0, 1}


def test_paper_size_batch(data_dir):
    c = _config(data_dir, size="paper", batch=2)
    b = next(pipeline.make_source(c).train_batches(0))
    assert b["image"].shape == (2, 176, 176, 3) and b["labels"].shape == (2, 12)


def test_determinism_and_epochs_differ(data_dir):
    c = _config(data_dir)
    a = list(pipeline.make_source(c).train_batches(3))
    b = list(pipeline.make_source(c).train_batches(3))
    other = list(pipeline.make_source(c).train_batches(4))
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, other))
    c.data.shuffle_seed = 1
    reseeded = list(pipeline.make_source(c).train_batches(3))
    assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, reseeded))


def test_multi_process_rows(data_dir, monkeypatch):
    """Two processes: each gets its half of every global batch, together the single-process batches."""
    c = _config(data_dir)
    full = list(pipeline.make_source(c).train_batches(0))
    monkeypatch.setattr(pipeline.jax, "process_count", lambda: 2)
    halves = []
    for p in (0, 1):
        monkeypatch.setattr(pipeline.jax, "process_index", lambda p=p: p)
        halves.append(list(pipeline.make_source(c).train_batches(0)))
    for b, h0, h1 in zip(full, *halves):
        for k in b:
            np.testing.assert_array_equal(b[k], np.concatenate([h0[k], h1[k]]))


@pytest.mark.parametrize("start,val_fraction", [(1, 0.0), (3, 0.0), (1, 0.25)])
def test_resume_equals_tail_of_epoch(data_dir, start, val_fraction):
    c = _config(data_dir, val_fraction=val_fraction)
    full = list(pipeline.make_source(c).train_batches(1))
    tail = list(pipeline.make_source(c).train_batches(1, start))
    assert len(tail) == len(full) - start
    for x, y in zip(full[start:], tail):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert list(pipeline.make_source(c).train_batches(1, len(full))) == []
    with pytest.raises(ValueError, match="start_batch"):
        next(pipeline.make_source(c).train_batches(1, start_batch=len(full) + 1))


def test_train_epoch_is_a_permutation_with_recorded_augmentation(data_dir):
    """Every training record once per epoch; landmarks = record landmarks resized, cropped, flipped."""
    c = _config(data_dir)
    records = _records(data_dir, "bp4d_tiny", "part2+part3")
    n, bs = len(records), 4
    order = pipeline.epoch_permutation(0, 2, n)[: n // bs * bs]
    offsets, flips = pipeline.epoch_augmentation(0, 2, n, 36, 32)
    got = np.concatenate([b["landmarks"] for b in pipeline.make_source(c).train_batches(2)])
    labels = np.concatenate([b["labels"] for b in pipeline.make_source(c).train_batches(2)])
    cols = [au_sets.AU_SETS["bp4d"].index(a) for a in c.aus]
    assert len(set(order.tolist())) == len(order)
    assert flips[order].any() and not flips[order].all()
    for row, i in enumerate(order):
        lm = augment.crop_landmarks(augment.resize_landmarks(records[i]["landmarks"], 200, 36), offsets[i])
        if flips[i]:
            lm = augment.flip_landmarks(lm, 32)
        np.testing.assert_allclose(got[row], lm, atol=1e-4)
        np.testing.assert_array_equal(labels[row], records[i]["labels"][cols])


def test_eval_batches_order_padding_ids(data_dir):
    c = _config(data_dir, batch=8)
    records = _records(data_dir, "bp4d_tiny", "part1")
    batches = list(pipeline.make_source(c).eval_batches("test"))
    n = len(records)
    assert len(batches) == -(-n // 8)
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == n and (mask[:n] == 1).all() and (mask[n:] == 0).all()
    subjects = np.concatenate([b["subject"] for b in batches])
    frames = np.concatenate([b["frame"] for b in batches])
    assert subjects.tolist()[:n] == [r["subject"].decode() for r in records]
    assert frames[:n].tolist() == [int(r["frame"]) for r in records]
    assert (frames[n:] == -1).all() and all(s == "" for s in subjects[n:])
    labels = np.concatenate([b["labels"] for b in batches])
    assert (labels[n:] == -1).all()
    lm = np.concatenate([b["landmarks"] for b in batches])[:n]
    want = augment.crop_landmarks(augment.resize_landmarks(np.stack([r["landmarks"] for r in records]), 200, 36), [2, 2])
    np.testing.assert_allclose(lm, want, atol=1e-4)
    io = np.concatenate([b["interocular"] for b in batches])[:n]
    np.testing.assert_allclose(io, [r["interocular"] * 36 / 200 for r in records], rtol=1e-5)
    # the eval split is the fold's test part; another split can be asked for
    assert sum(b["mask"].sum() for b in pipeline.make_source(c).eval_batches("part2")) == len(
        _records(data_dir, "bp4d_tiny", "part2"))


def test_au_loss_weights_formula(data_dir):
    c = _config(data_dir, size="paper")
    labels = np.stack([r["labels"] for r in _records(data_dir, "bp4d_tiny", "part2+part3")]).astype(np.float64)
    rate = (labels == 1).sum(0) / (labels >= 0).sum(0)
    rate = np.where(rate > 0, rate, rate[rate > 0].min())
    w = (1 / rate) / (1 / rate).sum() * 12
    got = pipeline.make_source(c).loss_weights
    assert got.shape == (12,) and got.dtype == np.float32
    np.testing.assert_allclose(got, w, rtol=1e-5)
    np.testing.assert_allclose(got.sum(), 12, rtol=1e-5)
    small = _config(data_dir)        # config.aus = (1, 4, 12): the rates of those AUs, renormalised
    cols = [au_sets.AU_SETS["bp4d"].index(a) for a in small.aus]
    ws = 1 / rate[cols]
    np.testing.assert_allclose(pipeline.make_source(small).loss_weights, ws / ws.sum() * 3, rtol=1e-5)


def test_paralysis_batches_and_grade_weights(data_dir):
    c = _config(data_dir, name="algrnet_paralysis", builder_config="paralysis_tiny")
    b = next(pipeline.make_source(c).train_batches(0))
    assert b["labels"].shape == (4,) and b["labels"].dtype == np.int32
    assert set(np.unique(b["labels"])) <= {0, 1, 2, 3}
    grades = np.array([int(r["labels"][0]) for r in _records(data_dir, "paralysis_tiny", "part2+part3")])
    counts = np.bincount(grades, minlength=4).astype(np.float64)
    counts = np.where(counts > 0, counts, counts[counts > 0].min())
    w = (1 / counts) / (1 / counts).sum() * 4
    np.testing.assert_allclose(pipeline.make_source(c).loss_weights, w, rtol=1e-5)
    eb = next(pipeline.make_source(c).eval_batches("test"))
    assert eb["labels"].shape == (4,)


def test_task_and_label_set_mismatch_errors(data_dir):
    c = _config(data_dir, builder_config="paralysis_tiny")
    with pytest.raises(ValueError, match="does not match"):
        pipeline.make_source(c)
    c = _config(data_dir)
    c.aus = (1, 9)                                    # AU9 is a DISFA AU
    with pytest.raises(ValueError, match=r"\[9\]"):
        pipeline.make_source(c).loss_weights


def test_not_built_and_batch_size_errors(data_dir, tmp_path, monkeypatch):
    c = _config(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="algrnet data build synth_au --config bp4d_tiny"):
        pipeline.make_source(c)
    monkeypatch.setattr(pipeline.jax, "device_count", lambda: 3)
    c = _config(data_dir)
    with pytest.raises(ValueError, match="multiple of the number of devices"):
        pipeline.make_source(c)
    with pytest.raises(ValueError, match="eval_batch_size"):
        pipeline.make_source(c, training=False)


def _labels_and_landmarks(batches):
    return (np.concatenate([b["labels"] for b in batches]), np.concatenate([b["landmarks"] for b in batches]))


def test_data_source_is_resolved_once_and_describes_itself(data_dir):
    c = _config(data_dir, val_fraction=0.25)
    s = pipeline.make_source(c)
    assert isinstance(s, pipeline.DataSource)
    assert s.description == ("synth_au/bp4d_tiny fold 1: 12 train frames (3 subjects) / 4 val frames (1 subject) "
                             "/ 8 test frames")
    assert s.steps_per_epoch == 3 and s.has_validation and len(s.val_subjects) == 1
    assert s.loss_weights.shape == (3,) and s.loss_weights.dtype == np.float32
    # the test part of an evaluation-only source is the training source's
    for x, y in zip(s.eval_batches("test"), pipeline.make_source(c, training=False).eval_batches("test"),
                    strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("fold", [1, 3])
def test_validation_split_is_subject_exclusive(data_dir, fold):
    """Validation subjects: none in the training batches, none in the test part; training = the rest."""
    c = _config(data_dir, val_fraction=0.25)
    c.data.fold = fold
    s = pipeline.make_source(c)
    recs = _records(data_dir, "bp4d_tiny", s.train_split)
    subjects = np.array([r["subject"].decode() for r in recs])
    assert set(subjects[s.val_records]) == set(s.val_subjects)
    assert not set(subjects[s.train_records]) & set(s.val_subjects)
    assert sorted(np.concatenate([s.train_records, s.val_records]).tolist()) == list(range(len(recs)))
    # the training batches are made of the training records only: their labels and landmarks
    order = pipeline.epoch_permutation(0, 0, len(s.train_records))[: s.steps_per_epoch * 4]
    offsets, flips = pipeline.epoch_augmentation(0, 0, len(s.train_records), 36, 32)
    labels, landmarks = _labels_and_landmarks(list(s.train_batches(0)))
    cols = [au_sets.AU_SETS["bp4d"].index(a) for a in c.aus]
    for row, pos in enumerate(order):
        r = recs[s.train_records[pos]]
        assert r["subject"].decode() not in s.val_subjects
        lm = augment.crop_landmarks(augment.resize_landmarks(r["landmarks"], 200, 36), offsets[pos])
        if flips[pos]:
            lm = augment.flip_landmarks(lm, 32)
        np.testing.assert_allclose(landmarks[row], lm, atol=1e-4)
        np.testing.assert_array_equal(labels[row], r["labels"][cols])
    val = list(s.eval_batches("val"))
    n_val = len(s.val_records)
    assert s.num_records("val") == n_val and s.num_records("test") == s.num_test
    val_subjects = np.concatenate([b["subject"] for b in val])
    assert val_subjects[:n_val].tolist() == subjects[s.val_records].tolist()       # record order
    assert set(val_subjects[n_val:]) <= {""} and np.concatenate([b["mask"] for b in val]).sum() == n_val
    test_subjects = set(np.concatenate([b["subject"] for b in s.eval_batches("test")]).tolist()) - {""}
    assert test_subjects and not test_subjects & set(s.val_subjects)
    assert sum(b["mask"].sum() for b in s.eval_batches("test")) == s.num_test


def test_validation_split_is_seeded(data_dir):
    c = _config(data_dir, val_fraction=0.25)
    chosen = {pipeline.make_source(c).val_subjects for _ in range(2)}
    assert len(chosen) == 1                                      # deterministic in the seed
    c.data.shuffle_seed = 5                                      # the training order does not move it
    assert pipeline.make_source(c).val_subjects in chosen
    for seed in range(1, 10):
        c.data.val_seed = seed
        chosen.add(pipeline.make_source(c).val_subjects)
    assert len(chosen) > 1
    assert pipeline.validation_subjects(["a", "b", "c", "d"], 0.25, 3) == pipeline.validation_subjects(
        ["d", "c", "b", "a", "a"], 0.25, 3)                      # a function of the set of subjects
    assert len(pipeline.validation_subjects([f"s{i}" for i in range(20)], 0.1, 0)) == 2
    assert len(pipeline.validation_subjects([f"s{i}" for i in range(20)], 0.01, 0)) == 1   # at least one


def test_validation_fraction_zero_is_the_whole_training_split(data_dir):
    c = _config(data_dir, val_fraction=0.0)
    s = pipeline.make_source(c)
    n = len(_records(data_dir, "bp4d_tiny", "part2+part3"))
    np.testing.assert_array_equal(s.train_records, np.arange(n))
    assert not s.has_validation and s.val_subjects == () and s.steps_per_epoch == n // 4
    with pytest.raises(pipeline.DataError, match="val_fraction is 0"):
        next(s.eval_batches("val"))
    # a config saved before the field existed (a checkpoint's) trained on every training subject: so it does
    c.data = ml_collections.ConfigDict({k: v for k, v in c.data.items() if k not in ("val_fraction", "val_seed")})
    np.testing.assert_array_equal(pipeline.make_source(c).train_records, np.arange(n))


def test_loss_weights_come_from_the_training_subjects(data_dir):
    c = _config(data_dir, size="paper", val_fraction=0.25)
    s = pipeline.make_source(c)
    recs = _records(data_dir, "bp4d_tiny", s.train_split)
    labels = np.stack([recs[i]["labels"] for i in s.train_records]).astype(np.float64)
    rate = (labels == 1).sum(0) / np.maximum((labels >= 0).sum(0), 1)
    rate = np.where(rate > 0, rate, rate[rate > 0].min())
    np.testing.assert_allclose(s.loss_weights, (1 / rate) / (1 / rate).sum() * 12, rtol=1e-5)


def test_validation_fraction_errors(data_dir):
    c = _config(data_dir, val_fraction=0.9)                      # 4 training subjects: none would train
    with pytest.raises(pipeline.DataError, match="val_fraction = 0.9 takes 4 of the 4"):
        pipeline.make_source(c)
    c = _config(data_dir, val_fraction=0.5, batch=8)             # 8 training frames left: one batch of 8
    assert pipeline.make_source(c).steps_per_epoch == 1
    c = _config(data_dir, val_fraction=0.5, batch=12)
    with pytest.raises(pipeline.DataError, match="fewer than one batch of data.batch_size = 12"):
        pipeline.make_source(c)
    with pytest.raises(pipeline.DataError, match=r"\[0, 1\)"):
        pipeline.validation_subjects(["a"], 1.0, 0)


def test_tfrecord_dataset_asks_for_a_rebuild(tmp_path):
    """A dataset of an older build (TFRecord shards) gives one UserError with the command that rebuilds it."""
    old = builders.get_builder("synth_au", "bp4d_tiny", str(tmp_path))
    tfds.core.GeneratorBasedBuilder.download_and_prepare(old)        # tfds' default format, as before
    assert old.info.file_format.value == "tfrecord"
    c = _config(str(tmp_path))
    with pytest.raises(UserError, match=r"stored as tfrecord.*`algrnet data build synth_au --config bp4d_tiny "
                                        rf"--data-dir {tmp_path} --overwrite`"):
        pipeline.make_source(c)
    rebuilt = builders.get_builder("synth_au", "bp4d_tiny", str(tmp_path))
    rebuilt.download_and_prepare(download_config=tfds.download.DownloadConfig(
        download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS))       # what --overwrite does
    assert pipeline.make_source(c).steps_per_epoch == 4


def test_evaluation_source_needs_only_the_test_part(tmp_path):
    """A dataset built with --parts 1: evaluation on part 1 works; training on fold 1 says what is missing."""
    builders.get_builder("synth_au", "bp4d_tiny", str(tmp_path), parts=(1,)).download_and_prepare()
    c = _config(str(tmp_path), val_fraction=0.25)
    s = pipeline.make_source(c, training=False)
    assert s.steps_per_epoch == 0 and not s.has_validation and s.loss_weights.shape == (0,)
    assert sum(b["mask"].sum() for b in s.eval_batches("test")) == 8
    assert s.num_records("test") == 8 and s.num_records("part1") == 8 and s.label_set == "bp4d"
    with pytest.raises(pipeline.DataError, match="evaluation only"):
        next(s.eval_batches("val"))
    with pytest.raises(pipeline.DataError, match=r"has no part2, part3 \(built with --parts 1\)"):
        pipeline.make_source(c)
    c.data.fold = 2
    with pytest.raises(pipeline.DataError, match="split 'part2' is not in"):
        next(pipeline.make_source(c, training=False).eval_batches("test"))
    with pytest.raises(pipeline.DataError, match="split 'part2' is not in"):
        pipeline.make_source(c, training=False).num_records("test")


def test_streams_interleaved_equal_streams_alone(data_dir):
    """A training epoch and evaluations drawn between its batches (as a trainer's mid-epoch eval) do not
    disturb each other."""
    s = pipeline.make_source(_config(data_dir, val_fraction=0.25))
    alone_train, alone_val = list(s.train_batches(1)), list(s.eval_batches("val"))
    train, vals = [], []
    for b in s.train_batches(1):
        train.append(b)
        vals.append(list(s.eval_batches("val")))
    for x, y in zip(alone_train, train, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    for v in vals:
        for x, y in zip(alone_val, v, strict=True):
            for k in x:
                np.testing.assert_array_equal(x[k], y[k])


class DotFaces(base.AlgrnetBuilder, skip_registration=True):
    """Grey faces with one bright dot at landmark 19 (left eye corner); tests geometry end to end."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [base.AlgrnetBuilderConfig(name="bp4d", label_set="bp4d")]
    POINT = 19
    pkg_dir_path = epath.Path(__file__).parent      # tests/ is not a package; tfds looks for metadata here

    def _frames(self, part, dl_manager):
        rng = np.random.default_rng(part)
        base = np.loadtxt(FIXTURES / "aligned_land_49.txt").reshape(-1, 49, 2)[0]
        for k in range(6):
            lm = base + rng.uniform(-6, 6, size=2)
            image = np.full((200, 200, 3), 30, np.uint8)
            x, y = np.round(lm[self.POINT]).astype(int)
            lm[self.POINT] = (x, y)
            image[y - 2:y + 3, x - 2:x + 3] = 255
            yield examples.Frame(key=f"p{part}_{k}", subject=f"s{part}", sequence="t", frame=k, fold=part,
                               labels=np.zeros(12), source=f"dot {part}/{k}", image=image, landmarks=lm)


@pytest.mark.parametrize("size", ["paper", "tiny"])
def test_pixels_and_landmarks_move_together(tmp_path, monkeypatch, size):
    DotFaces(data_dir=str(tmp_path)).download_and_prepare()
    monkeypatch.setitem(builders.REGISTRY, "dot_faces", f"{__name__}:DotFaces")
    c = _config(str(tmp_path), size=size)
    c.data.dataset, c.data.builder_config = "dot_faces", "bp4d"
    crop = c.crop_size
    reflect = np.asarray(au_sets.REFLECT_49)
    seen_flip = set()
    for epoch in range(2):
        for b in pipeline.make_source(c).train_batches(epoch):
            for img, lm in zip(augment.denormalize(b["image"]), b["landmarks"]):
                w = np.clip(img[..., 0].astype(np.float64) - 40.0, 0, None)   # background 30
                ys, xs = np.mgrid[:crop, :crop]
                dot = np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])
                # the dot is landmark 19 unless the face was flipped: then it is the point that took
                # landmark 19's mirrored coordinates, REFLECT_49[19] (= 28)
                d_plain = np.abs(dot - lm[DotFaces.POINT]).max()
                d_flip = np.abs(dot - lm[reflect[DotFaces.POINT]]).max()
                assert min(d_plain, d_flip) < 0.3, (dot, lm[DotFaces.POINT], lm[reflect[DotFaces.POINT]])
                seen_flip.add(bool(d_flip < d_plain))
    assert seen_flip == {True, False}
