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
through `sys.unraisablehook` and delivers the signal again a moment later, when the main thread
has left the callback, so the stop is neither lost nor shown as a traceback (unless the block
ends first, within REDELIVER_S: the command has then finished).
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
    redeliver: int | None = None  # a signal a callback swallowed, about to be delivered again


_state = _State()


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
    if _state.raised:
        return
    _state.redeliver = None  # this call takes the stop a callback swallowed, if one did
    if _state.depth:
        if _state.pending is None:
            _state.pending = signum
        return
    _state.raised = True
    raise Interrupted(signum)


REDELIVER_S = 0.01  # a callback that swallowed the interrupt has returned by then


def _redeliver(signum: int) -> None:
    time.sleep(REDELIVER_S)
    if _state.redeliver == signum:  # not taken meanwhile, nor its handled() block left
        # Python's handler runs in the main thread at its next bytecode; where the signal has
        # no Python handler any more (the block left), this does nothing: never SIG_DFL's kill
        _thread.interrupt_main(signum)


def _unraisable(args: Any, previous: Callable[[Any], Any]) -> None:
    """sys.unraisablehook inside handled(): an Interrupted that a callback swallowed is undone
    (the state forgets it was raised) and delivered again from another thread, where Python
    does not run the handler at once: the main thread meets it after the callback. One at a
    time (the collector calls its callbacks twice a collection). Anything else goes to the
    hook that was there before."""
    if isinstance(args.exc_value, Interrupted) and _state.raised:
        _state.raised = False
        if _state.redeliver is None:
            _state.redeliver = args.exc_value.signum
            threading.Thread(target=_redeliver, args=(args.exc_value.signum,),
                             daemon=True).start()
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
        for s, h in before.items():
            signal.signal(s, signal.SIG_IGN if exiting else h if h is not None else
                          signal.SIG_DFL)
        sys.unraisablehook = hook
        # a stop still to be delivered again is dropped: the block ended within REDELIVER_S
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
