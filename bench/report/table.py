"""Rich terminal rendering: result tables, the roof, backends and the chip catalog."""
from __future__ import annotations

import os
import sys
from typing import Any, Iterable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from backends import Chip

from ..errors import printable
from ..results import in_cache, suspect


def fmt_time(s: float | None) -> str:
    """µs to one decimal, ms to two, s to two; a time that rounds up to 1000 of a unit (999.96
    µs) reads in the unit above ("1.00 ms", not "1000.0 µs")."""
    if s is None:
        return "-"
    if round(s * 1e6, 1) < 1000:
        return f"{s * 1e6:.1f} µs"
    if round(s * 1e3, 2) < 1000:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_spread(s: float | None) -> str:
    """A spread (half an IQR) as fmt_time, but in ns below a microsecond: a GPU kernel's spread
    of tens of ns, or a CPU call's, at fmt_time's 0.1 µs would read "0.0 µs", no spread at all."""
    if s is None:
        return "-"
    return f"{s * 1e9:.0f} ns" if round(s * 1e9) < 1000 else fmt_time(s)


def fmt_bytes(n: float | None) -> str:
    """Three significant digits in decimal units; a size that rounds to 1000 of a unit (999.7 MB)
    reads in the unit above ("1 GB", not "1e+03 MB"), and past 999 GB in whole GB."""
    if n is None:
        return "-"
    units = (("GB", 1e9), ("MB", 1e6), ("kB", 1e3))
    for i, (unit, k) in enumerate(units):
        if n >= k:
            s = f"{n / k:.3g}"
            if "e" in s:
                return f"{n / k / 1e3:.3g} {units[i - 1][0]}" if i else f"{n / k:.0f} {unit}"
            return f"{s} {unit}"
    return f"{int(n)} B"


def fmt_num(x: float | None, nd: int = 1, suffix: str = "") -> str:
    return "-" if x is None else f"{x:.{nd}f}{suffix}"


def fmt_gbps(x: float | None) -> str:
    """GB/s to 0.1, but a rate that would round to 0.0 to two significant digits: a CPU
    all-reduce of 8 KiB moves 0.018 GB/s, and "0.0" reads as nothing moved. Written out in
    decimals, as the column's other rates are: under 1e-4 (a few bytes reduced across ranks),
    `:.2g` alone gives "1.6e-05"."""
    if x is None:
        return "-"
    from decimal import Decimal
    return format(Decimal(f"{x:.2g}"), "f") if 0 < x < 0.05 else f"{x:.1f}"


def fmt_rate(x: float) -> str:
    """A rate (tok/s): whole with thousands separators from 100 up ("1,234", never "1.23e+03"),
    three significant digits below."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def shape_text(shape: dict[str, Any]) -> str:
    """`M=1, N=6144, K=4096`: a table's shape cell, a space after each comma so that a narrow
    column wraps between fields, never inside one (folded, "N=6144" reads "N=61" over "44")."""
    return ", ".join(f"{k}={v}" for k, v in shape.items())


def plain(value: Any, style: str = "") -> Text:
    """Text shown as it is written: a name from a record, a plugin, a file or a path is never
    read as rich markup (`gemv[v2]`, `[/]`), and a record read from a file cannot drive the
    terminal (its escape sequences are dropped, as `run` drops them before it records)."""
    return Text(printable(str(value)), style=style)


def printable_record(rec: dict[str, Any]) -> dict[str, Any]:
    """A record as a table shows it: its texts (an impl's name from a plugin, an error an impl
    raised, a worker's last output line) without terminal control characters. The record saved
    keeps them, escaped by JSON."""
    return {k: printable(v) if isinstance(v, str) else v for k, v in rec.items()}


def run_title(run_id: str | None, device: str | None, backend: str | None,
              roofs: Iterable[float]) -> str:
    """`decodewall run ID — DEVICE (BACKEND), roof R GB/s`: a run's table title, the roof as the
    span of the readings its cases were judged against."""
    roofs = [r for r in roofs if r]
    roof = ""
    if roofs:
        lo, hi = min(roofs), max(roofs)
        roof = (f", roof {lo:.1f} GB/s" if hi - lo < 0.05 else
                f", roof {lo:.1f}-{hi:.1f} GB/s (re-measured)")
    return (f"decodewall run {run_id or '(no run id)'} — {device or 'unknown device'}"
            f" ({backend or '?'}){roof}")


def title_text(title: str | Text | None) -> Text | None:
    """A table title as plain text, in the style rich gives titles."""
    return plain(title, "table.title") if isinstance(title, str) else title


_STATUS_TEXT = {"failed-check": ("FAIL", "bold red"), "error": ("ERROR", "red"),
                "crashed": ("CRASHED", "bold red"), "timeout": ("TIMEOUT", "bold red"),
                "skipped": ("skipped", "dim")}


def _verdict_text(rec: dict[str, Any]) -> Text:
    st = rec.get("status")
    label, style = _STATUS_TEXT.get(st, (None, ""))
    if label:
        error = rec.get("error")
        return Text(f"{label}: {printable(str(error))}" if error is not None else label,
                    style=style)
    v = rec.get("verdict") or ""
    style = {"at the wall": "bold green", "compute-bound": "cyan"}.get(v, "yellow")
    if suspect(rec):
        style = "bold magenta"
    elif not in_cache(rec) and (rec.get("pct_roof") or 0) > 100:
        # within the margin the verdict allows, yet past the roof: not a kernel's win to show
        # in green, and the charts flag it too
        return Text(f"{v} (above the roof)", style="magenta")
    elif not in_cache(rec) and (rec.get("pct_compute") or 0) > 100:
        return Text(f"{v} (above the compute roof)", style="magenta")
    return Text(v, style=style)


TEXT_MIN_WIDTH = 6  # characters a text column (op, dtype, impl, verdict) folds into
# the columns a narrow terminal loses first, in this order, so the rest keep whole numbers
NARROW_DROPS = ("± IQR/2", "n", "FLOP/B", "% datasheet")


def results_table(records: Iterable[dict[str, Any]], title: str | Text | None = None,
                  width: int | None = None) -> Table:
    """One row a record. A "GPU util" column (NVML's busy time, beside % roof) appears when some
    record has one: a GPU shown 100% utilized at 15% of its bandwidth is busy, not at the wall;
    "% datasheet" likewise, so a CPU's table (no datasheet entry) spends no room on dashes.
    The title and every cell are plain text (impl names come from plugins, devices from the
    system). Given the console's `width`, the columns of NARROW_DROPS go, in turn, until every
    number fits whole: rich folds a cell narrower than its text, and "335" over "6.1" in a
    GB/s column reads as 335. The shape column, whose fields hold numbers too, is given a width
    no narrower than its widest field (`word_width`). The caption names what went."""
    records = list(records)
    util = any(r.get("gpu_util_pct") is not None for r in records)
    sheet = any(r.get("pct_datasheet") is not None for r in records)
    cols = [("op", "left"), ("shape", "left"), ("dtype", "left"), ("impl", "left"),
            ("time (median)", "right"), ("± IQR/2", "right"), ("n", "right"), ("GB/s", "right"),
            ("% roof", "right")] + ([("GPU util", "right")] if util else []) + (
            [("% datasheet", "right")] if sheet else []) + [("FLOP/B", "right"),
                                                           ("verdict", "left")]
    rows = []
    for r in records:
        ts = r.get("time_s") or {}
        spread = (ts["p75"] - ts["p25"]) / 2 if ts else None
        name = r["impl"] + (" (baseline)" if r.get("baseline") else "")
        cells = [plain(r["op"]), plain(shape_text(r["shape"])), plain(r.get("dtype") or "-"),
                 plain(name),
                 fmt_time(ts.get("median")), fmt_spread(spread), str(ts.get("n", "-")),
                 fmt_gbps(r.get("achieved_gbps")), fmt_num(r.get("pct_roof"), 0, "%")]
        if util:
            cells.append(fmt_num(r.get("gpu_util_pct"), 0, "%"))
        if sheet:
            cells.append(fmt_num(r.get("pct_datasheet"), 0, "%"))
        cells += [fmt_num(r.get("arithmetic_intensity"), 2), _verdict_text(r)]
        rows.append(cells)
    keep, caption = fit_columns(cols, rows, NARROW_DROPS, width, whole=("shape",))
    t = Table(title=title_text(title), show_lines=False, header_style="bold", caption=caption)
    shape_w = word_width(cols, rows, keep, "shape", width)
    for k in keep:
        t.add_column(cols[k][0], justify=cols[k][1], overflow="fold",
                     width=shape_w if cols[k][0] == "shape" else None)
    for cells in rows:
        t.add_row(*[cells[k] for k in keep])
    return t


def fit_columns(cols: list[tuple[str, str]], rows: list[list[Any]], drops: Iterable[str],
                width: int | None, whole: Iterable[str] = ()) -> tuple[list[int], str | None]:
    """The columns (indices into `cols`, as (name, justify)) kept when those named in `drops` go,
    in turn, until every number of `rows` fits `width` whole (None: keep all), and a note that
    names what went (None when nothing did). The text columns named in `whole` count their
    widest word, as number columns do."""
    whole = tuple(whole)
    keep = list(range(len(cols)))
    dropped = []
    names = [c for c, _ in cols]
    for name in (d for d in drops if d in names):  # a column the table lacks cannot go
        if width is None or _least_width(cols, rows, keep, whole) <= width:
            break
        keep.remove(names.index(name))
        dropped.append(name)
    if not dropped:
        return keep, None
    fits = _least_width(cols, rows, keep, whole) <= width
    return keep, (f"{', '.join(dropped)} left out to fit {width} columns" if fits else
                  f"{', '.join(dropped)} left out, and {width} columns are still too few: "
                  "numbers may be cut") + " (--json has every field)"


def _least_width(cols: list[tuple[str, str]], rows: list[list[Any]], keep: list[int],
                 whole: tuple[str, ...] = ()) -> int:
    """Characters the table needs with every number whole: each number column, and each text
    column named in `whole`, as wide as its widest word (a number, a unit, a header word, a
    shape's field), each other text column TEXT_MIN_WIDTH, 3 a column of border and padding, 1
    more for the last border."""
    total = 1
    for k in keep:
        col, just = cols[k]
        if just == "right" or col in whole:
            # a number and its unit may go on two lines ("74.4" over "µs"): a word must fit
            total += max([len(w) for row in rows for w in str(row[k]).split()]
                         + [len(w) for w in col.split()])
        else:
            total += TEXT_MIN_WIDTH
        total += 3
    return total


def word_width(cols: list[tuple[str, str]], rows: list[list[Any]], keep: list[int], name: str,
               width: int | None) -> int | None:
    """A fixed width for the text column `name`, whose words must not fold: rich narrows the
    widest columns first, down into a word, whatever the column's minimum. The width rich would
    level the columns to (each as wide as its text, or the level where that is more), never
    under the column's widest word where the number columns keep theirs beside it. None: no
    `width`, no such column kept, or a terminal too narrow for both (rich shares the room)."""
    k = next((k for k in keep if cols[k][0] == name), None)
    if width is None or k is None or not rows:
        return None
    natural = {j: max([len(cols[j][0])] + [len(str(row[j])) for row in rows]) for j in keep}
    word = max(len(w) for t in [name] + [str(row[k]) for row in rows] for w in t.split())
    room = width - 3 * len(keep) - 1  # a column's border and padding, and the last border
    level = _level(list(natural.values()), room)
    if min(natural[k], level) >= word:
        return min(natural[k], level)
    # held at its widest word, the column takes its room from the others, which rich levels
    # down to what is left: to nothing at 40 columns, "6.43" over "3" at 60
    rest = [j for j in keep if j != k]
    numbers = [len(w) for j in rest if cols[j][1] == "right" for row in rows
               for w in str(row[j]).split()]
    return word if _level([natural[j] for j in rest], room - word) >= max(numbers, default=0) \
        else None


def _level(natural: list[int], room: int) -> int:
    """The width rich narrows the widest columns to, so that columns of these natural widths
    fit `room` characters: each as wide as its text, or the level where that is more."""
    return max((lv for lv in range(1, max(natural, default=0) + 1)
                if sum(min(n, lv) for n in natural) <= room), default=0)


def roof_table(roof: dict[str, Any], info: dict[str, Any], chip: Chip | None) -> Table:
    t = Table(title=f"roof — {info.get('name')} ({roof['backend']})", header_style="bold")
    t.add_column("quantity")
    t.add_column("measured", justify="right")
    t.add_column("datasheet", justify="right")
    t.add_column("measured / datasheet", justify="right")
    peak = chip.mem_bw_gbps if chip else None

    def ratio(x: float | None, p: float | None) -> str:
        return f"{100 * x / p:.0f}%" if x and p else "-"

    t.add_row(f"copy GB/s (read + write; {roof.get('copy_impl', 'torch_copy')})",
              fmt_num(roof["copy_gbps"]), fmt_num(peak), ratio(roof["copy_gbps"], peak))
    t.add_row(f"read GB/s ({roof.get('read_impl', 'torch_sum')})", fmt_num(roof["read_gbps"]),
              fmt_num(peak), ratio(roof["read_gbps"], peak))
    for dt, tf in roof["matmul_tflops"].items():
        p = chip.peak_tflops(dt) if chip else None
        t.add_row(f"matmul TFLOP/s ({dt})", fmt_num(tf, 3), fmt_num(p), ratio(tf, p))
    t.caption = (f"working set {fmt_bytes(roof['working_set_bytes'])} per probe "
                 f"(LLC {fmt_bytes(info.get('cache_bytes'))}); chip: "
                 f"{chip.id + ' — ' + chip.source if chip else info.get('chip_note') or 'not in catalog'}")
    return t


CHIP_FIGURES = ("mem BW GB/s", "memory GB", "BF16 TFLOP/s", "FP8 TFLOP/s", "INT8 TOP/s", "TDP W")


def chips_table(chips: Iterable[Chip], detail: bool = False) -> Table:
    """The catalog; detail=True (chips asked for by id) adds each interconnect figure's source."""
    t = Table(title="chip catalog (datasheet peaks, dense; '-' = not published)",
              header_style="bold", show_lines=False)
    for col in ("id", "name", "mem BW GB/s", "memory GB", "on-chip SRAM", "BF16 TFLOP/s",
                "FP8 TFLOP/s", "INT8 TOP/s", "TDP W", "chip-to-chip", "source"):
        # a figure wider than its column is cut with "…", never folded: folded, 3350 GB/s at
        # 70 columns reads "335" over "0", two numbers
        t.add_column(col, overflow="ellipsis" if col in CHIP_FIGURES else "fold")
    for c in chips:
        t.add_row(c.id, c.name, fmt_num(c.mem_bw_gbps, 0), fmt_num(c.mem_gb, 0) +
                  (f" {c.mem_type}" if c.mem_gb is not None else ""), c.sram,
                  fmt_num(c.bf16_tflops, 1), fmt_num(c.fp8_tflops, 1), fmt_num(c.int8_tops, 1),
                  fmt_num(c.tdp_w, 0), interconnect_text(c, detail),
                  c.source + (f" — {c.notes}" if c.notes else ""))
    return t


def interconnect_text(c: Chip, detail: bool = False) -> str:
    """'NVLink 4 + NVSwitch: 450 GB/s a direction, 8 chips, all-reduce 6 µs' (unknowns as '?')."""
    i = c.interconnect
    bw = f"{i.link_gbps:g} GB/s a direction" if i.link_gbps is not None else "? GB/s"
    group = f", {i.group} chips" if i.group else ""
    lat = f", all-reduce {i.allreduce_latency_us:g} µs" if i.allreduce_latency_us is not None else ""
    more = f" (source: {i.source}{'; ' + i.notes if i.notes else ''})" if detail else ""
    return f"{i.fabric}: {bw}{group}{lat}{more}"


# What an output that cannot encode them (PYTHONIOENCODING=ascii, a C locale) gets for the
# characters of our own texts. The console lays out the replaced text, so a replacement may be
# longer than one character; what reaches the stream unreplaced (a name from a record) prints as
# bench.cli's one-character stand-ins.
ASCII_TEXT = str.maketrans({"±": "+/-", "≤": "<=", "≥": ">=", "→": "->", "≈": "~", "÷": "/",
                            "…": "...", "−": "-", "²": "^2", "‖": "||", "·": "-"})


class _Console(Console):
    def render_str(self, text: str, **kwargs: Any) -> Text:
        """Every string the console lays out (cells, headers, titles, captions, printed lines)
        passes here before it is measured: an ASCII output gets ASCII_TEXT's spellings."""
        try:
            "±".encode(self.encoding)
        except (UnicodeEncodeError, LookupError):
            text = text.translate(ASCII_TEXT)
        return super().render_str(text, **kwargs)

    def on_broken_pipe(self) -> None:
        """A closed pipe (`| head`) ends the command as print() would, through the CLI's own
        handler, not with rich's silent exit 1."""
        self.quiet = True
        raise BrokenPipeError


def console(stderr: bool = False) -> Console:
    """A terminal gets its own width; a pipe or file gets wide lines rather than folded cells."""
    stream = sys.stderr if stderr else sys.stdout
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:  # unset, or not a number (COLUMNS=abc)
        columns = 0
    width = None if stream.isatty() else columns if columns > 0 else 180
    # emoji=False: a name like `:fire:` in a record prints as written, not as an emoji
    return _Console(stderr=stderr, highlight=False, soft_wrap=False, width=width, emoji=False)
