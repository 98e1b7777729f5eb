"""`decodewall run`: check and time cases, print verdicts, save JSONL.

The cases are a suite (`--suite`, default decode), one op at its smoke or given shapes (`--op`,
`--shape`), or a model's decode step (`--model`: bench/cli/step.py). Every impl-case runs in a
worker process (bench/isolation.py); collective ops run as ranks (bench/collectives.py). Every bad
input is found before anything is measured or written.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..notes import notes as machine_notes
from ..errors import EXIT_BROKEN_PIPE, EXIT_FAILED, OutputError, RunError, UsageError, one_line
from ..interrupts import describe, exit_status, signal_of
from ..plugins import load_plugins
from .common import (directory, discard_stdout, known_backend, measured_roof, parse_shape,
                     ranks, resolve_backend, resolve_chip, resolve_dtypes, seconds, seed, suggest)
from .step import add_step_args

DEFAULT_OUT = Path("results") / "runs"


# --- resolving the cases ------------------------------------------------------------------------

def resolve_cases(args, ctx) -> list:
    for flag in ("suite", "op", "model"):  # an empty name is a mistake, not "not given"
        value = getattr(args, flag, None)
        if value is not None and not value.strip():
            raise UsageError(f"--{flag} is empty" + (
                ": give a built-in model or a config.json path" if flag == "model" else
                " (see `decodewall run --list`)"))
    cases = _resolve_cases(args, _asking_world_size(args, ctx))
    cases = _with_world_size(cases, getattr(args, "world_size", None))
    if args.op is not None or getattr(args, "world_size", None) is not None:
        _check_world_sizes(cases, ctx.backend)
    if getattr(args, "warm", False):
        if getattr(args, "model", None):
            raise UsageError("--warm times cases from the cache; a --model step is timed cold")
        cases = [dataclasses.replace(c, warm=True) for c in cases]
    return cases


def _asking_world_size(args, ctx):
    """The suite context with the world size asked for, if any: a suite of collectives then
    builds its cases at that size alone."""
    from ..collectives import launched_by_torchrun
    n = getattr(args, "world_size", None)
    if n is None and launched_by_torchrun():
        n = torchrun_ranks()[1]
    return dataclasses.replace(ctx, world_size=n)


def _with_world_size(cases: list, n: int | None) -> list:
    """Collective cases at the world size asked for (--world-size, or torchrun's WORLD_SIZE)."""
    from kernels import OPS
    from ..collectives import launched_by_torchrun
    if launched_by_torchrun():
        if not any(OPS[c.op].collective for c in cases):
            return cases  # refused with the reason by the run
        _, given = torchrun_ranks()
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
    return list(dict.fromkeys(out))  # shapes that differed only in their world size are one


def _check_world_sizes(cases: list, backend: str) -> None:
    """A world size asked for (--world-size, an --op shape) that this machine cannot start is
    bad input, known before anything runs; under torchrun the launcher started the ranks."""
    from kernels import OPS
    from ..collectives import launched_by_torchrun, world_size_error
    if launched_by_torchrun():
        return
    for c in cases:
        why = OPS[c.op].collective and world_size_error(backend, c.shape.world_size)
        if why:
            raise UsageError(f"cannot run {c.op} on {backend}: {why}")


def torchrun_ranks() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) of this torchrun launch; a malformed variable is a UsageError."""
    from ..collectives import torchrun_env
    try:
        return torchrun_env()
    except ValueError as e:
        raise UsageError(str(e)) from None


def _resolve_cases(args, ctx) -> list:
    from ..case import Case
    from ..suites import FIT_FRACTION, HOST_FRACTION, cases_for
    if hasattr(args, "model"):  # `run --model`: bench/cli/step.py
        from .step import model_cases
        if (cases := model_cases(args, ctx)) is not None:
            return cases
    if args.op is not None and args.suite is not None:
        raise UsageError("give either --suite or --op, not both")
    if args.shape and args.op is None:
        raise UsageError("--shape needs --op")
    if args.op is not None:
        op = named_op(args.op)
        dtypes = resolve_dtypes(args.dtype, op)
        if args.shape:  # a shape given twice (in any field order) is one case
            shapes = list(dict.fromkeys(parse_shape(op, s) for s in args.shape))
            dtypes = dtypes or [op.smoke[0][1] if op.smoke else op.dtypes[0]]
            return [Case(op.name, s, d) for s in shapes for d in dtypes]
        base = [Case(op.name, s, d) for s, d in op.smoke]
        if dtypes:  # smoke shapes listed in two dtypes are one shape in the dtype asked for
            base = list(dict.fromkeys(dataclasses.replace(c, dtype=d) for c in base for d in dtypes))
        return base
    name = "decode" if args.suite is None else args.suite
    check_suite(name)
    left_out: list = []
    ctx.too_big.clear()
    cases = cases_for(name, ctx, left_out)
    # said, not silent: the suite is smaller here than on a larger machine
    for out, why in ((ctx.too_big, f"whose working set needs more than {FIT_FRACTION:.0%} of "
                                   "the device's memory"),
                     (left_out, f"whose inputs and float64 reference need more than "
                                f"{HOST_FRACTION:.0%} of this machine's memory")):
        if out:
            from kernels import dtype_name
            shown = "; ".join(f"{c.op} {_short(c.shape)} {dtype_name(c.dtype)}" for c in out[:3])
            more = f" and {len(out) - 3} more" if len(out) > 3 else ""
            print(f"decodewall: suite {name} leaves out {len(out)} case(s) {why}: {shown}{more}",
                  file=sys.stderr)
    if not cases:  # e.g. collectives on one GPU: no world size of 2 or more
        raise UsageError(f"suite {name} has no cases on this machine ({ctx.backend})")
    if args.dtype:
        from kernels import dtype_name
        want = resolve_dtypes(args.dtype, None)
        kept = [c for c in cases if c.dtype in want]
        if not kept:
            have = sorted({dtype_name(c.dtype) for c in cases})
            raise UsageError(f"suite {name} has no {' or '.join(dtype_name(d) for d in want)} "
                             f"cases (its dtypes: {', '.join(have)})")
        cases = kept
    # an op none of whose impls runs here (allreduce on XLA): said, not dropped without a word
    # (an impl named with --impl gets a skipped record saying why instead)
    from kernels import OPS
    idle = [c for c in cases if not any(i.supports(ctx.backend, c.dtype)[0]
                                        for i in OPS[c.op].impls.values())]
    if idle and len(idle) < len(cases) and not getattr(args, "impl", None):
        ops = list(dict.fromkeys(c.op for c in idle))
        print(f"decodewall: suite {name} leaves out {len(idle)} case(s) of {', '.join(ops)}: no "
              f"impl of {'it' if len(ops) == 1 else 'them'} runs on {ctx.backend}",
              file=sys.stderr)
        cases = [c for c in cases if c not in idle]
    return cases


def named_op(name: str):
    """The op called `name`; UsageError with the nearest names for one that does not exist."""
    from kernels import OPS
    if name not in OPS:
        raise UsageError(f"unknown op {name!r}{suggest(name, list(OPS))}")
    return OPS[name]


def check_suite(name: str) -> None:
    from ..suites import SUITES
    if name not in SUITES:
        raise UsageError(f"unknown suite {name!r}{suggest(name, list(SUITES))}")


def check_impls(names: Sequence[str] | None, cases: list) -> tuple[str, ...] | None:
    from kernels import OPS
    if not names:
        return None
    ops = {c.op for c in cases}
    known = {n for o in ops for n in OPS[o].impls}
    for n in names:
        if n not in known:
            raise UsageError(f"unknown impl {n!r} for {', '.join(sorted(ops))}{suggest(n, sorted(known))}")
    return tuple(names)


def check_runnable(cases: list, backend: str, impl_filter: tuple[str, ...] | None) -> None:
    """UsageError when no case of the selection has an impl that runs on `backend` (for its
    dtype): the run would measure nothing. One case with one such impl is enough: impls named
    with --impl that cannot run get a skipped record saying why."""
    from ..runner import select_impls
    whys: list[str] = []
    for c in cases:
        for impl in select_impls(c, impl_filter):
            ok, why = impl.supports(backend, c.dtype)
            if ok:
                return
            if why not in whys:
                whys.append(why)
    ops = ", ".join(sorted({c.op for c in cases}))
    if not whys:  # the filter named impls that the selected cases leave out (a suite's choice)
        raise UsageError(f"nothing to run: the selected cases ({ops}) leave out impl(s) "
                         f"{', '.join(impl_filter or ())}")
    more = f"; and {len(whys) - 3} more" if len(whys) > 3 else ""
    raise UsageError(f"nothing to run on {backend}: {'; '.join(whys[:3])}{more}")


def check_fits(cases: list, backend: str, memory: int | None) -> None:
    """UsageError for a case whose one input set and output cannot fit in the backend's memory
    (where the backend reports it). The CPU's rotated extra input sets are not counted: the
    harness sizes those, not the shape."""
    from kernels import OPS, dtype_name
    from ..collectives import launched_by_torchrun
    from ..report.table import fmt_bytes
    if not memory:
        return
    for c in cases:
        op = OPS[c.op]
        need = op.footprint_bytes(c.shape, c.dtype)
        # ranks the run starts on a CPU share its memory; on CUDA each has its own GPU
        ranks = c.shape.world_size if op.collective and backend != "cuda" and \
            not launched_by_torchrun() else 1
        if need * ranks > memory:
            per = f" ({ranks} ranks x {fmt_bytes(need)})" if ranks > 1 else ""
            raise UsageError(f"impossible shape for {c.op} on {backend}: {_short(c.shape)} "
                             f"{dtype_name(c.dtype)} needs {fmt_bytes(need * ranks)}{per} for "
                             f"its inputs and output; the device has {fmt_bytes(memory)}")


def check_host_fits(cases: list, backend: str, memory: int | None) -> None:
    """UsageError for a case whose inputs and float64 reference, built on the host, need more
    than the host's available memory (MemAvailable; where the host does not say, the backend's
    reported `memory`). On CUDA and XLA the host still draws the inputs and computes most
    references (`bench.case.host_need` counts what stays off it)."""
    from backends.cpu import mem_available
    from kernels import OPS, dtype_name
    from ..case import host_need
    from ..collectives import launched_by_torchrun
    from ..report.table import fmt_bytes
    available = mem_available() or memory
    if not available:
        return
    for c in cases:
        op = OPS[c.op]
        need = host_need(op, c.shape, c.dtype, backend)
        # the ranks the run starts are processes on this host, whatever device each one uses
        ranks = c.shape.world_size if op.collective and not launched_by_torchrun() else 1
        if need * ranks > available:
            per = f" ({ranks} ranks x {fmt_bytes(need)})" if ranks > 1 else ""
            raise UsageError(f"not enough host memory for {c.op} on {backend}: {_short(c.shape)} "
                             f"{dtype_name(c.dtype)} needs {fmt_bytes(need * ranks)}{per} to build "
                             f"its inputs and float64 reference; {fmt_bytes(available)} is "
                             f"available")


PROBE_WRITE_BYTES = 64 * 1024  # a few records' worth: a full disk or a quota refuses it


def check_file_writable(out_dir: Path) -> None:
    """Make, write and remove a file in `out_dir`: os.access says yes where no file can be made
    (/proc as root, a read-only mount), and an empty file is made on a full disk; either must
    fail now, not after measuring."""
    import tempfile
    from ..results import write_all
    try:
        fd, probe = tempfile.mkstemp(prefix=".decodewall-", suffix=".probe", dir=out_dir)
    except OSError as e:
        raise UsageError(f"cannot write results in {out_dir}: {e.strerror or e}") from None
    try:
        write_all(fd, bytes(PROBE_WRITE_BYTES))
    except OSError as e:
        raise UsageError(f"cannot write results in {out_dir}: {e.strerror or e}") from None
    finally:
        os.close(fd)
        os.unlink(probe)


def check_temp_dir() -> None:
    """A temporary folder is where the case workers' logs (and a plugin check's progress) go:
    where none can be written (a read-only root file system without a tmpfs), one line before
    anything is measured, not an internal error after the roof."""
    import tempfile
    try:
        tempfile.gettempdir()  # tries TMPDIR, /tmp, /var/tmp, /usr/tmp and the cwd, writing one
    except OSError as e:
        raise UsageError(f"no writable temporary folder: {e.strerror or e}; set TMPDIR to "
                         f"one") from None


# --- the command --------------------------------------------------------------------------------

def command(args) -> int:
    from ..report.precision import precision_table
    from ..report.table import console, printable_record, results_table, run_title
    from ..results import (ResultWriter, ResultsWriteError, check_writable, git_commit,
                           new_run_id, versions)
    from .. import roofline as rl
    from ..roofline import drift_note, measure_bandwidth
    from ..isolation import IsolatedRunner, preflight_plugins
    from ..runner import RunContext
    from ..suites import SuiteContext
    from ..timing import BUDGETS

    if args.plugin or not args.list:
        check_temp_dir()
    preflight_plugins(args.plugin or [])
    # --json: stdout carries records only; what a plugin prints as it loads goes to stderr
    with _stdout_to_stderr() if args.json else _null():
        load_plugins(args.plugin or [])
    if args.list:
        return list_everything(args)
    from ..collectives import launched_by_torchrun
    if launched_by_torchrun():
        torchrun_ranks()  # RANK, WORLD_SIZE, ... are numbers, before any of them is used
    backend = resolve_backend(args.backend)
    info = backend.device_info()
    chip = resolve_chip(args.chip, info)
    sctx = SuiteContext(backend.name, info.get("memory_bytes"), info.get("cache_bytes"))
    cases = resolve_cases(args, sctx)
    impl_filter = check_impls(args.impl, cases)
    if getattr(args, "model_step", None) is not None:  # `run --model`: every kernel must run
        from .step import check_step_runnable
        check_step_runnable(cases, backend.name, impl_filter)
    check_runnable(cases, backend.name, impl_filter)
    check_fits(cases, backend.name, info.get("memory_bytes"))
    check_host_fits(cases, backend.name, info.get("memory_bytes"))
    from kernels import OPS
    collective = [c for c in cases if OPS[c.op].collective]
    if launched_by_torchrun() and len(collective) != len(cases):
        raise UsageError("under torchrun only collective ops run (e.g. --op allreduce); "
                         "run kernels without torchrun")
    if args.no_save and args.out is not None:
        raise UsageError(f"--no-save and --out {args.out} contradict: give one")
    out_dir = None if args.no_save else Path(args.out or DEFAULT_OUT)
    if out_dir is not None:
        try:
            check_writable(out_dir)
        except PermissionError as e:
            raise UsageError(str(e)) from None
        check_file_writable(out_dir)
    budget_name = args.budget or ("quick" if args.suite == "smoke" else "normal")
    budget = BUDGETS[budget_name]

    err = console(stderr=True)
    # The bar is drawn on stderr and leaves stdout alone: --json's records go where stdout goes
    # (rich's default would print them on stderr, folded to the terminal's width). When they go
    # to the terminal too, their lines are the progress: a bar would be drawn over them. A
    # terminal rich will not redraw (TERM=dumb: Emacs, some CI logs; TTY_INTERACTIVE=0) gets
    # no bar from it, only a blank line on stderr where the bar ended.
    show = sys.stderr.isatty() and err.is_interactive and not args.no_progress and \
        not (args.json and sys.stdout is not None and sys.stdout.isatty())
    run_id = new_run_id(backend.name)
    if len(collective) < len(cases):
        with err.status("measuring the roof...", spinner="dots") if show else _null():
            roof = measured_roof(backend, [c.dtype for c in cases][:1] or None, budget)
    else:  # collectives are judged against the chip's links, not its memory
        roof = rl.Roof(backend.name, 0.0, 0.0, 0)
    ctx = RunContext(backend=backend, roof=roof, chip=chip, device_info=info, budget=budget,
                     seed=args.seed, run_id=run_id,
                     command="decodewall " + " ".join(shlex.quote(a) for a in args.argv),
                     git_commit=git_commit(), versions=versions(), impl_filter=impl_filter)
    writer = ResultWriter(out_dir, run_id, new_id=lambda: new_run_id(backend.name))
    records: list[dict[str, Any]] = []
    tracker = rl.RoofTracker(backend, roof, budget,
                             None if budget_name == "quick" else rl.ROOF_REFRESH_S)

    def on_record(rec: dict[str, Any]) -> None:
        records.append(rec)
        tracker.saw(rec)
        if args.json:  # the traceback of an impl's error stays in the results file
            from ..results import dumps
            print(dumps({k: v for k, v in rec.items() if k != "traceback"}), flush=True)

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
        def close(now: bool = False):
            kernels_runner.close(now)
            ranks_runner.close(now)

    stopped: int | None = None  # the signal that ended the run early (SIGINT: Ctrl-C, SIGTERM)
    cut: tuple[str, int] | None = None  # what else ended it early, and the exit status
    try:
        if show:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn)
            from rich.table import Column
            # The line's width is shared out: a case's description (as long as its shape) is
            # cut with "…" where it does not fit, never the count and the time ("0/…", "0:00…")
            with Progress(TextColumn("{task.description}", table_column=Column(
                              ratio=2, no_wrap=True, overflow="ellipsis")),
                          BarColumn(bar_width=None, table_column=Column(ratio=1)),
                          MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True,
                          redirect_stdout=False, expand=True) as prog:
                task = prog.add_task("cases", total=len(cases))
                for case in _numbered(cases, ctx, writer):
                    prog.update(task, description=f"{case.op} {_short(case.shape)}")
                    if tracker.due():
                        prog.update(task, description="measuring the roof again")
                        ctx.roof = tracker.current()
                        prog.update(task, description=f"{case.op} {_short(case.shape)}")
                    runner.run_case(case)
                    prog.advance(task)
        else:
            for case in _numbered(cases, ctx, writer):
                ctx.roof = tracker.current()  # re-measured first when a minute old (RoofTracker)
                runner.run_case(case)
        runner.close()  # a normal end: each worker is asked to exit
    except KeyboardInterrupt as e:  # Interrupted (bench/interrupts.py): one of its SIGNALS
        stopped = signal_of(e)
    except ResultsWriteError as e:  # the disk refused a record: the finished ones are kept
        cut = (one_line(str(e)), EXIT_FAILED)
    except RunError as e:  # a worker that cannot start (killed as it imports): the rest too
        cut = (one_line(str(e)), EXIT_FAILED)
    except OutputError as e:  # --json's stdout refused a line (a full device)
        discard_stdout()
        cut = (f"cannot write the output: {e}", EXIT_FAILED)
    except BrokenPipeError:  # --json's reader went away (`| head`): the run stops there
        discard_stdout()
        cut = ("stopped: its output was closed (broken pipe)", EXIT_BROKEN_PIPE)
    finally:
        # An interrupt's case is discarded: its worker's process group is killed at once. Only
        # the first signal is raised (bench/interrupts.py), so a second Ctrl-C cannot cut this,
        # the table or the line below short; the first, landing in this close after a normal
        # end, is noted and the close done again.
        for _ in range(2):
            try:
                runner.close(now=True)  # nothing is left running, no temporary file left behind
                break
            except KeyboardInterrupt as e:
                stopped = signal_of(e) if stopped is None else stopped
        writer.close()
    note = None
    # The roof again (not for the quick budget: two quick probes differ by more than the drift
    # worth reporting): on a busy machine it can move a lot within one run.
    if stopped is None and cut is None and budget_name != "quick" and \
            any(r["status"] == "ok" for r in records):
        try:
            with err.status("measuring the roof again...", spinner="dots") if show else _null():
                note = drift_note(roof.gbps, measure_bandwidth(backend, budget),
                                  tracker.readings[1:])
        except KeyboardInterrupt as e:
            stopped = signal_of(e)
    shown = records if args.json else [printable_record(r) for r in records]
    try:
        if not args.json and records:  # (none: the line below says so)
            out = console()
            out.print(results_table(shown, title=run_title(writer.run_id, info.get("name"),
                                                           backend.name, tracker.readings),
                                    width=out.width))
            precision = precision_table(shown) if args.suite == "precision" or any(
                r.get("group") == "precision" for r in records) else None
            if precision is not None:
                out.print(precision)
        if getattr(args, "model_step", None) is not None:  # `run --model`: the decode step
            from .step import print_step
            print_step(args, shown, ctx.roof, as_json=args.json,
                       interrupted="interrupted" if stopped is not None else
                       "the run stopped" if cut is not None else False)
    except BrokenPipeError:  # the table's reader went away: the run and its file are whole
        discard_stdout()
    except KeyboardInterrupt as e:  # the first signal, while the table printed: the file is whole
        stopped = signal_of(e) if stopped is None else stopped
    except OutputError as e:  # the table's stdout refused it: the file is whole, and said
        discard_stdout()
        cut = cut or (f"cannot write the output: {e}", EXIT_FAILED)
    if cut is not None or stopped is not None:  # what the kept cases say of the machine too
        for busy in machine_notes(records):
            print(f"decodewall: note: {busy}", file=sys.stderr)
    if cut is not None:
        kept = _kept(writer, records) if writer.count or writer.path is None else "nothing saved"
        print(f"decodewall: {'' if cut[1] == EXIT_BROKEN_PIPE else 'error: '}{cut[0]}; {kept}",
              file=sys.stderr)
        return cut[1]
    if stopped is not None:
        print(f"decodewall: {describe(stopped)}; {_kept(writer, records)}", file=sys.stderr)
        return exit_status(stopped)
    if writer.path and writer.count:
        print(f"results: {one_line(str(writer.path))}", file=sys.stderr)
    if note:
        print(f"decodewall: note: {note}", file=sys.stderr)
    for busy in machine_notes(records):
        print(f"decodewall: note: {busy}", file=sys.stderr)
    from ..results import FAILED
    failed = [r for r in records if r["status"] in FAILED]  # --strict: exit 1
    if failed:
        print(f"decodewall: {len(failed)} impl(s) failed the check, errored, crashed or timed out",
              file=sys.stderr)
    return EXIT_FAILED if failed and args.strict else 0


def _numbered(cases: list, ctx: Any, writer: Any) -> Iterator:
    """The cases in order, each with writer.case set to its place among those that get records
    and their count (the records' `run_case`): a case none of whose impls is selected (--impl
    naming another op's) writes nothing, so it is not counted."""
    from ..runner import reported_impls
    recorded = [bool(reported_impls(c, ctx)) for c in cases]
    i = 0
    for case, has in zip(cases, recorded):
        i += has
        writer.case = (i, sum(recorded)) if has else None
        yield case


def _kept(writer: Any, records: list[dict[str, Any]]) -> str:
    """What an interrupted run kept: the records in its file (the writer counts each with its
    write, so the count is the file's), or, with --no-save, the ones shown and not saved."""
    if writer.path is None:
        return f"{len(records)} finished case(s) shown, none saved (--no-save)"
    if not writer.count:  # none finished, or those that did could not be written
        return "nothing saved" if records else "no case finished, nothing saved"
    return f"{writer.count} finished case(s) kept in {one_line(str(writer.path))}"


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what is written to stdout inside the block (print, sys.stdout, or fd 1 itself, as
    C code writes) to stderr."""
    if sys.stdout is not None:
        sys.stdout.flush()
    try:
        saved: int | None = os.dup(1)
        os.dup2(2, 1)
    except OSError:
        saved = None
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def _run_as_rank(args, ctx, cases, writer, records, on_record) -> int:
    """This process is one rank of a torchrun launch: every rank measures, rank 0 reports."""
    from ..collectives import run_as_rank
    from ..report.table import console, printable_record, results_table
    rank, _ = torchrun_ranks()
    if rank != 0:
        writer.directory = None  # one results file, rank 0's
        args.json = False
    try:
        run_as_rank(ctx, cases, writer, on_record, max(5.0, args.case_timeout / 2))
    finally:
        writer.close()
    if rank != 0:
        return 0
    if not args.json:
        out = console()
        out.print(results_table([printable_record(r) for r in records],
                                title=f"decodewall run {writer.run_id} — "
                                f"{ctx.device_info.get('name')} ({ctx.backend.name}), "
                                f"{os.environ['WORLD_SIZE']} ranks (torchrun)", width=out.width))
    if writer.path and writer.count:
        print(f"results: {one_line(str(writer.path))}", file=sys.stderr)
    from ..results import FAILED
    failed = [r for r in records if r["status"] in FAILED]
    return EXIT_FAILED if failed and args.strict else 0


def _default_timeout() -> float:
    from ..case import DEFAULT_CASE_TIMEOUT_S
    return DEFAULT_CASE_TIMEOUT_S


def _short(shape: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in dataclasses.asdict(shape).items())


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def list_everything(args) -> int:
    """Every suite and op with its impls; whatever else is named (a suite, op, impl, backend,
    chip, dtype, shape, model, world size) must be valid as a run would take it: a misspelt name
    is refused here as it is in a run, not listed past. The list is the same on every backend,
    so a known backend need not be available here."""
    from kernels import OPS
    from ..suites import SUITES
    if args.backend is not None:
        known_backend(args.backend)
    if args.chip is not None:
        resolve_chip(args.chip, {})
    if args.suite is not None:
        check_suite(args.suite)
    if args.model is not None:
        if not args.model.strip():
            raise UsageError("--model is empty: give a built-in model or a config.json path")
        from .step import build_step
        build_step(args)
    if args.shape and args.op is None:
        raise UsageError("--shape needs --op")
    op = named_op(args.op) if args.op is not None else None
    resolve_dtypes(args.dtype, op)
    for text in args.shape or []:
        parse_shape(op, text)
    if args.world_size is not None and op is not None and not op.collective:
        raise UsageError("--world-size applies to collective ops (e.g. --op allreduce) only")
    ops = [op] if op is not None else list(OPS.values())
    impls = [n for o in ops for n in o.impls]
    for n in args.impl or []:
        if n not in impls:
            raise UsageError(f"unknown impl {n!r}{suggest(n, sorted(set(impls)))}")
    if args.json:  # one object a line, as everything --json prints: a suite's, then an op's
        import json
        for name, (_, doc) in SUITES.items():
            print(json.dumps({"suite": name, "doc": doc}))
        for name, op in OPS.items():
            print(json.dumps({"op": name, "impls": list(op.impls)}))
        return 0
    print("suites:")
    for name, (_, doc) in SUITES.items():
        print(f"  {name:14s} {doc}")
    print("ops:")
    for name, op in OPS.items():
        print(f"  {name:20s} impls: {', '.join(op.impls)}")
    return 0


def add_parser(sub) -> None:
    r = sub.add_parser("run", help="check and time cases, print verdicts, save JSONL")
    r.add_argument("--backend", help="cpu | cuda | xla (default: cuda if present, else cpu)")
    r.add_argument("--suite", help="named suite (default: decode); see `decodewall run --list`")
    r.add_argument("--op", help="one op instead of a suite, at the --shape given, else at its "
                   "smoke suite shapes (tiny; one or two dtypes)")
    r.add_argument("--shape", action="append", metavar="K=V,...",
                   help="shape for --op, e.g. M=1,N=4096,K=4096 (repeatable)")
    r.add_argument("--dtype", action="append", help="input dtype(s): bfloat16, float16, float32")
    r.add_argument("--impl", action="append", metavar="NAME", help="only these impls (repeatable)")
    r.add_argument("--plugin", action="append", metavar="FILE",
                   help="Python file registering extra impls with @register_impl (repeatable)")
    r.add_argument("--chip", help="catalog id to judge against (default: detected)")
    r.add_argument("--out", type=directory,
                   help="results directory (default: results/runs)")
    r.add_argument("--no-save", action="store_true", help="do not write a results file")
    r.add_argument("--json", action="store_true",
                   help="one JSON object per line, no table (plugins' own output: stderr)")
    r.add_argument("--seed", type=seed, default=0,
                   help="seed of the random inputs (-2**63 .. 2**64-1, as torch takes)")
    r.add_argument("--budget", choices=["quick", "normal", "thorough"],
                   help="timing budget (default: quick for smoke, else normal)")
    r.add_argument("--strict", action="store_true",
                   help="exit 1 when any impl fails its check, errors, crashes or times out")
    r.add_argument("--world-size", type=ranks, metavar="N",
                   help="ranks for collective ops (allreduce): the run starts them on this "
                        "machine (default: the shape's, 2; suite collectives: 2, 4, 8, ... 64 as "
                        "far as the machine runs them); under torchrun, its WORLD_SIZE")
    r.add_argument("--case-timeout", type=seconds, default=_default_timeout(), metavar="SECONDS",
                   help="kill an impl-case that runs longer and record it as timeout; it "
                        "covers the check, the warm-up (a call on every rotated input set: "
                        "thousands at tiny shapes) and timing, compiling and autotuning included "
                        "(default: %(default)g; at most a week)")
    r.add_argument("--warm", action="store_true",
                   help="time every case warm: one input set, no flush, so a working set the "
                        "cache holds is read from it (not judged against the DRAM roof)")
    r.add_argument("--no-progress", action="store_true",
                   help="no progress bar (drawn on stderr when it is a terminal)")
    r.add_argument("--list", action="store_true", help="list suites and ops, then exit")
    g = r.add_argument_group("model decode step (instead of --suite/--op)")
    add_step_args(g, model_required=False)
    r.set_defaults(func=command)
