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


def _options() -> dict[str, set[str]]:
    """Each `decodewall` subcommand's option strings, and bench/device_check.sh's."""
    import argparse
    from bench.cli import build_parser
    from bench.gpucheck.check import build_parser as check_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    opts = {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()}
    opts["device_check.sh"] = {o for a in check_parser()._actions for o in a.option_strings}
    return opts


COMMAND = re.compile(r"(?:decodewall (run|show|roof|chips|backends|compare|project|plot)|(device_check\.sh))\b([^`\n|]*)")


def _stale_options(text: str, opts: dict[str, set[str]]) -> list[str]:
    """`COMMAND --flag` pairs in `text` whose command takes no such option."""
    bad = []
    for m in COMMAND.finditer(text):
        cmd = m.group(1) or m.group(2)
        bad += [f"{cmd} {flag}" for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", m.group(3))
                if flag not in opts[cmd]]
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_options_named_with_a_command_exist(page: Path):
    """An option written after `decodewall SUBCOMMAND` or `device_check.sh` on a line of the docs
    is one that command takes: a renamed or removed option fails here."""
    assert not _stale_options(page.read_text(), _options()), page.name


def test_option_check_catches_a_stale_option():
    opts = _options()
    text = ("`decodewall run --suite smoke --no-such-option` and\n"
            "bash bench/device_check.sh --with roof --dry-run --skipp ncu\n"
            "decodewall plot RUN.jsonl --terminal, then `--no-such-option` outside a command")
    assert _stale_options(text, opts) == ["run --no-such-option", "device_check.sh --skipp"]


def test_readme_record_contract_is_the_fields_every_record_holds():
    """The README's public contract of record keys is bench.results.FIELDS, in order: a key added,
    renamed or dropped in one place only fails here."""
    from bench.results import FIELDS
    text = (ROOT / "README.md").read_text()
    listed = re.search(r"These keys are a public contract:\s+`([^`]+)`", text).group(1)
    listed = re.sub(r"\{[^}]*\}|\([^)]*\)", "", listed)  # sub-keys and remarks
    assert [k.strip() for k in listed.split(",")] == list(FIELDS)


def _prose(page: Path) -> str:
    """A page without its fenced code blocks (example output names runs that were not saved)."""
    return re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)


RUN_ID = re.compile(r"\b(\d{8}-\d{6}-(?:cpu|cuda|xla)-[0-9a-f]{4})\b")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_runs_named_are_committed(page: Path):
    """A run id a page cites (a results file, bare or as a path) is a committed file under
    results/, and a `results/...*` pattern matches at least one file."""
    text = _prose(page)
    for run in set(RUN_ID.findall(text)):
        assert list((ROOT / "results").glob(f"*/{run}.jsonl")), f"{page.name}: no results file {run}"
    for pattern in re.findall(r"`(results/[A-Za-z0-9_./-]*\*[A-Za-z0-9_.*/-]*)`", text):
        assert list(ROOT.glob(pattern)), f"{page.name}: {pattern} matches no file"


def _files_of(cell: str, folder: Path) -> list[Path]:
    """The results files a README cell names: run ids, `PREFIX*` patterns, a `-SUFFIX*` completed
    from the name before it, and `A*` to `-B*` as every file from A to B."""
    names: list[str] = []
    for token in re.findall(r"`([0-9*a-z-]+)`", cell):
        if token.startswith("-") and names:
            token = names[-1].rstrip("*")[:-(len(token) - 1 - token.count("*"))] + token[1:]
        names.append(token)
    stems = sorted(f.stem for f in folder.glob("*.jsonl"))
    if " to " in cell and len(names) == 2:
        lo, hi = (n.rstrip("*") for n in names)
        picked = [s for s in stems if lo <= s[:len(lo)] <= hi]
    else:
        picked = [s for n in names for s in stems if s.startswith(n.rstrip("*"))]
    return [folder / f"{s}.jsonl" for s in picked]


@pytest.mark.parametrize("folder", sorted((ROOT / "results").glob("cpu*/")), ids=lambda p: p.name)
def test_results_readme_commits_are_the_records(folder: Path):
    """Each row of a results/cpu* README names as many files as it says, and the commit its runs'
    records carry; every results file of the folder is in a row."""
    import json
    covered: set[Path] = set()
    for line in (folder / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not re.match(r"[0-9a-f]{7}\b", cells[2]):
            continue
        files = _files_of(cells[0], folder)
        assert files, line
        if (count := re.search(r"\((\d+) files\)", cells[0])):
            assert len(files) == int(count.group(1)), line
        for f in files:
            for rec in map(json.loads, f.read_text().splitlines()):
                assert rec["git_commit"].startswith(cells[2][:7]), \
                    f"{f.name}: records of {rec['git_commit']}, the README says {cells[2][:7]}"
        covered.update(files)
    assert covered == set(folder.glob("*.jsonl")), "a results file the README does not list"


def test_budget_table_is_the_code():
    """measurement.md's table of --budget figures is bench.timing.BUDGETS."""
    from bench.timing import BUDGETS
    text = (ROOT / "docs" / "measurement.md").read_text()
    num = r"([\d.]+)"
    for name, b in BUDGETS.items():
        m = re.search(rf"^\| `{name}`[^|]*\| {num} s \| {num}–{num} \| {num}–{num} s \|$", text, re.M)
        assert m, f"no row for budget {name}"
        assert [float(g) for g in m.groups()] == [b.warmup_s, b.min_samples, b.max_samples,
                                                  b.min_time_s, b.max_time_s], name


def test_device_check_boxes_are_the_code():
    """device-check.md's time boxes, total and reserve are bench.gpucheck.check's."""
    from bench.gpucheck.check import BOXES, RESERVE_S, TOTAL_S
    text = (ROOT / "docs" / "device-check.md").read_text()
    boxes = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| (\w+) \| (\d+)\b", text, re.M)}
    assert boxes == BOXES
    prose = " ".join(text.split())  # a phrase may wrap
    assert f"a {TOTAL_S} s total" in prose
    assert f"the total less {RESERVE_S:g} s" in prose
    assert sum(BOXES.values()) == TOTAL_S - RESERVE_S


def test_case_timeout_default_named_in_docs():
    """Every "--case-timeout ... default N" in the README and docs is the parser's default."""
    from bench.case import DEFAULT_CASE_TIMEOUT_S
    found = 0
    for page in PAGES:
        for n in re.findall(r"--case-timeout[^()]{0,40}\(?default (\d+)", page.read_text()):
            found += 1
            assert float(n) == DEFAULT_CASE_TIMEOUT_S, page.name
    assert found >= 3


def test_readme_ops_table_lists_every_impl():
    """The README's ops table names every registered impl of its op (the optional peers in the
    extras paragraph instead; INT8-KV attention says "the same set" as paged_attention)."""
    from kernels import OPS
    text = (ROOT / "README.md").read_text()
    rows = {name.strip().strip("`"): c[3] for line in text.splitlines() if line.startswith("| `")
            for c in [line.split("|")] for name in c[1].split(",")}
    own = {name: [i for i, impl in op.impls.items() if not impl.fn.__module__.endswith(".peers")]
           for name, op in OPS.items()}
    for name, impls in own.items():
        assert name in rows, f"README has no ops-table row for {name}"
        if "the same set" in rows[name]:
            assert impls == own["paged_attention"], name
            continue
        assert [i for i in impls if f"`{i}`" not in rows[name]] == [], name
    peers = [i for op in OPS.values() for i, impl in op.impls.items() if impl.fn.__module__.endswith(".peers")]
    extras = text[text.index("`.[peers]`"):].split("\n\n")[0]
    assert [p for p in peers if f"`{p}`" not in extras] == []


def _verdicts() -> set[str]:
    """Every verdict the code gives, found by judging a grid of cases: bench.roofline.judge over
    times from far below to far above a roof (memory- and compute-bound, cold and in cache), and
    bench.collectives.judge over bus bandwidths with and without a link figure."""
    import torch
    from bench import collectives
    from bench.roofline import Roof, judge
    roof = Roof("cpu", 10.0, 10.0, 0, matmul_tflops={"float32": 1.0},
                compute_dtype={"float32": "float32"})
    found = set()
    for nbytes in (100, 10**6):
        for ai in (0, 1, 1000):  # FLOP/B: under and past the ridge (100 FLOP/B)
            for median_s in (1e-6, 1e-5, 1e-4, 1e-3, 1.0):
                for in_cache in (False, True):
                    found.add(judge(nbytes, ai * nbytes, median_s, roof, torch.float32, 5e-5,
                                    in_cache=in_cache).verdict)
    for busbw, link, n in ((90.0, 100.0, 2), (10.0, 100.0, 2), (10.0, None, 2), (0.0, 100.0, 1)):
        found.add(collectives.judge(busbw, link, n)[1])
    return found


def test_measurement_names_every_verdict():
    """measurement.md names each verdict the code gives, as the table shows it: the words before
    a parenthesis, or before the colon of one that says why it is not judged."""
    text = " ".join((ROOT / "docs" / "measurement.md").read_text().split())
    verdicts = _verdicts()
    assert len(verdicts) >= 12, verdicts  # the grid reaches each of the twelve
    for v in sorted(verdicts):
        name = v.split(" (")[0]
        if ": not judged" in name or name.startswith("not judged"):
            name = name.split(":")[0]
        assert name in text, f"measurement.md does not name the verdict {v!r}"


def test_readme_cpu_torch_step_comes_before_the_setup_commands():
    """A reader runs the set-up commands in order: the CPU build's install step must come before
    them, and use the same `python3 -m pip`, or the first command pulls the multi-GB CUDA build."""
    text = (ROOT / "README.md").read_text()
    step = text.index("python3 -m pip install torch==2.13.0 --index-url")
    assert step < text.index("python3 -m pip install -e . && decodewall run")
