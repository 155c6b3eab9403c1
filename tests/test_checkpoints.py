"""The checkpoint format (inference save/load round trip, path resolution, clear errors) and the training
manager that writes it."""
import os

import jax.numpy as jnp
import numpy as np
import pytest

from algrnet_jax.configs import get_config
from algrnet_jax import checkpoints as ckpt
from algrnet_jax.training.checkpoint import TrainCheckpointer


def _variables(seed=0):
    rng = np.random.default_rng(seed)
    return {"params": {"conv": {"kernel": rng.normal(size=(3, 3, 3, 4)).astype(np.float32),
                                "bias": rng.normal(size=(4,)).astype(np.float32)}},
            "batch_stats": {"bn": {"mean": rng.normal(size=(4,)).astype(np.float32),
                                   "var": rng.uniform(size=(4,)).astype(np.float32)}}}


def _assert_tree_equal(a, b):
    assert set(a) == set(b)
    for k in a:
        if isinstance(a[k], dict):
            _assert_tree_equal(a[k], b[k])
        else:
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


def test_inference_round_trip(tmp_path):
    config = get_config("jaanet", "tiny", "disfa")
    config.train.lr = 0.123
    v = _variables()
    path = ckpt.save_inference_checkpoint(tmp_path / "conv", config, v, source="unit test")
    c2, v2 = ckpt.load_for_inference(path)
    assert c2 == config  # tuples stay tuples, every field restored
    assert isinstance(c2.aus, tuple) and c2.train.lr == 0.123
    _assert_tree_equal(v, v2)
    # Overwriting an inference checkpoint is allowed.
    ckpt.save_inference_checkpoint(path, config, _variables(1))
    _assert_tree_equal(_variables(1), ckpt.load_for_inference(path)[1])


def _train_items():
    return {"opt_state": {"mu": jnp.zeros(3)}, "step": jnp.asarray(0), "rng": jnp.zeros(2, jnp.uint32)}


def test_workdir_resolution_takes_the_last_checkpoint_and_best_only_when_asked(tmp_path, monkeypatch):
    config = get_config("jaanet", "tiny")
    meta = {"kind": "train", "config": ckpt.config_to_dict(config)}
    # One manager: the latest 2 plus the best by validation mean F1 (mid-epoch saves carry none).
    m = TrainCheckpointer(tmp_path, keep=2, track_best=True)
    for step, f1 in ((1, 50.0), (2, 80.0), (3, None), (4, 60.0), (5, 70.0)):
        m.save(step, _variables(step), _train_items(), meta, val_mean_f1=f1)
    m.wait()
    assert m.best_step() == 2
    m.close()
    assert ckpt.list_steps(tmp_path / "checkpoints") == [2, 4, 5]        # latest 2 + the best
    assert (tmp_path / "checkpoints" / "2" / ckpt.MANIFEST).is_file()
    assert ckpt.resolve_checkpoint(tmp_path) == str(tmp_path / "checkpoints" / "5")
    assert ckpt.last_checkpoint(tmp_path) == str(tmp_path / "checkpoints" / "5")
    assert ckpt.best_checkpoint(tmp_path) == str(tmp_path / "checkpoints" / "2")
    assert ckpt.resolve_checkpoint(tmp_path, best=True) == str(tmp_path / "checkpoints" / "2")
    _assert_tree_equal(_variables(5), ckpt.load_for_inference(tmp_path)[1])
    _assert_tree_equal(_variables(2), ckpt.load_for_inference(tmp_path, best=True)[1])
    _assert_tree_equal(_variables(4), ckpt.load_for_inference(tmp_path / "checkpoints" / "4")[1])
    # A path relative to the working directory (the main job's default runs/main_job): orbax alone fails there.
    monkeypatch.chdir(tmp_path.parent)
    _assert_tree_equal(_variables(5), ckpt.load_for_inference(tmp_path.name)[1])
    _assert_tree_equal(_variables(4), ckpt.load_for_inference(f"{tmp_path.name}/checkpoints/4")[1])
    # Resumed, the manager reads the ranking back from the checkpoints.
    m = TrainCheckpointer(tmp_path, keep=2, track_best=True)
    assert m.best_step() == 2 and m.latest_step() == 5
    m.close()


def test_without_validation_there_is_no_best(tmp_path):
    meta = {"kind": "train", "config": ckpt.config_to_dict(get_config("jaanet", "tiny"))}
    m = TrainCheckpointer(tmp_path, keep=2)
    for step in (1, 2, 3):
        m.save(step, _variables(step), _train_items(), meta, val_mean_f1=float(step))   # ignored: no tracking
    m.wait()
    assert m.best_step() is None
    m.close()
    assert ckpt.list_steps(tmp_path / "checkpoints") == [2, 3]
    assert ckpt.best_checkpoint(tmp_path) is None
    with pytest.raises(ckpt.CheckpointError, match="no validation-best checkpoint.*val_fraction"):
        ckpt.resolve_checkpoint(tmp_path, best=True)


def test_clear_errors(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no such checkpoint"):
        ckpt.load_for_inference(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="empty.*not a checkpoint"):
        ckpt.load_for_inference(tmp_path / "empty")
    path = ckpt.save_inference_checkpoint(tmp_path / "c", get_config("jaanet", "tiny"), _variables())
    # Corrupt the arrays: the error names the checkpoint and the item.
    for root, _, files in os.walk(os.path.join(path, "variables")):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")
    with pytest.raises(ckpt.CheckpointError, match=r"c/variables/.*: corrupt checkpoint file"):
        ckpt.load_for_inference(path)
    os.remove(os.path.join(path, ckpt.MANIFEST))   # without its manifest: orbax's error, naming the item
    with pytest.raises(ckpt.CheckpointError, match=r"c: cannot read checkpoint item 'variables'"):
        ckpt.load_for_inference(path)
    with open(os.path.join(path, "meta", "metadata"), "w") as fh:
        fh.write("{not json")
    with pytest.raises(ckpt.CheckpointError, match=r"c: cannot read checkpoint metadata"):
        ckpt.load_for_inference(path)
    # A non-checkpoint directory is never overwritten.
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notes.txt").write_text("x")
    with pytest.raises(ckpt.CheckpointError, match="refusing to overwrite"):
        ckpt.save_inference_checkpoint(tmp_path / "work", get_config("jaanet", "tiny"), _variables())
