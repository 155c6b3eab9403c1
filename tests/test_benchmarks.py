"""The benchmark scripts run end to end at a tiny size (numbers are not asserted: only that they are produced)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import bench_layers, bench_train


def test_bench_layers_tiny_writes_every_implementation(tmp_path):
    out = tmp_path / "layers.json"
    assert bench_layers.main(["--layers", "au_branch", "--tiny", "--rounds", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    runners = {(r["runner"], r["pass"]) for r in rows}
    for impl in ("unrolled", "grouped", "matmul"):
        assert {(f"jax {impl}", "fwd"), (f"jax {impl}", "fwd+bwd")} <= runners
    assert all(r["median_s"] > 0 and r["cpu_util"] >= 0 for r in rows)


@pytest.mark.torch
def test_bench_train_tiny_interleaves_jax_and_torch(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "train.json"
    # One JAX model keeps the test short (the programs of each model take most of its time); ALGRNet's train and eval
    # programs compile in test_models.py and test_main_job.py.
    assert bench_train.main(["--sizes", "tiny", "--models", "jaanet", "--rounds", "1", "--eval-batch-sizes", "2",
                             "--batch-size", "2", "--no-rss", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert sorted((r["mode"], r["framework"], r["model"]) for r in rows) == sorted(
        (m, fw, "jaanet") for m in ("train", "eval") for fw in ("jax", "torch"))
    for r in rows:
        assert r["median_s"] > 0 and r["images_per_s"] > 0
        if r["framework"] == "jax":
            assert r["xla_temp_gib"] >= 0 and r["vs_torch_jaanet"] > 0


def test_gpu_bench_script_runs_on_cpu_at_tiny_size(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "scripts/bench_gpu.sh", "tiny"], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["bench_layers_tiny.json", "bench_train_tiny_auto.json", "bench_train_tiny_bf16.json",
                       "bench_train_tiny_unrolled.json"], written


def test_profile_step_attributes_thunks_to_model_parts(tmp_path):
    from experiments import profile_step

    out = tmp_path / "profile.json"
    assert profile_step.main(["--config", "jaanet", "--mode", "train", "--size", "tiny", "--batch", "2",
                              "--calls", "1", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    parts = {row["name"] for row in r["by_part"]}
    assert any(p.startswith("bwd ") for p in parts) and any(not p.startswith("bwd ") for p in parts)
    assert any("local_au_feat" in p for p in parts)             # Flax module paths from the HLO metadata
    assert r["thunk_s_per_call"] > 0 and r["mean_thunks_at_once"] > 0 and r["gflop_per_call"] > 0
    assert abs(sum(row["share"] for row in r["by_kind"]) - 1) < 0.5
    assert profile_step.model_part("jit(train_step)/transpose(jvp(ALGRNet))/local_au_feat/bn3/reduce_sum", 2) \
        == "bwd local_au_feat/bn3"
    assert profile_step.model_part("jit(apply)/ALGRNet/attention_refine/conv2/conv_general_dilated", 2) \
        == "attention_refine/conv2"
    assert profile_step.model_part("jit(train_step)/reduce_sum", 2) == "(outside modules)"
    assert profile_step.kind("multiply_reduce_fusion.73") == "multiply_reduce_fusion"


def test_bench_ceiling_tiny_measures_gemm_winograd_and_the_eval_ceiling(tmp_path):
    from experiments import bench_ceiling

    out = tmp_path / "ceiling.json"
    assert bench_ceiling.main(["--tiny", "--rounds", "1", "--eval-batch-sizes", "2", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    names = {row["name"] for row in r["rows"]}
    assert {"jax matmul 256", "native fwd", "winograd F(2,3) fwd+bwd", "winograd F(4,3) fwd",
            "jax jaanet eval b2"} <= names
    errors = {row["name"]: row["rel_error"] for row in r["rows"] if "rel_error" in row}
    assert errors["native fwd"] == 0 and errors["winograd F(2,3) fwd"] < 1e-5 and errors["winograd F(4,3) fwd"] < 1e-4
    (c,) = r["eval_ceiling"]
    assert c["gflop"] > 0 and c["jax_gflop_per_s"] > 0 and c["gemm_peak_gflop_per_s"] > 0


def test_winograd_equals_the_convolution_in_float64():
    """The Winograd transforms are exact algebra: in float64 they match the native convolution to rounding,
    including map sizes that are not a multiple of the tile."""
    from experiments import bench_ceiling

    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        for m, size in ((2, 11), (4, 10), (4, 12)):
            xs = (jnp.asarray(rng.standard_normal((2, size, size, 3))),)
            ws = (jnp.asarray(rng.standard_normal((3, 3, 3, 4))),)
            (y,), (ref,) = bench_ceiling.winograd_copies(xs, ws, m), bench_ceiling.native_copies(xs, ws)
            np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-10)
