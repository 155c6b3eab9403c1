"""Default output is ours: third-party logs only at the verbose level (algrnet_jax.verbosity)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

import pytest
from absl import logging as absl_logging

from algrnet_jax import cli, verbosity


@pytest.fixture(autouse=True)
def _restore_logging():
    """configure() changes process-wide state: restore it for the tests that follow in this process."""
    absl_level = absl_logging.get_verbosity()
    levels = {name: logging.getLogger(name).level for name in verbosity.THIRD_PARTY_LOGGERS}
    with warnings.catch_warnings():
        yield
    absl_logging.set_verbosity(absl_level)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)

# TensorFlow's C++ start-up line, an absl warning and a deprecation warning, as a data build or training prints them.
NOISY = """
from algrnet_jax import verbosity
verbosity.configure()
import warnings
import tensorflow as tf
from absl import logging
logging.warning("absl says hi")
warnings.warn("old api", DeprecationWarning)
print("ours")
"""


def _run(env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", verbosity.ENV_VAR)}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-W", "default", "-c", NOISY], capture_output=True, text=True, env=env,
                          check=True, timeout=300)


@pytest.mark.parametrize("onednn", [None, "0", "1"])
def test_third_party_logs_are_hidden_by_default_and_shown_when_verbose(onednn):
    """Whatever the CPU: TF_ENABLE_ONEDNN_OPTS=1 makes TensorFlow print its oneDNN start-up lines on any x86."""
    dnn = {} if onednn is None else {"TF_ENABLE_ONEDNN_OPTS": onednn}
    quiet = _run(dnn)
    assert quiet.stdout.strip() == "ours"
    assert quiet.stderr == "", quiet.stderr
    loud = _run({verbosity.ENV_VAR: "1", "TF_ENABLE_ONEDNN_OPTS": "1"})
    assert loud.stdout.strip() == "ours"
    assert "absl says hi" in loud.stderr and "DeprecationWarning: old api" in loud.stderr
    assert "cpu_feature_guard" in loud.stderr or "oneDNN" in loud.stderr, loud.stderr   # TF's C++ start-up


def test_filtered_stderr_drops_only_startup_records(capfd):
    """C++ writes to descriptor 2 directly: INFO / WARNING records go, errors and everything else stay."""
    lines = ["WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
             "I0000 00:00:1796573811.392846    6420 port.cc:153] oneDNN custom operations are on.\n",
             "W1206 16:24:31.123456    4552 port.cc:148] TF_ENABLE_ONEDNN_OPTS is not set\n",
             "E1206 16:24:31.123456    4552 foo.cc:1] a real error\n",
             "a line of ours\n"]
    with verbosity.filtered_stderr():
        for line in lines:
            os.write(2, line.encode())
    err = capfd.readouterr().err
    assert err == lines[3] + lines[4], err
    assert not verbosity.is_startup_line(lines[3]) and verbosity.is_startup_line(lines[1])


def test_verbose_flag_is_exported_to_children(monkeypatch):
    monkeypatch.delenv(verbosity.ENV_VAR, raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")          # a user's own setting is kept
    assert verbosity.configure() is False and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    assert not verbosity.is_verbose()
    assert verbosity.configure(True) is True and os.environ[verbosity.ENV_VAR] == "1"


def test_algrnet_verbose_is_a_global_option(monkeypatch, capsys):
    monkeypatch.delenv(verbosity.ENV_VAR, raising=False)
    with pytest.raises(SystemExit):
        cli.main(["--verbose", "train", "--help"])
    assert verbosity.is_verbose()
    monkeypatch.delenv(verbosity.ENV_VAR)
    with pytest.raises(SystemExit):                           # after the subcommand it is not the global option
        cli.main(["train", "--verbose"])
    assert not verbosity.is_verbose()
    capsys.readouterr()
