"""SIGINT (Ctrl-C), SIGTERM, SIGHUP and SIGXCPU end a command the same way: as an `Interrupted`
exception in the main thread, so that the run kills its workers, keeps its finished cases and
says so.

`handled()` installs the handlers for a command. The first signal is raised; any later one is
ignored, so the cleanup and the report that follow (killing worker process groups, removing
temporary files, the table, the "finished case(s) kept" line) cannot be cut short by a second
Ctrl-C. A signal that lands inside `deferred()` is raised when the block ends: writing a record
and counting it happen together or not at all.

Python runs a signal's handler wherever the main thread is, including inside a garbage
collector callback (jax installs one), a `__del__` or a weakref callback, where an exception
cannot propagate: Python prints it as "Exception ignored" and drops it. `handled()` catches that
through `sys.unraisablehook` and delivers the signal again every REDELIVER_S from another thread
until the main thread takes it outside a callback, so the stop is neither lost nor shown as a
traceback (unless the block ends first: the command has then finished).
"""
from __future__ import annotations

import _thread
import functools
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

# SIGHUP too: the terminal or SSH session a run was started from has gone away; SIGXCPU: a soft
# CPU time limit (ulimit -St, a batch scheduler's) reached, the hard limit's SIGKILL to follow
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGXCPU)


class Interrupted(KeyboardInterrupt):
    """The command was stopped by `signum` (one of SIGNALS). A KeyboardInterrupt, so
    every place that lets Ctrl-C through lets the others through too."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _State:
    depth = 0                  # deferred() blocks open
    pending: int | None = None  # a signal that landed in one, raised when the last ends
    raised = False             # the first signal has been raised: later ones are ignored
    redeliver: int | None = None  # a signal a callback swallowed, to be delivered again
    in_hook = False            # the main thread is in _unraisable: a handler there raises nothing
    redelivering = False       # a _redeliver thread is running (one at a time)


_state = _State()
_redelivery = threading.Lock()  # `redeliver` read and cleared together with interrupt_main


def signal_of(e: BaseException) -> int:
    """The signal behind an interrupt: Interrupted names it; a bare KeyboardInterrupt (raised
    where our handler is not installed) is Ctrl-C."""
    return getattr(e, "signum", signal.SIGINT)


def exit_status(signum: int) -> int:
    """128 + the signal, as a shell reports a process ended by it (130 for SIGINT, 143 for
    SIGTERM)."""
    return 128 + int(signum)


def describe(signum: int) -> str:
    """How the stderr line names the stop: 'interrupted' (Ctrl-C) or 'terminated (SIGTERM)'."""
    return "interrupted" if signum == signal.SIGINT else \
        f"terminated ({signal.Signals(signum).name})"


def _handle(signum: int, frame: Any) -> None:
    if _state.raised or _state.in_hook:  # in the hook a raise is lost: the thread delivers again
        return
    _state.redeliver = None  # this call takes the stop a callback swallowed, if one did
    if _state.depth:
        if _state.pending is None:
            _state.pending = signum
        return
    _state.raised = True
    raise Interrupted(signum)


REDELIVER_S = 0.01  # how often a swallowed stop is delivered again until it is taken


def _redeliver() -> None:
    """Deliver the swallowed stop again every REDELIVER_S until the main thread takes it (its
    handler clears `redeliver` as it raises) or the block ends. One try is not enough: the main
    thread may still be in the callback, in the hook, or in the next callback (the collector
    calls each twice a collection), where the handler's exception is lost again."""
    while True:
        time.sleep(REDELIVER_S)
        with _redelivery:
            signum = _state.redeliver
            if signum is None:
                _state.redelivering = False
                return
            # Python's handler runs in the main thread at its next bytecode; where the signal
            # has no Python handler (SIG_DFL, SIG_IGN) this does nothing: never SIG_DFL's kill
            _thread.interrupt_main(signum)


def _unraisable(args: Any, previous: Callable[[Any], Any]) -> None:
    """sys.unraisablehook inside handled(): an Interrupted that a callback swallowed is undone
    (the state forgets it was raised) and handed to a thread that delivers it again: Python
    runs the handler in the main thread, after the callback. A handler that runs in this hook
    (starting the thread waits, and the thread's signal may already land) raises nothing. Any
    other exception goes to the hook that was there before."""
    if isinstance(args.exc_value, Interrupted) and _state.raised:
        _state.in_hook = True
        try:
            _state.raised = False
            with _redelivery:
                _state.redeliver = args.exc_value.signum
                if not _state.redelivering:
                    _state.redelivering = True
                    threading.Thread(target=_redeliver, daemon=True).start()
        finally:
            _state.in_hook = False
        return
    previous(args)


@contextmanager
def handled(exiting: bool = False) -> Iterator[None]:
    """Each of SIGNALS raises `Interrupted` (once) in the main thread inside the block;
    the previous handlers come back after it, or, where the process exits as the block ends
    (`exiting`), all of them stay ignored: a signal between the report and the exit cannot
    change the exit status or print a traceback. A signal the process was started with ignored (a
    background job's SIGINT, nohup) stays ignored. Outside the main thread nothing changes
    (Python runs signal handlers in the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in SIGNALS}
    saved = (_state.depth, _state.pending, _state.raised, _state.redeliver)
    _state.depth, _state.pending, _state.raised, _state.redeliver = 0, None, False, None
    hook = sys.unraisablehook
    sys.unraisablehook = functools.partial(_unraisable, previous=hook)
    for s, h in before.items():
        if h is not signal.SIG_IGN:
            signal.signal(s, _handle)
    try:
        yield
    finally:
        # a stop still to be delivered again is dropped: the block has ended. No delivery
        # follows once the lock is let go, and one already made is handled (ignored) by
        # signal.signal, which runs pending handlers before it changes one
        _state.raised = True
        with _redelivery:
            _state.redeliver = None
        for s, h in before.items():
            signal.signal(s, signal.SIG_IGN if exiting else h if h is not None else
                          signal.SIG_DFL)
        sys.unraisablehook = hook
        _state.depth, _state.pending, _state.raised, _state.redeliver = saved


@contextmanager
def deferred() -> Iterator[None]:
    """Run the block whole: a signal that lands inside it is raised as it ends."""
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        if _state.depth == 0 and _state.pending is not None and not _state.raised:
            signum, _state.pending, _state.raised = _state.pending, None, True
            raise Interrupted(signum)
