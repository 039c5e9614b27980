"""The package's import graph: files, arrows, cycles, floors, and the arrows that run up the declared layers.

    python scripts/import_graph.py            # the figures
    python scripts/import_graph.py --verbose  # every module with its floor, layer and imports

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a lazy import hides a
dependency from the reader, not from the architecture. Package ``__init__`` files (re-exports) are left out.
The layers are ARCHITECTURE.md's; ``tests/test_architecture.py`` holds the rules to them.
"""

from __future__ import annotations

import argparse
import ast
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "dpddpm"

#: ARCHITECTURE.md's layers, bottom (0) to top: the first matching prefix gives a module's layer
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "basics",
        (
            "_version",
            "types",
            "validation",
            "files",
            "npzread",
            "floatplanes",
            "stats",
            "progress",
            "sharding",
            "nettimer",
            "grids",
            "shipped",
            "__main__",
        ),
    ),
    ("formulas", ("schedule", "gaussian", "fitted_variances", "variances", "runinfo")),
    ("model", ("model", "fingerprint", "netpass")),
    (
        "models and data",
        (
            "digits.data",
            "digits.net",
            "digits.pretrained",
            "digits.classifier",
            "external",
            "photos.data",
            "photos.crops",
            "photos.photographs",
            "baselines",
        ),
    ),
    (
        "costs",
        (
            "terms",
            "chebyshev",
            "rowcosts",
            "rowblock",
            "costfile",
            "costmatrix",
            "costs",
            "merge",
            "checkpoint",
            "dp",
            "strides",
        ),
    ),
    ("estimators", ("evaluate", "sampling", "analytic")),
    ("pipeline", ("reproduce", "pipeline", "report")),
    ("training and scoring", ("digits", "photos")),
    ("command line", ("cli",)),
)


def module_name(path: Path) -> str:
    """``dpddpm/costs.py`` -> ``costs``; ``dpddpm/digits/data.py`` -> ``digits.data`` (relative to dpddpm)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The index of the first layer whose prefix matches ``module`` (a prefix matches itself or a parent)."""
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise KeyError(f"module {module!r} is in no layer of ARCHITECTURE.md; add it to scripts/import_graph.py")


def _imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """The package modules that one file imports (absolute or relative)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name.removeprefix("dpddpm.") for a in node.names if a.name.startswith("dpddpm.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("dpddpm"):
                mod = node.module.removeprefix("dpddpm").lstrip(".")
            else:
                continue
            names = [mod] + [f"{mod}.{a.name}" if mod else a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules and n != module}
    return found


def graph() -> dict[str, set[str]]:
    """module -> the modules it imports, package ``__init__`` files left out on both ends."""
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    inits = {m for m, p in files.items() if p.name == "__init__.py"}
    modules = set(files)
    return {m: _imports(p, m, modules) - inits for m, p in files.items() if m not in inits}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def floors(edges: dict[str, set[str]]) -> dict[str, int]:
    """Each module's floor: 1 + the highest floor it imports (1 for a module that imports nothing); needs a DAG."""

    @cache
    def floor(v: str) -> int:
        return 1 + max((floor(w) for w in edges[v]), default=0)

    return {v: floor(v) for v in edges}


def upward(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """The arrows from a module to one in a higher layer."""
    return sorted((v, w) for v, ws in edges.items() for w in ws if layer_of(w) > layer_of(v))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    edges = graph()
    found = cycles(edges)
    print(f"files {len(edges)}, arrows {sum(map(len, edges.values()))}, cycles {len(found)}")
    for c in found:
        print("  cycle:", " ".join(c))
    if not found:
        fl = floors(edges)
        print(f"floors {max(fl.values())}")
        if args.verbose:
            for v in sorted(edges, key=lambda v: (fl[v], v)):
                print(f"{fl[v]:2d} {LAYERS[layer_of(v)][0]:>20}  {v}: {' '.join(sorted(edges[v]))}")
    for v, w in upward(edges):
        print(f"  up: {v} ({LAYERS[layer_of(v)][0]}) -> {w} ({LAYERS[layer_of(w)][0]})")


if __name__ == "__main__":
    main()
