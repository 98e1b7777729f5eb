"""`decodewall compare A.jsonl B.jsonl`: two results files case by case, B against A."""
from __future__ import annotations

import json

from ..errors import UsageError


def command(args) -> int:
    from rich.table import Table
    from rich.text import Text
    from ..report.compare import compare, devices
    from ..report.table import console, fmt_shape, fmt_time, plain
    from ..results import ResultsError, read_results
    try:
        a, b = read_results(args.a), read_results(args.b)
    except ResultsError as e:
        raise UsageError(str(e)) from None
    rows = compare(a, b)
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    da, db = devices(a), devices(b)
    con = console()
    con.print(f"A: {args.a}\nB: {args.b}", soft_wrap=True, markup=False)
    con.print(f"both on {da}" if da == db else f"different devices: A on {da}, B on {db}; "
              "each impl is compared with itself", soft_wrap=True, markup=False)
    t = Table(title="compare: B against A", header_style="bold")
    for col in ("op", "shape", "dtype", "impl", "A median", "B median", "B/A", "verdict"):
        t.add_column(col)
    style = {"faster": "green", "slower": "red", "same": "", "unsure": "yellow"}
    for r in rows:
        t.add_row(plain(r["op"]), plain(fmt_shape(r["shape"])), plain(r["dtype"]), plain(r["impl"]),
                  fmt_time(r.get("a_median")), fmt_time(r.get("b_median")),
                  f"{r['ratio']:.3f}" if "ratio" in r else "-",
                  Text(r["verdict"], style=style.get(r["verdict"], "dim")))
    if not rows:
        t.caption = "no timed case in either file"
    con.print(t)
    return 0


def add_parser(sub) -> None:
    cp = sub.add_parser("compare", help="compare two results files case by case")
    cp.add_argument("a", metavar="A.jsonl")
    cp.add_argument("b", metavar="B.jsonl")
    cp.add_argument("--json", action="store_true")
    cp.set_defaults(func=command)
