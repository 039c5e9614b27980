"""Offer every chapter of the book as a Jupyter notebook (``.ipynb``), generated at build time.

The chapters are MyST-markdown notebooks (``book/*.md`` with a jupytext header), the single source. When the HTML
builder renders such a page, this extension converts its source with jupytext into a plain ``.ipynb`` (no outputs,
no jupytext pairing metadata, a first cell that says where it came from), writes it to
``<html>/_notebooks/<docname>.ipynb`` (inside the gitignored build folder; nothing generated is ever committed),
adds an ``.ipynb`` entry to the sphinx-book-theme download menu and puts a visible link under the page's title.

Registered in ``_config.yml`` under ``sphinx: local_extensions: {notebooks: book/_ext}``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

NOTEBOOK_DIR = "_notebooks"
LINK_CLASS = "dpddpm-notebook-link"


def has_jupytext_header(path: Path) -> bool:
    """True for a text notebook: a front matter that starts the file and contains a ``jupytext:`` key."""
    try:
        head = path.read_text(encoding="utf-8")[:2000]
    except (OSError, UnicodeDecodeError):
        return False
    return head.startswith("---") and "jupytext:" in head.split("\n---", 1)[0]


def to_notebook(source: Path, docname: str):
    """The chapter ``source`` as an nbformat-4 notebook that runs in a plain Jupyter kernel."""
    import jupytext
    import nbformat

    nb = jupytext.read(str(source))
    nb.metadata.pop("jupytext", None)  # a plain notebook, not paired with the .md
    nb.metadata.setdefault("kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"})
    nb.metadata.setdefault("language_info", {"name": "python"})
    note = nbformat.v4.new_markdown_cell(
        f"*Generated from `{docname}.md`, a chapter of the dpddpm book; edit that file, not this one. "
        "Run it top to bottom in a Jupyter kernel where `dpddpm` is installed: from the release's wheel, "
        "`pip install torch==2.13.0 dpddpm-0.2.0-py3-none-any.whl` (in a notebook: `%pip install ...`, then "
        "restart the kernel), or `pip install -e .` in a checkout of the repository.*"
    )
    note.metadata["tags"] = ["dpddpm-generated"]
    nb.cells.insert(0, note)
    nb.nbformat, nb.nbformat_minor = 4, 5
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"  # deterministic: the same chapter gives the same file
    nbformat.validate(nb)
    return nb


def _notebook_path(app, docname: str) -> Path:
    return Path(app.outdir) / NOTEBOOK_DIR / f"{docname}.ipynb"


def write_notebook(app, pagename: str, templatename: str, context: dict[str, Any], doctree) -> None:
    """``html-page-context`` (before the theme's buttons): write the page's notebook if its source is one."""
    import nbformat

    if doctree is None or pagename not in app.env.found_docs:
        return
    source = Path(app.env.doc2path(pagename))
    if source.suffix != ".md" or not has_jupytext_header(source):
        return
    out = _notebook_path(app, pagename)
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(to_notebook(source, pagename), str(out))
    url = context["pathto"](f"{NOTEBOOK_DIR}/{pagename}.ipynb", 1)
    name = out.name
    context["dpddpm_notebook_url"] = url
    link = (
        f'<p class="{LINK_CLASS}"><a class="reference download" href="{url}" download="{name}">'
        f'<i class="fas fa-download"></i> Download this chapter as a notebook (<code>{name}</code>)</a> '
        "and run it in Jupyter with <code>dpddpm</code> installed.</p>\n"
    )
    body = context.get("body", "")
    body, n = re.subn(r"</h1>", lambda m: m.group(0) + "\n" + link, body, count=1)
    context["body"] = body if n else link + body


def add_download_button(app, pagename: str, templatename: str, context: dict[str, Any], doctree) -> None:
    """``html-page-context`` (after the theme's buttons): put ``.ipynb`` first in the download menu."""
    url = context.get("dpddpm_notebook_url")
    if not url:
        return
    for group in context.get("header_buttons", []):
        if group.get("label") == "download-buttons":
            group["buttons"].insert(
                0,
                {
                    "type": "link",
                    "url": url,
                    "text": ".ipynb",
                    "tooltip": "Download this chapter as a notebook",
                    "icon": "fas fa-code",
                    "label": "download-notebook-button",
                },
            )
            return


def setup(app):
    app.connect("html-page-context", write_notebook, priority=400)
    app.connect("html-page-context", add_download_button, priority=600)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
