"""`decodewall chips`: the chip catalog (backends/chips.json), every figure with its source."""
from __future__ import annotations

import json

from .common import resolve_chip


def command(args) -> int:
    from backends import load_catalog
    from backends.catalog import as_dict
    from ..report.table import chips_table, console
    chips = list(load_catalog().values())
    if args.chip is not None:  # an empty --chip is an error, not the whole catalog
        chips = list({c.id: c for c in (resolve_chip(name, {}) for name in args.chip)}.values())
    if args.json:
        for c in chips:
            print(json.dumps(as_dict(c)))
    else:
        console().print(chips_table(chips, detail=args.chip is not None))
    return 0


def add_parser(sub) -> None:
    c = sub.add_parser("chips", help="the chip catalog with sources")
    c.add_argument("--chip", action="append",
                   help="only this chip, with each link figure's source (case-insensitive id; "
                        "repeatable)")
    c.add_argument("--json", action="store_true", help="one JSON object per chip, no table")
    c.set_defaults(func=command)
