"""Errors the commands report as one line on stderr (never a traceback)."""
from __future__ import annotations


class UsageError(Exception):
    """A problem with what the user asked for: one line on stderr, exit 2."""


class RunError(Exception):
    """The run could not go on (the case worker cannot start, the roof cannot be measured):
    one line on stderr, exit 1."""
