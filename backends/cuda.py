"""The CUDA backend: CUDA-event timing with the last-level cache (the L2; AMD's Infinity Cache
where there is one) flushed (2x its size) before every sample.

Each sample is queued behind a spin kernel (nvbench's blocking kernel, `torch.cuda._sleep`) that
holds the GPU until the host has queued the start event, the call and the end event: a
microsecond kernel whose Python launch takes longer than the flush would otherwise be timed with
the host's launch gap inside its events. The hold is twice the longest host issue time of the
previous batch (at least HOLD_MIN_S, at most HOLD_MAX_S: a batch that compiled or autotuned
holds the next one long, which is safe, only slower).

The flush (`DECODEWALL_FLUSH`, FLUSH_MODES) reads a 2x-L2 buffer by default: a memset would leave
the L2 full of dirty lines whose write-back the next timed kernel pays (docs/measurement.md,
"Cold caches"). Its buffers are allocated on the first flush and reused.

Clocks, power and throttle reasons come from NVML (nvidia-ml-py) when it is installed; without it
they are recorded as unknown rather than guessed. While a case is timed, NvmlSampler records the
GPU's utilization, power and energy over the timing window (null where NVML cannot say).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Mapping

import torch

from .base import Backend
from .catalog import detect

_THROTTLE = {  # nvmlClocksThrottleReason* bits
    0x1: "gpu_idle", 0x2: "app_clocks", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
    0x20: "sw_thermal", 0x40: "hw_thermal", 0x80: "hw_power_brake", 0x100: "display_clocks",
}


def _nvml() -> tuple[Any, str]:
    """(pynvml, "") once NVML starts, else (None, why): not installed, or installed and refusing
    to start (no driver library in a container, say), which installing cannot fix."""
    try:
        import pynvml
    except Exception:
        return None, "unknown (install nvidia-ml-py for clocks and throttle reasons)"
    try:
        pynvml.nvmlInit()
    except Exception as e:
        return None, f"unknown (NVML does not start: {e})"
    return pynvml, ""


def _nvml_handle(nv: Any) -> Any:
    """NVML's handle of torch's current GPU, found by PCI bus id where torch reports it: NVML
    numbers every GPU of the machine, CUDA only the visible ones (CUDA_VISIBLE_DEVICES)."""
    i = torch.cuda.current_device()
    p = torch.cuda.get_device_properties(i)
    try:
        bus = f"{p.pci_domain_id:08x}:{p.pci_bus_id:02x}:{p.pci_device_id:02x}.0"
        return nv.nvmlDeviceGetHandleByPciBusId(bus)
    except Exception:  # an older torch without the PCI fields, or an older NVML binding
        return nv.nvmlDeviceGetHandleByIndex(i)


# AMD Infinity Cache (MALL), by gfx arch or catalog id: not in torch's device properties.
# gfx942 is the MI300 family; the catalog's MI300X and MI325X have 256 MB (backends/chips.json).
# gfx950 (MI350X, MI355X) has 256 MB behind the same 4 MB-per-XCD L2 that ROCm reports.
# Radeon (RDNA 2-4) parts of one die differ (a 7900 XTX has 96 MB, a 7900 GRE 64): each arch
# gets its largest part's, from AMD's product specifications, since a larger flush only costs time.
_INFINITY_CACHE = {"gfx942": 256 * 1024**2, "gfx950": 256 * 1024**2, "mi300x": 256 * 1024**2,
                   "mi325x": 256 * 1024**2,
                   "gfx1030": 128 * 1024**2,  # Navi 21: RX 6800-6950 XT, PRO W6800
                   "gfx1031": 96 * 1024**2,  # Navi 22: RX 6700-6750 XT
                   "gfx1032": 32 * 1024**2,  # Navi 23: RX 6600-6650 XT
                   "gfx1034": 16 * 1024**2,  # Navi 24: RX 6500 XT
                   "gfx1100": 96 * 1024**2,  # Navi 31: RX 7900 XTX, PRO W7900
                   "gfx1101": 64 * 1024**2,  # Navi 32: RX 7800 XT, 7700 XT (48)
                   "gfx1102": 32 * 1024**2,  # Navi 33: RX 7600 (XT)
                   "gfx1151": 32 * 1024**2,  # Strix Halo (Ryzen AI Max)
                   "gfx1200": 32 * 1024**2,  # Navi 44: RX 9060 XT
                   "gfx1201": 64 * 1024**2}  # Navi 48: RX 9070 (XT)

_CLOCK_KEYS = ("sm_mhz", "mem_mhz", "sm_max_mhz", "mem_max_mhz", "power_w", "power_limit_w",
               "temp_c")


def other_processes(nv: Any, handle: Any) -> list[dict[str, Any]] | None:
    """The processes other than this one and its parent (the run's CLI) that hold a compute
    context on this GPU, as [{pid, used_mib}]: what may have shared its SMs and bandwidth. None
    where NVML cannot say, or does not list this process itself: its pids are then of another
    namespace (a container's view of the host), or this process has no context yet."""
    try:
        procs = list(nv.nvmlDeviceGetComputeRunningProcesses(handle))
    except Exception:  # an older binding, NotSupported, no permission
        return None
    pids = [getattr(p, "pid", None) for p in procs]
    if os.getpid() not in pids:
        return None
    ours = {os.getpid(), os.getppid()}
    out = []
    for p, pid in zip(procs, pids):
        if pid in ours:
            continue
        used = getattr(p, "usedGpuMemory", None)  # None where the driver does not say (MIG)
        out.append({"pid": pid, "used_mib": round(used / 2**20) if isinstance(used, int)
                    and not isinstance(used, bool) else None})
    return out


HOLD_MIN_S = 50e-6
HOLD_MAX_S = 20e-3
# cycles per second assumed for the spin: above every GPU's boost clock (the fastest run near
# 2.5-2.9 GHz), so the hold lasts at least what is asked; a slower clock only holds longer
SPIN_HZ = 3.0e9

# --- the L2 flush -------------------------------------------------------------------------------

FLUSH_ENV = "DECODEWALL_FLUSH"
# memset: zero a 2x-L2 buffer (leaves dirty lines); read: sum a 2x-L2 buffer into one float a
# row (leaves clean lines); memset+read: both, on two buffers (clean lines, after a memset).
FLUSH_MODES = ("read", "memset", "memset+read")
DEFAULT_FLUSH = "read"
READ_ROW = 4096  # floats a row of the read buffer: its row sums are 1/4096 of the bytes read


def flush_mode_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The flush mode `DECODEWALL_FLUSH` asks for (unset or empty: DEFAULT_FLUSH); ValueError
    naming the modes for any other value."""
    raw = (os.environ if environ is None else environ).get(FLUSH_ENV, "")
    mode = raw.strip().lower()
    if not mode:
        return DEFAULT_FLUSH
    if mode not in FLUSH_MODES:
        raise ValueError(f"{FLUSH_ENV}={raw!r} is not a flush mode (one of: {', '.join(FLUSH_MODES)})")
    return mode


# --- NVML sampling over a timing window ---------------------------------------------------------

SAMPLE_S = 0.02  # NVML polling interval while a case is timed
JOIN_S = 2.0  # the most stop() waits for the sampling thread (an NVML call that hangs)
# NVML's utilization is busy time over its own sample period, "between 1 second and 1/6 second,
# depending on the product" (nvmlUtilization_t): a poll describes the window alone only once the
# window is older than the longest of those periods
POLLED_MIN_WINDOW_S = 1.0
_UTIL, _POWER, _ENERGY = ("nvmlDeviceGetUtilizationRates", "nvmlDeviceGetPowerUsage",
                          "nvmlDeviceGetTotalEnergyConsumption")
_SAMPLES = "nvmlDeviceGetSamples"  # the driver's own timestamped utilization samples
NVML_GPU_UTILIZATION_SAMPLES = 1  # nvmlSamplingType_t
NVML_ERROR_NOT_FOUND = 6  # nvmlDeviceGetSamples: no sample newer than the timestamp given
# nvmlValueType_t -> the nvmlValue_t field that holds a sample
_VALUE_FIELD = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal",
                6: "usVal"}
NVML_KEYS = ("gpu_util_pct", "gpu_util_source", "gpu_util_polled_pct", "nvml_util_period_s",
             "power_w", "energy_j_per_call", "energy_source", "nvml_window_s", "nvml_samples",
             "nvml_timed_frac")


def _median_gap_s(stamps_us: list[int]) -> float | None:
    """The median spacing of sorted timestamps (µs) in seconds; None with fewer than two."""
    gaps = sorted(b - a for a, b in zip(stamps_us, stamps_us[1:]) if b > a)
    return gaps[len(gaps) // 2] / 1e6 if gaps else None


class NvmlSampler:
    """GPU utilization and power over one timing window: polled by a background thread every
    `interval_s`, the driver's own utilization samples read at the window's ends, and the
    energy counter read at its two ends.

    `gpu_util_pct` is only a figure of the window: the mean of the driver's samples whose whole
    sample period lies inside it (source "driver samples"), or, where the driver gives no samples,
    the mean of the polls taken at least POLLED_MIN_WINDOW_S into the window ("polled"); else
    null. Earlier polls describe partly the GPU before the window: the mean of all of them is
    kept apart as `gpu_util_polled_pct`. The thread only talks to NVML (the driver), never to a
    CUDA stream, so the work timed on the GPU is unchanged. Each NVML function that is missing
    or raises (NVMLError_NotSupported on some boards) is dropped for the window and its figure
    recorded as null; `nv=None` (no NVML) records every figure as null. See docs/measurement.md
    ("GPU utilization, power and energy")."""

    def __init__(self, nv: Any, handle: Any, interval_s: float = SAMPLE_S,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.nv, self.handle, self.interval_s, self.clock = nv, handle, interval_s, clock
        self.util: list[tuple[float, float]] = []  # (clock, %) a poll
        self.power_mw: list[float] = []
        self._dropped: set[str] = set()
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None
        self._t0 = 0.0
        self._e0: float | None = None
        self._ts0: int | None = None  # the driver's newest utilization sample at the start (µs)
        self._period0: float | None = None  # its sample period then (s), from the buffer

    def _read(self, name: str) -> Any:
        """One NVML query, or None where NVML is absent or the function is missing or raised;
        a function that failed once is dropped for the rest of the window."""
        if self.nv is None or name in self._dropped:
            return None
        try:
            return getattr(self.nv, name)(self.handle)
        except Exception:  # AttributeError (an older binding), NVMLError_NotSupported, ...
            self._dropped.add(name)
            return None

    def _driver_samples(self, since: int) -> list[tuple[int, float]] | None:
        """The driver's utilization samples newer than `since` (µs), as (timestamp, %) in time
        order; [] when it holds none newer; None where it gives none at all (no function,
        NotSupported, a value of an unknown type or outside 0-100): dropped for the window."""
        if self.nv is None or _SAMPLES in self._dropped:
            return None
        try:
            kind = getattr(self.nv, "NVML_GPU_UTILIZATION_SAMPLES", NVML_GPU_UTILIZATION_SAMPLES)
            vtype, samples = getattr(self.nv, _SAMPLES)(self.handle, kind, since)
            field = _VALUE_FIELD[vtype]
            out = sorted((int(x.timeStamp), float(getattr(x.sampleValue, field)))
                         for x in samples)
            if any(not 0 <= v <= 100 for _, v in out):
                raise ValueError("not a percentage")
            return out
        except Exception as e:
            if getattr(e, "value", None) == NVML_ERROR_NOT_FOUND:  # none newer than `since`
                return []
            self._dropped.add(_SAMPLES)
            return None

    def _driver_util(self) -> tuple[float | None, float | None] | None:
        """(mean %, sample period s) of the driver's samples inside the window, or None where
        the driver gives none (its buffer empty at both ends counts as none). A sample holds the
        busy time since the one before it: the first sample after the start began before the
        window, so only those after it count; the period is the median spacing of the
        timestamps."""
        if self._ts0 is None:
            return None
        new = self._driver_samples(self._ts0)
        if new is None or (not new and not self._ts0):
            return None
        stamps = ([self._ts0] if self._ts0 else []) + [t for t, _ in new]
        period = _median_gap_s(stamps)
        inside = [v for _, v in new[1:]]
        return (sum(inside) / len(inside) if inside else None), period

    def min_window_s(self, cap: float) -> float:
        """How long the window must last for `gpu_util_pct` to describe it, if that fits in `cap`
        seconds: two driver sample periods (the first sample after the start covers time before
        the window), by the buffer's spacing as the window opened (unknown: NVML's longest, 1 s);
        where a cap between one and two periods allows, the cap (a whole period then fits inside
        when the first sample comes early enough). Without driver samples, the polls' 1 s plus
        two polls. 0 where nothing fits or nothing is sampled."""
        margin = 2 * self.interval_s  # the closing reads come after the last call
        if self._ts0 is not None:
            period = self._period0 or POLLED_MIN_WINDOW_S
            return min(2 * period + margin, cap) if cap > period else 0.0
        if self.nv is not None and _UTIL not in self._dropped:
            need = POLLED_MIN_WINDOW_S + margin
            return need if need <= cap else 0.0
        return 0.0

    def _sample(self) -> None:
        u = getattr(self._read(_UTIL), "gpu", None)
        if isinstance(u, (int, float)):
            self.util.append((self.clock(), float(u)))
        p = self._read(_POWER)
        if isinstance(p, (int, float)):
            self.power_mw.append(float(p))

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> None:
        newest = self._driver_samples(0)  # the whole buffer: its newest timestamp marks the start
        self._ts0 = None if newest is None else max((t for t, _ in newest), default=0)
        self._period0 = _median_gap_s([t for t, _ in newest or []])
        self._t0 = self.clock()
        self._e0 = self._read(_ENERGY)
        if self.nv is not None:
            self.thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
            self.thread.start()

    def stop(self, calls: int, timed_s: float) -> dict[str, Any]:
        """Close the window: the record keys (NVML_KEYS), null where not measured."""
        out: dict[str, Any] = dict.fromkeys(NVML_KEYS)
        try:
            window = self.clock() - self._t0
            e1 = self._read(_ENERGY)
        finally:  # the thread ends, whatever happens here
            self._stop.set()
            if self.thread is not None:
                self.thread.join(JOIN_S)
        if self.nv is None:
            return out
        try:
            if self.thread is not None and not self.thread.is_alive():
                self._sample()  # the window's end, after the last poll
            # a query that failed part-way through was not sampled over the whole window: its
            # mean would describe only the window's start, so it is null like a missing one
            util = [] if _UTIL in self._dropped else list(self.util)
            power_mw = [] if _POWER in self._dropped else list(self.power_mw)
            out["nvml_window_s"] = window
            out["nvml_samples"] = len(util)
            out["nvml_timed_frac"] = timed_s / window if window > 0 else None
            if util:
                out["gpu_util_polled_pct"] = sum(u for _, u in util) / len(util)
            late = [u for t, u in util if t - self._t0 >= POLLED_MIN_WINDOW_S]
            driver = self._driver_util()
            if driver is not None:
                out["gpu_util_pct"], out["nvml_util_period_s"] = driver
                out["gpu_util_source"] = "driver samples"
            elif late:
                out["gpu_util_pct"] = sum(late) / len(late)
                out["gpu_util_source"] = "polled"
            if power_mw:
                out["power_w"] = sum(power_mw) / len(power_mw) / 1000
            if calls > 0 and self._e0 is not None and e1 is not None and e1 > self._e0:
                out["energy_j_per_call"] = (e1 - self._e0) / 1000 / calls
                out["energy_source"] = "counter"
            elif calls > 0 and out["power_w"] is not None and window > 0:
                out["energy_j_per_call"] = out["power_w"] * window / calls
                out["energy_source"] = "power x window"
        except Exception:  # stop() must never raise: what was computed stands, the rest is null
            pass
        return out


class CUDABackend(Backend):
    name = "cuda"

    flush_device = "cuda"  # where the flush buffers live (the tests flush on the CPU)

    def __init__(self) -> None:
        self._flush: str | None = None  # the mode, read from the environment on first use
        self._memset_buf: torch.Tensor | None = None
        self._read_buf: torch.Tensor | None = None
        self._read_out: torch.Tensor | None = None
        self._nvml: tuple[Any, Any, str] | None = None  # (pynvml, handle, why not) once looked up
        self.host_issue_s = 0.0  # longest host time to queue start + call + end, last batch

    def available(self) -> tuple[bool, str]:
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            return False, "torch was built without CUDA"
        if not torch.cuda.is_available():
            return False, "no CUDA device is visible (driver missing or CUDA_VISIBLE_DEVICES empty)"
        return True, ""

    def device(self) -> str:
        return "cuda"

    def context_lost(self) -> str | None:
        try:  # a sticky fault (illegal address, ...) surfaces on the next sync or allocation
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        except Exception as e:  # the fault itself: its message says which
            return (str(e).strip().splitlines() or [type(e).__name__])[0]
        return None

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def cache_bytes(self) -> int:
        """The last-level cache: torch's L2 size, or the AMD Infinity Cache behind it where that
        is larger (ROCm reports one XCD's 4 MB L2; a flush of twice that would leave a GEMV's
        weights in the 256 MB Infinity Cache and time them from there)."""
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        l2 = int(getattr(props, "L2_cache_size", 0) or 50 * 1024**2)
        arch = str(getattr(props, "gcnArchName", "")).split(":")[0]
        llc = _INFINITY_CACHE.get(arch) or _INFINITY_CACHE.get(detect(props.name)[0] or "", 0)
        return max(l2, llc)

    def rotate_bytes(self) -> int:
        return 0  # the L2 is flushed before every sample instead

    def flush_mode(self) -> str:
        if self._flush is None:
            self._flush = flush_mode_from_env()
        return self._flush

    def set_flush_mode(self, mode: str | None) -> None:
        """Flush with `mode` from now on, whatever DECODEWALL_FLUSH says (bench.gpucheck.flushcmp
        compares the modes); None: as DECODEWALL_FLUSH says again."""
        if mode is not None and mode not in FLUSH_MODES:
            raise ValueError(f"unknown flush mode {mode!r} (one of: {', '.join(FLUSH_MODES)})")
        self._flush = mode

    def config_error(self) -> str | None:
        try:
            flush_mode_from_env()
        except ValueError as e:
            return str(e)
        return None

    def flush(self) -> None:
        """Evict the L2 with the flush mode's 2x-L2 buffers, allocated on the first call only."""
        mode = self.flush_mode()
        if mode in ("memset", "memset+read"):
            if self._memset_buf is None:
                self._memset_buf = torch.empty(2 * self.cache_bytes() // 4 + 1, dtype=torch.int32,
                                               device=self.flush_device)
            self._memset_buf.zero_()
        if mode in ("read", "memset+read"):
            if self._read_buf is None:
                rows = -(-2 * self.cache_bytes() // (4 * READ_ROW))
                self._read_buf = torch.zeros(rows, READ_ROW, dtype=torch.float32,
                                             device=self.flush_device)
                self._read_out = torch.empty(rows, dtype=torch.float32, device=self.flush_device)
            torch.sum(self._read_buf, dim=1, out=self._read_out)

    def release(self) -> None:
        self._memset_buf = self._read_buf = self._read_out = None
        torch.cuda.empty_cache()  # what the probes' 1 GiB buffers left in torch's cache

    def _nvml_device(self) -> tuple[Any, Any, str]:
        """(pynvml, this GPU's handle, "") once NVML answers, else (None, None, why); looked up
        once per process."""
        if self._nvml is None:
            nv, why = _nvml()
            if nv is None:
                self._nvml = (None, None, why)
            else:
                try:
                    self._nvml = (nv, _nvml_handle(nv), "")
                except Exception as e:  # NVML present but refuses (container without access)
                    self._nvml = (None, None, f"nvml error: {e}")
        return self._nvml

    def sampler(self) -> NvmlSampler:
        nv, handle, _ = self._nvml_device()
        return NvmlSampler(nv, handle)

    def time_calls(self, call: Callable[[int], Any], idxs: list[int],
                   flush: bool = True) -> list[float]:
        events = []
        hold = min(HOLD_MAX_S, max(HOLD_MIN_S, 2 * self.host_issue_s))
        longest = 0.0
        for i in idxs:
            if flush:
                self.flush()  # outside the timed region: events bracket only the call
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(int(hold * SPIN_HZ))  # the GPU waits while the host queues
            t0 = time.perf_counter()
            start.record()
            call(i)
            end.record()
            longest = max(longest, time.perf_counter() - t0)
            events.append((start, end))
        torch.cuda.synchronize()
        self.host_issue_s = longest
        return [s.elapsed_time(e) * 1e-3 for s, e in events]

    def clocks(self) -> dict[str, Any]:
        """NVML's clocks, power, temperature and throttle reasons, each queried on its own: a
        query NVML does not support on this board or in this container (power is the usual one,
        NVMLError_NotSupported) is recorded as null and the others are kept."""
        nv, h, why = self._nvml_device()
        if nv is None:
            return {"source": why}
        errors: list[str] = []

        def q(fn: str, *args: Any, scale: float = 1.0) -> Any:
            try:
                v = getattr(nv, fn)(h, *(getattr(nv, a) for a in args))
            except Exception as e:  # AttributeError (older binding), NVMLError_NotSupported, ...
                errors.append(f"{fn}: {e}")
                return None
            return v / scale if scale != 1.0 else v

        out: dict[str, Any] = {
            "source": "nvml",
            "sm_mhz": q("nvmlDeviceGetClockInfo", "NVML_CLOCK_SM"),
            "mem_mhz": q("nvmlDeviceGetClockInfo", "NVML_CLOCK_MEM"),
            "sm_max_mhz": q("nvmlDeviceGetMaxClockInfo", "NVML_CLOCK_SM"),
            "mem_max_mhz": q("nvmlDeviceGetMaxClockInfo", "NVML_CLOCK_MEM"),
            "power_w": q("nvmlDeviceGetPowerUsage", scale=1000),
            "power_limit_w": q("nvmlDeviceGetEnforcedPowerLimit", scale=1000),
            "temp_c": q("nvmlDeviceGetTemperature", "NVML_TEMPERATURE_GPU"),
        }
        # the "throttle reasons" were renamed "clocks event reasons" (NVML 12.535); the bits match
        reasons = q("nvmlDeviceGetCurrentClocksEventReasons"
                    if hasattr(nv, "nvmlDeviceGetCurrentClocksEventReasons")
                    else "nvmlDeviceGetCurrentClocksThrottleReasons")
        out["throttle"] = None if reasons is None else \
            [v for k, v in _THROTTLE.items() if reasons & k and k != 0x1]
        bus = q("nvmlDeviceGetMemoryBusWidth")
        if bus is not None:
            out["mem_bus_bits"] = bus
            if out["mem_max_mhz"]:
                # nvbench's BWUtil peak: 2 (DDR) x memory clock x bus width / 8
                out["theoretical_gbps"] = round(2 * out["mem_max_mhz"] * 1e6 * bus / 8 / 1e9, 1)
        ecc = q("nvmlDeviceGetEccMode")
        if ecc is not None:
            out["ecc"] = bool(ecc[0])
        out["other_processes"] = other_processes(nv, h)
        if all(out[k] is None for k in _CLOCK_KEYS):  # NVML answers nothing (no access)
            return {"source": f"nvml error: {errors[0] if errors else 'no figure'}"}
        return out

    def device_info(self) -> dict[str, Any]:
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        chip, note = detect(props.name, props.total_memory)
        return {
            "backend": self.name,
            "name": props.name,
            "chip": chip,
            "chip_note": note,
            "memory_bytes": int(props.total_memory),
            "cache_bytes": self.cache_bytes(),
            "sm_count": props.multi_processor_count,
            "capability": f"{props.major}.{props.minor}",
            "clocks": self.clocks(),
        }
