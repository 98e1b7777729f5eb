"""The sampling loop's rules on a fake clock and a fake backend (no real timings): what stops it,
what the warm-up does and keeps out of the samples, how input sets are rotated, and how the base
backend's timer reads its clock."""
import types

import pytest

import bench.timing as timing
from backends import Backend
from bench.timing import Budget, measure, stop_rule


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def perf_counter(self):
        return self.t


class Scripted(Backend):
    """Each call "takes" `warm_s` before the samples begin and `sample_s` after, on the fake
    clock; records which input set every call got and in which phase."""
    name = "fake"

    def __init__(self, clock, warm_s=1e-3, sample_s=1e-3):
        self.clock, self.warm_s, self.sample_s = clock, warm_s, sample_s
        self.sampling = False
        self.calls = []  # (phase, set index)

    def start_sampling(self):
        self.sampling = True

    def time_calls(self, call, idxs, flush=True):
        d = self.sample_s if self.sampling else self.warm_s
        for i in idxs:
            call(i)
            self.calls.append(("sample" if self.sampling else "warm-up", i))
            self.clock.t += d
        return [d] * len(idxs)


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=c.perf_counter))
    return c


def test_stop_rule_waits_for_the_minimum_time():
    """nvbench's min time: steady samples do not stop the sampling before min_time_s."""
    b = Budget(min_samples=10, max_samples=100, min_time_s=0.5, max_time_s=10.0)
    assert stop_rule([1.0] * 20, 0.1, b) is None
    assert stop_rule([1.0] * 20, 0.6, b) == "stdrel"


def test_median_precise_uses_the_standard_error_of_the_median():
    """The median's standard error is ~1.2533 sigma / sqrt(n): 40 samples with 9% spread pin it
    to ~1.8%, not within 0.5% (dividing by n instead would stop here)."""
    b = Budget(min_samples=10, max_samples=10**6, min_time_s=0.0, max_time_s=10.0)
    assert stop_rule([1.0, 1.2] * 20, 0.1, b) is None
    # 1.2533 * 0.0913 / sqrt(800) = 0.0040: pinned down
    assert stop_rule([1.0, 1.2] * 400, 0.1, b) == "median_precise"


def test_warm_up_runs_for_its_time_and_its_calls_are_not_samples(clock):
    """Warm-up by time (compiles, page faults, clocks ramping): it lasts warmup_s on the clock,
    and none of its (slow) calls is among the samples summarized."""
    b = Scripted(clock, warm_s=1.0e-3, sample_s=2e-4)
    budget = Budget(warmup_s=0.05, min_samples=10, max_samples=40, min_time_s=0.0,
                    max_time_s=10.0, batch=5)
    st = measure(b, lambda i: None, 1, budget, on_sampling=b.start_sampling)
    warm = [c for c in b.calls if c[0] == "warm-up"]
    assert len(warm) >= 50  # 50 ms of 1 ms calls
    assert st.n == len(b.calls) - len(warm)
    assert st.max == st.median == pytest.approx(2e-4)  # no warm-up sample leaked in


def test_sets_are_rotated_round_robin_through_warm_up_and_samples(clock):
    """Every call takes the next input set, across batches and the warm-up's end: a rotation
    that restarts or sticks leaves the first sets cached."""
    b = Scripted(clock)
    budget = Budget(warmup_s=0.004, min_samples=10, max_samples=30, min_time_s=0.0,
                    max_time_s=10.0, batch=4)
    measure(b, lambda i: None, 7, budget, on_sampling=b.start_sampling)
    idx = [i for _, i in b.calls]
    assert idx == [k % 7 for k in range(len(idx))]
    assert {i for p, i in b.calls if p == "sample"} == set(range(7))


class _Ordered(Backend):
    """The base backend's timer over a logged flush, sync and wait, on a fake ns clock."""
    name = "fake"

    def __init__(self, log):
        self.log = log

    def flush(self):
        self.log.append("flush")

    def synchronize(self):
        self.log.append("sync")

    def block(self, out):
        self.log.append(("block", out))


def test_base_time_calls_syncs_before_and_waits_for_the_result_inside_the_timing(monkeypatch):
    """The defect behind published bandwidths above a chip's peak is a clock read before the work
    finished: the timer syncs before its start and waits for the call's result before its stop,
    flush outside. Durations are the ns clock's difference in seconds."""
    import backends.base as base
    log = []
    ns = iter([1_000, 3_500_000, 10_000_000, 10_250_000])

    def clock_ns():
        t = next(ns)
        log.append("clock")
        return t
    monkeypatch.setattr(base, "time", types.SimpleNamespace(perf_counter_ns=clock_ns))
    b = _Ordered(log)
    got = b.time_calls(lambda i: log.append(("call", i)) or f"out{i}", [0, 1])
    assert log == ["flush", "sync", "clock", ("call", 0), ("block", "out0"), "clock",
                   "flush", "sync", "clock", ("call", 1), ("block", "out1"), "clock"]
    assert got == pytest.approx([3.499e-3, 2.5e-4])


def test_the_stop_names_the_rule_that_was_met():
    """0.84% spread is not nvbench's 0.5% stdrel, though 10 such samples pin the median to 0.33%:
    the record must say `median_precise`, which a reader weighs differently."""
    b = Budget(min_samples=10, max_samples=1000, min_time_s=0.0, max_time_s=10.0)
    assert stop_rule([1.0, 1.016] * 5, 0.1, b) == "median_precise"
    assert stop_rule([1.0, 1.008] * 5, 0.1, b) == "stdrel"  # 0.42%


def test_the_time_caps_count_from_the_first_sample_not_from_the_warm_up(clock):
    """min_time_s and max_time_s bound the sampling window: a long warm-up (compiles, clock
    ramp) counted against them would end the timing after its first batch, a median of a
    handful of samples reported as if the cap had been spent sampling."""
    b = Scripted(clock, warm_s=1e-3, sample_s=1e-3)
    budget = Budget(warmup_s=0.5, min_samples=10**6, max_samples=10**6, min_time_s=0.0,
                    max_time_s=0.1, batch=10)
    st = measure(b, lambda i: None, 1, budget, on_sampling=b.start_sampling)
    assert st.stop == "max_time"
    assert st.n in (100, 110)  # 0.1 s of 1 ms samples, to the batch that passes the cap


def test_median_precise_needs_the_full_standard_error_factor():
    """At 400 samples of 9% spread the median's standard error is 1.2533 * 0.091 / 20 = 0.57%,
    over the 0.5% target: the sampling goes on. A factor of 1 (the mean's standard error) would
    stop it here and call a median known to 0.57% precise."""
    b = Budget(min_samples=10, max_samples=10**6, min_time_s=0.0, max_time_s=10.0)
    assert stop_rule([1.0, 1.2] * 200, 0.1, b) is None
    assert stop_rule([1.0, 1.2] * 400, 0.1, b) == "median_precise"


def test_the_summary_mean_is_the_mean_and_rel_std_is_against_it():
    """Stats.mean is the samples' mean and rel_std the sample standard deviation over it: one
    stalled sample moves the mean, not the median, and a mean taken as the median would hide
    the stall from rel_std."""
    from bench.timing import summarize
    st = summarize([1.0, 2.0, 3.0, 4.0, 100.0], "max_samples")
    assert st.mean == pytest.approx(22.0) and st.median == 3.0
    assert st.rel_std == pytest.approx(43.6176570 / 22.0, rel=1e-6)


def test_a_backend_that_defines_only_synchronize_is_timed_to_the_end_of_its_work(monkeypatch):
    """The default wait for a call's result is a device sync: a plugin backend that defines
    synchronize and nothing else still has each call's work inside its timing window."""
    import backends.base as base
    log = []
    ns = iter(range(0, 10**6, 1000))
    monkeypatch.setattr(base, "time", types.SimpleNamespace(
        perf_counter_ns=lambda: log.append("clock") or next(ns)))

    class SyncOnly(Backend):
        name = "fake"

        def synchronize(self):
            log.append("sync")
    SyncOnly().time_calls(lambda i: log.append("call"), [0], flush=False)
    assert log == ["sync", "clock", "call", "sync", "clock"]
