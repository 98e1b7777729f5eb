"""`decodewall plot RESULTS.jsonl... [-o PNG|DIR] [--roofline PNG|DIR] [--terminal]`: charts, bars.

`-o` writes the % of the measured roof chart (what a reader looks for first) and, beside it, the
roofline (with the batch and size sweeps the records hold): `-o charts/` writes
`charts/pct-roof.png` and `charts/roofline.png`, `-o run.png` writes `run.png` and
`run-roofline.png`. `--roofline PNG` names the roofline file, alone or with `-o` (a folder:
`roofline.png` in it). A name without an extension gets .png; any format matplotlib writes
(.svg, .pdf, ...) may be asked for by its extension. Every output path is checked before
anything is drawn, and the charts are written all or none; each path printed says what its
chart leaves out, as the chart does. Charts take one device's records (a roof a chart); records of
several devices are a usage error there. `--terminal` prints one row a record, with a file column
when several files are given, from any devices.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UsageError
from .common import given, read_files

PCT_NAME, ROOFLINE_NAME = "pct-roof.png", "roofline.png"  # the names inside a folder


def outputs(out: str | None, roofline: str | None) -> tuple[Path | None, Path | None]:
    """(% of roof chart, roofline chart) for the -o and --roofline arguments; None: not drawn."""
    from ..report.plot import names_folder, output_path
    pct = roof = None
    if out:
        p = Path(out)
        if names_folder(out):
            pct, roof = p / PCT_NAME, p / ROOFLINE_NAME
        else:
            pct = p
            roof = p.with_name(f"{p.stem}-roofline{p.suffix or '.png'}")
    if roofline:
        roof = output_path(roofline, ROOFLINE_NAME)
    return pct, roof


def command(args) -> int:
    from ..report.plot import (PlotError, bars_table, chart_notes, check_output, one_device,
                               pct_roof_figure, roofline_figure, save_all)
    from ..report.table import console
    records, files = read_files(args.results)
    charts = [(p, make) for p, make in zip(outputs(args.out, args.roofline),
                                           (pct_roof_figure, roofline_figure)) if p is not None]
    notes = chart_notes(records) if charts else {}
    try:  # one device's records, and every output path, before anything is drawn
        if charts:
            one_device(records)
        charts = [(check_output(p), make) for p, make in charts]
    except PlotError as e:
        raise UsageError(str(e)) from None
    if len(charts) == 2 and charts[0][0].resolve() == charts[1][0].resolve():
        raise UsageError(f"-o and --roofline both name {charts[0][0]}: give two files")
    figures, skipped, noted = [], [], {}
    for path, make in charts:
        try:
            figures.append((make(records, args.title), path))
            noted[path] = notes["pct-roof" if make is pct_roof_figure else "roofline"]
        except PlotError as e:
            skipped.append((path, str(e)))
    if charts and not figures:  # nothing to draw at all: one line, no file
        raise UsageError("; ".join(dict.fromkeys(why for _, why in skipped)))
    try:
        written = save_all(figures) if figures else []
    except PlotError as e:
        raise UsageError(str(e)) from None
    for path in written:
        note = noted.get(path)
        print(f"wrote {path}" + (f" ({note})" if note else ""), file=sys.stderr)
    for path, why in skipped:
        print(f"not written: {path}: {why}", file=sys.stderr)
    if args.terminal or not charts:
        title = f"% of measured roof — {', '.join(args.results)}"
        console().print(bars_table(records, title=title,
                                   files=files if len(args.results) > 1 else None))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="%% of roof chart + roofline (PNGs), or %% of roof bars",
                       description="Draw the % of the measured roof chart and the roofline "
                       "(with batch and size sweeps when the results hold them) as PNGs, or "
                       "print % of roof bars, one row a record (its status when not ok). A "
                       "number above its own roof is flagged. Charts take one device's "
                       "records; --terminal takes any.")
    p.add_argument("results", nargs="+", metavar="RESULTS.jsonl", type=given)
    p.add_argument("-o", "--out", metavar="PNG|DIR", type=given,
                   help="write the %% of measured roof chart to PNG and the roofline beside it "
                   "as STEM-roofline.EXT (run.png: run-roofline.png); a folder (existing, or "
                   f"ending in /) gets {PCT_NAME} and {ROOFLINE_NAME}; no extension: .png; "
                   "another extension matplotlib writes (.svg, .pdf, ...) picks that format "
                   "(needs matplotlib)")
    p.add_argument("--roofline", metavar="PNG|DIR", type=given,
                   help="write the roofline (and the batch / size sweep panels the results "
                   "hold) here: alone, or instead of the name -o gives it; a folder gets "
                   f"{ROOFLINE_NAME}")
    p.add_argument("--terminal", action="store_true",
                   help="print %% of roof bars, one row a record, a file column with several "
                   "files (the default when no PNG is asked for)")
    p.add_argument("--title", help="chart title (both charts)")
    p.set_defaults(func=command)
