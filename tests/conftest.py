"""Collect the book's chapters (MyST-markdown notebooks, ``book/*.md``) as nbval notebooks.

nbval only collects ``.ipynb`` files. This plugin reads each chapter that carries a jupytext header with
jupytext and hands its code cells to nbval in *lax* mode: every cell is executed in a fresh kernel (the
notebook's kernelspec, ``python3``, i.e. this virtual environment's ipykernel) and must not raise; no stored
outputs are compared (the chapters have none; their claims are ``assert`` statements). The kernel's working
directory is ``book/``.

The plugin is registered globally from ``pytest_configure`` so that it also applies to ``book/`` (a
``conftest.py`` hook would only see files under ``tests/``); ``book`` has to be among the collected paths,
e.g. ``testpaths = ["tests", "book"]`` in pyproject.toml or ``pytest tests book``.
Every chapter's cells carry the registered marker ``book``: ``pytest -m "not book"`` runs the unit tests alone.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

BOOK_DIR = (Path(__file__).resolve().parent.parent / "book").resolve()


def _has_jupytext_header(path: Path) -> bool:
    try:
        head = path.read_text(encoding="utf-8")[:2000]
    except OSError:
        return False
    return head.startswith("---") and "jupytext:" in head.split("\n---", 1)[0]


class _BookPlugin:
    def pytest_collect_file(self, file_path, parent):
        path = Path(file_path).resolve()
        if path.suffix != ".md" or path.parent != BOOK_DIR or not _has_jupytext_header(path):
            return None
        return MarkdownNotebook.from_parent(parent, path=Path(file_path))


def _markdown_notebook_class():
    from nbval.plugin import IPyNbCell, IPyNbFile, find_comment_markers, find_metadata_tags

    class MarkdownNotebook(IPyNbFile):
        """A jupytext MyST notebook run by nbval without output comparison (lax mode)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.compare_outputs = False

        def collect(self):
            import jupytext

            self.nb = jupytext.read(str(self.path))
            cell_num = 0
            for cell in self.nb.cells:
                if cell.cell_type != "code":
                    continue
                options = defaultdict(bool, find_metadata_tags(cell.metadata))
                options.update(dict(find_comment_markers(cell.source)))
                options["check"] = False  # lax: execute only
                item = IPyNbCell.from_parent(
                    self, name=f"Cell {cell_num}", cell_num=cell_num, cell=cell, options=options
                )
                item.add_marker("book")
                yield item
                cell_num += 1

    return MarkdownNotebook


MarkdownNotebook = None


def pytest_configure(config):
    global MarkdownNotebook
    try:
        MarkdownNotebook = _markdown_notebook_class()
    except ImportError:  # nbval or jupytext missing: the chapters are simply not collected
        return
    if not config.pluginmanager.has_plugin("dpddpm-book"):
        config.pluginmanager.register(_BookPlugin(), "dpddpm-book")


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module: small ops run faster so on shared cores, and training is deterministic."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
