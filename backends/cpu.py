"""The CPU backend: perf_counter_ns timing, input sets rotated past 4x the caches read from sysfs.

Cache sizes come from /sys/devices/system/cpu (py-cpuinfo reports them wrongly on some machines).
Threads are whatever torch is configured with, and are recorded.
"""
from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any

import torch

from .base import Backend

SYS_CPU = Path("/sys/devices/system/cpu")
SYS_NODE = Path("/sys/devices/system/node")


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1024, "M": 1024**2, "G": 1024**3}
    if text and text[-1] in mult:
        return int(float(text[:-1]) * mult[text[-1]])
    return int(text)


def parse_cpu_list(text: str) -> set[int]:
    """sysfs's CPU list ("0-3,8,10-11") as a set."""
    out: set[int] = set()
    for part in text.strip().split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.update(range(int(lo), int(hi) + 1))
        elif part:
            out.add(int(part))
    return out


def affinity() -> set[int] | None:
    """The CPUs this process may run on (a container or `taskset` narrows them), or None where
    the platform does not say (macOS)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def numa_nodes(root: Path = SYS_NODE, cpus: set[int] | None = None) -> int | None:
    """How many NUMA nodes hold CPUs this process may run on (`cpus`, default its affinity):
    more than one, and its threads read pages that sit on another node's memory, across the
    sockets' link. Nodes without CPUs (CXL or HBM memory) are not counted; None where sysfs
    does not say (macOS, a container that hides it)."""
    if cpus is None:
        cpus = affinity()
    found, nodes = False, 0
    for node in root.glob("node[0-9]*"):
        try:
            mine = parse_cpu_list((node / "cpulist").read_text())
        except (OSError, ValueError):
            continue
        found = True
        if mine and (cpus is None or mine & cpus):
            nodes += 1
    return nodes if found else None


def read_caches(root: Path = SYS_CPU, cpus: set[int] | None = None) -> dict[str, int]:
    """Total bytes per cache level ("L1d", "L2", "L3"), summed over distinct shared instances,
    of the caches of the CPUs this process may run on (`cpus`, default its affinity): a slice of
    a large host fills only its own CPUs' caches."""
    if cpus is None:
        cpus = affinity()
    seen: dict[tuple[str, str], int] = {}
    for cache in sorted(root.glob("cpu[0-9]*/cache/index[0-9]*")):
        try:
            level = (cache / "level").read_text().strip()
            ctype = (cache / "type").read_text().strip()
            size = _parse_size((cache / "size").read_text())
            shared = (cache / "shared_cpu_list").read_text().strip()
            mine = cpus is None or bool(parse_cpu_list(shared) & cpus)
        except (OSError, ValueError):
            continue
        if ctype == "Instruction" or not mine:
            continue
        name = f"L{level}" + ("d" if ctype == "Data" else "")
        seen[(name, shared)] = size
    totals: dict[str, int] = {}
    for (name, _), size in seen.items():
        totals[name] = totals.get(name, 0) + size
    return totals


# Arm cores by (CPU implementer, CPU part) in /proc/cpuinfo, which has no "model name" on arm64
ARM_PARTS = {("0x41", "0xd0c"): "Arm Neoverse N1", ("0x41", "0xd40"): "Arm Neoverse V1",
             ("0x41", "0xd49"): "Arm Neoverse N2", ("0x41", "0xd4f"): "Arm Neoverse V2"}


def _cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name; on Arm, the core its implementer and part numbers name (Graviton3
    and Grace are both "aarch64" to `platform`), or those numbers."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if fields.get("model name"):
        return fields["model name"]
    arm = (fields.get("CPU implementer", ""), fields.get("CPU part", ""))
    if all(arm):
        return ARM_PARTS.get(arm, f"{platform.machine() or 'Arm'} (implementer {arm[0]}, "
                                  f"part {arm[1]})")
    return platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The first CPU's feature flags in /proc/cpuinfo (x86 `flags`, Arm `Features`); empty
    where there is none."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_isa(cpuinfo: str | None = None) -> str:
    """The widest vector extension this CPU reports, which tells apart CPUs of one name (a VM
    shows "AMD EPYC" for Zen 3 and Zen 5). x86-64: avx512f, avx2 (with FMA) or sse; Arm: sve or
    asimd."""
    flags = cpu_flags(cpuinfo)
    for isa, need in (("avx512f", {"avx512f"}), ("avx2", {"avx2", "fma"}), ("sse", {"sse2"}),
                      ("sve", {"sve"}), ("asimd", {"asimd"})):
        if need <= flags:
            return isa
    return platform.machine() or "unknown"


# A container's memory limit (cgroup v2, else v1): /proc/meminfo shows the machine's memory, which
# a process in a cgroup cannot use past its limit (CI runners, Docker, Kubernetes pods).
CGROUP = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def cgroup_dirs(controller: str = "") -> list[Path]:
    """This process's cgroup folder and its ancestors up to the root, nearest first: a limit set
    on a parent (a batch job's slice, a pod) bounds it too. `controller` "": cgroup v2's
    unified tree; "memory" or "cpu": v1's folder of that controller."""
    rel = ""
    try:
        for line in PROC_CGROUP.read_text().splitlines():
            _, names, path = line.split(":", 2)
            if (controller == "" and names == "") or controller in names.split(","):
                rel = path.strip().lstrip("/")
                break
    except (OSError, ValueError):
        pass
    base = CGROUP / controller if controller else CGROUP
    parts = Path(rel).parts if rel else ()
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


_CGROUP_FILES = (("", "memory.max", "memory.current", "memory.stat", "inactive_file"),  # v2
                 ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat",
                  "total_inactive_file"))  # v1: the memory controller's own tree
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


def cgroup_limits() -> list[tuple[int, int]]:
    """(limit, usage) in bytes of every memory limit on this process's cgroup and its ancestors
    (v2, else v1); empty where none has one. Each usage, its cgroup's, leaves out inactive file
    cache, which the kernel reclaims before it runs out (as `docker stats` counts)."""
    for controller, limit_file, usage_file, stat_file, inactive in _CGROUP_FILES:
        found = []
        for d in cgroup_dirs(controller):
            limit = _read_int(d / limit_file)
            if limit is not None and limit < _NO_LIMIT:
                usage = _read_int(d / usage_file) or 0
                found.append((limit, max(0, usage - _stat(d / stat_file, inactive))))
        if found:
            return found
    return []


def cgroup_memory() -> tuple[int, int] | None:
    """(limit, usage) of the tightest memory limit of `cgroup_limits`, or None where none has
    one."""
    return min(cgroup_limits(), default=None)


def cgroup_cpus() -> float | None:
    """CPUs' worth of time the tightest CPU quota on this process's cgroup or an ancestor allows
    (v2 cpu.max "quota period", v1 cpu.cfs_quota_us / cpu.cfs_period_us), or None where none
    is set."""
    quotas = []
    for d in cgroup_dirs():
        try:
            quota, period = (d / "cpu.max").read_text().split()[:2]
            if quota != "max" and int(period) > 0:
                quotas.append(int(quota) / int(period))
        except (OSError, ValueError):
            pass
    if not quotas:
        for d in cgroup_dirs("cpu"):
            q, per = _read_int(d / "cpu.cfs_quota_us"), _read_int(d / "cpu.cfs_period_us")
            if q is not None and per:  # v1 writes -1 (no quota), which _read_int refuses
                quotas.append(q / per)
    return min(quotas) if quotas else None


def usable_cpus() -> int:
    """The CPUs this process can keep busy: its affinity (or every CPU), at most its cgroup's
    CPU quota rounded up, at least 1."""
    cpus = affinity()
    n = len(cpus) if cpus else (os.cpu_count() or 1)
    quota = cgroup_cpus()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


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
    free memory plus what the kernel can reclaim), at most the least that any limit on the way
    up leaves (a job's limit that its other steps nearly fill binds before its step's own, looser
    room); None where neither says."""
    avail = _meminfo("MemAvailable")
    limits = cgroup_limits()
    if limits:
        room = min(max(0, limit - usage) for limit, usage in limits)
        avail = room if avail is None else min(avail, room)
    return avail


# --- contention over a timing window -----------------------------------------------------------

PSI_CPU = "/proc/pressure/cpu"  # Linux >= 4.20 with PSI: time runnable tasks waited for a CPU
PROC_STAT = "/proc/stat"


def psi_path() -> str:
    """This process's own cgroup's cpu.pressure where cgroup v2 keeps one (its tasks' waits only:
    on a large shared host the system-wide figure counts every other tenant's), else the
    system's /proc/pressure/cpu (the root cgroup, cgroup v1, or no PSI per cgroup)."""
    own = cgroup_dirs()[0]
    return str(own / "cpu.pressure") if own != CGROUP and (own / "cpu.pressure").exists() \
        else PSI_CPU


CONTENTION_KEYS = ("cpu_pressure_pct", "cpu_steal_pct")


def _psi_some_us(path: str = PSI_CPU) -> int | None:
    """PSI's `some` total for the CPU (µs some runnable task waited), or None without PSI."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("some"):
                    return int(line.split("total=")[1].split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _steal_ticks(path: str = PROC_STAT) -> tuple[int, int] | None:
    """(steal, all) jiffies of /proc/stat's cpu line: time a hypervisor ran someone else on
    this guest's CPUs, and all time; None where there is no such line."""
    try:
        with open(path) as f:
            fields = f.readline().split()
        if fields[0] != "cpu" or len(fields) < 9:
            return None
        ticks = [int(x) for x in fields[1:]]
        return ticks[7], sum(ticks[:8])  # user..steal; guest time is counted in user already
    except (OSError, ValueError, IndexError):
        return None


class ContentionSampler:
    """Whether a timing window had the CPU to itself: PSI's share of the window during which
    some runnable task (of this process's cgroup, where cgroup v2 says: psi_path) waited for a
    CPU (`cpu_pressure_pct`; our own threads, as many as the
    cores, keep it near 0, ~0.5% on the 2-core dev box; one other busy process lifted it to 45%)
    and the hypervisor's steal share (`cpu_steal_pct`). Each is null where the kernel does not
    say. A contended window times waiting as well as the kernel: a median can land on the
    scheduler's tick (4.00 or 8.00 ms) with a tiny spread, and read as a clean figure."""

    def __init__(self, clock: Any = None, psi: str | None = None, stat: str = PROC_STAT) -> None:
        import time
        self.clock = clock or time.monotonic
        self.psi, self.stat = psi or psi_path(), stat
        self._t0 = 0.0
        self._p0: int | None = None
        self._s0: tuple[int, int] | None = None

    def start(self) -> None:
        self._p0, self._s0 = _psi_some_us(self.psi), _steal_ticks(self.stat)
        self._t0 = self.clock()

    def min_window_s(self, cap: float) -> float:
        return 0.0

    def stop(self, calls: int, timed_s: float) -> dict[str, Any]:
        out: dict[str, Any] = dict.fromkeys(CONTENTION_KEYS)
        try:
            wall = self.clock() - self._t0
            p1, s1 = _psi_some_us(self.psi), _steal_ticks(self.stat)
            if self._p0 is not None and p1 is not None and wall > 0:
                out["cpu_pressure_pct"] = round(min(100.0, 100 * (p1 - self._p0) / 1e6 / wall), 2)
            if self._s0 is not None and s1 is not None and s1[1] > self._s0[1]:
                out["cpu_steal_pct"] = round(100 * (s1[0] - self._s0[0]) / (s1[1] - self._s0[1]), 2)
        except Exception:  # never raises: what could not be read is null
            pass
        return out


class CPUBackend(Backend):
    name = "cpu"

    def sampler(self) -> ContentionSampler:
        return ContentionSampler()

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
            "cores": usable_cpus(),
            "threads": torch.get_num_threads(),
            "clocks": self.clocks(),
            "isa": cpu_isa(),
            "numa_nodes": numa_nodes(),
        }
