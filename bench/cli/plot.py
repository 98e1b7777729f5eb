"""`decodewall plot RESULTS.jsonl... [-o PNG|DIR] [--roofline PNG] [--terminal]`: charts and bars.

`-o` writes the % of the measured roof chart (what a reader looks for first) and, beside it, the
roofline (with the batch and size sweeps the records hold): `-o charts/` writes
`charts/pct-roof.png` and `charts/roofline.png`, `-o run.png` writes `run.png` and
`run-roofline.png`. `--roofline PNG` names the roofline file, alone or with `-o`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import UsageError

PCT_NAME, ROOFLINE_NAME = "pct-roof.png", "roofline.png"  # the names inside an -o folder


def outputs(out: str | None, roofline: str | None) -> tuple[Path | None, Path | None]:
    """(% of roof PNG, roofline PNG) for the -o and --roofline arguments; None: not drawn."""
    pct = roof = None
    if out:
        p = Path(out)
        if p.is_dir() or out.endswith(("/", os.sep)):
            pct, roof = p / PCT_NAME, p / ROOFLINE_NAME
        else:
            pct = p
            roof = p.with_name(f"{p.stem}-roofline{p.suffix or '.png'}")
    if roofline:
        roof = Path(roofline)
    return pct, roof


def command(args) -> int:
    from ..report.plot import PlotError, bars_table, pct_roof_figure, roofline_figure, save
    from ..report.table import console
    from ..results import ResultsError, read_results
    records = []
    try:
        for path in args.results:
            records += read_results(path)
    except ResultsError as e:
        raise UsageError(str(e)) from None
    pct_path, roof_path = outputs(args.out, args.roofline)
    charts = [(p, make) for p, make in ((pct_path, pct_roof_figure), (roof_path, roofline_figure))
              if p is not None]
    figures, skipped = [], []
    for path, make in charts:
        try:
            figures.append((path, make(records, args.title)))
        except PlotError as e:
            skipped.append((path, str(e)))
    if charts and not figures:  # nothing to draw at all: one line, no file
        raise UsageError(skipped[-1][1])
    try:
        while figures:
            path, fig = figures.pop(0)
            print(f"wrote {save(fig, path)}", file=sys.stderr)
    except PlotError as e:
        for _, fig in figures:
            fig.clear()
        raise UsageError(str(e)) from None
    for path, why in skipped:
        print(f"not written: {path}: {why}", file=sys.stderr)
    if args.terminal or not charts:
        console().print(bars_table(records, title=f"% of measured roof — {', '.join(args.results)}"))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="%% of roof chart + roofline (PNGs), or %% of roof bars",
                       description="Draw the % of the measured roof chart and the roofline "
                       "(with batch and size sweeps when the results hold them) as PNGs, or "
                       "print % of roof bars.")
    p.add_argument("results", nargs="+", metavar="RESULTS.jsonl")
    p.add_argument("-o", "--out", metavar="PNG|DIR",
                   help="write the %% of measured roof chart to PNG and the roofline beside it "
                   "as PNG-STEM-roofline.png; a folder (existing, or ending in /) gets "
                   f"{PCT_NAME} and {ROOFLINE_NAME} (needs matplotlib)")
    p.add_argument("--roofline", metavar="PNG",
                   help="write the roofline (and the batch / size sweep panels the results "
                   "hold) here: alone, or instead of the name -o gives it")
    p.add_argument("--terminal", action="store_true",
                   help="print %% of roof bars (the default when no PNG is asked for)")
    p.add_argument("--title", help="chart title (both charts)")
    p.set_defaults(func=command)
