"""Run the book's generated chapter notebooks against an installed (not editable) dpddpm, as a student would.

Run it with the interpreter of the environment that has the wheel installed (plus nbclient and ipykernel), from
anywhere; each notebook runs from an empty folder of its own, in a kernel started by this same interpreter:

    .venv-wheel/bin/python scripts/wheel_notebooks.py _build/_build/html/_notebooks/book [--json times.json]

Before the chapters it runs one probe cell in that kernel and refuses to go on unless the kernel's interpreter is
this one and ``dpddpm`` is imported from this environment's site-packages, installed from an archive (not from a
checkout, not editable). Prints each notebook's run time; exits 1 if any notebook fails (its error is printed).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

KERNEL = "python3"  # jupyter_client starts the native python3 kernel with sys.executable, i.e. this interpreter
PROBE = """\
import importlib.metadata, json, sys
import dpddpm
dist = importlib.metadata.distribution("dpddpm")
print(json.dumps({"executable": sys.executable, "file": dpddpm.__file__, "version": dpddpm.__version__,
                  "direct_url": json.loads(dist.read_text("direct_url.json") or "{}")}))
"""


def run(nb: nbformat.NotebookNode, timeout: int) -> float:
    """Execute ``nb`` in place from a fresh empty folder; returns the seconds it took."""
    with tempfile.TemporaryDirectory(prefix="dpddpm-nb-") as folder:
        client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, resources={"metadata": {"path": folder}})
        start = time.perf_counter()
        client.execute()
        return time.perf_counter() - start


def probe_problems(timeout: int) -> list[str]:
    """Why the kernel would not test the installed wheel (empty when it would), from one probe cell."""
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    run(nb, timeout)
    found = json.loads("".join(o.get("text", "") for o in nb.cells[0].outputs if o.output_type == "stream"))
    print(f"kernel: {json.dumps(found)}")
    problems = []
    if Path(found["executable"]).resolve() != Path(sys.executable).resolve():
        problems.append(f"the kernel runs {found['executable']}, not {sys.executable}")
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    if site not in Path(found["file"]).resolve().parents:
        problems.append(f"dpddpm is imported from {found['file']}, not from {site}")
    if "archive_info" not in found["direct_url"]:
        problems.append(f"dpddpm was not installed from a wheel or sdist: direct_url.json = {found['direct_url']}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the folder of generated .ipynb files")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument("--json", type=Path, help="also write {notebook: seconds or error} here")
    args = parser.parse_args()
    notebooks = sorted(args.folder.glob("*.ipynb"))
    if not notebooks:
        print(f"no .ipynb files in {args.folder}", file=sys.stderr)
        return 1
    problems = probe_problems(args.timeout)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    outcome: dict[str, float | str] = {}
    for path in notebooks:
        nb = nbformat.read(str(path), as_version=4)
        try:
            outcome[path.name] = round(run(nb, args.timeout), 1)
            print(f"{path.name}: ran in {outcome[path.name]:.1f} s", flush=True)
        except (CellExecutionError, TimeoutError, RuntimeError) as err:  # a cell's error, a timeout, a dead kernel
            last = (str(err).strip().splitlines() or [type(err).__name__])[-1]
            outcome[path.name] = "failed: " + re.sub(r"\x1b\[[0-9;]*m", "", last)  # without terminal colours
            print(f"{path.name}: FAILED\n{err}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(outcome, indent=2) + "\n")
    failed = [name for name, value in outcome.items() if isinstance(value, str)]
    print(f"{len(notebooks) - len(failed)} of {len(notebooks)} notebooks ran; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
