"""Release hygiene: one version everywhere it appears, a valid citation file, the licences and the notice of
third-party material, the version in freshly written results files, and the sdist/wheel content check."""

from __future__ import annotations

import fnmatch
import importlib.util
import io
import json
import re
import runpy
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from toy_models import discrete_data, tiny_model

import dpddpm
from dpddpm.reproduce import reproduce

try:
    import tomllib
except ImportError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
VERSION = runpy.run_path(str(ROOT / "dpddpm" / "_version.py"))["__version__"]
WHEEL = f"dpddpm-{VERSION}-py3-none-any.whl"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


# --- one version -------------------------------------------------------------------------------------------


def test_version_is_defined_once() -> None:
    assert dpddpm.__version__ == VERSION
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION), VERSION
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dpddpm._version.__version__"}
    setters = [p for p in (ROOT / "dpddpm").rglob("*.py") if re.search(r"^__version__\s*=", p.read_text(), re.M)]
    assert setters == [ROOT / "dpddpm" / "_version.py"]


def test_citation_and_changelog_name_this_version() -> None:
    cff = (ROOT / "CITATION.cff").read_text()
    assert re.search(rf"^version: {re.escape(VERSION)}$", cff, re.M)
    date = re.search(r'^date-released: "(\d{4}-\d{2}-\d{2})"$', cff, re.M).group(1)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## (\d+\.\d+\.\d+) \(([^)]*)\)", changelog, re.M)
    assert releases[0] == (VERSION, date), "the newest CHANGELOG.md entry must be this version, dated as CITATION.cff"
    assert len({v for v, _ in releases}) == len(releases)


def test_install_commands_name_this_version() -> None:
    """README (install commands, citation) and every generated notebook's first cell name this version."""
    readme = (ROOT / "README.md").read_text()
    assert WHEEL in readme and f"version = {{{VERSION}}}" in readme  # the install commands, the BibTeX entry
    assert WHEEL in (ROOT / "book" / "_ext" / "notebooks.py").read_text()


# --- the citation file -------------------------------------------------------------------------------------


def test_citation_cff_is_valid() -> None:
    from cffconvert import Citation

    text = (ROOT / "CITATION.cff").read_text()
    Citation(text).validate()  # raises on any schema error; reads nothing from the network
    reference = Citation(text).cffobj["references"][0]
    assert reference["title"] == "Learning to Efficiently Sample from Diffusion Probabilistic Models"
    assert [a["family-names"] for a in reference["authors"]] == ["Watson", "Ho", "Norouzi", "Chan"]


def test_cffconvert_rejects_a_broken_citation() -> None:
    from cffconvert import Citation

    broken = (ROOT / "CITATION.cff").read_text().replace("date-released:", "released-on:")
    with pytest.raises(Exception, match="released-on"):
        Citation(broken).validate()


# --- licences and notices ----------------------------------------------------------------------------------


def test_licence_files() -> None:
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License\n") and "Copyright (c) 2026 dpddpm contributors" in licence
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE", "NOTICE.md"]
    assert "Apache License" in (ROOT / "book" / "_static" / "mathjax" / "LICENSE").read_text()
    assert "CC BY 4.0" in (ROOT / "README.md").read_text() and "CC BY 4.0" in (ROOT / "_config.yml").read_text()


def _notice_patterns() -> list[str]:
    """The repository paths (or glob patterns) that NOTICE.md's third-party section names in backticks."""
    tops = ("book/", "dpddpm/", "tests/", "results/")
    section = (ROOT / "NOTICE.md").read_text().split("## Third-party material", 1)[1]
    found = re.findall(r"`([^`\s]+)`", section)
    return [p.rstrip("/") + ("/*" if p.endswith("/") else "") for p in found if p.startswith(tops)]


def test_every_path_in_the_notice_exists() -> None:
    missing = [pat for pat in _notice_patterns() if not any(p.is_file() for p in ROOT.glob(pat))]
    assert not missing, f"NOTICE.md names files that do not exist: {missing}"


@pytest.mark.parametrize(
    "folder", ["tests/data", "dpddpm/digits/weights", "dpddpm/photos/data", "book/_static/mathjax", "results"]
)
def test_every_third_party_or_derived_file_is_in_the_notice(folder: str) -> None:
    """Data, weights, vendored code and results: each file is attributed in NOTICE.md."""
    patterns = _notice_patterns()
    files = [p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*") if p.is_file()]
    unlisted = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert files and not unlisted, f"add these to NOTICE.md (source, licence, what was derived): {unlisted}"


def test_notice_names_the_third_party_sources() -> None:
    notice = (ROOT / "NOTICE.md").read_text()
    for needle in ("10.24432/C50P49", "CC BY 4.0", "BSD-3-Clause", "MathJax 3.2.2", "Apache", "improved-diffusion"):
        assert needle in notice, needle
    assert "mathjax@3.2.2" in (ROOT / "_config.yml").read_text()  # the version NOTICE.md names


# --- the version in every results file ---------------------------------------------------------------------


def test_reproduce_records_the_version(tmp_path: Path) -> None:
    model, selection, test = tiny_model(T=8), discrete_data(4, seed=1), discrete_data(3, seed=2)
    res = reproduce(model, selection, test, tmp_path, steps=[2], skip_full=True, progress=False)
    written = json.loads((tmp_path / "results.json").read_text())
    assert res["dpddpm_version"] == written["dpddpm_version"] == VERSION


def test_benchmark_files_record_the_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    common = _load(ROOT / "benchmarks" / "common.py", "bench_common_under_test")
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    path = common.write("bench_release_test", torch.device("cpu"), {"seconds": 1.0})
    assert path.parent == tmp_path and json.loads(path.read_text())["dpddpm_version"] == VERSION


@pytest.mark.parametrize("script", ["scripts/table1_digits.py", "scripts/validate_digits_fid.py"])
def test_result_scripts_record_the_version(script: str) -> None:
    """These take minutes to run: check that the dictionary each one writes starts with the version."""
    assert re.search(r"= \{\n\s+\"dpddpm_version\": dpddpm\.__version__,", (ROOT / script).read_text())


# --- the sdist and wheel content check (scripts/check_dist.py) on archives made here ------------------------

check_dist = _load(ROOT / "scripts" / "check_dist.py", "check_dist_under_test")


def _archives(tmp_path: Path, drop: str = "", add: str = "", metadata: str = "") -> tuple[Path, Path]:
    """An sdist and a wheel holding what check_dist requires, minus ``drop``, plus ``add``."""
    info = f"dpddpm-{VERSION}.dist-info"
    metadata = metadata or "\n".join(check_dist.WHEEL_METADATA) + "\n"
    source = check_dist.source_files()
    sdist_files = {n: b"" for n in (*check_dist.SDIST_TOP, *source)}
    wheel_files = {n: b"" for n in source}
    wheel_files |= {f"{info}/licenses/{n}": b"" for n in check_dist.LICENSES}
    wheel_files |= {f"{info}/METADATA": metadata.encode(), f"{info}/entry_points.txt": b"dpddpm = dpddpm.cli:main\n"}
    for files in (sdist_files, wheel_files):
        files.pop(drop, None)
        if add:
            files[add] = b""
    sdist, wheel = tmp_path / f"dpddpm-{VERSION}.tar.gz", tmp_path / WHEEL
    with tarfile.open(sdist, "w:gz") as tar:
        for name, data in sdist_files.items():
            member = tarfile.TarInfo(f"dpddpm-{VERSION}/{name}")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in wheel_files.items():
            zf.writestr(name, data)
    return sdist, wheel


def _problems(sdist: Path, wheel: Path) -> list[str]:
    source = check_dist.source_files()
    return check_dist.sdist_problems(sdist, source) + check_dist.wheel_problems(wheel, source)


def test_check_dist_passes_complete_archives(tmp_path: Path) -> None:
    assert _problems(*_archives(tmp_path)) == []


@pytest.mark.parametrize(
    "drop",
    [
        "dpddpm/digits/weights/digits-hybrid.pt",
        "dpddpm/digits/weights/digits-classifier.json",
        "dpddpm/shipped/results/table1_digits.json",
        "dpddpm/cli/commands.py",
        "LICENSE",
        "NOTICE.md",
        f"dpddpm-{VERSION}.dist-info/licenses/LICENSE",
    ],
)
def test_check_dist_finds_what_is_missing(tmp_path: Path, drop: str) -> None:
    problems = _problems(*_archives(tmp_path, drop=drop))
    assert problems and all(drop in p for p in problems), problems


@pytest.mark.parametrize("extra", ["tests/data/improved_diffusion_small_golden.pt", "dpddpm/__pycache__/x.pyc"])
def test_check_dist_refuses_what_must_not_ship(tmp_path: Path, extra: str) -> None:
    problems = _problems(*_archives(tmp_path, add=extra))
    assert len(problems) == 2 and all(f"must not contain {extra}" in p for p in problems), problems


def test_check_dist_reads_the_wheel_metadata(tmp_path: Path) -> None:
    metadata = "\n".join(line for line in check_dist.WHEEL_METADATA if not line.startswith("License-Expression"))
    problems = _problems(*_archives(tmp_path, metadata=metadata))
    assert problems == [f"{WHEEL}: METADATA lacks 'License-Expression: MIT'"]
