"""Results and benchmark figures shipped inside the package, for the book's chapters.

The book must run wherever ``dpddpm`` is installed (a wheel, a course JupyterHub), not only in a checkout, so
the files its chapters read travel as package data and are read through :mod:`importlib.resources`, never by a
path walk from ``dpddpm.__file__``. They are copies of the committed files that the project's scripts write:

- ``results/<name>``: copies of ``results/<name>`` at the top of the repository (e.g. ``table1_digits.json``);
- ``benchmarks/<name>``: copies of ``benchmarks/results/<name>`` (e.g. ``bench_dp_cpu.json``).

``python scripts/ship_results.py`` refreshes the copies; ``tests/test_shipped.py`` fails while any differs.
"""

from __future__ import annotations

import json
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, Literal

Folder = Literal["results", "benchmarks"]
FOLDERS: tuple[Folder, ...] = ("results", "benchmarks")


def _folder(folder: str) -> Traversable:
    if folder not in FOLDERS:
        raise ValueError(f"unknown shipped folder {folder!r}; known: {', '.join(FOLDERS)}")
    return resources.files(__name__).joinpath(folder)


def shipped_names(folder: Folder) -> list[str]:
    """The file names shipped in ``folder`` ("results" or "benchmarks"), sorted."""
    return sorted(entry.name for entry in _folder(folder).iterdir() if entry.is_file() and entry.name.endswith(".json"))


def read_shipped_json(folder: Folder, name: str) -> Any:
    """The parsed JSON file ``name`` shipped in ``folder``, e.g. ``read_shipped_json("results", "table1_digits.json")``.

    Raises FileNotFoundError naming the file and the known names when it is not shipped.
    """
    entry = _folder(folder).joinpath(name)
    if "/" in name or "\\" in name or not entry.is_file():
        known = ", ".join(shipped_names(folder))
        raise FileNotFoundError(f"no shipped file {folder}/{name} in dpddpm.shipped; shipped: {known}")
    return json.loads(entry.read_text(encoding="utf-8"))


__all__ = ["FOLDERS", "read_shipped_json", "shipped_names"]
