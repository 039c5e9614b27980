"""The book as a course: every chapter has the same scaffolding, every citation resolves, nothing reads the tree.

Checked on the chapter sources (``book/*.md``), so it runs without a build:
- each numbered chapter opens with a "Learning objectives" box (what the reader will be able to do, what it
  assumes, how long it runs) and closes with a ``## Summary`` right before ``## Exercises``;
- each has at least three exercises, each with a hidden solution;
- every ``{cite}`` key is in ``book/references.bib``, and every ``{doc}`` target is a page of the book;
- no chapter finds its files through the source tree (``dpddpm.__file__``): an installed wheel has no tree.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
CHAPTERS = sorted(p for p in BOOK.glob("0*.md"))
PAGES = sorted(BOOK.glob("*.md"))


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _bib_keys() -> set[str]:
    return set(re.findall(r"^@\w+\{([^,\s]+),", _text(BOOK / "references.bib"), flags=re.M))


def test_there_are_eight_chapters() -> None:
    assert [p.stem[:2] for p in CHAPTERS] == [f"{i:02d}" for i in range(1, 9)]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_opens_with_objectives(chapter: Path) -> None:
    body = _text(chapter).split("\n---\n", 1)[1]  # after the jupytext front matter
    title_and_rest = re.split(r"^# .*$", body, maxsplit=1, flags=re.M)
    assert len(title_and_rest) == 2, "no '# Title' line"
    first_block = title_and_rest[1].lstrip()
    assert first_block.startswith("```{admonition} Learning objectives"), "the objectives box must follow the title"
    box = first_block.split("\n```", 1)[0]
    assert "After this chapter you can:" in box
    assert len(re.findall(r"^- ", box, flags=re.M)) >= 3, "at least three objectives"
    assert "**Assumes:**" in box and "**Runs in:**" in box


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_closes_with_summary_then_exercises(chapter: Path) -> None:
    headings = re.findall(r"^## (.+)$", _text(chapter), flags=re.M)
    assert "Summary" in headings and "Exercises" in headings
    assert headings.index("Exercises") == headings.index("Summary") + 1, "## Summary must directly precede ## Exercises"
    summary = _text(chapter).split("\n## Summary", 1)[1].split("\n## Exercises", 1)[0]
    assert len(re.findall(r"^- ", summary, flags=re.M)) >= 3


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_has_three_exercises_with_hidden_solutions(chapter: Path) -> None:
    text = _text(chapter)
    exercises = re.findall(r"^```\{admonition\} Exercise \d+\.\d+", text, flags=re.M)
    solutions = re.findall(r"^````?\{dropdown\} Solution", text, flags=re.M)
    assert len(exercises) >= 3
    assert len(solutions) >= len(exercises)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_citations_resolve(page: Path) -> None:
    keys = _bib_keys()
    for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", _text(page)):
        for key in group.split(","):
            assert key.strip() in keys, f"{page.name} cites {key.strip()!r}, which is not in references.bib"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_doc_links_resolve(page: Path) -> None:
    for target in re.findall(r"\{doc\}`(?:[^`<]*<)?([^`>]+)>?`", _text(page)):
        assert (page.parent / f"{target}.md").is_file(), f"{page.name} links to a missing page {target!r}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_no_page_reads_the_source_tree(page: Path) -> None:
    text = _text(page)
    assert "dpddpm.__file__" not in text, "read shipped files with dpddpm.shipped (an installed wheel has no tree)"
    assert not re.search(r"""["']results["']\s*/|["']benchmarks["']\s*/""", text)


def test_every_page_is_in_the_table_of_contents() -> None:
    toc = _text(ROOT / "_toc.yml")
    for page in PAGES:
        assert f"book/{page.stem}" in toc, f"{page.name} is not in _toc.yml"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_run_time_agrees_with_the_intro(chapter: Path) -> None:
    """The objectives box and the intro's path table give the same run time for a chapter."""
    box = re.search(r"\*\*Runs in:\*\* about (\d+) s", _text(chapter))
    row = re.search(r"^\| [^|]+ \| \{doc\}`" + chapter.stem + r"` \|.*\| (\d+) s \|$", _text(BOOK / "intro.md"), re.M)
    assert box and row, "a run time in the objectives box and in the intro's table"
    assert box.group(1) == row.group(1)
