"""A pytest plugin for the device check (`-p bench.gpucheck.pytest_shard`): `--shard I/N` keeps
the tests whose place among those selected is I modulo N. The check runs N pytest processes at
once on the GPU machine's cores, so their Triton compiles, most of the cuda tests' time with an
empty cache, run side by side rather than one after another.

It also prints each failure's reason on one line (`FAIL_LINE` + the test's id and the error) the
moment the test fails, and each test file's that fails to collect: pytest's own report of it
comes at the end of the run, which a time box may cut off."""
from __future__ import annotations

import os
import re
from typing import Any

import pytest

from .proc import FAIL_LINE, parse_shard

REASON_CHARS = 300
_CONFIG: list[pytest.Config] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--shard", metavar="I/N",
                     help="run only the selected tests whose place among them is I modulo N")


# The line of an `E` block that names the exception ("ImportError: ...", "SyntaxError: ...");
# a SyntaxError's block starts with its file, line and caret instead.
EXC_LINE = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b")


def reason(report: Any) -> str:
    """A failed report's error on one line: the crash message where pytest has one, else the
    exception in the last block of `E` lines of its text, every line of its message (a
    collection error's text: the hint and traceback come first), else its last line."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    if crash is None:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        blocks: list[list[str]] = [[]]
        for ln in lines:
            if ln.startswith("E "):
                blocks[-1].append(ln[1:].strip())
            elif blocks[-1]:
                blocks.append([])
        last = next((b for b in reversed(blocks) if b), [])
        start = next((i for i, ln in enumerate(last) if EXC_LINE.match(ln)), 0)
        text = " ".join(last[start:]) if last else (lines[-1] if lines else text)
    return " ".join(text.split())[:REASON_CHARS]


def shown_id(config: Any, nodeid: str) -> str:
    """A test's id as `-v` shows it: its path relative to where pytest started, not to its
    rootdir. pytest's own `Config.cwd_relative_nodeid` is not public: 9.0 and earlier take the
    id as a string (and before 8.3.3 join the whole id, brackets included, to the rootdir as one
    path, as -v then does); 9.2 takes a structured id, and a string raises there."""
    try:
        shown = config.cwd_relative_nodeid(nodeid)
        if isinstance(shown, str):
            return shown
    except (AttributeError, TypeError):
        pass
    path, sep, rest = nodeid.partition("::")
    here, root = config.invocation_params.dir, config.rootpath
    if here == root:
        return nodeid
    # an empty path (a file outside the rootdir, `-c` naming another folder's ini) is the
    # rootdir itself, as pytest shows it: `cfg::test_a`, not `::test_a`
    return os.path.relpath(root / path, here).replace(os.sep, "/") + sep + rest


@pytest.hookimpl(trylast=True)  # after the terminal reporter's own FAILED
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not report.failed or not _CONFIG:
        return
    config = _CONFIG[0]
    tr = config.pluginmanager.getplugin("terminalreporter")
    if tr is not None:  # the test named as -v names it
        test = shown_id(config, report.nodeid)
        tr.write_line(f"{FAIL_LINE}{test} ({report.when}): {reason(report)}")


@pytest.hookimpl(trylast=True)
def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A test file that fails to import (an API another torch or Triton lacks) runs none of
    its tests and names none: its reason goes out on the same line as a test's."""
    if report.failed and _CONFIG:
        tr = _CONFIG[0].pluginmanager.getplugin("terminalreporter")
        if tr is not None:
            # "\n" first: piped, pytest has written "collecting ... " with no end of line
            tr.write_line(f"\n{FAIL_LINE}{report.nodeid or '(collection)'} (collect): "
                          f"{reason(report)}")


def pytest_configure(config: pytest.Config) -> None:
    _CONFIG[:] = [config]
    spec = config.getoption("shard")
    if spec:
        try:
            parse_shard(spec)
        except ValueError as e:
            raise pytest.UsageError(str(e)) from None


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected theirs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    spec = config.getoption("shard")
    if not spec:
        return
    i, n = parse_shard(spec)
    config.hook.pytest_deselected(items=[it for k, it in enumerate(items) if k % n != i])
    items[:] = items[i::n]
