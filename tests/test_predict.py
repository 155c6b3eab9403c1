"""`algrnet predict`: a real photo, synthetic faces pasted into larger frames, a synthetic video with empty
frames, bad inputs, the CSV layout, 68 -> 49 landmarks, --skip-existing. The network is a small stand-in
(its landmarks are a fixed aligned-face template), so that the tests exercise detection, alignment,
tracking and outputs in seconds; the real networks' outputs are tested in test_inference / test_parity."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib

import cv2
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algrnet_jax import configs, inference, predict
from algrnet_jax.errors import UserError
from algrnet_jax.predict import faces as faces_lib
from algrnet_jax.predict import media, outputs
from algrnet_jax.checkpoints import save_inference_checkpoint
from data_pipelines import alignment
from data_pipelines.synthetic import face as synth_face
from data_pipelines.synthetic import generator

pytest.importorskip("mtcnn")
ASTRONAUT = pathlib.Path(__file__).parent / "fixtures" / "astronaut.jpg"


def _synth_frames(n: int) -> list[dict]:
    cfg = dataclasses.replace(generator.SIZES["tiny"], num_subjects=3, frames_per_sequence=max(n // 3, 1))
    return list(generator.generate(cfg))[:n]


def _template(config) -> np.ndarray:
    """Mean aligned landmarks of synthetic faces in the network's crop pixels [49, 2]."""
    lms = [alignment.align_face(ex["image"], ex["landmarks"])[1] for ex in _synth_frames(3)]
    o = (config.aligned_size - config.crop_size) // 2
    return (np.mean(lms, 0) + 0.5) * (config.aligned_size / 200) - 0.5 - o


class TemplateNet(nn.Module):
    """Stand-in network: fixed template landmarks [B, 49, 2]; AU probabilities from one conv [B, n]."""

    num_aus: int
    template: tuple

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        b = images.shape[0]
        x = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2), name="conv")(images)).mean(axis=(1, 2))
        logits = nn.Dense(2 * self.num_aus, name="au")(x).reshape(b, self.num_aus, 2)
        logprob = jax.nn.log_softmax(logits, axis=-1)
        prob = jnp.exp(logprob[..., 1])
        lm = jnp.broadcast_to(jnp.asarray(self.template, jnp.float32), (b, 49, 2)) + 0.0 * x.sum()
        return {"landmarks": lm, "au_logprob": logprob, "local_au_logprob": logprob, "au_prob": prob,
                "local_au_prob": prob, "final_au_prob": prob}


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    config = configs.get_config("algrnet", "tiny")
    model = TemplateNet(len(config.aus), tuple(map(tuple, _template(config).tolist())))
    variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))
    path = save_inference_checkpoint(tmp_path_factory.mktemp("ckpt") / "t", config, variables)
    return inference.Predictor.from_checkpoint(path, model=model, batch_size=4, backend="jax")


@pytest.fixture(scope="module")
def detector():
    return faces_lib.MTCNNDetector(min_face_size=20, threshold=0.6)   # synthetic faces score 0.75-0.99


def test_astronaut_one_face_and_alignment_puts_the_eyes_where_it_says(detector, predictor):
    rgb = media.read_image(str(ASTRONAUT))
    found = detector.detect(rgb)
    assert len(found) == 1 and found[0].score > 0.99
    f = found[0]
    x, y, w, h = f.box
    for px, py in f.points[:2]:
        assert x < px < x + w and y < py < y + h
    matrix = alignment.alignment_matrix_from_points(f.points)
    aligned = alignment.warp(rgb, matrix)
    expect = alignment.apply_affine(matrix, f.points)
    assert abs(expect[0, 1] - expect[1, 1]) < 1e-9          # the eye line is horizontal
    again = detector.detect(aligned)                       # the detector on the aligned crop
    assert len(again) == 1
    err = np.linalg.norm(again[0].points[:2] - expect[:2], axis=1)
    assert err.max() < 3.0, err                            # eye centres within 3 px of where alignment puts them
    rows = predict.predict_faces(predictor, str(ASTRONAUT), detector=detector)
    rows = rows.to_dict("records") if hasattr(rows, "to_dict") else rows   # a DataFrame when pandas is there
    assert len(rows) == 1 and rows[0]["success"] == 1 and rows[0]["face_id"] == 0
    assert rows[0]["x_0"] > x and list(rows[0])[:3] == ["input", "frame", "face_id"]


def test_synthetic_faces_pasted_into_frames(detector, predictor):
    """MTCNN on synthetic faces at random scale, rotation and position (face.to_raw), and the alignment
    from ground-truth landmarks equal to the builder's (data_pipelines.alignment.align_face)."""
    rng = np.random.default_rng(0)
    engine = predict.Engine(predictor, predict.Options(passes=1), detector)
    found, errors = 0, []
    for ex in _synth_frames(6):
        raw, lm = synth_face.to_raw(ex["image"], ex["landmarks"], rng, frame_hw=(360, 480))
        got = detector.detect(raw)
        if got:
            found += 1
            five = alignment.five_points(lm)
            errors.append(np.linalg.norm(got[0].points - five, axis=1).mean() / alignment.interocular(lm))
        (res,) = engine.image(raw, [lm.astype(np.float64)])
        np.testing.assert_array_equal(res.aligned, alignment.align_face(raw, lm)[0])
    print(f"MTCNN found {found} of 6 pasted synthetic faces; mean 5-point error {np.mean(errors):.3f} x d_o")
    assert found >= 4 and np.mean(errors) < 0.15


def test_two_passes_realign_from_the_first_pass_landmarks(detector, predictor):
    rgb = media.read_image(str(ASTRONAUT))
    engine = predict.Engine(predictor, predict.Options(passes=2), detector)
    f = detector.detect(rgb)[0]
    m1 = alignment.alignment_matrix_from_points(f.points)
    (lm1, _, _, mats1), (lm2, _, aligned2, mats2) = engine.refine(rgb, [m1])
    np.testing.assert_allclose(mats1[0], m1)
    np.testing.assert_allclose(mats2[0], alignment.alignment_matrix(lm1[0]))
    np.testing.assert_array_equal(aligned2[0], alignment.warp(rgb, mats2[0]))


def _video(path: pathlib.Path, n: int = 24, empty: tuple[int, ...] = (9, 10, 11), fps: float = 10.0) -> None:
    frames = _synth_frames(1)
    face = cv2.resize(frames[0]["image"], (120, 120), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (320, 240))
    for i in range(n):
        canvas = np.full((240, 320, 3), 90, np.uint8)
        if i not in empty:
            x, y = 60 + 3 * i, 50 + (i % 4)
            canvas[y:y + 120, x:x + 120] = face
        writer.write(cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    writer.release()


def test_video_rows_ids_empty_frames_timestamps_and_outputs(detector, predictor, tmp_path):
    video = tmp_path / "clip.avi"
    _video(video)
    report = predict.run(predictor, [str(video)], out_dir=str(tmp_path / "out"), detector=detector,
                         options=predict.Options(keyframe_every=4), overlay=True)
    assert report.failures == []
    rows = report.rows
    assert [r["frame"] for r in rows] == list(range(24))    # one row per frame (one face)
    for r in rows:
        assert r["timestamp"] == pytest.approx(r["frame"] / 10.0)
        assert r["success"] == (0 if r["frame"] in (9, 10, 11) else 1), r["frame"]
    ids = {r["face_id"] for r in rows if r["success"]}
    assert ids == {0}
    with open(tmp_path / "out" / "clip.avi.csv") as f:
        table = list(csv.reader(f))
    assert table[0] == outputs.columns(predictor.class_names, "au") and len(table) == 25
    summary = json.loads((tmp_path / "out" / "clip.avi.summary.json").read_text())
    assert summary["frames"] == 24 and summary["success_rate"] == pytest.approx(21 / 24)
    assert set(summary["occurrence_rate"]) == {"AU01", "AU04", "AU12"}
    for name in ("clip.avi.probs.png", "clip.avi.overlay.mp4"):
        assert (tmp_path / "out" / name).stat().st_size > 1000
    assert not list((tmp_path / "out").glob("*partial*"))


def _frames_of(path: pathlib.Path) -> list[tuple[int, float, np.ndarray]]:
    return list(iter(media.open_video(str(path))))


def _counting(engine: predict.Engine) -> list[int]:
    """Records the number of faces of every network call of ``engine``."""
    sizes: list[int] = []
    run = engine.run_aligned

    def counted(aligned):
        sizes.append(len(aligned))
        return run(aligned)

    engine.run_aligned = counted
    return sizes


def test_video_frames_run_in_batches_like_per_frame_tracking(detector, predictor, tmp_path):
    """--frame-batch 8 gives the rows of per-frame tracking (--frame-batch 1) in fewer, larger network calls:
    the tracked frames between two key frames run together."""
    video = tmp_path / "clip.avi"
    _video(video)
    frames = _frames_of(video)
    results, calls = {}, {}
    for fb in (1, 8):
        engine = predict.Engine(predictor, predict.Options(keyframe_every=4, frame_batch=fb), detector)
        calls[fb] = _counting(engine)
        results[fb] = [(i, [(f.face_id, round(f.confidence, 3)) for f in found])
                       for i, _, _, found in engine.video(iter(frames))]
        assert engine.timing.frames == 24
    assert [i for i, _ in results[8]] == list(range(24))
    assert [[fid for fid, _ in r] for _, r in results[8]] == [[fid for fid, _ in r] for _, r in results[1]]
    assert max(calls[8]) == 3 and max(calls[1]) == 1       # the 3 tracked frames between key frames at once
    assert len(calls[8]) < len(calls[1])


def test_aligned_videos_and_landmark_videos_batch_every_frame(detector, predictor, tmp_path):
    """--aligned on a video of 200x200 aligned faces: one row per frame, frame_batch faces per call; a video of
    another size is named as a failure. Given landmarks per frame: batched results equal the per-image path."""
    ex = _synth_frames(6)
    path = tmp_path / "aligned.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (200, 200))
    for e in ex:
        writer.write(cv2.cvtColor(alignment.align_face(e["image"], e["landmarks"])[0], cv2.COLOR_RGB2BGR))
    writer.release()
    report = predict.run(predictor, [str(path)], aligned=True, detector=detector,
                         options=predict.Options(frame_batch=4))
    assert report.failures == [] and [r["frame"] for r in report.rows] == list(range(6))
    assert all(r["success"] == 1 and r["face_w"] == 200 for r in report.rows)
    other = tmp_path / "clip.avi"
    _video(other, n=3, empty=())
    report = predict.run(predictor, [str(other)], aligned=True, detector=detector)
    assert len(report.failures) == 1 and "clip.avi: --aligned expects a video of 200x200" in report.failures[0]

    frames = _frames_of(path)
    lms = {i: [e["landmarks"].astype(np.float64)] for i, e in enumerate(ex) if i != 2}   # frame 2: no face
    engine = predict.Engine(predictor, predict.Options(passes=2, frame_batch=8), detector)
    calls = _counting(engine)
    batched = list(engine.video(iter(frames), lms))
    assert calls == [5, 5]                                  # 5 faces of 6 frames in one call per pass
    assert batched[2][3] == []
    single = predict.Engine(predictor, predict.Options(passes=2), detector)
    for i, _, rgb, found in batched:
        if i == 2:
            continue
        (ref,) = single.image(rgb, lms[i])
        np.testing.assert_allclose(found[0].landmarks, ref.landmarks, atol=1e-3)
        np.testing.assert_allclose(found[0].probs, ref.probs, atol=1e-5)
        np.testing.assert_array_equal(found[0].aligned, ref.aligned)


def test_csv_columns_in_the_documented_order():
    cols = outputs.columns(["AU01", "AU02"], "au")
    assert cols[:10] == ["input", "frame", "face_id", "timestamp", "confidence", "success",
                         "face_x", "face_y", "face_w", "face_h"]
    assert cols[10:12] == ["x_0", "x_1"] and cols[58:60] == ["x_48", "y_0"] and cols[107] == "y_48"
    assert cols[108:] == ["AU01_p", "AU02_p", "AU01_c", "AU02_c"]
    assert outputs.columns(["normal", "low", "medium", "high"], "paralysis")[-5:] == [
        "normal_p", "low_p", "medium_p", "high_p", "grade"]


def test_68_and_66_point_landmarks_reduce_to_49():
    p68 = np.arange(136, dtype=np.float64).reshape(68, 2)
    p49 = faces_lib.reduce_to_49(p68)
    kept = [i for i in range(17, 68) if i not in (60, 64)]
    assert p49.shape == (49, 2) and len(kept) == 49
    np.testing.assert_array_equal(p49, p68[kept])
    # the 49-point scheme's mouth: outer 31..42 are 68's 48..59, inner 43..48 are 61..63, 65..67
    np.testing.assert_array_equal(p49[31], p68[48])
    np.testing.assert_array_equal(p49[43], p68[61])
    np.testing.assert_array_equal(faces_lib.reduce_to_49(np.arange(132.0).reshape(66, 2)),
                                  np.arange(132.0).reshape(66, 2)[17:66])
    with pytest.raises(UserError, match="49, 66 or 68"):
        faces_lib.reduce_to_49(np.zeros((50, 2)))


def test_bad_inputs_are_named_and_the_others_processed(predictor, detector, tmp_path, capsys):
    good = tmp_path / "in" / "a_good.jpg"
    good.parent.mkdir()
    good.write_bytes(ASTRONAUT.read_bytes())
    data = ASTRONAUT.read_bytes()
    (tmp_path / "in" / "b_truncated.jpg").write_bytes(data[:len(data) // 2])
    (tmp_path / "in" / "c_notes.txt").write_text("hello")
    _video(tmp_path / "in" / "d_clip.avi", n=12, empty=())
    clip = (tmp_path / "in" / "d_clip.avi").read_bytes()
    (tmp_path / "in" / "e_cut.avi").write_bytes(clip[:int(len(clip) * 0.6)])
    (tmp_path / "empty").mkdir()
    report = predict.run(predictor, [str(tmp_path / "in"), str(tmp_path / "empty"), str(tmp_path / "nope.jpg")],
                         out_dir=str(tmp_path / "out"), detector=detector,
                         options=predict.Options(keyframe_every=6))
    text = "\n".join(report.failures)
    assert "b_truncated.jpg: corrupt image (truncated JPEG" in text
    assert "e_cut.avi: truncated or corrupt video: decoded" in text
    assert "empty: folder holds no images or videos" in text and "nope.jpg: no such file" in text
    assert any("c_notes.txt: skipped, not an image or video" in n for n in report.notes)
    assert len(report.failures) == 4
    out = tmp_path / "out" / "in"
    assert (out / "a_good.jpg.csv").is_file() and (out / "d_clip.avi.csv").is_file()
    assert not (out / "b_truncated.jpg.csv").exists()
    # --skip-existing: the finished CSVs are kept, nothing is recomputed; a partial file is never final
    before = (out / "a_good.jpg.csv").stat().st_mtime_ns
    again = predict.run(predictor, [str(good)], out_dir=str(out), detector=detector, skip_existing=True)
    assert again.skipped == [str(out / "a_good.jpg.csv")] and again.rows == []
    assert (out / "a_good.jpg.csv").stat().st_mtime_ns == before


def test_writer_never_leaves_a_partial_csv_as_final(tmp_path):
    w = outputs.CsvWriter(str(tmp_path / "x.csv"), ["a"])
    w.write({"a": 1})
    partial = tmp_path / f"x.csv.partial.{os.getpid()}"         # unique per process: runs never share one
    assert not (tmp_path / "x.csv").exists() and partial.exists()
    w.close(ok=False)
    assert not (tmp_path / "x.csv").exists() and not partial.exists()


def test_cli_predict_exit_codes_and_landmarks_file(predictor, tmp_path, capsys, monkeypatch):
    from algrnet_jax import cli

    ckpt = predictor.source
    monkeypatch.setattr(inference.Predictor, "from_checkpoint",
                        classmethod(lambda cls, path, **kw: predictor))
    rgb = media.read_image(str(ASTRONAUT))
    ex = _synth_frames(1)[0]
    cv2.imwrite(str(tmp_path / "s.png"), cv2.cvtColor(ex["image"], cv2.COLOR_RGB2BGR))
    lm68 = np.zeros((68, 2))
    lm68[[i for i in range(17, 68) if i not in (60, 64)]] = ex["landmarks"]
    (tmp_path / "lm.txt").write_text("s.png " + " ".join(f"{v:.3f}" for v in lm68.ravel()) + "\n")
    assert cli.main(["predict", "--checkpoint", ckpt, str(tmp_path / "s.png"), "--landmarks", str(tmp_path / "lm.txt"),
                     "--passes", "1", "--out", str(tmp_path / "o")]) == 0
    with open(tmp_path / "o" / "s.png.csv") as f:
        row = next(csv.DictReader(f))
    assert row["success"] == "1" and float(row["confidence"]) == 1.0
    assert cli.main(["predict", "--checkpoint", ckpt, str(tmp_path / "s.png"), "--aligned",
                     "--out", str(tmp_path / "o2")]) == 0
    assert cli.main(["predict", "--checkpoint", ckpt, str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "o3")]) == 1
    assert "nope.jpg: no such file" in capsys.readouterr().err
    (tmp_path / "bad.txt").write_text("s.png 1 2 3\n")
    assert cli.main(["predict", "--checkpoint", ckpt, str(tmp_path / "s.png"), "--landmarks", str(tmp_path / "bad.txt"),
                     "--out", str(tmp_path / "o4")]) == 2
    err = capsys.readouterr().err
    assert "bad.txt:1: expected 49, 66 or 68 (x, y) points" in err and "Traceback" not in err
    assert rgb.shape == (512, 512, 3)


def test_overlay_and_attention_pictures(tmp_path):
    rng = np.random.default_rng(0)
    aligned = rng.integers(0, 255, (200, 200, 3)).astype(np.uint8)
    face = predict.engine.FaceResult(3, np.array([20.0, 30.0, 80.0, 90.0]), 0.9, rng.uniform(30, 100, (49, 2)),
                                     np.array([0.2, 0.7, 0.5]), aligned, rng.uniform(0, 1, (3, 44, 44)))
    canvas = np.zeros((240, 320, 3), np.uint8)
    drawn = outputs.draw(canvas, [face], ["AU01", "AU04", "AU12"], 0.5)
    assert drawn.shape == canvas.shape and drawn.any() and not canvas.any()
    outputs.attention_figure(str(tmp_path / "a.png"), face, ["AU01", "AU04", "AU12"], 176)
    assert cv2.imread(str(tmp_path / "a.png")) is not None


def test_grading_rows_and_the_video_grade():
    names = ["normal", "low", "medium", "high"]
    face = predict.engine.FaceResult(0, np.zeros(4), 1.0, np.zeros((49, 2)), np.array([0.1, 0.6, 0.2, 0.1]),
                                     np.zeros((200, 200, 3), np.uint8))
    rows = [outputs.face_row("v.mp4", 0, 0.0, face, names, "paralysis", 0.5),
            outputs.face_row("v.mp4", 1, 0.1, None, names, "paralysis", 0.5)]
    assert rows[0]["grade"] == "low" and rows[0]["low_p"] == pytest.approx(0.6)
    assert rows[1]["success"] == 0 and rows[1]["face_id"] == -1 and "low_p" not in rows[1]
    s = outputs.summary(rows, names, "paralysis", 10.0)
    assert s["grade"] == "low" and s["success_rate"] == 0.5 and s["mean_grade_prob"]["low"] == pytest.approx(0.6)
