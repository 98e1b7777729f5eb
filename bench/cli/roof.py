"""`decodewall roof`: measure this device's copy and read bandwidth and its matmul rate, beside the
chip's datasheet peak."""
from __future__ import annotations

import json
import sys

from ..contention import roof_note
from ..notes import numa_line
from .common import measured_roof, resolve_backend, resolve_chip


def command(args) -> int:
    from ..report.table import console, roof_table
    from ..timing import BUDGETS
    import torch
    backend = resolve_backend(args.backend)
    info = backend.device_info()
    chip = resolve_chip(args.chip, info)
    # bf16's rate where it is its own compute roof (a GPU, a CPU with AVX512-BF16 or AMX-BF16:
    # roofline.compute_dtype), which every bf16 case of `run` is judged against; elsewhere bf16
    # maps to fp32's rate, measured once
    dtypes = [torch.bfloat16, torch.float32]
    roof = measured_roof(backend, dtypes, BUDGETS[args.budget or "normal"])
    d = roof.as_dict()
    d.update(device=info, chip=chip.id if chip else None,
             datasheet_gbps=chip.mem_bw_gbps if chip else None)
    if args.json:
        print(json.dumps(d, default=str))
    else:
        console().print(roof_table(d, info, chip))
    for note in (roof_note(roof.contention_pct), numa_line(info.get("numa_nodes"))):
        if note:
            print(f"decodewall: note: {note}", file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    ro = sub.add_parser("roof", help="measure copy/read bandwidth and matmul rate")
    ro.add_argument("--backend", help="cpu | cuda | xla (default: cuda if present, else cpu)")
    ro.add_argument("--chip", help="catalog id whose datasheet peak is shown (default: detected)")
    ro.add_argument("--json", action="store_true", help="one JSON object, no table")
    ro.add_argument("--budget", choices=["quick", "normal", "thorough"],
                    help="timing budget of the probes (default: normal)")
    ro.set_defaults(func=command)
