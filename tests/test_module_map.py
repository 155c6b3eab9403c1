"""The module map of docs/design.md is the code's: every import between parts is an arrow and every arrow an import.

Parts are the nodes of the map (``NODES``: node -> module prefixes, the longest prefix wins). Imports are read from
the source (every ``import`` statement, function-local ones included, and ``"package.module:attribute"`` strings,
the registries' lazy imports). Imports into ``neutral`` and out of ``runners`` are allowed without an arrow (the map
says so).
"""
from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("algrnet_jax", "data_pipelines", "experiments")
NODES: dict[str, tuple[str, ...]] = {
    "cli": ("algrnet_jax.cli", "algrnet_jax.commands"),
    "runners": ("experiments",),
    "exp": ("algrnet_jax.experiment",),
    "evaluation": ("algrnet_jax.evaluation", "algrnet_jax.reporting"),
    "inference": ("algrnet_jax.inference",),
    "export": ("algrnet_jax.export",),
    "predict": ("algrnet_jax.predict",),
    "interop": ("algrnet_jax.interop", "algrnet_jax.reference"),
    "trainer": ("algrnet_jax.training",),
    "checkpoints": ("algrnet_jax.checkpoints",),
    "pipeline": ("data_pipelines",),
    "builders": ("data_pipelines.builders", "data_pipelines.synthetic", "data_pipelines.images",
                 "data_pipelines.alignment", "data_pipelines.errors"),
    "models": ("algrnet_jax.models", "algrnet_jax.losses"),
    "neutral": ("algrnet_jax.tasks", "algrnet_jax.metrics", "algrnet_jax.au_sets", "algrnet_jax.configs",
                "algrnet_jax.errors", "algrnet_jax.fileio", "algrnet_jax.locking", "algrnet_jax.verbosity",
                "algrnet_jax.xla_flags"),
}
# The package's own __init__ (and names it defines) is neutral; any other module must be in a node's list.
_PACKAGE_MODULES = {p.stem for p in (ROOT / "algrnet_jax").iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
UNDRAWN_SOURCES, UNDRAWN_TARGETS = ("runners",), ("neutral",)
_LAZY = re.compile(r"(?:%s)(?:\.\w+)+:\w+" % "|".join(PACKAGES))
_ARROW = re.compile(r"^\s*(\w+)\s*(?:-->|-\.->)\s*(\w+)\s*$", re.M)


def node_of(module: str) -> str | None:
    """The map node of a module name (``None`` outside the project)."""
    best = max(((len(p), n) for n, prefixes in NODES.items() for p in prefixes
                if module == p or module.startswith(p + ".")), default=None)
    if best:
        return best[1]
    head, _, name = module.partition(".")
    if head == "algrnet_jax" and (not name or name.split(".")[0] not in _PACKAGE_MODULES - {"__init__"}):
        return "neutral"
    return None


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str) -> list[str]:
    """Project module names a source imports anywhere (``from a import b`` gives ``a.b``), and those named as
    ``"module:attribute"`` strings."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _LAZY.fullmatch(node.value):
            names.append(node.value.split(":")[0])
    return [n for n in names if n.split(".")[0] in PACKAGES]


def real_edges() -> dict[tuple[str, str], list[str]]:
    """(node, node) -> the imports that make it, over every module of the project's packages."""
    edges: dict[tuple[str, str], list[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            src = _module_name(path)
            for name in imported_names(path.read_text()):
                a, b = node_of(src) or src, node_of(name) or name     # unplaced modules: by name
                if a != b:
                    edges.setdefault((a, b), []).append(f"{src} imports {name}")
    return edges


def drawn_edges(design: str) -> set[tuple[str, str]]:
    """The arrows of the first mermaid block of docs/design.md."""
    block = design.split("```mermaid", 1)[1].split("```", 1)[0]
    return set(_ARROW.findall(block))


def map_problems(drawn: set[tuple[str, str]], real: dict[tuple[str, str], list[str]]) -> list[str]:
    problems = [f"arrow {a} --> {b} missing: {real[(a, b)][0]}" for a, b in sorted(real)
                if (a, b) not in drawn and a not in UNDRAWN_SOURCES and b not in UNDRAWN_TARGETS]
    problems += [f"arrow {a} --> {b} drawn, but no module of {a} imports one of {b}" for a, b in sorted(drawn)
                 if (a, b) not in real]
    problems += [f"arrow {a} --> {b}: unknown node" for a, b in sorted(drawn) if not {a, b} <= set(NODES)]
    return problems


DESIGN = (ROOT / "docs" / "design.md").read_text()


def test_every_module_belongs_to_a_node_of_the_map():
    modules = [_module_name(p) for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    unplaced = [f"{m} belongs to no part: add it to a node of the map in docs/design.md and to NODES here"
                for m in modules if node_of(m) is None]
    assert len(modules) > 100 and unplaced == []
    labels = set(re.findall(r"^\s*(\w+)\[\"", DESIGN.split("```mermaid", 1)[1].split("```", 1)[0], re.M))
    assert labels == set(NODES)


def test_the_module_map_draws_exactly_the_imports_between_parts():
    assert map_problems(drawn_edges(DESIGN), real_edges()) == []


def test_the_check_sees_a_missing_and_an_invented_arrow():
    """Not vacuous: removing a real arrow and adding a false one are both reported."""
    real = {k: v for k, v in real_edges().items() if set(k) <= set(NODES)}
    complete = set(real)                                     # a map drawing every real edge
    assert map_problems(complete, real) == [] and ("inference", "models") in complete
    assert ("models", "inference") not in complete
    problems = map_problems(complete - {("inference", "models")} | {("models", "inference")}, real)
    assert len(problems) == 2
    assert problems[0].startswith("arrow inference --> models missing: algrnet_jax.inference imports")
    assert problems[1] == "arrow models --> inference drawn, but no module of models imports one of inference"
    assert imported_names('def f():\n    import data_pipelines.records\nX = "algrnet_jax.models.layers:CONV_IMPLS"') \
        == ["data_pipelines.records", "algrnet_jax.models.layers"]
