"""The CUDA backend's parts that run without a GPU: the flush modes (on CPU buffers) and the NVML
sampler (driven by a fake NVML module)."""
import sys
import threading
import types

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from backends import cuda
from backends.cuda import (CUDABackend, DEFAULT_FLUSH, FLUSH_ENV, FLUSH_MODES, NVML_KEYS,
                           NvmlSampler, flush_mode_from_env)

L2 = 1 << 16  # the fake L2: 64 KiB, so a flush buffer is 128 KiB


# --- flush modes ----------------------------------------------------------------------------------

def test_flush_mode_from_env():
    assert DEFAULT_FLUSH in ("read", "memset+read")  # the default leaves clean lines
    assert flush_mode_from_env({}) == DEFAULT_FLUSH
    assert flush_mode_from_env({FLUSH_ENV: ""}) == DEFAULT_FLUSH
    for m in FLUSH_MODES:
        assert flush_mode_from_env({FLUSH_ENV: m}) == m
    assert flush_mode_from_env({FLUSH_ENV: " Memset+Read "}) == "memset+read"


@pytest.mark.parametrize("bad", ["zero", "memset,read", "read+memset", "1"])
def test_bad_flush_mode_is_one_clear_error(bad, monkeypatch):
    with pytest.raises(ValueError) as e:
        flush_mode_from_env({FLUSH_ENV: bad})
    msg = str(e.value)
    assert "\n" not in msg and FLUSH_ENV in msg and repr(bad) in msg
    assert all(m in msg for m in FLUSH_MODES)
    monkeypatch.setenv(FLUSH_ENV, bad)
    assert CUDABackend().config_error() == msg
    monkeypatch.setenv(FLUSH_ENV, "memset")
    assert CUDABackend().config_error() is None


def test_backend_reads_the_env_once_and_set_flush_mode_overrides(monkeypatch):
    monkeypatch.setenv(FLUSH_ENV, "memset")
    b = CUDABackend()
    assert b.flush_mode() == "memset"
    b.set_flush_mode("memset+read")
    assert b.flush_mode() == "memset+read"
    b.set_flush_mode(None)  # back to what the environment says
    monkeypatch.setenv(FLUSH_ENV, "read")
    assert b.flush_mode() == "read"
    with pytest.raises(ValueError):
        b.set_flush_mode("bogus")


class OpLog(TorchDispatchMode):
    """Every aten op run inside, with its tensor arguments' sizes in bytes."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = kwargs.get("out")
        self.ops.append((str(func.overloadpacket.__name__),
                         out.untyped_storage().nbytes() if isinstance(out, torch.Tensor) else None))
        return func(*args, **kwargs)


def cpu_flusher(monkeypatch, mode):
    b = CUDABackend()
    b.flush_device = "cpu"
    monkeypatch.setattr(b, "cache_bytes", lambda: L2)
    b.set_flush_mode(mode)
    return b


FACTORIES = {"empty", "zeros", "empty_strided", "full", "ones", "new_empty", "new_zeros"}


@pytest.mark.parametrize("mode", FLUSH_MODES)
def test_flush_buffers_are_allocated_once_and_cover_twice_the_l2(mode, monkeypatch):
    b = cpu_flusher(monkeypatch, mode)
    b.flush()
    bufs = {k: getattr(b, k) for k in ("_memset_buf", "_read_buf", "_read_out")}
    ptrs = {k: v.data_ptr() for k, v in bufs.items() if v is not None}
    if "memset" in mode:
        assert bufs["_memset_buf"].untyped_storage().nbytes() >= 2 * L2
    if "read" in mode:
        assert bufs["_read_buf"].untyped_storage().nbytes() >= 2 * L2
    with OpLog() as log:
        for _ in range(3):
            b.flush()
    assert not FACTORIES & {name for name, _ in log.ops}, log.ops  # no allocation after the first
    assert {k: getattr(b, k).data_ptr() for k in ptrs} == ptrs


def test_each_mode_does_what_it_says(monkeypatch):
    logs = {}
    for mode in FLUSH_MODES:
        b = cpu_flusher(monkeypatch, mode)
        b.flush()
        with OpLog() as log:
            b.flush()
        logs[mode] = log.ops
    assert [n for n, _ in logs["memset"]] == ["zero_"]
    # read: one reduction whose output is a few floats a row, never a write of the buffer's size
    assert [n for n, _ in logs["read"]] == ["sum"]
    assert logs["read"][0][1] <= 2 * L2 // 1000
    assert [n for n, _ in logs["memset+read"]] == ["zero_", "sum"]  # the read comes last
    b = cpu_flusher(monkeypatch, "memset+read")
    b.flush()
    assert b._memset_buf.data_ptr() != b._read_buf.data_ptr()  # two distinct buffers


@pytest.mark.parametrize("mode", FLUSH_MODES)
def test_release_drops_the_flush_buffers_and_empties_the_allocator_cache(mode, monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    b = cpu_flusher(monkeypatch, mode)
    b.flush()
    b.release()
    assert (b._memset_buf, b._read_buf, b._read_out) == (None, None, None) and emptied == [1]
    b.flush()  # a later flush allocates them again
    assert (b._memset_buf is not None) == ("memset" in mode)
    assert (b._read_buf is not None) == ("read" in mode)


def test_flush_uses_the_mode_from_the_environment(monkeypatch):
    monkeypatch.setenv(FLUSH_ENV, "memset")
    b = CUDABackend()
    b.flush_device = "cpu"
    monkeypatch.setattr(b, "cache_bytes", lambda: L2)
    b.flush()
    assert b._memset_buf is not None and b._read_buf is None


# --- NVML sampler ----------------------------------------------------------------------------------

class NotSupported(Exception):
    """As pynvml's NVMLError_NotSupported."""


class NotFound(Exception):
    """As pynvml's NVMLError_NotFound (nvmlDeviceGetSamples: no sample newer than asked)."""
    value = 6


def fake_nvml(util=(100,), power_mw=(300_000,), energy_mj=(1_000_000, 1_050_000), missing=(),
              raising=(), driver=None):
    """A pynvml stand-in: each query returns the next of its values (the last one repeats).
    driver: the driver's utilization sample buffer as it is at each nvmlDeviceGetSamples call
    (a list of (timestamp µs, %) lists, the last one repeating); None: no such function."""
    nv = types.SimpleNamespace(calls={}, NVML_GPU_UTILIZATION_SAMPLES=1)
    if driver is not None and "nvmlDeviceGetSamples" not in missing:
        def samples(handle, kind, since):
            assert handle == "h0" and kind == 1
            if "nvmlDeviceGetSamples" in raising:
                raise NotSupported("nvmlDeviceGetSamples")
            i = nv.calls.get("nvmlDeviceGetSamples", 0)
            nv.calls["nvmlDeviceGetSamples"] = i + 1
            new = [types.SimpleNamespace(timeStamp=t, sampleValue=types.SimpleNamespace(uiVal=v))
                   for t, v in driver[min(i, len(driver) - 1)] if t > since]
            if not new:
                raise NotFound()
            return 1, new[::-1]  # newest first: the sampler sorts them
        nv.nvmlDeviceGetSamples = samples

    def series(name, values, wrap=lambda v: v):
        def fn(handle):
            assert handle == "h0"
            if name in raising:
                raise NotSupported(name)
            i = nv.calls.get(name, 0)
            nv.calls[name] = i + 1
            return wrap(values[min(i, len(values) - 1)])
        if name not in missing:
            setattr(nv, name, fn)

    series("nvmlDeviceGetUtilizationRates", util, lambda v: types.SimpleNamespace(gpu=v, memory=0))
    series("nvmlDeviceGetPowerUsage", power_mw)
    series("nvmlDeviceGetTotalEnergyConsumption", energy_mj)
    return nv


class Clock:
    """The given times in turn, the last one repeating (a poll after stop() reads it)."""

    def __init__(self, *ts):
        self.ts = list(ts)

    def __call__(self):
        return self.ts.pop(0) if len(self.ts) > 1 else self.ts[0]


def run_window(nv, calls=100, timed_s=0.05, t=(10.0, 10.5)):
    """One window of 0.5 s on the fake clock; the interval is so long that exactly two samples
    are taken: the thread's first and stop()'s last. The clock reads t in turn: the start, the
    first poll (where t has three times), the stop, and the last poll reads the stop's."""
    s = NvmlSampler(nv, "h0", interval_s=3600, clock=Clock(*t))
    s.start()
    for _ in range(5000):  # the thread's first poll (or its refusal), before stop() reads t
        if all(got or name in s._dropped for name, got in ((cuda._UTIL, s.util),
                                                           (cuda._POWER, s.power_mw))):
            break
        threading.Event().wait(0.001)
    out = s.stop(calls, timed_s)
    assert s.thread is not None and not s.thread.is_alive()
    return out


def test_sampler_computes_means_and_energy_per_call_from_the_counter():
    out = run_window(fake_nvml(util=(100, 50), power_mw=(300_000, 200_000),
                               energy_mj=(1_000_000, 1_050_000)))
    assert set(out) == set(NVML_KEYS)
    assert out["gpu_util_polled_pct"] == pytest.approx(75.0)
    # 0.5 s is shorter than NVML's sample period may be: the polls are not the window's figure
    assert out["gpu_util_pct"] is None and out["gpu_util_source"] is None
    assert out["power_w"] == pytest.approx(250.0)
    assert out["energy_j_per_call"] == pytest.approx(50.0 / 100)  # 50 J over 100 calls
    assert out["energy_source"] == "counter"
    assert out["nvml_window_s"] == pytest.approx(0.5)
    assert out["nvml_samples"] == 2
    assert out["nvml_timed_frac"] == pytest.approx(0.1)


def test_polls_past_nvmls_longest_period_into_the_window_are_its_figure():
    """Polls at 0.5 s and 1.5 s into the window: the first may describe the GPU before it."""
    out = run_window(fake_nvml(util=(100, 50)), t=(10.0, 10.5, 11.5))
    assert out["gpu_util_polled_pct"] == pytest.approx(75.0)
    assert out["gpu_util_pct"] == pytest.approx(50.0)
    assert out["gpu_util_source"] == "polled" and out["nvml_util_period_s"] is None


SECOND = 1_000_000  # µs


def test_driver_samples_inside_the_window_are_its_utilization():
    """The buffer's newest sample at the start (t0) marks the window's start; the first sample
    after it covers time before the window, so the figure is the mean of those after that one,
    and the period the median spacing of the timestamps."""
    t0 = 50 * SECOND
    before = [(t0 - 2 * SECOND // 6, 3), (t0 - SECOND // 6, 5), (t0, 7)]
    during = [(t0 + k * SECOND // 6, v) for k, v in ((1, 10), (2, 90), (3, 70))]
    out = run_window(fake_nvml(util=(0,), driver=[before, before + during]))
    assert out["gpu_util_source"] == "driver samples"
    assert out["gpu_util_pct"] == pytest.approx(80.0)  # (90 + 70) / 2: not the 10, nor the 0 polled
    assert out["nvml_util_period_s"] == pytest.approx(1 / 6, rel=1e-5)
    assert out["gpu_util_polled_pct"] == pytest.approx(0.0)


@pytest.mark.parametrize("during", [[], [(60 * SECOND, 40)]])
def test_a_window_without_a_whole_driver_sample_period_has_no_utilization(during):
    """No new sample, or only the one whose period began before the window: null, whatever the
    polls say (they describe NVML's last period, mostly before the window)."""
    before = [(50 * SECOND, 7)]
    out = run_window(fake_nvml(util=(100,), driver=[before, before + during]),
                     t=(10.0, 12.0))  # long enough for the polls, were there no driver samples
    assert out["gpu_util_source"] == "driver samples" and out["gpu_util_pct"] is None
    assert out["gpu_util_polled_pct"] == pytest.approx(100.0)
    assert out["nvml_util_period_s"] == (pytest.approx(10.0) if during else None)


@pytest.mark.parametrize("buffer, why", [
    ([[(1, 50)], [(1, 50), (2, 150), (3, 150)]], "a value outside 0-100"),
    (None, "raising"),
])
def test_driver_samples_that_cannot_be_read_fall_back_to_the_polls(buffer, why):
    nv = (fake_nvml(util=(30,), driver=buffer) if buffer else
          fake_nvml(util=(30,), driver=[[(1, 50)]], raising=("nvmlDeviceGetSamples",)))
    out = run_window(nv, t=(10.0, 12.0))
    assert out["gpu_util_source"] == "polled" and out["gpu_util_pct"] == pytest.approx(30.0), why


def test_an_empty_driver_buffer_at_the_start_still_marks_the_window():
    """No sample yet when the window opens (NotFound): every later sample is newer; the first of
    them began before the window all the same."""
    out = run_window(fake_nvml(driver=[[], [(SECOND, 20), (2 * SECOND, 60), (3 * SECOND, 40)]]))
    assert out["gpu_util_pct"] == pytest.approx(50.0)
    assert out["nvml_util_period_s"] == pytest.approx(1.0)


def test_a_driver_buffer_empty_at_both_ends_falls_back_to_the_polls():
    """A driver that never fills its buffer (NotFound at both ends) gave no sample: the polls
    taken a second into the window are the figure, as where the function is missing."""
    out = run_window(fake_nvml(util=(30,), driver=[[]]), t=(10.0, 12.0))
    assert out["gpu_util_source"] == "polled" and out["gpu_util_pct"] == pytest.approx(30.0)


def _opened(nv):
    s = NvmlSampler(nv, "h0", interval_s=0.02)
    s._run = lambda: None  # no polls: only the window's opening reads matter here
    s.start()
    s.stop(0, 0.0)
    return s


@pytest.mark.parametrize("buffer, cap, want", [
    ([(k * SECOND // 6, 5) for k in range(1, 6)], 2.0, 2 / 6 + 0.04),  # two periods, a margin
    ([(k * SECOND // 6, 5) for k in range(1, 6)], 0.3, 0.3),  # between one and two: the cap
    ([(k * SECOND // 6, 5) for k in range(1, 6)], 0.1, 0.0),  # under one period: no figure
    ([(k * SECOND, 5) for k in range(1, 4)], 2.0, 2.0),  # 1 s periods: the normal budget's cap
    ([(SECOND, 5)], 10.0, 2.04),  # one sample: the period unknown, NVML's longest taken
    ([], 10.0, 2.04),  # an empty buffer: the same
])
def test_the_window_needed_is_two_driver_periods_within_the_cap(buffer, cap, want):
    s = _opened(fake_nvml(driver=[buffer]))
    assert s.min_window_s(cap) == pytest.approx(want, rel=1e-5)


def test_without_driver_samples_the_polls_need_a_second():
    s = _opened(fake_nvml(util=(30,)))  # no nvmlDeviceGetSamples
    assert s.min_window_s(2.0) == pytest.approx(1.04) and s.min_window_s(0.3) == 0.0
    assert _opened(fake_nvml(missing=("nvmlDeviceGetUtilizationRates",))).min_window_s(2.0) == 0
    assert _opened(None).min_window_s(10.0) == 0.0


def test_without_the_energy_counter_energy_is_power_times_the_window():
    for nv in (fake_nvml(power_mw=(200_000,), missing=("nvmlDeviceGetTotalEnergyConsumption",)),
               fake_nvml(power_mw=(200_000,), raising=("nvmlDeviceGetTotalEnergyConsumption",)),
               fake_nvml(power_mw=(200_000,), energy_mj=(5, 5))):  # the counter did not move
        out = run_window(nv, calls=50)
        assert out["energy_j_per_call"] == pytest.approx(200.0 * 0.5 / 50)
        assert out["energy_source"] == "power x window"


@pytest.mark.parametrize("how", ["missing", "raising"])
def test_unsupported_queries_are_null_and_the_rest_still_measured(how):
    names = ("nvmlDeviceGetUtilizationRates", "nvmlDeviceGetPowerUsage",
             "nvmlDeviceGetTotalEnergyConsumption")
    out = run_window(fake_nvml(**{how: names[:1]}), t=(10.0, 12.0))
    assert out["gpu_util_pct"] is None and out["nvml_samples"] == 0
    assert out["power_w"] == pytest.approx(300.0) and out["energy_source"] == "counter"
    out = run_window(fake_nvml(**{how: names}), t=(10.0, 12.0))
    assert (out["gpu_util_pct"], out["power_w"], out["energy_j_per_call"]) == (None, None, None)
    assert out["nvml_window_s"] == pytest.approx(2.0)


def test_a_raising_query_is_dropped_for_the_window():
    nv = fake_nvml()
    calls = []
    nv.nvmlDeviceGetPowerUsage = lambda h: calls.append(1) or (_ for _ in ()).throw(NotSupported())
    s = NvmlSampler(nv, "h0", interval_s=0.001)
    s.start()
    threading.Event().wait(0.05)
    s.stop(1, 0.0)
    assert len(calls) == 1


def test_no_nvml_records_every_key_as_null():
    s = NvmlSampler(None, None)
    s.start()
    assert s.thread is None
    assert s.stop(10, 0.1) == dict.fromkeys(NVML_KEYS)


def test_sampler_polls_at_its_interval_in_a_thread_and_stops():
    nv = fake_nvml(util=(40,), power_mw=(100_000,))
    before = threading.active_count()
    s = NvmlSampler(nv, "h0", interval_s=0.005)
    s.start()
    assert s.thread.is_alive() and s.thread.daemon
    threading.Event().wait(0.1)
    out = s.stop(1, 0.0)
    assert not s.thread.is_alive() and threading.active_count() == before
    assert out["nvml_samples"] >= 5  # ~20 polls in 0.1 s; a loaded CI box gets fewer
    assert out["gpu_util_polled_pct"] == pytest.approx(40.0)
    assert out["power_w"] == pytest.approx(100.0)


def test_backend_sampler_from_an_injected_pynvml(monkeypatch):
    nv = fake_nvml()
    nv.nvmlInit = lambda: None
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    monkeypatch.setattr(cuda, "_nvml_handle", lambda m: "h0")  # no GPU to look up here
    b = CUDABackend()
    s = b.sampler()
    assert s.nv is nv and s.handle == "h0"
    assert b.sampler().nv is nv  # looked up once

    def refuse():
        raise RuntimeError("NVML Shared Library Not Found")
    nv.nvmlInit = refuse
    b = CUDABackend()
    s = b.sampler()
    assert s.nv is None  # installed but not starting: its reason, not "install nvidia-ml-py"
    assert b.clocks()["source"] == "unknown (NVML does not start: NVML Shared Library Not Found)"

    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: import raises
    assert CUDABackend().clocks()["source"] == \
        "unknown (install nvidia-ml-py for clocks and throttle reasons)"


@pytest.mark.parametrize("failing", ["power", "utilization"])
def test_a_query_that_fails_part_way_through_the_window_is_null(failing):
    """One query read twice, then NotSupported (a container losing access, a board that stops
    answering): the polls of the window's start are not the window's figure (power, energy from
    it; utilization, its polled mean), and the query that kept answering is kept."""
    nv = fake_nvml(util=(90,), power_mw=(200_000,),
                   missing=("nvmlDeviceGetTotalEnergyConsumption",))
    reads = {"n": 0}

    def query(answer):
        def fn(h):
            reads["n"] += 1
            if reads["n"] > 2:
                raise NotSupported(failing)
            return answer
        return fn
    if failing == "power":
        nv.nvmlDeviceGetPowerUsage = query(200_000)
    else:
        nv.nvmlDeviceGetUtilizationRates = query(types.SimpleNamespace(gpu=90, memory=0))
    s = NvmlSampler(nv, "h0", interval_s=0.001)
    s.start()
    while reads["n"] <= 2:
        threading.Event().wait(0.001)
    out = s.stop(10, 0.001)
    if failing == "power":
        assert out["power_w"] is None and out["energy_j_per_call"] is None
        assert out["gpu_util_polled_pct"] == pytest.approx(90.0)
    else:
        assert out["gpu_util_polled_pct"] is None and out["gpu_util_pct"] is None
        assert out["nvml_samples"] == 0 and out["power_w"] == pytest.approx(200.0)


def test_the_driver_period_is_the_median_spacing_of_its_samples():
    """A sample the driver wrote early (1/12 s) or one it missed (a 2/6 s gap) moves neither the
    period recorded nor the window asked for: the median of the spacings, here 1/6 s."""
    stamps = [0, SECOND // 12, 3 * SECOND // 12, 5 * SECOND // 12, 7 * SECOND // 12,
              11 * SECOND // 12]
    assert cuda._median_gap_s(stamps) == pytest.approx(1 / 6, rel=1e-5)
    s = _opened(fake_nvml(driver=[[(SECOND + t, 5) for t in stamps]]))
    assert s.min_window_s(2.0) == pytest.approx(2 / 6 + 0.04, rel=1e-5)


def test_the_nvml_handle_is_found_by_the_gpus_pci_bus_id_in_hex(monkeypatch):
    """NVML numbers every GPU of the machine, CUDA only the visible ones: the handle is looked up
    by bus id, written as NVML writes it (hex, "00000000:1b:00.0" for bus 27); without torch's
    PCI fields, by torch's index."""
    asked = []
    nv = types.SimpleNamespace(
        nvmlDeviceGetHandleByPciBusId=lambda bus: asked.append(bus) or f"bus {bus}",
        nvmlDeviceGetHandleByIndex=lambda i: f"index {i}")
    props = types.SimpleNamespace(pci_domain_id=0, pci_bus_id=27, pci_device_id=0)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    assert cuda._nvml_handle(nv) == "bus 00000000:1b:00.0" and asked == ["00000000:1b:00.0"]
    del props.pci_bus_id  # an older torch
    assert cuda._nvml_handle(nv) == "index 1"


# --- clocks ---------------------------------------------------------------------------------------

def fake_clock_nvml(raising=(), missing=()):
    """A pynvml stand-in for CUDABackend.clocks(): each query answers a fixed value."""
    nv = types.SimpleNamespace(NVML_CLOCK_SM=0, NVML_CLOCK_MEM=1, NVML_TEMPERATURE_GPU=0)
    answers = {
        "nvmlDeviceGetClockInfo": lambda h, c: (1980, 2619)[c],
        "nvmlDeviceGetMaxClockInfo": lambda h, c: (1980, 2619)[c],
        "nvmlDeviceGetPowerUsage": lambda h: 350_000,
        "nvmlDeviceGetEnforcedPowerLimit": lambda h: 700_000,
        "nvmlDeviceGetTemperature": lambda h, s: 51,
        "nvmlDeviceGetCurrentClocksThrottleReasons": lambda h: 0x4 | 0x1,
        "nvmlDeviceGetMemoryBusWidth": lambda h: 5120,
        "nvmlDeviceGetEccMode": lambda h: (1, 1),
    }
    for name, fn in answers.items():
        if name in missing:
            continue
        if name in raising:
            def fn(*a, _n=name):
                raise NotSupported(_n)
        setattr(nv, name, fn)
    return nv


def clock_backend(monkeypatch, nv):
    b = CUDABackend()
    monkeypatch.setattr(b, "_nvml_device", lambda: (nv, "h0", ""))
    return b


def test_clocks_all_figures(monkeypatch):
    c = clock_backend(monkeypatch, fake_clock_nvml()).clocks()
    assert c["source"] == "nvml" and c["sm_mhz"] == 1980 and c["mem_max_mhz"] == 2619
    assert c["power_w"] == pytest.approx(350.0) and c["power_limit_w"] == pytest.approx(700.0)
    assert c["throttle"] == ["sw_power_cap"] and c["ecc"] is True
    assert c["theoretical_gbps"] == pytest.approx(2 * 2619e6 * 5120 / 8 / 1e9, abs=0.1)


def test_clocks_keep_every_figure_but_the_one_nvml_does_not_support(monkeypatch):
    """Power NotSupported (some boards, many containers) leaves that figure null, not the whole
    record "nvml error": the clocks and throttle reasons beside every GPU run are kept."""
    nv = fake_clock_nvml(raising=("nvmlDeviceGetPowerUsage", "nvmlDeviceGetEccMode"))
    c = clock_backend(monkeypatch, nv).clocks()
    assert c["source"] == "nvml" and c["power_w"] is None
    assert c["sm_mhz"] == 1980 and c["power_limit_w"] == pytest.approx(700.0)
    assert c["throttle"] == ["sw_power_cap"] and "ecc" not in c


def test_clocks_read_the_renamed_event_reasons(monkeypatch):
    nv = fake_clock_nvml(missing=("nvmlDeviceGetCurrentClocksThrottleReasons",))
    c = clock_backend(monkeypatch, nv).clocks()
    assert c["throttle"] is None and c["sm_mhz"] == 1980  # neither name: null, the rest kept
    nv.nvmlDeviceGetCurrentClocksEventReasons = lambda h: 0x40
    assert clock_backend(monkeypatch, nv).clocks()["throttle"] == ["hw_thermal"]


def test_clocks_when_nvml_answers_nothing(monkeypatch):
    everything = ("nvmlDeviceGetClockInfo", "nvmlDeviceGetMaxClockInfo", "nvmlDeviceGetPowerUsage",
                  "nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetTemperature",
                  "nvmlDeviceGetCurrentClocksThrottleReasons", "nvmlDeviceGetMemoryBusWidth",
                  "nvmlDeviceGetEccMode")
    c = clock_backend(monkeypatch, fake_clock_nvml(raising=everything)).clocks()
    assert c["source"].startswith("nvml error") and "nvmlDeviceGetClockInfo" in c["source"]


def test_ecc_is_the_current_mode_not_the_pending_one(monkeypatch):
    """nvmlDeviceGetEccMode answers (current, pending): ECC turned on for the next reboot is off
    for this run."""
    nv = fake_clock_nvml()
    nv.nvmlDeviceGetEccMode = lambda h: (0, 1)
    assert clock_backend(monkeypatch, nv).clocks()["ecc"] is False


# --- the last-level cache the flush and the probes must defeat ------------------------------------

def fake_props(monkeypatch, name, l2, arch=None):
    props = types.SimpleNamespace(name=name, L2_cache_size=l2)
    if arch is not None:
        props.gcnArchName = arch
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)


@pytest.mark.parametrize("name, arch", [("AMD Instinct MI300X", "gfx942:sramecc+:xnack-"),
                                        ("AMD Instinct MI325X", None), ("", "gfx942"),
                                        ("AMD Instinct MI355X", "gfx950:sramecc+:xnack-")])
def test_cache_bytes_covers_the_infinity_cache(monkeypatch, name, arch):
    """ROCm reports a 4 MB L2 for an MI300X; its 256 MB Infinity Cache behind it would keep a
    GEMV's weights through a flush of 8 MB and time them at cache speed."""
    fake_props(monkeypatch, name, 4 * 2**20, arch)
    assert CUDABackend().cache_bytes() >= 256 * 10**6


@pytest.mark.parametrize("name, arch, mib", [
    ("AMD Radeon RX 7900 XTX", "gfx1100", 96), ("AMD Radeon PRO W7900", "gfx1100", 96),
    ("AMD Radeon RX 9070 XT", "gfx1201", 64), ("AMD Radeon RX 6900 XT", "gfx1030", 128)])
def test_cache_bytes_covers_a_radeons_infinity_cache(monkeypatch, name, arch, mib):
    """A Radeon's 6-8 MB L2 sits in front of a 64-128 MB Infinity Cache: a 32 MiB GEMV would
    stay in it through a flush of twice the L2."""
    fake_props(monkeypatch, name, 6 * 2**20, arch)
    assert CUDABackend().cache_bytes() == mib * 2**20


def test_cache_bytes_is_the_reported_l2_on_nvidia(monkeypatch):
    fake_props(monkeypatch, "NVIDIA H100 80GB HBM3", 50 * 2**20)
    assert CUDABackend().cache_bytes() == 50 * 2**20


def test_device_info_from_torchs_properties(monkeypatch):
    """The record's device: memory in bytes as torch reports it, capability "major.minor", the
    chip judged by name and memory (GH200's GPU calls itself "H100 96GB HBM3": not the 80 GB
    H100 SXM), and an unreported L2 taken as 50 MiB (H100's) so that the flush still covers it."""
    props = types.SimpleNamespace(name="NVIDIA H100 96GB HBM3", total_memory=95 * 2**30 + 123,
                                  L2_cache_size=0, multi_processor_count=132, major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    b = CUDABackend()
    monkeypatch.setattr(b, "_nvml_device", lambda: (None, None, "unknown (no NVML here)"))
    info = b.device_info()
    assert info["chip"] is None and "larger part" in info["chip_note"]
    assert info["memory_bytes"] == 95 * 2**30 + 123 and info["capability"] == "9.0"
    assert info["sm_count"] == 132 and info["cache_bytes"] == 50 * 2**20
    assert info["clocks"] == {"source": "unknown (no NVML here)"}
    props.name, props.total_memory = "NVIDIA H100 80GB HBM3", 81559 * 2**20
    assert b.device_info()["chip"] == "h100-sxm"


def test_throttle_labels_are_nvmls_own_bits():
    """Each throttle reason a record names is NVML's bit for it (nvml.h, as pynvml spells it):
    a label on the wrong bit would blame power for what heat did. Runs where nvidia-ml-py is
    installed (`.[nvml]`, the GPU machine)."""
    pynvml = pytest.importorskip("pynvml")
    from backends.cuda import _THROTTLE
    nvml_names = {"gpu_idle": "GpuIdle", "app_clocks": "ApplicationsClocksSetting",
                  "sw_power_cap": "SwPowerCap", "hw_slowdown": "HwSlowdown",
                  "sw_thermal": "SwThermalSlowdown", "hw_thermal": "HwThermalSlowdown",
                  "hw_power_brake": "HwPowerBrakeSlowdown", "display_clocks": "DisplayClockSetting"}
    assert _THROTTLE == {getattr(pynvml, "nvmlClocksThrottleReason" + n): label
                         for label, n in nvml_names.items()}


def test_other_processes_on_the_gpu_are_those_not_of_this_run(monkeypatch):
    """NVML lists every process with a context on the GPU: this one and the run's CLI are ours;
    a list without this process is of another pid namespace (a container) and says nothing."""
    import os
    proc = types.SimpleNamespace
    listed = [proc(pid=os.getpid(), usedGpuMemory=2 * 2**30),
              proc(pid=os.getppid(), usedGpuMemory=2**30),
              proc(pid=999_999_001, usedGpuMemory=20480 * 2**20),
              proc(pid=999_999_002, usedGpuMemory=None)]  # the driver does not say (MIG)
    nv = types.SimpleNamespace(nvmlDeviceGetComputeRunningProcesses=lambda h: listed)
    assert cuda.other_processes(nv, "h0") == [{"pid": 999_999_001, "used_mib": 20480},
                                              {"pid": 999_999_002, "used_mib": None}]
    nv.nvmlDeviceGetComputeRunningProcesses = lambda h: listed[:2]
    assert cuda.other_processes(nv, "h0") == []
    nv.nvmlDeviceGetComputeRunningProcesses = lambda h: listed[2:]  # host pids in a container
    assert cuda.other_processes(nv, "h0") is None

    def refuses(h):
        raise NotSupported("nvmlDeviceGetComputeRunningProcesses")
    nv.nvmlDeviceGetComputeRunningProcesses = refuses
    assert cuda.other_processes(nv, "h0") is None
    # the clocks beside every record carry it
    clocks_nv = fake_clock_nvml()
    clocks_nv.nvmlDeviceGetComputeRunningProcesses = lambda h: listed
    c = clock_backend(monkeypatch, clocks_nv).clocks()
    assert [p["pid"] for p in c["other_processes"]] == [999_999_001, 999_999_002]


@pytest.mark.cuda
def test_other_processes_through_the_real_binding_never_name_this_process():
    """On a GPU with nvidia-ml-py: NVML's list through the installed binding, this process's
    context open, is None (another pid namespace, no access) or leaves this process out."""
    import os
    pytest.importorskip("pynvml")
    torch.zeros(1, device="cuda")
    nv, handle, why = CUDABackend()._nvml_device()
    if nv is None:
        pytest.skip(why)
    others = cuda.other_processes(nv, handle)
    assert others is None or os.getpid() not in [p["pid"] for p in others]


def test_the_throttle_note_reads_nvmls_own_labels():
    from bench.notes import THROTTLED
    assert set(THROTTLED) <= set(cuda._THROTTLE.values())
