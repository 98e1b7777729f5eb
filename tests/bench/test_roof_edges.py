"""The roofline verdict's thresholds at their edges, and the drift warning's: a threshold moved
by a few percent changes what a user is told about a kernel, and the existing cases sit far from
every edge."""
import dataclasses

import pytest
import torch

from bench.roofline import AT_WALL, DRIFT, Roof, drift_note, judge

ROOF = Roof("cpu", copy_gbps=20.0, read_gbps=25.0, working_set_bytes=1 << 28,
            matmul_tflops={"float32": 0.1})


def verdict(pct, roof=ROOF, t=1.0):
    """The verdict of a memory-bound case (1 FLOP) running at `pct` % of the 25 GB/s roof."""
    return judge(round(25e9 * pct / 100 * t), 1, t, roof, torch.float32, 20e-6).verdict


def test_at_the_wall_starts_at_exactly_80_percent_of_the_measured_roof():
    assert AT_WALL == 0.80  # DESIGN.md: "at the wall (memory-bound, >= 80% of the measured roof)"
    assert verdict(80.0) == "at the wall"
    assert verdict(79.5) == "below the wall: kernel"
    assert verdict(100.0) == "at the wall"


def test_the_above_roof_margin_is_three_times_the_probes_noise():
    """A roof read with 4% spread allows 12% over it before a case is suspect (5% at least)."""
    roof = dataclasses.replace(ROOF, noise=0.04)
    assert verdict(110.0, roof) == "at the wall"
    assert verdict(113.0, roof).startswith("above the roof")
    quiet = dataclasses.replace(ROOF, noise=0.0)
    assert verdict(104.0, quiet) == "at the wall"
    assert verdict(106.0, quiet).startswith("above the roof")


def test_the_margin_is_the_spread_of_the_probe_that_set_the_roof(monkeypatch):
    """A copy probe with 8% spread beside a read probe with 1%: the read sets the roof, so a
    case 20% over it is suspect (5% margin), not 'at the wall' under the copy's 24%."""
    import bench.roofline as rl
    probes = {"copy": (20.0, 0.08, "torch_copy"), "read": (25.0, 0.01, "torch_sum")}
    monkeypatch.setattr(rl, "_probe", lambda backend, op, n, budget: probes[op])
    monkeypatch.setattr(rl, "probe_elems", lambda backend: 1 << 26)
    backend = Releasing()
    roof = rl.remeasure_bandwidth(backend, ROOF)
    assert (roof.gbps, roof.noise) == (25.0, 0.01)
    assert verdict(120.0, roof).startswith("above the roof")
    probes["copy"] = (30.0, 0.08, "torch_copy")  # a GPU: the copy sets the roof
    assert rl.remeasure_bandwidth(backend, ROOF).noise == 0.08


class Releasing:
    """A backend stand-in that logs what the roof code asks of it."""
    name = "fake"
    kind_of_device = "gpu"

    def __init__(self):
        self.log = []

    def release(self):
        self.log.append("release")


def test_the_probes_give_their_device_memory_back(monkeypatch):
    """The run's parent measures the roof, then its workers time the cases on the same device:
    after the bandwidth probes and after the matmul ones, the parent releases what it held."""
    import bench.roofline as rl
    b = Releasing()
    monkeypatch.setattr(rl, "_probe", lambda backend, op, n, budget: b.log.append(op) or
                        (20.0, 0.01, "p"))
    monkeypatch.setattr(rl, "probe_elems", lambda backend: 1 << 20)
    monkeypatch.setattr(rl, "matmul_tflops", lambda backend, dt, budget: b.log.append("mm") or 1.0)
    rl.measure_roof(b)
    assert b.log == ["copy", "read", "release", "mm", "release"]
    b.log.clear()
    rl.RoofTracker(b, ROOF, rl.BUDGETS["quick"], every_s=0.0).current()  # a refresh mid-run
    assert b.log == ["copy", "read", "release", "mm", "release"]


def test_the_probes_keep_freed_memory_as_the_case_workers_do(monkeypatch):
    """An XLA probe allocates its output each call: in the parent, whose malloc handed each
    one back, the copy probe timed fresh pages (5.8 GB/s, IQR/median 0.99) where the workers,
    which keep freed memory, copied 19.8 GB/s. The probes run under the workers' policy, and
    what they freed is handed back before the workers run."""
    import bench.roofline as rl
    b = Releasing()
    monkeypatch.setattr(rl, "keep_freed_memory", lambda: b.log.append("keep") or True)
    monkeypatch.setattr(rl, "release_freed_memory", lambda: b.log.append("trim"))
    monkeypatch.setattr(rl, "_probe", lambda backend, op, n, budget: b.log.append(op) or
                        (20.0, 0.01, "p"))
    monkeypatch.setattr(rl, "probe_elems", lambda backend: 1 << 20)
    rl.remeasure_bandwidth(b, ROOF)
    assert b.log == ["keep", "copy", "read", "release", "trim"]


def test_a_flop_rate_past_the_matmul_rate_is_suspect_not_compute_bound():
    """A matmul rate read while the machine was busy (23 GFLOP/s where 229 is the chip's) puts the
    ridge under a GEMV's 1 FLOP/B: the GEMV then runs "at" 270% of the compute roof. Past 125%
    that is the harness's doubt, not a compute-bound kernel."""
    low = dataclasses.replace(ROOF, matmul_tflops={"float32": 0.023})
    gemv = lambda gflops: judge(round(gflops * 1e9), round(gflops * 1e9), 1.0, low,
                                torch.float32, 20e-6)
    v = gemv(62.0)  # 62 GB/s, 62 GFLOP/s: 248% of the bandwidth roof too
    assert v.verdict.startswith("above the roof")  # the bandwidth verdict comes first
    low = dataclasses.replace(ROOF, read_gbps=100.0, matmul_tflops={"float32": 0.023})
    v = judge(62_000_000_000, 62_000_000_000, 1.0, low, torch.float32, 20e-6)
    assert v.pct_compute > 250 and v.verdict.startswith("above the compute roof: harness suspect")
    ok = judge(62_000_000_000, 62_000_000_000, 1.0,
               dataclasses.replace(low, matmul_tflops={"float32": 0.060}), torch.float32, 20e-6)
    assert ok.verdict == "compute-bound"  # 103%: within the margin, at the compute roof
    within = judge(62_000_000_000, 62_000_000_000, 1.0,
                   dataclasses.replace(low, matmul_tflops={"float32": 0.0497}), torch.float32, 20e-6)
    assert within.pct_compute > 124 and within.verdict == "compute-bound"
    # a CPU judges bf16 against fp32 only where it has no native bf16 products (compute_dtype):
    # there fp32's rate bounds bf16 math too, so past it is doubt as for fp32
    cpu = dataclasses.replace(low, compute_dtype={"bfloat16": "float32"})
    bf16 = judge(62_000_000_000, 62_000_000_000, 1.0, cpu, torch.bfloat16, 20e-6)
    assert bf16.pct_compute > 250 and bf16.verdict.startswith("above the compute roof")
    # XLA on a CPU takes fp32's rate for bf16 whatever its dot does: no doubt drawn from it
    xla = dataclasses.replace(cpu, backend="xla")
    assert judge(62_000_000_000, 62_000_000_000, 1.0, xla, torch.bfloat16, 20e-6).verdict == \
        "compute-bound"


@pytest.mark.parametrize("flags, bf16, fp16", [
    ({"avx2", "fma"}, torch.float32, torch.float32),
    ({"avx512f", "avx512_bf16"}, torch.bfloat16, torch.float32),  # Zen 4 and 5
    ({"avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16"}, torch.bfloat16,
     torch.float16),  # Granite Rapids
])
def test_a_cpus_16_bit_roof_is_its_own_matmul_only_where_it_multiplies_16_bit(
        flags, bf16, fp16, monkeypatch):
    import backends.cpu as cpu
    from backends import get_backend
    from bench.roofline import compute_dtype
    monkeypatch.setattr(cpu, "cpu_flags", lambda cpuinfo=None: flags)
    b = get_backend("cpu")
    assert compute_dtype(b, torch.bfloat16) == bf16 and compute_dtype(b, torch.float16) == fp16
    assert compute_dtype(b, torch.float32) == torch.float32


def test_a_matmul_rate_measured_mid_run_gives_its_memory_back(monkeypatch):
    """The parent measures a second dtype's matmul rate when its first case comes: its operands
    (3 x 8192^2 on a GPU) are released like the first reading's; a rate already known is not
    measured again."""
    import bench.roofline as rl
    b = Releasing()
    monkeypatch.setattr(rl, "matmul_tflops", lambda backend, dt, budget: b.log.append("mm") or 1.0)
    roof = dataclasses.replace(ROOF, matmul_tflops={}, compute_dtype={})
    rl.add_matmul(roof, b, torch.float16, rl.BUDGETS["quick"])
    rl.add_matmul(roof, b, torch.float16, rl.BUDGETS["quick"])
    assert b.log == ["mm", "release"] and roof.matmul_tflops == {"float16": 1.0}


def test_a_refresh_measures_the_matmul_rates_again(monkeypatch):
    """Between cases the roof is re-read whole: a matmul rate read low at the start does not
    stand for the run. The earlier roof (records already judged against it) is left as it was."""
    import bench.roofline as rl
    b = Releasing()
    monkeypatch.setattr(rl, "_probe", lambda backend, op, n, budget: b.log.append(op) or
                        (25.0, 0.01, "p"))
    monkeypatch.setattr(rl, "probe_elems", lambda backend: 1 << 20)
    monkeypatch.setattr(rl, "matmul_tflops", lambda backend, dt, budget:
                        b.log.append(str(dt)) or 0.229)
    first = dataclasses.replace(ROOF, matmul_tflops={"float32": 0.023},
                                compute_dtype={"bfloat16": "float32"})
    t = rl.RoofTracker(b, first, rl.BUDGETS["normal"], every_s=60, clock=lambda: 0.0)
    t.saw({"status": "ok", "cold": True, "pct_roof": 64.0, "pct_compute": 270.0,
           "verdict": "compute-bound"})  # above a roof that is another dtype's rate: no doubt
    assert not t.due()
    t.saw({"status": "ok", "cold": True, "pct_roof": 64.0, "pct_compute": 270.0,
           "verdict": rl.ABOVE_COMPUTE})
    assert t.due()
    now = t.current()
    assert now.matmul_tflops == {"float32": 0.229} and now.compute_dtype == {"bfloat16": "float32"}
    assert first.matmul_tflops == {"float32": 0.023}
    assert b.log == ["copy", "read", "release", "torch.float32", "release"]


def test_drift_is_noted_just_past_its_threshold_either_way():
    assert DRIFT == 0.15
    assert drift_note(20.0, 20.0 * (1 + DRIFT * 1.1)) is not None
    assert drift_note(20.0, 20.0 * (1 - DRIFT * 1.1)) is not None
    # a mid-run reading past the threshold is noted though the end came back
    assert drift_note(20.0, 20.0, [20.0 * (1 - DRIFT * 1.1)]) is not None
    # readings are compared with the first one, not with each other
    assert drift_note(20.0, 20.0 * 1.14, [20.0 * 0.9]) is None


def test_a_read_probe_set_is_whole_rows_of_the_matvec_probe():
    """XLA's matvec read probe takes its set as rows of 4096: a working set of 4x the caches
    split into 64 MiB sets is rarely that, and the probe's NotImplementedError must not
    escape as an internal error of every XLA run on such a host. Here a CPU backend poses as XLA (the same
    torch ops) with an odd split."""
    from backends.cpu import CPUBackend
    from bench import roofline
    from bench.timing import BUDGETS

    class PosingAsXLA(CPUBackend):
        name = "xla"

        def probe_sets(self, nbytes, writes=True):
            return 3

    gbps, _, impl = roofline._probe(PosingAsXLA(), "read", 3 * 16 * 4096 + 3001, BUDGETS["quick"])
    assert gbps > 0 and impl in ("torch_sum", "torch_matvec")


def test_a_roof_the_copy_probe_sets_judges_every_case():
    """On a GPU the copy probe usually reads more than the read probe: % of roof and the ridge
    are against the larger (the roof), so a kernel at 95% of it is not shown at 106%."""
    roof = Roof("cuda", copy_gbps=3000.0, read_gbps=2700.0, working_set_bytes=1 << 30,
                matmul_tflops={"bfloat16": 900.0})
    v = judge(int(2850e9), 2 * int(2850e9) // 1000, 1.0, roof, torch.bfloat16, 8e-6)
    assert v.pct_roof == pytest.approx(95.0, rel=1e-9)
    assert v.ridge == pytest.approx(900e12 / 3000e9, rel=1e-9)
    assert v.verdict == "at the wall"


def test_a_case_just_past_the_compute_margin_is_suspect():
    """The margin over the matmul rate is ABOVE_COMPUTE_MARGIN: just past it a kernel is out of
    reach of any real one (harness suspect), just under it still compute-bound."""
    from bench.roofline import ABOVE_COMPUTE, ABOVE_COMPUTE_MARGIN
    tf = ROOF.tflops(torch.float32)

    def at(frac):  # a compute-bound case (1000 FLOP/B) at `frac` of the matmul rate, in 1 s
        return judge(int(frac * tf * 1e12 / 1000), int(frac * tf * 1e12), 1.0, ROOF,
                     torch.float32, 20e-6).verdict
    assert at(1 + ABOVE_COMPUTE_MARGIN * 1.05) == ABOVE_COMPUTE
    assert at(1 + ABOVE_COMPUTE_MARGIN * 0.95) == "compute-bound"


def test_the_probes_and_the_matmul_rate_come_from_the_median(monkeypatch):
    """The roof is what a kernel can sustain: the median call, not the luckiest one (a min would
    raise the roof and lower every case's % of it)."""
    import bench.roofline as rl
    from bench.timing import summarize
    samples = [1e-3, 1.2e-3, 2e-3, 2.5e-3, 9e-3]  # min, p25, median and mean all differ
    monkeypatch.setattr(rl, "measure", lambda *a, **k: summarize(samples, "test"))
    from backends.cpu import CPUBackend
    backend = CPUBackend()
    n = 4096 * 64
    gbps, _, _ = rl._probe(backend, "read", n, rl.BUDGETS["quick"])
    op = rl.OPS["read"]
    assert gbps == pytest.approx(op.bytes_moved(op.shape(N=n), torch.float32) / 2e-3 / 1e9,
                                 rel=1e-12)
    assert rl.matmul_tflops(backend, torch.float32, rl.BUDGETS["quick"]) == \
        pytest.approx(2 * 1024**3 / 2e-3 / 1e12, rel=1e-12)


def test_a_case_above_its_roof_reading_gets_a_fresh_one_and_a_warm_one_does_not():
    """A cold case timed past 100% of the reading it was judged against says the machine's
    bandwidth rose since that reading: the next case gets a fresh one, however young. A warm
    case within the cache runs past the DRAM roof by nature and says nothing about it."""
    import bench.roofline as rl
    t = rl.RoofTracker(Releasing(), ROOF, rl.BUDGETS["normal"], every_s=60, clock=lambda: 0.0)
    t.saw({"status": "ok", "cold": False, "warm": True, "pct_roof": 300.0,
           "verdict": rl.IN_CACHE})
    t.saw({"status": "ok", "cold": True, "pct_roof": 99.0, "verdict": "at the wall"})
    assert not t.due()
    t.saw({"status": "ok", "cold": True, "pct_roof": 104.0, "verdict": "at the wall"})
    assert t.due()


def test_a_refreshed_roof_is_kept_as_a_reading_and_waits_its_interval(monkeypatch):
    """After a refresh the tracker judges against the new reading, lists it among the readings
    (the drift note is built from them), and measures again only once `every_s` has passed."""
    import bench.roofline as rl
    now = {"t": 0.0}
    monkeypatch.setattr(rl, "_probe", lambda backend, op, n, budget: (30.0, 0.01, "p"))
    monkeypatch.setattr(rl, "probe_elems", lambda backend: 1 << 20)
    monkeypatch.setattr(rl, "matmul_tflops", lambda backend, dt, budget: 0.1)
    t = rl.RoofTracker(Releasing(), ROOF, rl.BUDGETS["normal"], every_s=60,
                       clock=lambda: now["t"])
    assert t.current() is ROOF and t.readings == [25.0]
    now["t"] = 61.0
    assert t.due() and t.current().gbps == 30.0
    assert t.readings == [25.0, 30.0] and t.roof.working_set_bytes == 4 << 20
    now["t"] = 100.0
    assert not t.due()
    now["t"] = 121.0
    assert t.due()


def test_the_drift_range_spans_the_first_reading_too():
    """Readings that all rose past the first: the range the note gives starts at the first."""
    note = drift_note(20.0, 26.0, [25.0])
    assert note is not None and "20.0-26.0 GB/s" in note and "3 readings" in note


@pytest.mark.parametrize("backend, kind, dtype, want", [
    ("cuda", "gpu", torch.int8, torch.float32),       # an integer input: the fp32 matmul rate
    ("cuda", "gpu", torch.bfloat16, torch.bfloat16),
    ("xla", "cpu", torch.bfloat16, torch.float32),    # XLA on a host CPU: fp32's rate
    ("xla", "tpu", torch.bfloat16, torch.bfloat16),
])
def test_the_compute_roofs_dtype_off_the_cpu_backend(backend, kind, dtype, want):
    """A GPU judges a float dtype against its own matmul rate and an integer input against
    fp32's (there is no integer matmul rate to measure); XLA on a host CPU takes fp32's rate,
    on an accelerator the dtype's own."""
    import types
    from bench.roofline import compute_dtype
    assert compute_dtype(types.SimpleNamespace(name=backend, kind_of_device=kind), dtype) == want


def test_a_dtype_computed_in_another_is_judged_against_that_ones_rate(monkeypatch):
    """bf16 inputs on XLA's CPU are judged against the fp32 matmul rate: add_matmul records the
    mapping, so the bf16 case gets a ridge and a % of compute, not none."""
    import types

    import bench.roofline as rl
    monkeypatch.setattr(rl, "matmul_tflops", lambda backend, dt, budget: 0.25)
    b = types.SimpleNamespace(name="xla", kind_of_device="cpu", release=lambda: None)
    roof = dataclasses.replace(ROOF, matmul_tflops={}, compute_dtype={})
    rl.add_matmul(roof, b, torch.bfloat16, rl.BUDGETS["quick"])
    assert roof.matmul_tflops == {"float32": 0.25} and roof.tflops(torch.bfloat16) == 0.25
    assert judge(10**9, 10**12, 1.0, roof, torch.bfloat16, 20e-6).ridge == \
        pytest.approx(0.25e12 / 25e9)


def test_the_verdicts_edges_are_where_the_docs_put_them():
    """docs/measurement.md: compute-bound at or past the ridge, and at >= 80% of the matmul rate;
    launch/latency bound when the median is under the backend's floor (not at it)."""
    at_ridge = judge(10**9, 4 * 10**9, 0.4, ROOF, torch.float32, 20e-6)
    assert at_ridge.arithmetic_intensity == at_ridge.ridge == 4.0
    assert at_ridge.verdict == "compute-bound: below the compute roof"
    unit = dataclasses.replace(ROOF, matmul_tflops={"float32": 1.0})
    at_80 = judge(10**9, 8 * 10**11, 1.0, unit, torch.float32, 20e-6)
    assert at_80.pct_compute == 100 * AT_WALL and at_80.verdict == "compute-bound"
    at_floor = judge(1000, 1, 50e-6, ROOF, torch.float32, 50e-6)
    assert at_floor.verdict == "below the wall: kernel"


@pytest.mark.parametrize("backend, fast, slow", [("cuda", 7e-6, 9e-6), ("cpu", 45e-6, 55e-6),
                                                  ("xla", 45e-6, 55e-6)])
def test_each_backends_latency_floor(backend, fast, slow):
    """A slow small case is blamed on launch latency under 8 us on CUDA and 50 us on the CPU and
    XLA (docs/measurement.md), on the kernel above it."""
    from bench.roofline import latency_floor_s

    def v(t):
        return judge(1000, 1, t, ROOF, torch.float32, latency_floor_s(backend)).verdict
    assert v(fast) == "below the wall: launch/latency bound"
    assert v(slow) == "below the wall: kernel"


def test_a_probes_rotated_sets_are_copies_of_their_own(monkeypatch):
    """Where a probe's working set is split into k rotated sets (XLA's CPU), each is its own
    memory: k views of one buffer would be timed from the cache and raise the roof."""
    from backends.cpu import CPUBackend
    import bench.roofline as rl
    from bench.timing import summarize

    class Split(CPUBackend):
        name = "xla"

        def probe_sets(self, nbytes, writes=True):
            return 3
    seen = []
    impl = rl.OPS["read"].impls["torch_sum"]
    monkeypatch.setitem(rl.OPS["read"].impls, "torch_sum", dataclasses.replace(
        impl, fn=lambda src: seen.append(src) or impl.fn(src)))

    runs = []

    def fake_measure(backend, call, n_sets, budget):
        seen.clear()
        for i in range(n_sets):
            call(i)
        runs.append(list(seen))  # empty for the impls other than torch_sum
        return summarize([1e-3], "test")
    monkeypatch.setattr(rl, "measure", fake_measure)
    rl._probe(Split(), "read", 3 * 16 * 4096, rl.BUDGETS["quick"])
    (timed,) = [r for r in runs if r]
    assert len(timed) == 3
    assert len({s.untyped_storage().data_ptr() for s in timed}) == 3


def test_a_roof_read_beside_a_busy_process_keeps_how_busy(monkeypatch):
    """A probe timed while another process took the CPU reads low (a second run's roof on a
    shared core: half), however tight its spread: each reading keeps the most any of its
    timings shared the CPU, a later quiet reading its own."""
    from backends.cpu import CPUBackend
    import bench.roofline as rl
    from bench.timing import summarize
    figures = [{"cpu_pressure_pct": 0.5, "cpu_steal_pct": 45.0}]

    def fake_measure(backend, call, n_sets, budget):
        call(0)
        st = summarize([1e-3], "test")
        st.sampled = figures[0]
        return st
    monkeypatch.setattr(rl, "measure", fake_measure)
    monkeypatch.setattr(rl, "probe_elems", lambda backend: 16 * 4096)
    backend = CPUBackend()
    roof = rl.measure_roof(backend, [torch.float32], rl.BUDGETS["quick"])
    assert roof.contention_pct == 45.0 and roof.as_dict()["contention_pct"] == 45.0
    figures[0] = {"cpu_pressure_pct": 0.4, "cpu_steal_pct": None}
    t = rl.RoofTracker(backend, roof, rl.BUDGETS["quick"], every_s=0.0, clock=lambda: 0.0)
    assert t.current().contention_pct == 0.4
    figures[0] = {}  # a backend without a contention sampler
    assert rl.measure_roof(backend, None, rl.BUDGETS["quick"]).contention_pct is None
    roof = rl.Roof("cpu", 10.0, 10.0, 1 << 28, contention_pct=0.3)
    figures[0] = {"cpu_pressure_pct": 60.0}
    rl.add_matmul(roof, backend, torch.float32, rl.BUDGETS["quick"])  # a dtype met mid-run
    assert roof.contention_pct == 60.0
