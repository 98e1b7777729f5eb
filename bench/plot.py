"""Pictures of results: a roofline and a batch sweep (matplotlib, optional), % of roof bars (rich).

Roofline: arithmetic intensity (FLOP/B) against achieved FLOP/s, log-log, under the measured
roof (each record's `roof_gbps`, and the compute roof `ridge x roof_gbps` when recorded) and the
datasheet roof (`datasheet_gbps` and the catalog's dense rate), one labeled point per ok result.
Batch sweep: for each (op, shape without M, dtype, impl) timed at several M, achieved GB/s and
TFLOP/s against M, with the ridge (the M where the case turns compute-bound) marked.
Size sweep (warm cases, `--suite sweep-size`; a third panel when present): achieved GB/s against
the working set, the LLC and the measured roof marked: a kernel as fast in cache as from DRAM is
limited by its own loop, not by memory. Warm cases the cache holds stay out of the other panels.
matplotlib is imported only when a chart is drawn, with the Agg backend (no display needed).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from rich.table import Table
from rich.text import Text

from .results import in_cache

BATCH_FIELDS = ("M", "B")  # the shape field that is the decode batch


class PlotError(ValueError):
    """Nothing sensible to draw, or matplotlib missing: one line for the user."""


# --- terminal -----------------------------------------------------------------------------------

def pct_bar(pct: float | None, width: int = 20) -> Text:
    """`██████░░░░ 61%`: green at the wall (>= 80%), yellow below, magenta above 100%."""
    if pct is None:
        return Text("-", style="dim")
    filled = max(0, min(width, round(width * pct / 100)))
    style = "magenta" if pct > 105 else "green" if pct >= 80 else "yellow"
    return Text("█" * filled, style=style) + Text("░" * (width - filled), style="dim") + \
        Text(f" {pct:.0f}%")


SHORT_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def short_dtype(name: Any) -> str:
    return SHORT_DTYPES.get(str(name), str(name))


def label(r: dict[str, Any]) -> str:
    shape = ",".join(f"{k}={v}" for k, v in (r.get("shape") or {}).items()
                     if k not in ("ragged", "pool", "block_size"))
    return f"{r['op']} {shape} {short_dtype(r.get('dtype'))} {r['impl']}"


def bars_table(records: Iterable[dict[str, Any]], title: str | None = None) -> Table:
    t = Table(title=title, header_style="bold")
    for col, j in (("op", "left"), ("shape", "left"), ("dtype", "left"), ("impl", "left"),
                   ("GB/s", "right"), ("FLOP/B", "right"), ("% of measured roof", "left")):
        t.add_column(col, justify=j)
    for r in records:
        if r.get("status") != "ok":
            continue
        shape = ",".join(f"{k}={v}" for k, v in (r.get("shape") or {}).items())
        ai = r.get("arithmetic_intensity")
        impl = r["impl"] + (" (in cache)" if in_cache(r) else "")
        t.add_row(r["op"], shape, str(r.get("dtype")), impl,
                  f"{r['achieved_gbps']:.1f}" if r.get("achieved_gbps") else "-",
                  f"{ai:.3g}" if ai is not None else "-", pct_bar(r.get("pct_roof")))
    return t


# --- data for the charts ------------------------------------------------------------------------

def ok_records(records: Iterable[dict[str, Any]], probes: bool = False) -> list[dict[str, Any]]:
    return [r for r in records if r.get("status") == "ok" and r.get("time_s")
            and r.get("achieved_gbps") and (probes or r.get("op") not in ("copy", "read"))]


def size_sweeps(records: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Warm records timed at >= 2 working sets: (op, dtype, impl) -> records by bytes."""
    groups: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for r in records:
        if r.get("warm"):
            groups[(r["op"], r.get("dtype"), r["impl"])][r["bytes"]] = r
    return {k: [g[b] for b in sorted(g)] for k, g in groups.items() if len(g) >= 2}


def roofs(records: list[dict[str, Any]]) -> dict[str, float | None]:
    """Measured and datasheet roofs (GB/s, TFLOP/s) of the records' device (best seen)."""
    def best(vals):
        vals = [v for v in vals if v]
        return max(vals) if vals else None
    meas_tf = best(r["ridge"] * r["roof_gbps"] / 1e3 for r in records
                   if r.get("ridge") and r.get("roof_gbps"))
    chip_tf = None
    chip_id = best_chip(records)
    if chip_id:
        try:
            from backends import lookup_chip
            chip_tf = lookup_chip(chip_id).bf16_tflops
        except KeyError:
            pass
    runs = {r.get("run_id") for r in records}
    seen = sorted({r["roof_gbps"] for r in records if r.get("roof_gbps")})
    return {"roof_gbps": best(r.get("roof_gbps") for r in records), "roof_tflops": meas_tf,
            "runs": len(runs), "roof_range": (seen[0], seen[-1]) if seen else None,
            "datasheet_gbps": best(r.get("datasheet_gbps") for r in records),
            "datasheet_tflops": chip_tf}


def best_chip(records: list[dict[str, Any]]) -> str | None:
    for r in records:
        chip = (r.get("device") or {}).get("chip")
        if chip:
            return chip
    return None


def sweeps(records: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Groups timed at >= 2 batch sizes: (op, shape without the batch field, dtype, impl)."""
    groups: dict[tuple, list] = defaultdict(list)
    for r in records:
        shape = r.get("shape") or {}
        bf = next((f for f in BATCH_FIELDS if f in shape), None)
        if bf is None:
            continue
        rest = tuple(sorted((k, v) for k, v in shape.items() if k != bf))
        groups[(r["op"], rest, r.get("dtype"), r["impl"], bf)].append(r)
    out = {}
    for k, rs in groups.items():
        by_m = {r["shape"][k[4]]: r for r in rs}  # one record per batch size (the last)
        if len(by_m) >= 2:
            out[k] = [by_m[m] for m in sorted(by_m)]
    return out


def ridge_batch(group: list[dict[str, Any]], bf: str) -> float | None:
    """The batch where arithmetic intensity reaches the ridge: from the op's byte model when
    registered (valid beyond the sweep), else by interpolating the records."""
    r0 = group[0]
    ridge = r0.get("ridge")
    if not ridge:
        return None
    try:
        from kernels import OPS
        op = OPS[r0["op"]]
        from kernels import parse_dtype
        dt = parse_dtype(r0["dtype"])
        m = 1
        while m <= 4096:
            shape = op.shape(**{**r0["shape"], bf: m})
            if op.flops(shape) / op.bytes_moved(shape, dt) >= ridge:
                return float(m)
            m += 1 if m < 64 else 8
        return None
    except Exception:
        pass
    pts = [(r["shape"][bf], r.get("arithmetic_intensity") or 0) for r in group]
    for (m0, a0), (m1, a1) in zip(pts, pts[1:]):
        if a0 < ridge <= a1:
            return m0 + (ridge - a0) * (m1 - m0) / (a1 - a0)
    return None


# --- matplotlib -----------------------------------------------------------------------------------

def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotError("plotting needs matplotlib: pip install 'decodewall[plot]' "
                        "(or use --terminal)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def draw(records: list[dict[str, Any]], out: str | Path, title: str | None = None) -> Path:
    """Write one PNG: the roofline, the batch sweep (or how to make one) and, when the records
    hold one, the size sweep; a batch-sweep hint gives way to the size sweep."""
    sized = size_sweeps(ok_records(records, probes=True))
    recs = [r for r in ok_records(records) if not in_cache(r)]
    if not recs and not sized:
        raise PlotError("no ok, timed (non-probe) results to plot")
    panels = ([lambda a: _roofline(a, recs)] if recs else []) + \
        ([lambda a: _batch_sweep(a, recs)] if recs and (sweeps(recs) or not sized) else []) + \
        ([lambda a: _size_sweep(a, sized)] if sized else [])
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 6.2), squeeze=False)
    for panel, a in zip(panels, axes[0]):
        panel(a)
    shown = {id(r): r for r in recs + [r for g in sized.values() for r in g]}
    r0 = next(iter(shown.values()))
    dev = (r0.get("device") or {}).get("name") or r0.get("backend")
    fig.suptitle(title or f"decodewall — {dev} ({r0.get('backend')}), {len(shown)} results")
    fig.tight_layout()
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
    except OSError as e:
        raise PlotError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return out


def _roofline(ax, recs: list[dict[str, Any]]) -> None:
    import numpy as np
    rf = roofs(recs)
    ais = [r["arithmetic_intensity"] for r in recs if r.get("arithmetic_intensity")]
    lo = min(ais + [0.1]) / 3
    hi = max(ais + [10.0]) * 3
    x = np.logspace(np.log10(lo), np.log10(hi), 200)
    if rf["roof_gbps"]:
        y = x * rf["roof_gbps"] / 1e3  # GB/s x FLOP/B = GFLOP/s; /1e3 = TFLOP/s
        if rf["roof_tflops"]:
            y = np.minimum(y, rf["roof_tflops"])
        spread = ""
        if rf["runs"] > 1 and rf["roof_range"][0] != rf["roof_range"][1]:
            spread = (f" (best of {rf['runs']} runs: {rf['roof_range'][0]:.1f}-"
                      f"{rf['roof_range'][1]:.1f} GB/s)")
        ax.plot(x, y, color="C3", lw=2, label=f"measured roof {rf['roof_gbps']:.1f} GB/s"
                + (f", {rf['roof_tflops']:.3g} TFLOP/s" if rf["roof_tflops"] else "") + spread)
    if rf["datasheet_gbps"]:
        y = x * rf["datasheet_gbps"] / 1e3
        if rf["datasheet_tflops"]:
            y = np.minimum(y, rf["datasheet_tflops"])
        ax.plot(x, y, color="0.4", lw=1.5, ls="--",
                label=f"datasheet {rf['datasheet_gbps']:.0f} GB/s"
                + (f", {rf['datasheet_tflops']:g} TFLOP/s (bf16)" if rf["datasheet_tflops"] else ""))
    else:
        ax.plot([], [], " ", label="datasheet roof: device not in the catalog")
    series = sorted({(r["impl"], short_dtype(r.get("dtype"))) for r in recs})
    markers = "os^Dv<>pPX*h"
    ops = sorted({r["op"] for r in recs})
    for r in recs:
        ai = r.get("arithmetic_intensity") or lo
        tf = r["flops"] / r["time_s"]["median"] / 1e12 if r.get("flops") else \
            r["achieved_gbps"] * ai / 1e3
        color = f"C{series.index((r['impl'], short_dtype(r.get('dtype')))) % 10}"
        ax.scatter([ai], [tf], s=36, color=color,
                   marker=markers[ops.index(r["op"]) % len(markers)], zorder=3, edgecolor="k",
                   linewidth=0.4)
        ax.annotate(label(r), (ai, tf), fontsize=6, xytext=(4, 2), textcoords="offset points",
                    alpha=0.85)
    for i, (impl, dt) in enumerate(series):
        ax.scatter([], [], color=f"C{i % 10}", label=f"{impl} ({dt})")
    for j, op in enumerate(ops):
        ax.scatter([], [], color="w", edgecolor="k", marker=markers[j % len(markers)], label=op)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte moved)")
    ax.set_ylabel("achieved TFLOP/s")
    ax.set_title("roofline")
    ax.grid(True, which="both", alpha=0.25)
    _, top = ax.get_ylim()
    ax.set_ylim(top=top * 30)  # headroom above the roof: the legend sits where no point can be
    ax.legend(fontsize=7, loc="upper left")


def _batch_sweep(ax, recs: list[dict[str, Any]]) -> None:
    groups = sweeps(recs)
    if not groups:
        ax.text(0.5, 0.5, "no batch sweep in these results\n(time one shape at several M, e.g.\n"
                "run --op gemv_bf16 --shape M=1,N=4096,K=4096 --shape M=8,...)",
                ha="center", va="center", transform=ax.transAxes, fontsize=10)
        ax.set_axis_off()
        return
    tx = ax.twinx()
    roof = roofs(recs)["roof_gbps"]
    marked = set()
    for i, (key, g) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
        op, rest, dtype, impl, bf = key
        ms = [r["shape"][bf] for r in g]
        dims = ','.join(f'{k}={v}' for k, v in rest if k not in ('ragged', 'pool', 'block_size'))
        name = f"{op} {dims} {short_dtype(dtype)} {impl}"
        ax.plot(ms, [r["achieved_gbps"] for r in g], marker="o", color=f"C{i % 10}",
                label=f"{name} GB/s")
        tx.plot(ms, [r["flops"] / r["time_s"]["median"] / 1e12 for r in g], marker="x",
                ls=":", color=f"C{i % 10}", label=f"{name} TFLOP/s")
        mr = ridge_batch(g, bf)
        if mr is not None and (op, rest, dtype) not in marked:
            marked.add((op, rest, dtype))
            ax.axvline(mr, color=f"C{i % 10}", ls="--", lw=1, alpha=0.7)
            ax.annotate(f"ridge {bf}≈{mr:.0f}", (mr, 0.98), xycoords=("data", "axes fraction"),
                        rotation=90, fontsize=7, va="top", ha="right")
    if roof:
        ax.axhline(roof, color="C3", lw=1.5, alpha=0.6, label=f"measured roof {roof:.1f} GB/s")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch (rows M of the GEMV)")
    ax.set_ylabel("achieved GB/s (solid)")
    tx.set_ylabel("achieved TFLOP/s (dotted)")
    ax.set_title("batch sweep: memory-bound until the ridge, then compute-bound")
    ax.grid(True, which="both", alpha=0.25)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = tx.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=6, loc="best")


def _size_sweep(ax, groups: dict[tuple, list[dict[str, Any]]]) -> None:
    allr = [r for g in groups.values() for r in g]
    for i, ((op, dtype, impl), g) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
        ax.plot([r["bytes"] / 2**20 for r in g], [r["achieved_gbps"] for r in g], marker="o",
                ls="--" if op in ("copy", "read") else "-", color=f"C{i % 10}",
                label=f"{op} {short_dtype(dtype)} {impl}")
    roof = roofs(allr)["roof_gbps"]
    if roof:
        ax.axhline(roof, color="C3", lw=1.5, alpha=0.6, label=f"measured roof {roof:.1f} GB/s")
    llc = next(((r.get("device") or {}).get("cache_bytes") for r in allr
                if (r.get("device") or {}).get("cache_bytes")), None)
    if llc:
        ax.axvline(llc / 2**20, color="0.3", ls=":", lw=1.2)
        ax.annotate(f"LLC {llc / 2**20:.0f} MiB", (llc / 2**20, 0.98),
                    xycoords=("data", "axes fraction"), rotation=90, fontsize=7, va="top",
                    ha="right")
    from matplotlib.ticker import FuncFormatter
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("working set (MiB, one input set reused, no flush)")
    ax.set_ylabel("achieved GB/s")
    ax.set_title("size sweep: cache to DRAM (flat = the kernel's loop is the limit)")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=6, loc="best")


__all__ = ["PlotError", "bars_table", "draw", "in_cache", "pct_bar", "ridge_batch", "roofs",
           "size_sweeps", "sweeps"]
