"""The `decodewall` command: run | roof | chips | backends | compare (and what later issues add).

Every bad input (unknown name, malformed shape, impossible shape, unavailable backend, broken
plugin, unwritable --out, corrupt results file) is found before anything is measured or written,
and ends with one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from ..errors import RunError, UsageError
from ..plugins import load_plugins

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_FAILED = 1
DEFAULT_OUT = Path("results") / "runs"


def _suggest(name: str, known: Sequence[str]) -> str:
    near = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f"; did you mean {near[0]!r}?" if near else f" (known: {', '.join(sorted(known))})"


class Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line and exit 2 like all our usage errors."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# --- resolving what was asked for ---------------------------------------------------------------

def resolve_backend(name: str | None):
    from backends import BACKENDS, best_backend, get_backend
    if name is None:
        return best_backend()
    if name.lower() not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}{_suggest(name.lower(), list(BACKENDS))}")
    b = get_backend(name)
    ok, why = b.available()
    if not ok:
        raise UsageError(f"backend {b.name} is not available: {why}")
    return b


def resolve_chip(name: str | None, info: dict[str, Any]):
    from backends import lookup_chip
    if name is not None:
        try:
            return lookup_chip(name)
        except KeyError as e:
            raise UsageError(str(e.args[0])) from None
    if info.get("chip"):
        return lookup_chip(info["chip"])
    return None


def parse_shape(op, text: str):
    """'M=1,N=4096,K=4096' -> the op's validated shape."""
    kw: dict[str, int] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise UsageError(f"malformed --shape {text!r}: expected K=V pairs like M=1,N=4096,K=4096")
        k, v = (s.strip() for s in part.split("=", 1))
        if k in kw:
            raise UsageError(f"malformed --shape {text!r}: {k} given twice")
        try:
            kw[k] = int(v)
        except ValueError:
            raise UsageError(f"malformed --shape {text!r}: {k}={v!r} is not an integer") from None
    if not kw:
        raise UsageError(f"malformed --shape {text!r}: empty")
    try:
        return op.shape(**kw)
    except ValueError as e:
        raise UsageError(f"impossible shape for {op.name}: {e}") from None


def resolve_dtypes(names: Sequence[str] | None, op) -> list:
    from kernels import parse_dtype
    out = []
    for n in names or []:
        try:
            dt = parse_dtype(n)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if op is not None and dt not in op.dtypes:
            raise UsageError(f"{op.name} does not take dtype {n}")
        out.append(dt)
    return out


def resolve_cases(args, ctx) -> list:
    cases = _resolve_cases(args, ctx)
    cases = _with_world_size(cases, getattr(args, "world_size", None))
    if getattr(args, "warm", False):
        if getattr(args, "model", None):
            raise UsageError("--warm times cases from the cache; a --model step is timed cold")
        cases = [dataclasses.replace(c, warm=True) for c in cases]
    return cases


def _with_world_size(cases: list, n: int | None) -> list:
    """Collective cases at the world size asked for (--world-size, or torchrun's WORLD_SIZE)."""
    from kernels import OPS
    from ..collectives import launched_by_torchrun
    if launched_by_torchrun():
        if not any(OPS[c.op].collective for c in cases):
            return cases  # refused with the reason by the run
        given = int(os.environ["WORLD_SIZE"])
        if n is not None and n != given:
            raise UsageError(f"--world-size {n} but torchrun started {given} ranks")
        n = given
    if n is None:
        return cases
    if not any(OPS[c.op].collective for c in cases):
        raise UsageError("--world-size applies to collective ops (e.g. --op allreduce) only")
    out = []
    for c in cases:
        if OPS[c.op].collective:
            try:
                c = dataclasses.replace(c, shape=dataclasses.replace(c.shape, world_size=n))
            except ValueError as e:
                raise UsageError(f"impossible shape for {c.op}: {e}") from None
        out.append(c)
    return out


def _resolve_cases(args, ctx) -> list:
    from kernels import OPS
    from ..case import Case
    from ..suites import SUITES, cases_for
    if hasattr(args, "model"):  # `run --model`: bench/cli/project.py
        from .project import model_cases
        if (cases := model_cases(args, ctx)) is not None:
            return cases
    if args.op and args.suite:
        raise UsageError("give either --suite or --op, not both")
    if args.shape and not args.op:
        raise UsageError("--shape needs --op")
    if args.op:
        if args.op not in OPS:
            raise UsageError(f"unknown op {args.op!r}{_suggest(args.op, list(OPS))}")
        op = OPS[args.op]
        dtypes = resolve_dtypes(args.dtype, op)
        if args.shape:
            shapes = [parse_shape(op, s) for s in args.shape]
            dtypes = dtypes or [op.smoke[0][1] if op.smoke else op.dtypes[0]]
            return [Case(op.name, s, d) for s in shapes for d in dtypes]
        base = [Case(op.name, s, d) for s, d in op.smoke]
        if dtypes:
            base = [dataclasses.replace(c, dtype=d) for c in base for d in dtypes]
        return base
    name = args.suite or "decode"
    if name not in SUITES:
        raise UsageError(f"unknown suite {name!r}{_suggest(name, list(SUITES))}")
    cases = cases_for(name, ctx)
    if args.dtype:
        want = resolve_dtypes(args.dtype, None)
        cases = [c for c in cases if c.dtype in want]
    return cases


def check_impls(names: Sequence[str] | None, cases: list) -> tuple[str, ...] | None:
    from kernels import OPS
    if not names:
        return None
    ops = {c.op for c in cases}
    known = {n for o in ops for n in OPS[o].impls}
    for n in names:
        if n not in known:
            raise UsageError(f"unknown impl {n!r} for {', '.join(sorted(ops))}{_suggest(n, sorted(known))}")
    return tuple(names)


# --- commands -----------------------------------------------------------------------------------

def cmd_run(args) -> int:
    from ..report.table import console, results_table
    from ..results import ResultWriter, check_writable, git_commit, new_run_id, versions
    from .. import roofline as rl
    from ..roofline import drift_note, measure_bandwidth, measure_roof
    from ..isolation import IsolatedRunner
    from ..runner import RunContext
    from ..suites import SuiteContext
    from ..timing import BUDGETS

    load_plugins(args.plugin or [])
    backend = resolve_backend(args.backend)
    info = backend.device_info()
    chip = resolve_chip(args.chip, info)
    sctx = SuiteContext(backend.name, info.get("memory_bytes"), info.get("cache_bytes"))
    cases = resolve_cases(args, sctx)
    impl_filter = check_impls(args.impl, cases)
    from kernels import OPS
    from ..collectives import launched_by_torchrun
    collective = [c for c in cases if OPS[c.op].collective]
    if launched_by_torchrun() and len(collective) != len(cases):
        raise UsageError("under torchrun only collective ops run (e.g. --op allreduce); "
                         "run kernels without torchrun")
    out_dir = None if args.no_save else Path(args.out)
    if out_dir is not None:
        try:
            check_writable(out_dir)
        except PermissionError as e:
            raise UsageError(str(e)) from None
    budget_name = args.budget or ("quick" if args.suite == "smoke" else "normal")
    budget = BUDGETS[budget_name]

    err = console(stderr=True)
    show = sys.stderr.isatty() and not args.no_progress
    run_id = new_run_id(backend.name)
    if len(collective) < len(cases):
        with err.status("measuring the roof...", spinner="dots") if show else _null():
            roof = measure_roof(backend, [c.dtype for c in cases][:1] or None, budget)
    else:  # collectives are judged against the chip's links, not its memory
        roof = rl.Roof(backend.name, 0.0, 0.0, 0)
    ctx = RunContext(backend=backend, roof=roof, chip=chip, device_info=info, budget=budget,
                     seed=args.seed, run_id=run_id,
                     command="decodewall " + " ".join(shlex.quote(a) for a in args.argv),
                     git_commit=git_commit(), versions=versions(), impl_filter=impl_filter)
    writer = ResultWriter(out_dir, run_id)
    records: list[dict[str, Any]] = []
    tracker = rl.RoofTracker(backend, roof, budget,
                             None if budget_name == "quick" else rl.ROOF_REFRESH_S)

    def on_record(rec: dict[str, Any]) -> None:
        records.append(rec)
        if args.json:
            from ..results import dumps
            print(dumps(rec), flush=True)

    if launched_by_torchrun():
        return _run_as_rank(args, ctx, cases, writer, records, on_record)
    kernels_runner = IsolatedRunner(ctx, writer, on_record, case_timeout=args.case_timeout,
                                    plugins=args.plugin or [])
    from ..collectives import CollectiveRunner
    ranks_runner = CollectiveRunner(ctx, writer, on_record, case_timeout=args.case_timeout,
                                    plugins=args.plugin or [])

    class runner:  # noqa: N801  each case to the runner of its kind
        @staticmethod
        def run_case(case):
            if OPS[case.op].collective:
                return ranks_runner.run_case(case)
            return kernels_runner.run_case(case)

        @staticmethod
        def close():
            kernels_runner.close()
            ranks_runner.close()

    interrupted = False
    try:
        if show:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn)
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=err, transient=True) as prog:
                task = prog.add_task("cases", total=len(cases))
                for case in cases:
                    prog.update(task, description=f"{case.op} {_short(case.shape)}")
                    if tracker.due():
                        prog.update(task, description="measuring the roof again")
                        ctx.roof = tracker.current()
                        prog.update(task, description=f"{case.op} {_short(case.shape)}")
                    runner.run_case(case)
                    prog.advance(task)
        else:
            for case in cases:
                ctx.roof = tracker.current()  # re-measured first when a minute old (RoofTracker)
                runner.run_case(case)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        runner.close()  # the worker and anything it started: nothing is left running
        writer.close()
    note = None
    # The roof again (not for the quick budget: two quick probes differ by more than the drift
    # worth reporting): on a busy machine it can move a lot within one run.
    if not interrupted and budget_name != "quick" and any(r["status"] == "ok" for r in records):
        try:
            with err.status("measuring the roof again...", spinner="dots") if show else _null():
                note = drift_note(roof.gbps, measure_bandwidth(backend, budget),
                                  tracker.readings[1:])
        except KeyboardInterrupt:
            pass
    if not args.json:
        out = console()
        lo, hi = min(tracker.readings), max(tracker.readings)
        roofs = f"{lo:.1f} GB/s" if hi - lo < 0.05 else f"{lo:.1f}-{hi:.1f} GB/s (re-measured)"
        roofs = f", roof {roofs}" if hi > 0 else ""
        out.print(results_table(records, title=f"decodewall run {run_id} — {info.get('name')} "
                                f"({backend.name}){roofs}"))
        if args.suite == "precision" or any(r.get("group") == "precision" for r in records):
            _print_precision(records, out)
    if getattr(args, "model_step", None) is not None:  # `run --model`: the summed decode step
        from .project import print_step
        print_step(args, records, ctx.roof, as_json=args.json)
    where = f"{writer.path}" if writer.path and writer.count else "nothing saved"
    if interrupted:
        print(f"decodewall: interrupted; {writer.count} finished case(s) kept in {where}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    if writer.path and writer.count:
        print(f"results: {where}", file=sys.stderr)
    if note:
        print(f"decodewall: note: {note}", file=sys.stderr)
    from ..results import FAILED
    failed = [r for r in records if r["status"] in FAILED]  # --strict: exit 1
    if failed:
        print(f"decodewall: {len(failed)} impl(s) failed the check, errored, crashed or timed out",
              file=sys.stderr)
    return EXIT_FAILED if failed and args.strict else 0


def _run_as_rank(args, ctx, cases, writer, records, on_record) -> int:
    """This process is one rank of a torchrun launch: every rank measures, rank 0 reports."""
    from ..collectives import run_as_rank
    from ..report.table import console, results_table
    import torch
    rank = int(os.environ["RANK"])
    if rank != 0:
        writer.path = None  # one results file, rank 0's
        args.json = False
    try:
        run_as_rank(ctx, cases, writer, on_record, max(5.0, args.case_timeout / 2))
    finally:
        writer.close()
    if rank != 0:
        return 0
    if not args.json:
        console().print(results_table(records, title=f"decodewall run {ctx.run_id} — "
                                      f"{ctx.device_info.get('name')} ({ctx.backend.name}), "
                                      f"{os.environ['WORLD_SIZE']} ranks (torchrun)"))
    if writer.path and writer.count:
        print(f"results: {writer.path}", file=sys.stderr)
    from ..results import FAILED
    failed = [r for r in records if r["status"] in FAILED]
    return EXIT_FAILED if failed and args.strict else 0


def _print_precision(records, out) -> None:
    try:
        from ..report.precision import precision_table
    except ImportError:
        return
    table = precision_table(records)
    if table is not None:
        out.print(table)


def _ranks(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of ranks: {text!r}") from None
    if not 1 <= v <= 4096:
        raise argparse.ArgumentTypeError(f"must be 1..4096 ranks, got {text!r}")
    return v


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return v


def _default_timeout() -> float:
    from ..isolation import DEFAULT_CASE_TIMEOUT_S
    return DEFAULT_CASE_TIMEOUT_S


def _short(shape: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in dataclasses.asdict(shape).items())


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def cmd_roof(args) -> int:
    from ..report.table import console, roof_table
    from ..roofline import measure_roof
    from ..timing import BUDGETS
    import torch
    backend = resolve_backend(args.backend)
    info = backend.device_info()
    chip = resolve_chip(args.chip, info)
    dtypes = [torch.float32] if backend.name == "cpu" else [torch.bfloat16, torch.float32]
    roof = measure_roof(backend, dtypes, BUDGETS[args.budget or "normal"])
    d = roof.as_dict()
    d.update(device=info, chip=chip.id if chip else None,
             datasheet_gbps=chip.mem_bw_gbps if chip else None)
    if args.json:
        print(json.dumps(d, default=str))
    else:
        console().print(roof_table(d, info, chip))
    return 0


def cmd_chips(args) -> int:
    from backends import load_catalog
    from backends.catalog import as_dict
    from ..report.table import chips_table, console
    chips = list(load_catalog().values())
    if args.chip:
        chips = [resolve_chip(args.chip, {})]
    if args.json:
        for c in chips:
            print(json.dumps(as_dict(c)))
    else:
        console().print(chips_table(chips, detail=bool(args.chip)))
    return 0


def cmd_backends(args) -> int:
    from backends import BACKENDS, get_backend
    from ..report.table import console, fmt_bytes
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
        t.add_row(r["backend"], "yes" if r["available"] else "no", d.get("name", "-"),
                  d.get("chip") or ("not in catalog" if d else "-"),
                  fmt_bytes(d.get("memory_bytes")) if d else "-",
                  fmt_bytes(d.get("cache_bytes")) if d else "-",
                  r["reason"] or d.get("chip_note") or "")
    con = console()
    con.print(t)
    con.print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items() if v))
    return 0


def cmd_compare(args) -> int:
    from rich.table import Table
    from rich.text import Text
    from ..report.compare import compare, devices
    from ..report.table import console, fmt_shape, fmt_time
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
        t.add_row(r["op"], fmt_shape(r["shape"]), str(r["dtype"]), r["impl"],
                  fmt_time(r.get("a_median")), fmt_time(r.get("b_median")),
                  f"{r['ratio']:.3f}" if "ratio" in r else "-",
                  Text(r["verdict"], style=style.get(r["verdict"], "dim")))
    if not rows:
        t.caption = "no timed case in either file"
    con.print(t)
    return 0


# --- parser -------------------------------------------------------------------------------------

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def build_parser() -> Parser:
    p = Parser(prog="decodewall", description="Is your decode kernel at the memory wall?")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    r = sub.add_parser("run", help="check and time cases, print verdicts, save JSONL")
    r.add_argument("--backend", help="cpu | cuda | xla (default: cuda if present, else cpu)")
    r.add_argument("--suite", help="named suite (default: decode); see `decodewall run --list`")
    r.add_argument("--op", help="one op instead of a suite")
    r.add_argument("--shape", action="append", metavar="K=V,...",
                   help="shape for --op, e.g. M=1,N=4096,K=4096 (repeatable)")
    r.add_argument("--dtype", action="append", help="input dtype(s): bfloat16, float16, float32")
    r.add_argument("--impl", action="append", metavar="NAME", help="only these impls (repeatable)")
    r.add_argument("--plugin", action="append", metavar="FILE",
                   help="Python file registering extra impls with @register_impl (repeatable)")
    r.add_argument("--chip", help="catalog id to judge against (default: detected)")
    r.add_argument("--out", default=str(DEFAULT_OUT), help="results directory (default: results/runs)")
    r.add_argument("--no-save", action="store_true", help="do not write a results file")
    r.add_argument("--json", action="store_true", help="one JSON object per line, no table")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--budget", choices=["quick", "normal", "thorough"],
                   help="timing budget (default: quick for smoke, else normal)")
    r.add_argument("--strict", action="store_true",
                   help="exit 1 when any impl fails its check, errors, crashes or times out")
    r.add_argument("--world-size", type=_ranks, metavar="N",
                   help="ranks for collective ops (allreduce): the run starts them on this "
                        "machine (default: the shape's, 2); under torchrun, its WORLD_SIZE")
    r.add_argument("--case-timeout", type=_seconds, default=_default_timeout(), metavar="SECONDS",
                   help="kill an impl-case (check + timing, compiling and autotuning included) "
                        "that runs longer and record it as timeout (default: "
                        "%(default)g)")
    r.add_argument("--warm", action="store_true",
                   help="time every case warm: one input set, no flush, so a working set the "
                        "cache holds is read from it (not judged against the DRAM roof)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--list", action="store_true", help="list suites and ops, then exit")
    r.set_defaults(func=cmd_run)

    ro = sub.add_parser("roof", help="measure copy/read bandwidth and matmul rate")
    ro.add_argument("--backend")
    ro.add_argument("--chip")
    ro.add_argument("--json", action="store_true")
    ro.add_argument("--budget", choices=["quick", "normal", "thorough"])
    ro.set_defaults(func=cmd_roof)

    c = sub.add_parser("chips", help="the chip catalog with sources")
    c.add_argument("--chip", help="show one chip (case-insensitive id)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_chips)

    b = sub.add_parser("backends", help="which backends are available here, and why not")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_backends)

    cp = sub.add_parser("compare", help="compare two results files case by case")
    cp.add_argument("a", metavar="A.jsonl")
    cp.add_argument("b", metavar="B.jsonl")
    cp.add_argument("--json", action="store_true")
    cp.set_defaults(func=cmd_compare)

    for extend in EXTENSIONS:
        extend(sub)
    return p


# Later modules (project, plot, ...) add subcommands here: fn(subparsers) -> None.
EXTENSIONS: list[Callable[[Any], None]] = []


def _load_extensions() -> None:
    for mod in ("bench.cli.project", "bench.cli.plot"):
        try:
            __import__(mod)
        except ImportError as e:
            if e.name != mod:
                raise


def list_everything() -> int:
    from kernels import OPS
    from ..suites import SUITES
    print("suites:")
    for name, (_, doc) in SUITES.items():
        print(f"  {name:14s} {doc}")
    print("ops:")
    for name, op in OPS.items():
        print(f"  {name:20s} impls: {', '.join(op.impls)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _load_extensions()
        args = build_parser().parse_args(argv)
        args.argv = argv
        if args.command == "run" and args.list:
            load_plugins(args.plugin or [])
            return list_everything()
        return args.func(args)
    except UsageError as e:
        print(f"decodewall: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except RunError as e:
        print(f"decodewall: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("decodewall: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # a bug of ours: one line that says where, never a traceback
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f" at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}" if tb else ""
        msg = (str(e).strip().splitlines() or [""])[0]
        print(f"decodewall: internal error{where}: {type(e).__name__}: {msg}", file=sys.stderr)
        return EXIT_FAILED

