"""Compare two result files case by case, judged against the spread of both runs.

Two medians are "faster"/"slower" only when their interquartile ranges do not overlap, "same"
when they differ by less than the larger half-IQR (the noise of either run alone explains it),
and "unsure" in between — never by a fixed percentage.
"""
from __future__ import annotations

import json
from typing import Any

from ..results import iter_ok


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


def compare(recs_a: list[dict[str, Any]], recs_b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    a = {case_key(r): r for r in iter_ok(recs_a)}
    b = {case_key(r): r for r in iter_ok(recs_b)}
    rows = []
    for k in a:
        if k not in b:
            continue
        ta, tb = a[k]["time_s"], b[k]["time_s"]
        rows.append({"op": k[0], "impl": k[1], "shape": json.loads(k[2]), "dtype": k[3],
                     "a_median": ta["median"], "b_median": tb["median"],
                     "ratio": tb["median"] / ta["median"], "a_gbps": a[k].get("achieved_gbps"),
                     "b_gbps": b[k].get("achieved_gbps"), "verdict": classify(ta, tb)})
    only_a = [k for k in a if k not in b]
    only_b = [k for k in b if k not in a]
    for k in only_a:
        rows.append({"op": k[0], "impl": k[1], "shape": json.loads(k[2]), "dtype": k[3],
                     "verdict": "only in A"})
    for k in only_b:
        rows.append({"op": k[0], "impl": k[1], "shape": json.loads(k[2]), "dtype": k[3],
                     "verdict": "only in B"})
    return rows
