"""Helpers for the book's API reference page (``book/api_reference.md``), which Sphinx autodoc builds.

Two things autodoc does not do by itself:

- ``{dpddpm-cli-help} [COMMAND]``, a directive: the ``--help`` of the ``dpddpm`` command (no argument) or of one
  subcommand, taken at build time from the installed package's own parser (:func:`dpddpm.cli.build_parser`),
  so the page cannot fall out of date with the command line. The help is formatted at a fixed width
  (:data:`WIDTH` columns, whatever the terminal of the build) so that the page is the same on every machine
  and fits the content column. The block is a ``text`` literal block that starts with the command line that
  prints it, with the class ``dpddpm-cli-help`` and the id ``cli-<COMMAND>`` (``cli-dpddpm`` for the command).
- Re-exported data keep their documentation: ``dpddpm.IMPROVED_DIFFUSION_PRESETS`` is ``PRESETS`` of
  :mod:`dpddpm.external.improved_diffusion_flags`, documented there by a ``#:`` comment. autodoc looks for that
  comment only in the module it documents the name under (``dpddpm``), finds none, and falls back to the
  docstring of the value's type (``dict``'s). An ``autodoc-process-docstring`` handler replaces such a type
  docstring by the ``#:`` comment of the assignment that made the very same object in a ``dpddpm`` module.

Registered in ``_config.yml`` under ``sphinx: local_extensions: {api_docs: book/_ext}``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Sphinx is imported inside the functions that need it: the tests import help_text() where only the test extra
# (no Sphinx) is installed.

WIDTH = 80  # columns of the formatted help; argparse reads $COLUMNS
PACKAGE = "dpddpm"


# --- the command line's help ------------------------------------------------------------------------------------


@contextmanager
def _columns(width: int) -> Iterator[None]:
    """``$COLUMNS`` (argparse's help width) set to ``width`` inside the block, restored after it."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands of ``parser`` in the order they were added: name -> subparser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def help_text(command: str | None = None, width: int = WIDTH) -> str:
    """``dpddpm --help`` (``command`` None) or ``dpddpm COMMAND --help`` as printed at ``width`` columns."""
    from dpddpm.cli import build_parser

    with _columns(width):
        parser = build_parser()
        if command is None:
            return parser.format_help()
        subs = subcommands(parser)
        if command not in subs:
            raise ValueError(f"dpddpm has no subcommand {command!r}; it has: {', '.join(subs)}")
        return subs[command].format_help()


def _cli_help_directive() -> type:
    """The directive class (built on first use, so that this module imports without Sphinx)."""
    from docutils import nodes
    from sphinx.util.docutils import SphinxDirective

    class CliHelp(SphinxDirective):
        """``{dpddpm-cli-help} [COMMAND]``: a literal block with the output of ``dpddpm [COMMAND] --help``."""

        optional_arguments = 1
        has_content = False

        def run(self) -> list[nodes.Node]:
            from dpddpm.cli import parser

            command = self.arguments[0] if self.arguments else None
            try:
                text = help_text(command)
            except ValueError as exc:
                raise self.error(str(exc)) from exc
            self.env.note_dependency(parser.__file__)  # an incremental build re-reads the page when it changes
            text = "$ dpddpm" + (f" {command}" if command else "") + " --help\n" + text
            block = nodes.literal_block(text, text, language="text")
            block["classes"].append("dpddpm-cli-help")
            block["ids"].append(f"cli-{command or 'dpddpm'}")
            self.set_source_info(block)
            return [block]

    return CliHelp


# --- documentation of re-exported data ---------------------------------------------------------------------------


def _doc_comment(obj: Any) -> list[str] | None:
    """The ``#:`` comment of the assignment in a loaded ``dpddpm`` module that bound ``obj`` itself, if any."""
    from sphinx.errors import PycodeError
    from sphinx.pycode import ModuleAnalyzer

    for modname, module in sorted(sys.modules.items()):
        if module is None or not (modname == PACKAGE or modname.startswith(PACKAGE + ".")):
            continue
        names = [name for name, value in vars(module).items() if value is obj]
        if not names:
            continue
        try:
            docs = ModuleAnalyzer.for_module(modname).find_attr_docs()
        except PycodeError:  # a module without source (compiled, or built at run time)
            continue
        for name in names:
            if ("", name) in docs:
                return list(docs[("", name)])
    return None


def document_reexported_data(app, what: str, name: str, obj: Any, options, lines: list[str]) -> None:
    """``autodoc-process-docstring``: a data item documented by its type's docstring gets its ``#:`` comment."""
    from sphinx.util.docstrings import prepare_docstring

    if what != "data" or not name.startswith(PACKAGE + "."):
        return
    type_doc = prepare_docstring(type(obj).__doc__ or "")
    if "\n".join(lines).strip() not in ("", "\n".join(type_doc).strip()):
        return  # documented where autodoc looked
    comment = _doc_comment(obj)
    if comment is not None:
        lines[:] = comment


def setup(app):
    app.setup_extension("sphinx.ext.autodoc")  # its event is connected below
    app.add_directive("dpddpm-cli-help", _cli_help_directive())
    app.connect("autodoc-process-docstring", document_reexported_data)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
