"""Inference module: host preprocessing (``Predictor.preprocess``) equals the eval input pipeline on real
records; the Predictor's one jitted forward, fixed-shape batching and output names, on a trained and on a
converted JAA-Net checkpoint; face arrays in the PyTorch release's layouts (run-arrays)."""
from __future__ import annotations

import pathlib
import sys

import cv2
import jax
import numpy as np
import pytest
import tensorflow as tf

from algrnet_jax import cli, configs, inference
from algrnet_jax.interop import convert
from algrnet_jax.models.networks import create_model
from algrnet_jax.checkpoints import save_inference_checkpoint
from data_pipelines import builders, pipeline
from data_pipelines.builders import examples

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import tiny_au_model  # noqa: E402


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
    records = list(examples.read_back(builder, "part1", decode_images=False))
    batches = list(pipeline.make_source(c, training=False).eval_batches("test"))
    images = np.concatenate([b["image"] for b in batches])[:len(records)]
    landmarks = np.concatenate([b["landmarks"] for b in batches])[:len(records)]
    raw = np.stack([cv2.cvtColor(cv2.imdecode(np.frombuffer(r["image"], np.uint8), cv2.IMREAD_COLOR),
                                 cv2.COLOR_BGR2RGB) for r in records])
    ours = inference.Predictor(c, {"params": {}}).preprocess(raw)
    assert ours.shape == images.shape == (len(records), c.crop_size, c.crop_size, 3)
    np.testing.assert_array_equal(ours, images)
    np.testing.assert_array_equal(inference.preprocess(raw, c.aligned_size, c.crop_size), images)
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
    return tiny_au_model.tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), "algrnet")


def test_predictor_runs_padded_fixed_batches_with_one_trace(tiny_checkpoint):
    path, config, model, variables = tiny_checkpoint
    p = inference.Predictor.from_checkpoint(path, batch_size=3, model=model, backend="jax")
    assert (p.crop_size, p.aligned_size, p.task.name, p.prob_key) == (32, 36, "au", "final_au_prob")
    assert p.class_names == ["AU01", "AU04", "AU12"]
    x = np.random.default_rng(1).uniform(-1, 1, size=(7, 32, 32, 3)).astype(np.float32)
    # the jitted forward is shared by equal models (other tests' stand-ins too): count the traces this test adds
    traced = {keys: p._jitted(keys)._cache_size() for keys in (None, ("final_au_prob",))}
    out = p.run(x)
    ref = model.apply(variables, x, train=False)
    assert set(out) == set(ref)
    for k in out:
        np.testing.assert_allclose(out[k], np.asarray(ref[k]), atol=1e-5, err_msg=k)
    few = p.run(x[:2], keys=["final_au_prob"], fixed_shape=True)
    assert list(few) == ["final_au_prob"] and few["final_au_prob"].shape == (2, 3)
    np.testing.assert_allclose(few["final_au_prob"], out["final_au_prob"][:2], atol=1e-6)
    for keys, before in traced.items():                 # 7 faces in batches of 3: at most one new shape
        assert p._jitted(keys)._cache_size() - before <= 1, keys
    assert p.run(x[:0]) == {}
    dev = p.forward(jax.device_put(x[:3]))
    assert isinstance(dev["landmarks"], jax.Array) and dev["landmarks"].shape == (3, 49, 2)


@pytest.fixture(scope="module")
def jaanet_checkpoints(tmp_path_factory):
    """A tiny JAA-Net checkpoint (the real network) and a copy with one NaN weight: (good, bad, crop)."""
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


def test_predictor_loads_a_converted_jaanet_checkpoint(tmp_path):
    """Release state_dicts -> convert_state_dicts -> an inference checkpoint as convert-jaanet writes it ->
    Predictor.from_checkpoint: names of the AU task, outputs equal to the model on the original weights."""
    config = configs.get_config("jaanet", "tiny")
    model = create_model(config)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map_with_path(
        lambda path, s: (rng.uniform(0.5, 1.5, s.shape) if "var" in jax.tree_util.keystr(path)
                         else 0.1 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
    converted = convert.convert_state_dicts(convert.flax_to_state_dicts(variables, config), config)
    path = save_inference_checkpoint(tmp_path / "converted", config, converted, source="release",
                                     source_epoch="1", converted_from="PyTorch JAA-Net release")
    p = inference.Predictor.from_checkpoint(path, batch_size=2, backend="jax")
    assert (p.task.name, p.prob_key, p.class_names, p.crop_size) == ("au", "final_au_prob", ["AU01", "AU04", "AU12"],
                                                                      32)
    x = rng.uniform(-1, 1, size=(3, 32, 32, 3)).astype(np.float32)
    out = p.run_arrays(x)
    ref = model.apply(variables, x, train=False)
    np.testing.assert_allclose(out["au_logprob"], np.asarray(ref["au_logprob"]).transpose(0, 2, 1), atol=1e-5)
    np.testing.assert_allclose(out["landmarks"], np.asarray(ref["landmarks"]).reshape(3, 98), atol=1e-4)
    np.testing.assert_allclose(out["final_au_prob"], np.asarray(ref["final_au_prob"]), atol=1e-5)


def test_array_layouts_and_errors():
    x = np.zeros((2, 3, 32, 32), np.float32)
    y, layout = inference.to_nhwc(x, 32)
    assert layout == "nchw" and y.shape == (2, 32, 32, 3)
    y, layout = inference.to_nhwc(x.transpose(0, 2, 3, 1), 32)
    assert layout == "nhwc" and y.shape == (2, 32, 32, 3)
    with pytest.raises(ValueError, match="ambiguous"):
        inference.to_nhwc(np.zeros((1, 3, 3, 3), np.float32), 3)
    with pytest.raises(ValueError, match="faces.npy: as NCHW this is 32x32 with 3 channels; the checkpoint wants 176x176"):
        inference.to_nhwc(x, 176, name="faces.npy")
    with pytest.raises(ValueError, match="float pixels"):
        inference.to_nhwc(x.astype(np.uint8), 32)
    with pytest.raises(ValueError, match="4-D"):
        inference.to_nhwc(x[0], 32)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        inference.to_nhwc(bad, 32)
    out = inference.torch_layout({"landmarks": np.zeros((2, 49, 2)), "au_logprob": np.arange(12.).reshape(1, 6, 2)})
    assert out["landmarks"].shape == (2, 98)
    np.testing.assert_array_equal(out["au_logprob"][0, 1], [1, 3, 5, 7, 9, 11])
