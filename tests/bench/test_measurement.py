"""Timing rules, rotation, sysfs cache reading, the probes and the roofline verdict (no real
timings)."""
import dataclasses

import pytest
import torch

import bench.roofline as rl
from backends import Backend, get_backend
from backends.cpu import read_caches
from bench.roofline import Roof, judge
from kernels import OPS
from bench.runner import set_bytes
from bench.timing import Budget, stop_rule, summarize


def test_summary_statistics():
    st = summarize([1.0, 2.0, 3.0, 4.0, 100.0], "max_samples")
    assert st.median == 3.0 and st.min == 1.0 and st.n == 5
    assert st.p25 == 2.0 and st.p75 == 4.0
    # the roof's noise: one stalled sample must not read as a 100%+ spread (it would hide an
    # above-the-roof result behind a 3x-noise margin)
    assert st.rel_std > 1.5 and st.rel_iqr == pytest.approx(2 / 3)


def test_stop_rule():
    b = Budget(min_samples=10, max_samples=100, min_time_s=0.0, max_time_s=10.0, target_rel=0.005)
    assert stop_rule([1.0] * 5, 0.1, b) is None  # too few samples
    assert stop_rule([1.0] * 10, 0.1, b) == "stdrel"
    noisy = [1.0, 1.2] * 10
    assert stop_rule(noisy, 0.1, b) is None  # 10% spread, median not yet pinned down
    assert stop_rule(noisy, 11.0, b) == "max_time"
    assert stop_rule([1.0, 1.2] * 50, 0.1, b) == "max_samples"
    many = [1.0, 1.05] * 2000
    b2 = Budget(min_samples=10, max_samples=10**6, min_time_s=0.0, max_time_s=10.0)
    assert stop_rule(many, 0.1, b2) == "median_precise"


def test_set_bytes_counts_shared_storage_once():
    a = torch.empty(100, dtype=torch.float32)
    view = a[10:20]
    out = torch.empty(5, dtype=torch.float16)
    assert set_bytes((a, view, 3), out) == 400 + 10


def test_read_caches_from_fake_sysfs(tmp_path):
    """Both fake CPUs are named as this process's: its own affinity (a one-CPU runner, a
    container's cpuset, `taskset -c 0`) must not decide which of the fake caches count."""
    def cache(cpu, idx, level, ctype, size, shared):
        d = tmp_path / f"cpu{cpu}" / "cache" / f"index{idx}"
        d.mkdir(parents=True)
        for k, v in dict(level=level, type=ctype, size=size, shared_cpu_list=shared).items():
            (d / k).write_text(f"{v}\n")
    for cpu in (0, 1):
        cache(cpu, 0, 1, "Data", "32K", str(cpu))
        cache(cpu, 1, 1, "Instruction", "32K", str(cpu))
        cache(cpu, 2, 2, "Unified", "512K", str(cpu))
        cache(cpu, 3, 3, "Unified", "32768K", "0-1")
    c = read_caches(tmp_path, cpus={0, 1})
    assert c == {"L1d": 65536, "L2": 1024 * 1024, "L3": 32 * 1024 * 1024}


ROOF = Roof("cpu", copy_gbps=20.0, read_gbps=25.0, working_set_bytes=1 << 28,
            matmul_tflops={"float32": 0.1})


def test_cpu_llc_is_the_last_level_there_is(monkeypatch):
    """The rotation must pass the last cache: an L4 (eDRAM) where sysfs lists one."""
    import backends.cpu as cpu
    b = get_backend("cpu")
    monkeypatch.setattr(cpu, "read_caches", lambda: {"L1d": 1 << 15, "L2": 1 << 20, "L3": 1 << 25})
    assert b.cache_bytes() == 1 << 25
    monkeypatch.setattr(cpu, "read_caches", lambda: {"L1d": 1 << 15, "L3": 1 << 25, "L4": 1 << 27})
    assert b.cache_bytes() == 1 << 27


def test_cpu_rotation_passes_every_cache_level_together(monkeypatch):
    """A non-inclusive L3 holds lines the L2s do not: the rotation target is 4x all levels
    summed, which matters where the L2s together rival the L3 (many-core parts)."""
    import backends.cpu as cpu
    b = get_backend("cpu")
    sierra = {"L1d": 144 * 32 << 10, "L2": 144 << 20, "L3": 108 << 20}
    monkeypatch.setattr(cpu, "read_caches", lambda: sierra)
    monkeypatch.setattr(cpu, "_mem_total", lambda: 64 << 30)  # the probe's memory cap stays clear
    assert b.cache_bytes() == 108 << 20
    assert b.rotate_bytes() == 4 * sum(sierra.values())
    from bench.roofline import probe_elems
    assert probe_elems(b) * 4 >= b.rotate_bytes()  # the roof's probe passes it too (fp32)
    monkeypatch.setattr(cpu, "read_caches", lambda: {})  # no sysfs: the assumed LLC
    assert b.rotate_bytes() == 4 * b.cache_bytes()


def test_the_roof_probe_takes_at_most_an_eighth_of_host_memory(monkeypatch):
    """A VM slice of a server may see a GiB of L3 beside a few GiB of memory: the copy probe
    (two working sets) past 4x that cache would not fit. It stops at an eighth of memory."""
    import backends.cpu as cpu
    from bench.roofline import probe_elems
    b = get_backend("cpu")
    monkeypatch.setattr(cpu, "read_caches", lambda: {"L2": 2 << 20, "L3": 1 << 30})
    monkeypatch.setattr(cpu, "_mem_total", lambda: 8 << 30)
    assert probe_elems(b) * 4 == 1 << 30
    monkeypatch.setattr(cpu, "_mem_total", lambda: 64 << 30)
    assert probe_elems(b) * 4 == 4 * ((1 << 30) + (2 << 20))
    monkeypatch.setattr(cpu, "read_caches", lambda: {"L2": 1 << 20, "L3": 32 << 20})
    assert probe_elems(b) * 4 == 256 << 20  # the floor, where the caches are small


@pytest.mark.parametrize("bytes_, flops, t, verdict", [
    (25e9 * 0.9, 1e6, 1.0, "at the wall"),                     # 90% of 25 GB/s
    (25e9 * 0.5, 1e6, 1.0, "below the wall: kernel"),           # slow, long kernel
    (25e3 * 0.5, 1e3, 1e-6, "below the wall: launch/latency bound"),
    (1e9, 1e12, 10.0, "compute-bound"),                          # AI 1000 > ridge 4, 100% of 0.1 TF/s
    (1e9, 1e12, 100.0, "compute-bound: below the compute roof"),  # 10% of the matmul rate
    (25e9 * 1.5, 1e6, 1.0, "above the roof: harness suspect (cache not defeated, missing sync, "
                           "or the roof read low)"),
])
def test_verdicts(bytes_, flops, t, verdict):
    v = judge(int(bytes_), int(flops), t, ROOF, torch.float32, latency_floor_s=20e-6)
    assert v.verdict == verdict
    assert v.ridge == pytest.approx(0.1e12 / 25e9)


def test_a_noisy_roof_widens_the_above_the_roof_margin_only_so_far():
    """3x the probes' spread, at least 5%, at most 25%: a roof read at 130% spread (a quick
    budget on a busy machine) must still flag 1.5x the roof."""
    noisy = dataclasses.replace(ROOF, noise=1.3)
    assert judge(int(25e9 * 1.2), 1, 1.0, noisy, torch.float32, 20e-6).verdict == "at the wall"
    assert judge(int(25e9 * 1.5), 1, 1.0, noisy, torch.float32, 20e-6).verdict.startswith(
        "above the roof")
    quiet = dataclasses.replace(ROOF, noise=0.001)
    assert judge(int(25e9 * 1.07), 1, 1.0, quiet, torch.float32, 20e-6).verdict.startswith(
        "above the roof")


def test_roof_is_best_probe_and_maps_compute_dtype():
    r = Roof("cpu", 20.0, 25.0, 1, matmul_tflops={"float32": 0.2},
             compute_dtype={"bfloat16": "float32"})
    assert r.gbps == 25.0
    assert r.tflops(torch.bfloat16) == 0.2 and r.tflops(torch.float16) is None


# --- the probes and the roof -------------------------------------------------------------------

def test_roof_takes_the_fastest_good_probe_impl(monkeypatch):
    """Each probe is the best of the impls that pass the check; a fast wrong impl is left out."""
    backend = get_backend("cpu")
    median = {"torch_sum": 2.0, "simd_c": 1.0, "wrong_fast": 0.1, "torch_copy": 4.0}
    ran = []

    def tagged(name, fn):
        def f(*a, **k):
            ran.append(name)
            return fn(*a, **k)
        return f
    for op_name, names in (("read", ("torch_sum", "simd_c")), ("copy", ("torch_copy",))):
        for n in names:
            impl = OPS[op_name].impls[n]
            monkeypatch.setitem(OPS[op_name].impls, n, dataclasses.replace(impl, fn=tagged(n, impl.fn)))
    bad = dataclasses.replace(OPS["read"].impls["torch_sum"], name="wrong_fast",
                              fn=tagged("wrong_fast", lambda src: src.sum() * 2))  # twice the sum
    monkeypatch.setitem(OPS["read"].impls, "wrong_fast", bad)

    def raises(src):
        raise RuntimeError("a plugin's bug")
    monkeypatch.setitem(OPS["read"].impls, "broken",
                        dataclasses.replace(OPS["read"].impls["torch_sum"], name="broken", fn=raises))
    assert [i.name for i in rl.probe_impls(backend, "read")] == ["torch_sum", "simd_c"]

    def fake_measure(backend, call, n_sets, budget):
        ran.clear()
        call(0)
        return summarize([median[ran[-1]]], "max_samples")
    monkeypatch.setattr(rl, "measure", fake_measure)
    monkeypatch.setattr(rl, "add_matmul", lambda *a: None)
    roof = rl.measure_roof(backend)
    n = rl.probe_elems(backend)
    assert roof.read_impl == "simd_c" and roof.read_gbps == pytest.approx(n * 4 / 1e9, rel=1e-2)
    assert roof.copy_impl == "torch_copy" and roof.gbps == roof.read_gbps


def test_a_plugins_probe_impls_never_run_in_the_roof(monkeypatch):
    """Probes run in the parent: a plugin's copy/read impl (a crash, a hang, a view of its input
    passed off as a copy) must not be called there, let alone set the roof."""
    backend = get_backend("cpu")
    called = []

    def plugin_read(src):
        called.append("read")
        return src.sum()

    def plugin_copy(src, out=None):
        called.append("copy")
        return src  # its input, not a copy: 0 bytes moved
    for op_name, fn in (("read", plugin_read), ("copy", plugin_copy)):
        monkeypatch.setitem(OPS[op_name].impls, "plugin", dataclasses.replace(
            OPS[op_name].impls["torch_" + ("sum" if op_name == "read" else "copy")],
            name="plugin", fn=fn, builtin=False, out_arg=op_name == "copy"))
    assert "plugin" not in [i.name for i in rl.probe_impls(backend, "read")]
    assert "plugin" not in [i.name for i in rl.probe_impls(backend, "copy")]
    assert called == []


def test_a_copy_probe_is_checked_with_the_out_buffer_it_is_timed_with(monkeypatch):
    backend = get_backend("cpu")

    def returns_its_input(src, out=None):  # right values when returned, `out` never written
        return src
    monkeypatch.setitem(OPS["copy"].impls, "lazy", dataclasses.replace(
        OPS["copy"].impls["torch_copy"], name="lazy", fn=returns_its_input, out_arg=True))
    assert [i.name for i in rl.probe_impls(backend, "copy")] == ["torch_copy"]


# --- warm timing (the size sweep) ----------------------------------------------------------------

class _CountingBackend(Backend):
    """A backend double: records whether each timed call was preceded by a flush."""
    name = "fake"

    def __init__(self):
        self.flushed = []

    def time_calls(self, call, idxs, flush=True):
        self.flushed += [flush] * len(idxs)
        for i in idxs:
            call(i)
        return [1e-3] * len(idxs)


def test_warm_measure_never_flushes_and_cold_always_does():
    from bench.timing import measure
    budget = Budget(warmup_s=0.0, min_samples=5, max_samples=10, min_time_s=0.0, max_time_s=1.0, batch=5)
    for warm in (False, True):
        b = _CountingBackend()
        measure(b, lambda i: None, 1, budget, warm=warm)
        assert b.flushed and set(b.flushed) == {not warm}


def test_warm_up_touches_every_set_before_the_first_sample():
    """A set first touched inside the samples pays its page faults there (its output buffer is a
    fresh allocation), so the warm-up runs at least one full rotation, whatever the set count."""
    from bench.timing import measure
    budget = Budget(warmup_s=0.0, min_samples=5, max_samples=10, min_time_s=0.0, max_time_s=1.0, batch=5)
    for n_sets in (1, 7, 300):
        seen: list[int] = []
        b = _CountingBackend()
        measure(b, lambda i: seen.append(i), n_sets, budget)
        assert sorted(set(seen[:n_sets])) == list(range(n_sets))
        assert len(seen) >= n_sets + 5  # the samples follow the rotation


def test_base_time_calls_skips_the_flush_only_when_asked(monkeypatch):
    b = get_backend("cpu")
    calls = []
    monkeypatch.setattr(type(b), "flush", lambda self: calls.append(1))
    b.time_calls(lambda i: None, [0, 0, 0])
    assert len(calls) == 3
    b.time_calls(lambda i: None, [0, 0, 0], flush=False)
    assert len(calls) == 3


def test_base_time_calls_waits_for_each_result_inside_the_window(monkeypatch):
    """A backend whose calls return before the work is done (XLA's async dispatch) is timed to
    the end of the work: block(result) runs between the two clock reads, once per call, after
    the device was synchronized and before the clock started."""
    import backends.base as base
    b = get_backend("cpu")
    clock = iter(range(0, 10**6, 10))
    events = []
    monkeypatch.setattr(base.time, "perf_counter_ns",
                        lambda: events.append("clock") or next(clock))
    monkeypatch.setattr(type(b), "synchronize", lambda self: events.append("sync"))
    monkeypatch.setattr(type(b), "block", lambda self, out: events.append(("block", out)))
    times = b.time_calls(lambda i: events.append(("call", i)) or i, [4, 7], flush=False)
    assert events == ["sync", "clock", ("call", 4), ("block", 4), "clock",
                      "sync", "clock", ("call", 7), ("block", 7), "clock"]
    assert times == [10e-9, 10e-9]


def test_in_cache_is_never_above_the_roof():
    roof = Roof("cpu", 10.0, 10.0, 1 << 28)
    hot = judge(10**9, 0, 0.02, roof, torch.float32, 20e-6, in_cache=True)   # 50 GB/s: 5x the roof
    assert hot.verdict == rl.IN_CACHE and hot.pct_roof == pytest.approx(500)
    cold = judge(10**9, 0, 0.02, roof, torch.float32, 20e-6)
    assert cold.verdict.startswith("above the roof")


def test_size_sweep_spans_cache_to_dram_for_each_op():
    from bench.runner import WARM_CACHE_FACTOR
    from bench.suites import SIZE_SWEEP_LLC, SuiteContext, cases_for
    llc = 32 * 2**20
    cases = cases_for("sweep-size", SuiteContext("cpu", 24 * 2**30, llc))
    assert cases and all(c.warm for c in cases)
    for op in ("read", "gemv_w4", "gemv_w8", "gemv_bf16"):
        sizes = sorted(OPS[op].bytes_moved(c.shape, c.dtype) for c in cases if c.op == op)
        assert len(sizes) == len(SIZE_SWEEP_LLC)
        for got, want in zip(sizes, sorted(SIZE_SWEEP_LLC)):
            assert abs(got / (want * llc) - 1) < 0.1, (op, got, want)
        assert sizes[0] < llc and sizes[-1] > WARM_CACHE_FACTOR * llc  # both sides of the cliff
    gpu = cases_for("sweep-size", SuiteContext("cuda", 80 * 2**30, 50 * 2**20))
    for c in cases + gpu:  # no naive dequant (it writes the whole matrix), no compile per size
        assert c.impls is None or not {"torch_dequant", "torch_compiled"} & set(c.impls)
    # the GPU sweep keeps every impl that streams the weights once, the optional peer included
    # (and the Triton ones without Triton: there they are recorded skipped, with the reason)
    assert {i for c in gpu if c.op == "gemv_w4" for i in c.impls} == {
        "torch_int4pack_mm", "gemlite_w4", "triton_w4", "triton_w4_splitk"}
    small = cases_for("sweep-size", SuiteContext("cpu", 1 * 2**30, llc))  # sizes that fit RAM
    assert small and max(OPS[c.op].bytes_moved(c.shape, c.dtype) for c in small) < 2**30 / 3


def test_a_median_of_zero_seconds_is_one_clear_error_not_a_division_by_zero(tmp_path,
                                                                         monkeypatch):
    """A call whose work the timer cannot see (CUDA events around a call that queues nothing
    read 0 s) has no rate: its record says so in one line, the run goes on, and no figure is
    derived from a zero time (GB/s would be a ZeroDivisionError blamed on the impl)."""
    import tests.bench.test_runner_numbers as numbers
    from bench.case import Case
    from kernels.gemv import GemvShape
    monkeypatch.setattr(numbers, "DURATIONS", [0.0])
    monkeypatch.setattr("backends.cpu.read_caches", lambda: {"L3": 1 << 20})
    r = numbers.runner(tmp_path, ["torch_matmul"])
    (rec,) = r.run_case(Case("gemv_bf16", GemvShape(1, 64, 256), torch.float32))
    r.writer.close()
    assert rec["status"] == "error" and "median of 0 s" in rec["error"]
    assert "ZeroDivisionError" not in rec["error"] and "traceback" not in rec
    assert rec["time_s"] is None and rec["achieved_gbps"] is None and rec["correct"] is True
