"""Open the built book in headless Chromium: math must be typeset offline and figures must load.

The first tests open files (``file://``); the ``http`` ones serve ``_build/_build/html`` with Python's
``http.server`` on 127.0.0.1 (a free port, a background thread) as a web host would, and check every chapter
(math typeset, images loaded), the search page (a query returns results) and every chapter's ``.ipynb`` download
(linked from the page, served with status 200, a valid notebook).

The course checks: every chapter has at least three exercises, each with a worked solution in a sphinx-design
dropdown (a ``<details>`` element) that is closed when the page loads, its content taking no space until it is
opened, and every ``hide-input`` cell (a reference solution's check) is collapsed the same way; the bibliography
page lists every entry of ``book/references.bib`` and the chapters' citations link to its entries.

Pages that fit: every page of the book, loaded in a 1280 x 800 window (a laptop's), has no display equation
(``mjx-container[display]``), code block (``div.highlight pre``) or cell output wider than the content column
(``scrollWidth > clientWidth`` + 1 px, solutions and hidden cells opened); a failure lists each such element with
its page, section and text. ``book/_static/dpddpm.css`` widens the column to about 95 characters of code.

Runs after ``jupyter-book build --all -W --keep-going --path-output _build .``. Skipped when ``_build/html`` or
Chromium is missing, unless ``DPDDPM_BROWSER_TEST=1`` (set by CI after the build), which turns the skip into a
failure. ``DPDDPM_BOOK_HTML=<dir>`` points the tests at another build's ``html`` folder (e.g. one built with
``--path-output /tmp/jb``: ``/tmp/jb/_build/html``). Screenshots go to ``_build/ci-screenshots/`` (for another
build, to ``ci-screenshots/`` beside its ``_build``: ``/tmp/jb/ci-screenshots/``).
"""

from __future__ import annotations

import functools
import html
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "_build" / "html"
SHOTS = ROOT / "_build" / "ci-screenshots"
REQUIRED = os.environ.get("DPDDPM_BROWSER_TEST") == "1"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
]
# Pages to check: the landing page (math in text) and a chapter with math and embedded figures.
PAGES = [("book/intro.html", False), ("book/03_cost_matrix.html", True)]


def _html_dir() -> Path | None:
    override = os.environ.get("DPDDPM_BOOK_HTML")
    candidates = [Path(override)] if override else [HTML, ROOT / "_build" / "html"]
    for cand in candidates:
        if (cand / "book" / "intro.html").is_file():
            return cand
    return None


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _need(condition: bool, why: str) -> None:
    if not condition:
        if REQUIRED:
            pytest.fail(why + " (DPDDPM_BROWSER_TEST=1)")
        pytest.skip(why)


def _run(browser: str, args: list[str], profile: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [browser, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("page,has_figures", PAGES)
def test_page_renders_offline(page: str, has_figures: bool) -> None:
    html_dir, browser = _html_dir(), _chromium()
    _need(html_dir is not None, "the book is not built (no _build/_build/html)")
    _need(browser is not None, "Chromium is not installed")
    path = html_dir / page
    assert path.is_file(), f"{page} missing from the built book"
    source = path.read_text(encoding="utf-8")
    # MathJax comes from the book itself, never a CDN
    assert "_static/mathjax/tex-chtml.js" in source, "MathJax is not served locally"
    assert not re.search(r"<script[^>]+src=\"https?://[^\"]*mathjax", source, re.I), "MathJax from a CDN"
    assert (html_dir / "_static" / "mathjax" / "tex-chtml.js").is_file()
    url = path.as_uri()
    with tempfile.TemporaryDirectory() as profile:
        # --dump-dom prints the DOM after scripts ran; the budget lets MathJax typeset the page
        dom = _run(
            browser,
            ["--virtual-time-budget=15000", "--run-all-compositor-stages-before-draw", "--dump-dom", url],
            profile,
        ).stdout
        assert "<mjx-container" in dom, f"MathJax did not typeset {page}"
        assert "<mjx-merror" not in dom, f"MathJax reported a TeX error on {page}"
        if has_figures:
            images = re.findall(r"<img[^>]+src=\"([^\"]+)\"", dom)
            figures = [s for s in images if s.startswith("data:image/png") or s.endswith(".png")]
            assert figures, f"no figures on {page}"
            for src in figures:
                if not src.startswith("data:"):
                    assert (path.parent / src).resolve().is_file(), f"figure {src} of {page} is missing"
        # another build's screenshots go next to its own _build folder, not into the checkout
        shots = SHOTS if html_dir in (HTML, ROOT / "_build" / "html") else html_dir.parent.parent / "ci-screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        shot = shots / (Path(page).stem + ".png")
        _run(browser, ["--virtual-time-budget=15000", "--window-size=1280,2000", f"--screenshot={shot}", url], profile)
        assert shot.is_file() and shot.stat().st_size > 10_000, f"no screenshot of {page}"


def test_figures_load_in_browser() -> None:
    """Every <img> of a chapter with figures finished loading with a non-zero size (checked in the page)."""
    html_dir, browser = _html_dir(), _chromium()
    _need(html_dir is not None, "the book is not built (no _build/_build/html)")
    _need(browser is not None, "Chromium is not installed")
    page = html_dir / "book" / "03_cost_matrix.html"
    probe = page.parent / "_dpddpm_probe.html"
    probe.write_text(
        "<!doctype html><html><body><iframe id=f src='03_cost_matrix.html' width=1200 height=900></iframe>"
        "<div id=out>pending</div><script>"
        "document.getElementById('f').onload = function() {"
        " setTimeout(function() { var d = document.getElementById('f').contentDocument;"
        " var imgs = Array.from(d.images); var bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0));"
        " var mj = d.querySelectorAll('mjx-container').length;"
        " document.getElementById('out').textContent = 'imgs=' + imgs.length + ' bad=' + bad.length + ' mjx=' + mj;"
        " }, 5000); };</script></body></html>",
        encoding="utf-8",
    )
    try:
        with tempfile.TemporaryDirectory() as profile:
            dom = _run(
                browser,
                ["--allow-file-access-from-files", "--virtual-time-budget=20000", "--dump-dom", probe.as_uri()],
                profile,
            ).stdout
    finally:
        probe.unlink(missing_ok=True)
    m = re.search(r"imgs=(\d+) bad=(\d+) mjx=(\d+)", dom)
    assert m, "the probe page did not report: " + dom[-500:]
    imgs, bad, mjx = map(int, m.groups())
    assert imgs >= 2 and bad == 0, f"{bad} of {imgs} images failed to load"
    assert mjx > 0


# --- the site over HTTP, as it will be published ---------------------------------------------------------------

NOTEBOOKS = sorted(
    p.stem
    for p in (ROOT / "book").glob("*.md")
    if p.read_text(encoding="utf-8").startswith("---") and "jupytext:" in p.read_text(encoding="utf-8")[:2000]
)
# The book is what _toc.yml lists (only_build_toc_files: true): the root and every `- file: book/...` entry.
IN_TOC = set(re.findall(r"^\s*(?:root|-\s*file):\s*book/(\S+)\s*$", (ROOT / "_toc.yml").read_text(), re.M))
# The chapters checked page by page: the notebooks that the book builds.
CHAPTERS = [c for c in NOTEBOOKS if c in IN_TOC]
# A same-origin page that loads PAGE in an iframe and, once loaded and given time for MathJax and the search
# index, writes what it found into #out (read back with --dump-dom).
PROBE = (
    "<!doctype html><html><body><iframe id=f src='{src}' width=1200 height=900></iframe>"
    "<div id=out>pending</div><script>"
    "window.onload = function() {{ setTimeout(function() {{ var d = document.getElementById('f').contentDocument;"
    " var imgs = Array.from(d.images); var bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0));"
    " document.getElementById('out').textContent = 'imgs=' + imgs.length + ' bad=' + bad.length"
    " + ' math=' + d.querySelectorAll('.math').length + ' mjx=' + d.querySelectorAll('mjx-container').length"
    " + ' merror=' + d.querySelectorAll('mjx-merror').length"
    " + ' results=' + d.querySelectorAll('#search-results li').length;"
    " }}, 8000); }};</script></body></html>"
)


# The course probe: in the loaded PAGE, the exercises (admonitions titled "Exercise N.M"), the solution dropdowns
# (sphinx-design: <details class="sd-dropdown">, content in .sd-summary-content) and the hide-input cells
# (myst-nb: <details class="hide above-input">, code in .cell_input): how many are open on load and how many are
# hidden, then, after opening them all, how many are shown. Hidden: the <details> is no taller than its <summary>
# (its content takes no room on the page) and the content is not visible (checkVisibility; Chromium lays out a
# closed <details>' content under content-visibility: hidden, so the content's own box has a height even when
# closed). Shown: the <details> is taller than its summary, and the content is visible with a height.
# Also the bibliography entries rendered (height > 0) and the links to the bibliography page.
DETAILS_PROBE = (
    "<!doctype html><html><body><iframe id=f src='{src}' width=1200 height=900></iframe>"
    "<div id=out>pending</div><script>"
    "window.onload = function() {{ setTimeout(function() {{ var d = document.getElementById('f').contentDocument;"
    " function h(e) {{ return e ? e.getBoundingClientRect().height : -1; }}"
    " function vis(e) {{ return !!e && (e.checkVisibility ? e.checkVisibility() : h(e) > 0); }}"
    " function room(x) {{ return h(x) - h(x.querySelector('summary')); }}"
    " function hidden(x, c) {{ return room(x) < 0.5 && !vis(c); }}"
    " function shown(x, c) {{ return room(x) > 0 && vis(c) && h(c) > 0; }}"
    " var sol = Array.from(d.querySelectorAll('details.sd-dropdown'));"
    " var inp = Array.from(d.querySelectorAll('details.hide.above-input'));"
    " var sc = function(x) {{ return x.querySelector('.sd-summary-content'); }};"
    " var ic = function(x) {{ return x.querySelector('.cell_input'); }};"
    " var ex = Array.from(d.querySelectorAll('.admonition > .admonition-title'))"
    "   .filter(function(x) {{ return /^Exercise \\d+\\.\\d+/.test(x.textContent.trim()); }}).length;"
    " var r = 'exercises=' + ex + ' solutions=' + sol.length"
    "   + ' sol_open=' + sol.filter(function(x) {{ return x.open; }}).length"
    "   + ' sol_hidden=' + sol.filter(function(x) {{ return hidden(x, sc(x)); }}).length"
    "   + ' inputs=' + inp.length"
    "   + ' inp_open=' + inp.filter(function(x) {{ return x.open; }}).length"
    "   + ' inp_hidden=' + inp.filter(function(x) {{ return hidden(x, ic(x)); }}).length;"
    " sol.forEach(function(x) {{ x.open = true; }}); inp.forEach(function(x) {{ x.open = true; }});"
    " r += ' sol_shown=' + sol.filter(function(x) {{ return shown(x, sc(x)); }}).length"
    "   + ' inp_shown=' + inp.filter(function(x) {{ return shown(x, ic(x)); }}).length"
    "   + ' bib=' + Array.from(d.querySelectorAll('[role=doc-biblioentry]'))"
    "     .filter(function(x) {{ return h(x) > 0; }}).length"
    "   + ' citelinks=' + d.querySelectorAll('a[href*=\"bibliography.html#\"]').length;"
    " document.getElementById('out').textContent = r;"
    " }}, 8000); }};</script></body></html>"
)
# The fit probe: PAGE in a 1280 x 800 frame (a laptop window). Once MathJax has typeset the page and the fonts are
# loaded, every <details> is opened (solutions and hidden cells are checked at the width they open to), and each
# display equation (mjx-container[display]), code block or literal block (div.highlight pre) and cell output
# (div.cell_output > *) in the article whose content is wider than its box (scrollWidth > clientWidth + 1 px: it
# scrolls or is cut off) is reported with its section and the start of its text (of a code block: its longest
# line and that line's length). Also reported: how many characters of code one line of the page's first code block
# outside a <details> or admonition holds.
FIT_PROBE = (
    "<!doctype html><html><body style='margin:0'>"
    "<iframe id=f src='{src}' width=1280 height=800 style='border:0'></iframe>"
    "<pre id=out>pending</pre><script>"
    "window.onload = function() {{ var f = document.getElementById('f'), w = f.contentWindow, d = f.contentDocument;"
    " var done = false;"
    " function measure() {{ if (done) {{ return; }} done = true;"
    "  d.querySelectorAll('details').forEach(function(x) {{ x.open = true; }});"
    "  setTimeout(function() {{ var art = d.querySelector('article.bd-article') || d.body; var bad = [];"
    "   ['mjx-container[display]', 'div.highlight pre', 'div.cell_output > *'].forEach(function(sel) {{"
    "    art.querySelectorAll(sel).forEach(function(e) {{ if (e.scrollWidth > e.clientWidth + 1) {{"
    "     var sec = e.parentElement.closest('section[id]'), t = e.textContent || '';"
    "     if (e.tagName == 'PRE') {{"
    "      t = t.split('\\n').reduce(function(a, b) {{ return b.length > a.length ? b : a; }});"
    "      t = '(' + t.length + ' characters) ' + t; }}"
    "     bad.push({{element: sel, section: sec ? sec.id : '', content: e.scrollWidth, box: e.clientWidth,"
    "      text: t.replace(/\\s+/g, ' ').trim().slice(0, 110)}}); }} }}); }});"
    "   var chars = 0, pre = Array.from(art.querySelectorAll('div.highlight pre'))"
    "    .filter(function(e) {{ return !e.closest('details, .admonition'); }})[0];"
    "   if (pre) {{ var cs = w.getComputedStyle(pre), probe = d.createElement('span');"
    "    probe.textContent = 'x'.repeat(100); pre.appendChild(probe);"
    "    var inner = pre.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);"
    "    chars = inner / (probe.getBoundingClientRect().width / 100); probe.remove(); }}"
    "   document.getElementById('out').textContent = 'FIT' + JSON.stringify({{width: w.innerWidth,"
    "    math: art.querySelectorAll('mjx-container[display]').length,"
    "    code: art.querySelectorAll('div.highlight pre').length, code_chars: chars, overflow: bad}});"
    "  }}, 500); }}"
    " var mj = w.MathJax && w.MathJax.startup && w.MathJax.startup.promise;"
    " Promise.all([mj || Promise.resolve(), d.fonts ? d.fonts.ready : Promise.resolve()])"
    "  .then(function() {{ setTimeout(measure, 2000); }}, measure);"
    " setTimeout(measure, 20000); }};</script></body></html>"
)
PROBES = {"/__probe__": PROBE, "/__details__": DETAILS_PROBE, "/__fit__": FIT_PROBE}


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path not in PROBES:
            return super().do_GET()
        src = urllib.parse.parse_qs(url.query)["src"][0]
        body = PROBES[url.path].format(src=src).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The built HTML served on 127.0.0.1 at a free port; yields the base URL, shut down afterwards."""
    html_dir = _html_dir()
    _need(html_dir is not None, "the book is not built (no _build/_build/html)")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(html_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _probe(site: str, src: str) -> dict[str, int]:
    browser = _chromium()
    _need(browser is not None, "Chromium is not installed")
    url = site + "__probe__?" + urllib.parse.urlencode({"src": "/" + src})
    with tempfile.TemporaryDirectory() as profile:
        dom = _run(browser, ["--virtual-time-budget=30000", "--dump-dom", url], profile).stdout
    m = re.search(r"imgs=(\d+) bad=(\d+) math=(\d+) mjx=(\d+) merror=(\d+) results=(\d+)", dom)
    assert m, f"the probe of {src} did not report: " + dom[-500:]
    return dict(zip(("imgs", "bad", "math", "mjx", "merror", "results"), map(int, m.groups())))


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.read()


def test_chapters_listed() -> None:
    assert "intro" in CHAPTERS and len(CHAPTERS) >= 8


def test_every_chapter_in_toc() -> None:
    """A chapter missing from _toc.yml is silently left out of the book (only_build_toc_files: true)."""
    missing = sorted(set(NOTEBOOKS) - IN_TOC)
    assert not missing, f"book/{missing[0]}.md is not in _toc.yml, so the book leaves it out: {missing}"
    assert "bibliography" in IN_TOC


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_over_http(site: str, chapter: str) -> None:
    """Served over HTTP, every chapter has its math typeset without errors and every image loaded."""
    status, page = _get(site + f"book/{chapter}.html")
    assert status == 200
    found = _probe(site, f"book/{chapter}.html")
    assert found["math"] > 0, f"no math on {chapter}"  # every chapter has some
    assert found["mjx"] > 0 and found["merror"] == 0, f"math of {chapter} not typeset: {found}"
    assert found["bad"] == 0, f"{found['bad']} of {found['imgs']} images of {chapter} failed to load"
    if b"<img" in page:
        assert found["imgs"] > 0


def test_search_over_http(site: str) -> None:
    """The search page, loaded with a query, lists matching chapters (Sphinx's search index in the browser)."""
    found = _probe(site, "search.html?q=dynamic+programming")
    assert found["results"] > 0, f"the search returned nothing: {found}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_notebook_download_over_http(site: str, chapter: str) -> None:
    """The page links its .ipynb (download menu and the link under the title); the link serves a notebook."""
    page_url = site + f"book/{chapter}.html"
    _, page = _get(page_url)
    links = set(re.findall(r'href="([^"]+\.ipynb)"', page.decode("utf-8")))
    assert links, f"{chapter}.html links no .ipynb"
    assert 'class="dpddpm-notebook-link"' in page.decode("utf-8"), "no visible notebook link on the page"
    assert "download-notebook-button" in page.decode("utf-8"), "no .ipynb in the download menu"
    for href in links:
        url = urllib.parse.urljoin(page_url, href)
        assert url.endswith(f"/_notebooks/book/{chapter}.ipynb"), url
        status, body = _get(url)
        assert status == 200, url
        nb = json.loads(body)
        assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["name"] == "python3"
        assert any(c["cell_type"] == "code" and c["source"] for c in nb["cells"]), f"{url} has no code"


# --- the book as a course: exercises with hidden solutions, and the bibliography ---------------------------------

EXERCISE_CHAPTERS = [c for c in CHAPTERS if c != "intro"]
MIN_EXERCISES = 3
EXERCISE_TITLE = re.compile(r'<p class="admonition-title">Exercise (\d+)\.(\d+)')
DROPDOWN = re.compile(r"<details\b([^>]*\bsd-dropdown\b[^>]*)>")
HIDE_INPUT = re.compile(r"<details\b([^>]*\bhide above-input\b[^>]*)>")
BIB = ROOT / "book" / "references.bib"


def _probe_details(site: str, src: str) -> dict[str, int]:
    browser = _chromium()
    _need(browser is not None, "Chromium is not installed")
    url = site + "__details__?" + urllib.parse.urlencode({"src": "/" + src})
    with tempfile.TemporaryDirectory() as profile:
        dom = _run(browser, ["--virtual-time-budget=30000", "--dump-dom", url], profile).stdout
    m = re.search(r"<div id=\"out\">([^<]*)</div>", dom)
    assert m and "=" in m.group(1), f"the probe of {src} did not report: " + dom[-500:]
    return {k: int(v) for k, v in (item.split("=") for item in m.group(1).split())}


def test_course_chapters_listed() -> None:
    assert {"01_ddpm_elbo", "02_skipping_steps"} <= set(EXERCISE_CHAPTERS)


@pytest.mark.parametrize("chapter", EXERCISE_CHAPTERS)
def test_exercises_in_built_html(chapter: str) -> None:
    """At least three numbered exercises, each answered by a solution dropdown that is not open by default."""
    html_dir = _html_dir()
    _need(html_dir is not None, "the book is not built (no _build/_build/html)")
    page = (html_dir / "book" / f"{chapter}.html").read_text(encoding="utf-8")
    titles = EXERCISE_TITLE.findall(page)
    assert len(titles) >= MIN_EXERCISES, f"{chapter} has {len(titles)} exercises, needs {MIN_EXERCISES}"
    assert len(set(titles)) == len(titles), f"{chapter}: exercise numbers repeat: {titles}"
    dropdowns = DROPDOWN.findall(page)
    assert len(dropdowns) >= len(titles), f"{chapter}: {len(titles)} exercises but {len(dropdowns)} solutions"
    for attrs in dropdowns + HIDE_INPUT.findall(page):
        assert not re.search(r"\bopen\b", re.sub(r'class="[^"]*"', "", attrs)), (
            f"{chapter}: a solution or hidden cell is open on load: <details{attrs}>"
        )


@pytest.mark.parametrize("chapter", EXERCISE_CHAPTERS)
def test_solutions_hidden_until_opened(site: str, chapter: str) -> None:
    """In the browser: every solution dropdown and every hide-input cell is closed on load, its content has no
    height; once opened, the content is laid out (height > 0)."""
    found = _probe_details(site, f"book/{chapter}.html")
    assert found["exercises"] >= MIN_EXERCISES, f"{chapter}: {found}"
    assert found["solutions"] >= found["exercises"], f"{chapter}: {found}"
    assert found["sol_open"] == 0 and found["sol_hidden"] == found["solutions"], f"{chapter}: {found}"
    assert found["sol_shown"] == found["solutions"], f"{chapter}: solutions do not open: {found}"
    assert found["inp_open"] == 0 and found["inp_hidden"] == found["inputs"], f"{chapter}: {found}"
    assert found["inp_shown"] == found["inputs"], f"{chapter}: hidden cells do not open: {found}"


def test_bibliography_over_http(site: str) -> None:
    """The bibliography page lists every entry of references.bib (``:all:``), rendered in the browser."""
    status, body = _get(site + "book/bibliography.html")
    assert status == 200
    page = body.decode("utf-8")
    entries = len(re.findall(r"^@\w+\{", BIB.read_text(encoding="utf-8"), re.M))
    assert page.count('role="doc-biblioentry"') == entries
    # pybtex's default style sets titles in sentence case, so compare without case
    for text in (
        "Watson",
        "Learning to efficiently sample from diffusion probabilistic models",
        "Denoising diffusion probabilistic models",
    ):
        assert text.lower() in page.lower(), f"{text!r} missing from the bibliography"
    found = _probe_details(site, "book/bibliography.html")
    assert found["bib"] == entries, f"{found['bib']} of {entries} entries rendered"


@pytest.mark.parametrize("chapter", ["intro", "01_ddpm_elbo", "02_skipping_steps"])
def test_citations_link_to_bibliography(site: str, chapter: str) -> None:
    """A chapter's citations are links to entries of the bibliography page, and every such link resolves."""
    _, body = _get(site + f"book/{chapter}.html")
    targets = set(re.findall(r'href="bibliography\.html#([^"]+)"', body.decode("utf-8")))
    assert targets, f"{chapter} cites nothing"
    _, bib = _get(site + "book/bibliography.html")
    ids = set(re.findall(r'<div class="citation" id="([^"]+)" role="doc-biblioentry"', bib.decode("utf-8")))
    assert targets <= ids, f"{chapter} links to missing entries: {sorted(targets - ids)}"
    assert _probe_details(site, f"book/{chapter}.html")["citelinks"] >= len(targets)


# --- pages that fit a laptop window --------------------------------------------------------------------------------

# Every page of the book (_toc.yml), the chapters and the reference pages alike.
FIT_PAGES = sorted(IN_TOC)
# book/_static/dpddpm.css widens the content column: one line of a code block holds about 95 characters at a
# 1280-pixel window (77 with the theme's defaults).
MIN_CODE_CHARS = 90


def _probe_fit(site: str, src: str) -> dict:
    browser = _chromium()
    _need(browser is not None, "Chromium is not installed")
    url = site + "__fit__?" + urllib.parse.urlencode({"src": "/" + src})
    with tempfile.TemporaryDirectory() as profile:
        args = ["--window-size=1300,900", "--virtual-time-budget=40000", "--dump-dom", url]
        dom = _run(browser, args, profile).stdout
    m = re.search(r"FIT(\{.*\})</pre>", dom, re.S)
    assert m, f"the fit probe of {src} did not report: " + dom[-500:]
    return json.loads(html.unescape(m.group(1)))


def test_fit_pages_listed() -> None:
    assert {"intro", "api_reference", "bibliography"} <= set(FIT_PAGES) and len(FIT_PAGES) >= 11


@pytest.mark.parametrize("page", FIT_PAGES)
def test_page_fits_1280(site: str, page: str) -> None:
    """At a 1280 x 800 window no display equation, code block or cell output is wider than the content column
    (each would scroll sideways or be cut off), solutions and hidden cells opened; the failure lists each one."""
    status, _ = _get(site + f"book/{page}.html")
    assert status == 200
    found = _probe_fit(site, f"book/{page}.html")
    assert found["width"] == 1280, found
    lines = [
        f"{o['element']} in #{o['section']}: {o['content']} px of content in a {o['box']} px box: {o['text']!r}"
        for o in found["overflow"]
    ]
    assert not lines, f"book/{page}.html: {len(lines)} elements overflow at 1280 px:\n" + "\n".join(lines)
    if found["code"]:
        assert found["code_chars"] >= MIN_CODE_CHARS, f"{page}: a code line holds {found['code_chars']:.1f} characters"
