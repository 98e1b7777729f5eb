"""Errors the commands report as one line on stderr (never a traceback), and the exit statuses."""
from __future__ import annotations

import argparse
import sys
from typing import NoReturn

EXIT_FAILED = 1        # a RunError; with --strict, an impl that failed, errored, crashed or timed out
EXIT_USAGE = 2         # a UsageError
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), finished cases kept


class UsageError(Exception):
    """A problem with what the user asked for: one line on stderr, exit 2."""


class RunError(Exception):
    """The run could not go on (the case worker cannot start, the roof cannot be measured):
    one line on stderr, exit 1."""


class OneLineParser(argparse.ArgumentParser):
    """argparse for the `python -m` tools: a usage error is one stderr line and exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
