"""--case-timeout on a fake clock (no real hang): each phase of a case gets the whole limit, and
a phase past it ends as `timeout` even when the worker would have answered later."""

import pytest
import torch

import bench.isolation as iso
from bench.case import Case
from bench.results import ResultWriter
from bench.runner import base_record
from kernels import OPS
from kernels.gemv import GemvShape
from tests.bench.test_isolation import ClockedWorker, FakeWorker, _ctx, clocked_runner

CASE = Case("gemv_bf16", GemvShape(1, 64, 128), torch.float32)


@pytest.fixture
def run_script(monkeypatch):
    def run(script, case_timeout=2.0):
        runner = clocked_runner(monkeypatch, script, case_timeout)
        try:
            (rec,) = runner.run_case(CASE)
        finally:
            runner.close()
        return rec
    return run


def ok_record():
    rec = base_record(_ctx(), CASE, OPS["gemv_bf16"].impls["torch_matmul"])
    rec.update(status="ok", correct=True, rel_err=1e-7)
    return rec


def test_an_impl_past_the_limit_is_a_timeout_though_it_would_have_finished(run_script):
    """The limit is enforced: a record that would come after it is not waited for."""
    rec = run_script([("phase", "inputs", 0), ("phase", "torch_matmul", 0), ("tick", 2.5),
                      ("record", ok_record()), ("done",)])
    assert rec["status"] == "timeout"
    assert "ran past --case-timeout 2 s in its check" in rec["error"]
    assert FakeWorker.closed == [True]  # the worker was killed


def test_each_phase_gets_the_whole_limit(run_script):
    """Building the inputs took 1.5 s of a 2 s limit; the impl that follows takes 1 s of its own
    2 s, not of the 0.5 s the inputs left."""
    rec = run_script([("phase", "inputs", 0), ("tick", 1.5), ("phase", "torch_matmul", 0),
                      ("tick", 1.0), ("record", ok_record()), ("done",)])
    assert rec["status"] == "ok"
    assert True not in FakeWorker.closed  # never killed (closed at the end of the run only)


class _SinceWorker(ClockedWorker):
    asked: list = []

    def last_output_line(self, since):
        _SinceWorker.asked.append(since)
        return "its own words" if since == 4096 else ""


def test_a_crash_quotes_only_what_its_impl_wrote(monkeypatch):
    """The log holds every phase's output; the dead impl's record quotes the last line written
    after its phase began (byte 4096 here), never an earlier impl's."""
    monkeypatch.setattr(_SinceWorker, "script", [("phase", "inputs", 0),
                                                 ("phase", "torch_matmul", 4096)])
    monkeypatch.setattr(_SinceWorker, "rc", -11)
    monkeypatch.setattr(_SinceWorker, "asked", [])
    monkeypatch.setattr(FakeWorker, "closed", [])
    monkeypatch.setattr(iso, "Worker", _SinceWorker)
    runner = iso.IsolatedRunner(_ctx(check_only=True), ResultWriter(None, "test"), case_timeout=2)
    try:
        (rec,) = runner.run_case(CASE)
    finally:
        runner.close()
    assert rec["status"] == "crashed" and _SinceWorker.asked == [4096]
    assert rec["error"].endswith("its last output line: its own words")


class _Relay(FakeWorker):
    """Each worker started takes the next (script, rc) of `runs`: rc None ends in a hang."""
    runs: list = []
    started = 0

    def __init__(self, *a, **k):
        self.msgs, self.rc = _Relay.runs[_Relay.started]
        self.msgs = list(self.msgs)
        _Relay.started += 1


def _relay(monkeypatch, runs, impls=("torch_matmul",)):
    import dataclasses
    monkeypatch.setattr(_Relay, "runs", runs)
    monkeypatch.setattr(_Relay, "started", 0)
    monkeypatch.setattr(FakeWorker, "closed", [])
    monkeypatch.setattr(iso, "Worker", _Relay)
    ctx = dataclasses.replace(_ctx(check_only=True), impl_filter=impls)
    runner = iso.IsolatedRunner(ctx, ResultWriter(None, "test"), case_timeout=2)
    try:
        return runner.run_case(CASE)
    finally:
        runner.close()


def test_a_worker_that_dies_before_its_first_word_is_replaced_once(monkeypatch):
    """A worker lost between impls (an OOM kill while idle) costs no impl its measurement: a
    fresh worker takes the case; only a second death in a row with nothing done ends it."""
    done = [("phase", "inputs", 0), ("phase", "torch_matmul", 0), ("record", ok_record()),
            ("done",)]
    (rec,) = _relay(monkeypatch, [([], -9), (done, None)])
    assert rec["status"] == "ok" and _Relay.started == 2
    (rec,) = _relay(monkeypatch, [([], -9), ([], -9), (done, None)])
    assert rec["status"] == "crashed" and _Relay.started == 2


def test_inputs_that_hang_give_every_impl_of_the_case_a_timeout_record(monkeypatch):
    recs = _relay(monkeypatch, [([("phase", "inputs", 0)], None)],
                  impls=("torch_matmul", "simd_c"))
    assert [r["impl"] for r in recs] == ["torch_matmul", "simd_c"]
    for r in recs:
        assert r["status"] == "timeout" and r["phase"] == "inputs"
        assert r["error"].startswith("building the inputs ran past --case-timeout 2 s")


@pytest.mark.parametrize("failing", ["pipe", "Popen"])
def test_a_worker_that_cannot_be_started_is_one_line_and_leaks_no_descriptor(tmp_path,
                                                                              monkeypatch,
                                                                              failing):
    """Too few file descriptors or processes left (ulimit -n, -u) to start a case worker: a
    RunError naming the cause, which the run ends on with the line and what it kept, not an
    internal error, and no pipe left open."""
    import errno
    import os
    import subprocess
    from bench.errors import RunError
    pipes = []

    def second_pipe_refused():
        pipes.append(1)
        if len(pipes) == 2:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_pipe()

    def refused(*args, **kwargs):
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
    real_pipe = os.pipe
    if failing == "pipe":
        monkeypatch.setattr(iso.os, "pipe", second_pipe_refused)
    else:
        monkeypatch.setattr(subprocess, "Popen", refused)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(RunError) as e:
        iso.Worker("cpu", [], tmp_path)
    why = "Too many open files" if failing == "pipe" else "Resource temporarily unavailable"
    assert str(e.value) == f"cannot start a worker process: {why}"
    assert set(os.listdir("/proc/self/fd")) <= before


def _ok(impl):
    rec = base_record(_ctx(), CASE, OPS["gemv_bf16"].impls[impl])
    rec.update(status="ok", correct=True, rel_err=1e-7)
    return rec


def test_each_impl_gets_exactly_one_record_whatever_the_worker_sends(monkeypatch):
    """A second record for an impl is dropped, and an impl the worker said "done" without is
    recorded as the worker's error, not left out of the results."""
    script = [("phase", "inputs", 0), ("phase", "torch_matmul", 0), ("record", _ok("torch_matmul")),
              ("record", _ok("torch_matmul")), ("done",)]
    recs = _relay(monkeypatch, [(script, None)], impls=("torch_matmul", "simd_c"))
    assert [(r["impl"], r["status"]) for r in recs] == [("torch_matmul", "ok"), ("simd_c", "error")]
    assert recs[1]["error"] == "the worker sent no record"


@pytest.mark.parametrize("first", ["a record", "a crashed impl"])
def test_only_worker_deaths_that_finish_nothing_count_toward_giving_up(monkeypatch, first):
    """A case is given up after two worker deaths in a row that finished nothing; a death after
    a worker sent a record (a lost device context ends it so) or one that cost an impl its
    record resets that count, so the next impl still gets its worker."""
    inputs, died = [("phase", "inputs", 0)], ([], -9)  # died: before its first word
    last = (inputs + [("phase", "simd_c", 0), ("record", _ok("simd_c")), ("done",)], None)
    if first == "a record":
        runs = [(inputs + [("phase", "torch_matmul", 0), ("record", _ok("torch_matmul"))], 4),
                died, last]
        expect = [("torch_matmul", "ok"), ("simd_c", "ok")]
    else:
        runs = [died, (inputs + [("phase", "torch_matmul", 0)], -11), died, last]
        expect = [("torch_matmul", "crashed"), ("simd_c", "ok")]
    recs = _relay(monkeypatch, runs, impls=("torch_matmul", "simd_c"))
    assert [(r["impl"], r["status"]) for r in recs] == expect
    assert _Relay.started == len(runs)


@pytest.mark.parametrize("rc, expect", [
    (None, "building the inputs ran past --case-timeout 2 s and was killed"),
    (-11, "while building the inputs, the worker died: SIGSEGV (Segmentation fault); its last "
          "output line: last words"),
])
def test_a_hang_or_crash_building_the_inputs_names_no_impl_stage(monkeypatch, rc, expect):
    """Building the inputs is not an impl's check: the records say where the worker was."""
    (rec,) = _relay(monkeypatch, [([("phase", "inputs", 0)], rc)])
    assert rec["error"] == expect and rec["phase"] == "inputs"


def test_a_worker_that_dies_in_a_phase_of_an_impl_already_recorded_loses_no_record(monkeypatch):
    """The record stands, whatever phase a worker names after it: its death there is a death
    between impls, and the next impl gets a fresh worker (one record an impl, never a crash of
    the run)."""
    again = [("phase", "inputs", 0), ("phase", "torch_matmul", 0), ("record", _ok("torch_matmul")),
             ("phase", "torch_matmul", 0)]
    last = [("phase", "inputs", 0), ("phase", "simd_c", 0), ("record", _ok("simd_c")), ("done",)]
    recs = _relay(monkeypatch, [(again, -11), (last, None)], impls=("torch_matmul", "simd_c"))
    assert [(r["impl"], r["status"]) for r in recs] == [("torch_matmul", "ok"), ("simd_c", "ok")]


def test_a_hang_after_a_failed_check_does_not_say_the_check_passed(run_script):
    """A worker that hangs after reporting a failed check (writing the record, say) is killed;
    the timeout record keeps the check's verdict, correct False, and its message claims no
    passed check."""
    rec = run_script([("phase", "inputs", 0), ("phase", "torch_matmul", 0),
                      ("checked", 0.5, False), ("tick", 2.5)])
    assert rec["status"] == "timeout" and rec["correct"] is False and rec["rel_err"] == 0.5
    assert "passed" not in rec["error"], rec["error"]


@pytest.mark.parametrize("rc, status", [(-11, "crashed"), (None, "timeout")])
def test_a_crash_of_an_impl_with_a_known_issue_names_it_and_a_timeout_does_not(
        monkeypatch, rc, status):
    """An impl whose library is known to crash says so in its crashed record, as in an error
    record; a timeout (the harness's limit, not the library's fault) does not add it."""
    import dataclasses
    impl = OPS["gemv_bf16"].impls["torch_matmul"]
    monkeypatch.setitem(OPS["gemv_bf16"].impls, "torch_matmul",
                        dataclasses.replace(impl, known_issue="see issue 12"))
    runner = clocked_runner(monkeypatch, [("phase", "inputs", 0), ("phase", "torch_matmul", 0),
                                          ("tick", 2.5 if rc is None else 0.0)], 2.0)
    monkeypatch.setattr(ClockedWorker, "rc", rc)
    try:
        (rec,) = runner.run_case(CASE)
    finally:
        runner.close()
    assert rec["status"] == status
    assert rec["error"].endswith(" (see issue 12)") == (status == "crashed"), rec["error"]
