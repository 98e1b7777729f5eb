"""A pytest plugin for the device check (`-p bench.gpucheck.pytest_shard`): `--shard I/N` keeps
the tests whose place among those selected is I modulo N. The check runs N pytest processes at
once on the GPU machine's cores, so their Triton compiles, most of the cuda tests' time with an
empty cache, run side by side rather than one after another."""
from __future__ import annotations

import pytest


def parse_shard(spec: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N, or ValueError."""
    i, sep, n = spec.partition("/")
    if not (sep and i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
        raise ValueError(f"--shard {spec!r}: expected I/N with 0 <= I < N")
    return int(i), int(n)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--shard", metavar="I/N",
                     help="run only the selected tests whose place among them is I modulo N")


def pytest_configure(config: pytest.Config) -> None:
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
