"""Nsight Compute check of the byte model: DRAM bytes the hardware moved vs the op's `bytes_moved`.

Two halves:
- `target` (run under ncu): builds one case's inputs, calls the impl twice untraced (Triton
  autotunes and compiles there), then calls it once more between cudaProfilerStart/Stop. ncu runs
  with `--profile-from-start off`, so only that last call is profiled, every kernel it launches
  included (a split-K or split-KV reduction counts against the same byte budget). ncu's default
  `--cache-control all` flushes the caches before the profiled launch: a cold call, as the byte
  model assumes. Clocks are left alone (`--clock-control none`).
- `parse_ncu_csv` / `byte_ratio`: read ncu's `--csv` output (details or raw page) and compare.

    ncu ... python3 -m bench.gpucheck.ncu target --case '{"op": "gemv_w4", "impl": NAME,
        "shape": {"M": 1, "N": 28672, "K": 4096}, "dtype": "bfloat16"}'
"""
from __future__ import annotations

import csv
import json
import os
import re
import sys
from typing import Any

from bench.errors import OneLineParser

READ, WRITE, DURATION = "dram__bytes_read.sum", "dram__bytes_write.sum", "gpu__time_duration.sum"
METRICS = (READ, WRITE, DURATION)
MARK = "DWCHECK "  # prefix of the target's one JSON line, findable among ncu's own output

# ncu scales units unless told `--print-units base`; accept both. Decimal prefixes, as ncu uses.
_SCALE = {
    "": 1, "byte": 1, "bytes": 1, "b": 1,
    "kbyte": 1e3, "mbyte": 1e6, "gbyte": 1e9, "tbyte": 1e12,
    "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
    "nsecond": 1, "usecond": 1e3, "msecond": 1e6, "second": 1e9,
    "ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9,
}


# ncu's own refusals to profile on this machine, not a target's failure: seen on gVisor
# ("Failed to initialize the profiler: LibraryNotLoaded", the device tool's KINDS.md) and where
# the counters need privileges (ERR_NVGPUCTRPERM). Once one shows, every later launch would too.
PROFILER_REFUSALS = ("Failed to initialize the profiler", "LibraryNotLoaded", "ERR_NVGPUCTRPERM")


def profiler_refused(text: str) -> str | None:
    """ncu's line saying it cannot profile here, or None."""
    return next((ln.strip() for ln in text.splitlines()
                 if any(r in ln for r in PROFILER_REFUSALS)), None)


def ncu_command(ncu: str, target: list[str]) -> list[str]:
    return [ncu, "--profile-from-start", "off", "--clock-control", "none",
            "--cache-control", "all", "--metrics", ",".join(METRICS),
            "--csv", "--print-units", "base", *target]


# One tiny CUDA launch: whether ncu can read the counters on this machine (the probe the device
# check runs in the background while its tests run; gVisor machines refuse them).
PROBE_PROGRAM = ("import torch; x = torch.ones(1024, device='cuda'); torch.cuda.synchronize(); "
                 "print(float((x + 1).sum()))")


def probe_command(ncu: str, python: str) -> list[str]:
    return [ncu, "--clock-control", "none", "--launch-count", "1", "--metrics", DURATION,
            "--csv", "--print-units", "base", python, "-c", PROBE_PROGRAM]


def probe_verdict(rc: int | None, text: str) -> tuple[str, str | None]:
    """("ok" | "refused" | "unknown", ncu's refusing line or why unknown) from the probe."""
    refused = profiler_refused(text)
    if refused:
        return "refused", refused
    if rc == 0 and DURATION in text:
        return "ok", None
    return "unknown", "time box reached" if rc is None else f"exit {rc}, no {DURATION} reading"


# The sections that say why a launch runs below the roof: launch shape and registers, occupancy,
# how often the schedulers issue, and what the warps wait on (ncu's own section identifiers,
# printed as raw metrics, so no metric name here has to match this ncu's spelling).
WHY_SECTIONS = ("LaunchStats", "Occupancy", "SchedulerStats", "WarpStateStats")


def why_command(ncu: str, target: list[str]) -> list[str]:
    sections = [a for sec in WHY_SECTIONS for a in ("--section", sec)]
    return [ncu, "--profile-from-start", "off", "--clock-control", "none",
            "--cache-control", "all", *sections, "--page", "raw", "--csv", "--print-units", "base",
            *target]


def _number(text: str) -> float | None:
    t = text.strip().replace(",", "")  # ncu prints thousands separators: "235,012,096"
    try:
        return float(t)
    except ValueError:
        return None  # "n/a" and the like: no reading, not a crash


def _value(text: str, unit: str) -> float | None:
    v = _number(text)
    if v is None:
        return None
    return v * _SCALE.get(unit.strip().lower(), 1)


def parse_ncu_csv(text: str) -> list[dict[str, Any]]:
    """ncu `--csv` output -> one dict per profiled launch, in order:
    {"id": "0", "kernel": name, "metrics": {metric: value in bytes / ns}}.

    Lines before the header (==PROF== messages, the program's own output) and any line that is
    not a quoted CSV row are skipped. Handles the details page (one row per metric: "Metric
    Name", "Metric Unit", "Metric Value") and the raw page (one row per launch, metrics as
    columns, a units row under the header). ValueError when no ncu table is found.
    """
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith('"ID",')), None)
    if start is None:
        raise ValueError("no ncu CSV table in the output (no line starting with \"ID\")")
    rows = list(csv.reader(ln for ln in lines[start:] if ln.startswith('"')))
    header, body = rows[0], rows[1:]
    col = {name: i for i, name in enumerate(header)}
    kcol = next((col[n] for n in ("Kernel Name", "Function Name", "Name") if n in col), None)

    def cell(row: list[str], i: int | None) -> str:
        return row[i] if i is not None and i < len(row) else ""

    launches: dict[str, dict[str, Any]] = {}

    def launch(row: list[str]) -> dict[str, Any]:
        lid = cell(row, col["ID"])
        return launches.setdefault(lid, {"id": lid, "kernel": cell(row, kcol), "metrics": {}})

    if "Metric Name" in col:  # details page
        for row in body:
            if not cell(row, col["ID"]) or not cell(row, col["Metric Name"]):
                continue
            v = _value(cell(row, col.get("Metric Value")), cell(row, col.get("Metric Unit")))
            if v is not None:
                launch(row)["metrics"][row[col["Metric Name"]]] = v
    else:  # raw page: metric columns, a units row (empty ID) first
        units: list[str] = [""] * len(header)
        metric_cols = [i for i, n in enumerate(header) if "__" in n]
        for row in body:
            if not cell(row, col["ID"]):
                units = row + [""] * (len(header) - len(row))
                continue
            rec = launch(row)
            for i in metric_cols:
                v = _value(cell(row, i), units[i])
                if v is not None:
                    rec["metrics"][header[i]] = v
    return list(launches.values())


def byte_ratio(launches: list[dict[str, Any]], model_bytes: int) -> dict[str, Any]:
    """Sum DRAM traffic over every profiled launch and compare with the op's byte model."""
    def total(metric: str) -> float | None:
        vals = [ln["metrics"].get(metric) for ln in launches]
        return None if not vals or any(v is None for v in vals) else float(sum(vals))

    read, write, dur = total(READ), total(WRITE), total(DURATION)
    out: dict[str, Any] = {
        "kernels": [ln["kernel"] for ln in launches], "launches": len(launches),
        "dram_read_bytes": read, "dram_write_bytes": write, "model_bytes": model_bytes,
        "duration_ns": dur, "ratio": None, "within_5pct": None, "ncu_gbps": None,
    }
    if read is not None and write is not None and model_bytes:
        out["ratio"] = (read + write) / model_bytes
        out["within_5pct"] = abs(out["ratio"] - 1) <= 0.05
        if dur:
            out["ncu_gbps"] = (read + write) / dur  # bytes per ns == GB/s
    return out


def why(launches: list[dict[str, Any]]) -> dict[str, Any]:
    """What the WHY_SECTIONS say of the largest launch (by grid): registers, waves, achieved and
    theoretical occupancy, % of cycles a scheduler issued, warp cycles per issued instruction, and
    the commonest stall reasons (warps stalled per issued instruction, ncu's Warp State chart)."""
    if not launches:
        raise ValueError("no launch in the ncu table")
    main = max(launches, key=lambda ln: ln["metrics"].get("launch__grid_size") or 0)
    m = main["metrics"]

    def find(*parts: str) -> float | None:
        return next((v for k, v in sorted(m.items()) if all(p in k for p in parts)), None)

    stalls: dict[str, float] = {}
    for name, v in m.items():
        hit = re.search(r"issue_stalled_(\w+?)_per_issue_active\.ratio$", name)
        if hit and not hit.group(1).endswith("_not_issued"):
            stalls[hit.group(1)] = v
    top = dict(sorted(stalls.items(), key=lambda kv: -kv[1])[:6])
    return {"kernel": main["kernel"], "registers": m.get("launch__registers_per_thread"),
            "waves": m.get("launch__waves_per_multiprocessor"),
            "occupancy_pct": find("sm__warps_active", "pct_of_peak_sustained_active"),
            "theoretical_occupancy_pct": m.get("sm__maximum_warps_per_active_cycle_pct"),
            "issue_active_pct": find("smsp__issue_active", "pct_of_peak_sustained_active"),
            "cycles_per_issue": m.get("smsp__average_warp_latency_per_inst_issued.ratio"),
            "stalls": top}


def fake_why_csv(kernel: str) -> str:
    """A raw page as the WHY_SECTIONS would print it (a units row under the header), for the dry
    run's parser: made-up values, marked as such in the table and by the caller."""
    cols = {"launch__grid_size": ("", 1792), "launch__registers_per_thread": ("register/thread", 128),
            "launch__waves_per_multiprocessor": ("", 3.39),
            "sm__warps_active.avg.pct_of_peak_sustained_active": ("%", 42.0),
            "sm__maximum_warps_per_active_cycle_pct": ("%", 50.0),
            "smsp__issue_active.avg.pct_of_peak_sustained_active": ("%", 21.5),
            "smsp__average_warp_latency_per_inst_issued.ratio": ("", 9.3),
            "smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio": ("", 5.1),
            "smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio": ("", 1.7),
            "smsp__average_warps_issue_stalled_selected_per_issue_active.ratio": ("", 1.0)}
    head = '"ID","Process ID","Process Name","Host Name","Kernel Name",' + ",".join(f'"{c}"' for c in cols)
    units = '"","","","","",' + ",".join(f'"{u}"' for u, _ in cols.values())
    row = f'"0","1","python3","localhost","{kernel}",' + ",".join(f'"{v}"' for _, v in cols.values())
    return "\n".join(["==PROF== (dry run: fabricated, not measured)", head, units, row]) + "\n"


def fake_ncu_csv(kernel: str, read_bytes: int, write_bytes: int, duration_ns: float) -> str:
    """What ncu's details page would print for one launch: the dry run feeds this to the parser."""
    head = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream",'
            '"Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit",'
            '"Metric Value"')
    pre = f'"0","1","python3","localhost","{kernel}","1","7","(128, 1, 1)","(1, 1, 1)","0","0.0",' \
          '"Command line profiler metrics",'
    rows = [f'{pre}"{m}","{u}","{v:,.0f}"' for m, u, v in
            ((READ, "byte", read_bytes), (WRITE, "byte", write_bytes), (DURATION, "nsecond", duration_ns))]
    return "\n".join(["==PROF== (dry run: fabricated from the byte model, not measured)", head, *rows]) + "\n"


# --- the profiled program -------------------------------------------------------------------

def _profiler(on: bool) -> None:
    """cudaProfilerStart/Stop: the window ncu profiles under --profile-from-start off."""
    import torch
    try:
        torch.cuda.profiler.start() if on else torch.cuda.profiler.stop()
    except (AttributeError, ImportError):  # a torch without the cudart binding
        import ctypes
        lib = ctypes.CDLL("libcudart.so")
        rc = lib.cudaProfilerStart() if on else lib.cudaProfilerStop()
        if rc != 0:
            raise RuntimeError(f"cudaProfiler{'Start' if on else 'Stop'} returned {rc}") from None


def run_target(case: dict[str, Any], backend: str, seed: int) -> dict[str, Any]:
    """case: {"op", "impl", "shape": {field: value}, "dtype"}. Returns what the caller compares."""
    import torch
    from kernels import OPS, parse_dtype

    op = OPS[case["op"]]
    impl = op.impls[case["impl"]]
    shape = op.shape(**case["shape"])
    dtype = parse_dtype(case["dtype"])
    dev = "cuda" if backend == "cuda" else "cpu"
    inputs = op.make_inputs(shape, dtype, dev, seed)
    args = tuple(impl.prepare(*inputs)) if impl.prepare else inputs
    out_shape, out_dtype = op.out_spec(shape, dtype)
    out = torch.empty(out_shape, dtype=out_dtype, device=dev) if impl.out_arg else None

    def call() -> Any:
        return impl.fn(*args, out=out) if out is not None else impl.fn(*args)

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    for _ in range(2):  # autotune + compile + lazy init, all outside the profiled window
        call()
    sync()
    if dev == "cuda":
        _profiler(True)
        call()
        sync()
        _profiler(False)
    else:
        call()
    return {**case, "backend": backend, "bytes_moved": int(op.bytes_moved(shape, dtype)),
            "out_bytes": int(torch.Size(out_shape).numel() * torch.empty((), dtype=out_dtype).element_size()),
            "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"}


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python3 -m bench.gpucheck.ncu")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=OneLineParser)
    t = sub.add_parser("target", help="run cases once each inside a profiler window (ncu's target)")
    t.add_argument("--case", action="append", required=True, metavar="JSON",
                   help='{"op": ..., "impl": ..., "shape": {...}, "dtype": "bfloat16"} (repeatable)')
    t.add_argument("--backend", default="cuda", choices=["cuda", "cpu"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--interpret", action="store_true",
                   help="TRITON_INTERPRET=1 (the dry run calls the Triton impls on the CPU)")
    pa = sub.add_parser("parse", help="parse an ncu --csv log: one JSON line per launch")
    pa.add_argument("file")
    args = p.parse_args(argv)
    if args.cmd == "parse":
        try:
            with open(args.file, encoding="utf-8", errors="replace") as f:
                launches = parse_ncu_csv(f.read())
        except OSError as e:  # missing, a folder, unreadable
            p.error(f"cannot read {args.file!r}: {e.strerror or e}")
        except ValueError as e:  # no ncu table in it (empty, binary, another file)
            p.error(f"{args.file!r}: {e}")
        for ln in launches:
            print(json.dumps(ln))
        return 0
    cases = []
    for text in args.case:  # all read before any runs: a typo is one line, not a traceback
        try:
            case = json.loads(text)
        except ValueError as e:
            p.error(f"--case {text!r}: not JSON ({e})")
        if not isinstance(case, dict):
            p.error(f"--case {text!r}: expected a JSON object {{\"op\": ..., \"impl\": ...}}")
        cases.append(case)
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before kernels/ imports triton
    rc = 0
    for case in cases:
        try:
            info = run_target(case, args.backend, args.seed)
        except Exception as e:  # one broken case must not hide the others' results
            info = {**case, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            rc = 1
        print(MARK + json.dumps(info), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
