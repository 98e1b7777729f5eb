"""The numbers a runner record holds, on the CPU backend with a scripted timer: the gate's
per-dtype tolerance, and every derived figure (GB/s, % of roof, % of datasheet, verdict) taken
from the median time and the op's exact byte count, against the right roof and datasheet."""
import pytest
import torch

import backends.cpu as cpu_backend
from backends import lookup_chip
from backends.cpu import CPUBackend
from bench.case import Case
from bench.results import ResultWriter
from bench.roofline import Roof, judge, latency_floor_s
from bench.runner import RunContext, Runner
from bench.timing import Budget
from kernels import OPS, register_impl
from kernels.gemv import GemvShape

# Skewed so that min, p25, median and mean all differ: a figure taken from the wrong one shows.
DURATIONS = [1e-3, 1.5e-3, 2e-3, 3e-3, 9e-3]


class ScriptedCPU(CPUBackend):
    """The CPU backend with a scripted timer: the calls run, their durations cycle DURATIONS."""

    def __init__(self):
        self.k = 0

    def time_calls(self, call, idxs, flush=True):
        out = []
        for i in idxs:
            call(i)
            out.append(DURATIONS[self.k % len(DURATIONS)])
            self.k += 1
        return out


BUDGET = Budget(warmup_s=0.0, min_samples=5, max_samples=5, min_time_s=0.0, max_time_s=10.0,
                batch=5)


def runner(tmp_path, impls, chip=None, roof=None, backend=None):
    b = backend or ScriptedCPU()
    roof = roof or Roof("cpu", 20.0, 25.0, 1 << 28, matmul_tflops={"float32": 0.1})
    ctx = RunContext(backend=b, roof=roof, chip=chip, device_info=b.device_info(), budget=BUDGET,
                     seed=0, run_id="numbers", command="pytest", git_commit=None, versions={},
                     impl_filter=tuple(impls))
    return Runner(ctx, ResultWriter(tmp_path, "numbers"))


@pytest.fixture
def fixed_llc(monkeypatch):
    monkeypatch.setattr(cpu_backend, "read_caches", lambda: {"L3": 1 << 20})


@pytest.fixture
def slightly_off():
    """Impls off by 0.05% (fine for bf16's 1e-2, not for fp32's 1e-4) and a right one."""
    @register_impl("gemv_bf16", "t_off", backends=["cpu"])
    def off(x, w):
        return (x @ w.T) * 1.0005

    @register_impl("gemv_bf16", "t_right", backends=["cpu"], dtypes=["float32"])
    def right(x, w, out=None):
        return torch.matmul(x, w.T, out=out)

    @register_impl("gemv_bf16", "t_own_out", backends=["cpu"], dtypes=["float32"])
    def own_out(x, w, out=None):
        return x @ w.T  # right values in a fresh tensor; the buffer it was given stays unwritten
    yield
    for n in ("t_off", "t_right", "t_own_out"):
        OPS["gemv_bf16"].impls.pop(n, None)


def test_the_gate_holds_each_dtype_to_its_own_tolerance(tmp_path, slightly_off, fixed_llc):
    """A 0.05% error fails float32 (tolerance 1e-4) and passes bfloat16 (1e-2): the check reads
    the case's dtype and holds it to its own tolerance, not the loosest one or a multiple."""
    r = runner(tmp_path, ["t_off"])
    shape = GemvShape(2, 64, 128)
    (f32,) = r.run_case(Case("gemv_bf16", shape, torch.float32))
    (bf16,) = r.run_case(Case("gemv_bf16", shape, torch.bfloat16))
    r.writer.close()
    assert f32["tolerance"] == OPS["gemv_bf16"].tol(torch.float32) == 1e-4
    assert f32["status"] == "failed-check" and f32["correct"] is False
    assert f32["rel_err"] == pytest.approx(5e-4, rel=0.05) and f32["time_s"] is None
    assert bf16["tolerance"] == 1e-2
    assert bf16["rel_err"] < 1e-2 and bf16["correct"] is True and bf16["status"] == "ok"


def test_the_gate_checks_the_out_buffer_it_passed_not_what_comes_back(tmp_path, slightly_off,
                                                                        fixed_llc):
    """An impl that takes out= but allocates its own result would be timed with an allocation
    and leave the preallocated output unwritten: the poisoned buffer is what is checked."""
    r = runner(tmp_path, ["t_own_out"])
    (rec,) = r.run_case(Case("gemv_bf16", GemvShape(2, 64, 128), torch.float32))
    r.writer.close()
    assert rec["status"] == "failed-check" and rec["time_s"] is None
    assert "NaN" in rec["error"]


def test_every_figure_comes_from_the_median_and_the_exact_bytes(tmp_path, slightly_off,
                                                                  fixed_llc):
    """GB/s is bytes_moved / median; % of roof, the verdict and % of datasheet follow from that
    same GB/s, against the measured roof and the chip's memory bandwidth (not its links)."""
    chip = lookup_chip("h100-sxm")
    r = runner(tmp_path, ["t_right"], chip=chip)
    shape = GemvShape(2, 64, 128)
    (rec,) = r.run_case(Case("gemv_bf16", shape, torch.float32))
    r.writer.close()
    assert rec["status"] == "ok", rec["error"]
    ts = rec["time_s"]
    assert ts["n"] == 5 and ts["median"] == 2e-3 and ts["min"] == 1e-3
    assert ts["p25"] == 1.5e-3 and ts["p75"] == 3e-3
    nbytes = OPS["gemv_bf16"].bytes_moved(shape, torch.float32)
    assert rec["bytes"] == nbytes
    gbps = nbytes / 2e-3 / 1e9
    assert rec["achieved_gbps"] == pytest.approx(gbps, rel=1e-12)
    assert rec["roof_gbps"] == 25.0
    assert rec["pct_roof"] == pytest.approx(100 * gbps / 25.0, rel=1e-12)
    assert rec["datasheet_gbps"] == chip.mem_bw_gbps
    assert rec["pct_datasheet"] == pytest.approx(100 * gbps / chip.mem_bw_gbps, rel=1e-12)
    assert rec["cold"]  # rotated past 4x the 1 MiB LLC: judged against the DRAM roof
    assert rec["arithmetic_intensity"] == pytest.approx(rec["flops"] / nbytes, rel=1e-12)
    assert rec["achieved_tflops"] == pytest.approx(rec["flops"] / 2e-3 / 1e12, rel=1e-12)
    assert rec["pct_compute"] == pytest.approx(100 * rec["achieved_tflops"] / 0.1, rel=1e-12)
    v = judge(nbytes, rec["flops"], 2e-3, r.ctx.roof, torch.float32, latency_floor_s("cpu"))
    assert rec["verdict"] == v.verdict and rec["ridge"] == v.ridge


def test_rotated_copies_take_at_most_a_quarter_of_the_devices_memory(tmp_path, slightly_off,
                                                                       fixed_llc):
    """Rotation past 4x the caches would want many sets; on a device whose memory is small, the
    copies stop at a quarter of it."""
    b = ScriptedCPU()
    info = b.device_info()
    r = runner(tmp_path, ["t_right"], backend=b)
    (free,) = r.run_case(Case("gemv_bf16", GemvShape(1, 64, 256), torch.float32))
    per_set = free["set_bytes"]
    assert free["n_sets"] > 4
    r.ctx.device_info = dict(info, memory_bytes=4 * 3 * per_set)  # room for 3 sets
    (capped,) = r.run_case(Case("gemv_bf16", GemvShape(1, 64, 256), torch.float32))
    r.writer.close()
    assert capped["status"] == "ok" and capped["n_sets"] == 3


def test_gbps_counts_the_bytes_a_call_must_move_not_the_set_it_holds(tmp_path, fixed_llc):
    """A paged KV pool is allocated whole and read in part: GB/s divides the op's byte count
    (the blocks the sequences use) by the median, never the bytes the input set holds."""
    from kernels.attention.ops import PagedAttentionShape
    r = runner(tmp_path, ["gather_sdpa"])
    shape = PagedAttentionShape(B=1, Hq=4, Hkv=1, D=64, context=512, ragged=0, pool=32)
    (rec,) = r.run_case(Case("paged_attention", shape, torch.float32))
    r.writer.close()
    assert rec["status"] == "ok", rec["error"]
    nbytes = OPS["paged_attention"].bytes_moved(shape, torch.float32)
    assert rec["bytes"] == nbytes and rec["set_bytes"] > 4 * nbytes
    assert rec["achieved_gbps"] == pytest.approx(nbytes / 2e-3 / 1e9, rel=1e-12)
    assert rec["pct_roof"] == pytest.approx(100 * rec["achieved_gbps"] / 25.0, rel=1e-12)


def test_a_rotation_exactly_as_large_as_its_target_gets_one_set_more(tmp_path, slightly_off):
    """Input sets that add up to exactly the bytes the rotation must pass leave the last one's
    lines in cache for the first: one set more takes it past, so the case is judged cold (a
    power-of-two shape meets this edge)."""
    shape = GemvShape(2, 64, 128)
    nbytes = OPS["gemv_bf16"].bytes_moved(shape, torch.float32)
    b = ScriptedCPU()
    b.rotate_bytes = lambda: 4 * nbytes  # the GEMV's sets touch exactly its bytes
    r = runner(tmp_path, ["t_right"], backend=b)
    (rec,) = r.run_case(Case("gemv_bf16", shape, torch.float32))
    r.writer.close()
    assert rec["status"] == "ok", rec["error"]
    assert rec["n_sets"] == 5 and rec["cold"] is True


@pytest.fixture
def pointer_impls():
    """Impls that log the storage of every argument they are called with: one plain, one
    whose untimed prepare repacks the weights into a new tensor (as the INT4 packers do)."""
    seen: dict[str, list[tuple[int, ...]]] = {"t_ptrs": [], "t_ptrs_prep": []}

    def log(name, *args):
        seen[name].append(tuple(a.untyped_storage().data_ptr() for a in args))

    @register_impl("gemv_bf16", "t_ptrs", backends=["cpu"], dtypes=["float32"])
    def plain(x, w, out=None):
        log("t_ptrs", x, w, out)
        return torch.matmul(x, w.T, out=out)

    @register_impl("gemv_bf16", "t_ptrs_prep", backends=["cpu"], dtypes=["float32"],
                   prepare=lambda x, w: (x, w.t().contiguous()))
    def packed(x, wt, out=None):
        log("t_ptrs_prep", x, wt, out)
        return torch.matmul(x, wt, out=out)
    yield seen
    for n in seen:
        OPS["gemv_bf16"].impls.pop(n, None)


@pytest.mark.parametrize("impl", ["t_ptrs", "t_ptrs_prep"])
def test_each_rotated_set_is_its_own_memory_prepared_and_written(tmp_path, fixed_llc,
                                                                 pointer_impls, impl):
    """Rotation defeats the cache only if every set is a separate copy: its inputs, what its
    prepare made of them, and its output buffer. n_sets views of one set would be timed from
    the cache at n_sets x the bandwidth."""
    r = runner(tmp_path, [impl])
    (rec,) = r.run_case(Case("gemv_bf16", GemvShape(1, 64, 256), torch.float32))
    r.writer.close()
    assert rec["status"] == "ok", rec["error"]
    n = rec["n_sets"]
    assert n > 4
    timed = pointer_impls[impl][1:]  # the check's call comes first
    for pos in range(3):  # x, the (prepared) weights, out
        assert len({ptrs[pos] for ptrs in timed}) == n, pos


def test_a_set_exactly_the_rotation_target_is_rotated_with_a_second(tmp_path, slightly_off):
    """One set of exactly the bytes the rotation must pass leaves its own lines cached for its
    next call: a second set takes it past, so it is judged against the DRAM roof."""
    shape = GemvShape(2, 64, 128)
    nbytes = OPS["gemv_bf16"].bytes_moved(shape, torch.float32)
    b = ScriptedCPU()
    b.rotate_bytes = lambda: nbytes
    r = runner(tmp_path, ["t_right"], backend=b)
    (rec,) = r.run_case(Case("gemv_bf16", shape, torch.float32))
    r.writer.close()
    assert rec["status"] == "ok", rec["error"]
    assert rec["n_sets"] == 2 and rec["cold"] is True


def test_a_warm_set_of_exactly_the_warm_cache_bound_is_in_cache(tmp_path, slightly_off,
                                                                monkeypatch):
    """A warm set up to and including WARM_CACHE_FACTOR x the LLC may be cached: timed, not
    judged against the DRAM roof."""
    from bench.roofline import IN_CACHE
    from bench.runner import WARM_CACHE_FACTOR
    shape = GemvShape(2, 64, 128)
    nbytes = OPS["gemv_bf16"].bytes_moved(shape, torch.float32)
    assert nbytes % WARM_CACHE_FACTOR == 0
    monkeypatch.setattr(cpu_backend, "read_caches", lambda: {"L3": nbytes // WARM_CACHE_FACTOR})
    r = runner(tmp_path, ["t_right"])
    (rec,) = r.run_case(Case("gemv_bf16", shape, torch.float32, warm=True))
    r.writer.close()
    assert rec["status"] == "ok", rec["error"]
    assert rec["verdict"] == IN_CACHE and rec["cold"] is False


def test_a_warm_case_is_timed_without_a_flush_and_a_cold_one_with(tmp_path, slightly_off,
                                                                  fixed_llc):
    """The size sweep's warm side times its one set as the last call left the cache; a cold
    case asks the backend to flush before every call (CUDA's L2 flush)."""
    class Logged(ScriptedCPU):
        def __init__(self):
            super().__init__()
            self.flushes = []

        def time_calls(self, call, idxs, flush=True):
            self.flushes += [flush] * len(idxs)
            return super().time_calls(call, idxs, flush)
    for warm in (True, False):
        b = Logged()
        r = runner(tmp_path, ["t_right"], backend=b)
        (rec,) = r.run_case(Case("gemv_bf16", GemvShape(1, 64, 256), torch.float32, warm=warm))
        r.writer.close()
        assert rec["status"] == "ok", rec["error"]
        assert b.flushes and set(b.flushes) == {not warm}


@pytest.fixture
def set0_only():
    """Impls that do their work only on the inputs they were checked on (set 0 of the timing,
    found by address, as a result cached by pointer or a CUDA graph captured on the first call
    would): every other set's call leaves its out buffer unwritten, or returns zeros."""
    first: dict[str, int] = {}

    def seen_first(name, x):
        return first.setdefault(name, x.data_ptr()) == x.data_ptr()

    @register_impl("gemv_bf16", "t_set0_out", backends=["cpu"], dtypes=["float32"])
    def into_out(x, w, out=None):
        if seen_first("out", x):
            torch.matmul(x, w.T, out=out)
        return out

    @register_impl("gemv_bf16", "t_set0_ret", backends=["cpu"], dtypes=["float32"])
    def returned(x, w):
        y = x @ w.T
        return y if seen_first("ret", x) else torch.zeros_like(y)

    @register_impl("gemv_bf16", "t_later_widened", backends=["cpu"], dtypes=["float32"])
    def widened(x, w):  # right values, in float64 after its check: not the bytes counted
        y = x @ w.T
        return y if seen_first("wide", x) else y.double()
    yield
    for n in ("t_set0_out", "t_set0_ret", "t_later_widened"):
        OPS["gemv_bf16"].impls.pop(n, None)


@pytest.mark.parametrize("impl", ["t_set0_out", "t_set0_ret", "t_later_widened"])
def test_an_impl_right_only_on_its_checked_inputs_fails_after_timing(tmp_path, fixed_llc,
                                                                     set0_only, impl):
    """After timing, every set's out buffer is compared with the reference (or, where the impl
    returns its result, a call on the last set stands for them, not one on set 0, and is held
    to the op's shape and dtype): an impl right only on set 0 is recorded failed-check, not
    timed as right."""
    r = runner(tmp_path, [impl])
    (rec,) = r.run_case(Case("gemv_bf16", GemvShape(1, 64, 256), torch.float32))
    r.writer.close()
    assert rec["status"] == "failed-check" and rec["correct"] is False, rec
    assert "after timing" in rec["error"] and "on input set 0 " not in rec["error"]


def test_a_records_clocks_are_read_after_its_timing(tmp_path, slightly_off, fixed_llc):
    """Clocks and throttle state describe the timing they sit beside: the record takes them
    as the timing ends (a GPU heats up and throttles over a window), not from before the
    check."""
    class Clocked(ScriptedCPU):
        def clocks(self):
            return {"timed_calls_so_far": self.k}
    r = runner(tmp_path, ["t_right"], backend=Clocked())
    (rec,) = r.run_case(Case("gemv_bf16", GemvShape(1, 64, 256), torch.float32))
    r.writer.close()
    assert rec["status"] == "ok", rec["error"]
    assert rec["device"]["clocks"]["timed_calls_so_far"] == r.ctx.backend.k > 0
