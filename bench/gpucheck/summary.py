"""The device check's summary: one row per kernel (its key case, median % of roof, ncu byte ratio),
the project's decode goals read off the records, the flush comparison, summary.txt and
summary.json written (again as each step starts and ends, so a cut check leaves one) and the text
printed last."""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
from typing import Any

GOAL_DTYPE = "bfloat16"  # the goals are read on bf16 activations (the suite's goal cases)


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


# --- the goals ----------------------------------------------------------------------------------

def ours(r: dict[str, Any]) -> bool:
    """One of the project's own Triton kernels (the goals' subject), not a baseline or peer."""
    return r.get("kind") == "triton" and not r.get("baseline")


def _gemv_key(r: dict[str, Any]) -> tuple[int | None, int | None]:
    return r["shape"].get("N"), r["shape"].get("K")


def counts(r: dict[str, Any]) -> bool:
    """A record a goal may read: it passed its check and was timed, and the harness does not
    doubt its number (above the roof or the compute roof: a cache not defeated, a probe read
    low or a missing sync; in cache: not a DRAM reading)."""
    from ..results import in_cache, suspect
    return r.get("status") == "ok" and not in_cache(r) and not suspect(r)


def _pick(records: list[dict[str, Any]], metric: str) -> tuple[str, dict, dict] | None:
    """"Ours" on each goal shape: the best of our kernels there. (The impl at the worst of those
    shapes, which the why pass profiles; {shape key: value}; {shape key: impl}.)"""
    best: dict[tuple, tuple[float, str]] = {}
    for r in records:
        if ours(r) and counts(r) and r.get(metric) is not None:
            k = _gemv_key(r)
            if k not in best or r[metric] > best[k][0]:
                best[k] = (r[metric], r["impl"])
    if not best:
        return None
    worst = min(best, key=lambda k: best[k][0])
    return best[worst][1], {k: v for k, (v, _) in best.items()}, \
        {k: i for k, (_, i) in best.items()}


def best_ours(records: list[dict[str, Any]], op: str) -> str | None:
    """The impl of ours that the op's first goal reads (the why pass profiles it)."""
    for g in goals(records):
        if g.get("op") == op and g.get("impl"):
            return g["impl"]
    return None


def _gemv_goal(rs: list[dict[str, Any]], op: str, label: str, target: float,
               shapes: dict[tuple[int, int], str], peers: bool) -> dict[str, Any]:
    g: dict[str, Any] = {"goal": label, "op": op, "target": target, "metric": "pct_roof",
                         "shapes": list(shapes.values()), "required": len(shapes), "measured": 0,
                         "met": None}
    at = [r for r in rs if _gemv_key(r) in shapes]
    picked = _pick(at, "pct_roof")
    if picked is None:
        return g
    impl, vals, by = picked
    g.update(impl=impl, value=min(vals.values()), measured=len(vals),
             per_shape={shapes[k]: v for k, v in vals.items()},
             per_shape_impl={shapes[k]: i for k, i in by.items()})
    met = all(v >= target for v in vals.values())
    if peers:  # ahead of every peer that ran: our best median time below each of theirs, per shape
        mine: dict[tuple, float] = {}
        for r in at:
            if ours(r) and counts(r):
                k = _gemv_key(r)
                mine[k] = min(mine.get(k, r["time_s"]["median"]), r["time_s"]["median"])
        compared: dict[str, str] = {}  # peer -> the shapes where it was ahead of ours
        not_run: dict[str, dict[str, str]] = {}  # peer -> shape -> why it gave no time there
        for r in at:
            if not r.get("baseline"):
                continue
            if not counts(r):  # failed, or a time the run doubted: nothing to be ahead of
                why = (f"{r['status']}: {(r.get('error') or '')[:80]}" if r["status"] != "ok"
                       else str(r.get("verdict") or "not counted")[:80])
                not_run.setdefault(r["impl"], {}).setdefault(shapes[_gemv_key(r)], why)
                continue
            k = _gemv_key(r)
            if k in mine:
                compared.setdefault(r["impl"], "")
                if mine[k] >= r["time_s"]["median"]:
                    compared[r["impl"]] += f"{shapes[k]} "
        behind = {p: s.strip() for p, s in compared.items() if s}
        g["peers_compared"] = sorted(compared)
        g["behind"] = behind
        # a peer with no time anywhere: why (its first shape's); one compared at some shapes but
        # not at others: where and why, so that "ahead of every peer" does not hide those
        g["peers_not_run"] = {
            p: (next(iter(w.values())) if p not in compared else
                "; ".join(f"at {shape}: {why}" for shape, why in w.items()))
            for p, w in not_run.items()}
        met = met and not behind
    if not met:
        g["met"] = False
    elif len(vals) == len(shapes):
        g["met"] = True
    return g


def goals(records: list[dict[str, Any]], planned: list | None = None) -> list[dict[str, Any]]:
    """The project's decode goals, read off this run's records: INT4 and INT8 GEMV at M = 1 on
    the two largest Llama-3-70B shapes >= 85% of the measured roof and ahead of every peer in
    the run, on all four >= 60%; INT4 at M = 16 >= 70% (the M = 16 shapes the suite planned);
    paged attention, bf16, batch 64 x 4096 >= 90% and 1 x 32768 >= 85% of the datasheet.
    `met`: True, False, or None (not every shape measured, none missing the mark)."""
    from ..model.workload import layer_gemv_shapes
    by_size = sorted(layer_gemv_shapes("llama-3-70b").items(), key=lambda kv: -kv[1][0] * kv[1][1])
    all70 = {nk: f"{name} {nk[0]}x{nk[1]}" for name, nk in by_size}
    big70 = dict(list(all70.items())[:2])
    rs = [r for r in records if r.get("dtype") == GOAL_DTYPE]
    out = []
    for op, q in (("gemv_w4", "INT4"), ("gemv_w8", "INT8")):
        m1 = [r for r in rs if r["op"] == op and r["shape"].get("M") == 1]
        out.append(_gemv_goal(m1, op, f"{q} GEMV, M=1, Llama-3-70B {' and '.join(s.split()[0] for s in big70.values())}: "
                              ">= 85% of the measured roof and ahead of every peer in this run",
                              85.0, big70, peers=True))
        out.append(_gemv_goal(m1, op, f"{q} GEMV, M=1, all four Llama-3-70B shapes: >= 60% of the measured roof",
                              60.0, all70, peers=False))
    m16 = [r for r in rs if r["op"] == "gemv_w4" and r["shape"].get("M") == 16]
    want16 = [c.shape for c in planned or [] if c.op == "gemv_w4" and getattr(c.shape, "M", None) == 16]
    shapes16 = {(s.N, s.K): f"{s.N}x{s.K}" for s in want16} or \
        {_gemv_key(r): f"{r['shape']['N']}x{r['shape']['K']}" for r in m16}
    g16 = _gemv_goal(m16, "gemv_w4", "INT4 GEMV, M=16"
                     + (f", the {len(shapes16)} shapes of this suite" if shapes16 else "")
                     + ": >= 70% of the measured roof", 70.0, shapes16, peers=False)
    out.append(g16)
    for b, ctxlen, target in ((64, 4096, 90.0), (1, 32768, 85.0)):
        at = [r for r in rs if r["op"] == "paged_attention" and r["shape"].get("B") == b
              and r["shape"].get("context") == ctxlen and r["status"] == "ok"
              and r.get("pct_datasheet") is not None]
        g = {"goal": f"paged attention, bf16, batch {b} x {ctxlen}: >= {target:.0f}% of the datasheet",
             "op": "paged_attention", "B": b, "context": ctxlen, "target": target,
             "metric": "pct_datasheet", "required": 1, "measured": 0, "met": None}
        mine = [r for r in at if ours(r) and counts(r)]
        if mine:
            best = max(mine, key=lambda r: r["pct_datasheet"])
            g.update(impl=best["impl"], value=best["pct_datasheet"], measured=1,
                     met=best["pct_datasheet"] >= target)
        g["peers"] = {r["impl"]: r["pct_datasheet"] for r in at if r.get("baseline")}
        out.append(g)
    return out


def _at(target: dict[str, Any]) -> str:
    """An ncu target's shape in a few characters: ' M=16 57344x8192', ' 1x32768' (batch x
    context); '' where the shape says neither."""
    s = target.get("shape") or {}
    if "N" in s and "K" in s:
        return f" M={s.get('M', 1)} {s['N']}x{s['K']}"
    if "B" in s and "context" in s:
        return f" {s['B']}x{s['context']}"
    return ""


def goal_line(g: dict[str, Any]) -> str:
    if "value" not in g:
        return f"  [ -- ] {g['goal']}: not measured"
    tag = {True: "met ", False: "MISS", None: "part"}[g["met"]]
    short = g["target"] - g["value"]
    nd = 2 if 0 < short < 0.05 else 1  # 84.96 is not "85.0%, short by 0.0"
    text = f"  [{tag}] {g['goal']}: {g['impl']} {g['value']:.{nd}f}%"
    if g.get("per_shape") and len(g["per_shape"]) > 1:
        impls = g.get("per_shape_impl") or {}
        named = len(set(impls.values())) > 1  # ours is the best of our kernels on each shape
        text += " (worst of " + ", ".join(
            f"{s} {v:.1f}" + (f" {impls[s]}" if named and s in impls else "")
            for s, v in g["per_shape"].items()) + ")"
    if short > 0:
        text += f", short by {short:.{nd}f} points"
    if g["measured"] < g["required"]:
        text += f"; {g['measured']}/{g['required']} shapes measured"
    if "peers_compared" in g:
        if g["peers_compared"]:
            text += "; peers compared: " + ", ".join(
                p + (f" (ahead of ours on {g['behind'][p]})" if p in g["behind"] else "")
                for p in g["peers_compared"])
        else:
            text += "; no peer ran at these shapes"
        if g["peers_not_run"]:
            text += "; not compared: " + ", ".join(f"{p} ({w})" for p, w in g["peers_not_run"].items())
    if g.get("peers"):
        text += "; peers: " + ", ".join(f"{p} {v:.1f}%" for p, v in g["peers"].items())
    return text


# --- the flush comparison -----------------------------------------------------------------------

def flush_tables(data: Any) -> list[dict[str, Any]]:
    """The cases of `python -m bench.gpucheck.flushcmp --json` ({"base": mode, "cases": [{"op",
    "impl", "shape", "modes": {mode: {"median_s"}}, "diff_pct": {mode: %}} or {..., "error"}]}),
    one row each: its label, each mode's median and % against the base mode, or its error."""
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        return []
    out = []
    for e in data["cases"]:
        if not isinstance(e, dict):
            continue
        label = f"{e.get('op', '?')} {e.get('impl', '?')} " + \
            ",".join(f"{k}={v}" for k, v in (e.get("shape") or {}).items())
        modes = {m: v.get("median_s") for m, v in (e.get("modes") or {}).items()
                 if isinstance(v, dict) and isinstance(v.get("median_s"), (int, float))}
        if e.get("error") or not modes:
            out.append({"case": label, "error": e.get("error") or "no times"})
            continue
        out.append({"case": label, "base": data.get("base"), "median_s": modes,
                    "diff_pct": dict(e.get("diff_pct") or {})})
    return out


def slowest(records: list[dict[str, Any]], most: int = 6) -> list[str]:
    """The impls whose records took the most wall time (`wall_s`), as `op/impl shape N s`: what
    a time box that cut the suite spent itself on."""
    timed = sorted((r for r in records if isinstance(r.get("wall_s"), (int, float))),
                   key=lambda r: -r["wall_s"])[:most]
    return [f"{r['op']}/{r['impl']} {','.join(f'{k}={v}' for k, v in r['shape'].items())[:40]} "
            f"{r['wall_s']:.1f} s" for r in timed if r["wall_s"] >= 0.5]


def warm_line(w: dict[str, Any], dry: bool = False) -> str:
    """The background compiles (bench/gpucheck/warm.py) as a line under the steps: never a
    failure, a warning when a pair failed, a process was stopped while compiling or one ended
    on an error of its own."""
    status = "warn" if w["failed"] or w["stopped"] or w.get("crashed") else "ok"
    n = w["processes"]
    text = (f"  {'(warm)':7s} {status:8s} {w['seconds']:5.0f} s  beside pytest and configs, "
            f"{n} process{'es' if n != 1 else ''}: {w['done']} (case, impl) pair"
            f"{'s' if w['done'] != 1 else ''} "
            + ("run under the interpreter (a dry run compiles nothing)" if dry else
               f"compiled ahead ({w['configs']} configs)"))
    if w["skipped"]:
        text += f", {w['skipped']} skipped (the impl does not take the case, or is not installed)"
    if w["stopped"]:
        text += f"; {w['stopped']} stopped while still at work when configs ended"
    if w["failed"]:
        text += f"; {w['failed']} failed: " + "; ".join(w["failures"])[:300]
    if w.get("crashed"):  # warm.py's own error: its GPU path runs on no CI machine
        text += (f"; {w['crashed']} ended without finishing (see steps.log): "
                 + "; ".join(w.get("ended") or [])[:300])
    return text


# --- the files ----------------------------------------------------------------------------------

def write(c: Any, final: bool = True) -> int:
    """summary.txt and summary.json of check `c` (bench/gpucheck/check.py's Check); when
    `final`, the text is printed last and the log closed. 0 when no step failed or ran out of
    time, else 1."""
    rows = kernel_rows(c.planned, c.records, c.ncu)
    goals_ = goals(c.records, c.planned)
    dev = c.info.get("device") or {}
    chip = dev.get("chip") or c.args.chip
    lines = [f"decodewall device check{' (DRY RUN: CPU, tiny shapes)' if c.dry else ''} — "
             f"{dev.get('name', '?')} ({chip or 'not in catalog'}), backend {c.backend}, "
             f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {time.monotonic() - c.t0:.0f} s"]
    if not final:
        lines.append("PROVISIONAL: written as a step started or ended; the check did not finish "
                     "(cut from outside?) if this line is still here")
    lines.append("steps:")
    for s in c.steps.values():
        lines.append(f"  {s.name:7s} {s.status:8s} {s.seconds:5.0f} s  {s.detail}")
        if s.name == "configs" and getattr(c, "warm", None):
            lines.append(warm_line(c.warm, c.dry))
    if c.notes:
        lines.append("notes:")
        lines += [f"  - {n}" for n in c.notes]
    # The autotune picks before the kernels: a caller that keeps only the end of the output (the
    # device tool keeps its last 12,000 characters) keeps the kernels, the goals and the result.
    picks = [(r["op"], r["impl"], r["shape"], name, t["config"]) for r in c.records
             for name, t in (r.get("tuned") or {}).items()]
    if picks:
        lines.append("autotune picks (the config each Triton kernel ran; all timings in the .jsonl):")
        for op, impl, shape, name, cfg in picks:
            key = ",".join(f"{k}={v}" for k, v in shape.items())
            lines.append(f"  {op}/{impl} {key[:40]:40s} {cfg}")
    walls = slowest(c.records)
    if walls:
        lines.append("where the suite's time went (an impl's check and timing, compiles and "
                     "tuning included; the slowest " + str(len(walls)) + "): " + ", ".join(walls))
    roofs = sorted({r["roof_gbps"] for r in c.records if r.get("roof_gbps")})
    measured = ("" if not roofs else f" ({roofs[0]:.0f} GB/s)" if roofs[-1] - roofs[0] < 0.5
                else f" ({roofs[0]:.0f}-{roofs[-1]:.0f} GB/s)")
    lines.append("kernels (key case = the op's first gpu-check case; % of the roof measured in "
                 f"this run{measured}, % of datasheet; ncu = DRAM bytes / bytes_moved):")
    lines.append(f"  {'op':20s} {'impl':26s} {'kind':8s} {'ok':>5s}  {'key case':44s} {'%roof':>6s} "
                 f"{'%ds':>5s} {'med%roof':>8s} {'ncu':>6s}")

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
            lines.append(f"  ncu {n['op']}/{n['impl']}{_at(n)}: {n['error']}")
        elif n.get("ratio") is not None and not n.get("within_5pct") and not n.get("fake"):
            lines.append(f"  ncu {n['op']}/{n['impl']}{_at(n)}: hardware moved {n['ratio']:.3f}x the "
                         f"byte model ({n['dram_read_bytes']:.3g} B read, {n['dram_write_bytes']:.3g} "
                         f"B written, kernels {', '.join(sorted(set(n['kernels'])))}): explain it")
    for w in c.ncu_why:
        label = f"  why {w['op']}/{w['impl']}{_at(w)} (ncu sections{', FABRICATED' if w.get('fake') else ''})"
        if w.get("error"):
            lines.append(f"{label}: {w['error']}")
            continue
        stalls = ", ".join(f"{k} {v:.2f}" for k, v in w["stalls"].items()) or "-"
        lines.append(f"{label}: occupancy {f(w['occupancy_pct'])}% of "
                     f"{f(w['theoretical_occupancy_pct'])}% possible, issuing "
                     f"{f(w['issue_active_pct'])}% of cycles, {f(w['registers'], 0)} registers, "
                     f"{f(w['waves'], 2)} waves; warps stalled per issue: {stalls}")
    tables = flush_tables((c.flush or {}).get("json"))
    if tables:
        lines.append("L2 flush modes (bench.gpucheck.flushcmp: median time under each flush, "
                     "% against the base mode):")
        for t in tables:
            if "error" in t:
                lines.append(f"  {t['case']}: {t['error']}")
                continue
            lines.append(f"  {t['case']}: " + ", ".join(
                f"{m} {v * 1e6:.2f} us" + (f" ({t['diff_pct'][m]:+.1f}%)" if m in t["diff_pct"]
                                           and m != t["base"] else "")
                for m, v in t["median_s"].items()))
    lines.append(f"goals (the project's decode goals, read off this run's bf16 records on "
                 f"{dev.get('name', 'this device')}; ours = the best of our Triton kernels"
                 f"{'; a dry run measures none of them' if c.dry else ''}):")
    lines += [goal_line(g) for g in goals_]
    bad = [s for s in c.steps.values() if s.status in ("failed", "timeout")]
    files = sorted(p.name for p in c.out.iterdir() if p.is_file()) + ["summary.txt", "summary.json"]
    files = sorted(set(files))
    lines.append(f"files in {c.out}: {', '.join(files)}")
    if len(files) > 8:
        lines.append(f"  WARNING: {len(files)} files; the device tool brings back at most 8")
    if final and not c.dry and not bad:
        lines.append(f"next: copy these files into results/{chip or '<device>'}/ and commit; "
                     "put the kernels' % of roof in the README table")
    running = [s.name for s in c.steps.values() if s.status == "running"]
    if not final:
        lines.append(f"RESULT: incomplete (running: {', '.join(running) or 'between steps'})")
    else:
        lines.append("RESULT: " + ("ok" if not bad else
                                   "problems in " + ", ".join(f"{s.name} ({s.status})" for s in bad)))
    text = "\n".join(lines) + "\n"
    summary = {"dry_run": c.dry, "final": final, "backend": c.backend, "out": str(c.out),
               "seconds": time.monotonic() - c.t0, "env": c.info, "roof": c.roof,
               "steps": [dataclasses.asdict(s) for s in c.steps.values()],
               "notes": c.notes, "planned_cases": len(c.planned),
               "results_file": c.jsonl.name if c.jsonl else None, "peers": c.peers,
               "tests": c.tests, "flush": {**(c.flush or {}), "tables": tables},
               "warm": getattr(c, "warm", None), "kernels": rows, "ncu": c.ncu, "ncu_why": c.ncu_why, "goals": goals_,
               "ok": not bad if final else None}
    _atomic(c.out / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    _atomic(c.out / "summary.txt", text)
    if final:
        c.log.close()
        print("\n" + text, end="", flush=True)
    return 0 if not bad else 1


def _atomic(path: Any, text: str) -> None:
    """Write through a temporary name and rename: a check killed mid-write leaves the last
    whole summary, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
