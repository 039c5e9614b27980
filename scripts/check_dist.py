"""Check that the sdist and the wheel hold what they must, and nothing they must not.

    python scripts/check_dist.py dist/dpddpm-X.tar.gz dist/dpddpm-X-py3-none-any.whl [--same-as OTHER.whl]

The sdist must hold what a build needs (the project metadata, README, the licence files, every module and every
package-data file of ``dpddpm/``); the wheel what the chapters and the command line need (every module, the
bundled weights and model cards, the shipped results and benchmark figures, the licence files in its metadata,
the ``dpddpm`` command). The lists are explicit below, and every file of ``dpddpm/`` in the source tree the script
sits in must be in both. ``--same-as`` also requires another wheel (e.g. one rebuilt from the sdist) to hold the
same files. Prints each archive's size; exits 1 with every problem listed.
"""

from __future__ import annotations

import argparse
import re
import runpy
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dpddpm"
VERSION = runpy.run_path(str(PACKAGE / "_version.py"))["__version__"]  # without importing dpddpm (and torch)

#: files at the top of the sdist
SDIST_TOP = ("PKG-INFO", "pyproject.toml", "README.md", "LICENSE", "NOTICE.md", "CITATION.cff", "CHANGELOG.md")
#: package data inside dpddpm/, in the sdist and the wheel: the bundled models (weights and model cards), the
#: classifier of the sample-quality score, and the results and benchmark files the chapters read
PACKAGE_DATA = (
    "digits/weights/digits-simple.pt",
    "digits/weights/digits-simple.json",
    "digits/weights/digits-hybrid.pt",
    "digits/weights/digits-hybrid.json",
    "digits/weights/digits-classifier.pt",
    "digits/weights/digits-classifier.json",
    "photos/data/selection.npz",
    "photos/data/test.npz",
    "photos/data/photos.json",
    "shipped/results/table1_digits.json",
    "shipped/results/digits_fid_validation.json",
    "shipped/benchmarks/bench_dp_cpu.json",
    "shipped/benchmarks/bench_dp_nvidia-h100-80gb-hbm3.json",
    "shipped/benchmarks/bench_digits_cpu.json",
    "shipped/benchmarks/bench_costs_nvidia-h100-80gb-hbm3.json",
    "shipped/benchmarks/bench_reproduce_cpu.json",
)
#: the licence files, in the sdist's top folder and in the wheel's .dist-info/licenses/
LICENSES = ("LICENSE", "NOTICE.md")
#: the wheel's metadata lines that must be there
WHEEL_METADATA = (f"Version: {VERSION}", "License-Expression: MIT", "License-File: LICENSE", "License-File: NOTICE.md")
#: never in either archive: the tests and their 10 MB of data, the book, results, caches, environments
FORBIDDEN = re.compile(r"^(tests|book|results|benchmarks|scripts|_build|\.venv[^/]*|\.git)/|(^|/)__pycache__/|\.pyc$")
MAX_BYTES = 6_000_000  # each archive is about 2.5 MB; more means something was swept in by mistake


def source_files() -> list[str]:
    """Every file of the package in the source tree (modules and data), as ``dpddpm/...`` paths."""
    files = (p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return sorted(p.relative_to(ROOT).as_posix() for p in files if p.suffix != ".pyc")


def sdist_names(path: Path) -> list[str]:
    """Member files of an sdist, without its top folder (``dpddpm-X/``)."""
    with tarfile.open(path) as tar:
        return sorted(m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile() and "/" in m.name)


def wheel_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return sorted(n for n in zf.namelist() if not n.endswith("/"))


def _missing(names: list[str], required: list[str], where: str) -> list[str]:
    have = set(names)
    return [f"{where}: missing {name}" for name in required if name not in have]


def _forbidden(names: list[str], where: str) -> list[str]:
    return [f"{where}: must not contain {name}" for name in names if FORBIDDEN.search(name)]


def _size(path: Path) -> list[str]:
    size = path.stat().st_size
    return [f"{path.name}: {size} bytes, more than {MAX_BYTES}"] if size > MAX_BYTES else []


def sdist_problems(path: Path, source: list[str]) -> list[str]:
    """What the sdist lacks for a build, or holds by mistake (empty: fine)."""
    names = sdist_names(path)
    required = [*SDIST_TOP, *source, *(f"dpddpm/{d}" for d in PACKAGE_DATA)]
    return _missing(names, required, path.name) + _forbidden(names, path.name) + _size(path)


def wheel_problems(path: Path, source: list[str]) -> list[str]:
    """What the wheel lacks for the chapters and the command line, or holds by mistake (empty: fine)."""
    names = wheel_names(path)
    info = f"dpddpm-{VERSION}.dist-info"
    required = [
        *source,
        *(f"dpddpm/{d}" for d in PACKAGE_DATA),
        *(f"{info}/licenses/{name}" for name in LICENSES),
        f"{info}/METADATA",
        f"{info}/entry_points.txt",
    ]
    problems = _missing(names, required, path.name) + _forbidden(names, path.name) + _size(path)
    if not problems:
        with zipfile.ZipFile(path) as zf:
            metadata = zf.read(f"{info}/METADATA").decode().splitlines()
            scripts = zf.read(f"{info}/entry_points.txt").decode()
        problems += [f"{path.name}: METADATA lacks '{line}'" for line in WHEEL_METADATA if line not in metadata]
        if not re.search(r"^dpddpm\s*=\s*dpddpm\.cli:main$", scripts, re.MULTILINE):
            problems.append(f"{path.name}: no 'dpddpm' console script")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sdist", type=Path)
    parser.add_argument("wheel", type=Path)
    parser.add_argument("--same-as", type=Path, help="another wheel that must hold the same files")
    args = parser.parse_args()
    source = source_files()
    problems = sdist_problems(args.sdist, source) + wheel_problems(args.wheel, source)
    if args.same_as is not None and wheel_names(args.same_as) != wheel_names(args.wheel):
        diff = set(wheel_names(args.same_as)) ^ set(wheel_names(args.wheel))
        problems.append(f"{args.same_as.name} and {args.wheel.name} differ in {sorted(diff)}")
    for path in (args.sdist, args.wheel, args.same_as):
        if path is not None:
            print(f"{path.name}: {path.stat().st_size / 1e6:.2f} MB")
    print("\n".join(problems) or f"sdist and wheel complete: {len(source)} files of dpddpm/ each")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
