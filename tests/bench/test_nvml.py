"""NVML figures and the flush mode from the timing window to the record, the table and the CLI,
on the CPU with a fake NVML (tests/backends/test_cuda.py holds the sampler's own tests)."""
import dataclasses
import threading

import pytest
import torch
from rich.console import Console

from backends import Backend, get_backend
from backends.cuda import FLUSH_ENV, NVML_KEYS, CUDABackend, NvmlSampler
from bench.case import Case
from bench.report.table import results_table
from bench.results import ResultWriter
from bench.roofline import Roof
from bench.runner import RunContext, Runner
from bench.timing import BUDGETS, Budget, measure
from kernels.gemv import GemvShape
from tests.backends.test_cuda import fake_nvml
from tests.helpers import one_error_line

BUDGET = Budget(warmup_s=0.0, min_samples=5, max_samples=20, min_time_s=0.0, max_time_s=1.0, batch=5)


class Timed(Backend):
    """Every call "takes" 1 ms; the sampler is an NvmlSampler over a fake NVML."""
    name = "fake"

    def __init__(self, nv):
        self.nv, self.samplers = nv, []

    def sampler(self):
        s = NvmlSampler(self.nv, "h0", interval_s=0.002)
        self.samplers.append(s)
        return s

    def time_calls(self, call, idxs, flush=True):
        for i in idxs:
            call(i)
        return [1e-3] * len(idxs)


def test_measure_samples_the_timing_window_only_and_returns_the_figures():
    n = {"calls": 0}

    def call(i):
        n["calls"] += 1
    b = Timed(fake_nvml(util=(100,), power_mw=(250_000,)))
    st = measure(b, call, 1, BUDGET)
    assert len(b.samplers) == 1 and not b.samplers[0].thread.is_alive()
    assert st.sampled["gpu_util_polled_pct"] == pytest.approx(100.0)
    assert st.sampled["power_w"] == pytest.approx(250.0)
    # the counter moved 50 J over the window's calls: the warm-up's calls are not among them
    assert n["calls"] > st.n
    assert st.sampled["energy_j_per_call"] == pytest.approx(50.0 / st.n)
    assert st.sampled["nvml_timed_frac"] == pytest.approx(st.n * 1e-3 / st.sampled["nvml_window_s"])


def test_the_sampler_thread_stops_when_the_timed_call_raises():
    n = {"calls": 0}

    def call(i):
        n["calls"] += 1
        if n["calls"] > 3:  # after the warm-up: inside the sampled window
            raise RuntimeError("illegal memory access")
    before = threading.active_count()
    b = Timed(fake_nvml())
    with pytest.raises(RuntimeError):
        measure(b, call, 1, BUDGET)
    assert len(b.samplers) == 1 and b.samplers[0].thread is not None
    assert not b.samplers[0].thread.is_alive() and threading.active_count() == before


@pytest.mark.parametrize("need", [0.0, 0.15])
def test_sampling_goes_on_until_the_window_the_sampler_needs(need):
    """The budget's rules stop at 5 samples (all equal: stdrel); a sampler that needs a longer
    window (NVML's utilization: two driver periods) keeps the samples coming until it has it,
    past max_samples, within the time cap."""
    class Needs(Timed):
        def sampler(self):
            s = super().sampler()
            s.min_window_s = lambda cap: min(need, cap)
            return s
    b = Needs(fake_nvml())
    st = measure(b, lambda i: None, 1, BUDGET)
    if need:
        assert st.sampled["nvml_window_s"] >= need and st.n > BUDGET.max_samples
        assert st.stop == "nvml_window"
    else:
        assert st.n == BUDGET.min_samples and st.stop == "stdrel"
    capped = measure(b, lambda i: None, 1, Budget(warmup_s=0.0, min_samples=5, max_samples=20,
                                                    min_time_s=0.0, max_time_s=0.05, batch=5))
    if need:  # the window stops at the cap, not at what the sampler asked for
        assert 0.05 <= capped.sampled["nvml_window_s"] < need
    else:
        assert capped.stop == "stdrel"


def test_the_quick_budget_does_not_wait_for_the_window():
    """quick keeps its short windows (the device check's suite times dozens of cases in a fixed
    box): its stop rules end the timing whatever the sampler would need."""
    class Needs(Timed):
        def sampler(self):
            s = super().sampler()
            s.min_window_s = lambda cap: cap
            return s
    quick = dataclasses.replace(BUDGETS["quick"], warmup_s=0.0)
    st = measure(Needs(fake_nvml()), lambda i: None, 1, quick)
    assert st.stop != "nvml_window" and st.sampled["nvml_window_s"] < quick.max_time_s / 2


def test_no_sampler_no_figures():
    class Plain(Timed):
        def sampler(self):
            return None
    assert measure(Plain(None), lambda i: None, 1, BUDGET).sampled == {}


def make_runner(tmp_path):
    b = get_backend("cpu")
    roof = Roof("cpu", 20.0, 25.0, 1 << 28, matmul_tflops={"float32": 0.1})
    ctx = RunContext(backend=b, roof=roof, chip=None, device_info=b.device_info(),
                     budget=BUDGETS["quick"], seed=0, run_id="test-run", command="pytest",
                     git_commit=None, versions={}, impl_filter=("torch_matmul",))
    return Runner(ctx, ResultWriter(tmp_path, "test-run"))


def test_records_carry_the_sampled_figures_and_the_flush_mode(tmp_path, monkeypatch):
    r = make_runner(tmp_path)
    (plain,) = r.run_case(Case("gemv_bf16", GemvShape(1, 32, 64), torch.float32))
    assert plain["status"] == "ok"
    assert not set(NVML_KEYS) & set(plain) and "flush" not in plain  # the CPU: neither

    b = r.ctx.backend
    # the driver's buffer: one sample before the window, two inside it
    buffers = [[(1, 5)], [(1, 5), (2, 50), (3, 97)]]
    monkeypatch.setattr(b, "sampler", lambda: NvmlSampler(fake_nvml(util=(9,), driver=buffers),
                                                          "h0"))
    monkeypatch.setattr(b, "flush_mode", lambda: "memset+read")
    (rec,) = r.run_case(Case("gemv_bf16", GemvShape(1, 32, 64), torch.float32))
    (warm,) = r.run_case(Case("gemv_bf16", GemvShape(1, 32, 64), torch.float32, warm=True))
    r.writer.close()
    assert rec["status"] == "ok" and set(NVML_KEYS) <= set(rec)
    assert rec["gpu_util_pct"] == pytest.approx(97.0) and rec["gpu_util_polled_pct"] == 9.0
    assert rec["gpu_util_source"] == "driver samples" and rec["nvml_util_period_s"] == 1e-6
    assert rec["energy_j_per_call"] == pytest.approx(50.0 / rec["time_s"]["n"])
    assert rec["flush"] == "memset+read" and warm["flush"] == "none"

    monkeypatch.setattr(b, "sampler", lambda: NvmlSampler(None, None))  # CUDA without NVML
    (rec,) = r.run_case(Case("gemv_bf16", GemvShape(1, 32, 64), torch.float32))
    assert all(rec[k] is None for k in NVML_KEYS)


def _render(records):
    c = Console(width=250, record=True)
    c.print(results_table(records))
    return c.export_text()


def test_table_shows_gpu_util_beside_pct_roof_only_when_measured():
    base = {"op": "gemv_bf16", "impl": "torch_matmul", "shape": {"M": 1}, "dtype": "bfloat16",
            "status": "ok", "time_s": {"median": 1e-5, "p25": 1e-5, "p75": 1e-5, "n": 9},
            "achieved_gbps": 700.0, "pct_roof": 15.0, "verdict": "below the wall: kernel"}
    text = _render([base])
    assert "GPU util" not in text
    text = _render([{**base, "gpu_util_pct": 100.0, "pct_datasheet": 13.0},
                    {**base, "impl": "other"}])
    head = next(line for line in text.splitlines() if "% roof" in line)
    assert head.index("% roof") < head.index("GPU util") < head.index("% datasheet")
    row = next(line for line in text.splitlines() if "torch_matmul" in line)
    assert "15%" in row and "100%" in row
    assert row.index("15%") < row.index("100%")


def test_bad_flush_env_is_a_usage_error_before_anything_runs(capsys, monkeypatch):
    monkeypatch.setattr(CUDABackend, "available", lambda self: (True, ""))
    monkeypatch.setenv(FLUSH_ENV, "zero")
    for argv in (["roof", "--backend", "cuda"], ["roof"]):  # by name, and picked as the best
        line = one_error_line(capsys, argv)
        assert FLUSH_ENV in line and "'zero'" in line and "memset+read" in line


def test_an_allreduce_record_says_it_was_not_flushed(tmp_path, monkeypatch):
    """Collective ranks time their calls back to back, never flushing: `flush` none, whatever
    DECODEWALL_FLUSH says (compare pairs records by it)."""
    from bench.runner import base_record
    from kernels import OPS
    from kernels.collectives.ops import AllreduceShape
    r = make_runner(tmp_path)
    monkeypatch.setattr(r.ctx.backend, "flush_mode", lambda: "read")
    reduce = OPS["allreduce"].impls["torch_distributed"]
    rec = base_record(r.ctx, Case("allreduce", AllreduceShape(bytes=4096), torch.float32), reduce)
    assert rec["flush"] == "none"
    gemv = OPS["gemv_bf16"].impls["torch_matmul"]
    assert base_record(r.ctx, Case("gemv_bf16", GemvShape(1, 32, 64), torch.float32),
                       gemv)["flush"] == "read"
