"""The device check's summary: one row per kernel (its key case, median % of roof, ncu byte ratio),
the goals read off the records, summary.txt and summary.json written and the text printed last."""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
from typing import Any


def kernel_rows(planned: list, records: list[dict[str, Any]],
                ncu: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (op, impl): its key case (the op's first, most important planned case),
    the median % of roof over all its cases, and the ncu byte ratio."""
    first: dict[str, str] = {}
    for c in planned:
        first.setdefault(c.op, json.dumps(dataclasses.asdict(c.shape), sort_keys=True, default=str))
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        row = rows.setdefault((r["op"], r["impl"]), {
            "op": r["op"], "impl": r["impl"], "kind": r.get("kind"), "ok": 0, "cases": 0,
            "pcts": [], "key_shape": None, "key_pct_roof": None, "key_pct_datasheet": None,
            "key_gbps": None, "statuses": set()})
        row["cases"] += 1
        row["statuses"].add(r["status"])
        if r["status"] != "ok":
            continue
        row["ok"] += 1
        if r.get("pct_roof") is not None:
            row["pcts"].append(r["pct_roof"])
        if json.dumps(r["shape"], sort_keys=True) == first.get(r["op"]) and row["key_shape"] is None:
            row.update(key_shape=r["shape"], key_pct_roof=r.get("pct_roof"),
                       key_pct_datasheet=r.get("pct_datasheet"), key_gbps=r.get("achieved_gbps"))
    for n in ncu:
        row = rows.setdefault((n["op"], n["impl"]), {
            "op": n["op"], "impl": n["impl"], "kind": "triton", "ok": 0, "cases": 0, "pcts": [],
            "key_shape": None, "key_pct_roof": None, "key_pct_datasheet": None,
            "key_gbps": None, "statuses": set()})
        row["ncu_ratio"] = n.get("ratio")
    out = []
    for row in rows.values():
        row["median_pct_roof"] = statistics.median(row["pcts"]) if row["pcts"] else None
        row["statuses"] = sorted(row["statuses"])
        del row["pcts"]
        out.append(row)
    return out


def goals(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The H100 goals of the GEMV and attention kernels, read off the records (cuda only)."""
    from ..model.workload import layer_gemv_shapes
    shapes70 = set(layer_gemv_shapes("llama-3-70b").values())
    ok = [r for r in records if r["status"] == "ok"]
    out = []
    for op, label in (("gemv_w4", "INT4 GEMV, M=1, 70B shapes: >= 90% of measured roof, ahead of _weight_int4pack_mm"),
                      ("gemv_w8", "INT8 GEMV, M=1, 70B shapes: >= 90% of measured roof")):
        rs = [r for r in ok if r["op"] == op and r["shape"].get("M") == 1
              and (r["shape"].get("N"), r["shape"].get("K")) in shapes70]
        g: dict[str, Any] = {"goal": label, "target": 90.0, "metric": "pct_roof"}
        per_impl: dict[str, list[float]] = {}
        for r in rs:
            if r.get("kind") == "triton" and r.get("pct_roof") is not None:
                per_impl.setdefault(r["impl"], []).append(r["pct_roof"])
        if per_impl:
            best = max(per_impl, key=lambda i: min(per_impl[i]))
            g.update(impl=best, value=min(per_impl[best]), shapes=len(per_impl[best]))
            g["met"] = g["value"] >= 90.0
            if op == "gemv_w4":
                base = {json.dumps(r["shape"], sort_keys=True): r["time_s"]["median"]
                        for r in rs if "int4pack" in r["impl"]}
                mine = {json.dumps(r["shape"], sort_keys=True): r["time_s"]["median"]
                        for r in rs if r["impl"] == best}
                both = [s for s in mine if s in base]
                g["ahead_of_int4pack"] = f"{sum(mine[s] < base[s] for s in both)}/{len(both)} shapes"
                if both and not all(mine[s] < base[s] for s in both):
                    g["met"] = False
        out.append(g)
    for b, ctxlen, target in ((64, 4096, 88.0), (1, 32768, 85.0)):
        rs = [r for r in ok if r["op"] == "paged_attention" and r.get("kind") == "triton"
              and r["shape"].get("B") == b and r["shape"].get("context") == ctxlen
              and r.get("pct_datasheet") is not None]
        g = {"goal": f"paged attention, batch {b} x {ctxlen}, bf16: >= {target:.0f}% of datasheet",
             "target": target, "metric": "pct_datasheet"}
        if rs:
            best = max(rs, key=lambda r: r["pct_datasheet"])
            g.update(impl=best["impl"], value=best["pct_datasheet"], met=best["pct_datasheet"] >= target)
        out.append(g)
    return out


def write(c: Any) -> int:
    """summary.txt and summary.json of a finished check `c` (bench/gpucheck/check.py's Check),
    the text printed last; 0 when no step failed or ran out of time, else 1."""
    rows = kernel_rows(c.planned, c.records, c.ncu)
    goals_ = [] if c.dry else goals(c.records)
    dev = c.info.get("device") or {}
    chip = dev.get("chip") or c.args.chip
    lines = [f"decodewall device check{' (DRY RUN: CPU, tiny shapes)' if c.dry else ''} — "
             f"{dev.get('name', '?')} ({chip or 'not in catalog'}), backend {c.backend}, "
             f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {time.monotonic() - c.t0:.0f} s"]
    lines.append("steps:")
    for s in c.steps.values():
        lines.append(f"  {s.name:7s} {s.status:8s} {s.seconds:5.0f} s  {s.detail}")
    if c.notes:
        lines.append("notes:")
        lines += [f"  - {n}" for n in c.notes]
    lines.append("kernels (key case = the op's first gpu-check case; % of the roof measured in "
                 "this run, % of datasheet; ncu = DRAM bytes / bytes_moved):")
    hdr = f"  {'op':20s} {'impl':26s} {'kind':8s} {'ok':>5s}  {'key case':44s} {'%roof':>6s} {'%ds':>5s} {'med%roof':>8s} {'ncu':>6s}"
    lines.append(hdr)

    def f(x: Any, nd: int = 1) -> str:
        return "-" if x is None else f"{x:.{nd}f}"

    for r in sorted(rows, key=lambda r: (r["op"], r["impl"])):
        key = ",".join(f"{k}={v}" for k, v in (r["key_shape"] or {}).items())
        lines.append(f"  {r['op']:20s} {r['impl']:26s} {str(r['kind']):8s} "
                     f"{r['ok']:>2d}/{r['cases']:<2d}  {key[:44]:44s} {f(r['key_pct_roof']):>6s} "
                     f"{f(r['key_pct_datasheet']):>5s} {f(r['median_pct_roof']):>8s} "
                     f"{f(r.get('ncu_ratio'), 3):>6s}")
    if not rows:
        lines.append("  (no results)")
    for n in c.ncu:
        if n.get("error"):
            lines.append(f"  ncu {n['op']}/{n['impl']}: {n['error']}")
        elif n.get("ratio") is not None and not n.get("within_5pct") and not n.get("fake"):
            lines.append(f"  ncu {n['op']}/{n['impl']}: hardware moved {n['ratio']:.3f}x the "
                         f"byte model ({n['dram_read_bytes']:.3g} B read, {n['dram_write_bytes']:.3g} "
                         f"B written, kernels {', '.join(sorted(set(n['kernels'])))}): explain it")
    for w in c.ncu_why:
        label = f"  why {w['op']}/{w['impl']} (ncu sections{', FABRICATED' if w.get('fake') else ''})"
        if w.get("error"):
            lines.append(f"{label}: {w['error']}")
            continue
        stalls = ", ".join(f"{k} {v:.2f}" for k, v in w["stalls"].items()) or "-"
        lines.append(f"{label}: occupancy {f(w['occupancy_pct'])}% of "
                     f"{f(w['theoretical_occupancy_pct'])}% possible, issuing "
                     f"{f(w['issue_active_pct'])}% of cycles, {f(w['registers'], 0)} registers, "
                     f"{f(w['waves'], 2)} waves; warps stalled per issue: {stalls}")
    picks = [(r["op"], r["impl"], r["shape"], name, t["config"]) for r in c.records
             for name, t in (r.get("tuned") or {}).items()]
    if picks:
        lines.append("autotune picks (the config each Triton kernel ran; all timings in the .jsonl):")
        for op, impl, shape, name, cfg in picks:
            key = ",".join(f"{k}={v}" for k, v in shape.items())
            lines.append(f"  {op}/{impl} {key[:40]:40s} {cfg}")
    if goals_:
        lines.append("goals (set for an H100; read here on this card):")
        for g in goals_:
            if "value" not in g:
                lines.append(f"  [ -- ] {g['goal']}: not measured")
                continue
            short = "" if g["met"] else f", short by {g['target'] - g['value']:.1f} points" \
                if g["value"] < g["target"] else ""
            extra = f", ahead of int4pack on {g['ahead_of_int4pack']}" if "ahead_of_int4pack" in g else ""
            lines.append(f"  [{'met ' if g['met'] else 'MISS'}] {g['goal']}: {g['impl']} "
                         f"{g['value']:.1f}%{short}{extra}")
    bad = [s for s in c.steps.values() if s.status in ("failed", "timeout")]
    files = sorted(p.name for p in c.out.iterdir() if p.is_file()) + ["summary.txt", "summary.json"]
    files = sorted(set(files))
    lines.append(f"files in {c.out}: {', '.join(files)}")
    if len(files) > 8:
        lines.append(f"  WARNING: {len(files)} files; the device tool brings back at most 8")
    if not c.dry and not bad:
        lines.append(f"next: copy these files into results/{chip or '<device>'}/ and commit; "
                     "put the kernels' % of roof in the README table")
    lines.append("RESULT: " + ("ok" if not bad else
                               "problems in " + ", ".join(f"{s.name} ({s.status})" for s in bad)))
    text = "\n".join(lines) + "\n"
    (c.out / "summary.txt").write_text(text, encoding="utf-8")
    summary = {"dry_run": c.dry, "backend": c.backend, "out": str(c.out),
               "seconds": time.monotonic() - c.t0, "env": c.info, "roof": c.roof,
               "steps": [dataclasses.asdict(s) for s in c.steps.values()],
               "notes": c.notes, "planned_cases": len(c.planned),
               "results_file": c.jsonl.name if c.jsonl else None,
               "kernels": rows, "ncu": c.ncu, "ncu_why": c.ncu_why, "goals": goals_,
               "ok": not bad}
    (c.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n",
                                        encoding="utf-8")
    c.log.close()
    print("\n" + text, end="", flush=True)
    return 0 if not bad else 1
