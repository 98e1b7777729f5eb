"""The README and docs/ name files, anchors and modules that exist: a move that leaves a page
pointing at an old path fails here, not in a reader's shell."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "results").glob("*/README.md"))]
TOP = ("kernels/", "bench/", "backends/", "results/", "tests/", "docs/", ".ci/")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", page.read_text(), re.M)}


def test_anchor_rule():
    assert _anchor("Peers (CUDA, optional)") == "peers-cuda-optional"
    assert _anchor("Isolation: crashed and timeout") == "isolation-crashed-and-timeout"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page: Path):
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, frag = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to missing {target}"
        if frag and dest.suffix == ".md":
            assert frag in _anchors(dest), f"{page.name}: no heading for #{frag} in {dest.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_paths_exist(page: Path):
    """Every `kernels/...`-style path in backticks exists (results of runs not yet made aside:
    `results/runs/` is where runs go, created on the first one)."""
    for path in re.findall(r"`((?:%s)[A-Za-z0-9_./-]*)`" % "|".join(map(re.escape, TOP)), page.read_text()):
        if path.startswith("results/runs"):
            continue
        assert (ROOT / path).exists(), f"{page.name}: names missing {path}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_modules_exist(page: Path):
    for mod in re.findall(r"python3? -m ((?:bench|kernels|backends)[\w.]*)", page.read_text()):
        assert importlib.util.find_spec(mod) is not None, f"{page.name}: python -m {mod} names no module"


def test_checker_catches_a_stale_path(tmp_path: Path):
    """The path rule fails on a page naming a file that is not there."""
    page = tmp_path / "p.md"
    page.write_text("see `kernels/gemv_w4.py` and [x](nowhere.md)")
    with pytest.raises(AssertionError, match="kernels/gemv_w4.py"):
        test_named_paths_exist(page)
    with pytest.raises(AssertionError, match="nowhere.md"):
        test_links_resolve(page)
