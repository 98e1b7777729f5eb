"""`decodewall plot RESULTS.jsonl [-o roofline.png] [--terminal]`: charts and % of roof bars."""
from __future__ import annotations

import sys

from .cli import EXTENSIONS, UsageError


def cmd_plot(args) -> int:
    from .plot import PlotError, bars_table, draw
    from .report import console
    from .results import ResultsError, read_results
    records = []
    try:
        for path in args.results:
            records += read_results(path)
    except ResultsError as e:
        raise UsageError(str(e)) from None
    if args.out:
        try:
            path = draw(records, args.out, args.title)
        except PlotError as e:
            raise UsageError(str(e)) from None
        print(f"wrote {path}", file=sys.stderr)
    if args.terminal or not args.out:
        console().print(bars_table(records, title=f"% of measured roof — {', '.join(args.results)}"))
    return 0


def register(sub) -> None:
    p = sub.add_parser("plot", help="roofline + batch-sweep chart (PNG), or % of roof bars")
    p.add_argument("results", nargs="+", metavar="RESULTS.jsonl")
    p.add_argument("-o", "--out", metavar="PNG",
                   help="write the roofline and batch-sweep chart here (needs matplotlib)")
    p.add_argument("--terminal", action="store_true",
                   help="print %% of roof bars (the default when no -o is given)")
    p.add_argument("--title", help="chart title")
    p.set_defaults(func=cmd_plot)


EXTENSIONS.append(register)
