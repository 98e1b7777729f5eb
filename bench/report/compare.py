"""Compare two result files case by case, judged against the spread of both runs.

Two medians are "faster"/"slower" only when their interquartile ranges do not overlap and both
runs took at least MIN_SAMPLES samples, "same" when they differ by less than the larger half-IQR
(the noise of either run alone explains it), and "unsure" otherwise — never by a fixed
percentage. With fewer samples quartiles are rough: from one distribution, the IQRs of two
5-sample runs miss each other about 1 time in 5, of two 10-sample runs about 1 in 30.

Two runs on a shared machine are not drawn from one distribution: its bandwidth drifts between
them, and a memory-bound kernel's time with it, which neither run's spread shows. More runs of
either side (`reruns_a`, `reruns_b`: other files of the same build and cases) make the verdict
rest on every pair of an A run and a B run: faster/slower/same only where all pairs say so,
"unsure" where they disagree.

Records are paired only with the same case: op, impl, shape, dtype, warm, the cache flush when
both files record one (CUDA), the torch thread count when both files record one (CPU: a kernel
on 2 threads and on 8 is not one measurement), and the device when a file holds records of
several. Two files of one device each are compared across devices (the lines above the table
say so).

A case timed in one run but not the other is judged by its statuses, the side that gave no time
named: "B crashed" (ok in A: a regression, as "slower" is), "A timeout, B ok" (an improvement),
"A error, B crashed", or "only in B (crashed)" when the other file lacks the case. A case with
nothing to compare (the same status in both runs, or skipped in one and absent from the other)
gets no row: `not_compared` counts those, and the table's caption says how many. A file holding
a case twice is compared by its last timed record, and a failed record beside it is named on the
row (`a_also` / `b_also`), never dropped.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any, Callable

from ..errors import printable
from ..results import FAILED

MIN_SAMPLES = 10  # the normal budget's least; fewer on either side: at most "unsure" or "same"


def device(r: dict[str, Any]) -> str:
    """The device a record was measured on, e.g. 'AMD EPYC (cpu)', or 'AMD EPYC avx512f (cpu)'
    where the record names the CPU's vector extension (CPUs of one name differ in it)."""
    d = r.get("device") if isinstance(r.get("device"), dict) else {}
    isa = f" {d['isa']}" if isinstance(d.get("isa"), str) and d["isa"] else ""
    # a name read from a file reaches the terminal: its escape sequences are dropped
    return printable(f"{d.get('name') or 'unknown device'}{isa} ({r.get('backend') or '?'})")


def devices(records: list[dict[str, Any]]) -> str:
    """The device(s) a results file was measured on, e.g. 'AMD EPYC (cpu)'."""
    return ", ".join(dict.fromkeys(device(r) for r in records))


def threads(r: dict[str, Any]) -> int | None:
    """The torch thread count a record was timed with (CPU records say it), or None."""
    d = r.get("device") if isinstance(r.get("device"), dict) else {}
    t = d.get("threads")
    return t if isinstance(t, int) and not isinstance(t, bool) else None


def case_key(r: dict[str, Any], flush: bool = False, by_device: bool = False,
             by_threads: bool = False) -> tuple:
    """What makes two records the same case. flush: the cache flush mode is part of it (both
    files record one); by_device: so is the device (a file holds several); by_threads: so is
    the torch thread count (both files record one)."""
    return (r["op"], r["impl"], json.dumps(r["shape"], sort_keys=True), r.get("dtype"),
            bool(r.get("warm")), r.get("flush") if flush else None,
            device(r) if by_device else None, threads(r) if by_threads else None)


def n_samples(t: dict[str, Any]) -> int:
    """time_s's sample count; 0 where the record does not say."""
    n = t.get("n")
    return n if isinstance(n, int) else 0


def apart(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The interquartile ranges of two time_s summaries do not overlap."""
    return b["p75"] < a["p25"] or b["p25"] > a["p75"]


def few_samples(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Either run took fewer than MIN_SAMPLES samples (or does not say how many)."""
    return min(n_samples(a), n_samples(b)) < MIN_SAMPLES


def classify(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Judge B against A from their time_s summaries (median, p25, p75, n)."""
    d = b["median"] - a["median"]
    if apart(a, b):
        return "unsure" if few_samples(a, b) else "faster" if d < 0 else "slower"
    if abs(d) <= max(a["p75"] - a["p25"], b["p75"] - b["p25"]) / 2:
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


def by_case(records: list[dict[str, Any]], key: Callable[[dict[str, Any]], tuple]
            ) -> dict[tuple, tuple[dict[str, Any], list[str]]]:
    """Each case, in order of first appearance: (the record compared: the last timed one, else
    the last failed one, else the last; the statuses of the case's failed records beside a timed
    one, which the row shows)."""
    cases: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        cases.setdefault(key(r), []).append(r)
    out = {}
    for k, rs in cases.items():
        pick = next((r for r in reversed(rs) if timed(r)), None) or \
            next((r for r in reversed(rs) if r["status"] in FAILED), rs[-1])
        out[k] = (pick, [r["status"] for r in rs if r["status"] in FAILED] if timed(pick) else [])
    return out


def keyer(recs_a: list[dict[str, Any]], recs_b: list[dict[str, Any]]
          ) -> Callable[[dict[str, Any]], tuple]:
    """case_key with flush, device and thread count as the two files call for."""
    flush = all(any(r.get("flush") for r in rs) for rs in (recs_a, recs_b))
    by_device = any(len({device(r) for r in rs}) > 1 for rs in (recs_a, recs_b))
    by_threads = all(any(threads(r) is not None for r in rs) for rs in (recs_a, recs_b))
    return lambda r: case_key(r, flush, by_device, by_threads)


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


def change(ra: dict[str, Any] | None, rb: dict[str, Any] | None, verdict: str,
           also_a: list[str], also_b: list[str]) -> str | None:
    """'regression': B failed (failed-check, error, crashed, timeout) where A did not, in the
    records compared or beside them, or B slower; 'improvement': B faster, or A failed and B is
    ok; else None (a case in one file only included)."""
    sa, sb = (r["status"] if r else None for r in (ra, rb))
    if ra and rb and (sb in FAILED or also_b) and not (sa in FAILED or also_a):
        return "regression"
    if verdict in ("slower", "faster"):
        return "regression" if verdict == "slower" else "improvement"
    if ra and rb and sa in FAILED and sb == "ok":
        return "improvement"
    return None


def rerun_failures(reruns: list[dict[tuple, tuple[dict[str, Any], list[str]]]], k: tuple
                   ) -> list[str]:
    """The statuses of a case's failed records in a side's other runs."""
    out = []
    for cases in reruns:
        pick, also = cases.get(k, (None, []))
        if pick is not None and not timed(pick):  # no time: its own status, where a failure
            also = [pick["status"]] if pick["status"] in FAILED else []
        out += also
    return out


def rerun_times(reruns: list[dict[tuple, tuple[dict[str, Any], list[str]]]], k: tuple
                ) -> list[dict[str, Any]]:
    """The time_s of a case's timed record in each of a side's other runs that has one."""
    picks = (cases.get(k, (None, []))[0] for cases in reruns)
    return [r["time_s"] for r in picks if r is not None and timed(r)]


def over_runs(runs_a: list[dict[str, Any]], runs_b: list[dict[str, Any]]
              ) -> tuple[str, Counter]:
    """The verdict over every pair of an A run and a B run (`classify`): the pairs' verdict
    where they all agree, else "unsure"; and the count of each pair verdict."""
    pairs = Counter(classify(ta, tb) for ta in runs_a for tb in runs_b)
    return (next(iter(pairs)) if len(pairs) == 1 else "unsure"), pairs


def compare(recs_a: list[dict[str, Any]], recs_b: list[dict[str, Any]],
            reruns_a: list[list[dict[str, Any]]] = (), reruns_b: list[list[dict[str, Any]]] = ()
            ) -> list[dict[str, Any]]:
    """One row a case to show: timed in both (faster/slower/same/unsure), or a status verdict.
    reruns_a / reruns_b: the records of more runs of each side; a case's rows are A's and B's,
    the other runs add their times to a timed row's verdict (every pair of runs must agree) and
    their failures of the case to `a_also` / `b_also`.
    Every row has `change`, `a_status` and `b_status` (None: not in that file), `warm`, `flush`,
    `device` and `threads` (None where not part of the match); timed rows add each side's sample
    count and quartiles, what the verdict rests on (`a_n`, `b_n`, `a_p25`, `a_p75`, `b_p25`,
    `b_p75`; `few_samples` where the spreads are apart but a run took too few samples
    to say so), status rows the error text of each side that has one (`a_error`,
    `b_error`); `a_also` / `b_also` list the statuses of a side's failed records of the case
    beside the timed one compared (in its other runs too). Timed rows say how many runs of each
    side timed the case (`a_runs`, `b_runs`) and, where there are more than one of either,
    each pair verdict's count (`run_verdicts`)."""
    key = keyer(recs_a, recs_b)
    a, b = by_case(recs_a, key), by_case(recs_b, key)
    more_a, more_b = ([by_case(rs, key) for rs in reruns] for reruns in (reruns_a, reruns_b))
    rows = []
    for k in [*a, *(k for k in b if k not in a)]:
        (ra, also_a), (rb, also_b) = a.get(k, (None, [])), b.get(k, (None, []))
        also_a, also_b = also_a + rerun_failures(more_a, k), also_b + rerun_failures(more_b, k)
        # the shape as its record has it (M, N, K), not in the key's sorted order
        row: dict[str, Any] = {"op": k[0], "impl": k[1], "shape": (ra or rb)["shape"],
                               "dtype": k[3], "warm": k[4], "flush": k[5], "device": k[6],
                               "threads": k[7]}
        if ra and rb and timed(ra) and timed(rb):
            ta, tb = ra["time_s"], rb["time_s"]
            row.update(a_median=ta["median"], b_median=tb["median"],
                       ratio=tb["median"] / ta["median"], a_gbps=ra.get("achieved_gbps"),
                       b_gbps=rb.get("achieved_gbps"), a_n=ta.get("n"), b_n=tb.get("n"),
                       a_p25=ta.get("p25"), a_p75=ta.get("p75"), b_p25=tb.get("p25"),
                       b_p75=tb.get("p75"))
            runs_a, runs_b = [ta, *rerun_times(more_a, k)], [tb, *rerun_times(more_b, k)]
            row["verdict"], pairs = over_runs(runs_a, runs_b)
            row.update(a_runs=len(runs_a), b_runs=len(runs_b))
            if len(runs_a) * len(runs_b) > 1:
                row["run_verdicts"] = dict(pairs)
            if apart(ta, tb) and few_samples(ta, tb):
                row["few_samples"] = True  # apart, but too few samples to call it
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
        row["change"] = change(ra, rb, row["verdict"], also_a, also_b)
        row["a_status"] = ra["status"] if ra else None
        row["b_status"] = rb["status"] if rb else None
        for side, also in (("a", also_a), ("b", also_b)):
            if also:
                row[f"{side}_also"] = also
        rows.append(row)
    # cases in both files first (in A's order), then those only in A, then those only in B
    order = {"only in A": 2, "only in B": 3}
    return sorted(rows, key=lambda r: order.get(r["verdict"][:9], 0))


def not_compared(recs_a: list[dict[str, Any]], recs_b: list[dict[str, Any]]) -> Counter:
    """Cases without a row, by what they were: 'crashed in both', 'skipped only in A', ..."""
    key = keyer(recs_a, recs_b)
    a, b = by_case(recs_a, key), by_case(recs_b, key)
    out: Counter = Counter()
    for k in [*a, *(k for k in b if k not in a)]:
        ra, rb = a.get(k, (None, []))[0], b.get(k, (None, []))[0]
        if (ra and rb and timed(ra) and timed(rb)) or status_verdict(ra, rb) is not None:
            continue
        if ra and rb:
            out[f"{state(ra)} in both"] += 1
        else:
            side, r = ("A", ra) if ra else ("B", rb)
            out[f"{state(r)} only in {side}"] += 1
    return out
