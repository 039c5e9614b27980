"""Copy the committed results and benchmark files that the book reads into the package (``dpddpm/shipped/``).

Run after regenerating ``results/`` or ``benchmarks/results/``: ``python scripts/ship_results.py``.
``tests/test_shipped.py`` fails while a shipped copy differs from its source.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "dpddpm" / "shipped"
# (source folder in the repository, folder inside dpddpm/shipped, the files the book reads)
SOURCES = (
    (ROOT / "results", "results", ("table1_digits.json", "digits_fid_validation.json")),
    (ROOT / "benchmarks" / "results", "benchmarks", None),  # None: every .json
)


def pairs() -> list[tuple[Path, Path]]:
    """(source, shipped copy) for every file that is shipped."""
    out = []
    for source_dir, folder, names in SOURCES:
        files = [source_dir / n for n in names] if names else sorted(source_dir.glob("*.json"))
        out += [(f, SHIPPED / folder / f.name) for f in files]
    return out


def main() -> None:
    for source, copy in pairs():
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, copy)
        print(f"{source.relative_to(ROOT)} -> {copy.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
