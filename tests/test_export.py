"""The ONNX export of the eval forward and the CPU runtimes that run it (algrnet_jax/export.py), the Predictor's
backends and ``algrnet export``.

A one-conv stand-in network (tests/tiny_au_model.py) keeps every export to seconds; the JAA-Net and ALGRNet
programs (small and paper size) are checked by ``python -m experiments.bench_export``.
"""
from __future__ import annotations

import pathlib
import sys

import cv2
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algrnet_jax import cli, export, inference
from algrnet_jax.checkpoints import save_inference_checkpoint

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from tiny_au_model import TinyAUNet as tiny_model_cls  # noqa: E402
from tiny_au_model import tiny_checkpoint  # noqa: E402

pytest.importorskip("jax2onnx")
SAMPLES = pathlib.Path(__file__).parent / "fixtures" / "jaanet_samples"
NO_UNITS = frozenset({"avx2", "fma"})
BF16_UNITS = frozenset({"avx2", "avx512f", "avx512_bf16"})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), "jaanet")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALGRNET_CACHE", str(tmp_path / "cache"))


def real_faces(crop: int, aligned: int) -> np.ndarray:
    """The two real aligned BP4D faces of the fixtures, their mirror images, and crops shifted by up to 2 px:
    uint8 -> network input float32 [24, crop, crop, 3]."""
    faces = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(SAMPLES.glob("aligned_*.jpg"))]
    faces += [f[:, ::-1] for f in faces]
    shifted = [np.roll(f, (dy, dx), (0, 1)) for f in faces for dy, dx in ((0, 0), (2, 0), (0, 2), (-2, -2),
                                                                           (2, 2), (-2, 0))]
    return inference.preprocess(np.stack(shifted), aligned, crop)


def test_choose_backend_resolves_by_platform_units_and_request():
    assert export.choose_backend("auto", "auto", platform="gpu") == ("jax", "float32")
    assert export.choose_backend("jax", "auto", platform="cpu", flags=BF16_UNITS) == ("jax", "float32")
    assert export.choose_backend("openvino", "auto", platform="cpu", flags=BF16_UNITS) == ("openvino", "bfloat16")
    assert export.choose_backend("openvino", "auto", platform="cpu", flags=NO_UNITS) == ("openvino", "float32")
    assert export.choose_backend("auto", "auto", platform="cpu", flags=BF16_UNITS) == ("openvino", "bfloat16")
    assert export.choose_backend("auto", "auto", platform="cpu", flags=NO_UNITS) == ("jax", "float32")
    assert export.choose_backend("onnxruntime", "auto", platform="cpu", flags=BF16_UNITS) == ("onnxruntime",
                                                                                              "float32")
    with pytest.raises(ValueError, match="emulated"):
        export.choose_backend("openvino", "bfloat16", platform="cpu", flags=NO_UNITS)
    with pytest.raises(ValueError, match="openvino backend"):
        export.choose_backend("jax", "bfloat16", platform="cpu", flags=BF16_UNITS)
    with pytest.raises(ValueError, match="backend must be one of"):
        export.choose_backend("tensorrt")
    assert export.bf16_native(frozenset({"amx_bf16"})) and not export.bf16_native(NO_UNITS)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_exported_float32_equals_the_jax_forward(tiny, backend, capsys):
    path, config, model, variables = tiny
    p = inference.Predictor.from_checkpoint(path, batch_size=4, model=model, backend=backend, dtype="float32")
    x = np.random.default_rng(1).uniform(-1, 1, size=(6, 32, 32, 3)).astype(np.float32)
    got = p.run(x)
    assert capsys.readouterr().err.count(f"inference: {backend} float32 on ") == 1
    ref = model.apply(variables, x, train=False)
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].shape == ref[k].shape, k
        np.testing.assert_allclose(got[k], np.asarray(ref[k]), rtol=0, atol=1e-5, err_msg=k)
    few = p.run(x[:1], keys=["final_au_prob"])      # one face: padded to the exported batch of 4
    assert "inference:" not in capsys.readouterr().err      # printed once
    np.testing.assert_allclose(few["final_au_prob"], got["final_au_prob"][:1], atol=1e-6)


def test_export_cache_is_keyed_by_the_weights(tiny):
    path, config, model, variables = tiny
    data, names, cached = export.cached_export(model, variables, 32, 2, config.to_json())
    assert not cached and "final_au_prob" in names
    again, names2, cached2 = export.cached_export(model, variables, 32, 2, config.to_json())
    assert cached2 and again == data and names2 == names
    changed = jax.tree.map(lambda v: v * 1.5, variables)
    _, _, cached3 = export.cached_export(model, changed, 32, 2, config.to_json())
    assert not cached3


@pytest.mark.skipif(not export.bf16_native(), reason="this CPU has no bfloat16 units (avx512_bf16 / amx_bf16)")
def test_bfloat16_decisions_agree_with_float32_on_real_faces(tiny):
    path, config, model, variables = tiny
    x = real_faces(config.crop_size, config.aligned_size)
    f32 = inference.Predictor(config, variables, model=model, batch_size=8, backend="openvino", dtype="float32")
    bf16 = inference.Predictor(config, variables, model=model, batch_size=8, backend="openvino", dtype="bfloat16")
    a, b = f32.run(x), bf16.run(x)
    agree = float(np.mean((a["final_au_prob"] > 0.5) == (b["final_au_prob"] > 0.5)))
    max_dp = float(np.abs(a["final_au_prob"] - b["final_au_prob"]).max())
    print(f"bf16 vs f32 on {len(x)} real faces: decisions agree {agree:.3f}, max |dp| {max_dp:.2e}, "
          f"max landmark diff {np.abs(a['landmarks'] - b['landmarks']).max():.3f} px")
    assert agree >= 0.99
    assert 0 < max_dp < 0.05                     # bfloat16 did run (not a float32 copy), and close
    assert np.abs(a["landmarks"] - b["landmarks"]).max() < 0.5


def test_export_command_writes_a_file_onnxruntime_runs(tiny, tmp_path, capsys, monkeypatch):
    import onnxruntime as ort

    from algrnet_jax.models import networks

    path, config, model, variables = tiny
    monkeypatch.setattr(networks, "create_model", lambda cfg: model)     # the stand-in network's checkpoint
    out = tmp_path / "model.onnx"
    assert cli.main(["export", str(path), "--format", "onnx", "--out", str(out), "--batch-size", "2"]) == 0
    assert "export: " in capsys.readouterr().out
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).uniform(-1, 1, size=(2, 32, 32, 3)).astype(np.float32)
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, {"images": x})))
    ref = model.apply(variables, x, train=False)
    for k in names:
        np.testing.assert_allclose(got[k], np.asarray(ref[k]), atol=1e-5, err_msg=k)
    # an existing file is kept unless --force
    before = out.read_bytes()
    assert cli.main(["export", str(path), "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.read_bytes() == before
    assert cli.main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "m2.onnx")]) == 2
    assert "export:" in capsys.readouterr().err and not (tmp_path / "m2.onnx").exists()


def test_openvino_is_imported_without_its_usage_telemetry():
    """Importing openvino would fork a process that sends a usage event (and makes JAX warn about fork)."""
    import subprocess

    pytest.importorskip("openvino")
    code = ("import os, sys\n"
            "forks = []\n"
            "os.register_at_fork(before=lambda: forks.append(1))\n"
            "from algrnet_jax.export import import_openvino\n"
            "import_openvino().Core()\n"
            "import time; time.sleep(1)\n"
            "assert sys.modules.get('openvino_telemetry') is None, 'telemetry imported'\n"
            "assert not forks, 'forked'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


class ScanAUNet(nn.Module):
    """The stand-in network with a reverse scan over its landmarks (the form of ALGRNet's SkipBiLSTM)."""

    num_aus: int
    crop_size: int

    @nn.compact
    def __call__(self, images, train: bool = False):
        out = dict(tiny_model_cls(num_aus=self.num_aus, crop_size=self.crop_size, name="tiny")(images, train))
        _, ys = jax.lax.scan(lambda c, p: (c + p, c + p), jnp.zeros_like(out["landmarks"][:, 0]),
                             jnp.swapaxes(out["landmarks"], 0, 1), reverse=True)
        out["landmarks"] = jnp.swapaxes(ys, 0, 1) / 49.0
        return out


class FoldedKernelAUNet(nn.Module):
    """The stand-in network with a ``reshape`` that transposes first (``lax.reshape(..., dimensions=...)``, the
    form vmap gives ALGRNet's per-AU convolution kernels) on its landmarks."""

    num_aus: int = 3
    crop_size: int = 32

    @nn.compact
    def __call__(self, images, train: bool = False):
        out = dict(tiny_model_cls(num_aus=self.num_aus, crop_size=self.crop_size, name="tiny")(images, train))
        b = out["landmarks"].shape[0]
        folded = jax.lax.reshape(out["landmarks"], (2, 49, b), dimensions=(2, 1, 0))
        out["landmarks"] = jnp.transpose(folded[:, ::-1, :], (2, 1, 0)) + out["landmarks"]
        return out


@pytest.mark.parametrize("network", [ScanAUNet, FoldedKernelAUNet])
def test_scans_and_transposing_reshapes_export_exactly(tiny, network):
    """ALGRNet's two forms that jax2onnx does not take as they are: a reverse scan (SkipBiLSTM) and a reshape
    with ``dimensions`` (dropped by jax2onnx: outputs 1e-2 off before ``inference_program`` rewrote it)."""
    _, config, _, _ = tiny
    model = network(num_aus=len(config.aus), crop_size=config.crop_size)
    variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32), train=False)
    x = np.random.default_rng(3).uniform(-1, 1, size=(3, 32, 32, 3)).astype(np.float32)
    p = inference.Predictor(config, variables, model=model, batch_size=2, backend="onnxruntime")
    got, ref = p.run(x), model.apply(variables, x, train=False)
    assert p.backend == "onnxruntime"
    for k in ref:
        np.testing.assert_allclose(got[k], np.asarray(ref[k]), rtol=0, atol=1e-5, err_msg=k)


def _unconvertible(*args, **kwargs):
    raise export.ExportError("jax2onnx could not convert the eval forward: NotImplementedError: no plugin")


def test_auto_falls_back_to_jax_where_the_export_fails_and_an_explicit_backend_does_not(tiny, capsys, monkeypatch):
    path, config, model, variables = tiny
    monkeypatch.setattr(export, "export_onnx", _unconvertible)
    x = np.random.default_rng(3).uniform(-1, 1, size=(3, 32, 32, 3)).astype(np.float32)
    with pytest.raises(export.ExportError):
        inference.Predictor(config, variables, model=model, batch_size=2, backend="onnxruntime").run(x)
    if export.choose_backend("auto")[0] == "jax":
        pytest.skip("auto is the jax backend here (no openvino, or a CPU without bfloat16 units)")
    p = inference.Predictor(config, variables, model=model, batch_size=2, backend="auto")
    got = p.run(x)
    err = capsys.readouterr().err
    assert "inference: openvino " in err and "inference: jax float32 on " in err
    assert "(jax2onnx could not convert the eval forward" in err
    assert p.backend == "jax"
    np.testing.assert_allclose(got["landmarks"], np.asarray(model.apply(variables, x)["landmarks"]), atol=1e-5)


def test_export_command_reports_a_failed_conversion_in_one_message(tiny, tmp_path, capsys, monkeypatch):
    from algrnet_jax.models import networks

    path, config, model, _ = tiny
    monkeypatch.setattr(networks, "create_model", lambda cfg: model)
    monkeypatch.setattr(export, "export_onnx", _unconvertible)
    assert cli.main(["export", str(path), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "export:" in err and "could not convert" in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()
