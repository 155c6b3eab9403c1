"""Inference module: host preprocessing equals the eval input pipeline on real records; the Predictor's
one jitted forward, fixed-shape batching and output names."""
from __future__ import annotations

import pathlib
import sys

import cv2
import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from algrnet_jax import configs, inference
from algrnet_jax.training.checkpoint import save_inference_checkpoint
from data_pipelines import builders, pipeline

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from tiny_au_model import tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tfds"))
    builders.get_builder("synth_au", "bp4d_tiny", d).download_and_prepare()
    return d


@pytest.mark.parametrize("size", ["tiny", "small", "paper"])
def test_preprocess_equals_the_eval_pipeline_on_records(data_dir, size):
    """Decoded record JPEGs (OpenCV) -> Predictor preprocessing == eval_batches' images, bit for bit;
    predicted-crop landmarks map back to the records' aligned landmarks."""
    c = configs.get_config("algrnet", size)
    c.data.data_dir, c.data.builder_config, c.data.eval_batch_size = data_dir, "bp4d_tiny", 4
    builder = builders.get_builder("synth_au", "bp4d_tiny", data_dir)
    records = list(tfds.as_numpy(builder.as_dataset(split="part1", decoders={"image": tfds.decode.SkipDecoding()})))
    batches = list(pipeline.eval_batches(c))
    images = np.concatenate([b["image"] for b in batches])[:len(records)]
    landmarks = np.concatenate([b["landmarks"] for b in batches])[:len(records)]
    raw = np.stack([cv2.cvtColor(cv2.imdecode(np.frombuffer(r["image"], np.uint8), cv2.IMREAD_COLOR),
                                 cv2.COLOR_BGR2RGB) for r in records])
    ours = inference.preprocess(raw, c.aligned_size, c.crop_size)
    assert ours.shape == images.shape == (len(records), c.crop_size, c.crop_size, 3)
    np.testing.assert_array_equal(ours, images)
    back = inference.crop_to_aligned(landmarks, c.aligned_size, c.crop_size)
    np.testing.assert_allclose(back, np.stack([r["landmarks"] for r in records]), atol=2e-4)


def test_resize_weights_match_tf_antialiased_bilinear():
    x = np.random.default_rng(0).integers(0, 256, size=(2, 200, 200, 3)).astype(np.uint8)
    for size in (36, 72, 150):
        tf_out = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(x, [size, size], "bilinear", antialias=True)),
                                          0, 255), tf.uint8).numpy()
        np.testing.assert_array_equal(inference.resize_aligned(x, size), tf_out)


def test_preprocess_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        inference.preprocess(np.zeros((200, 200, 3), np.float32), 200, 176)
    with pytest.raises(ValueError, match="larger"):
        inference.preprocess(np.zeros((200, 200, 3), np.uint8), 100, 176)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    config = configs.get_config("algrnet", "tiny")
    model = tiny_model(config)
    variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32), train=False)
    path = save_inference_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", config, variables)
    return path, config, model, variables


def test_predictor_runs_padded_fixed_batches_with_one_trace(tiny_checkpoint):
    path, config, model, variables = tiny_checkpoint
    p = inference.Predictor.from_checkpoint(path, batch_size=3, model=model)
    assert (p.crop_size, p.aligned_size, p.task, p.prob_key) == (32, 36, "au", "final_au_prob")
    assert p.class_names == ["AU01", "AU04", "AU12"]
    x = np.random.default_rng(1).uniform(-1, 1, size=(7, 32, 32, 3)).astype(np.float32)
    out = p.run(x)
    ref = model.apply(variables, x, train=False)
    assert set(out) == set(ref)
    for k in out:
        np.testing.assert_allclose(out[k], np.asarray(ref[k]), atol=1e-5, err_msg=k)
    few = p.run(x[:2], keys=["final_au_prob"], fixed_shape=True)
    assert list(few) == ["final_au_prob"] and few["final_au_prob"].shape == (2, 3)
    np.testing.assert_allclose(few["final_au_prob"], out["final_au_prob"][:2], atol=1e-6)
    assert p._jitted(None)._cache_size() == 1            # 7 faces in batches of 3: one shape
    assert p._jitted(("final_au_prob",))._cache_size() == 1
    assert p.run(x[:0]) == {}
    dev = p.forward(jax.device_put(x[:3]))
    assert isinstance(dev["landmarks"], jax.Array) and dev["landmarks"].shape == (3, 49, 2)


@pytest.fixture(scope="module")
def jaanet_checkpoints(tmp_path_factory):
    """A tiny JAA-Net checkpoint (the real network) and a copy with one NaN weight: (good, bad, crop)."""
    from algrnet_jax.models.networks import create_model

    config = configs.get_config("jaanet", "tiny")
    shapes = jax.eval_shape(create_model(config).init, jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))
    # Cheap finite weights without the (slow, eager) init: small constants, unit running variances.
    variables = jax.tree_util.tree_map_with_path(
        lambda path, s: np.full(s.shape, 1.0 if "var" in jax.tree_util.keystr(path) else 0.01, np.float32), shapes)
    tmp = tmp_path_factory.mktemp("jaanet")
    good = save_inference_checkpoint(tmp / "good", config, variables)
    leaves, treedef = jax.tree.flatten(variables["params"])
    leaves[0] = np.full_like(leaves[0], np.nan)
    bad = save_inference_checkpoint(tmp / "bad", config, {"params": jax.tree.unflatten(treedef, leaves),
                                                          "batch_stats": variables["batch_stats"]})
    return good, bad, tmp


def test_run_arrays_checks_range_finiteness_and_reports_the_real_file(jaanet_checkpoints, capsys):
    from algrnet_jax import cli

    good, bad, tmp = jaanet_checkpoints
    faces = np.random.default_rng(0).uniform(-1, 1, size=(3, 32, 32, 3)).astype(np.float32)
    np.save(tmp / "faces.npy", faces)
    np.save(tmp / "raw.npy", (faces + 1) * 127.5)
    (tmp / "outdir").mkdir()
    assert cli.main(["run-arrays", "--checkpoint", good, "--input", str(tmp / "faces.npy"),
                     "--out", str(tmp / "outdir")]) == 0
    assert f"-> {tmp / 'outdir' / 'faces.npz'}:" in capsys.readouterr().out
    assert np.load(tmp / "outdir" / "faces.npz")["landmarks"].shape == (3, 98)
    assert cli.main(["run-arrays", "--checkpoint", good, "--input", str(tmp / "faces.npy"),
                     "--out", str(tmp / "plain")]) == 0
    assert f"-> {tmp / 'plain.npz'}:" in capsys.readouterr().out and (tmp / "plain.npz").is_file()
    assert cli.main(["run-arrays", "--checkpoint", good, "--input", str(tmp / "raw.npy"),
                     "--out", str(tmp / "raw.npz")]) == 2
    err = capsys.readouterr().err
    assert "raw.npy: values span" in err and "unscaled 0..255" in err and "--no-range-check" in err
    assert "Traceback" not in err and not (tmp / "raw.npz").exists()
    assert cli.main(["run-arrays", "--checkpoint", good, "--input", str(tmp / "raw.npy"), "--no-range-check",
                     "--out", str(tmp / "raw.npz")]) == 0
    capsys.readouterr()
    assert cli.main(["run-arrays", "--checkpoint", bad, "--input", str(tmp / "faces.npy"),
                     "--out", str(tmp / "nan.npz")]) == 2
    err = capsys.readouterr().err
    assert "NaN or infinite values in" in err and "bad" in err and not (tmp / "nan.npz").exists()
    np.save(tmp / "empty.npy", faces[:0])
    assert cli.main(["run-arrays", "--checkpoint", good, "--input", str(tmp / "empty.npy"),
                     "--out", str(tmp / "e.npz")]) == 2
    assert "holds no faces" in capsys.readouterr().err
    assert cli.main(["run-arrays", "--checkpoint", str(tmp / "nowhere"), "--input", str(tmp / "faces.npy"),
                     "--out", str(tmp / "e.npz")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
