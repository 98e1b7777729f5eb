"""What a run's records say about a CPU shared with other tasks (the figures of
backends.cpu.ContentionSampler), for the notes `run` ends with (bench.notes). Torch-free, for the
readers."""
from __future__ import annotations

from typing import Any

# the records' names for backends.cpu.ContentionSampler's figures (backends.cpu.CONTENTION_KEYS,
# which imports torch)
CONTENTION_KEYS = ("cpu_pressure_pct", "cpu_steal_pct")

CONTENDED_PCT = 10.0  # a window whose tasks waited longer than this share of it was contended


def contended(r: dict[str, Any]) -> bool:
    """A record timed while other tasks (or other guests) took a share of the CPU past
    CONTENDED_PCT (backends.cpu.ContentionSampler's keys)."""
    return any(isinstance(r.get(k), (int, float)) and r[k] > CONTENDED_PCT
               for k in CONTENTION_KEYS)


def contention_note(records: list[dict[str, Any]]) -> str | None:
    """A line when timed cases shared the CPU (backends.cpu.ContentionSampler): their times
    include waiting for it, however tight their spread."""
    timed = [r for r in records if r.get("status") == "ok" and r.get("time_s")]
    busy = [r for r in timed if contended(r)]
    if not busy:
        return None
    worst = max(max(r.get(k) or 0.0 for k in CONTENTION_KEYS) for r in busy)
    return (f"{len(busy)} of {len(timed)} timed case(s) ran while other tasks waited for the CPU, "
            f"or the hypervisor took it, more than {CONTENDED_PCT:.0f}% of their timing (up to "
            f"{worst:.0f}%: cpu_pressure_pct, cpu_steal_pct in the records): their times include "
            f"that wait, a tight spread too; rerun on a quiet machine")


def roof_note(pct: Any, judged: str = "each % of roof high") -> str | None:
    """A line when a roof reading's probes shared the CPU past CONTENDED_PCT (pct: the most any
    of them did, Roof.contention_pct): the roof reads low, and what is judged against it high."""
    if not isinstance(pct, (int, float)) or pct <= CONTENDED_PCT:
        return None
    return (f"the roof was measured while other tasks waited for the CPU, or the hypervisor took "
            f"it, {pct:.0f}% of a probe's timing: it may read low, and {judged}; rerun on a "
            f"quiet machine")


def roof_contention_note(records: list[dict[str, Any]]) -> str | None:
    """roof_note for the roof readings the timed cases were judged against (each record's
    roof_contention_pct)."""
    pcts = [r.get("roof_contention_pct") for r in records
            if r.get("status") == "ok" and r.get("time_s")]
    worst = max((p for p in pcts if isinstance(p, (int, float))), default=None)
    return roof_note(worst, "each case's % of roof high, and its verdict with it "
                            "(roof_contention_pct in the records)")
