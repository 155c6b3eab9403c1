"""`algrnet predict` misused: two runs on one --out, inputs sharing a file name, --out inside an input folder,
`..` inputs, bad --landmarks, videos whose container over-counts frames, Ctrl-C, --skip-existing after a
half-way failure, symlinked folders, very large photos, a checkpoint whose outputs are NaN, and the
third-party lines of a run on frames without faces. The network is test_predict's small stand-in; most tests
give faces (--aligned, --landmarks) or use a stand-in detector, so they run in seconds."""
from __future__ import annotations

import ast
import csv
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
import warnings

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algrnet_jax import cli, configs, inference, predict
from algrnet_jax.checkpoints import save_inference_checkpoint
from algrnet_jax.locking import LockedError
from algrnet_jax.predict import engine as engine_lib
from algrnet_jax.predict import faces as faces_lib
from algrnet_jax.predict import media, outputs
from data_pipelines import alignment

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from test_predict import ASTRONAUT, TemplateNet, _synth_frames, _template, _video  # noqa: E402
from test_predict import predictor  # noqa: E402, F401  (the module-scoped fixture)

pytest.importorskip("mtcnn")




class NoFaces:
    """Stand-in detector: no face anywhere (records the frames' shapes)."""

    def __init__(self):
        self.shapes: list[tuple[int, ...]] = []

    def detect(self, rgb):
        self.shapes.append(rgb.shape)
        return []

    def score_boxes(self, rgb, boxes):
        return np.zeros(len(boxes))


@pytest.fixture(scope="module")
def example():
    """A synthetic face: (RGB uint8 [200, 200, 3], its 49 landmarks [49, 2], its aligned 200x200 crop)."""
    ex = _synth_frames(1)[0]
    return ex["image"], ex["landmarks"].astype(np.float64), alignment.align_face(ex["image"], ex["landmarks"])[0]


def _png(path: pathlib.Path, rgb: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return str(path)


def _cli(predictor, monkeypatch, *argv: str) -> int:
    monkeypatch.setattr(inference.Predictor, "from_checkpoint", classmethod(lambda cls, path, **kw: predictor))
    return cli.main(["predict", "--checkpoint", predictor.source, *argv])


def _lm_line(key: str, lm: np.ndarray) -> str:
    return f"{key} " + " ".join(f"{v:.4f}" for v in np.asarray(lm).ravel()) + "\n"


# ------------------------------------------------------------------------------- one --out, unique names


def test_a_second_run_on_one_out_is_refused_naming_the_first(predictor, example, tmp_path, monkeypatch, capsys):
    """A run holding --out (another process) makes a second one fail at once, naming its PID; the first's
    temporary CSV names carry its PID, so no two runs can share one."""
    face = _png(tmp_path / "in" / "face.png", example[2])
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from algrnet_jax.locking import DirLock; "
         f"DirLock({str(out / predict.LOCK_FILE)!r}, 'x').acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=str(pathlib.Path(__file__).parent.parent))
    try:
        assert holder.stdout.readline().strip() == "held"
        held = f"--out folder {out} is in use by another process (pid {holder.pid}"
        with pytest.raises(LockedError, match=re.escape(held)):
            predict.run(predictor, [face], out_dir=str(out), aligned=True)
        assert _cli(predictor, monkeypatch, face, "--aligned", "--out", str(out)) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "choose another --out" in err and "Traceback" not in err
        assert not (out / "face.png.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    report = predict.run(predictor, [face], out_dir=str(out), aligned=True)    # the lock went with its holder
    assert report.failures == [] and (out / "face.png.csv").is_file()


def test_inputs_sharing_a_file_name_get_their_own_outputs(predictor, example, tmp_path):
    """a/face.png and b/face.png: two CSVs named by their paths below the common folder, each with its own
    face; the same file given twice is one input; --skip-existing skips each by its own CSV."""
    a = _png(tmp_path / "a" / "face.png", example[2])
    b = _png(tmp_path / "b" / "face.png", np.ascontiguousarray(example[2][:, ::-1]))
    out = tmp_path / "out"
    report = predict.run(predictor, [a, b, a], out_dir=str(out), aligned=True)
    assert report.failures == [] and any("given more than once" in n for n in report.notes)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.csv")) == ["a/face.png.csv", "b/face.png.csv"]
    rows = {}
    for name in ("a", "b"):
        with open(out / name / "face.png.csv") as f:
            (rows[name],) = list(csv.DictReader(f))
        assert rows[name]["input"] == f"{name}/face.png"
    assert rows["a"]["AU01_p"] != rows["b"]["AU01_p"]
    again = predict.run(predictor, [a, b], out_dir=str(out), aligned=True, skip_existing=True)
    assert sorted(again.skipped) == [str(out / "a" / "face.png.csv"), str(out / "b" / "face.png.csv")]


def test_out_inside_an_input_folder_is_never_read_and_dotdot_inputs_land_under_out(predictor, example, tmp_path,
                                                                                   monkeypatch):
    """--out inside the folder given: a second run reads the same inputs (not its own CSVs and pictures); a
    folder given as `..` writes under --out; an input inside --out is refused by name."""
    root = tmp_path / "photos"
    _png(root / "one.png", example[2])
    _png(root / "sub" / "two.png", example[2])
    out = root / "preds"
    for _ in range(2):
        report = predict.run(predictor, [str(root)], out_dir=str(out), aligned=True, overlay=True)
        assert report.failures == [] and report.notes == []
        assert len(report.rows) == 2
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.csv")) == [
        "photos/one.png.csv", "photos/sub/two.png.csv"]
    inside = predict.run(predictor, [str(out / "photos")], out_dir=str(out), aligned=True)
    assert len(inside.failures) == 1 and "inside the --out folder" in inside.failures[0]
    shutil.rmtree(out)
    monkeypatch.chdir(root / "sub")
    report = predict.run(predictor, [".."], out_dir="here", aligned=True)      # ../sub/here is inside ..
    assert report.failures == [] and len(report.rows) == 2
    assert sorted(p.relative_to(root / "sub" / "here").as_posix() for p in (root / "sub" / "here").rglob("*.csv")) \
        == ["photos/one.png.csv", "photos/sub/two.png.csv"]
    assert not list(tmp_path.glob("*.csv")) and not list((root / "sub").glob("*.csv"))


def test_symlinked_subfolders_get_a_note(predictor, example, tmp_path):
    _png(tmp_path / "elsewhere" / "x.png", example[2])
    _png(tmp_path / "in" / "y.png", example[2])
    os.symlink(tmp_path / "elsewhere", tmp_path / "in" / "linked")
    report = predict.run(predictor, [str(tmp_path / "in")], aligned=True)
    assert len(report.rows) == 1
    assert any("linked: skipped, a symlinked folder is not followed" in n for n in report.notes)


# ----------------------------------------------------------------------------------------- --landmarks


def test_given_landmarks_are_checked_per_face_and_per_input(predictor, example, tmp_path, monkeypatch, capsys):
    """A face scaled by 1e6 (box far outside) and all-zero landmarks are listed as failures, the good face of
    the same photo and the other photos are processed; a video keyed by file name and frames beyond the
    video are failures naming them."""
    rgb, lm, _ = example
    files = [_png(tmp_path / n, rgb) for n in ("p.png", "q.png", "r.png")]
    _video(tmp_path / "clip.avi", n=4, empty=())
    table = tmp_path / "lm.txt"
    table.write_text(_lm_line("p.png", lm) + _lm_line("p.png", lm * 1e6) + _lm_line("q.png", np.zeros_like(lm))
                     + _lm_line("r.png", lm) + _lm_line("clip.avi", lm))
    code = _cli(predictor, monkeypatch, *files, str(tmp_path / "clip.avi"), "--landmarks", str(table),
                "--passes", "1", "--out", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "p.png: --landmarks face 1: landmarks lie outside the 200x200 frame (0 of 49 points inside" in err
    assert "q.png: --landmarks: no usable face (face 0: eye centres 0 pixels apart" in err
    assert "clip.avi: --landmarks has no line keyed by a frame index" in err
    for name, n in (("p.png", 1), ("r.png", 1)):
        with open(tmp_path / "out" / f"{name}.csv") as f:
            rows = list(csv.DictReader(f))
        assert [r["success"] for r in rows] == ["1"] * n
    assert not (tmp_path / "out" / "q.png.csv").exists()
    table.write_text(_lm_line("0", lm + 40) + _lm_line("2", lm + 40) + _lm_line("7", lm) + _lm_line("9", lm))
    report = predict.run(predictor, [str(tmp_path / "clip.avi")], landmarks=predict.read_landmarks(str(table)),
                         options=predict.Options(passes=1))
    assert [r["success"] for r in report.rows] == [1, 0, 1, 0]
    assert report.failures == [f"{tmp_path / 'clip.avi'}: --landmarks frames 7..9 (2 keyed) are not in the video "
                               "(4 frames decoded)"]


# ----------------------------------------------------------------------------------------------- videos


def _avi_claiming(path: pathlib.Path, frames: int, claimed: int) -> None:
    """An MJPG AVI of ``frames`` frames whose headers announce ``claimed`` (avih dwTotalFrames, strh dwLength)."""
    _video(path, n=frames, empty=tuple(range(frames)))
    data = bytearray(path.read_bytes())
    data[48:52] = struct.pack("<I", claimed)
    strh = data.find(b"strh")
    data[strh + 40:strh + 44] = struct.pack("<I", claimed)
    path.write_bytes(bytes(data))


def test_a_stream_ending_cleanly_before_the_container_count_is_a_note(predictor, tmp_path, monkeypatch, capsys):
    """The container announces 9 frames, 6 decode without a decoder error: rows for 6, a note, exit 0; a file
    cut short (the decoder reports damaged data) stays a failure."""
    clip = tmp_path / "clip.avi"
    _avi_claiming(clip, 6, 9)
    assert media.open_video(str(clip)).frames == 9
    report = predict.run(predictor, [str(clip)], detector=NoFaces())
    assert report.failures == [] and len(report.rows) == 6
    assert report.notes == [f"{clip}: 6 frames decoded; the container estimated 9 (the stream ended cleanly; a "
                            "container's frame count is an estimate)"]
    monkeypatch.setattr(engine_lib.Engine, "detector", property(lambda self: NoFaces()))
    assert _cli(predictor, monkeypatch, str(clip), "--out", str(tmp_path / "o")) == 0
    capsys.readouterr()
    cut = tmp_path / "cut.avi"
    _video(cut, n=12, empty=tuple(range(12)))
    cut.write_bytes(cut.read_bytes()[:int(cut.stat().st_size * 0.6)])
    report = predict.run(predictor, [str(cut)], detector=NoFaces())
    assert len(report.failures) == 1
    assert re.search(r"cut.avi: truncated or corrupt video: decoded \d+ of 12 frames; the decoder reports: \w",
                     report.failures[0])


def test_skip_existing_runs_a_half_failed_input_again(predictor, tmp_path):
    """A cut video writes rows for its decoded frames and NAME.failed.txt: --skip-existing runs it again (the
    failure is reported again, not hidden as done); once it succeeds the marker goes and it is skipped."""
    clip = tmp_path / "in" / "clip.avi"
    clip.parent.mkdir()
    _video(clip, n=12, empty=tuple(range(12)))
    good = clip.read_bytes()
    clip.write_bytes(good[:int(len(good) * 0.6)])
    out = tmp_path / "out"
    first = predict.run(predictor, [str(clip)], out_dir=str(out), detector=NoFaces())
    assert len(first.failures) == 1 and (out / "clip.avi.csv").is_file()
    assert "truncated or corrupt video" in (out / "clip.avi.failed.txt").read_text()
    again = predict.run(predictor, [str(clip)], out_dir=str(out), detector=NoFaces(), skip_existing=True)
    assert again.skipped == [] and len(again.failures) == 1
    clip.write_bytes(good)
    fixed = predict.run(predictor, [str(clip)], out_dir=str(out), detector=NoFaces(), skip_existing=True)
    assert fixed.failures == [] and len(fixed.rows) == 12 and not (out / "clip.avi.failed.txt").exists()
    done = predict.run(predictor, [str(clip)], out_dir=str(out), detector=NoFaces(), skip_existing=True)
    assert done.skipped == [str(out / "clip.avi.csv")]


def test_ctrl_c_is_one_line_exit_130_and_no_partial_file(predictor, example, tmp_path, monkeypatch, capsys):
    _png(tmp_path / "in" / "a.png", example[2])
    _png(tmp_path / "in" / "b.png", example[2])
    calls = []
    run_aligned = engine_lib.Engine.run_aligned

    def interrupted(self, aligned):
        calls.append(len(aligned))
        if len(calls) == 3:                # the probe, a.png, then Ctrl-C during b.png
            raise KeyboardInterrupt
        return run_aligned(self, aligned)

    monkeypatch.setattr(engine_lib.Engine, "run_aligned", interrupted)
    out = tmp_path / "out"
    assert _cli(predictor, monkeypatch, str(tmp_path / "in"), "--aligned", "--out", str(out)) == 130
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == ["predict: interrupted"]
    assert sorted(p.name for p in (out / "in").iterdir()) == ["a.png.csv"]    # b's partial CSV removed
    monkeypatch.setattr(engine_lib.Engine, "run_aligned", run_aligned)
    again = predict.run(predictor, [str(tmp_path / "in")], out_dir=str(out), aligned=True, skip_existing=True)
    assert again.skipped == [str(out / "in" / "a.png.csv")] and len(again.rows) == 1    # the lock was released

    def loading(cls, path, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(inference.Predictor, "from_checkpoint", classmethod(loading))   # Ctrl-C while loading
    assert cli.main(["predict", "--checkpoint", "c", str(tmp_path / "in"), "--out", str(out)]) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["predict: interrupted"]


class BigPhotoFaces(NoFaces):
    """Stand-in detector: one face at a fixed place of whatever frame it sees."""

    def detect(self, rgb):
        super().detect(rgb)
        box = np.array([100.0, 120.0, 400.0, 400.0])
        points = np.array([[220.0, 260.0], [380.0, 260.0], [300.0, 340.0], [240.0, 420.0], [360.0, 420.0]])
        return [faces_lib.Face(box, 0.99, points)]


def test_a_very_large_photo_is_searched_at_a_bounded_size(predictor, tmp_path):
    """A 6000x4500 photo reaches the detector at 2048 pixels on its longer side; the face's box comes back in
    the photo's pixels."""
    big = np.full((4500, 6000, 3), 100, np.uint8)
    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), big)
    det = BigPhotoFaces()
    report = predict.run(predictor, [str(path)], detector=det, options=predict.Options(passes=1))
    assert det.shapes == [(1536, 2048, 3)]
    (row,) = report.rows
    scale = 6000 / 2048
    assert row["success"] == 1 and row["face_x"] == pytest.approx(100 * scale, abs=0.01)
    assert row["face_w"] == pytest.approx(400 * scale, abs=0.01)


# --------------------------------------------------------------------------------------- NaN outputs


class NaNNet(TemplateNet):
    """TemplateNet whose outputs are NaN for bright faces (mean pixel over ``bright``; all when ``bright`` < -1)."""

    bright: float = 0.0

    def __call__(self, images, train=False):
        out = super().__call__(images, train)
        bad = images.mean(axis=(1, 2, 3)) > self.bright
        return {k: jnp.where(bad.reshape((-1,) + (1,) * (v.ndim - 1)), jnp.nan, v) for k, v in out.items()}


def _nan_predictor(tmp_path, bright: float) -> inference.Predictor:
    config = configs.get_config("algrnet", "tiny")
    model = NaNNet(len(config.aus), tuple(map(tuple, _template(config).tolist())), bright)
    variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))
    path = save_inference_checkpoint(tmp_path / f"nan{bright}", config, variables)
    return inference.Predictor.from_checkpoint(path, model=model, batch_size=4, backend="jax")


def test_non_finite_outputs_are_never_a_result(example, tmp_path, monkeypatch, capsys):
    """A face whose outputs are NaN: a success=0 row (no NaN in the CSV) and a failure naming the input; a
    checkpoint whose every output is NaN: one message before any output, exit 2."""
    dark = _png(tmp_path / "dark.png", (example[2] // 4).astype(np.uint8))
    bright = _png(tmp_path / "bright.png", np.full((200, 200, 3), 250, np.uint8))
    p = _nan_predictor(tmp_path, 0.5)
    report = predict.run(p, [dark, bright], out_dir=str(tmp_path / "out"), aligned=True, overlay=True)
    assert [r["success"] for r in report.rows] == [1, 0]
    assert report.failures == [f"{bright}: the network's outputs are not finite (NaN or infinite) for 1 face(s); "
                               "their rows have success=0"]
    text = (tmp_path / "out" / "bright.png.csv").read_text()
    assert "nan" not in text.lower() and (tmp_path / "out" / "bright.png.overlay.jpg").is_file()
    broken = _nan_predictor(tmp_path, -2.0)
    assert _cli(broken, monkeypatch, dark, "--aligned", "--out", str(tmp_path / "out2")) == 2
    err = capsys.readouterr().err
    assert "gives non-finite outputs (NaN or infinite) for every input" in err and "Traceback" not in err
    assert not list((tmp_path / "out2").glob("*.csv"))


# ------------------------------------------------------------------------------- our output alone


def test_detector_stops_at_a_stage_without_candidates(capfd):
    """A frame without a face: MTCNN's later stages are not run on zero candidates (TensorFlow logged
    "Incompatible shapes [0,48,48,3]" for each such frame)."""
    det = faces_lib.MTCNNDetector(min_face_size=20)
    onet = det._mtcnn.get_stage(stage_id=3)
    seen = []
    model = onet._model
    monkey = lambda patches: (seen.append(patches.shape[0]), model(patches))[1]   # noqa: E731
    onet._model = monkey
    blurred = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 255, (240, 320, 3)).astype(np.uint8), (0, 0), 3)
    assert det.detect(blurred) == []
    assert 0 not in seen
    assert len(det.detect(media.read_image(str(ASTRONAUT)))) == 1 and seen and 0 not in seen
    err = capfd.readouterr().err
    assert "Incompatible shapes" not in err and "local_rendezvous" not in err


def test_the_plot_of_a_video_without_faces_warns_nothing(tmp_path):
    rows = [outputs.face_row("v.mp4", i, i / 10, None, ["AU01"], "au", 0.5) for i in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outputs.time_plot(str(tmp_path / "p.png"), rows, ["AU01"], "v.mp4")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_inference_does_not_import_the_predict_package():
    """The predict package uses the Predictor, not the reverse (the inference module stays below it)."""
    tree = ast.parse((pathlib.Path(inference.__file__)).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not any(m and m.startswith("algrnet_jax.predict") for m in imported) and "predict" not in names


def test_a_backend_this_machine_cannot_run_is_refused_before_any_work(predictor, example, tmp_path, monkeypatch,
                                                                      capsys):
    """``--dtype bfloat16`` runs only on OpenVINO (and only on a CPU with bfloat16 units); asked of another
    backend it is one message naming the flags, exit 2, and --out is not created."""
    src = tmp_path / "in"
    src.mkdir()
    _png(src / "a.png", example[0])
    out = tmp_path / "out"
    assert _cli(predictor, monkeypatch, str(src), "--out", str(out), "--backend", "onnxruntime",
                "--dtype", "bfloat16") == 2
    err = capsys.readouterr().err
    assert "predict: --backend onnxruntime --dtype bfloat16:" in err and "Traceback" not in err
    assert not out.exists()
