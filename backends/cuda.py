"""The CUDA backend: CUDA-event timing with the L2 flushed (2x its size) before every sample.

Each sample is queued behind a spin kernel (nvbench's blocking kernel, `torch.cuda._sleep`) that
holds the GPU until the host has queued the start event, the call and the end event: a
microsecond kernel whose Python launch takes longer than the flush would otherwise be timed with
the host's launch gap inside its events. The hold is twice the longest host issue time of the
previous batch (at least HOLD_MIN_S, at most HOLD_MAX_S: a batch that compiled or autotuned
holds the next one long, which is safe, only slower).

Clocks, power and throttle reasons come from NVML (nvidia-ml-py) when it is installed; without it
they are recorded as unknown rather than guessed.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from .base import Backend
from .catalog import detect

_THROTTLE = {  # nvmlClocksThrottleReason* bits
    0x1: "gpu_idle", 0x2: "app_clocks", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
    0x20: "sw_thermal", 0x40: "hw_thermal", 0x80: "hw_power_brake", 0x100: "display_clocks",
}


def _nvml():
    try:
        import pynvml
        pynvml.nvmlInit()
        return pynvml
    except Exception:
        return None


HOLD_MIN_S = 50e-6
HOLD_MAX_S = 20e-3
SPIN_HZ = 2.0e9  # cycles per second assumed for the spin: a slower clock only holds longer


class CUDABackend(Backend):
    name = "cuda"

    def __init__(self) -> None:
        self._flush_buf: torch.Tensor | None = None
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
        props = torch.cuda.get_device_properties(0)
        return int(getattr(props, "L2_cache_size", 0) or 50 * 1024**2)

    def rotate_bytes(self) -> int:
        return 0  # the L2 is flushed before every sample instead

    def flush(self) -> None:
        if self._flush_buf is None:
            self._flush_buf = torch.empty(2 * self.cache_bytes() // 4 + 1, dtype=torch.int32,
                                          device="cuda")
        self._flush_buf.zero_()

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
        nv = _nvml()
        if nv is None:
            return {"source": "unknown (install nvidia-ml-py for clocks and throttle reasons)"}
        try:
            h = nv.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
            out: dict[str, Any] = {
                "source": "nvml",
                "sm_mhz": nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
                "mem_mhz": nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM),
                "sm_max_mhz": nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM),
                "mem_max_mhz": nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_MEM),
                "power_w": nv.nvmlDeviceGetPowerUsage(h) / 1000,
                "power_limit_w": nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000,
                "temp_c": nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
            }
            reasons = nv.nvmlDeviceGetCurrentClocksThrottleReasons(h)
            out["throttle"] = [v for k, v in _THROTTLE.items() if reasons & k and k != 0x1]
            try:
                out["mem_bus_bits"] = nv.nvmlDeviceGetMemoryBusWidth(h)
                # nvbench's BWUtil peak: 2 (DDR) x memory clock x bus width / 8
                out["theoretical_gbps"] = round(2 * out["mem_max_mhz"] * 1e6 * out["mem_bus_bits"] / 8 / 1e9, 1)
            except Exception:
                pass
            try:
                out["ecc"] = bool(nv.nvmlDeviceGetEccMode(h)[0])
            except Exception:
                pass
            return out
        except Exception as e:  # NVML present but refuses (container without access)
            return {"source": f"nvml error: {e}"}

    def device_info(self) -> dict[str, Any]:
        props = torch.cuda.get_device_properties(0)
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
