"""Open the built book in headless Chromium: math must be typeset offline and figures must load.

Runs after ``jupyter-book build --all -W --keep-going --path-output _build .``. Skipped when ``_build/html`` or
Chromium is missing, unless ``DPDDPM_BROWSER_TEST=1`` (set by CI after the build), which turns the skip into a
failure. Screenshots go to ``_build/ci-screenshots/``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
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
