"""The notes a run ends with about the machine its numbers came from, read off its records: a CPU
shared with other tasks (bench.contention), a GPU other processes had open or whose clocks power
or heat held down, CPUs on several NUMA nodes, C kernels built without OpenMP. `show` and
`compare` print them again for the records they show. Torch-free, for the readers."""
from __future__ import annotations

from typing import Any

from .contention import contention_note, roof_contention_note


def notes(records: list[dict[str, Any]]) -> list[str]:
    """The lines `run` ends with about the machine, for these records (none on a quiet machine
    to itself): `show` and `compare` print the same of the records they show."""
    return [n for n in (contention_note(records), roof_contention_note(records),
                        gpu_sharing_note(records), throttle_note(records), numa_note(records),
                        one_thread_note(records)) if n]


# NVML's reasons (backends.cuda._THROTTLE) that hold a GPU's clocks below what it could run at
# for its load: power and heat; not idling, application or display clock settings
THROTTLED = ("sw_power_cap", "hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake")


def throttle_note(records: list[dict[str, Any]]) -> str | None:
    """A line when NVML gave power or heat as holding the GPU's clocks down as timed cases
    ended (the records' `device.clocks.throttle`): those times are a throttled GPU's."""
    timed = [r for r in records if r.get("status") == "ok" and r.get("time_s")]
    held, reasons, lowest = 0, set(), None
    for r in timed:
        device = r.get("device")
        clocks = device.get("clocks") if isinstance(device, dict) else None
        why = clocks.get("throttle") if isinstance(clocks, dict) else None
        hit = {t for t in why if t in THROTTLED} if isinstance(why, list) else set()
        if not hit:
            continue
        held += 1
        reasons |= hit
        sm, top = clocks.get("sm_mhz"), clocks.get("sm_max_mhz")
        if isinstance(sm, (int, float)) and isinstance(top, (int, float)) and \
                (lowest is None or sm < lowest[0]):
            lowest = (sm, top)
    if not held:
        return None
    at = f"; SM clock {lowest[0]:.0f} of {lowest[1]:.0f} MHz at the lowest" if lowest else ""
    return (f"as {held} of {len(timed)} timed case(s) ended, NVML gave "
            f"{', '.join(sorted(reasons))} as holding the GPU's clocks down{at} (device.clocks "
            f"in the records): those times are a throttled GPU's")


def gpu_sharing_note(records: list[dict[str, Any]]) -> str | None:
    """A line when other processes had the GPU open as timed cases ended (the records'
    `device.clocks.other_processes`, read from NVML after each timing): where they computed,
    they took a share of its SMs and memory bandwidth, and those times read slow."""
    timed = [r for r in records if r.get("status") == "ok" and r.get("time_s")]
    shared, pids = 0, {}
    for r in timed:
        device = r.get("device")
        clocks = device.get("clocks") if isinstance(device, dict) else None
        others = clocks.get("other_processes") if isinstance(clocks, dict) else None
        if not isinstance(others, list) or not others:
            continue
        shared += 1
        for p in others:
            if isinstance(p, dict) and isinstance(p.get("pid"), int):
                pids[p["pid"]] = p.get("used_mib")
    if not shared:
        return None
    named = ", ".join(f"{pid}" + (f" ({mib} MiB)" if isinstance(mib, int) else "")
                      for pid, mib in sorted(pids.items())[:4])
    more = f" and {len(pids) - 4} more" if len(pids) > 4 else ""
    return (f"as {shared} of {len(timed)} timed case(s) ended, other processes had this GPU "
            f"open (pid {named}{more}; device.clocks.other_processes in the records): where they "
            f"were computing they shared its SMs and memory bandwidth, and those times read "
            f"slow; rerun with the GPU to yourself")


def numa_note(records: list[dict[str, Any]]) -> str | None:
    """numa_line for the most NUMA nodes the timed records' CPUs were on (`device.numa_nodes`)."""
    counts = [r["device"].get("numa_nodes") for r in records
              if r.get("status") == "ok" and isinstance(r.get("device"), dict)]
    return numa_line(max((n for n in counts if isinstance(n, int) and not isinstance(n, bool)),
                         default=1))


def numa_line(nodes: int | None) -> str | None:
    """A line when the CPUs were on several NUMA nodes: threads read memory of another node too,
    at that link's speed, the roof's probes and the kernels alike, in shares that depend on which
    thread first touched each page."""
    if not isinstance(nodes, int) or nodes <= 1:
        return None
    return (f"this run's CPUs are on {nodes} NUMA nodes: each page sits on the node whose thread "
            f"first touched it (Linux's default policy), so threads read the other nodes' memory "
            f"too, across the link between them, roof and kernels alike; for one node's figures "
            f"run it under `numactl --cpunodebind=0 --membind=0`")


def one_thread_note(records: list[dict[str, Any]]) -> str | None:
    """A line when compiled impls ran on one thread: their compiler could not build with
    -fopenmp, so their library was built without OpenMP (the record's `c_build`), whatever
    `threads` the run had."""
    single = [r for r in records if isinstance(r.get("c_build"), dict)
              and r["c_build"].get("openmp") is False and r.get("status") == "ok"]
    if not single:
        return None
    names = sorted({f"{r.get('op')}/{r.get('impl')}" for r in single})
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    compiler = single[0]["c_build"].get("compiler") or "the C compiler"
    return (f"{shown} ran on one thread: {compiler} could not build with -fopenmp, so the C "
            f"kernels were built without OpenMP; set CC to a compiler with OpenMP (gcc, or clang "
            f"with libomp) for all cores")
