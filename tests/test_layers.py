"""Layers point one way (docs/design.md, module map).

The neutral modules (tasks, configs) load no layer above them; the checkpoint format loads neither the trainer
nor inference, interop, predict, models, evaluation or the command layer; the trainer loads neither the data package nor
evaluation nor the command layer; evaluation and reporting load neither the trainer loop nor the command layer;
the data package imports only the neutral library modules.
"""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# What data_pipelines may import from algrnet_jax: shared definitions that import no layer above them.
NEUTRAL = {"algrnet_jax", "algrnet_jax.au_sets", "algrnet_jax.tasks", "algrnet_jax.metrics", "algrnet_jax.configs",
           "algrnet_jax.errors", "algrnet_jax.fileio", "algrnet_jax.locking", "algrnet_jax.verbosity"}


def _imports(path: pathlib.Path) -> list[str]:
    """Absolute module names imported anywhere in ``path`` (``from a import b`` gives ``a.b``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [f"{node.module}.{a.name}" for a in node.names]
    return out


def _library_module(name: str) -> str | None:
    """The algrnet_jax module an import names (``algrnet_jax.au_sets.AU_SETS`` -> ``algrnet_jax.au_sets``)."""
    parts = name.split(".")
    if parts[0] != "algrnet_jax":
        return None
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


COMMAND_LAYER = ("algrnet_jax.commands", "algrnet_jax.experiment", "experiments")
DATA_AND_EVAL = ("data_pipelines", "algrnet_jax.evaluation", "algrnet_jax.reporting")


@pytest.mark.parametrize("module, forbidden", [
    ("algrnet_jax.tasks", COMMAND_LAYER + DATA_AND_EVAL + ("algrnet_jax.training", "algrnet_jax.models", "tensorflow")),
    ("algrnet_jax.configs", COMMAND_LAYER + DATA_AND_EVAL + ("algrnet_jax.training", "tensorflow")),
    ("algrnet_jax.training.loop", COMMAND_LAYER + DATA_AND_EVAL),
    ("algrnet_jax.evaluation", COMMAND_LAYER + ("algrnet_jax.training.loop",)),
    ("algrnet_jax.reporting", COMMAND_LAYER + ("algrnet_jax.training.loop",)),
    ("algrnet_jax.checkpoints", COMMAND_LAYER + DATA_AND_EVAL + (
        "algrnet_jax.training", "algrnet_jax.inference", "algrnet_jax.interop", "algrnet_jax.predict",
        "algrnet_jax.models")),
])
def test_importing_a_layer_loads_nothing_above_it(module: str, forbidden: tuple[str, ...]):
    """In a fresh interpreter, importing ``module`` loads none of ``forbidden`` (itself or what it imports)."""
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith({forbidden!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_the_trainer_source_imports_no_data_evaluation_or_command_layer():
    """Not even lazily: no import statement in training/** names those layers."""
    files = sorted((ROOT / "algrnet_jax" / "training").glob("*.py"))
    bad = [f"{f.name} imports {name}" for f in files for name in _imports(f)
           if name.startswith(COMMAND_LAYER + DATA_AND_EVAL)]
    assert files and bad == []


def test_the_checkpoint_format_source_imports_only_neutral_modules():
    """Not even lazily: ``checkpoints.py`` names no library module above the neutral ones."""
    f = ROOT / "algrnet_jax" / "checkpoints.py"
    bad = [name for name in _imports(f) if (m := _library_module(name)) is not None and m not in NEUTRAL]
    assert bad == []


def test_data_pipelines_import_only_neutral_library_modules():
    files = sorted((ROOT / "data_pipelines").rglob("*.py"))
    assert len(files) > 10
    bad = [f"{f.relative_to(ROOT)} imports {name}" for f in files for name in _imports(f)
           if (m := _library_module(name)) is not None and m not in NEUTRAL]
    assert bad == []


def test_the_check_sees_a_forbidden_import(tmp_path):
    """The scan above is not vacuous: a training import is reported."""
    f = tmp_path / "x.py"
    f.write_text("from algrnet_jax.training import loop\nimport algrnet_jax.evaluation\nfrom algrnet_jax import au_sets\n")
    found = [_library_module(n) for n in _imports(f)]
    assert found == ["algrnet_jax.training", "algrnet_jax.evaluation", "algrnet_jax.au_sets"]
    assert [m for m in found if m not in NEUTRAL] == ["algrnet_jax.training", "algrnet_jax.evaluation"]
