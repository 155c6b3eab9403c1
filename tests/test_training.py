"""Train step, training loop (resume, SIGTERM, NaN, reproducibility) and the ``algrnet train`` command."""
import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_au_model import tiny_model  # noqa: E402

from algrnet_jax.configs import get_config  # noqa: E402
from algrnet_jax.training import optim, parallel, state as state_lib, steps  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _random_batch(config, b=4, seed=0):
    rng = np.random.default_rng(seed)
    n, c = len(config.aus), config.crop_size
    return {"image": rng.uniform(-1, 1, (b, c, c, 3)).astype(np.float32),
            "landmarks": rng.uniform(6, c - 6, (b, 49, 2)).astype(np.float32),
            "interocular": rng.uniform(8, 12, (b,)).astype(np.float32),
            "labels": rng.integers(-1, 2, (b, len(config.aus))).astype(np.int32),
            "mask": np.ones([b], np.float32)}


# ------------------------------------------------------------------------------------ train step

def test_step_is_sgd_nesterov_with_coupled_decay_on_the_total_loss():
    """First step from scratch: p1 = p0 - lr * (1 + momentum) * (grad + wd * p0) (PyTorch SGD, empty buffer)."""
    from algrnet_jax.losses import total_loss

    config = get_config("jaanet", "tiny")
    model = tiny_model(config)
    tx = optim.make_optimizer(config.train, 5)
    st = state_lib.new_train_state(model, config, tx, jax.random.PRNGKey(0))
    batch = _random_batch(config)
    w = np.linspace(0.5, 1.5, len(config.aus)).astype(np.float32)

    def loss_fn(params):
        out, new = model.apply({"params": params, "batch_stats": st.batch_stats}, batch["image"], train=True,
                               mutable=["batch_stats"])
        return total_loss(out, batch, w, config)[0], new["batch_stats"]

    (loss, new_bs), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(st.params)
    want = jax.tree.map(lambda p, g: p - 0.01 * 1.9 * (g + 5e-4 * p), st.params, grads)

    mesh = parallel.make_mesh(jax.devices()[:1])
    step = steps.make_train_step(config, mesh, donate=False)
    st1, m = step(st, parallel.shard_batch(batch, mesh), w)
    assert int(st1.step) == 1
    assert float(m["loss"]) == pytest.approx(float(loss), rel=1e-6)
    for key in ("loss_au", "loss_local_au", "loss_align", "grad_norm", "param_norm"):
        assert np.isfinite(float(m[key]))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), st1.params, want)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), st1.batch_stats, new_bs)
    # BatchNorm running mean moved from 0 by 0.1 * batch mean (PyTorch momentum 0.1).
    assert np.any(np.asarray(st1.batch_stats["bn"]["mean"]) != 0)


def test_steps_reduce_the_loss_on_a_fixed_batch():
    config = get_config("jaanet", "tiny")
    config.train.lr = 0.05
    model = tiny_model(config)
    mesh = parallel.make_mesh(jax.devices()[:1])
    tx = optim.make_optimizer(config.train, 100)
    st = state_lib.new_train_state(model, config, tx, jax.random.PRNGKey(1))
    step = steps.make_train_step(config, mesh)
    batch = parallel.shard_batch(_random_batch(config, 8, 3), mesh)
    w = jnp.ones([len(config.aus)])
    losses = []
    for _ in range(15):
        st, m = step(st, batch, w)
        losses.append(float(m["loss"]))
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.98 * losses[0], losses


# ------------------------------------------------------------------------------------------- CLI

def _args(*extra):
    from algrnet_jax.commands import train as cmd

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    return cmd, p.parse_args(["--config", "jaanet", "--size", "tiny", "--dataset", "synth_au", "--fold", "2",
                              "--workdir", "w", *extra])


def test_cli_config_and_typed_overrides():
    cmd, args = _args("--builder-config", "bp4d_tiny", "--set", "train.lr=1", "--set", "data.data_dir=123",
                      "--set", "aus=(1, 2)", "--set", "train.num_epochs=3")
    c = cmd.build_config(args)
    assert (c.data.dataset, c.data.builder_config, c.data.fold) == ("synth_au", "bp4d_tiny", 2)
    assert c.train.lr == 1.0 and isinstance(c.train.lr, float)
    assert c.data.data_dir == "123"            # str entries take the raw text
    assert c.aus == (1, 2) and c.train.num_epochs == 3
    # Without --builder-config: the label set's small synthetic set, or a real dataset's detected layout.
    assert cmd.build_config(_args()[1]).data.builder_config == "bp4d_small"
    assert cmd.build_config(_args("--label-set", "disfa")[1]).data.builder_config == "disfa_small"
    assert cmd.build_config(_args("--config", "algrnet_paralysis")[1]).data.builder_config == "paralysis_small"
    assert cmd.build_config(_args("--dataset", "bp4d")[1]).data.builder_config == "default"
    with pytest.raises(ValueError, match="train.lr=abc"):
        cmd.build_config(_args("--set", "train.lr=abc")[1])
    with pytest.raises(ValueError, match="unknown config key"):
        cmd.build_config(_args("--set", "train.nope=1")[1])
    with pytest.raises(ValueError, match="key=value"):
        cmd.build_config(_args("--set", "train.lr")[1])


# ------------------------------------------------------------------------------------ training loop
# The loop tests run the real input pipeline on synthetic records (synth_au/bp4d_tiny), the real loss,
# optimizer, evaluation and checkpoints, with the stand-in network of tiny_au_model.py (it compiles in
# seconds; the real networks' train step is covered above and in the slow tests).

import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import textwrap  # noqa: E402

from algrnet_jax import experiment  # noqa: E402
from algrnet_jax.errors import UserError  # noqa: E402
from algrnet_jax import checkpoints as ckpt_lib  # noqa: E402
from algrnet_jax.training.loop import NonFiniteLossError  # noqa: E402
from data_pipelines.pipeline import make_source  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """A persistent compilation cache shared with the child processes (they compile the same steps)."""
    path = str(tmp_path_factory.mktemp("jax_cache"))
    old = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")}
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield path
    for k, v in old.items():
        jax.config.update(k, v)


def build_synthetic(data_dir: str) -> None:
    """Builds synth_au/bp4d_tiny."""
    from data_pipelines import builders

    builders.get_builder("synth_au", "bp4d_tiny", data_dir).download_and_prepare()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tfds"))
    build_synthetic(d)
    return d



def _loop_config(data_dir, **train):
    """2 epochs, stopped by train.max_steps 3 steps into the second (so every stop path is exercised)."""
    c = get_config("jaanet", "tiny")
    c.data.dataset, c.data.builder_config, c.data.data_dir = "synth_au", "bp4d_tiny", data_dir
    c.data.batch_size, c.data.eval_batch_size = 2, 8      # 12 training frames (4 of the 16 are validation)
    c.train.num_epochs, c.train.checkpoint_every_steps, c.train.log_every_steps = 2, 2, 1
    c.train.max_steps = make_source(c).steps_per_epoch + 3
    for k, v in train.items():
        c.train[k] = v
    return c


def _run(config, workdir, **kw):
    """``experiment.train_and_evaluate`` (the wiring of every entry point) with the tiny stand-in network."""
    return experiment.train_and_evaluate(config, str(workdir), progress=False, model=tiny_model(config), **kw)


def _final_params(workdir):
    return ckpt_lib.load_for_inference(os.path.join(str(workdir), "checkpoints"))[1]


def _assert_same(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


# Runs train() in a fresh process that signals itself when the metrics of step ``at`` are read (that is
# while step at + 1 runs), after waiting for the step-``wait`` checkpoint to commit (0: no wait):
# mode "kill" = SIGKILL, "term" = SIGTERM.
_CHILD = textwrap.dedent("""
    import json, os, signal, sys, time
    root, data_dir, workdir, mode, at, wait = sys.argv[1:7]
    sys.path.insert(0, os.path.join(root, "tests"))
    import test_training as t
    at, wait = int(at), int(wait)
    def cb(step, metrics):
        if step == at:
            ckpt = os.path.join(workdir, "checkpoints", str(wait))
            deadline = time.time() + 60
            while wait and not os.path.isdir(ckpt) and time.time() < deadline:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL if mode == "kill" else signal.SIGTERM)
    result = t._run(t._loop_config(data_dir), workdir, callbacks=[cb])
    print(json.dumps({k: result[k] for k in ("step", "interrupted")}))
""")


def _child(data_dir, workdir, mode, at, wait=0):
    proc = subprocess.run([sys.executable, "-c", _CHILD, ROOT, data_dir, str(workdir), mode, str(at), str(wait)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "JAX_PLATFORMS": "cpu",
                               "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
                               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})
    return proc


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """One uninterrupted 2-epoch run: (workdir, result, final variables)."""
    workdir = tmp_path_factory.mktemp("ref")
    result = _run(_loop_config(data_dir), workdir)
    return workdir, result, _final_params(workdir)


def test_uninterrupted_run(reference, data_dir):
    workdir, result, _ = reference
    spe = make_source(_loop_config(data_dir)).steps_per_epoch
    assert spe >= 4  # the resume tests need a mid-epoch checkpoint
    assert result["step"] == spe + 3 and result["epoch"] == 1 and result["interrupted"] is None
    val, test = result["evaluations"]["val"], result["evaluations"]["test"]
    assert val["part"] == "val" and test["part"] == "test" and val["frames"] != test["frames"]
    assert 0 <= val["mean_f1"] <= 100 and result["best_mean_f1"] >= val["mean_f1"]
    lines = [json.loads(ln) for ln in open(os.path.join(workdir, "metrics.jsonl"))]
    train_lines = [ln for ln in lines if ln["kind"] == "train"]
    assert [ln["step"] for ln in train_lines] == list(range(1, spe + 4))
    assert {"loss", "loss_au", "loss_local_au", "loss_align", "lr", "images_per_sec"} <= set(train_lines[0])
    schedule = optim.make_schedule(_loop_config(data_dir).train, spe)     # the optimizer's, at update step - 1
    assert [ln["lr"] for ln in train_lines] == [float(str(np.float32(schedule(ln["step"] - 1)))) for ln in train_lines]
    assert train_lines[0]["lr"] == 0.01
    for part in ("val", "test"):                                   # epoch end, max_steps
        assert [ln["step"] for ln in lines if ln["kind"] == part] == [spe, spe + 3]
    # Honest selection: the best checkpoint is the one with the best VALIDATION mean F1 (ties: the later one).
    val_f1 = {ln["step"]: ln["mean_f1"] for ln in lines if ln["kind"] == "val"}
    best_step = max(sorted(val_f1), key=lambda s: (val_f1[s], s))
    assert result["best_step"] == best_step and result["best_mean_f1"] == val_f1[best_step]
    assert result["best_checkpoint"] == str(workdir / "checkpoints" / str(best_step))
    assert ckpt_lib.best_checkpoint(workdir) == result["best_checkpoint"]
    assert ckpt_lib.last_checkpoint(workdir) == str(workdir / "checkpoints" / str(spe + 3))
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    # Same seeds, same result: a second run from scratch ends with identical parameters.
    again = _run(_loop_config(data_dir), workdir.parent / "ref_again")
    _assert_same(_final_params(again["workdir"]), reference[2])


def test_sigkill_mid_epoch_then_resume_is_exact(reference, data_dir, tmp_path):
    proc = _child(data_dir, tmp_path, "kill", 3, wait=2)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert ckpt_lib.list_steps(tmp_path / "checkpoints")  # something to resume from
    result = _run(_loop_config(data_dir), tmp_path, resume=True)
    assert result["resumed_from_step"] == 2  # the checkpoint of step 2, mid-epoch 0
    assert result["step"] == reference[1]["step"]
    _assert_same(_final_params(tmp_path), reference[2])
    assert result["best_mean_f1"] == reference[1]["best_mean_f1"]
    steps_logged = [json.loads(ln)["step"] for ln in open(tmp_path / "metrics.jsonl")
                    if json.loads(ln)["kind"] == "train"]
    assert steps_logged == sorted(set(steps_logged))  # lines logged after the checkpoint were dropped


def test_sigterm_saves_and_exits_cleanly(reference, data_dir, tmp_path):
    proc = _child(data_dir, tmp_path, "term", 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # The signal arrives while step 3 runs (metrics are read one step late): step 3 finishes and is saved.
    assert out["interrupted"] == "SIGTERM" and out["step"] == 3
    assert ckpt_lib.list_steps(tmp_path / "checkpoints")[-1] == 3
    result = _run(_loop_config(data_dir), tmp_path, resume=True)
    assert result["resumed_from_step"] == 3
    _assert_same(_final_params(tmp_path), reference[2])


def test_unreadable_checkpoint_error_and_fallback(reference, data_dir, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(reference[0], workdir)
    steps_ = ckpt_lib.list_steps(workdir / "checkpoints")
    latest = workdir / "checkpoints" / str(steps_[-1])
    for root, _, files in os.walk(latest / "variables"):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"broken")
    with pytest.raises(ckpt_lib.CheckpointError, match=rf"{latest}: cannot read checkpoint.*--resume-from-previous"):
        _run(_loop_config(data_dir), workdir, resume=True)
    result = _run(_loop_config(data_dir), workdir, resume=True, resume_from_previous=True)
    assert result["resumed_from_step"] == steps_[-2]
    assert os.path.isdir(str(latest) + ".unreadable")
    _assert_same(_final_params(workdir), reference[2])


def test_refuses_existing_run_without_resume_and_changed_config(reference, data_dir, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(reference[0], workdir)
    with pytest.raises(ValueError, match="pass --resume"):
        _run(_loop_config(data_dir), workdir)
    with pytest.raises(ValueError, match=r"train.lr: checkpoint 0.01, now 0.02"):
        _run(_loop_config(data_dir, lr=0.02), workdir, resume=True)
    # Training longer is allowed: resume with more steps continues from the end.
    result = _run(_loop_config(data_dir, num_epochs=3, max_steps=reference[1]["step"] + 1), workdir, resume=True)
    assert result["resumed_from_step"] == reference[1]["step"] and result["step"] == reference[1]["step"] + 1


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path):
    config = _loop_config(data_dir, lr=1e5, checkpoint_every_steps=1)
    with pytest.raises(NonFiniteLossError, match=r"non-finite .* at step (\d+).*Last good checkpoint: .*checkpoints"):
        _run(config, tmp_path, evaluate=False)
    steps_ = ckpt_lib.list_steps(tmp_path / "checkpoints")
    assert steps_, "no checkpoint was kept"
    _, variables = ckpt_lib.load_for_inference(tmp_path / "checkpoints")
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables))


def test_without_a_validation_part_there_is_no_best_checkpoint(data_dir, tmp_path, capsys):
    config = _loop_config(data_dir, num_epochs=1, max_steps=2)
    config.data.val_fraction = 0.0
    result = _run(config, tmp_path)
    assert "warning: no validation part (data.val_fraction = 0): no validation-best checkpoint" in capsys.readouterr().err
    assert result["best_checkpoint"] is None and result["best_mean_f1"] is None
    assert set(result["evaluations"]) == {"test"}                  # logged, never selects anything
    assert [json.loads(ln)["kind"] for ln in open(tmp_path / "metrics.jsonl")] == ["train", "train", "test"]
    assert ckpt_lib.best_checkpoint(tmp_path) is None
    with pytest.raises(ckpt_lib.CheckpointError, match="no validation-best checkpoint"):
        experiment.evaluate_selected(tmp_path, experiment.VAL_BEST)
    with pytest.raises(UserError, match="needs a validation part"):
        experiment.check_selection(config, experiment.VAL_BEST)


@pytest.mark.slow
def test_cli_trains_the_real_tiny_model(data_dir, tmp_path, capsys):
    """``algrnet train`` end to end with the real tiny JAA-Net (slow: compiles the full train step)."""
    from algrnet_jax.commands import train as cmd

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    rc = cmd.run(parser.parse_args(["--config", "jaanet", "--size", "tiny", "--dataset", "synth_au", "--builder-config",
                   "bp4d_tiny", "--fold", "1", "--data-dir", data_dir, "--workdir", str(tmp_path), "--no-progress",
                   "--set", "data.batch_size=4", "--set", "train.max_steps=3", "--set", "train.num_epochs=1"]))
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == 3 and out["best_checkpoint"] and 0 <= out["val_mean_f1"] <= 100
    config, variables = ckpt_lib.load_for_inference(tmp_path)
    assert config.name == "jaanet" and "region_learning" in variables["params"]
