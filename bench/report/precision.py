"""The precision comparison: bf16 vs INT8 vs INT4 weights on one GEMV shape, measured speedup
over bf16 beside the ideal speedup from bytes alone (what a kernel at the wall would get).

Pure functions of result records (dicts with op, impl, shape, dtype, status, time_s{median},
bytes), so reports and the CLI can share them.
"""
from __future__ import annotations

from typing import Any, Iterable

from ..results import in_cache, suspect

WEIGHT_OPS = ("gemv_bf16", "gemv_w8", "gemv_w4")
LABEL = {"gemv_bf16": "bf16", "gemv_w8": "INT8", "gemv_w4": "INT4"}


def _mnk(shape: dict[str, Any]) -> tuple:
    return shape.get("M"), shape.get("N"), shape.get("K")


def precision_rows(records: Iterable[dict[str, Any]],
                   base: Iterable[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per (M, N, K, dtype) and weight precision: the fastest passing impl of each op,
    its speedup over the fastest bf16 impl and the ideal speedup bytes(bf16) / bytes(op).

    `base`: the records the fastest bf16 impl is taken from (default `records`): the whole run,
    where `records` are those a filter kept (`show --op gemv_w4` still has the run's bf16 time).
    Rows of a shape without a bf16 result get speedup None; the ideal comes from the bf16 GEMV's
    own byte count at that shape where no bf16 record has one.
    """
    best = _fastest(records)
    bf16 = best if base is None else _fastest(base)
    rows = []
    for (mnk, dtype, op), b in sorted(best.items(), key=lambda kv: (kv[0][0], str(kv[0][1]),
                                                                    WEIGHT_OPS.index(kv[0][2]))):
        base_row = bf16.get((mnk, dtype, "gemv_bf16"))
        rows.append({
            "M": mnk[0], "N": mnk[1], "K": mnk[2], "dtype": dtype, "op": op,
            "weights": LABEL[op] + (f" G={b['group']}" if b["group"] else ""),
            "impl": b["impl"], "time_s": b["t"], "bytes": b["bytes"],
            "gbps": b["bytes"] / b["t"] / 1e9,
            "speedup": base_row["t"] / b["t"] if base_row else None,
            "ideal": _ratio(base_row["bytes"] if base_row else _bf16_bytes(mnk, dtype),
                            b["bytes"]),
        })
    for row in rows:
        row["of_ideal"] = row["speedup"] / row["ideal"] if row["speedup"] and row["ideal"] else None
    return rows


def _fastest(records: Iterable[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """((M, N, K), dtype, op) -> the fastest passing record's time, impl, bytes and group. A
    record timed from the cache or judged harness suspect is no time to set beside the ideal,
    which assumes every precision streams its bytes from DRAM (`run --warm`: bf16 from DRAM,
    INT4 from the cache)."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in records:
        if r.get("op") not in WEIGHT_OPS or r.get("status", "ok") != "ok" or in_cache(r) \
                or suspect(r):
            continue
        t = (r.get("time_s") or {}).get("median")
        if not t or not r.get("bytes") or None in _mnk(r["shape"]):  # no GEMV shape: no row
            continue
        key = (_mnk(r["shape"]), r.get("dtype"), r["op"])
        if key not in best or t < best[key]["t"]:
            best[key] = {"t": t, "impl": r["impl"], "bytes": r["bytes"],
                         "group": r["shape"].get("group_size")}
    return best


def _bf16_bytes(mnk: tuple, dtype: Any) -> float | None:
    """Bytes the bf16 GEMV moves at (M, N, K) with activations of `dtype`, by its op's count
    (None: a shape or dtype it does not take, or kernels/ cannot be imported here)."""
    try:
        from kernels import OPS, parse_dtype
    except Exception:  # torch refusing its environment as it imports (TORCH_LOGS=junk)
        return None
    op = OPS["gemv_bf16"]
    try:
        return op.bytes_moved(op.shape(M=mnk[0], N=mnk[1], K=mnk[2]), parse_dtype(str(dtype)))
    except (KeyError, ValueError, TypeError):
        return None


def _ratio(a: float | None, b: float) -> float | None:
    return a / b if a is not None else None


def precision_table(records: Iterable[dict[str, Any]],
                    base: Iterable[dict[str, Any]] | None = None):
    """A rich Table of `precision_rows` (`base`: as there), or None when there is nothing to
    compare. A shape whose bf16 case gave no time (failed, cut by a time box) keeps its rows: the
    ideal, no speedup."""
    rows = precision_rows(records, base)
    if not rows or all(r["op"] == "gemv_bf16" for r in rows):
        return None
    from rich.table import Table
    from .table import fmt_gbps, fmt_num, fmt_time, plain
    t = Table(title="precision: speedup over bf16 vs the ideal from bytes", header_style="bold")
    for col in ("shape", "weights", "best impl", "time", "GB/s", "speedup", "ideal", "of ideal"):
        t.add_column(col, justify="left" if col in ("shape", "weights", "best impl") else "right")
    for r in rows:
        t.add_row(plain(f"M={r['M']} N={r['N']} K={r['K']} {r['dtype']}"), r["weights"],
                  plain(r["impl"]), fmt_time(r["time_s"]), fmt_gbps(r["gbps"]),
                  f"{r['speedup']:.2f}x" if r["speedup"] is not None else "-",
                  f"{r['ideal']:.2f}x" if r["ideal"] is not None else "-",
                  fmt_num(100 * r["of_ideal"], 0, "%") if r["of_ideal"] is not None else "-")
    if any(r["speedup"] is None for r in rows):
        t.caption = ("-: no bf16 time at that shape in the run; the ideal is from the bf16 "
                     "GEMV's byte count")
    return t
