"""What several commands resolve alike: a parser whose errors are one line, names (backend,
chip, dtype) checked against what exists with a suggestion, --shape text, and the argument types.
Every problem is a UsageError (bench/errors.py): one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import re
import sys
from typing import TYPE_CHECKING, Any, NoReturn, Sequence

from ..errors import UsageError

if TYPE_CHECKING:  # torch and the measuring modules load only when a command measures
    import torch

    from backends.base import Backend

    from ..roofline import Roof
    from ..timing import Budget


def suggest(name: str, known: Sequence[str], listing: bool = True) -> str:
    """'; did you mean X?' for a near name, else the known names (listing=False: nothing, for a
    message that lists them itself)."""
    near = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    if near:
        return f"; did you mean {near[0]!r}?"
    return f" (known: {', '.join(sorted(known))})" if listing else ""


class _StoreOnce(argparse._StoreAction):
    """argparse's store for an option that takes one value, refusing a second, different one:
    plain argparse keeps the last, so `run --op a --op b` would run b alone, without a word,
    beside options that repeat (--shape, --impl, --dtype)."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_given_once", {})
        if self.dest in given and given[self.dest] != values:
            parser.error(f"argument {option_string}: given twice ({given[self.dest]!r}, then "
                         f"{values!r}); it takes one value")
        given[self.dest] = values
        super().__call__(parser, namespace, values, option_string)


class Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line and exit 2 like all our usage errors, and an option
    that takes one value refuses two different ones (_StoreOnce)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        ns.__dict__.pop("_given_once", None)
        return ns, rest

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# --- resolving what was asked for ---------------------------------------------------------------

def known_backend(name: str) -> None:
    """UsageError for a name that is no backend, with the backend a device kind runs on."""
    from backends import BACKENDS
    if name.lower() not in BACKENDS:
        # a device kind is not a backend: GPUs run on cuda (ROCm's torch too), TPUs through xla
        kind = {"gpu": "cuda", "rocm": "cuda", "hip": "cuda", "tpu": "xla", "jax": "xla"}
        hint = (f"; {name.lower()} devices run on the {kind[name.lower()]} backend"
                if name.lower() in kind else suggest(name.lower(), list(BACKENDS), listing=False))
        raise UsageError(f"unknown backend {name!r}{hint} (backends: {', '.join(BACKENDS)})")


def resolve_backend(name: str | None):
    from backends import best_backend, get_backend
    if name is None:
        b = best_backend()
    else:
        known_backend(name)
        b = get_backend(name)
        ok, why = b.available()
        if not ok:
            raise UsageError(f"backend {b.name} is not available: {why}")
    bad = b.config_error()  # e.g. DECODEWALL_FLUSH set to no flush mode
    if bad:
        raise UsageError(bad)
    return b


def resolve_chip(name: str | None, info: dict[str, Any]):
    from backends import lookup_chip
    if name is not None and not name.strip():
        raise UsageError("--chip is empty (see `decodewall chips`)")
    if name is not None:
        try:
            return lookup_chip(name)
        except KeyError as e:
            raise UsageError(str(e.args[0])) from None
    if info.get("chip"):
        return lookup_chip(info["chip"])
    return None


def parse_shape(op, text: str):
    """'M=1,N=4096,K=4096' -> the op's validated shape."""
    kw: dict[str, int] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise UsageError(f"malformed --shape {text!r}: expected K=V pairs like M=1,N=4096,K=4096")
        k, v = (s.strip() for s in part.split("=", 1))
        if not k:
            raise UsageError(f"malformed --shape {text!r}: a field name is empty in {part!r} "
                             "(expected K=V pairs like M=1,N=4096,K=4096)")
        if k in kw:
            raise UsageError(f"malformed --shape {text!r}: {k} given twice")
        try:  # decimal digits only: int() alone would also take '+1', '1_0' and non-ASCII digits
            if not re.fullmatch(r"-?[0-9]+", v):
                raise ValueError(v)
            kw[k] = int(v)  # ValueError past 4300 digits
        except ValueError:
            raise UsageError(f"malformed --shape {text!r}: {k}={v!r} is not an integer") from None
    if not kw:
        raise UsageError(f"malformed --shape {text!r}: empty")
    try:
        return op.shape(**kw)
    except ValueError as e:
        raise UsageError(f"impossible shape for {op.name}: {e}") from None


def resolve_dtypes(names: Sequence[str] | None, op) -> list:
    """The dtypes named, each once (a repeated --dtype would measure every case again)."""
    from kernels import parse_dtype
    out = []
    for n in names or []:
        try:
            dt = parse_dtype(n)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if op is not None and dt not in op.dtypes:
            raise UsageError(f"{op.name} does not take dtype {n}")
        if dt not in out:
            out.append(dt)
    return out


def discard_stdout() -> None:
    """Point stdout at /dev/null: what a closed pipe or a full device did not take is dropped,
    so no later print or the flush at exit meets the same error again."""
    from ..errors import OutputError
    with contextlib.suppress(OSError, ValueError, OutputError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)


def read_files(paths: Sequence[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every record of the results files, and the file of each; a file that cannot be read is a
    UsageError naming it (and its bad line). A file named twice (one path twice, a folder and a
    file in it, a link) is read once: twice, its records would be shown, counted and plotted as
    two runs of every case."""
    from ..results import ResultsError, read_results
    records: list[dict[str, Any]] = []
    files: list[str] = []
    seen: set[str] = set()
    try:
        for path in paths:
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            recs = read_results(path)
            records += recs
            files += [path] * len(recs)
    except ResultsError as e:
        raise UsageError(str(e)) from None
    return records, files


# --- argument types -----------------------------------------------------------------------------

def ranks(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of ranks: {text!r}") from None
    if not 1 <= v <= 4096:
        raise argparse.ArgumentTypeError(f"must be 1..4096 ranks, got {text!r}")
    return v


# What torch.Generator.manual_seed takes (a negative seed is taken modulo 2**64); every op seeds
# its inputs through it.
SEED_RANGE = (-2**63, 2**64 - 1)


def seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    lo, hi = SEED_RANGE
    if not lo <= v <= hi:
        raise argparse.ArgumentTypeError(f"must be {lo}..{hi} (what torch's generator takes), "
                                         f"got {text}")
    return v


def given(text: str) -> str:
    """A path argument that is not empty: "" would read as "not given" (no plot, no results
    file) or as the current folder, never what was meant."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: give a path")
    return text


def directory(text: str) -> str:
    if not text.strip():  # Path("") is the current directory: never what was meant
        raise argparse.ArgumentTypeError("is empty: give a results directory (or --no-save)")
    return text


# The collective ranks' process group times out after half the case timeout, and gloo's timer
# overflows far past a week (1e14 s: "Invalid timeout"; 1e15 s: OverflowError in every rank).
MAX_SECONDS = 7 * 24 * 3600


def seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < v <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, at most "
                                         f"{MAX_SECONDS} (a week), got {text!r}")
    return v


def measured_roof(backend: Backend, dtypes: list[torch.dtype] | None, budget: Budget) -> Roof:
    """bench.roofline.measure_roof; a probe buffer the memory limit will not hold (`ulimit -v`,
    a full device) is a UsageError line, any other failure left as it is."""
    from ..errors import one_line
    from ..roofline import measure_roof
    try:
        return measure_roof(backend, dtypes, budget)
    except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
        said = str(e).lower()  # torch: "can't allocate", CUDA: "out of memory"; XLA:
        if not isinstance(e, MemoryError) and not any(  # "RESOURCE_EXHAUSTED: ... allocating"
                w in said for w in ("allocat", "out of memory", "resource_exhausted")):
            raise
        first = one_line((str(e) or type(e).__name__).splitlines()[0])[:300]
        raise UsageError(f"not enough memory to measure the roof (an address-space or memory "
                         f"limit?): {first}") from None
