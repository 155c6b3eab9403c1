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
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", verbosity.ENV_VAR)}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-W", "default", "-c", NOISY], capture_output=True, text=True, env=env,
                          check=True, timeout=300)


def test_third_party_logs_are_hidden_by_default_and_shown_when_verbose():
    quiet = _run({})
    assert quiet.stdout.strip() == "ours"
    assert quiet.stderr == "", quiet.stderr
    loud = _run({verbosity.ENV_VAR: "1"})
    assert loud.stdout.strip() == "ours"
    assert "absl says hi" in loud.stderr and "DeprecationWarning: old api" in loud.stderr
    assert "cpu_feature_guard" in loud.stderr or "oneDNN" in loud.stderr, loud.stderr   # TF's C++ start-up


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
