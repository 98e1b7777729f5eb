"""SIGINT and SIGTERM as one exception, raised once, never inside a block that must run whole
(bench/interrupts.py). The signals are real, sent by this process to itself."""
import signal

import pytest

from bench.interrupts import Interrupted, deferred, exit_status, handled


def test_a_signal_inside_deferred_is_raised_when_the_block_ends():
    done = []
    with handled():
        with pytest.raises(Interrupted) as e:
            with deferred():
                signal.raise_signal(signal.SIGTERM)
                done.append("after the signal")
    assert done == ["after the signal"]
    assert e.value.signum == signal.SIGTERM and exit_status(e.value.signum) == 143
    assert isinstance(e.value, KeyboardInterrupt)  # what lets Ctrl-C through lets SIGTERM through


def test_only_the_first_signal_is_raised():
    """The cleanup and the report after an interrupt cannot be cut short by a second Ctrl-C."""
    with handled():
        with pytest.raises(Interrupted) as e:
            signal.raise_signal(signal.SIGINT)
        assert e.value.signum == signal.SIGINT and exit_status(e.value.signum) == 130
        signal.raise_signal(signal.SIGINT)  # ignored
        signal.raise_signal(signal.SIGTERM)  # ignored


def test_handlers_come_back_and_an_ignored_sigint_stays_ignored():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with handled():
        assert signal.getsignal(signal.SIGINT) not in before
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job's Ctrl-C
    try:
        with handled():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, old)


def test_the_first_of_two_signals_inside_deferred_is_the_one_raised():
    """Ctrl-C, then SIGTERM while a record is written: the run ends as interrupted (130), as
    the first signal said, not as the second."""
    with handled():
        with pytest.raises(Interrupted) as e:
            with deferred():
                signal.raise_signal(signal.SIGINT)
                signal.raise_signal(signal.SIGTERM)
    assert e.value.signum == signal.SIGINT


def test_a_nested_handled_gives_back_the_outer_state():
    """A block inside deferred() stays whole though a handled() opened and closed in it."""
    done = []
    with handled():
        with pytest.raises(Interrupted) as e:
            with deferred():
                with handled():
                    pass
                signal.raise_signal(signal.SIGTERM)
                done.append("after the signal")
    assert done == ["after the signal"] and e.value.signum == signal.SIGTERM


def test_exiting_leaves_every_signal_ignored_and_a_bare_ctrl_c_is_sigint():
    """After the report of a command about to exit, a late signal can change neither the exit
    status nor print a traceback; a KeyboardInterrupt raised where no handler was installed is
    Ctrl-C."""
    from bench.interrupts import SIGNALS, signal_of
    before = {s: signal.getsignal(s) for s in SIGNALS}
    try:
        with handled(exiting=True):
            pass
        assert all(signal.getsignal(s) is signal.SIG_IGN for s in SIGNALS)
    finally:
        for s, h in before.items():
            signal.signal(s, h)
    assert signal_of(KeyboardInterrupt()) == signal.SIGINT
    assert signal_of(Interrupted(signal.SIGTERM)) == signal.SIGTERM


@pytest.mark.parametrize("where", ["gc callback", "__del__"])
def test_a_signal_that_lands_in_a_callback_is_not_lost(where, capsys):
    """Python runs the handler wherever the main thread is: inside a garbage collector callback
    (jax installs one) or a finalizer its exception is printed as "Exception ignored" and
    dropped, and the run would go on to the end. The signal is delivered again once the
    callback is over: the stop is raised in the code it interrupted, and nothing is printed."""
    import gc
    import time

    def in_callback(*_):
        signal.raise_signal(signal.SIGTERM)  # the handler runs here, inside the callback

    class Finalized:
        def __del__(self):
            in_callback()

    ran = []
    with handled():
        if where == "gc callback":
            gc.callbacks.append(in_callback)
        try:
            with pytest.raises(Interrupted) as e:
                if where == "gc callback":
                    gc.collect()
                else:
                    Finalized()  # its __del__ runs at once
                ran.append("past the callback")
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:  # the stop arrives here, not after
                    time.sleep(0.001)
                ran.append("the stop never came")
        finally:
            if in_callback in gc.callbacks:
                gc.callbacks.remove(in_callback)
        signal.raise_signal(signal.SIGINT)  # raised once: a later signal is still ignored
    assert e.value.signum == signal.SIGTERM and ran == ["past the callback"]
    assert capsys.readouterr().err == ""


def test_a_redelivered_stop_that_lands_in_the_hook_is_delivered_again(monkeypatch, capsys):
    """The hook starts the thread that delivers the stop again and waits for it to start; on a
    busy machine the thread's delivery lands while the main thread is still in the hook, where
    the handler's exception is lost like the callback's. Delivered at once (REDELIVER_S = 0),
    it lands there often; it is delivered again until taken, every time."""
    import gc
    import time
    import bench.interrupts as interrupts
    monkeypatch.setattr(interrupts, "REDELIVER_S", 0.0)

    def in_callback(*_):
        signal.raise_signal(signal.SIGTERM)

    taken = 0
    for _ in range(20):
        with handled():
            gc.callbacks.append(in_callback)
            try:
                gc.collect()
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    time.sleep(0.001)
                break  # lost
            except Interrupted:
                taken += 1
            finally:
                gc.callbacks.remove(in_callback)
    assert taken == 20
    assert capsys.readouterr().err == ""


def test_a_cpu_time_limit_ends_a_command_as_an_interrupt():
    """ulimit -t (a batch scheduler's CPU limit) sends SIGXCPU before its SIGKILL: the run keeps
    its finished cases and says so, exit 152, where the default action killed it without its
    table or the line."""
    with handled():
        with pytest.raises(Interrupted) as e:
            signal.raise_signal(signal.SIGXCPU)
    assert exit_status(e.value.signum) == 152
    from bench.interrupts import describe
    assert describe(e.value.signum) == "terminated (SIGXCPU)"


def test_a_stop_swallowed_as_the_block_ends_is_not_raised_outside_it():
    """The collector calls its callbacks twice a collection, each swallowing a stop: one is
    delivered again, by one thread. A block that ends before the stop is taken has finished:
    the stop is dropped, not raised outside the block (a bare KeyboardInterrupt there, or SIGTERM's
    default action killing the process)."""
    import gc
    import time
    from bench.interrupts import REDELIVER_S

    calls = []

    def in_callback(*_):
        calls.append(1)
        signal.raise_signal(signal.SIGINT)

    with handled():
        gc.callbacks.append(in_callback)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(in_callback)
    assert len(calls) == 2  # "start" and "stop"
    time.sleep(20 * REDELIVER_S)  # a KeyboardInterrupt here fails the test



def test_a_signal_inside_nested_deferred_blocks_waits_for_the_outermost():
    """Blocks nest (a record's write inside the block that also counts and shows it; a worker's
    start inside the block that holds it): a signal in the inner block is raised when the
    outermost ends, not when the inner one does."""
    done = []
    with handled():
        with pytest.raises(Interrupted) as e:
            with deferred():
                with deferred():
                    signal.raise_signal(signal.SIGTERM)
                done.append("the rest of the outer block")
    assert done == ["the rest of the outer block"] and e.value.signum == signal.SIGTERM


def test_other_unraisable_exceptions_reach_the_previous_hook(monkeypatch):
    """Inside handled() only a swallowed Interrupted is taken over; any other exception a
    finalizer or callback drops still reaches the hook that was there before (Python's "Exception
    ignored" report), and that hook is back after the block."""
    import sys
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda args: seen.append(args.exc_type))
    hook = sys.unraisablehook

    class Broken:
        def __del__(self):
            raise ValueError("in a finalizer")

    with handled():
        Broken()  # its __del__ runs at once
    assert seen == [ValueError]
    assert sys.unraisablehook is hook


def test_handled_outside_the_main_thread_changes_nothing():
    """Python runs signal handlers in the main thread only: a command run in another thread
    installs none (signal.signal would raise there) and its block still runs."""
    import threading
    before = signal.getsignal(signal.SIGTERM)
    seen, errors = [], []

    def command():
        try:
            with handled():
                seen.append(signal.getsignal(signal.SIGTERM))
        except BaseException as e:  # noqa: BLE001  what the thread would die of
            errors.append(e)

    t = threading.Thread(target=command)
    t.start()
    t.join()
    assert errors == [] and seen == [before]
