"""Adaptive sampling: warm up by time, then sample until the median is known or a cap is hit.

Stopping follows nvbench's "stdrel" idea: stop once the samples' relative standard deviation is
at most `target_rel` (0.5%). A noisy CPU rarely gets there, so we also stop once the median itself
is pinned down to `target_rel` (its standard error), or at the sample/time cap. Every result says
which rule stopped it, how many samples it took and how spread they were. Where the backend has a
sampler of device counters (NVML on CUDA), it runs over the sampling phase, warm-up excluded,
and (but under `quick`) the sampling goes on, at most to the time cap, until that window is long
enough for the counters to describe it: NVML's utilization is an average over its own sample
period. Its stop then reads `nvml_window`.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from backends import Backend


@dataclass(frozen=True)
class Budget:
    warmup_s: float = 0.1
    min_samples: int = 10
    max_samples: int = 2000
    min_time_s: float = 0.2
    max_time_s: float = 2.0
    target_rel: float = 0.005
    batch: int = 10  # samples per timing batch (one device sync per batch on CUDA)
    # sample on, past the rules, until the sampler's window can describe the timing (NVML's
    # utilization); quick leaves it off, since that would stretch every window to its cap
    util_window: bool = True


BUDGETS = {
    "quick": Budget(warmup_s=0.02, min_samples=10, max_samples=200, min_time_s=0.02, max_time_s=0.3,
                    util_window=False),
    "normal": Budget(),
    "thorough": Budget(warmup_s=0.5, min_samples=30, max_samples=10000, min_time_s=1.0,
                       max_time_s=10.0),
}


@dataclass
class Stats:
    median: float
    p25: float
    p75: float
    min: float
    max: float
    mean: float
    rel_std: float
    n: int
    stop: str
    # What the backend's sampler measured over the sampling window (record keys; {} where none)
    sampled: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def rel_iqr(self) -> float:
        """(p75 - p25) / median: the spread, robust to the odd stalled sample (a VM's steal, a GC
        pause) that can blow rel_std up to several times the median."""
        return (self.p75 - self.p25) / self.median if self.median > 0 else 0.0


def summarize(samples: list[float], stop: str) -> Stats:
    a = np.asarray(samples, dtype=np.float64)
    mean = float(a.mean())
    return Stats(
        median=float(np.median(a)), p25=float(np.percentile(a, 25)),
        p75=float(np.percentile(a, 75)), min=float(a.min()), max=float(a.max()), mean=mean,
        rel_std=float(a.std(ddof=1) / mean) if len(a) > 1 and mean > 0 else 0.0,
        n=len(a), stop=stop)


def stop_rule(samples: list[float], elapsed: float, b: Budget) -> str | None:
    n = len(samples)
    if n >= b.max_samples:
        return "max_samples"
    if elapsed >= b.max_time_s:
        return "max_time"
    if n < b.min_samples or elapsed < b.min_time_s:
        return None
    a = np.asarray(samples)
    mean = a.mean()
    rel_std = a.std(ddof=1) / mean if mean > 0 else 0.0
    if rel_std <= b.target_rel:
        return "stdrel"
    # standard error of the median ~ 1.2533 sigma / sqrt(n)
    if 1.2533 * rel_std / math.sqrt(n) <= b.target_rel:
        return "median_precise"
    return None


def measure(backend: Backend, call: Callable[[int], Any], n_sets: int, budget: Budget,
            warm: bool = False, on_sampling: Callable[[], None] | None = None) -> Stats:
    """Time `call(i)` (i = input set, rotated round-robin) on `backend` under `budget`.

    warm: no cache flush between calls (the size sweep's cache side); the caller passes one set.
    on_sampling: called as the warm-up ends and the samples begin."""
    nxt = 0

    def idxs(k: int) -> list[int]:
        nonlocal nxt
        out = [(nxt + j) % n_sets for j in range(k)]
        nxt = (nxt + k) % n_sets
        return out

    # Warm-up by time: compiles, autotunes, faults pages in, raises clocks. At least one full
    # rotation, so no set (its output buffer included) is first touched inside the samples.
    t0 = time.perf_counter()
    flush = not warm
    backend.time_calls(call, idxs(n_sets), flush)
    while time.perf_counter() - t0 < budget.warmup_s:
        backend.time_calls(call, idxs(budget.batch), flush)

    samples: list[float] = []
    if on_sampling is not None:
        on_sampling()
    sampler = backend.sampler()
    want = 0.0  # the window the sampler needs: sampling goes on to it, past a rule's stop
    if sampler is not None:
        sampler.start()
        if budget.util_window:
            want = sampler.min_window_s(budget.max_time_s)
    try:
        t0 = time.perf_counter()
        held = False  # a rule was met while the window was still too short
        while True:
            samples.extend(backend.time_calls(call, idxs(budget.batch), flush))
            elapsed = time.perf_counter() - t0
            stop = stop_rule(samples, elapsed, budget)
            if stop and stop != "max_time" and elapsed < want:
                held = True
                continue
            if stop:
                stop = "nvml_window" if held and stop != "max_time" else stop
                break
    finally:  # the sampler's thread ends whether the timing ended or raised
        sampled = sampler.stop(len(samples), sum(samples)) if sampler is not None else {}
    st = summarize(samples, stop)
    st.sampled = sampled
    return st
