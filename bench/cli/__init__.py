"""The `decodewall` command: run | show | roof | chips | backends | compare | project | plot.

One module a subcommand (run.py, show.py, roof.py, chips.py, backends.py, compare.py, project.py,
plot.py; `run --model` in step.py), each with `add_parser(subparsers)` and `command(args) -> exit status`;
common.py resolves what several take (backend, chip, dtype, shape). This module only assembles
the parser and maps errors to exit statuses: every bad input (unknown name, malformed shape,
impossible shape, unavailable backend, broken plugin, unwritable --out, corrupt results file) is
found before anything is measured or written, and ends with one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Sequence

if sys.platform == "win32":  # the runner needs fcntl, POSIX signals and process groups
    print("decodewall: error: cannot start: Windows is not supported (decodewall runs its cases "
          "in POSIX process groups and handles POSIX signals); run it under WSL2",
          file=sys.stderr)
    raise SystemExit(2)

import fcntl  # noqa: E402


def _reopen_closed_streams() -> bool:
    """Put /dev/null on a closed stdin, stdout or stderr (`<&-`, `>&-`, `2>&-`; or one open the
    wrong way round, as a shell wrapper that opened its script on the free number leaves it)
    before anything opens a file: the next file or pipe would take its number, and a worker
    started with it as its stdin or stderr would lose the pipe. Returns whether stdout was
    closed (the command then says so and does nothing)."""
    closed = []
    for fd in (0, 1, 2):
        try:
            mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
            if mode != (os.O_WRONLY if fd == 0 else os.O_RDONLY):
                continue
            os.close(fd)
        except OSError:
            pass
        closed.append(fd)
        null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        if fd in closed and getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))
    return 1 in closed


STDOUT_CLOSED = _reopen_closed_streams()


# decodewall's top-level packages and a name each one's __init__ defines. PyPI has other
# distributions called `kernels` (Hugging Face's), `bench` and `backends`: installed into the same
# environment, one shadows ours or pip overwrites one's files with the other's.
OWN_PACKAGES = (("kernels", "register_impl"), ("backends", "get_backend"))


def foreign_packages() -> list[str]:
    """Each of OWN_PACKAGES that Python would import from outside this checkout or install, or
    whose __init__ is not ours, as "name (where)"."""
    import importlib.util
    root = Path(__file__).resolve().parents[2]
    bad = []
    for name, mark in OWN_PACKAGES:
        where = "not found"
        try:
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.origin:
                origin = Path(spec.origin).resolve()
                where = str(origin)
                if origin.parent.parent == root and mark in origin.read_text(errors="replace"):
                    continue
        except (ImportError, ValueError, OSError) as e:
            where = f"{type(e).__name__}: {e}"
        bad.append(f"{name} ({where})")
    return bad


if _bad := foreign_packages():
    print(f"decodewall: error: cannot start: the package(s) {', '.join(_bad)} Python finds are "
          f"not decodewall's: a distribution of the same name (Hugging Face's `kernels`, PyPI's "
          f"`bench` or `backends`) is installed beside it; install decodewall in a virtual "
          f"environment of its own", file=sys.stderr)
    raise SystemExit(2)

from ..errors import (EXIT_FAILED, EXIT_USAGE, OutputError, RunError, UsageError,  # noqa: E402
                      one_line)
from ..interrupts import describe, exit_status, handled, signal_of  # noqa: E402
try:
    from . import backends, chips, compare, plot, project, roof, run, show
except KeyboardInterrupt:  # Ctrl-C while the commands import, before main() installs its handlers
    print(f"decodewall: {describe(signal.SIGINT)}", file=sys.stderr)
    raise SystemExit(exit_status(signal.SIGINT)) from None
from .common import Parser, discard_stdout

COMMANDS = (run, show, roof, chips, backends, compare, project, plot)  # in `decodewall --help` order
# Commands that read results files or the catalog: they do not import torch (only for a figure a
# record lacks, docs/measurement.md "Bad input"), so they print in a fraction of a second and
# work where torch cannot start. Every other command imports torch before it begins
# (`_import_torch`); `--help` never does.
READERS = ("show", "compare", "plot", "chips")


def build_parser() -> Parser:
    p = Parser(prog="decodewall", description="Is your decode kernel at the memory wall?")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    # Not required here: argparse would report a missing COMMAND before an unknown argument;
    # parse_args says which.
    sub.required = False
    for module in COMMANDS:
        module.add_parser(sub)
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line, or a UsageError naming what is wrong and the --help that lists the
    right arguments (the subcommand's for its own)."""
    args, extra = build_parser().parse_known_args(argv)
    command = getattr(args, "command", None)
    if extra:
        # before the COMMAND (or without one) an argument is decodewall's own, else the command's
        mine = command is not None and extra[0] in argv and command in argv \
            and argv.index(extra[0]) > argv.index(command)
        where = f" (see `decodewall {command} --help`)" if mine else \
            " (decodewall takes a COMMAND first, then its options; see `decodewall --help`)"
        raise UsageError(f"unrecognized arguments: {' '.join(extra)}{where}")
    if command is None:
        raise UsageError("the following arguments are required: COMMAND (see `decodewall --help`)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status. SIGTERM ends a command as Ctrl-C does, and the
    handlers stay in place while the error or interrupt is reported (bench/interrupts.py).
    argv None: the command line of this process, which exits with the status returned."""
    _replace_unencodable()
    if argv is not None:
        with handled(exiting=False):
            return _main(list(argv))
    stderr, sys.stderr = sys.stderr, _Diagnostics(sys.stderr)
    try:
        with handled(exiting=True):
            if STDOUT_CLOSED:
                print("decodewall: error: standard output is closed: nowhere to write the output",
                      file=sys.stderr)
                return EXIT_USAGE
            stdout, sys.stdout = sys.stdout, _Output(sys.stdout)
            try:
                return _main(sys.argv[1:])
            finally:
                sys.stdout = stdout
    finally:
        sys.stderr = stderr


class _Diagnostics:
    """stderr as the command writes it. A message stderr will not take (`2>/dev/full`, a reader
    of `2>` that went away) is lost rather than raised: the exit status must still say what
    happened (2 for bad input), and an OSError out of a print would make it 1 (or 120 at exit).
    After the first such error stderr points at /dev/null, so the unwritten rest of its buffer
    and the flush at exit meet no error again."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError:
            self._discard()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError:
            self._discard()

    def _discard(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
            self._stream.flush()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class _Output:
    """stdout as the command writes it, whose own write errors are told apart from any other
    OSError (a bug's, a file's): only these are "cannot write the output". A closed pipe stays
    BrokenPipeError, which ends a command quietly."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OutputError(e.strerror or str(e)) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OutputError(e.strerror or str(e)) from None

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


# What an ASCII output gets for the characters of our own texts whose '?' would lose meaning
# ("21.6 ?s": µs, ms or s?), one character for one so that table columns stay aligned (the
# table console spells out the strings it lays out first: bench.report.table.ASCII_TEXT)
ASCII_FOR = {"µ": "u", "—": "-", "–": "-", "×": "x", "±": "~", "≤": "<", "≥": ">", "→": ">",
             "≈": "~", "÷": "/", "…": ".", "−": "-", "²": "2", "¹": "1", "‖": "|", "·": "-",
             "█": "#", "░": "."}


def _transliterate(e: UnicodeError) -> tuple[str, int]:
    if not isinstance(e, UnicodeEncodeError):
        raise e
    return "".join(ASCII_FOR.get(c, "?") for c in e.object[e.start:e.end]), e.end


def _replace_unencodable() -> None:
    """Print what the output's encoding cannot hold (µs, —, box lines and names under
    PYTHONIOENCODING=ascii or a C locale) as '?' (µ as 'u': ASCII_FOR) instead of failing with
    UnicodeEncodeError."""
    import codecs
    codecs.register_error("decodewall-replace", _transliterate)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="decodewall-replace")
        except (AttributeError, ValueError, OSError):  # not a TextIOWrapper, or closed
            pass


def _main(argv: list[str]) -> int:
    try:
        args = parse_args(argv)
        args.argv = argv
        if args.command not in READERS:
            _import_torch()
        return args.func(args)
    except UsageError as e:
        print(f"decodewall: error: {one_line(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    except RunError as e:
        print(f"decodewall: error: {one_line(str(e))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as e:  # one of SIGNALS before `run` had anything to keep
        print(f"decodewall: {describe(signal_of(e))}", file=sys.stderr)
        return exit_status(signal_of(e))
    except BrokenPipeError:
        discard_stdout()
        return 0
    except OutputError as e:
        discard_stdout()
        print(f"decodewall: error: cannot write the output: {e}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:  # a bug of ours: one line that says where, never a traceback
        return _internal_error(e)


def _import_torch() -> None:
    """Import torch, or a UsageError "cannot start" where torch refuses its own environment as
    it imports (TORCH_LOGS=junk): one line, not an internal error deep in whatever imported it
    first."""
    try:
        import torch  # noqa: F401
    except Exception as e:
        # torch wraps its message over lines and then lists every valid setting: the start, joined
        why = " ".join(str(e).split())
        why = why if len(why) <= 240 else why[:240] + "..."
        raise UsageError(f"cannot start: {type(e).__name__}: {why}") from None


def _internal_error(e: Exception) -> int:
    """A bug of ours: one line that says where, never a traceback."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}" if tb else ""
    msg = (str(e).strip().splitlines() or [""])[0]
    print(f"decodewall: internal error{where}: {type(e).__name__}: {one_line(msg)}",
          file=sys.stderr)
    return EXIT_FAILED
