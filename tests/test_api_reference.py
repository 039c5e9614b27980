"""The API reference page (``book/api_reference.md``) documents every public name and the whole command line.

The page's source must hold an autodoc entry for every name in ``dpddpm.__all__`` (and none for a name that is not
public), and a ``{dpddpm-cli-help}`` block for the ``dpddpm`` command and each of its subcommands. The help is
generated at build time by ``book/_ext/api_docs.py``; it has to fit the content column.

Once the book is built (``jupyter-book build --all -W --keep-going --path-output _build .``), the built page is
checked too: an entry (``id="dpddpm.NAME"``) for every public name, each with its docstring's first line, no
re-exported constant described by its type's docstring, and each help block equal to what the installed
package's parser prints now. Those checks are skipped when the book is not built, unless
``DPDDPM_BROWSER_TEST=1`` (set by CI after the build), which turns the skip into a failure;
``DPDDPM_BOOK_HTML=<dir>`` points them at another build's ``html`` folder.
"""

from __future__ import annotations

import html
import inspect
import os
import re
import sys
from pathlib import Path

import pytest

import dpddpm
from dpddpm.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "book" / "api_reference.md"
REQUIRED = os.environ.get("DPDDPM_BROWSER_TEST") == "1"
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import api_docs  # noqa: E402  (book/_ext/api_docs.py: the build-time help, the same function the book calls)

AUTODOC = re.compile(r"^\.\. auto(?:class|function|data|exception|attribute|method)::\s+(\S+)", re.M)
CLI_HELP = re.compile(r"^```\{dpddpm-cli-help\}[ \t]*(\S*)[ \t]*$", re.M)
# The widest help line that fits a code block of the content column at a 1280-pixel window (about 95 characters,
# book/_static/dpddpm.css; tests/test_book_browser.py checks the built page).
MAX_HELP_COLUMNS = 90
# Sphinx's smart quotes and ellipses, back to what a docstring holds
SMART = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2026": "..."})


def _documented() -> list[str]:
    """The public names the page's autodoc directives document (``NAME`` under ``currentmodule:: dpddpm``)."""
    text = PAGE.read_text(encoding="utf-8")
    assert re.search(r"^\.\. currentmodule:: dpddpm$", text, re.M), "the page does not set currentmodule dpddpm"
    return [name.removeprefix("dpddpm.") for name in AUTODOC.findall(text)]


def _subcommands() -> list[str]:
    return list(api_docs.subcommands(build_parser()))


def _html_dir() -> Path | None:
    override = os.environ.get("DPDDPM_BOOK_HTML")
    candidates = [Path(override)] if override else [ROOT / "_build" / "_build" / "html", ROOT / "_build" / "html"]
    for cand in candidates:
        if (cand / "book" / "intro.html").is_file():
            return cand
    return None


def _built_page() -> str:
    html_dir = _html_dir()
    if html_dir is None:
        if REQUIRED:
            pytest.fail("the book is not built (no _build/_build/html) (DPDDPM_BROWSER_TEST=1)")
        pytest.skip("the book is not built (no _build/_build/html)")
    page = html_dir / "book" / "api_reference.html"
    assert page.is_file(), f"{page} is missing from the built book"
    return page.read_text(encoding="utf-8")


def test_page_in_toc() -> None:
    assert re.search(r"^\s*-\s*file:\s*book/api_reference\s*$", (ROOT / "_toc.yml").read_text(), re.M)


def test_every_public_name_documented() -> None:
    documented = _documented()
    missing = [name for name in dpddpm.__all__ if name not in documented]
    assert not missing, f"book/api_reference.md has no autodoc entry for {missing}"


def test_only_public_names_documented_once() -> None:
    documented = _documented()
    extra = sorted(set(documented) - set(dpddpm.__all__))
    assert not extra, f"book/api_reference.md documents names outside dpddpm.__all__: {extra}"
    twice = sorted({name for name in documented if documented.count(name) > 1})
    assert not twice, f"book/api_reference.md documents {twice} more than once"


def test_every_subcommand_help_on_page() -> None:
    blocks = CLI_HELP.findall(PAGE.read_text(encoding="utf-8"))
    assert "" in blocks, "no {dpddpm-cli-help} block for the dpddpm command itself"
    subs = _subcommands()
    assert len(subs) >= 8 and {"costs", "schedule", "elbo", "reproduce"} <= set(subs)
    missing = [name for name in subs if name not in blocks]
    assert not missing, f"book/api_reference.md has no {{dpddpm-cli-help}} block for {missing}"
    unknown = [name for name in blocks if name and name not in subs]
    assert not unknown, f"help blocks for commands that do not exist: {unknown}"


@pytest.mark.parametrize("command", [None, "costs", "elbo", "reproduce"])
def test_help_text_is_the_parsers(command: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The extension prints what ``dpddpm [COMMAND] --help`` prints at the same width, whatever $COLUMNS says."""
    monkeypatch.setenv("COLUMNS", "200")
    text = api_docs.help_text(command)
    assert os.environ["COLUMNS"] == "200", "the extension left $COLUMNS changed"
    monkeypatch.setenv("COLUMNS", str(api_docs.WIDTH))
    parser = build_parser()
    expected = (parser if command is None else api_docs.subcommands(parser)[command]).format_help()
    assert text == expected
    assert text.startswith("usage: dpddpm" + (f" {command}" if command else ""))


def test_help_fits_the_column() -> None:
    for command in [None, *_subcommands()]:
        widest = max(api_docs.help_text(command).splitlines(), key=len)
        assert len(widest) <= MAX_HELP_COLUMNS, f"dpddpm {command or ''} --help: {len(widest)} columns: {widest!r}"


def test_unknown_subcommand_refused() -> None:
    with pytest.raises(ValueError, match="no subcommand 'nope'"):
        api_docs.help_text("nope")


# --- the built page ---------------------------------------------------------------------------------------------


def _text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def test_built_page_has_every_entry() -> None:
    page = _built_page()
    ids = set(re.findall(r'<dt class="sig sig-object py" id="([^"]+)"', page))
    missing = [name for name in dpddpm.__all__ if f"dpddpm.{name}" not in ids]
    assert not missing, f"the built API reference has no entry for {missing}"
    text = " ".join(_text(page).translate(SMART).split())
    for name in dpddpm.__all__:
        obj = getattr(dpddpm, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            # the longest run of the first line's words between markup (roles, literals render differently)
            line = (inspect.getdoc(obj) or "").split("\n")[0]
            words = max(re.split(r"``.*?``|:\w+:`[^`]*`|`[^`]*`", line), key=len)
            words = " ".join(words.split())[:40]
            assert len(words) >= 8, f"dpddpm.{name}: the docstring's first line is empty or all markup"
            assert words in text, f"dpddpm.{name}: its docstring's words {words!r} are not on the page"


def test_built_page_describes_constants_by_their_comment() -> None:
    """Re-exported constants show their ``#:`` comment, never the docstring of dict or tuple."""
    page = _built_page()
    for name in ("IMPROVED_DIFFUSION_PRESETS", "PRETRAINED"):
        m = re.search(rf'id="dpddpm\.{name}">(.*?)</dd>', page, re.S)
        assert m, f"no entry for dpddpm.{name}"
        body = " ".join(_text(m.group(1)).split())
        for builtin in (dict, tuple):
            assert builtin.__doc__.split("\n")[0] not in body, f"dpddpm.{name} is described by {builtin}'s docstring"
    assert "released unconditional checkpoints" in _text(page)


@pytest.mark.parametrize("command", [None, *_subcommands()])
def test_built_help_is_current(command: str | None) -> None:
    """The built page's help block of each command equals the installed parser's help now."""
    page = _built_page()
    anchor = f'id="cli-{command or "dpddpm"}"'
    assert anchor in page, f"no help block {anchor} on the built page"
    m = re.search(anchor + r".*?<pre>(.*?)</pre>", page, re.S)
    assert m, f"the help block {anchor} has no <pre>"
    shown = _text(m.group(1))
    expected = "$ dpddpm" + (f" {command}" if command else "") + " --help\n" + api_docs.help_text(command)
    assert shown.strip() == expected.strip(), f"the built help of {command or 'dpddpm'} is out of date: rebuild"
