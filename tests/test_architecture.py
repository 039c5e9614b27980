"""ARCHITECTURE.md's rules, checked on the source: no import cycle, no arrow up the layers, small modules and
functions, and every module in a declared layer."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = module
    spec.loader.exec_module(module)
    return module


GRAPH = _import_graph()


def test_the_import_graph_has_no_cycle():
    assert GRAPH.cycles(GRAPH.graph()) == []


def test_no_arrow_runs_up_the_layers():
    assert GRAPH.upward(GRAPH.graph()) == []


def test_every_module_is_in_a_layer():
    for module in GRAPH.graph():
        GRAPH.layer_of(module)  # raises KeyError for a module ARCHITECTURE.md does not place


def test_the_checker_sees_a_cycle_and_an_upward_arrow():
    edges = {"model": {"analytic"}, "analytic": {"model"}, "schedule": set()}
    assert GRAPH.cycles(edges) == [["analytic", "model"]]
    assert GRAPH.upward(edges) == [("model", "analytic")]
    assert GRAPH.floors({"schedule": set(), "model": {"schedule"}}) == {"schedule": 1, "model": 2}


def _sources() -> list[Path]:
    return sorted((ROOT / "dpddpm").rglob("*.py"))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_are_small(path: Path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path.name}: split it into modules that own one idea each"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path.name}: {node.name} has {length} lines"


def test_architecture_md_names_the_layers_the_checker_uses():
    """The page and the checker agree: every layer's modules appear on the page, and every prefix names a module."""
    page = (ROOT / "ARCHITECTURE.md").read_text()
    modules = {GRAPH.module_name(path) for path in GRAPH.ROOT.rglob("*.py")}  # packages too
    for name, prefixes in GRAPH.LAYERS:
        assert name in page, name
        for prefix in prefixes:
            shown = prefix.removesuffix(".*")
            assert f"`{shown}" in page, f"ARCHITECTURE.md does not place {prefix!r}"
            assert any(m == prefix or m.startswith(prefix + ".") for m in modules), f"no module {prefix!r}"
