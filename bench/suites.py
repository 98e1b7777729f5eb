"""Named suites: lists of cases (op, shape, dtype), sized for the backend they run on.

A suite is a function of a `SuiteContext` (backend name, device memory, cache size) returning
cases, registered with `@suite(name, doc)`. Ops know their own tiny shapes (`Op.smoke`), so the
smoke suite covers every registered op without listing them here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from kernels import OPS


@dataclass(frozen=True)
class Case:
    op: str
    shape: Any
    dtype: torch.dtype
    impls: tuple[str, ...] | None = None  # None: every impl that supports backend and dtype
    group: str = ""  # free label for reports, e.g. "llama-3-8b qkv" or "precision"


@dataclass(frozen=True)
class SuiteContext:
    backend: str
    memory_bytes: int | None = None  # device memory (host RAM on CPU)
    cache_bytes: int | None = None   # last-level cache
    extra: dict = field(default_factory=dict)

    def fits(self, nbytes: int, fraction: float = 0.4) -> bool:
        """Whether a working set of nbytes (plus copies and outputs) fits comfortably."""
        return self.memory_bytes is None or nbytes <= fraction * self.memory_bytes


SuiteFn = Callable[[SuiteContext], list[Case]]
SUITES: dict[str, tuple[SuiteFn, str]] = {}


def suite(name: str, doc: str) -> Callable[[SuiteFn], SuiteFn]:
    def deco(fn: SuiteFn) -> SuiteFn:
        if name in SUITES:
            raise ValueError(f"suite {name!r} is registered twice")
        SUITES[name] = (fn, doc)
        return fn
    return deco


def cases_for(name: str, ctx: SuiteContext) -> list[Case]:
    if name not in SUITES:
        raise KeyError(name)
    return SUITES[name][0](ctx)


def _dtype_for(ctx: SuiteContext) -> torch.dtype:
    return torch.bfloat16


# --- suites -----------------------------------------------------------------------------------

@suite("smoke", "tiny shapes of every op and every impl the backend has (CI; under a minute on CPU)")
def smoke(ctx: SuiteContext) -> list[Case]:
    return [Case(name, shape, dtype, group="smoke")
            for name, op in OPS.items() for shape, dtype in op.smoke]


LLAMA3_8B_GEMV = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096),
                  "down": (4096, 14336)}
LLAMA3_70B_GEMV = {"qkv": (10240, 8192), "o": (8192, 8192), "gate_up": (57344, 8192),
                   "down": (8192, 28672)}


@suite("decode", "Llama-3-8B decode-layer GEMVs at batch 1 (bf16): the default suite")
def decode(ctx: SuiteContext) -> list[Case]:
    from kernels.gemv_bf16 import GemvShape
    return [Case("gemv_bf16", GemvShape(M=1, N=n, K=k), torch.bfloat16, group=f"llama-3-8b {p}")
            for p, (n, k) in LLAMA3_8B_GEMV.items()]


@suite("gpu-check", "the one-call device check's cases (bench/device_check.sh): GEMV at 8B/70B "
       "shapes, M=1/16; attention 64x4096, 1x32768; precision; most important first")
def gpu_check(ctx: SuiteContext) -> list[Case]:
    from .device_check import gpu_check_cases
    return gpu_check_cases(ctx)
