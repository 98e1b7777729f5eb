"""Errors the commands report as one line on stderr (never a traceback), and the exit statuses."""
from __future__ import annotations

import argparse
import re
import signal
import sys
from typing import NoReturn

EXIT_FAILED = 1        # a RunError; with --strict, an impl that failed, errored, crashed or timed out
EXIT_USAGE = 2         # a UsageError
EXIT_BROKEN_PIPE = 141  # `run`'s output closed under it (128 + SIGPIPE, as a shell reports it)


class UsageError(Exception):
    """A problem with what the user asked for: one line on stderr, exit 2."""


class RunError(Exception):
    """The run could not go on (the case worker cannot start, the roof cannot be measured):
    one line on stderr, exit 1."""


class OutputError(Exception):
    """A write to stdout that the stream refused (a full device, a quota, a dead terminal)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse for the `python -m` tools: a usage error is one stderr line and exit 2."""

    def error(self, message: str) -> NoReturn:
        # one_line: an argument echoed back (an unrecognized one holding a newline, a 100 kB
        # value) must not break the message over lines
        print(one_line(f"{self.prog}: error: {message} (see {self.prog} --help)"), file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def exception_text(e: BaseException) -> str:
    """str(e), or "" where the exception's own __str__ raises (a kernel's or plugin's class)."""
    try:
        return str(e)
    except Exception:
        return ""


def exception_line(e: BaseException) -> str:
    """'ValueError: its first line', or 'ValueError' when the message is empty; a first line
    past MAX_LINE characters is cut in its middle (a kernel's error that dumps a whole tensor or
    IR on one line would otherwise fill a record, and a results file's line past its reader's
    limit makes the whole file unreadable)."""
    msg = clip((exception_text(e).strip().splitlines() or [""])[0])
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


# A terminal escape sequence: CSI (colors, cursor moves, clearing), OSC (window titles,
# hyperlinks; ended by BEL or ST, or unterminated), or a two-character ESC sequence.
_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]?|\x9b[0-?]*[ -/]*[@-~]?"
                     r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -~]?")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 (tab, newline kept), DEL, C1


def printable(text: str) -> str:
    """`text` from a kernel or a plugin (an exception's message, a worker's output line) as it
    may reach a terminal: escape sequences removed whole and other control characters dropped,
    so that it cannot recolor, move the cursor, clear the screen or retitle the window; an
    undecodable byte (a lone surrogate) shown as '?'."""
    text = _CONTROL.sub("", _ESCAPE.sub("", text))
    return text.encode("utf-8", "replace").decode("utf-8")


_ANY_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0 (tab and newline too), DEL, C1


MAX_LINE = 1000  # characters of an error line: a name given at any length is echoed in part


def one_line(text: str) -> str:
    """An error message as one line that cannot drive a terminal: every control character (a
    newline or an ESC in a path or name the user gave) shown as repr shows it, so the message
    stays one line and names exactly what was given. Past MAX_LINE characters (a 100 kB --op)
    its middle is cut, keeping how the message starts and the hint it ends with."""
    return clip(_ANY_CONTROL.sub(lambda m: repr(m.group())[1:-1], text))


def clip(text: str, limit: int = MAX_LINE) -> str:
    """`text`, or past `limit` characters its start and end with how many were cut between."""
    if len(text) <= limit:
        return text
    keep = (limit - 40) // 2
    return f"{text[:keep]} …[{len(text) - 2 * keep} characters]… {text[-keep:]}"


def describe_exit(rc: int) -> str:
    """'SIGSEGV (Segmentation fault)' or 'exit code 3', from a Popen return code."""
    if rc < 0:
        try:
            sig = signal.Signals(-rc)
            why = f"{sig.name} ({signal.strsignal(sig) or 'signal'})"
        except ValueError:
            return f"signal {-rc}"
        if sig == signal.SIGKILL:
            why += ", not sent by decodewall: the kernel's OOM killer?"
        return why
    return f"exit code {rc}"
