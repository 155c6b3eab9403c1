"""Reliability: each fault reproduced as it happens to a user, and what happens now.

Data sets are small fixtures in the raw release layouts written by the synthetic generator
(``data_pipelines.synthetic.raw_layouts``); training runs use the stand-in network of tiny_au_model.py.
The table of faults, behaviours and test names is docs/reliability.md.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import re
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_training import (_child, _loop_config, _run, build_synthetic,  # noqa: E402
                           compilation_cache)  # noqa: F401  (autouse fixture: a shared compilation cache)
from tiny_au_model import TinyAUNet, tiny_model  # noqa: E402

from algrnet_jax import cli, evaluation, experiment, inference  # noqa: E402
from algrnet_jax.configs import get_config  # noqa: E402
from algrnet_jax.configs.validate import ConfigError, config_problems, validate_config  # noqa: E402
from algrnet_jax.errors import UserError  # noqa: E402
from algrnet_jax.locking import DirLock, LockedError  # noqa: E402
from algrnet_jax.training.loop import NonFiniteLossError  # noqa: E402
from algrnet_jax import checkpoints as ckpt_lib  # noqa: E402
from algrnet_jax.training import checkpoint as train_ckpt  # noqa: E402
from data_pipelines import builders, errors, images  # noqa: E402
from data_pipelines.builders import base, examples, raw_frames  # noqa: E402
from data_pipelines.synthetic import raw_layouts  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = dict(subjects_per_part=1, sequences=2, frames=3)      # 18 frames, 6 per part


# ------------------------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def bp4d_release(tmp_path_factory):
    """A BP4D release-layout manual dir (18 frames) and its fake frames."""
    root = tmp_path_factory.mktemp("bp4d_release")
    frames = raw_layouts.write_bp4d_release(str(root), raw_layouts.synthetic_examples("bp4d", **SIZE))
    return root, frames


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _build(name, manual, data_dir, *, overwrite=False, config="default", **kwargs):
    tfds.disable_progress_bar()
    b = builders.get_builder(name, config, str(data_dir), **kwargs)
    mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual), download_mode=mode))
    return b


def _count(data_dir, name="bp4d", config="default"):
    b = builders.get_builder(name, config, str(data_dir))
    assert b.is_prepared()
    return sum(1 for _ in examples.read_back(b, "part1+part2+part3", decode_images=False))


def _bad_frames(b):
    with open(os.path.join(b.data_dir, base.BAD_FRAMES_FILE)) as f:
        report = json.load(f)
    return {row["key"]: row["error"] for rows in report["bad_frames"].values() for row in rows}


def _zero_second_half(path):
    """A JPEG whose second half is zeroed, end-of-image marker kept: libjpeg decodes it with a warning."""
    data = bytearray(open(path, "rb").read())
    half = len(data) // 2
    data[half:-2] = bytes(len(data) - half - 2)
    open(path, "wb").write(bytes(data))


def _cli(argv, capsys):
    """Runs ``algrnet argv``; returns (exit code, stdout, stderr)."""
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _one_message(err):
    assert "Traceback" not in err
    assert err.startswith("algrnet: error: "), err


# ------------------------------------------------------------------------- 1. rebuild without loss

_KILLED_BUILD = textwrap.dedent("""
    import os, signal, sys
    import tensorflow_datasets as tfds
    from data_pipelines import builders
    from data_pipelines.builders import raw_frames
    manual, data_dir = sys.argv[1:3]
    align, n = raw_frames.align_raw, [0]
    def align_then_die(*a):
        n[0] += 1
        if n[0] == 8:                       # in the middle of part 2
            os.kill(os.getpid(), signal.SIGKILL)
        return align(*a)
    raw_frames.align_raw = align_then_die
    b = builders.get_builder("bp4d", "default", data_dir)
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual, download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS))
""")


def test_overwrite_keeps_the_old_dataset_until_the_rebuild_is_complete(bp4d_release, tmp_path):
    manual, frames = bp4d_release
    data = tmp_path / "tfds"
    _build("bp4d", manual, data)
    assert _count(data) == 18
    # A rebuild that fails (a corrupt frame, no --skip-bad) leaves the old dataset as it was.
    broken = _copy(manual, tmp_path / "broken")
    f = frames[7]
    _zero_second_half(broken / f.subject / f.sequence / f"{f.frame:04d}.jpg")
    with pytest.raises(errors.BadFrameError, match="corrupt image"):
        _build("bp4d", broken, data, overwrite=True)
    assert _count(data) == 18
    # A rebuild killed with SIGKILL: the old dataset is still there and readable; the next build cleans up.
    proc = subprocess.run([sys.executable, "-c", _KILLED_BUILD, str(manual), str(data)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert _count(data) == 18
    staging = data / base.STAGING_DIR / "bp4d" / "default"
    assert (staging / "new").exists()                                   # what the kill left behind
    os.makedirs(data / "bp4d" / "default" / "incomplete.ABC123_1.0.0")  # as a killed plain build leaves
    b = _build("bp4d", broken, data, overwrite=True, skip_bad=True)    # the rebuild that works
    assert sum(s.num_examples for s in b.info.splits.values()) == 17 and _count(data) == 17
    assert not [n for n in os.listdir(data / "bp4d" / "default") if n.startswith("incomplete.")]
    assert sorted(os.listdir(staging)) == ["build.lock"]
    # Killed between the two renames of the swap: the next build puts the old data back.
    version = data / "bp4d" / "default" / "1.0.0"
    os.rename(version, staging / "replaced")
    _build("bp4d", manual, data)
    assert _count(data) == 17 and not (staging / "replaced").exists()


def test_two_builds_of_one_dataset_config_do_not_run_together(bp4d_release, tmp_path):
    manual, _ = bp4d_release
    staging = tmp_path / base.STAGING_DIR / "bp4d" / "default"
    with DirLock(staging / "build.lock", "test holder"):
        with pytest.raises(LockedError, match=rf"dataset bp4d/default .* in use by another process "
                                              rf"\(pid {os.getpid()}"):
            _build("bp4d", manual, tmp_path)


# -------------------------------------------------------------------- 2. one writer per workdir

_HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from algrnet_jax.locking import DirLock
    DirLock(sys.argv[1], "w").acquire()
    print("locked", flush=True)
    time.sleep(600)
""")


def test_second_train_on_a_workdir_fails_at_once_naming_the_holder(data_dir, tmp_path, capsys):
    workdir = tmp_path / "w"
    ready, go = tmp_path / "ready", tmp_path / "go"
    # Process 1: a real training run, held at step 1 until the second one has tried.
    child = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
        import test_training as t
        def hold(step, metrics):
            if step == 1:
                open({str(ready)!r}, "w").close()
                while not os.path.exists({str(go)!r}):
                    time.sleep(0.05)
        t._run(t._loop_config({data_dir!r}, num_epochs=1, max_steps=2), {str(workdir)!r}, callbacks=[hold])
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        deadline = time.time() + 300
        while not ready.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert ready.exists(), proc.communicate()[1][-3000:]
        t0 = time.time()
        rc, _, err = _cli(["train", "--config", "jaanet", "--size", "tiny", "--dataset", "synth_au",
                           "--builder-config", "bp4d_tiny", "--fold", "1", "--data-dir", data_dir,
                           "--workdir", str(workdir), "--no-progress"], capsys)
        assert rc == 2 and time.time() - t0 < 30
        _one_message(err)
        assert f"work directory {workdir} is in use by another process (pid {proc.pid} on" in err
    finally:
        go.touch()
        _, child_err = proc.communicate(timeout=300)
    assert proc.returncode == 0, child_err[-3000:]         # the first run is unharmed


def test_workdir_lock_is_released_when_its_holder_is_killed(tmp_path):
    lock_file = tmp_path / "w" / ".lock"
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(lock_file)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match=rf"pid {proc.pid} "):
            DirLock(lock_file, "w").acquire()
    finally:
        proc.kill()
        proc.wait()
    with DirLock(lock_file, "w") as lock:                      # SIGKILL: the OS dropped the lock
        assert lock.held


# ------------------------------------------------------------------ 3-5. bad frames, corrupt images, cache

def test_skip_bad_skips_nan_short_and_missing_landmark_rows(bp4d_release, tmp_path):
    manual, frames = bp4d_release
    m = _copy(manual, tmp_path / "m")
    seq = [f for f in frames if (f.subject, f.sequence) == (frames[0].subject, frames[0].sequence)]
    lm_file = m / "Landmarks" / f"{seq[0].subject}_{seq[0].sequence}.txt"
    lines = lm_file.read_text().splitlines()
    nan_row = lines[0].split()
    nan_row[5:9] = ["nan"] * 4                                          # a face tracker that lost the face
    lines[0] = " ".join(nan_row)
    lines[1] = " ".join(lines[1].split()[:50])                          # a short row
    lm_file.write_text("\n".join(lines) + "\n")
    other = frames[3]                                                   # the other sequence of that subject
    os.remove(m / "Landmarks" / f"{other.subject}_{other.sequence}.txt")
    with pytest.raises(errors.BadFrameError, match=rf"{lm_file.name}:1: NaN or infinite value\n\(pass --skip-bad"):
        _build("bp4d", m, tmp_path / "strict")
    b = _build("bp4d", m, tmp_path / "skip", skip_bad=True)
    bad = _bad_frames(b)
    key = lambda f: f"{f.subject}/{f.sequence}/{f.frame}"  # noqa: E731
    assert set(bad) == {key(seq[0]), key(seq[1])} | {key(f) for f in frames[3:6]}
    assert bad[key(seq[0])].endswith(f"{lm_file.name}:1: NaN or infinite value")
    assert bad[key(seq[1])].endswith(f"{lm_file.name}:2: expected the frame number and 49 (x, y) points (99 "
                                     "numbers), got 50")
    assert "landmark file not found" in bad[key(frames[3])]
    assert sum(s.num_examples for s in b.info.splits.values()) == 13


def test_skip_bad_skips_bad_list_rows_but_a_missing_label_file_stays_fatal(tmp_path):
    examples = raw_layouts.synthetic_examples("bp4d", **SIZE)
    raw_layouts.write_list(str(tmp_path / "list_m"), examples, "bp4d")
    land = tmp_path / "list_m" / "list" / "BP4D_part1_land.txt"
    rows = land.read_text().splitlines()
    rows[2] = " ".join(["nan"] * 98)
    land.write_text("\n".join(rows) + "\n")
    b = _build("bp4d", tmp_path / "list_m", tmp_path / "d1", skip_bad=True)
    (key, error), = _bad_frames(b).items()
    assert error == f"{land}:3: NaN or infinite value (frame {key}, {land.parent}/BP4D_part1_path.txt:3)"
    assert b.info.splits["part1"].num_examples == 5
    # A per-subject problem (DISFA: a missing AU label file) stops the build, skip_bad or not, naming the file.
    d = tmp_path / "disfa_m"
    dframes = raw_layouts.write_disfa_release(str(d), raw_layouts.synthetic_examples("disfa", **SIZE), frames_as="jpg")
    sid = dframes[0].subject
    os.remove(d / "ActionUnit_Labels" / sid / f"{sid}_au9.txt")
    with pytest.raises(errors.BadInputError, match=rf"{sid}_au9.txt: label file of AU9 not found") as e:
        _build("disfa", d, tmp_path / "d2", skip_bad=True)
    assert not isinstance(e.value, errors.BadFrameError)


def test_jpeg_with_a_zeroed_second_half_is_a_bad_frame(bp4d_release, tmp_path):
    manual, frames = bp4d_release
    m = _copy(manual, tmp_path / "m")
    f = frames[4]
    path = m / f.subject / f.sequence / f"{f.frame:04d}.jpg"
    _zero_second_half(path)
    assert images.decode_jpeg_strict(path.read_bytes())[0] is not None    # what let it through: it decodes
    with pytest.raises(errors.BadInputError, match=r"corrupt image \(the JPEG decoder reports: Corrupt JPEG data"):
        images.load_image(path)
    b = _build("bp4d", m, tmp_path / "d", skip_bad=True)
    assert list(_bad_frames(b)) == [f"{f.subject}/{f.sequence}/{f.frame}"]
    good = images.load_image(manual / f.subject / f.sequence / f"{f.frame:04d}.jpg")   # intact files: no warning
    assert good.shape[2] == 3


def test_resume_cache_notices_an_image_fixed_in_place(bp4d_release, tmp_path, capsys, monkeypatch):
    manual, frames = bp4d_release
    m = _copy(manual, tmp_path / "m")
    f = [x for x in frames if x.fold == 1][1]
    path = m / f.subject / f.sequence / f"{f.frame:04d}.jpg"
    good = path.read_bytes()
    _zero_second_half(path)
    folder_mtime = os.stat(path.parent).st_mtime_ns
    monkeypatch.setenv("ALGRNET_KEEP_CACHE", "1")                       # as after an interrupted build
    b = _build("bp4d", m, tmp_path / "d", skip_bad=True)
    assert list(_bad_frames(b)) == [f"{f.subject}/{f.sequence}/{f.frame}"]
    path.write_bytes(good)                                              # fixed in place: the folder is unchanged
    assert os.stat(path.parent).st_mtime_ns == folder_mtime
    rc, out, _ = _cli(["data", "build", "bp4d", "--manual-dir", str(m), "--data-dir", str(tmp_path / "d"),
                       "--overwrite", "--skip-bad"], capsys)
    assert rc == 0
    assert "part1: 6 examples" in out and "skipped" not in out
    assert "reused 2 finished subject(s) from the resume cache" in out  # parts 2 and 3: unchanged, replayed


# ----------------------------------------------------------------------- 7. config validation up front

BAD_VALUES = [
    ("crop_size", 0), ("aligned_size", -1), ("label_set", "ck+"), ("model.arch", "resnet"), ("model.task", "x"),
    ("model.unit", 0), ("model.lstm_hidden", 0), ("model.map_margin", -1), ("model.map_scale", 1.5),
    ("model.adaptive", 1), ("model.relation", "lstm"), ("model.fusion_refine", "yes"), ("model.num_grades", 3),
    ("model.num_regions", 0), ("model.offset_unit", "cell"), ("model.dtype", "int8"), ("model.param_dtype", "bfloat16"), ("data.dataset", "ck"),
    ("data.builder_config", 3),
    ("data.data_dir", None), ("data.fold", 4), ("data.batch_size", 0), ("data.eval_batch_size", 0),
    ("data.shuffle_seed", -1), ("data.prefetch", -1), ("data.skip_bad", "no"),
    ("train.num_epochs", -1), ("train.lr", 0.0), ("train.lr_decay", 1.5), ("train.lr_decay_every_epochs", 0),
    ("train.momentum", 1.0), ("train.nesterov", 0), ("train.weight_decay", -1e-4), ("train.lambda_align", -0.5),
    ("train.seed", -1), ("train.log_every_steps", 0), ("train.checkpoint_every_steps", 0),
    ("train.keep_checkpoints", 0), ("train.max_steps", 2.5), ("aus", ()),
]


@pytest.mark.parametrize("key,value", BAD_VALUES, ids=[k for k, _ in BAD_VALUES])
def test_validate_config_rejects_each_constrained_field(key, value):
    config = get_config("algrnet", "tiny")
    assert config_problems(config) == []
    d = ckpt_lib.config_to_dict(config)                 # as a config read back from JSON (a checkpoint)
    node = d
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ConfigError, match="^" + re.escape(f"config: 1 invalid value:\n  {key} = {value!r}: must be ")):
        validate_config(ckpt_lib.config_from_dict(d))


def test_validate_config_checks_relations_between_fields():
    config = get_config("algrnet", "tiny")
    config.crop_size = 48                                   # aligned_size is 36
    config.model.lstm_hidden = 12                           # 8 * unit is 8
    config.aus = (1, 99)
    problems = config_problems(config)
    assert len(problems) == 3 and "crop_size = 48 must not exceed aligned_size = 36" in problems[0]
    assert "must equal 8 * model.unit = 8" in problems[1] and "aus = (1, 99): must be distinct AUs" in problems[2]


@pytest.mark.parametrize("override", ["data.eval_batch_size=0", "data.batch_size=0", "train.log_every_steps=0",
                                      "train.num_epochs=-1"])
def test_train_rejects_bad_values_before_any_work(override, tmp_path, capsys):
    workdir = tmp_path / "w"
    rc, _, err = _cli(["train", "--config", "jaanet", "--size", "tiny", "--dataset", "synth_au", "--fold", "1",
                       "--data-dir", str(tmp_path / "none"), "--workdir", str(workdir), "--set", override], capsys)
    assert rc == 2 and not workdir.exists()
    _one_message(err)
    key, value = override.split("=")
    assert f"  {key} = {value}: must be" in err


# ------------------------------------------------------------------------------ 8. resuming clearly

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tfds"))
    build_synthetic(d)
    return d


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A finished short run (tiny stand-in network): its workdir."""
    workdir = tmp_path_factory.mktemp("trained")
    _run(_loop_config(data_dir, num_epochs=1, max_steps=4), workdir)
    return workdir


def test_resume_with_another_model_config_names_the_fields_at_once(trained, data_dir, tmp_path, capsys):
    workdir = _copy(trained, tmp_path / "w")
    t0 = time.time()
    rc, _, err = _cli(["train", "--config", "algrnet", "--size", "tiny", "--dataset", "synth_au", "--builder-config",
                       "bp4d_tiny", "--fold", "1", "--data-dir", data_dir, "--workdir", str(workdir), "--resume",
                       "--no-progress"], capsys)
    assert rc == 2 and time.time() - t0 < 30             # before any compilation
    _one_message(err)
    assert "the config differs from the run being resumed" in err and "unreadable" not in err
    assert "  model.arch: checkpoint 'jaanet', now 'algrnet'" in err and "  name: checkpoint 'jaanet'" in err
    assert "--resume-from-previous" not in err


def test_resume_without_checkpoint_does_not_repeat_steps_in_metrics(data_dir, tmp_path):
    proc = _child(data_dir, tmp_path, "kill", 2)                   # killed before its first checkpoint
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not ckpt_lib.list_steps(tmp_path / "checkpoints")
    assert [json.loads(x)["step"] for x in open(tmp_path / "metrics.jsonl")] == [1]
    result = _run(_loop_config(data_dir, num_epochs=1, max_steps=3), tmp_path, resume=True)
    assert result["resumed_from_step"] is None
    steps = [json.loads(x)["step"] for x in open(tmp_path / "metrics.jsonl") if json.loads(x)["kind"] == "train"]
    assert steps == [1, 2, 3]


# ------------------------------------------------------------------------ 9 and 10. eval, run-arrays, ...

@pytest.fixture
def stand_in_model(monkeypatch):
    """``create_model`` -> the tiny stand-in network the ``trained`` checkpoint holds."""
    from algrnet_jax.models import networks

    monkeypatch.setattr(networks, "create_model", tiny_model)
    monkeypatch.setattr(inference, "create_model", tiny_model)      # the Predictor's (evaluate_checkpoint reads it)
    inference.jitted_forward.cache_clear()
    yield
    inference.jitted_forward.cache_clear()


def test_eval_user_errors_are_one_message(trained, data_dir, tmp_path, capsys, stand_in_model):
    ckpt = str(trained)
    for extra, message in (
            (["--data-dir", str(tmp_path / "nowhere")], "dataset synth_au/bp4d_tiny is not built in"),
            (["--split", "part4"], "split 'part4' is not in synth_au/bp4d_tiny"),
            (["--builder-config", "disfa_small"], "dataset synth_au/disfa_small is not built in"),
            (["--batch-size", "0"], "data.eval_batch_size = 0: must be a positive integer")):
        rc, _, err = _cli(["eval", "--checkpoint", ckpt, *extra], capsys)
        assert rc == 2, (extra, err)
        _one_message(err)
        assert message in err, (extra, err)
    with pytest.raises(SystemExit) as e:               # a dataset outside the registry: refused by --dataset's choices
        cli.main(["eval", "--checkpoint", ckpt, "--dataset", "nope"])
    assert e.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    rc, _, err = _cli(["eval", "--checkpoint", str(tmp_path / "missing")], capsys)
    assert rc == 2 and "no such checkpoint or directory" in err
    with pytest.raises(UserError):                                          # --debug: the traceback
        cli.main(["--debug", "eval", "--checkpoint", str(tmp_path / "missing")])


def test_eval_on_another_label_set_tables_the_evaluated_data_and_warns(trained, data_dir, tmp_path, capsys,
                                                                       stand_in_model):
    builders.get_builder("synth_au", "disfa_tiny", data_dir).download_and_prepare()
    rc, out, err = _cli(["eval", "--checkpoint", str(trained), "--builder-config", "disfa_tiny", "--out",
                         str(tmp_path / "eval")], capsys)
    assert rc == 0, err
    warning = ("the checkpoint was trained on synth_au/bp4d_tiny (label set bp4d) and is evaluated on "
               "synth_au/disfa_tiny (label set disfa)")
    assert f"warning: {warning}" in err
    md = (tmp_path / "eval" / "eval.md").read_text()
    assert md.startswith(f"**Warning:** {warning}") and "Table III" in md and not re.search(r"Table II\b", md)
    # A checkpoint whose AUs the data lacks: one message, before the model runs.
    config, variables = ckpt_lib.load_for_inference(trained)
    config.aus = (1, 7, 12)
    other = ckpt_lib.save_inference_checkpoint(str(trained) + "_au7", config, variables)
    rc, _, err = _cli(["eval", "--checkpoint", other, "--builder-config", "disfa_tiny"], capsys)
    assert rc == 2 and "has AUs [7] that label set 'disfa'" in err


def test_checkpoint_stores_the_resolved_data_dir(trained, data_dir, tmp_path, monkeypatch):
    config, _ = ckpt_lib.load_for_inference(trained)
    assert config.data.data_dir == os.path.abspath(data_dir)
    monkeypatch.chdir(tmp_path)                            # relative --data-dir, then another working dir
    rel = os.path.relpath(data_dir, tmp_path)
    c = _loop_config(rel, num_epochs=1, max_steps=1)
    _run(c, tmp_path / "w", evaluate=False)
    saved, _ = ckpt_lib.load_for_inference(tmp_path / "w")
    assert saved.data.data_dir == os.path.abspath(data_dir)


def test_other_commands_user_errors_are_one_message(trained, tmp_path, capsys):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 32, 32, 3), np.float32))
    rc, _, err = _cli(["run-arrays", "--checkpoint", str(tmp_path / "missing"), "--input", str(x), "--out",
                       str(tmp_path / "o.npz")], capsys)
    assert rc == 2 and "no such checkpoint or directory" in err
    _one_message(err)
    ckpt = ckpt_lib.save_inference_checkpoint(tmp_path / "c", get_config("jaanet", "tiny"),
                                              ckpt_lib.load_for_inference(trained)[1])
    np.save(x, np.zeros((0, 32, 32, 3), np.float32))                   # an empty array
    rc, _, err = _cli(["run-arrays", "--checkpoint", ckpt, "--input", str(x), "--out", str(tmp_path / "o.npz")],
                      capsys)
    assert rc == 2 and "holds no faces" in err
    _one_message(err)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    rc, _, err = _cli(["convert-jaanet", "--torch-dir", str(tmp_path), "--epoch", "1", "--au-num", "12", "--out",
                       str(tmp_path / "notes")], capsys)
    assert rc == 2 and "exists and is not an inference checkpoint; refusing to overwrite" in err
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    rc, _, err = _cli(["data", "build", "bp4d", "--manual-dir", str(tmp_path / "empty"), "--data-dir",
                       str(tmp_path / "d")], capsys)
    assert rc == 2 and "is empty: put the bp4d release files there" in err
    _one_message(err)


def test_list_layout_with_only_part1_lists_names_the_empty_parts(tmp_path, capsys):
    raw_layouts.write_list(str(tmp_path / "m"), raw_layouts.synthetic_examples("bp4d", **SIZE), "bp4d")
    for p in (2, 3):
        for f in (tmp_path / "m" / "list").glob(f"BP4D_part{p}_*"):
            f.unlink()
    args = ["data", "build", "bp4d", "--manual-dir", str(tmp_path / "m"), "--data-dir", str(tmp_path / "d")]
    rc, _, err = _cli(args, capsys)
    assert rc == 2
    _one_message(err)
    assert "no list files (<name>_part<k>_path.txt) for part2, part3 (present: part1)" in err
    assert "--parts 1" in err
    rc, out, err = _cli([*args, "--parts", "1"], capsys)               # a subset for a quick look
    assert rc == 0, err
    assert "part1: 6 examples" in out and "part2" not in out


def test_disk_full_while_checkpointing_is_one_message(data_dir, tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise ValueError("Error writing: tensorstore ... [OS error: No space left on device]")

    monkeypatch.setattr(train_ckpt.TrainCheckpointer, "save", full)
    with pytest.raises(train_ckpt.DiskFullError, match=r"no space left on the device while writing a checkpoint"):
        _run(_loop_config(data_dir, num_epochs=1, max_steps=2), str(tmp_path / "w"), tensorboard=False)
    assert train_ckpt.is_disk_full(OSError(errno.ENOSPC, "x")) and not train_ckpt.is_disk_full(ValueError("x"))


_FILL_DISK = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1] + "/tests")
    import test_training as t
    from algrnet_jax.errors import run_main
    def main(argv):
        c = t._loop_config(sys.argv[2], num_epochs=1, max_steps=8, checkpoint_every_steps=1, keep_checkpoints=50)
        t._run(c, sys.argv[3], evaluate=False)
    sys.exit(run_main(main, None, "train"))
""")


def _can_mount_tmpfs() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root to mount a small tmpfs in a mount namespace")
def test_a_really_full_disk_gives_one_message(data_dir, tmp_path):
    """The real thing: the workdir on a 300 KB tmpfs that fills up at the third checkpoint."""
    fs = tmp_path / "fs"
    fs.mkdir()
    cmd = (f"mount -t tmpfs -o size=300k tmpfs {fs} && exec {sys.executable} -c '{_FILL_DISK}' {ROOT} "
           f"{data_dir} {fs}/w")
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", cmd], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith(("W0000", "I0000"))]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"train: error: {fs}/w: no space left on the device while "
                                                   "writing a checkpoint"), proc.stderr[-3000:]
    assert "The last complete checkpoint is" in lines[0]


# ---------------------------------------------------------------------------------- 11. integrity

def _flip_a_bit(ckpt_dir):
    data = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(ckpt_dir, "variables")) for f in fs
            if os.sep + "d" + os.sep in os.path.join(r, f)]
    target = max(data, key=os.path.getsize)
    b = bytearray(open(target, "rb").read())
    b[len(b) // 2] ^= 0x10
    open(target, "wb").write(bytes(b))
    return target


def test_a_flipped_bit_in_a_checkpoint_is_found_and_resume_falls_back(trained, data_dir, tmp_path):
    workdir = _copy(trained, tmp_path / "w")
    steps = ckpt_lib.list_steps(workdir / "checkpoints")
    latest = workdir / "checkpoints" / str(steps[-1])
    assert (latest / ckpt_lib.MANIFEST).is_file() and ckpt_lib.verify_manifest(str(latest))
    target = _flip_a_bit(latest)
    with pytest.raises(ckpt_lib.CheckpointError, match=rf"{target}: corrupt checkpoint file"):
        ckpt_lib.load_for_inference(latest)
    config = _loop_config(data_dir, num_epochs=1, max_steps=5)
    with pytest.raises(ckpt_lib.CheckpointError, match=rf"{latest}: cannot read checkpoint \({target}: corrupt.*"
                                                       r"--resume-from-previous"):
        _run(config, workdir, resume=True)
    result = _run(config, workdir, resume=True, resume_from_previous=True)
    assert result["resumed_from_step"] == steps[-2] and os.path.isdir(str(latest) + ".unreadable")


# ------------------------------------------------------------- 12. shards, paths, resume, non-finite outputs

def test_damaged_record_shards_are_one_message_with_the_rebuild_command(trained, data_dir, tmp_path, capsys,
                                                                        stand_in_model):
    from data_pipelines import pipeline

    damaged = _copy(data_dir, tmp_path / "tfds")
    version = damaged / "synth_au" / "bp4d_tiny" / "1.0.0"
    (version / "synth_au-part1.array_record-00000-of-00001").unlink()
    part2 = version / "synth_au-part2.array_record-00000-of-00001"
    os.truncate(part2, os.path.getsize(part2) // 2)
    rebuild = f"rebuild it with `algrnet data build synth_au --config bp4d_tiny --data-dir {damaged} --overwrite`"
    config = _loop_config(data_dir)
    config.data.data_dir = str(damaged)
    with pytest.raises(UserError) as e:        # train: before any record is read
        pipeline.make_source(config)
    assert "part1.array_record-00000-of-00001: missing" in str(e.value) and rebuild in str(e.value)
    assert "part2.array_record-00000-of-00001: truncated or corrupt" in str(e.value)
    rc, _, err = _cli(["data", "stats", "synth_au", "--builder-config", "bp4d_tiny", "--data-dir", str(damaged),
                       "--out", str(tmp_path / "s.png")], capsys)
    assert rc == 2 and rebuild in err and not (tmp_path / "s.png").exists()
    _one_message(err)
    rc, _, err = _cli(["eval", "--checkpoint", str(trained), "--data-dir", str(damaged)], capsys)  # reads part1
    assert rc == 2 and "part1.array_record-00000-of-00001: missing" in err and rebuild in err
    _one_message(err)


_PATHS = textwrap.dedent("""
    import sys
    from algrnet_jax import cli
    for argv in map(str.split, sys.argv[1:]):
        rc = cli.main(argv)
        print(f"rc={rc}", file=sys.stderr, flush=True)
""")


def _run_with_read_only(directory, argvs):
    """Runs ``algrnet`` on each argv in one process in which ``directory`` is read-only: a read-only bind
    mount in a mount namespace as root (root writes through file modes), else mode 0555."""
    cmd = [sys.executable, "-c", _PATHS, *(" ".join(a) for a in argvs)]
    if os.geteuid() == 0:
        if not shutil.which("unshare"):
            pytest.skip("root without unshare: cannot make a read-only directory")
        mount = f"mount --bind {directory} {directory} && mount -o remount,bind,ro {directory} {directory}"
        cmd = ["unshare", "--mount", "sh", "-c", f'{mount} && exec "$0" "$@"', *cmd]
    else:
        os.chmod(directory, 0o555)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"})
    finally:
        os.chmod(directory, 0o755)
    if os.geteuid() == 0 and "rc=" not in proc.stderr:
        pytest.skip(f"no read-only bind mount here: {proc.stderr[-300:]}")
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith(("W0000", "I0000"))]
    return list(zip(lines[::2], lines[1::2])), proc.stderr


def test_read_only_and_file_paths_are_one_message_before_any_work(tmp_path):
    ro, afile = tmp_path / "ro", tmp_path / "afile"
    ro.mkdir()
    (ro / "built").mkdir()
    afile.write_text("x")
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 32, 32, 3), np.float32))
    train = ["train", "--config", "jaanet", "--size", "tiny", "--dataset", "synth_au", "--fold", "1"]
    cases = [
        (["data", "build", "synth_au", "--config", "bp4d_tiny", "--data-dir", str(ro)],
         f"--data-dir {ro}: is on a read-only file system" if os.geteuid() == 0 else f"--data-dir {ro}: is not "),
        (["data", "build", "synth_au", "--config", "bp4d_tiny", "--data-dir", str(ro / "built")],
         f"--data-dir {ro / 'built'}: is "),
        (["data", "build", "synth_au", "--config", "bp4d_tiny", "--data-dir", str(afile)],
         f"--data-dir {afile}: is a file, not a directory"),
        (train + ["--workdir", str(ro / "w")], f"--workdir {ro / 'w'}: cannot be created: {ro} is"),
        (train + ["--workdir", str(afile / "w")], f"--workdir {afile / 'w'}: is inside {afile}, which is a file"),
        (["eval", "--checkpoint", str(tmp_path), "--out", str(ro / "e")], f"--out {ro / 'e'}: cannot be created"),
        (["run-arrays", "--checkpoint", str(tmp_path), "--input", str(x), "--out", str(ro / "o.npz")],
         f"--out {ro}: is "),
        (["predict", "--checkpoint", str(tmp_path), str(x), "--out", str(ro / "p")],
         f"--out {ro / 'p'}: cannot be created: {ro} is"),
        (["predict", "--checkpoint", str(tmp_path), str(x), "--out", str(afile)],
         f"--out {afile}: is a file, not a directory"),
    ]
    results, stderr = _run_with_read_only(ro, [argv for argv, _ in cases])
    assert len(results) == len(cases), stderr[-3000:]
    for (argv, want), (message, rc) in zip(cases, results):
        assert rc == "rc=2" and message.startswith("algrnet: error: ") and want in message, (argv, message)
    assert os.listdir(ro) == ["built"]


def test_a_checksum_less_truncated_checkpoint_is_one_message_without_event_loop_tracebacks(trained, tmp_path):
    """The read path drops the unraisable "Event loop is closed" reports of tensorstore futures completing on
    orbax's closed loops after a failed restore (other unraisable errors still show)."""
    ckpt = _copy(ckpt_lib.resolve_checkpoint(trained), tmp_path / "c")
    (ckpt / ckpt_lib.MANIFEST).unlink()
    data = [p for r, _, fs in os.walk(ckpt / "variables") for f in fs
            if f"{os.sep}d{os.sep}" in (p := os.path.join(r, f))]
    target = max(data, key=os.path.getsize)
    os.truncate(target, os.path.getsize(target) // 2)
    code = textwrap.dedent(f"""
        import gc
        from algrnet_jax import checkpoints
        try:
            checkpoints.load_for_inference({str(ckpt)!r})
        except checkpoints.CheckpointError as e:
            print("error:", e)
        class Late:
            def __init__(self, text): self.text = text
            def __del__(self): raise RuntimeError(self.text)
        Late("Event loop is closed"); Late("another unraisable error"); gc.collect()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.stdout.startswith(f"error: {ckpt}: cannot read checkpoint item 'variables'"), proc.stdout
    assert len(proc.stdout.splitlines()) == 1 and "TensorStore({" not in proc.stdout
    assert "Event loop is closed" not in proc.stderr and "another unraisable error" in proc.stderr


def test_interrupted_first_save_and_resume_without_a_checkpoint_say_so(tmp_path, capsys):
    from algrnet_jax.commands import train as train_cmd

    workdir = tmp_path / "w"
    (workdir / "checkpoints" / "2.orbax-checkpoint-tmp-1700000000").mkdir(parents=True)
    with pytest.raises(ckpt_lib.CheckpointError) as e:
        ckpt_lib.resolve_checkpoint(workdir)
    assert "not a checkpoint" not in str(e.value)
    assert f"{workdir} holds no complete checkpoint: the save 2.orbax-checkpoint-tmp-1700000000" in str(e.value)
    train_cmd.check_resume_target(str(tmp_path / "typo"), required=False)        # --resume on a new workdir
    assert capsys.readouterr().err == (f"algrnet train: --resume: {tmp_path / 'typo'} does not exist (a new work "
                                       "directory); starting from scratch\n")
    rc, _, err = _cli(["train", "--config", "jaanet", "--size", "tiny", "--dataset", "synth_au", "--fold", "1",
                       "--workdir", str(workdir), "--resume-required"], capsys)
    assert rc == 2 and "--resume-required:" in err and "interrupted" in err
    _one_message(err)


@pytest.mark.parametrize("override", ["train.lr=inf", "train.lr=nan", "train.lr=-inf", "train.weight_decay=inf",
                                      "train.lambda_align=nan"])
def test_non_finite_numbers_are_rejected_by_validation(override):
    from algrnet_jax import configs

    config = configs.apply_overrides(get_config("algrnet", "tiny"), [override])
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=re.escape(f"{key} = ") + r".*must be a finite number"):
        validate_config(config)


def test_a_command_group_without_subcommand_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["data"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "{build,show,stats}" in err and "command_1" not in err


def test_run_arrays_on_a_photo_says_what_it_expects(tmp_path, capsys):
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(photo)
    rc, _, err = _cli(["run-arrays", "--checkpoint", str(tmp_path), "--input", str(photo), "--out",
                       str(tmp_path / "o.npz")], capsys)
    assert rc == 2 and f"{photo} is not a NumPy .npy file" in err and "algrnet predict" in err
    assert "pickle" not in err
    _one_message(err)


def test_eval_of_a_checkpoint_with_non_finite_outputs_is_one_message_and_no_result(trained, data_dir, tmp_path,
                                                                                   capsys, stand_in_model):
    """Finite weights whose every eval-mode output is NaN (a BatchNorm variance below zero, as after
    divergence): no F1, no failure rate, no eval.json."""
    config, variables = ckpt_lib.load_for_inference(trained)
    variables["batch_stats"]["bn"]["var"] = -np.ones_like(variables["batch_stats"]["bn"]["var"])
    assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(variables))
    bad = ckpt_lib.save_inference_checkpoint(str(tmp_path / "nan"), config, variables)
    rc, out, err = _cli(["eval", "--checkpoint", bad, "--out", str(tmp_path / "eval")], capsys)
    assert rc == 2 and f"checkpoint {bad}: eval batch 0: the model produced NaN or infinite values" in err, err
    _one_message(err)
    assert "F1" not in out and not (tmp_path / "eval" / "eval.json").exists()


def test_eval_json_is_valid_json_with_null_for_undefined_values(tmp_path, monkeypatch):
    from algrnet_jax import reporting

    monkeypatch.setattr(reporting, "result_markdown", lambda result: "")   # the JSON is under test
    result = {"mean_f1": 50.0, "landmarks": {"mean_error_pct": float("nan"), "failure_rate_pct": np.float32(2.5)},
              "f1": [1.0, float("inf"), np.nan], "counts": np.arange(2)}
    paths = reporting.write_result(result, tmp_path)

    def no_constants(name):
        raise AssertionError(f"{name} in eval.json")

    loaded = json.loads(paths["json"].read_text(), parse_constant=no_constants)
    assert loaded == {"mean_f1": 50.0, "landmarks": {"mean_error_pct": None, "failure_rate_pct": 2.5},
                      "f1": [1.0, None, None], "counts": [0, 1]}


class _EvalNaNNet(TinyAUNet):
    """The stand-in network, diverged: a finite training loss (train mode) and NaN eval-mode outputs."""

    def __call__(self, images, train: bool = False):
        out = super().__call__(images, train)
        return out if train else jax.tree.map(lambda v: v * jnp.nan, out)


def test_training_never_saves_a_model_whose_outputs_are_not_finite(data_dir, tmp_path):
    config = _loop_config(data_dir, num_epochs=1, max_steps=4)
    model = _EvalNaNNet(num_aus=len(config.aus), crop_size=config.crop_size)
    with pytest.raises(NonFiniteLossError, match=r"non-finite eval-mode outputs at step 2 .* Last good "
                                                 r"checkpoint: none\."):
        experiment.train_and_evaluate(config, str(tmp_path / "w"), progress=False, model=model)
    assert ckpt_lib.list_steps(tmp_path / "w" / "checkpoints") == []
