"""``algrnet data build`` (data_pipelines.builders.build): its checks, its summary, and that its default
output is ours alone (third-party logs only with --verbose)."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from algrnet_jax.errors import UserError
from data_pipelines.builders import build

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Lines of TensorFlow's start-up, absl, and tfds' own messages and progress bars.
THIRD_PARTY = ("absl", "cpu_feature_guard", "oneDNN", "This TensorFlow binary", "I0000", "W0000",
               "WARNING:", "INFO:", "Downloading and preparing", "downloaded and prepared", "Generating splits",
               "Shuffling", "examples/s")


def _cli(args, data_dir, verbose=False):
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "ALGRNET_VERBOSE", "ABSL_MIN_LOG_LEVEL", "GRPC_VERBOSITY")}
    argv = [sys.executable, "-m", "algrnet_jax.cli", *(["--verbose"] if verbose else []), "data", "build", *args,
            "--data-dir", str(data_dir)]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_first_build_prints_only_our_summary(tmp_path):
    proc = _cli(["synth_au", "--config", "bp4d_tiny"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"synth_au/bp4d_tiny -> {tmp_path}/synth_au/bp4d_tiny/1.0.0",
                                        "  part1: 8 examples", "  part2: 8 examples", "  part3: 8 examples"]
    assert not [line for line in proc.stderr.splitlines() if any(t in line for t in THIRD_PARTY)], proc.stderr
    assert proc.stderr.strip() == ""
    # --verbose: the third-party messages are there (tfds' own lines, absl records).
    verbose = _cli(["synth_au", "--config", "bp4d_tiny", "--overwrite"], tmp_path, verbose=True)
    assert verbose.returncode == 0, verbose.stderr
    assert "Downloading and preparing dataset" in verbose.stdout and "absl" in verbose.stderr
    assert verbose.stdout.splitlines()[-4].startswith("synth_au/bp4d_tiny -> ")


def test_user_errors_name_the_argument(tmp_path):
    with pytest.raises(UserError, match="bp4d needs --manual-dir"):
        build.check_manual_dir("bp4d", None)
    with pytest.raises(UserError, match=f"--manual-dir {tmp_path} is empty"):
        build.check_manual_dir("disfa", str(tmp_path))
    with pytest.raises(UserError, match="is not a directory"):
        build.check_manual_dir("fpara", str(tmp_path / "nope"))
    build.check_manual_dir("synth_au", None)
    assert build.parse_parts("3,1") == (1, 3) and build.parse_parts(None) is None
    for bad in ("0", "4", "1,x", ""):
        with pytest.raises(UserError, match=f"--parts {bad!r}: give part numbers 1..3"):
            build.parse_parts(bad)
    with pytest.raises(UserError, match="unknown config 'nope' of dataset 'synth_au'"):
        build.build_dataset("synth_au", "nope", str(tmp_path))
