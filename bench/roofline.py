"""The roof and the verdict: measured bandwidth/compute roofs and where a case sits under them.

The bandwidth roof is the best of the `copy` (read + write) and `read` probes on a working set of
at least 4x the last-level cache, each probe from the best of its impls on the backend that pass
a check (on the CPU `read` also has a C impl reading four streams per thread, kernels/probes/simd.c:
~15% more than `Tensor.sum` here, where kernels reading several streams at once beat `sum`); the
compute roof is a large matmul per dtype. A case is
compute-bound when its arithmetic intensity is past the ridge (compute roof / bandwidth roof);
otherwise it is at the wall at >= 80% of the measured bandwidth roof, else below it, with the
likely cause named.
"""
from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Sequence, TypeVar

import torch

from backends import Backend
from kernels import OPS, Impl, dtype_name, parse_dtype, rel_err
from kernels.probes.ops import MATVEC_COLS

from .case import make_inputs
from .contention import CONTENTION_KEYS
from .heap import keep_freed_memory, release_freed_memory
from .results import IN_CACHE
from .timing import BUDGETS, Budget, Stats, measure

AT_WALL = 0.80
# Below this median a case under the wall is blamed on launch and call latency rather than on
# the kernel: about what one call costs on each backend. cpu: a Python call into torch or ctypes
# costs tens of microseconds; xla: each call is a host-side dispatch through torchax and JAX
# (tens of microseconds on CPU).
LATENCY_FLOOR_S = {"cuda": 8e-6, "cpu": 50e-6, "xla": 50e-6}
DEFAULT_LATENCY_FLOOR_S = 20e-6  # a backend not listed above


def latency_floor_s(backend: str) -> float:
    return LATENCY_FLOOR_S.get(backend, DEFAULT_LATENCY_FLOOR_S)


@dataclass
class Roof:
    backend: str
    copy_gbps: float
    read_gbps: float
    working_set_bytes: int
    matmul_tflops: dict[str, float] = field(default_factory=dict)
    compute_dtype: dict[str, str] = field(default_factory=dict)  # input dtype -> matmul dtype
    noise: float = 0.0  # relative spread (Stats.rel_iqr) of the probe that set the roof
    copy_impl: str = "torch_copy"  # the probe impls that gave copy_gbps / read_gbps
    read_impl: str = "torch_sum"
    contention_pct: float | None = None  # the most any probe or matmul shared the CPU (_watched)

    @property
    def gbps(self) -> float:
        return max(self.copy_gbps, self.read_gbps)

    def tflops(self, dtype: torch.dtype) -> float | None:
        name = dtype_name(dtype)
        return self.matmul_tflops.get(self.compute_dtype.get(name, name))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["roof_gbps"] = self.gbps
        return d


def probe_elems(backend: Backend, dtype: torch.dtype = torch.float32) -> int:
    """Probe size: past what the rotation must pass (rotate_bytes: 4x the caches on a CPU; where
    the cache is flushed instead, 4x the LLC), and at least 256 MiB (1 GiB on GPUs) for a stable
    figure. On a host, at most an eighth of its memory: the copy probe holds two, a quarter, as
    a case's rotated copies may take. That cap binds only where sysfs reports a last-level cache
    out of proportion to the memory (a small VM on a server with a GiB of L3): the probe is then
    partly cached and reads high, which judges the cases more harshly, not less."""
    accel = backend.name == "cuda" or backend.kind_of_device in ("gpu", "tpu")
    floor = 1024**3 if accel else 256 * 1024**2
    nbytes = max(4 * backend.cache_bytes(), backend.rotate_bytes(), floor)
    if not accel:  # host memory, as the runner reads it to cap a case's rotated sets
        mem = backend.device_info().get("memory_bytes")
        if mem:
            nbytes = min(nbytes, mem // 8)
    return nbytes // torch.empty((), dtype=dtype).element_size()


T = TypeVar("T")

# The sampler figures of each timing of the roof reading being taken (_watched), else None
_TIMINGS: ContextVar[list[dict[str, Any]] | None] = ContextVar("roof_timings", default=None)


def _measure(backend: Backend, call: Callable[[int], Any], n_sets: int, budget: Budget) -> Stats:
    """measure(), its sampler's figures kept for the roof reading being taken."""
    st = measure(backend, call, n_sets, budget)
    seen = _TIMINGS.get()
    if seen is not None:
        seen.append(st.sampled)
    return st


def _watched(take: Callable[[], T]) -> tuple[T, float | None]:
    """take()'s result, and the largest share of any of its timing windows during which other
    tasks waited for the CPU or the hypervisor took it (the records' CONTENTION_KEYS; None
    where no timing says): a probe timed beside another busy process reads low, and every
    case's % of roof then reads high, however tight the probe's spread."""
    seen: list[dict[str, Any]] = []
    token = _TIMINGS.set(seen)
    try:
        out = take()
    finally:
        _TIMINGS.reset(token)
    figures = [s[k] for s in seen for k in CONTENTION_KEYS
               if isinstance(s.get(k), (int, float)) and not isinstance(s.get(k), bool)]
    return out, max(figures, default=None)


def _probe_out(backend: Backend, op_name: str, impl: Impl) -> bool:
    """Whether the probe calls `impl` with an out= buffer (a copy into a preallocated output)."""
    return op_name == "copy" and backend.out_buffers and impl.out_arg


def probe_impls(backend: Backend, op_name: str) -> list[Impl]:
    """The builtin impls of a probe op that run fp32 on this backend and agree with the reference
    on a small input, called as they are timed (an impl that moves the bytes wrongly must not set
    the roof). A plugin's impls never do: they run in the parent, unisolated, where a crash or a
    hang would end the run, and the roof is the harness's instrument, not a case."""
    op, good = OPS[op_name], []
    shape = op.smoke[0][0]
    (src,) = make_inputs(backend, op, shape, torch.float32, 1)
    ref = op.reference(backend.to_host(src))
    for impl in op.impls.values():
        if not impl.builtin or backend.name not in impl.backends \
                or torch.float32 not in impl.dtypes:
            continue
        try:
            if _probe_out(backend, op_name, impl):  # poisoned: an unwritten element shows
                out = torch.full_like(src, float("nan"))
                backend.wrap(impl.fn)(src, out=out)
            else:
                out = backend.wrap(impl.fn)(src)
            backend.synchronize()
        except Exception:  # skipped here (NotImplementedError): not a probe
            continue
        if rel_err(backend.to_host(out), ref) <= op.tol(torch.float32):
            good.append(impl)
    return good


def _probe(backend: Backend, op_name: str, n: int, budget: Budget) -> tuple[float, float, str]:
    """(GB/s, relative noise, impl) of the fastest good impl of probe `op_name` on n fp32 elements."""
    op = OPS[op_name]
    # the working set split into k rotated sets (1 on cpu/cuda); copy writes what it reads
    k = backend.probe_sets(n * 4, writes=op_name == "copy")
    # whole rows of MATVEC_COLS (the matvec probe reads its set as such a matrix); the rounding
    # leaves out less than 16 KiB a set
    shape = op.shape(N=n // k // MATVEC_COLS * MATVEC_COLS or n // k)
    (src,) = make_inputs(backend, op, shape, torch.float32, 0)
    srcs = [src] + [backend.clone(src) for _ in range(k - 1)]
    impls = probe_impls(backend, op_name)
    outs = [torch.empty_like(s) for s in srcs] \
        if any(_probe_out(backend, op_name, i) for i in impls) else None
    best = (0.0, 0.0, "")
    for impl in impls:
        fn = backend.wrap(impl.fn)
        call = (lambda i: fn(srcs[i], out=outs[i])) if _probe_out(backend, op_name, impl) \
            else (lambda i: fn(srcs[i]))
        try:
            st = _measure(backend, call, k, budget)
        except NotImplementedError:  # cannot take this size (it passed at the check's): not a probe
            continue
        gbps = op.bytes_moved(shape, torch.float32) / st.median / 1e9
        if gbps > best[0]:
            best = (gbps, st.rel_iqr, impl.name)
    if not best[2]:
        raise RuntimeError(f"no {op_name} probe impl runs on the {backend.name} backend")
    return best


def matmul_tflops(backend: Backend, dtype: torch.dtype, budget: Budget) -> float:
    n = 8192 if backend.name == "cuda" or backend.kind_of_device in ("gpu", "tpu") else 1024
    dev = backend.device()
    with backend.session():
        a = torch.randn(n, n, device=dev).to(dtype)
        b = torch.randn(n, n, device=dev).to(dtype)
    if backend.out_buffers:
        c = torch.empty(n, n, device=dev, dtype=dtype)
        st = _measure(backend, lambda i: torch.matmul(a, b, out=c), 1, budget)
    else:
        mm = backend.wrap(torch.matmul)
        st = _measure(backend, lambda i: mm(a, b), 1, budget)
    return 2 * n**3 / st.median / 1e12


def measure_roof(backend: Backend, dtypes: list[torch.dtype] | None = None,
                 budget: Budget | None = None) -> Roof:
    budget = budget or BUDGETS["normal"]
    roof, busy = _watched(lambda: remeasure_bandwidth(backend, Roof(backend.name, 0.0, 0.0, 0),
                                                      budget))
    roof = replace(roof, contention_pct=busy)
    for dt in dtypes or [torch.float32]:
        add_matmul(roof, backend, dt, budget)  # each measure released, as the probes are
    return roof


DRIFT = 0.15  # relative change of the bandwidth roof over a run worth telling the user about


ROOF_REFRESH_S = 60.0  # during a run, the bandwidth roof is re-measured when older than this


def measure_bandwidth(backend: Backend, budget: Budget | None = None) -> float:
    """The bandwidth roof alone (no matmul): re-measured at the end of a run to catch drift."""
    return remeasure_bandwidth(backend, Roof(backend.name, 0.0, 0.0, 0), budget).gbps


def remeasure_bandwidth(backend: Backend, roof: Roof, budget: Budget | None = None) -> Roof:
    """`roof` with its copy and read probes measured (again: the matmul rates are kept)."""
    n = probe_elems(backend)
    budget = budget or BUDGETS["normal"]
    # freed memory kept, as the case workers keep it: an output allocated each call (XLA's copy)
    # reuses the last one's, where fresh pages would time the kernel zeroing them
    keep_freed_memory()
    c, r = _probe(backend, "copy", n, budget), _probe(backend, "read", n, budget)
    backend.release()  # between cases: the next worker gets the memory the probes held
    release_freed_memory()
    # the above-roof margin is the spread of the probe that set the roof: a noisy copy beside a
    # quiet read (the CPU's roof) would widen the tolerance around a roof measured cleanly
    best = c if round(c[0], 2) >= round(r[0], 2) else r
    return replace(roof, copy_gbps=round(c[0], 2), read_gbps=round(r[0], 2), working_set_bytes=n * 4,
                   noise=best[1], copy_impl=c[2], read_impl=r[2])


class RoofTracker:
    """The bandwidth roof through a run. A shared machine's bandwidth drifts by tens of percent
    within minutes (this project's 2-core dev box: 22-31 GB/s in one quarter hour), so a run longer
    than `every_s` re-measures it between cases (never inside a timing) and each case is judged
    against the latest reading, which its record keeps as `roof_gbps`. every_s=None: never (the
    quick budget, whose probes are too rough to compare)."""

    def __init__(self, backend: Backend, roof: Roof, budget: Budget,
                 every_s: float | None = ROOF_REFRESH_S, clock: Callable[[], float] = time.monotonic):
        self.backend, self.roof, self.budget = backend, roof, budget
        self.every_s, self.clock = every_s, clock
        self.readings = [roof.gbps]
        self._at = clock()

    def due(self) -> bool:
        return self.every_s is not None and self.clock() - self._at >= self.every_s

    def saw(self, rec: dict) -> None:
        """A cold case timed above its reading says the reading is low (the machine's bandwidth
        rose since it was taken), and one above the matmul rate that the rate was: the next case
        gets fresh ones, whatever the readings' age. The case itself keeps the readings it was
        judged against (its roof_gbps, ridge)."""
        pct = rec.get("pct_roof")
        if rec.get("status") == "ok" and rec.get("cold") is True and (
                isinstance(pct, (int, float)) and pct > 100 or rec.get("verdict") == ABOVE_COMPUTE):
            self._at = float("-inf")

    def current(self) -> Roof:
        """The roof to judge the next case against, re-measured first when due: the bandwidth
        and the matmul rates measured so far (a rate read while the machine was busy would
        otherwise stand for the whole run and call memory-bound cases compute-bound)."""
        if self.due():
            roof, busy = _watched(self._remeasured)
            self.roof = replace(roof, contention_pct=busy)
            self.readings.append(self.roof.gbps)
            self._at = self.clock()
        return self.roof

    def _remeasured(self) -> Roof:
        roof = remeasure_bandwidth(self.backend, self.roof, self.budget)
        rates = {name: round(matmul_tflops(self.backend, parse_dtype(name), self.budget), 3)
                 for name in roof.matmul_tflops}
        if rates:
            self.backend.release()  # the matmul's operands, as after the first reading
        return replace(roof, matmul_tflops=rates, compute_dtype=dict(roof.compute_dtype))


def drift_note(start_gbps: float, end_gbps: float, mid: Sequence[float] = ()) -> str | None:
    """A warning when the roof moved by more than DRIFT from its first reading during a run: on a
    shared or busy machine % of roof is then only as good as the reading it was taken against.
    mid: the readings taken between cases (RoofTracker), each case judged against the latest."""
    vals = [*mid, end_gbps]
    if start_gbps <= 0 or max(abs(v / start_gbps - 1) for v in vals) <= DRIFT:
        return None
    if not mid:
        return (f"the bandwidth roof moved from {start_gbps:.1f} to {end_gbps:.1f} GB/s during this "
                f"run (a busy or shared machine?): % of roof uses the first figure; compare impls "
                f"within a case, or rerun")
    lo, hi = min(start_gbps, *vals), max(start_gbps, *vals)
    return (f"the bandwidth roof ranged {lo:.1f}-{hi:.1f} GB/s during this run ({len(mid) + 2} "
            f"readings; a busy or shared machine?): each case's % of roof is against the reading "
            f"before it (its roof_gbps); compare impls within a case, or rerun")


# x86 flags of instructions that multiply a 16-bit dtype natively, which oneDNN uses for torch's
# CPU matmul (2-core Zen 5 guest with avx512_bf16: bf16 262 GFLOP/s, fp32 71, fp16 1)
NATIVE_16BIT = {torch.bfloat16: ("avx512_bf16", "amx_bf16"),
                torch.float16: ("avx512_fp16", "amx_fp16")}


def compute_dtype(backend: Backend, dtype: torch.dtype) -> torch.dtype:
    """The dtype whose matmul rate is the compute roof for `dtype` inputs on this backend.

    On CPUs a good kernel computes 16-bit inputs in fp32 unless the CPU multiplies that dtype
    natively (NATIVE_16BIT): without such instructions torch's own 16-bit matmul runs ~50x slower
    than fp32 (a weakness of that kernel, not the chip's roof), and fp32's rate bounds any 16-bit
    math; with them, the 16-bit matmul outruns fp32 and is the roof. XLA on a CPU: fp32.
    """
    if not dtype.is_floating_point:
        return torch.float32
    if backend.name == "cpu":
        from backends.cpu import cpu_flags
        flags = cpu_flags()
        return dtype if any(f in flags for f in NATIVE_16BIT.get(dtype, ())) else torch.float32
    if backend.kind_of_device == "cpu":
        return torch.float32
    return dtype


def add_matmul(roof: Roof, backend: Backend, dtype: torch.dtype, budget: Budget) -> None:
    """Measure the compute roof for `dtype` once per run; a rate timed on a busy CPU raises
    the roof's contention_pct, as its probes' do."""
    cdt = compute_dtype(backend, dtype)
    if dtype_name(cdt) not in roof.matmul_tflops:
        rate, busy = _watched(lambda: matmul_tflops(backend, cdt, budget))
        roof.matmul_tflops[dtype_name(cdt)] = round(rate, 3)
        roof.contention_pct = max((p for p in (roof.contention_pct, busy) if p is not None),
                                  default=None)
        backend.release()  # the operands (3 x 8192^2 on a GPU), out of the timed cases' way
    roof.compute_dtype[dtype_name(dtype)] = dtype_name(cdt)


@dataclass
class Verdict:
    verdict: str
    arithmetic_intensity: float | None
    ridge: float | None
    pct_roof: float | None
    pct_compute: float | None


COMPUTE_BELOW = "compute-bound: below the compute roof"
ABOVE_ROOF_MAX = 0.25  # past 125% of the measured roof a case is suspect however noisy the probes
# A shared machine's bandwidth can rise past the reading a case is judged by (the run re-measures
# it after such a case but under the quick budget): a low reading is named beside the harness's
# own faults
ABOVE_ROOF = ("above the roof: harness suspect (cache not defeated, missing sync, or the roof read "
              "low)")
# Past the measured matmul rate by this much a case's FLOP rate is suspect: no GEMV outruns the
# matmul on the chip it shares, so the rate was read low (a busy machine as it was probed) or a
# sync is missing. The matmul probe's spread is not kept, so the margin is the widest one.
ABOVE_COMPUTE_MARGIN = ABOVE_ROOF_MAX
ABOVE_COMPUTE = ("above the compute roof: harness suspect (the matmul rate read low, or a missing "
                 "sync)")


def judge(bytes_: int, flops: int, median_s: float, roof: Roof, dtype: torch.dtype,
          latency_floor_s: float, in_cache: bool = False) -> Verdict:
    """Roofline verdict for one timed case. in_cache: a warm case whose working set the cache can
    hold (the size sweep): its % of roof is shown but judges nothing, above 100% included."""
    gbps = bytes_ / median_s / 1e9
    ai = flops / bytes_ if bytes_ else None
    tf = roof.tflops(dtype)
    ridge = (tf * 1e12) / (roof.gbps * 1e9) if tf else None
    pct_roof = 100 * gbps / roof.gbps if roof.gbps else None
    pct_compute = 100 * flops / median_s / 1e12 / tf if tf and flops else None
    # The roof probe's spread widens the margin on a noisy machine, up to ABOVE_ROOF_MAX: a noisy
    # reading (a quick budget's spread can pass 100%) must not let 4x the roof read as a wall.
    noise = min(ABOVE_ROOF_MAX, max(0.05, 3 * roof.noise))
    if in_cache:
        v = IN_CACHE
    elif pct_roof is not None and pct_roof > 100 * (1 + noise):
        v = ABOVE_ROOF
    elif pct_compute is not None and pct_compute > 100 * (1 + ABOVE_COMPUTE_MARGIN) and (
            roof.backend == "cpu" or
            roof.compute_dtype.get(dtype_name(dtype), dtype_name(dtype)) == dtype_name(dtype)):
        # the dtype's own rate, or on the CPU fp32's where the CPU has no native 16-bit products
        # (compute_dtype), bounds any kernel; not XLA's fp32 stand-in for a 16-bit dtype
        v = ABOVE_COMPUTE
    elif ai is not None and ridge is not None and ai >= ridge:
        # the compute roof is the one that applies; at a few % of it the kernel is what binds
        v = "compute-bound" if pct_compute is not None and pct_compute >= 100 * AT_WALL \
            else COMPUTE_BELOW
    elif pct_roof is not None and pct_roof >= 100 * AT_WALL:
        v = "at the wall"
    elif median_s < latency_floor_s:
        v = "below the wall: launch/latency bound"
    else:
        v = "below the wall: kernel"
    return Verdict(v, ai, ridge, pct_roof, pct_compute)
