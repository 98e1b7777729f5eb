"""Compile ahead: the suite's Triton kernels compiled at the suite's own shapes in background
processes while the device check's test steps run, so that the suite's autotuner finds every
config in Triton's on-disk cache and spends its time box timing, not compiling; and FlashInfer's
decode kernel (JIT_PEERS) built once into its own cache, for the same reason.

On the H200 a paged-attention case's tuning took ~10 s, nearly all of it compiling 18 configs one
after another in the suite's single process (4 such tunings in the goal cases alone), and GemLite
tuned itself for 5-22 s a case. Triton's compile holds the GIL, so only processes compile side
by side.

Each process takes a share of the planned cases (whole cases, balanced by their Triton impls, in
plan order: the goal cases first), builds each case's inputs on the device as the suite does and
calls each Triton impl (ours and the Triton peers) once with the autotuner in compile-only mode:
`Autotuner.run` compiles every config its prune keeps through `Autotuner.warmup`, the JIT path and
cache key of a launch, and launches nothing. So nothing is timed, no tuning result is written to
Triton's cache, and the GPU stays with the tests running beside it. A plain `@triton.jit` kernel
(an attention split's reduction) compiles and runs once on whatever its workspace holds. Nothing
is checked and the outputs are dropped: the suite checks every impl itself. On the CPU (the dry
run) the kernels run once under Triton's interpreter, which compiles nothing: the dry run
exercises the plan, the inputs and the calls.

    python -m bench.gpucheck.warm --shard I/N [--backend cuda] [--suite gpu-check]

One line per (case, impl): `warm I/N: <op> <shape> <dtype> <impl>: <n> configs compiled in <s> s`
(under the interpreter `ran under the interpreter in <s> s`; or `skipped: <why>`, `failed:
<error>`), and last `warm I/N done: <ok> of <pairs> pairs, <configs> configs, <s> s`. Exit 0,
whatever the pairs did; 2 on bad arguments.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any

from bench.errors import OneLineParser

from .proc import parse_shard

COMPILED = [0]  # tuned configs compiled in this process (compile_only's count)
THREADS = 2  # torch threads a process: the inputs are drawn on the host beside the pytest processes


def compile_only() -> None:
    """Every autotuned Triton kernel in this process compiles each config its prune keeps and
    launches nothing (see the module docstring)."""
    from triton.runtime.autotuner import Autotuner

    def run(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("warmup", None)  # the launch passes grid= and warmup=False; warmup() takes grid
        COMPILED[0] += len(self.warmup(*args, **kwargs))
        return None

    Autotuner.run = run


def shares(weights: list[int], n: int) -> list[list[int]]:
    """Case indices for each of n processes, given each planned case's weight (its Triton impls):
    each case, in plan order, to the process with the least weight so far (the lowest index on
    ties), so every process starts on a goal case and each case's inputs are built once."""
    load = [0] * n
    out: list[list[int]] = [[] for _ in range(n)]
    for i, w in enumerate(weights):
        if not w:
            continue
        j = min(range(n), key=lambda k: (load[k], k))
        load[j] += w
        out[j].append(i)
    return out


# Impls that build themselves on first use outside Triton: FlashInfer compiles its decode kernel
# with nvcc into its own on-disk cache (~28 s in a log on FlashInfer's issue #1038), which the
# suite's process then loads instead of compiling it in the middle of the goal cases.
JIT_PEERS = ("flashinfer_decode",)


def triton_impls(case: Any, backend: str) -> list:
    """The case's Triton impls (and JIT_PEERS) the suite runs on `backend` (on the CPU, the ones
    it would run on CUDA: the dry run calls them under the interpreter)."""
    from ..runner import select_impls
    want = "cuda" if backend == "cpu" else backend
    return [i for i in select_impls(case, None)
            if (i.kind == "triton" or i.name in JIT_PEERS) and want in i.backends]


def plan(backend: Any, suite: str) -> list:
    """The suite's cases as `decodewall run --suite` plans them on this device (KeyError: no
    such suite)."""
    from ..suites import SuiteContext, cases_for
    info = backend.device_info()
    return cases_for(suite, SuiteContext(backend.name, info.get("memory_bytes"),
                                         info.get("cache_bytes")))


def label(case: Any) -> str:
    import dataclasses
    shape = ",".join(f"{k}={v}" for k, v in dataclasses.asdict(case.shape).items())
    return f"{case.op} {shape} {str(case.dtype).replace('torch.', '')}"


def warm_case(backend: Any, case: Any, impls: list, seed: int = 0) -> list[tuple[str, str]]:
    """Build the case's inputs and call each impl once: [(impl, what happened)]."""
    import torch

    from kernels import OPS

    from ..case import make_inputs
    op = OPS[case.op]
    try:
        inputs = make_inputs(backend, op, case.shape, case.dtype, seed)
    except Exception as e:
        return [(i.name, f"failed: building inputs: {type(e).__name__}: {_first(e)}") for i in impls]
    out_shape, out_dtype = op.out_spec(case.shape, case.dtype)
    done = []
    for impl in impls:
        t0, before = time.perf_counter(), COMPILED[0]
        try:
            args = tuple(impl.prepare(*inputs)) if impl.prepare else inputs
            fn = backend.wrap(impl.fn)
            if impl.out_arg and backend.out_buffers:
                fn(*args, out=torch.empty(out_shape, dtype=out_dtype, device=backend.device()))
            else:
                fn(*args)
            backend.synchronize()
            secs = time.perf_counter() - t0
            what = (f"ran under the interpreter in {secs:.1f} s" if interpreted() else
                    f"{COMPILED[0] - before} configs compiled in {secs:.1f} s"
                    if impl.kind == "triton" else f"built and ran once in {secs:.1f} s")
        except NotImplementedError as e:
            what = f"skipped: {_first(e)}"
        except Exception as e:
            what = f"failed: {type(e).__name__}: {_first(e)}"
        done.append((impl.name, what))
    return done


def interpreted() -> bool:
    from kernels.triton_util import INTERPRET
    return INTERPRET


def _first(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m bench.gpucheck.warm",
                      description="compile the suite's Triton kernels ahead (device check)")
    p.add_argument("--shard", default="0/1", help="I/N: this process takes share I of N")
    p.add_argument("--backend", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--suite", default="gpu-check")
    args = p.parse_args(argv)
    try:
        i, n = parse_shard(args.shard)
    except ValueError as e:
        p.error(str(e))
    if args.backend == "cpu":  # before kernels/ is imported: the interpreter, no compiles
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        os.nice(5)  # the pytest processes beside it come first
    except OSError:
        pass
    import torch
    torch.set_num_threads(THREADS)
    try:  # after TRITON_INTERPRET is set: the suites import kernels/
        from ..suites import SUITES
    except Exception:  # a broken import: plan() below says so on its "done" line
        SUITES = None
    if SUITES is not None and args.suite not in SUITES:
        p.error(f"--suite {args.suite!r}: no such suite (suites: {', '.join(SUITES)})")
    from backends import get_backend
    from kernels.triton_util import HAS_TRITON, INTERPRET
    tag = f"warm {i}/{n}"
    t0 = time.perf_counter()
    if not HAS_TRITON:
        print(f"{tag} done: Triton is not installed, nothing to compile", flush=True)
        return 0
    if not INTERPRET:
        compile_only()
    backend = get_backend(args.backend)
    ok, why = backend.available()
    if not ok:
        print(f"{tag} done: backend {args.backend} not available ({why})", flush=True)
        return 0
    try:
        cases = plan(backend, args.suite)
    except Exception as e:
        print(f"{tag} done: planning suite {args.suite}: {type(e).__name__}: {_first(e)}",
              flush=True)
        return 0
    impls = [triton_impls(c, args.backend) for c in cases]
    mine = shares([len(x) for x in impls], n)[i]
    total = sum(len(impls[k]) for k in mine)
    good = 0
    for k in mine:
        for name, what in warm_case(backend, cases[k], impls[k]):
            good += not what.startswith(("skipped:", "failed:"))
            print(f"{tag}: {label(cases[k])} {name}: {what}", flush=True)
    print(f"{tag} done: {good} of {total} pairs, {COMPILED[0]} configs, "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
