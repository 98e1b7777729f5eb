"""Compare two result files case by case, judged against the spread of both runs.

Two medians are "faster"/"slower" only when their interquartile ranges do not overlap, "same"
when they differ by less than the larger half-IQR (the noise of either run alone explains it),
and "unsure" in between — never by a fixed percentage.

A case timed in one run but not the other is judged by its statuses, the side that gave no time
named: "B crashed" (ok in A: a regression, as "slower" is), "A timeout, B ok" (an improvement),
"A error, B crashed", or "only in B (crashed)" when the other file lacks the case. A case with
nothing to compare (the same status in both runs, or skipped in one and absent from the other)
gets no row: `not_compared` counts those, and the table's caption says how many.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any

from ..results import FAILED


def case_key(r: dict[str, Any]) -> tuple:
    """What makes two records the same case. Not the device: comparing one impl on two machines
    is what a user comparing two files from different devices asks for (the title says so)."""
    return (r["op"], r["impl"], json.dumps(r["shape"], sort_keys=True), r.get("dtype"),
            bool(r.get("warm")))


def devices(records: list[dict[str, Any]]) -> str:
    """The device(s) a results file was measured on, e.g. 'AMD EPYC (cpu)'."""
    seen = []
    for r in records:
        d = r.get("device") if isinstance(r.get("device"), dict) else {}
        name = f"{d.get('name') or 'unknown device'} ({r.get('backend') or '?'})"
        if name not in seen:
            seen.append(name)
    return ", ".join(seen)


def classify(a: dict[str, float], b: dict[str, float]) -> str:
    """Judge B against A from their time_s summaries (median, p25, p75)."""
    ha = (a["p75"] - a["p25"]) / 2
    hb = (b["p75"] - b["p25"]) / 2
    d = b["median"] - a["median"]
    if b["p75"] < a["p25"]:
        return "faster"
    if b["p25"] > a["p75"]:
        return "slower"
    if abs(d) <= max(ha, hb):
        return "same"
    return "unsure"


def timed(r: dict[str, Any]) -> bool:
    return r.get("status") == "ok" and bool(r.get("time_s"))


def state(r: dict[str, Any] | None) -> str | None:
    """The record's status as a verdict names it ('ok (no time)' for an ok record without
    time_s); None for no record."""
    if r is None:
        return None
    return "ok (no time)" if r["status"] == "ok" and not timed(r) else r["status"]


def by_case(records: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """One record per case, in order of first appearance: the last timed one, else the last."""
    out: dict[tuple, dict[str, Any]] = {}
    for r in records:
        k = case_key(r)
        if k not in out or timed(r) or not timed(out[k]):
            out[k] = r
    return out


def status_verdict(ra: dict[str, Any] | None, rb: dict[str, Any] | None) -> str | None:
    """The verdict for a case not timed in both runs, or None when there is nothing to show."""
    sa, sb = state(ra), state(rb)
    if sa is None or sb is None:
        side, st = ("A", sa) if sb is None else ("B", sb)
        if st == "ok":
            return f"only in {side}"
        return f"only in {side} ({st})" if st in FAILED else None
    if sa == sb:
        return None
    if sa == "ok":
        return f"B {sb}"
    return f"A {sa}, B {sb}"


def change(ra: dict[str, Any] | None, rb: dict[str, Any] | None, verdict: str) -> str | None:
    """'regression': B slower, or B failed (failed-check, error, crashed, timeout) where A did
    not; 'improvement': B faster, or A failed and B is ok; else None (a case in one file only
    included)."""
    if verdict in ("slower", "faster"):
        return "regression" if verdict == "slower" else "improvement"
    sa, sb = (r["status"] if r else None for r in (ra, rb))
    if ra and rb and sb in FAILED and sa not in FAILED:
        return "regression"
    if ra and rb and sa in FAILED and sb == "ok":
        return "improvement"
    return None


def compare(recs_a: list[dict[str, Any]], recs_b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row a case to show: timed in both (faster/slower/same/unsure), or a status verdict.
    Every row has `change`, `a_status` and `b_status` (None: not in that file); status rows add
    the error text of each side that has one (`a_error`, `b_error`)."""
    a, b = by_case(recs_a), by_case(recs_b)
    rows = []
    for k in [*a, *(k for k in b if k not in a)]:
        ra, rb = a.get(k), b.get(k)
        # the shape as its record has it (M, N, K), not in the key's sorted order
        row: dict[str, Any] = {"op": k[0], "impl": k[1], "shape": (ra or rb)["shape"],
                               "dtype": k[3]}
        if ra and rb and timed(ra) and timed(rb):
            ta, tb = ra["time_s"], rb["time_s"]
            row.update(a_median=ta["median"], b_median=tb["median"],
                       ratio=tb["median"] / ta["median"], a_gbps=ra.get("achieved_gbps"),
                       b_gbps=rb.get("achieved_gbps"), verdict=classify(ta, tb))
        else:
            verdict = status_verdict(ra, rb)
            if verdict is None:
                continue
            for side, r in (("a", ra), ("b", rb)):
                if r and timed(r):
                    row[f"{side}_median"] = r["time_s"]["median"]
                    row[f"{side}_gbps"] = r.get("achieved_gbps")
            row["verdict"] = verdict
            for side, r in (("a", ra), ("b", rb)):
                if r and r.get("error"):
                    row[f"{side}_error"] = r["error"]
        row["change"] = change(ra, rb, row["verdict"])
        row["a_status"] = ra["status"] if ra else None
        row["b_status"] = rb["status"] if rb else None
        rows.append(row)
    # cases in both files first (in A's order), then those only in A, then those only in B
    order = {"only in A": 2, "only in B": 3}
    return sorted(rows, key=lambda r: order.get(r["verdict"][:9], 0))


def not_compared(recs_a: list[dict[str, Any]], recs_b: list[dict[str, Any]]) -> Counter:
    """Cases without a row, by what they were: 'crashed in both', 'skipped only in A', ..."""
    a, b = by_case(recs_a), by_case(recs_b)
    out: Counter = Counter()
    for k in [*a, *(k for k in b if k not in a)]:
        ra, rb = a.get(k), b.get(k)
        if (ra and rb and timed(ra) and timed(rb)) or status_verdict(ra, rb) is not None:
            continue
        if ra and rb:
            out[f"{state(ra)} in both"] += 1
        else:
            side, r = ("A", ra) if ra else ("B", rb)
            out[f"{state(r)} only in {side}"] += 1
    return out
