"""CPU by default: without a GPU, Triton kernels run under the interpreter (set before import).
Ctrl-C as in a terminal: a shell starts a background job (`cmd &`, as CI runners may) with SIGINT
ignored, which this process and every command it starts would inherit; the interrupt tests send
SIGINT and must see it delivered."""
import os
import signal

import torch

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # children exec with SIG_DFL

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_configure(config):
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    try:
        import numpy
        import triton
    except ImportError:  # no Triton (not Linux x86-64): its tests skip themselves
        return
    from tests.helpers import interpreter_numpy_conflict
    why = interpreter_numpy_conflict(triton.__version__, numpy.__version__)
    if why:
        raise pytest.UsageError(why)


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="no CUDA device"))


@pytest.fixture(scope="session")
def isolated():
    """`isolated(op, impl, shape, dtype)` -> the record of that impl's correctness gate, run in
    the harness's case worker (bench/isolation.py)."""
    from tests.helpers import IsolatedChecker
    checker = IsolatedChecker()
    yield checker
    checker.close()


@pytest.fixture(autouse=True)
def _tables_as_in_a_pipe(monkeypatch):
    """Each test sees tables as a pipe gets them: a COLUMNS the caller exported (a terminal's,
    pytest-xdist's 80) would fold and drop the columns the tests read; a test of the width sets
    its own. pytest's own output keeps the caller's width."""
    monkeypatch.delenv("COLUMNS", raising=False)
