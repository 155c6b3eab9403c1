"""Synthetic AU generator: determinism, labels and their statistics, AU locality, geometry, paralysis,
folds, raw frames."""
from __future__ import annotations

import dataclasses
import os

import cv2
import numpy as np
import pytest

from algrnet_jax import au_sets
from data_pipelines import alignment, synthetic
from data_pipelines.synthetic import face, generator, preview

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "jaanet_samples")
TINY = synthetic.SIZES["tiny"]


def _frames(cfg):
    return list(synthetic.generate(cfg))


@pytest.fixture(scope="module")
def tiny_frames():
    return _frames(TINY)


def test_generate_keys_shapes_and_count(tiny_frames):
    assert len(tiny_frames) == synthetic.num_frames(TINY) == 24
    ex = tiny_frames[5]
    assert ex["image"].shape == (200, 200, 3) and ex["image"].dtype == np.uint8
    assert ex["landmarks"].shape == (49, 2) and ex["landmarks"].dtype == np.float32
    assert ex["intensity"].shape == (len(au_sets.SYNTH_AUS),) and ex["intensity"].dtype == np.float32
    assert ex["subject"] == "S002" and ex["sequence"] == "S002_Q1" and ex["frame"] == 1 and ex["grade"] == 0
    assert all(0 <= e["intensity"].min() and e["intensity"].max() <= 5 for e in tiny_frames)
    assert [e["frame"] for e in tiny_frames[:4]] == [0, 1, 2, 3]
    np.testing.assert_array_equal(np.stack([e["intensity"] for e in tiny_frames]), generator.all_intensities(TINY))
    small = _frames(dataclasses.replace(TINY, num_subjects=1, frames_per_sequence=1, image_size=100))
    assert small[0]["image"].shape == (100, 100, 3) and small[0]["landmarks"].max() < 100


def test_deterministic_from_seed(tiny_frames):
    again = _frames(TINY)
    other = _frames(dataclasses.replace(TINY, seed=1))
    for a, b in zip(tiny_frames, again):
        assert a["image"].tobytes() == b["image"].tobytes()
        assert a["landmarks"].tobytes() == b["landmarks"].tobytes()
        assert a["intensity"].tobytes() == b["intensity"].tobytes()
    assert not np.array_equal(tiny_frames[0]["image"], other[0]["image"])
    assert not np.array_equal(generator.all_intensities(TINY),
                              generator.all_intensities(dataclasses.replace(TINY, seed=1)))


def test_sizes_and_bad_config():
    assert synthetic.num_frames(synthetic.SIZES["tiny"]) <= 30
    assert 2500 <= synthetic.num_frames(synthetic.SIZES["small"]) <= 4000
    assert 8000 <= synthetic.num_frames(synthetic.SIZES["medium"]) <= 12000
    with pytest.raises(ValueError, match="sizes must be >= 1"):
        next(synthetic.generate(dataclasses.replace(TINY, num_subjects=0)))


def test_hidden_aus_are_labelled_but_not_drawn(monkeypatch):
    """``hidden_aus``: the frame (pixels and landmarks) does not depend on a hidden AU's intensity, its label does;
    the ``bp4d_small_hidden2`` builder config hides AU2."""
    cfg = dataclasses.replace(TINY, num_subjects=1, frames_per_sequence=2, noise_std=0.0)
    i2 = face.AU_INDEX[2]

    def frames(au2: float, hidden: tuple[int, ...]):
        def fixed(rng, c):
            x = np.zeros((c.frames_per_sequence, face.NUM_AUS), np.float32)
            x[:, face.AU_INDEX[1]] = 4.0
            x[:, i2] = au2
            return x
        monkeypatch.setattr(generator, "intensities", fixed)
        return _frames(dataclasses.replace(cfg, hidden_aus=hidden))

    hidden_on, hidden_off = frames(5.0, (2,)), frames(0.0, (2,))
    drawn_on, drawn_off = frames(5.0, ()), frames(0.0, ())
    for a, b in zip(hidden_on, hidden_off):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["landmarks"], b["landmarks"])
        assert synthetic.occurrence(a["intensity"], "bp4d")[1] == 1 and synthetic.occurrence(b["intensity"], "bp4d")[1] == 0
    np.testing.assert_array_equal(hidden_off[0]["image"], drawn_off[0]["image"])
    assert not np.array_equal(drawn_on[0]["image"], drawn_off[0]["image"])     # AU2 is drawn without the option
    with pytest.raises(ValueError, match="hidden_aus"):
        next(synthetic.generate(dataclasses.replace(cfg, hidden_aus=(3,))))
    from data_pipelines.builders import synth_au
    config = {c.name: c for c in synth_au.SynthAu.BUILDER_CONFIGS}["bp4d_small_hidden2"]
    assert config.synth_config().hidden_aus == (2,) and config.synth_config().num_subjects == 24


def test_occurrence_label_sets():
    x = np.zeros((3, 15), np.float32)
    x[0, generator.face.AU_INDEX[12]] = 2.0
    x[1, generator.face.AU_INDEX[26]] = 1.99
    x[2, generator.face.AU_INDEX[1]] = 4.0
    bp4d, disfa = synthetic.occurrence(x, "bp4d"), synthetic.occurrence(x, "disfa")
    assert bp4d.shape == (3, 12) and disfa.shape == (3, 8) and bp4d.dtype == np.int8
    assert bp4d[0, au_sets.AU_SETS["bp4d"].index(12)] == 1 and bp4d[0].sum() == 1
    assert disfa[1].sum() == 0 and disfa[2, 0] == 1
    with pytest.raises(ValueError, match="unknown label set"):
        synthetic.occurrence(x, "nope")
    with pytest.raises(ValueError, match="15 entries"):
        synthetic.occurrence(x[:, :12], "bp4d")


def test_label_rates_and_relations_at_small_size():
    inten = generator.all_intensities(synthetic.SIZES["small"])
    occ = inten >= 2.0
    rates = occ.mean(0)
    for au, r in zip(au_sets.SYNTH_AUS, rates):
        assert 0.08 <= r <= 0.6, f"AU{au} rate {r:.3f}"
    col = {a: occ[:, i] for a, i in face.AU_INDEX.items()}
    p12 = col[12].mean()
    assert col[12][col[6]].mean() > 1.8 * p12, "P(12|6) should be well above P(12)"
    assert col[4][col[15]].mean() > 1.5 * col[4].mean()
    assert col[26][col[2]].mean() > 1.5 * col[26].mean()
    assert col[23][col[24]].mean() > 1.5 * col[23].mean()
    assert col[10][col[9]].mean() > 1.5 * col[10].mean()
    raw = {a: inten[:, i] for a, i in face.AU_INDEX.items()}
    assert not np.any((raw[12] > 0) & (raw[15] > 0)) and not np.any(col[12] & col[15])
    assert not np.any((raw[24] > 0) & (raw[25] > 0)) and not np.any(col[24] & col[25])
    # Smooth over frames: consecutive-frame changes are small relative to the range.
    seq = inten.reshape(-1, synthetic.SIZES["small"].frames_per_sequence, 15)
    assert np.abs(np.diff(seq, axis=1)).mean() < 0.35


def _render(subj, intensity, size=200):
    pose = np.zeros(4)
    n = subj.noise[:size, :size]
    return generator.render_frame(subj, intensity, pose, n, size)


@pytest.mark.parametrize("au", au_sets.SYNTH_AUS)
def test_each_au_changes_pixels_only_in_its_region(au):
    cfg = dataclasses.replace(TINY, seed=3)
    for i in (0, 4):
        subj = generator.make_subject(cfg, i)
        base = np.zeros(15, np.float32)
        off, lm_off = _render(subj, base)
        on_i = base.copy()
        on_i[face.AU_INDEX[au]] = 5.0
        on, lm_on = _render(subj, on_i)
        changed = np.any(on != off, -1)
        mask = synthetic.au_region_mask(au, lm_off)
        assert changed.sum() > 60, f"AU{au} changes only {changed.sum()} pixels"
        outside = changed & ~mask
        assert not outside.any(), f"AU{au} changed {outside.sum()} pixels outside its region"
        limit = 0.6 if au == 26 else 0.3       # the jaw drop moves the whole chin
        assert mask.mean() < limit, f"AU{au} region covers {mask.mean():.2f} of the image"
        moved = np.linalg.norm(lm_on - lm_off, axis=-1) > 1e-4
        assert mask[np.clip(np.round(lm_off[moved, 1]).astype(int), 0, 199),
                    np.clip(np.round(lm_off[moved, 0]).astype(int), 0, 199)].all()


def test_au_region_mask_rejects_unknown_au():
    with pytest.raises(ValueError, match="AU5 is not rendered"):
        synthetic.au_region_mask(5, face.TEMPLATE)


def test_landmarks_sit_on_their_facial_parts(tiny_frames):
    ref = np.loadtxt(os.path.join(FIXTURES, "aligned_land_49.txt")).reshape(-1, 49, 2)
    np.testing.assert_allclose(face.TEMPLATE, ref.mean(0), atol=0.06)
    for lm in [face.TEMPLATE] + [e["landmarks"] for e in tiny_frames]:
        brows, nose, eyes, mouth = lm[:10], lm[10:19], lm[19:31], lm[31:49]
        assert brows[:, 1].max() < eyes[:, 1].min()
        assert eyes[:, 1].mean() < nose[:, 1].mean() < mouth[:, 1].min()
        assert lm[:5, 0].mean() < lm[5:10, 0].mean()                  # image-left brow is 0-4
        assert lm[19:25, 0].max() < lm[25:31, 0].min()                  # image-left eye is 19-24
        assert lm[31, 0] < lm[37, 0] and lm[14, 0] < lm[18, 0]
        assert lm[34, 1] < lm[40, 1]                                    # upper lip above lower lip
        assert np.all((lm > 0) & (lm < 200))
        # AU centres (au_sets rules) land on their parts: AU1/2/4 around the brows, AU12 at the corners.
        assert abs(lm[[4, 5], 1].mean() - brows[:, 1].mean()) < 15 and lm[[31, 37], 1].mean() > nose[:, 1].max()
    ref_io = alignment.interocular(ref.mean(0))
    assert all(abs(synthetic.interocular(e["landmarks"]) / ref_io - 1) < 0.2 for e in tiny_frames)


def test_faces_differ_between_subjects(tiny_frames):
    firsts = [e["image"].astype(np.float32) for e in tiny_frames[::4]]
    means = np.array([f.mean((0, 1)) for f in firsts])
    assert np.ptp(means, 0).max() > 15
    lms = np.stack([e["landmarks"] for e in tiny_frames[::4]])
    assert np.ptp(synthetic.interocular(lms)) > 1.0


def test_paralysis_grades_and_weak_side():
    cfg = dataclasses.replace(TINY, num_subjects=12, paralysis=True)
    grades = [generator.subject_grade(cfg, i) for i in range(12)]
    assert sorted(set(grades)) == [0, 1, 2, 3]
    for f in (1, 2, 3):
        assert sorted(g for i, g in enumerate(grades) if generator.subject_fold(i) == f) == [0, 1, 2, 3]
    frames = _frames(dataclasses.replace(cfg, frames_per_sequence=1))
    assert [e["grade"] for e in frames] == grades
    assert all(e["grade"] == 0 for e in _frames(TINY))
    for i, g in enumerate(grades):
        ident = generator.make_subject(cfg, i).identity
        on = np.zeros(15)
        for au in (1, 2, 12, 26):
            on[face.AU_INDEX[au]] = 5.0
        lm0, _ = face.geometry(ident, np.zeros(15))
        lm1, _ = face.geometry(ident, on)
        move = np.linalg.norm(lm1 - lm0, axis=-1)
        pairs = [(31, 37), (0, 9), (1, 8), (3, 6)]                  # (image-left, image-right) mirrored points
        left = sum(move[a] for a, _ in pairs)
        right = sum(move[b] for _, b in pairs)
        weak, strong = (left, right) if ident.side == 0 else (right, left)
        ratio = weak / strong
        assert abs(ratio - face.PARALYSIS_FACTOR[g]) < 0.12, (g, ratio)
        if g:
            droop = lm0 - ident.landmarks
            corner = 31 if ident.side == 0 else 37
            assert droop[corner, 1] > 0.5 * g


def test_folds_subject_exclusive_and_balanced():
    cfg = dataclasses.replace(TINY, num_subjects=9, frames_per_sequence=1)
    seen: dict[str, int] = {}
    for e in synthetic.generate(cfg):
        assert seen.setdefault(e["subject"], e["fold"]) == e["fold"]
    assert sorted(seen.values()) == [1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_to_raw_places_face_by_a_similarity(tiny_frames):
    rng = np.random.default_rng(0)
    for e in tiny_frames[:6]:
        raw, raw_lm = synthetic.to_raw(e["image"], e["landmarks"], rng)
        assert raw.shape == (480, 640, 3) and raw.dtype == np.uint8 and raw_lm.dtype == np.float32
        assert raw_lm.min() >= 0 and raw_lm[:, 0].max() < 640 and raw_lm[:, 1].max() < 480
        m, _ = cv2.estimateAffinePartial2D(e["landmarks"], raw_lm)
        np.testing.assert_allclose(e["landmarks"] @ m[:, :2].T + m[:, 2], raw_lm, atol=1e-3)
        ang = np.degrees(np.arctan2(m[1, 0], m[0, 0]))
        assert abs(ang) <= 15.01
        back = cv2.warpAffine(raw, cv2.invertAffineTransform(m), (200, 200))
        diff = np.abs(back[20:180, 20:180].astype(np.float32) - e["image"][20:180, 20:180])
        assert diff.mean() < 12
        corner = raw[:20, :20].reshape(-1, 3)
        assert np.abs(corner.astype(np.float32) - 128).mean() > 1 or corner.std() > 0
    raw, _ = synthetic.to_raw(tiny_frames[0]["image"], tiny_frames[0]["landmarks"], np.random.default_rng(1),
                              (240, 320))
    assert raw.shape == (240, 320, 3)


def test_interocular_is_the_alignment_one():
    lm = face.TEMPLATE
    np.testing.assert_allclose(synthetic.interocular(lm), np.linalg.norm(lm[25:31].mean(0) - lm[19:25].mean(0)))


def test_preview_script_writes_a_grid(tmp_path):
    out = tmp_path / "grid.png"
    assert preview.main(["--out", str(out), "--size", "tiny", "--timing-frames", "0"]) == 0
    img = cv2.imread(str(out))
    # 6 sampled sequences + neutral + 15 single AUs + 4 grades + 4 raw frames = 30 tiles -> 4 rows of 8
    assert img.shape == (4 * (preview.TILE + preview.CAPTION), preview.COLUMNS * preview.TILE, 3)
