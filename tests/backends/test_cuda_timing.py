"""The CUDA timer's order of work, on fake events (no GPU): the flush and the hold outside the
events, only the call between them, one sync per batch, and event milliseconds read as seconds."""
import pytest
import torch

import backends.cuda as cuda
from backends.cuda import CUDABackend


class FakeEvent:
    log: list = []
    made = 0

    def __init__(self, enable_timing=False):
        assert enable_timing
        FakeEvent.made += 1
        self.id = FakeEvent.made

    def record(self):
        FakeEvent.log.append(("record", self.id))

    def elapsed_time(self, end):
        return 0.25 * (end.id - self.id)  # ms: 0.25 for each call's (start, end) pair


@pytest.fixture
def fake_cuda(monkeypatch):
    log = []
    monkeypatch.setattr(FakeEvent, "log", log)
    monkeypatch.setattr(FakeEvent, "made", 0)
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: log.append(("hold", cycles)))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: log.append("sync"))
    b = CUDABackend()
    monkeypatch.setattr(b, "flush", lambda: log.append("flush"))
    return b, log


def test_each_sample_is_flushed_and_held_outside_its_events(fake_cuda):
    b, log = fake_cuda
    got = b.time_calls(lambda i: log.append(("call", i)), [3, 4])
    hold = ("hold", int(cuda.HOLD_MIN_S * cuda.SPIN_HZ))
    assert log == ["flush", hold, ("record", 1), ("call", 3), ("record", 2),
                   "flush", hold, ("record", 3), ("call", 4), ("record", 4), "sync"]
    assert got == pytest.approx([0.25e-3, 0.25e-3])  # event ms -> s


def test_a_warm_sample_is_not_flushed(fake_cuda):
    b, log = fake_cuda
    b.time_calls(lambda i: None, [0, 0], flush=False)
    assert "flush" not in log and log[-1] == "sync"


def test_a_flushed_backend_asks_for_no_rotation(fake_cuda):
    """The L2 is flushed before every sample: the runner must not also make rotated copies of
    each input set (a GEMV's weights many times over, in GPU memory), so the target is 0."""
    b, _ = fake_cuda
    assert b.rotate_bytes() == 0


def test_the_hold_covers_twice_the_last_batchs_longest_host_issue(fake_cuda, monkeypatch):
    """A launch that takes the host 1 ms to queue would leave the GPU idle inside the events
    behind a 50 us hold: the next batch holds twice the longest issue time seen, within bounds."""
    import types
    b, log = fake_cuda
    now = [0.0]
    monkeypatch.setattr(cuda, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))

    def slow_issue(i):
        now[0] += 1e-3 if i == 1 else 1e-4
    b.time_calls(slow_issue, [0, 1, 2])
    log.clear()
    b.time_calls(slow_issue, [0])
    assert log[1] == ("hold", int(2e-3 * cuda.SPIN_HZ))
    b.host_issue_s = 1.0  # a batch that compiled: held at most HOLD_MAX_S
    log.clear()
    b.time_calls(lambda i: None, [0])
    assert log[1] == ("hold", int(cuda.HOLD_MAX_S * cuda.SPIN_HZ))


def test_the_spin_lasts_the_hold_on_the_fastest_gpu_clock(fake_cuda):
    """torch.cuda._sleep counts cycles: the hold asked for (here the 50 us floor) must last at
    least that long on a GPU boosting to 2.9 GHz, the fastest there is; a slower clock only holds
    longer."""
    b, log = fake_cuda
    b.time_calls(lambda i: None, [0])
    (cycles,) = [c for entry, c in (e for e in log if isinstance(e, tuple)) if entry == "hold"]
    assert cycles >= cuda.HOLD_MIN_S * 2.9e9 and cuda.HOLD_MIN_S >= 50e-6
