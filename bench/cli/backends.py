"""`decodewall backends`: which backends run here, on what device, and why not where one cannot."""
from __future__ import annotations

import json
from typing import Any


def command(args) -> int:
    from backends import BACKENDS, get_backend
    from kernels.cbuild import default_march
    from ..report.table import console, fmt_bytes, plain
    from ..results import versions
    from rich.table import Table
    rows = []
    for name in BACKENDS:
        b = get_backend(name)
        ok, why = b.available()
        row: dict[str, Any] = {"backend": name, "available": ok, "reason": why or None}
        if ok:
            try:
                row["device"] = b.device_info()
            except Exception as e:  # a broken driver is a finding to show, not a crash
                row.update(available=False, reason=f"device query failed: {e}")
        rows.append(row)
    vers = versions()
    if args.json:
        for r in rows:
            print(json.dumps({**r, "versions": vers}, default=str))
        return 0
    t = Table(title="backends", header_style="bold")
    for col in ("backend", "available", "device", "catalog chip", "memory", "cache (LLC)", "notes"):
        t.add_column(col, overflow="fold")
    for r in rows:
        d = r.get("device") or {}
        # device names, reasons and versions come from drivers and packages: plain text, never
        # rich markup (rich reads the "[xla]" of "pip install 'decodewall[xla]'" as a tag)
        name = d.get("name", "-")
        if r["backend"] == "cpu" and d.get("isa"):  # which loops its C kernels are built with
            nodes = d.get("numa_nodes")
            name = f"{name} ({d['isa']}; C kernels -march={default_march()}" + (
                f"; {nodes} NUMA nodes)" if isinstance(nodes, int) and nodes > 1 else ")")
        t.add_row(r["backend"], "yes" if r["available"] else "no", plain(name),
                  plain(d.get("chip") or ("not in catalog" if d else "-")),
                  fmt_bytes(d.get("memory_bytes")) if d else "-",
                  fmt_bytes(d.get("cache_bytes")) if d else "-",
                  plain(r["reason"] or d.get("chip_note") or ""))
    con = console()
    con.print(t)
    con.print(plain("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items() if v)))
    return 0


def add_parser(sub) -> None:
    b = sub.add_parser("backends", help="which backends are available here, and why not")
    b.add_argument("--json", action="store_true",
                   help="one JSON object per backend (with the versions), no table")
    b.set_defaults(func=command)
