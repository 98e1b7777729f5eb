"""The CPU backend: perf_counter_ns timing, input sets rotated past 4x the caches read from sysfs.

Cache sizes come from /sys/devices/system/cpu (py-cpuinfo reports them wrongly on some machines).
Threads are whatever torch is configured with, and are recorded.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from .base import Backend

SYS_CPU = Path("/sys/devices/system/cpu")


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1024, "M": 1024**2, "G": 1024**3}
    if text and text[-1] in mult:
        return int(float(text[:-1]) * mult[text[-1]])
    return int(text)


def read_caches(root: Path = SYS_CPU) -> dict[str, int]:
    """Total bytes per cache level ("L1d", "L2", "L3"), summed over distinct shared instances."""
    seen: dict[tuple[str, str], int] = {}
    for cache in sorted(root.glob("cpu[0-9]*/cache/index[0-9]*")):
        try:
            level = (cache / "level").read_text().strip()
            ctype = (cache / "type").read_text().strip()
            size = _parse_size((cache / "size").read_text())
            shared = (cache / "shared_cpu_list").read_text().strip()
        except (OSError, ValueError):
            continue
        if ctype == "Instruction":
            continue
        name = f"L{level}" + ("d" if ctype == "Data" else "")
        seen[(name, shared)] = size
    totals: dict[str, int] = {}
    for (name, _), size in seen.items():
        totals[name] = totals.get(name, 0) + size
    return totals


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa(cpuinfo: str | None = None) -> str:
    """The widest vector extension this CPU reports, which tells apart CPUs of one name (a VM
    shows "AMD EPYC" for Zen 3 and Zen 5). x86-64: avx512f, avx2 (with FMA) or sse; Arm: sve or
    asimd."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
            break
    for isa, need in (("avx512f", {"avx512f"}), ("avx2", {"avx2", "fma"}), ("sse", {"sse2"}),
                      ("sve", {"sve"}), ("asimd", {"asimd"})):
        if need <= flags:
            return isa
    return platform.machine() or "unknown"


# A container's memory limit (cgroup v2, else v1): /proc/meminfo shows the machine's memory, which
# a process in a cgroup cannot use past its limit (CI runners, Docker, Kubernetes pods).
CGROUP = Path("/sys/fs/cgroup")
_CGROUP_FILES = (("memory.max", "memory.current", "memory.stat", "inactive_file"),
                 ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes",
                  "memory/memory.stat", "total_inactive_file"))
_NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as the largest page-aligned 64-bit value


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # v2 writes "max" for no limit


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def cgroup_memory() -> tuple[int, int] | None:
    """(limit, usage) in bytes of this process's memory cgroup, or None where it has no limit.
    The usage leaves out inactive file cache, which the kernel reclaims before it runs out (as
    `docker stats` counts)."""
    for limit_file, usage_file, stat_file, inactive in _CGROUP_FILES:
        limit = _read_int(CGROUP / limit_file)
        if limit is not None and limit < _NO_LIMIT:
            usage = _read_int(CGROUP / usage_file) or 0
            return limit, max(0, usage - _stat(CGROUP / stat_file, inactive))
    return None


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _mem_total() -> int | None:
    """The memory this process may use: the machine's, or its cgroup's limit where smaller."""
    total = _meminfo("MemTotal")
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = None
    cg = cgroup_memory()
    if cg is not None:
        total = cg[0] if total is None else min(total, cg[0])
    return total


def mem_available() -> int | None:
    """Bytes of host memory that new allocations can take without swapping (MemAvailable:
    free memory plus what the kernel can reclaim), at most what the cgroup's limit leaves; None
    where neither says."""
    avail = _meminfo("MemAvailable")
    cg = cgroup_memory()
    if cg is not None:
        room = max(0, cg[0] - cg[1])
        avail = room if avail is None else min(avail, room)
    return avail


class CPUBackend(Backend):
    name = "cpu"

    def available(self) -> tuple[bool, str]:
        return True, ""

    def device(self) -> str:
        return "cpu"

    def cache_bytes(self) -> int:
        caches = read_caches()
        for level in ("L4", "L3", "L2", "L1d"):  # the last level: an eDRAM L4 where there is one
            if level in caches:
                return caches[level]
        return 32 * 1024**2  # no sysfs (macOS): assume a generous LLC so rotation still defeats it

    def rotate_bytes(self) -> int:
        """4x every cache level together, not the LLC alone: a non-inclusive L3 (AMD's, Intel's
        since Skylake-SP) holds lines the L2s do not, and on many-core parts the L2s together
        can exceed it (144 cores of Sierra Forest: 144 MB of L2 beside a 108 MB L3)."""
        total = sum(read_caches().values())
        return 4 * max(total, self.cache_bytes())

    def clocks(self) -> dict[str, Any]:
        mhz = []
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("cpu MHz"):
                    mhz.append(float(line.split(":")[1]))
        except OSError:
            pass
        return {"cpu_mhz": round(sum(mhz) / len(mhz), 1)} if mhz else {}

    def device_info(self) -> dict[str, Any]:
        caches = read_caches()
        return {
            "backend": self.name,
            "name": _cpu_name(),
            "chip": None,
            "chip_note": "CPUs are not in the catalog: judged against the measured roof only",
            "memory_bytes": _mem_total(),
            "cache_bytes": self.cache_bytes(),
            "caches": caches,
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "clocks": self.clocks(),
            "isa": cpu_isa(),
        }
