"""Open the built book in headless Chromium: math must be typeset offline and figures must load.

The first tests open files (``file://``); the ``http`` ones serve ``_build/_build/html`` with Python's
``http.server`` on 127.0.0.1 (a free port, a background thread) as a web host would, and check every chapter
(math typeset, images loaded), the search page (a query returns results) and every chapter's ``.ipynb`` download
(linked from the page, served with status 200, a valid notebook).

Runs after ``jupyter-book build --all -W --keep-going --path-output _build .``. Skipped when ``_build/html`` or
Chromium is missing, unless ``DPDDPM_BROWSER_TEST=1`` (set by CI after the build), which turns the skip into a
failure. Screenshots go to ``_build/ci-screenshots/``.
"""

from __future__ import annotations

import functools
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
    for cand in (HTML, ROOT / "_build" / "html"):
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
        SHOTS.mkdir(parents=True, exist_ok=True)
        shot = SHOTS / (Path(page).stem + ".png")
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

CHAPTERS = sorted(
    p.stem
    for p in (ROOT / "book").glob("*.md")
    if p.read_text(encoding="utf-8").startswith("---") and "jupytext:" in p.read_text(encoding="utf-8")[:2000]
)
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


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/__probe__":
            return super().do_GET()
        src = urllib.parse.parse_qs(url.query)["src"][0]
        body = PROBE.format(src=src).encode()
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
