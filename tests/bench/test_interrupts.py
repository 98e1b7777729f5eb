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
