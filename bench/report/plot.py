"""Pictures of results (matplotlib, optional) and % of roof bars for the terminal (rich).

Two PNGs, the first what a reader looks for:
- % of the measured roof: per case (op, shape, dtype) one horizontal bar per impl, the median
  `pct_roof` of its ok records (each record a tick when a case was run more than once), the 80%
  "at the wall" line marked, baselines hatched. An impl whose records hold no number (any status
  other than ok: failed-check, error, skipped, crashed, timeout, ...) gets an empty row saying
  why. Probes (`copy`, `read`) and warm records the cache held stay out.
- Roofline: arithmetic intensity (FLOP/B) against achieved FLOP/s, log-log, under the measured
  roof (the records' best `roof_gbps`, their range named when runs differ, and the compute roof
  `ridge x roof_gbps` when recorded) and the datasheet roof (`datasheet_gbps` and the catalog's
  dense rate); each ok result a numbered point, the numbers placed where they collide with no
  other number, point or legend, and explained in a key beside the axes. Next to it, only when
  the records hold one: a batch sweep (for each (op, shape without the batch M or B, dtype,
  impl) timed at several batches, achieved GB/s and TFLOP/s against the batch, the ridge
  marked) and a size sweep (warm cases, `--suite sweep-size`: achieved GB/s against the working
  set, the LLC and the measured roof marked: a kernel as fast in cache as from DRAM is limited by
  its own loop, not by memory). Warm cases the cache holds stay off the roofline. A dtype judged
  against a lower matmul rate (fp32 beside a CPU's native bf16) gets a compute roof of its own.
Under each chart's title, what it leaves out, counted by why (`not_drawn`); a case with no FLOPs
(a collective) has no arithmetic intensity and so no roofline point. A number above its own
measured roof is flagged (`roof_flag`) on both charts and in the bars. A chart draws one device's
roof, so it takes one device's records (`one_device`).
The terminal bars are one row a record, of any device: an ok one its bar, any other its status
and error.
matplotlib is imported only when a chart is drawn, with the Agg backend (no display needed).
"""
from __future__ import annotations

import io
import json
import math
import os
import secrets
import shutil
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from rich.table import Table
from rich.text import Text

from ..errors import printable
from ..results import compute_bound, in_cache
from .table import fmt_gbps, plain, title_text

BATCH_FIELDS = ("M", "B")  # the shape field that is the decode batch
BATCH_NAMES = {"M": "M: rows of a GEMV", "B": "B: sequences of an attention"}
PROBES = ("copy", "read")  # the ops that measure the roof itself
AT_THE_WALL = 80.0  # % of the measured roof from which a memory-bound case is "at the wall"
# layout details, not the case's size; a ragged batch shows in its context (short_shape)
HIDDEN_SHAPE_FIELDS = ("ragged", "pool", "block_size")
SHORT_FIELDS = {"group_size": "G", "context": "ctx"}


class PlotError(ValueError):
    """Nothing sensible to draw, or matplotlib missing: one line for the user."""


def one_device(records: Iterable[dict[str, Any]]) -> None:
    """A chart draws one device's roof and takes repeated records of a case for runs of it:
    records of several devices raise PlotError naming them."""
    from .compare import device
    seen = list(dict.fromkeys(device(r) for r in records))
    if len(seen) > 1:
        raise PlotError(f"records from {len(seen)} devices ({'; '.join(seen)}): a chart shows "
                        "one device's roof; plot each device's files apart, or use --terminal")


def roof_flag(r: dict[str, Any]) -> str | None:
    """What to say beside a number above its own measured roof (bandwidth or compute), or None:
    the verdict's "harness suspect" when the run judged it so. In-cache records are expected
    above the DRAM roof and are not flagged."""
    if in_cache(r):
        return None
    v = str(r.get("verdict") or "")
    if v.startswith("above the roof"):
        return "above the roof: harness suspect"
    if v.startswith("above the compute roof"):
        return "above the compute roof: harness suspect"
    if (r.get("pct_roof") or 0) > 100:
        return "above the roof"
    if (r.get("pct_compute") or 0) > 100:
        return "above the compute roof"
    return None


def intensity(r: dict[str, Any]) -> float | None:
    """FLOP/B: the record's arithmetic intensity, else flops / bytes; None where the case does
    no FLOPs (a copy, a collective), which has no place on a roofline's log axis."""
    ai = r.get("arithmetic_intensity")
    if ai:
        return float(ai)
    if r.get("flops") and r.get("bytes"):
        return r["flops"] / r["bytes"]
    return None


# --- terminal -----------------------------------------------------------------------------------

def pct_bar(pct: float | None, width: int = 20) -> Text:
    """`██████░░░░ 61%`: green at the wall (>= 80%), yellow below, magenta above 100%."""
    if pct is None:
        return Text("-", style="dim")
    filled = max(0, min(width, round(width * pct / 100)))
    style = "magenta" if pct > 100 else "green" if pct >= 80 else "yellow"
    return Text("█" * filled, style=style) + Text("░" * (width - filled), style="dim") + \
        Text(f" {pct:.0f}%")


SHORT_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def short_dtype(name: Any) -> str:
    return SHORT_DTYPES.get(str(name), str(name))


def short_shape(shape: dict[str, Any] | None, width: int = 44) -> str:
    """`M=1 N=6144 K=4096 G=128`: layout-only fields dropped, long names shortened, and cut with
    an ellipsis past `width` characters. A ragged attention batch's context reads `ctx≤4096`:
    its sequences hold half to all of it (8 x 4096 held 3235 tokens each on average), and its
    bytes count what they hold, so `ctx=4096` would overstate them by a quarter."""
    shape = shape or {}
    ragged = bool(shape.get("ragged"))
    s = " ".join(f"{SHORT_FIELDS.get(k, k)}{'≤' if k == 'context' and ragged else '='}{v}"
                 for k, v in shape.items() if k not in HIDDEN_SHAPE_FIELDS)
    return s if len(s) <= width else s[:width - 1] + "…"


def status_note(status: str, error: Any, width: int = 80) -> Text:
    """`× crashed: the worker died: SIGSEGV` (the error's last line, cut at `width`), for a
    record with no number; dim for skipped, red for the rest."""
    lines = printable(str(error or "")).strip().splitlines()
    why = lines[-1] if lines else ""
    why = why if len(why) <= width else why[:width - 1] + "…"
    return Text(f"× {status}" + (f": {why}" if why else ""),
                style="dim" if status == "skipped" else "red")


def status_counts(records: Iterable[dict[str, Any]]) -> str:
    """`7 records: 5 ok, 1 crashed, 1 skipped`."""
    counts: dict[str, int] = defaultdict(int)
    for r in records:
        counts[str(r.get("status"))] += 1
    n = sum(counts.values())
    return f"{n} record{'s' if n != 1 else ''}: " + ", ".join(f"{k} {st}" for st, k in
                                                            counts.items())


def file_labels(files: list[str]) -> list[str]:
    """Each path's file name when the names tell the files apart, else the path as given."""
    names = {p: Path(p).name for p in files}
    unique = len(set(names.values())) == len(names)
    return [names[p] if unique else p for p in files]


def bars_table(records: Iterable[dict[str, Any]], title: str | None = None,
               files: list[str] | None = None) -> Table:
    """% of roof bars, one row a record: an ok one its bar (past the ridge, how near the compute
    roof it is; `roof_flag` above its roof), any other its status and the error's last line.
    `files`, one a record, adds a file column (records read from several files). A caption
    counts the records by status when some are not ok. Names and the title are plain text."""
    records = list(records)
    t = Table(title=title_text(title), header_style="bold")
    cols = [("op", "left"), ("shape", "left"), ("dtype", "left"), ("impl", "left"),
            ("GB/s", "right"), ("FLOP/B", "right"), ("% of measured roof", "left")]
    if files is not None:
        cols.insert(0, ("file", "left"))
        files = file_labels(files)
    for col, j in cols:  # the bar column folds, so a flag or a status is never cut off
        t.add_column(col, justify=j, overflow="fold" if col in ("file", cols[-1][0])
                     else "ellipsis")
    for i, r in enumerate(records):
        shape = ",".join(f"{k}={v}" for k, v in (r.get("shape") or {}).items())
        ai = r.get("arithmetic_intensity")
        impl = r["impl"] + (" (in cache)" if in_cache(r) and r.get("status") == "ok" else "")
        status = str(r.get("status"))
        cells = [plain(r["op"]), plain(shape), plain(r.get("dtype")), plain(impl),
                 fmt_gbps(r["achieved_gbps"]) if r.get("achieved_gbps") and status == "ok" else "-",
                 f"{ai:.3g}" if ai is not None else "-",
                 pct_bar(r.get("pct_roof")) if status == "ok" else
                 status_note(status, r.get("error"))]
        if status == "ok" and compute_bound(r):
            # past the ridge a low % of the bandwidth roof is by design: say how near the
            # compute roof it is, as the PNG's bars do
            pc = r.get("pct_compute")
            cells[-1] = cells[-1] + Text(", " + compute_note(
                {"computes": [] if pc is None else [pc], "verdicts": [r["verdict"]]}))
        if status == "ok" and roof_flag(r):
            cells[-1] = cells[-1] + Text(f" {roof_flag(r)}", style="bold magenta")
        t.add_row(*([plain(files[i])] if files is not None else []), *cells)
    if any(r.get("status") != "ok" for r in records):
        t.caption = title_text(status_counts(records))
    return t


# --- data for the charts ------------------------------------------------------------------------

def ok_records(records: Iterable[dict[str, Any]], probes: bool = False) -> list[dict[str, Any]]:
    return [r for r in records if r.get("status") == "ok" and r.get("time_s")
            and r.get("achieved_gbps") and (probes or r.get("op") not in PROBES)]


def is_baseline(r: dict[str, Any]) -> bool:
    """The record's `baseline` flag; for records without one, the registered impl's."""
    if "baseline" in r:
        return bool(r["baseline"])
    try:
        from kernels import OPS
        return bool(OPS[r["op"]].impls[r["impl"]].baseline)
    except Exception:
        return False


def pct_roof_cases(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cases (op, shape, dtype, warm, flush mode) in order of first appearance, each with `how`
    (what sets it apart from a case of the same shape: "warm", the flush mode where the records
    hold several) and its impls in order of first appearance: `pcts` (% of roof of each ok
    record), `no_roof` (ok records without a measured roof), `failed` ((status, last line of the
    error) of every other record), `verdicts`, `computes` (% of the compute roof, where
    recorded) and `flags` (`roof_flag` of each ok record above its roof). Probes and in-cache
    records are left out."""
    cases: dict[tuple, dict[str, Any]] = {}
    for r in records:
        if r.get("op") in PROBES or in_cache(r):
            continue
        shape = r.get("shape") or {}
        key = (r["op"], json.dumps(shape, sort_keys=True), short_dtype(r.get("dtype")),
               bool(r.get("warm")), r.get("flush"))
        c = cases.setdefault(key, {"op": r["op"], "shape": shape, "dtype": key[2],
                                   "warm": key[3], "flush": key[4], "groups": [], "impls": {}})
        if r.get("group") and r["group"] not in c["groups"]:
            c["groups"].append(r["group"])
        i = c["impls"].setdefault(r["impl"], {"impl": r["impl"], "baseline": is_baseline(r),
                                              "pcts": [], "no_roof": 0, "failed": [],
                                              "verdicts": [], "computes": [], "flags": []})
        status = str(r.get("status"))
        if status == "ok" and r.get("pct_roof") is not None:
            i["pcts"].append(float(r["pct_roof"]))
            i["verdicts"].append(r.get("verdict") or "")
            if r.get("pct_compute") is not None:
                i["computes"].append(float(r["pct_compute"]))
            if roof_flag(r):
                i["flags"].append(roof_flag(r))
        elif status == "ok":
            i["no_roof"] += 1
        else:
            err = str(r.get("error") or "").strip().splitlines()
            i["failed"].append((status, err[-1] if err else ""))
    flushes = len({c["flush"] for c in cases.values()}) > 1
    for c in cases.values():
        c["how"] = ", ".join((["warm"] if c["warm"] else []) +
                             ([f"flush {c['flush']}"] if flushes and c["flush"] else []))
    return [{**c, "impls": list(c["impls"].values())} for c in cases.values()]


def case_title(c: dict[str, Any]) -> str:
    """`gemv_w4  M=1 N=6144 K=4096 G=128  bf16  [flush memset]  (llama-3-8b qkv)`."""
    s = f"{c['op']}   {short_shape(c['shape'], 56)}   {c['dtype']}"
    if c.get("how"):
        s += f"   [{c['how']}]"
    if len(c["groups"]) == 1:
        s += f"   ({c['groups'][0][:32]})"
    return s


def size_sweeps(records: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Warm records timed at >= 2 working sets: (op, dtype, impl) -> records by bytes."""
    groups: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for r in records:
        if r.get("warm") and r.get("bytes"):
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
    by_dtype: dict[str, float] = {}  # each dtype's own compute roof: fp32's and bf16's differ
    for r in records:
        if r.get("ridge") and r.get("roof_gbps"):
            dt = short_dtype(r.get("dtype"))
            by_dtype[dt] = max(by_dtype.get(dt, 0.0), r["ridge"] * r["roof_gbps"] / 1e3)
    runs = {r.get("run_id") for r in records}
    seen = sorted({r["roof_gbps"] for r in records if r.get("roof_gbps")})
    return {"roof_gbps": best(r.get("roof_gbps") for r in records), "roof_tflops": meas_tf,
            "roof_tflops_by_dtype": by_dtype,
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
    """Groups timed at >= 2 batch sizes of at least 1 (the sweep's axis is logarithmic): (op,
    shape without the batch field, dtype, impl)."""
    groups: dict[tuple, list] = defaultdict(list)
    for r in records:
        shape = r.get("shape") or {}
        bf = next((f for f in BATCH_FIELDS if f in shape), None)
        if bf is None or shape[bf] < 1:
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
        def intensity_at(m: int) -> float:
            shape = op.shape(**{**r0["shape"], bf: m})
            return op.flops(shape) / op.bytes_moved(shape, dt)
        lo, hi = 1, 4096  # intensity grows with the batch: the first batch at the ridge
        if intensity_at(hi) < ridge:
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if intensity_at(mid) >= ridge else (mid + 1, hi)
        return float(lo)
    except Exception:
        pass
    pts = [(r["shape"][bf], r.get("arithmetic_intensity") or 0) for r in group]
    for (m0, a0), (m1, a1) in zip(pts, pts[1:]):
        if a0 < ridge <= a1:
            return m0 + (ridge - a0) * (m1 - m0) / (a1 - a0)
    return None


# --- matplotlib -----------------------------------------------------------------------------------

DPI = 110
KEY_FONT = 7.5  # the roofline's key
STATUS_COLOR = {"skipped": "0.45"}  # every other status without a number is drawn in red
FAIL_COLOR = "#b2182b"
ABOVE_COLOR = "#c51b7d"  # a number above its own roof: the harness, not the kernel, is suspect
_CLEAR = dict(facecolor="white", edgecolor="none", alpha=0.85, pad=0.6)  # text over grid lines
# impl colors: matplotlib's cycle without its red, which marks the measured roof and failures
IMPL_COLORS = ("C0", "C1", "C2", "C4", "C5", "C6", "C8", "C9", "C7")


def mpl_text(s: Any) -> str:
    """Text matplotlib draws as written: a pair of `$` in a name, an error or a title would be
    parsed as mathtext (and a bad formula fails the whole figure), so each `$` is escaped; it is
    `printable` first, so a lone surrogate (a `\\ud800` escape in a record, a --title of bytes that
    are not UTF-8), which matplotlib's renderer refuses, is drawn as '?'."""
    return printable(str(s)).replace("$", r"\$")


def impl_color(k: int) -> str:
    return IMPL_COLORS[k % len(IMPL_COLORS)]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotError("plotting needs matplotlib: pip install 'decodewall[plot]' "
                        "(or use --terminal)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _device(records: list[dict[str, Any]]) -> str:
    r0 = records[0]
    dev = (r0.get("device") or {}).get("name") or r0.get("backend")
    return f"{dev} ({r0.get('backend')})"


def names_folder(arg: str) -> bool:
    """An output argument that names a folder: one that exists, or a path ending in a separator."""
    try:
        return Path(arg).is_dir() or arg.endswith(("/", os.sep))
    except OSError:  # a name longer than the file system takes: check_output says so
        return arg.endswith(("/", os.sep))


def output_path(arg: str, name_in_folder: str) -> Path:
    """The file an output argument names: a folder means `name_in_folder` inside it."""
    return Path(arg) / name_in_folder if names_folder(arg) else Path(arg)


def image_formats() -> dict[str, str]:
    """The file extensions (no dot) matplotlib writes, each with what it is."""
    _pyplot()
    from matplotlib.backend_bases import FigureCanvasBase
    return FigureCanvasBase.get_supported_filetypes()


def check_output(out: str | Path) -> Path:
    """The path a chart will be written to, checked before anything is drawn or written: a name
    without an extension gets .png (what matplotlib would add; the path returned is the one
    written), the extension must be a format matplotlib writes, and the path must not be a
    folder nor lie under a file or an unwritable folder. PlotError says what is wrong."""
    p = Path(out)
    if not p.suffix:
        p = p.with_name(p.name + ".png")
    ext = p.suffix[1:].lower()
    formats = image_formats()
    if ext not in formats:
        raise PlotError(f"cannot write {p}: .{ext} is not an image format matplotlib writes "
                        f"(give {', '.join('.' + f for f in sorted(formats))})")
    try:
        if p.is_dir():
            raise PlotError(f"cannot write {p}: it is a folder")
        above = p.parent
        # the folders save_all would make; a link that leads nowhere (dangling, or a loop) is
        # no folder to make
        while not above.exists() and not above.is_symlink() and above != above.parent:
            above = above.parent
        if not above.is_dir():
            raise PlotError(f"cannot write {p}: {above} is not a folder")
        if not os.access(above, os.W_OK | os.X_OK):
            raise PlotError(f"cannot write {p}: {above} is not writable")
    except OSError as e:  # a name longer than the file system takes
        raise PlotError(f"cannot write {p}: {e.strerror or e}") from None
    return p


def save_all(charts: list[tuple[Any, Path]]) -> list[Path]:
    """Write each (figure, path) of `charts`, all or none, and close the figures: every figure
    is rendered in memory first, then each is written to a new file beside its path and moved
    into place, so a failure (a folder that cannot be made, a full disk, a move refused after
    another succeeded) leaves no new chart and no folder made for one behind, and a chart it
    was replacing as it was. Paths come from check_output."""
    plt = _pyplot()
    rendered: list[tuple[Path, bytes]] = []
    try:
        for fig, path in charts:
            buf = io.BytesIO()
            try:
                # a tight box only crops or widens the canvas: where texts sit relative to each
                # other, and so the label placement, does not change
                fig.savefig(buf, format=path.suffix[1:].lower(), dpi=DPI, bbox_inches="tight",
                            pad_inches=0.15)
            except Exception as e:  # a format with a missing dependency (.pgf without LaTeX)
                why = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise PlotError(f"cannot write {path}: {why}") from None
            rendered.append((path, buf.getvalue()))
    finally:
        for fig, _ in charts:
            plt.close(fig)
    made: list[Path] = []  # folders made here, removed again on a failure
    staged: list[tuple[Path, Path]] = []
    kept: dict[Path, Path] = {}  # a file a chart replaces -> a link to it, put back on a failure
    moved: list[Path] = []
    path = None
    try:
        for path, data in rendered:
            missing = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
            for d in reversed(missing):
                try:
                    d.mkdir()
                except FileExistsError:  # another plot made it meanwhile: not ours to remove
                    if d.is_dir():
                        continue
                    raise
                made.append(d)
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
            with open(tmp, "xb") as f:  # the umask's permissions, as a plain write would get
                staged.append((tmp, path))
                f.write(data)
            if path.is_file():
                old = path.with_name(f".{path.name}.{secrets.token_hex(4)}.old")
                kept[path] = old  # first: a copy that fails half way is removed below too
                try:
                    os.link(path, old, follow_symlinks=False)
                except OSError:  # a file system without hard links, or one refusing this one
                    shutil.copyfile(path, old)
        for tmp, path in staged:
            moved.append(path)  # first: an interrupt just after the move still undoes it
            os.replace(tmp, path)
    except BaseException as e:  # an OSError, or an interrupt: Ctrl-C must not leave half either
        # all or none: the charts already moved into place go, the files they replaced return
        for done in moved:  # the last may not have moved: then there is nothing to unlink
            try:
                os.replace(kept[done], done) if done in kept else done.unlink()
            except OSError:
                pass
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        for old in kept.values():
            old.unlink(missing_ok=True)
        for d in reversed(made):
            try:
                d.rmdir()
            except OSError:
                pass
        if not isinstance(e, OSError):
            raise
        raise PlotError(f"cannot write {path}: {e.strerror or e}") from None
    for old in kept.values():
        old.unlink(missing_ok=True)
    return [p for p, _ in rendered]


def save(fig, out: str | Path) -> Path:
    """Write `fig` at `out` (checked by check_output; folders made as needed), close it, and
    return the path written."""
    try:
        path = check_output(out)
    except PlotError:
        _pyplot().close(fig)
        raise
    return save_all([(fig, path)])[0]


def draw_pct_roof(records: list[dict[str, Any]], out: str | Path,
                  title: str | None = None) -> Path:
    return save(pct_roof_figure(records, title), out)


def draw_roofline(records: list[dict[str, Any]], out: str | Path,
                  title: str | None = None) -> Path:
    return save(roofline_figure(records, title), out)


# --- what each chart leaves out -----------------------------------------------------------------

def not_drawn(records: Iterable[dict[str, Any]], drawn: Iterable[dict[str, Any]]) -> str | None:
    """What a chart leaves out of `records`, counted by why: `not drawn: 2 crashed, 3 in cache`
    (a record that is not ok by its status; an ok one as a roof probe (copy, read), in cache,
    with no FLOPs (off the roofline: a collective), or without a time or GB/s); None when every
    record is drawn."""
    ids = {id(r) for r in drawn}
    why: dict[str, int] = defaultdict(int)
    for r in records:
        if id(r) in ids:
            continue
        if r.get("status") != "ok":
            why[str(r.get("status"))] += 1
        elif r.get("op") in PROBES:
            why["roof probe"] += 1
        elif in_cache(r):
            why["in cache"] += 1
        elif r.get("time_s") and r.get("achieved_gbps"):
            why["with no FLOPs"] += 1
        else:
            why["ok without a time or GB/s"] += 1
    plural = {"roof probe": "roof probes"}
    return "not drawn: " + ", ".join(f"{n} {plural.get(w, w) if n > 1 else w}"
                                     for w, n in why.items()) if why else None


def pct_roof_drawn(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records the % of roof chart shows, as a bar or as a status: no probe, none in cache."""
    return [r for r in records if r.get("op") not in PROBES and not in_cache(r)]


def roofline_drawn(records: list[dict[str, Any]]
                   ) -> tuple[list[dict[str, Any]], dict[tuple, list[dict[str, Any]]]]:
    """(the roofline's points, the size sweep's series): ok, timed records, the roofline's not
    in cache and doing FLOPs, the size sweep's warm ones timed at two working sets or more."""
    sized = size_sweeps(ok_records(records, probes=True))
    return [r for r in ok_records(records) if not in_cache(r) and intensity(r)], sized


def chart_notes(records: list[dict[str, Any]]) -> dict[str, str | None]:
    """`not_drawn` of each chart: {"pct-roof": ..., "roofline": ...}."""
    recs, sized = roofline_drawn(records)
    return {"pct-roof": not_drawn(records, pct_roof_drawn(records)),
            "roofline": not_drawn(records, recs + [r for g in sized.values() for r in g])}


# --- % of the measured roof ----------------------------------------------------------------------

def pct_roof_figure(records: list[dict[str, Any]], title: str | None = None):
    """One horizontal bar per (case, impl), cases as headed blocks, top to bottom in the order the
    records hold them; under the title, what is not drawn (probes, in-cache records). The figure
    grows with the number of rows, so the text keeps its size."""
    one_device(records)
    cases = pct_roof_cases(records)
    if not cases:
        raise PlotError("no results for a % of roof chart (only probes or in-cache records)")
    plt = _pyplot()
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle
    from matplotlib.transforms import blended_transform_factory

    impls = list(dict.fromkeys(i["impl"] for c in cases for i in c["impls"]))
    color = {name: impl_color(k) for k, name in enumerate(impls)}
    impl_rows = [i for c in cases for i in c["impls"]]
    xmax = max([100.0] + [p for i in impl_rows for p in i["pcts"]]) * 1.1
    # rows top to bottom: the 80% line's label, then per case a header and its impls
    rows: list[tuple[str, float, Any]] = [("wall", 0.0, None)]
    y = 0.8
    for c in cases:
        y += 0.6
        rows.append(("case", y, c))
        y += 1.0
        for i in c["impls"]:
            rows.append(("impl", y, i))
            y += 1.0
    handles = [Patch(facecolor="0.45", edgecolor="0.45", label="decodewall impl"),
               Patch(facecolor=(0.55, 0.55, 0.55, 0.3), edgecolor="0.45", hatch="////",
                     label="baseline (library / reference)"),
               Line2D([], [], color="#2ca02c", ls="--", lw=1.8, label="80%: at the wall"),
               Line2D([], [], color="C3", lw=1.2, alpha=0.7, label="100%: the measured roof")]
    if any(len(i["pcts"]) > 1 for i in impl_rows):
        handles.append(Line2D([], [], color="k", marker="|", ls="", ms=10, mew=1.2,
                              label="one run (bar: their median)"))
    if any(not i["pcts"] for i in impl_rows):
        handles.append(Patch(facecolor="none", edgecolor=FAIL_COLOR, ls=(0, (2, 2)),
                             label="no number: the status says why"))
    legend_cols = min(len(handles), 4)
    legend_h = 0.35 + 0.27 * math.ceil(len(handles) / legend_cols)
    shown = pct_roof_drawn(records)
    note = not_drawn(records, shown)
    title_h = 0.5 + (0.25 if note else 0.0)  # inches above the axes
    height = 1.2 + title_h + legend_h + 0.27 * y
    fig, ax = plt.subplots(figsize=(11.5, height), dpi=DPI)
    across = blended_transform_factory(ax.transAxes, ax.transData)  # x: axes, y: data
    ax.axvspan(AT_THE_WALL, 1e6, color="#2ca02c", alpha=0.07, lw=0, zorder=0)
    ax.axvline(AT_THE_WALL, color="#2ca02c", ls="--", lw=1.8, zorder=1, gid="at-the-wall")
    ax.axvline(100, color="C3", lw=1.2, alpha=0.7, zorder=1, gid="measured-roof")
    ticks, tick_labels, tick_colors, values = [], [], [], []
    for kind, y0, item in rows:
        if kind == "wall":
            ax.text(AT_THE_WALL, y0, f"  ≥ {AT_THE_WALL:.0f}%: at the wall", color="#1a7a1a",
                    fontsize=10, fontweight="bold", va="center", ha="left", gid="at-the-wall-label")
            continue
        if kind == "case":
            ax.axhline(y0 - 0.8, color="0.75", lw=0.8, zorder=1)
            ax.text(0.004, y0, mpl_text(case_title(item)), transform=across, fontsize=10.5,
                    fontweight="bold", va="center", ha="left", gid="case-title", zorder=4,
                    bbox=_CLEAR)
            continue
        text, tcolor = _row_note(item)
        text = mpl_text(text)
        ticks.append(y0)
        name = item["impl"] if len(item["impl"]) <= 26 else item["impl"][:25] + "…"
        tick_labels.append(mpl_text(name) + (" (baseline)" if item["baseline"] else ""))
        tick_colors.append("0.1" if item["pcts"] else "0.45")
        if not item["pcts"]:
            # the empty slot: an outline across the row where the bar would be, the reason in it
            ax.add_patch(Rectangle((0.0, y0 - 0.36), 0.985, 0.72, transform=across,
                                   facecolor="none", edgecolor=tcolor, ls=(0, (2, 2)), lw=0.8,
                                   zorder=2, gid="empty-slot"))
            ax.annotate(text, (0, y0), xytext=(5, 0), textcoords="offset points", fontsize=9,
                        color=tcolor, va="center", ha="left", style="italic", gid="status-note",
                        zorder=4, bbox=_CLEAR)
            continue
        c = color[item["impl"]]
        kw = dict(facecolor=to_rgba(c, 0.28), edgecolor=c, hatch="////") if item["baseline"] \
            else dict(facecolor=c, edgecolor=c)
        ax.barh(y0, statistics.median(item["pcts"]), height=0.72, lw=0.9, zorder=2,
                gid="pct-bar", **kw)
        if len(item["pcts"]) > 1:
            ax.plot(item["pcts"], [y0] * len(item["pcts"]), "|", color="k", ms=10, mew=1.2,
                    zorder=3)
        end = max(item["pcts"])
        values.append((end, ax.annotate(text, (end, y0), xytext=(5, 0),
                                        textcoords="offset points", fontsize=9, color=tcolor,
                                        va="center", ha="left", gid="value", zorder=4,
                                        bbox=_CLEAR)))
    ax.set_yticks(ticks, tick_labels, fontsize=9.5)
    for t, c in zip(ax.get_yticklabels(), tick_colors):
        t.set_color(c)
    ax.tick_params(axis="y", length=0)
    ax.set_ylim(y - 0.4, -0.6)
    ax.set_xlim(0, xmax)
    ax.tick_params(axis="x", labelsize=9.5, top=True, labeltop=True)
    ax.grid(True, axis="x", alpha=0.25)
    ax.set_axisbelow(True)
    runs = list(dict.fromkeys(r.get("run_id") for r in records if r.get("run_id")))
    roof_vals = sorted({r["roof_gbps"] for r in records if r.get("roof_gbps")})
    # one run's readings differ when it measured the roof again between cases (drift)
    over = "over the runs" if len(runs) > 1 else "re-measured in the run"
    roof_txt = "" if not roof_vals else f" ({roof_vals[0]:.1f} GB/s)" if len(roof_vals) == 1 \
        else f" ({roof_vals[0]:.1f}-{roof_vals[-1]:.1f} GB/s {over})"
    ax.set_xlabel(f"% of the measured roof{roof_txt}: achieved GB/s ÷ the run's measured roof",
                  fontsize=10.5)
    sub = f"{len(runs)} runs" if len(runs) > 1 else f"run {runs[0]}" if runs else ""
    # title and legend get fixed room in inches: figure fractions shrink as the figure grows
    fig.suptitle(mpl_text(title or f"% of the measured roof — {_device(shown)}"
                          + (f", {sub}" if sub else "")), fontsize=13, fontweight="bold",
                 y=1 - 0.12 / height, va="top")
    if note:
        fig.text(0.5, 1 - 0.45 / height, mpl_text(note), fontsize=10, color="0.3", ha="center",
                 va="top", gid="not-drawn")
    fig.tight_layout(rect=(0, legend_h / height, 1, 1 - title_h / height))
    fig.legend(handles=handles, loc="lower center", ncol=legend_cols, fontsize=9.5,
               frameon=False, bbox_to_anchor=(0.5, 0.1 / height))
    # widen the x axis until every value text ends inside it: texts keep their size in points,
    # so the room they need is measured in pixels once the layout is final
    renderer = fig.canvas.get_renderer()
    width = ax.get_window_extent(renderer).width
    need = [end * width / (0.99 * width - t.get_window_extent(renderer).width - 5 * fig.dpi / 72)
            for end, t in values]
    xmax = max([xmax] + [n for n in need if n > 0])
    ax.set_xlim(0, xmax)
    # ticks every 10% up to 160%, then steps that keep 16 or fewer labels on the axis
    step = next((st for st in (10, 20, 25, 50, 100, 200, 250, 500) if xmax / st <= 16),
                10 ** math.ceil(math.log10(xmax / 16)))
    ax.xaxis.set_major_locator(plt.MultipleLocator(step))
    return fig


def _pct(v: float) -> str:
    return f"{v:.1f}%" if v < 9.95 else f"{v:.0f}%"


def compute_note(i: dict[str, Any]) -> str:
    """What an impl past the ridge reached, for the text beside its bar: its % of the bandwidth
    roof is low by design there, so a bare "compute-bound" would excuse a kernel that is far
    below the compute roof too. `compute-bound (91% of the compute roof)` from 80% (the
    verdict's threshold), else `below the compute roof (12% of it)`; from the verdicts alone
    where the records hold no % of the compute roof."""
    if i["computes"]:
        pc = statistics.median(i["computes"])
        return (f"compute-bound ({_pct(pc)} of the compute roof)" if pc >= AT_THE_WALL
                else f"below the compute roof ({_pct(pc)} of it)")
    if all(v == "compute-bound" for v in i["verdicts"]):
        return "compute-bound"
    return "below the compute roof"


def _row_note(i: dict[str, Any]) -> tuple[str, str]:
    """The text beside one impl's bar and its colour: the median % of roof (and the range over
    repeated runs), then what kept any record from a number."""
    notes = []
    if i["pcts"]:
        value = _pct(statistics.median(i["pcts"]))
        if len(i["pcts"]) > 1:
            value += f" ({_pct(min(i['pcts']))}-{_pct(max(i['pcts']))}, {len(i['pcts'])} runs)"
        if any(v.startswith("compute") for v in i["verdicts"]):
            value += ", " + compute_note(i)
        if i["flags"]:
            flag = max(i["flags"], key=len)  # "harness suspect" where any run was judged so
            value += f", {flag}" + (f" ×{len(i['flags'])}" if len(i["pcts"]) > 1 else "")
        notes.append(value)
    if i["no_roof"]:
        notes.append(f"ok ×{i['no_roof']}, no measured roof" if i["no_roof"] > 1
                     else "ok, no measured roof")
    by_status: dict[str, list[str]] = defaultdict(list)
    for status, err in i["failed"]:
        by_status[status].append(err)
    for status, errs in by_status.items():
        n = f" ×{len(errs)}" if len(errs) > 1 else ""
        reason = next((e for e in errs if e), "")
        if not i["pcts"] and reason:
            notes.append(f"× {status}{n}: {reason if len(reason) <= 80 else reason[:79] + '…'}")
        else:
            notes.append(f"× {status}{n}")
    if i["pcts"]:
        return "   ".join(notes), ABOVE_COLOR if i["flags"] else "0.1"
    first = next(iter(by_status), "")
    return "   ".join(notes), STATUS_COLOR.get(first, FAIL_COLOR) if first else "0.1"


# --- roofline and sweeps -------------------------------------------------------------------------

def roofline_figure(records: list[dict[str, Any]], title: str | None = None):
    """The roofline with its numbered key, then the batch sweep and the size sweep when the
    records hold them: no panel is drawn without data. The title's second line says what is not
    drawn (records that are not ok, by status; probes and in-cache records off the sweeps)."""
    one_device(records)
    recs, sized = roofline_drawn(records)
    if not recs and not sized:
        n = sum(in_cache(r) for r in ok_records(records))
        raise PlotError("no ok, timed (non-probe) results with FLOPs to plot" + (
            f" outside the cache ({n} ran in cache: shapes that fit it time the cache)" if n
            else ""))
    batch = sweeps(recs)
    others = (["batch"] if batch else []) + (["size"] if sized else [])
    plt = _pyplot()
    fig = plt.figure(dpi=DPI, layout="constrained")
    ncol = max(1, math.ceil(len(recs) / 44))
    key_w = _key_width(fig, recs, ncol) if recs else 0.0
    height = max(6.4, 0.185 * math.ceil(len(recs) / ncol) + 1.8)
    widths = ([7.0 + key_w] if recs else []) + [7.8] * len(others)
    fig.set_size_inches(sum(widths), height)
    # the roofline and its key get a subfigure of their own, so the key's width comes out of
    # that subfigure alone and the sweeps keep theirs
    subs = fig.subfigures(1, len(widths), width_ratios=widths, squeeze=False)[0] \
        if len(widths) > 1 else [fig]
    shown = {id(r): r for r in recs + [r for g in sized.values() for r in g]}
    note = not_drawn(records, shown.values())
    fig.suptitle(mpl_text((title or f"decodewall — {_device(list(shown.values()))}, "
                           f"{len(shown)} results") + (f"\n{note}" if note else "")), fontsize=13)
    # one marker per op in every panel; colours: by impl on the roofline, by series in a sweep
    style = Style(list(shown.values()))
    points = None
    if recs:
        roof_ax = subs[0].subplots()
        points = _roofline(roof_ax, recs, ncol, style)
    for name, sub in zip(others, subs[1 if recs else 0:]):
        ax = sub.subplots()
        if name == "batch":
            _batch_sweep(ax, recs, batch, style)
        else:
            _size_sweep(ax, sized, style)
    if points is not None:
        # numbers are placed once the layout is final (then frozen): room is measured in pixels
        fig.draw_without_rendering()
        fig.set_layout_engine("none")
        left = number_points(roof_ax, *points)
        if left:  # said on the chart, so a point without a number does not read as a mistake
            roof_ax.text(0.99, 0.01, f"{len(left)} of {len(points[0])} points unnumbered: "
                         "no room beside them", transform=roof_ax.transAxes, ha="right",
                         va="bottom", fontsize=8, color="0.25", gid="unnumbered",
                         bbox=dict(facecolor="white", edgecolor="0.6", alpha=0.9))
    return fig


class Style:
    """Colour by impl, marker by op, in the order the records first name them."""
    MARKERS = "os^Dv<>pPX*h"

    def __init__(self, records: list[dict[str, Any]]):
        self.impls = list(dict.fromkeys(r["impl"] for r in records))
        self.ops = list(dict.fromkeys(r["op"] for r in records))

    def color(self, impl: str) -> str:
        """The impl's colour on the roofline."""
        return impl_color(self.impls.index(impl)) if impl in self.impls else "0.3"

    def marker(self, op: str) -> str:
        return self.MARKERS[self.ops.index(op) % len(self.MARKERS)] if op in self.ops else "o"


def _key_entry(n: int, r: dict[str, Any]) -> str:
    pct = f"  {_pct(r['pct_roof'])}" if r.get("pct_roof") is not None else ""
    flag = f"  {roof_flag(r).upper()}" if roof_flag(r) else ""
    return mpl_text(f"{n:>3}  {r['op']} {short_shape(r.get('shape'), 34)} "
                    f"{short_dtype(r.get('dtype'))} {r['impl']}{pct}{flag}")


def _key_width(fig, recs: list[dict[str, Any]], ncol: int) -> float:
    """Inches the roofline's key needs: its longest entry measured, a marker and gaps added."""
    t = fig.text(0, 0, max((_key_entry(n, r) for n, r in enumerate(recs, 1)), key=len),
                 fontsize=KEY_FONT)
    w = t.get_window_extent(fig.canvas.get_renderer()).width / fig.dpi
    t.remove()
    return ncol * (w + 0.45) + 0.2


LOWER_RATE = 1.1  # a dtype's compute roof this far under the best is drawn as a roof of its own


def _roofline(ax, recs: list[dict[str, Any]], ncol: int, style: Style):
    """Draw the roofline; return (xy, numbers, colors) for `place_labels`."""
    import numpy as np
    from matplotlib.lines import Line2D
    rf = roofs(recs)
    ais = [intensity(r) for r in recs]
    ridges = [r["ridge"] for r in recs if r.get("ridge")]
    # from just left of the points to past the ridge, so the roof's bend shows
    lo = min(ais) / 4
    hi = max(ais + ridges) * 4
    x = np.logspace(np.log10(lo), np.log10(hi), 200)
    if rf["roof_gbps"]:
        y = x * rf["roof_gbps"] / 1e3  # GB/s x FLOP/B = GFLOP/s; /1e3 = TFLOP/s
        if rf["roof_tflops"]:
            y = np.minimum(y, rf["roof_tflops"])
        spread = ""
        if rf["roof_range"][0] != rf["roof_range"][1]:  # re-read within a run, or several runs
            where = f"{rf['runs']} runs" if rf["runs"] > 1 else "readings in the run"
            spread = (f"\n(best of {where}: {rf['roof_range'][0]:.1f}-"
                      f"{rf['roof_range'][1]:.1f} GB/s; each point's % is of its own)")
        # a dtype whose matmul rate is well under the best (fp32 beside a CPU's native bf16)
        # was judged against its own: drawn apart, or its cases past their ridge would sit
        # under the best rate's slope, read as memory-bound
        lower = {dt: tf for dt, tf in rf["roof_tflops_by_dtype"].items()
                 if rf["roof_tflops"] and tf < rf["roof_tflops"] / LOWER_RATE}
        top = sorted(set(rf["roof_tflops_by_dtype"]) - set(lower))
        ax.plot(x, y, color="C3", lw=2, label=f"measured roof {rf['roof_gbps']:.1f} GB/s"
                + (f", {rf['roof_tflops']:.3g} TFLOP/s" if rf["roof_tflops"] else "")
                + (f" ({', '.join(top)})" if lower else "") + spread)
        # dtypes judged against one rate (fp16 and fp32 on a CPU without native fp16, whose
        # fp16 matmul runs in fp32) share one line, not two drawn over each other
        shared: dict[str, list[str]] = {}
        for dt, tf in sorted(lower.items()):
            shared.setdefault(f"{tf:.3g}", []).append(dt)
        for rate, dts in shared.items():
            ax.plot(x, np.minimum(x * rf["roof_gbps"] / 1e3, max(lower[d] for d in dts)),
                    color="C3", lw=1.2, ls=":",
                    label=f"measured roof, {', '.join(dts)}: {rate} TFLOP/s")
    if rf["datasheet_gbps"]:
        y = x * rf["datasheet_gbps"] / 1e3
        if rf["datasheet_tflops"]:
            y = np.minimum(y, rf["datasheet_tflops"])
        ax.plot(x, y, color="0.4", lw=1.5, ls="--",
                label=f"datasheet {rf['datasheet_gbps']:.0f} GB/s"
                + (f", {rf['datasheet_tflops']:g} TFLOP/s (bf16)" if rf["datasheet_tflops"] else ""))
    else:
        ax.plot([], [], " ", label="datasheet roof: device not in the catalog")
    xy, numbers, colors, key = [], [], [], []
    for n, r in enumerate(recs, 1):
        ai = intensity(r)
        tf = r["flops"] / r["time_s"]["median"] / 1e12 if r.get("flops") else \
            r["achieved_gbps"] * ai / 1e3  # GB/s x FLOP/B = GFLOP/s
        color, marker = style.color(r["impl"]), style.marker(r["op"])
        above = roof_flag(r) is not None  # ringed, and named so in the key
        ax.scatter([ai], [tf], s=36, color=color, marker=marker, zorder=3,
                   edgecolor=ABOVE_COLOR if above else "k", linewidth=1.6 if above else 0.4)
        xy.append((ai, tf))
        numbers.append(str(n))
        colors.append(color)
        key.append(Line2D([], [], color=color, marker=marker, ls="",
                          markeredgecolor=ABOVE_COLOR if above else "k",
                          markeredgewidth=1.6 if above else 0.4, label=_key_entry(n, r)))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte moved)", fontsize=10)
    ax.set_ylabel("achieved TFLOP/s", fontsize=10)
    ax.set_title("roofline (numbers: the key on the right; % = of the measured roof)",
                 fontsize=11)
    ax.grid(True, which="both", alpha=0.25)
    tfs = [t for _, t in xy]
    ax.set_ylim(min(tfs) / 3, max(tfs + [rf["roof_tflops"] or 0]) * 8)  # the legend's room
    ax.set_xlim(lo, hi)
    ax.add_artist(ax.legend(fontsize=8, loc="upper left"))
    ax.legend(handles=key, fontsize=KEY_FONT, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                           ncol=ncol, frameon=False, handletextpad=0.3, borderaxespad=0.0,
                           columnspacing=1.0, labelspacing=0.45, title="key",
                           title_fontsize=8.5, alignment="left")
    return xy, numbers, colors


def number_points(ax, xy: list[tuple[float, float]], numbers: list[str], colors: list[str],
                  overlap_pt: float = 5.0) -> list[int]:
    """Label points whose markers overlap (centres closer than `overlap_pt` points, chained) with
    one text, `7,15,23`, in their colour when they share one; then `place_labels`. Returns the
    indices of the points left unnumbered (no room for their label)."""
    import numpy as np
    pts = ax.transData.transform(np.asarray(xy, dtype=float))
    near = (overlap_pt * ax.figure.dpi / 72) ** 2
    cluster = list(range(len(xy)))  # union-find over pairs of overlapping markers

    def root(k):
        while cluster[k] != k:
            cluster[k] = cluster[cluster[k]]
            k = cluster[k]
        return k
    for a in range(len(xy)):
        for b in range(a + 1, len(xy)):
            if ((pts[a] - pts[b]) ** 2).sum() < near:
                cluster[root(b)] = root(a)
    groups: dict[int, list[int]] = defaultdict(list)
    for k in range(len(xy)):
        groups[root(k)].append(k)
    members = sorted(groups.values())
    centre = [tuple(np.exp(np.log(np.asarray([xy[k] for k in g])).mean(axis=0))) for g in members]
    texts = [cluster_label([numbers[k] for k in g]) for g in members]
    tints = [colors[g[0]] if len({colors[k] for k in g}) == 1 else "0.2" for g in members]
    left = place_labels(ax, centre, texts, tints, points=xy)
    return sorted(k for g in left for k in members[g])


def cluster_label(numbers: list[str], listed: int = 4) -> str:
    """`7,15,23` for a few overlapping points; past `listed`, the first two, the last and the
    count (`1,8,…,406 (43)`): a list of forty numbers fits nowhere beside the chart's points."""
    if len(numbers) <= listed:
        return ",".join(numbers)
    return f"{numbers[0]},{numbers[1]},…,{numbers[-1]} ({len(numbers)})"


def place_labels(ax, xy: list[tuple[float, float]], texts: list[str], colors: list[str],
                 fontsize: float = 8.0, points: list[tuple[float, float]] | None = None
                 ) -> list[int]:
    """Write each text next to its point where its box overlaps no other placed text, no point
    and no legend inside the axes: candidates on rings of growing radius around the point, the
    nearest free one wins, a thin leader line joins text and point past the first ring. The
    markers to keep clear of are `points` (default: `xy`). A text with no free candidate is left
    out; returns the indices of those."""
    import numpy as np
    from matplotlib.transforms import Bbox
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72  # pixels per point
    area = ax.get_window_extent(renderer)
    pts = ax.transData.transform(np.asarray(xy, dtype=float)) if xy else np.zeros((0, 2))
    half = 4.0 * px  # the marker's half width (s=36 is 6 points across) and a little more
    marks = ax.transData.transform(np.asarray(points, dtype=float)) if points else pts
    taken = [Bbox.from_extents(x - half, y - half, x + half, y + half) for x, y in marks]
    for leg in [c for c in ax.get_children() if type(c).__name__ == "Legend"]:
        bb = leg.get_window_extent(renderer)
        if bb.overlaps(area):
            taken.append(bb)
    probe = ax.text(0, 0, "", fontsize=fontsize, fontweight="bold")
    from matplotlib.patheffects import withStroke
    halo = [withStroke(linewidth=2.5, foreground="white")]  # legible over grid and roof lines
    angles = [0, 45, -45, 90, -90, 135, -135, 180, 22, -22, 67, -67, 112, -112, 157, -157]
    # the loneliest points first: each takes the spot next to it before crowds spread out
    crowd = [int(((pts - p) ** 2).sum(axis=1).__lt__((24 * px) ** 2).sum()) for p in pts]
    left_out = []
    for k in sorted(range(len(xy)), key=lambda k: (crowd[k], k)):
        (x, y), (dx0, dy0), text, color = xy[k], pts[k], texts[k], colors[k]
        probe.set_text(text)
        tb = probe.get_window_extent(renderer)
        w, h = tb.width, tb.height
        spot = None
        for radius in (6, 11, 17, 24, 32, 42, 54):
            for a in angles:
                ox = radius * math.cos(math.radians(a))
                oy = radius * math.sin(math.radians(a))
                ha = "left" if ox > 1 else "right" if ox < -1 else "center"
                va = "bottom" if oy > 1 else "top" if oy < -1 else "center"
                cx, cy = dx0 + ox * px, dy0 + oy * px
                x0 = cx if ha == "left" else cx - w if ha == "right" else cx - w / 2
                y0 = cy if va == "bottom" else cy - h if va == "top" else cy - h / 2
                bb = Bbox.from_bounds(x0, y0, w, h)
                if not (area.contains(x0, y0) and area.contains(x0 + w, y0 + h)):
                    continue
                if any(bb.overlaps(t) for t in taken):
                    continue
                spot = (ox, oy, ha, va, radius, bb)
                break
            if spot:
                break
        if spot is None:
            left_out.append(k)
            continue
        ox, oy, ha, va, radius, bb = spot
        taken.append(bb.padded(2.5 * px))  # a gap, so neighbours do not read as one number
        arrow = dict(arrowstyle="-", color="0.3", lw=0.7, shrinkA=1, shrinkB=2.5) \
            if radius > 6 else None
        ax.annotate(text, (x, y), xytext=(ox, oy), textcoords="offset points", ha=ha, va=va,
                    fontsize=fontsize, color=color, fontweight="bold", arrowprops=arrow,
                    gid="point-label", zorder=4, path_effects=halo)
    probe.remove()
    return sorted(left_out)


FILLS = ("full", "none", "left", "bottom", "right", "top")  # a marker's fill, series by series


def series_fill(i: int) -> str:
    """The marker fill of a sweep's i-th series: full for the first round of colours, then
    hollow, then half, so two series of one op never look alike (the H200 check's batch sweep
    has 32)."""
    return FILLS[i // len(IMPL_COLORS) % len(FILLS)]


RIDGE_NEAR = 1.25  # ridges closer than this ratio share one label: apart they overprint


def ridge_spans(ridges: dict[tuple, list[str]]) -> list[tuple[str, int, int, list[str]]]:
    """(batch field, lowest, highest ridge, cases) of each run of ridges within RIDGE_NEAR of
    the one before: the 70B GEMVs' ridges at M = 54, 55 and 56 are one label, not three drawn
    over each other."""
    out: list[tuple[str, int, int, list[str]]] = []
    for (bf, m), cases in sorted(ridges.items()):
        if out and out[-1][0] == bf and m <= out[-1][2] * RIDGE_NEAR:
            _, lo, _, seen = out[-1]
            out[-1] = (bf, lo, m, seen + [c for c in cases if c not in seen])
        else:
            out.append((bf, m, m, list(cases)))
    return out


def _legend_below(ax, **kw) -> None:
    """A sweep's legend under its axes, a fixed distance below them (in the legend's font
    sizes), so that the tick labels and the axis label keep their room however short the axes
    become beside a tall key."""
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, 0.0), borderaxespad=4.8,
              frameon=False, **kw)


def _batch_sweep(ax, recs: list[dict[str, Any]], groups: dict[tuple, list[dict[str, Any]]],
                 style: Style) -> None:
    from matplotlib.lines import Line2D
    tx = ax.twinx()
    roof = roofs(recs)["roof_gbps"]
    ridges: dict[tuple, list[str]] = defaultdict(list)  # (batch field, rounded ridge) -> cases
    handles = []
    for i, (key, g) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
        op, rest, dtype, impl, bf = key
        ms = [r["shape"][bf] for r in g]
        color, marker, fill = impl_color(i), style.marker(op), series_fill(i)
        ax.plot(ms, [r["achieved_gbps"] for r in g], marker=marker, color=color,
                markeredgecolor="k", markeredgewidth=0.4, fillstyle=fill)
        rated = [(m, r["flops"] / r["time_s"]["median"] / 1e12) for m, r in zip(ms, g)
                 if r.get("flops")]  # a record without its FLOPs has no compute point
        if rated:
            tx.plot(*zip(*rated), marker="x", ls=":", color=color)
        handles.append(Line2D([], [], color=color, marker=marker, markeredgecolor="k",
                              markeredgewidth=0.4, fillstyle=fill,
                              label=mpl_text(f"{op} {short_shape(dict(rest))} "
                                             f"{short_dtype(dtype)} {impl}")))
        mr = ridge_batch(g, bf)
        case = f"{op} {short_dtype(dtype)}"
        if mr is not None and round(mr) >= 1 and case not in ridges[(bf, round(mr))]:
            ridges[(bf, round(mr))].append(case)
    for bf, lo, hi, cases in ridge_spans(ridges):
        for m in sorted({lo, hi}):
            ax.axvline(m, color="0.35", ls="--", lw=1, alpha=0.7)
        at = f"{lo}" if lo == hi else f"{lo}-{hi}"
        ax.annotate(mpl_text(f"ridge {bf}≈{at}: {', '.join(cases)}"), (lo, 0.98),
                    xycoords=("data", "axes fraction"), rotation=90, fontsize=7.5, va="top",
                    ha="right", gid="ridge")
    if roof:
        ax.axhline(roof, color="C3", lw=1.5, alpha=0.6)
        handles.append(Line2D([], [], color="C3", lw=1.5, alpha=0.6,
                              label=f"measured roof {roof:.1f} GB/s"))
    ax.set_xscale("log", base=2)
    fields = sorted({key[4] for key in groups}, reverse=True)  # M before B
    ax.set_xlabel("batch (" + ", ".join(BATCH_NAMES[f] for f in fields) + ")", fontsize=10)
    ax.set_ylabel("achieved GB/s (solid)", fontsize=10)
    tx.set_ylabel("achieved TFLOP/s (dotted, x)", fontsize=10)
    ax.set_title("batch sweep: memory-bound until the ridge, then compute-bound", fontsize=11)
    ax.grid(True, which="both", alpha=0.25)
    _legend_below(ax, handles=handles, ncol=1)


def _size_sweep(ax, groups: dict[tuple, list[dict[str, Any]]], style: Style) -> None:
    allr = [r for g in groups.values() for r in g]
    for i, ((op, dtype, impl), g) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
        ax.plot([r["bytes"] / 2**20 for r in g], [r["achieved_gbps"] for r in g],
                marker=style.marker(op), markeredgecolor="k", markeredgewidth=0.4,
                ls="--" if op in PROBES else "-", color=impl_color(i),
                label=mpl_text(f"{op} {short_dtype(dtype)} {impl}"))
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
    ax.set_title("size sweep: cache to DRAM (flat = the kernel's loop is the limit)", fontsize=11)
    ax.grid(True, which="both", alpha=0.25)
    _legend_below(ax, ncol=2)


__all__ = ["AT_THE_WALL", "PlotError", "bars_table", "chart_notes", "check_output",
           "draw_pct_roof", "draw_roofline", "image_formats", "in_cache", "intensity", "mpl_text",
           "names_folder", "not_drawn", "number_points", "one_device", "output_path", "pct_bar",
           "pct_roof_cases", "pct_roof_drawn", "pct_roof_figure", "place_labels", "ridge_batch",
           "roof_flag", "roofline_drawn", "roofline_figure", "roofs", "save", "save_all",
           "short_shape", "size_sweeps", "status_counts", "status_note", "sweeps"]


# --- tokens/s against chips (decodewall project --tp ... --plot) ---------------------------------

def scaling_figure(points: list[dict[str, Any]], title: str | None = None):
    """Tokens/s a sequence against the number of chips, one line per catalog chip: where adding
    chips stops paying. points: {chip, chips, tp, pp, tokens_per_s, upper_bound}; an upper bound
    (a link latency the catalog lacks) is drawn hollow."""
    pts = [p for p in points if p.get("tokens_per_s")]
    if not pts:
        raise PlotError("no split with a known tokens/s to draw")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    by_chip: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in pts:
        by_chip[p["chip"]].append(p)
    for chip, ps in by_chip.items():
        ps.sort(key=lambda p: p["chips"])
        xs, ys = [p["chips"] for p in ps], [p["tokens_per_s"] for p in ps]
        line, = ax.plot(xs, ys, "-", lw=1.5, label=mpl_text(chip))
        for p in ps:
            ax.plot(p["chips"], p["tokens_per_s"], "o", ms=7, color=line.get_color(),
                    markerfacecolor="white" if p["upper_bound"] else line.get_color())
            ax.annotate(f"{p['tp']}×{p['pp']}", (p["chips"], p["tokens_per_s"]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("chips (tensor parallel × pipeline stages, labelled tp×pp)")
    ax.set_ylabel("tokens/s a sequence")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="chip (hollow: ≤, link latency unknown)", fontsize=8, title_fontsize=8,
              loc="best")
    ax.set_title(mpl_text(title or "tokens/s a sequence against chips"), fontsize=10)
    return fig
