"""The files the book reads ship inside the package and equal the committed results they copy."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from dpddpm.shipped import read_shipped_json, shipped_names

ROOT = Path(__file__).resolve().parent.parent


def _ship_module():
    spec = importlib.util.spec_from_file_location("ship_results", ROOT / "scripts" / "ship_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("source, copy", _ship_module().pairs(), ids=lambda p: p.name)
def test_shipped_copy_equals_source(source: Path, copy: Path) -> None:
    assert copy.is_file(), f"{copy} is missing: run python scripts/ship_results.py"
    assert copy.read_bytes() == source.read_bytes(), f"{copy} differs from {source}: run python scripts/ship_results.py"


def test_nothing_shipped_without_a_source() -> None:
    sources = {copy.relative_to(ROOT / "dpddpm" / "shipped").as_posix() for _, copy in _ship_module().pairs()}
    shipped = {f"{folder}/{name}" for folder in ("results", "benchmarks") for name in shipped_names(folder)}
    assert shipped == sources


def test_read_shipped_json() -> None:
    table = read_shipped_json("results", "table1_digits.json")
    assert set(table["models"]) == {"digits-simple", "digits-hybrid"}
    assert "ratio" in read_shipped_json("benchmarks", "bench_reproduce_cpu.json")


@pytest.mark.parametrize("folder, name", [("results", "nope.json"), ("results", "../README.md"), ("other", "x.json")])
def test_unknown_names_are_refused(folder: str, name: str) -> None:
    with pytest.raises((FileNotFoundError, ValueError), match="shipped"):
        read_shipped_json(folder, name)
