"""Impls that crash, hang or break at import, through the real `decodewall run`: each bad case is
recorded (crashed / timeout) and the run goes on; nothing is left running."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bench.errors import describe_exit
from tests.helpers import REPO, default_sigint, run_cli

GEMV = ["--op", "gemv_bf16", "--shape", "M=1,N=64,K=128", "--dtype", "float32"]

BAD_IMPLS = '''
import ctypes, os, subprocess, sys, time
from kernels import register_impl

PIDS = {pids!r}

def note_pid(tag):
    with open(PIDS, "a") as f:
        f.write(f"{{tag}} {{os.getpid()}}\\n")

@register_impl("gemv_bf16", "a_segfault", backends=["cpu"])
def a_segfault(x, w):
    print("reading address 0", file=sys.stderr, flush=True)
    return ctypes.string_at(0)

@register_impl("gemv_bf16", "b_hang", backends=["cpu"])
def b_hang(x, w):
    note_pid("worker")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    note_pid_child = open(PIDS, "a"); note_pid_child.write(f"child {{child.pid}}\\n"); note_pid_child.close()
    time.sleep(600)

@register_impl("gemv_bf16", "c_abort", backends=["cpu"])
def c_abort(x, w):
    os.abort()

@register_impl("gemv_bf16", "d_exit", backends=["cpu"])
def d_exit(x, w):
    print("\x1b[1;31mgoodbye\x1b[0m from stdout\x07", flush=True)  # colored, with a bell
    os._exit(7)

@register_impl("gemv_bf16", "e_good", backends=["cpu"])
def e_good(x, w, out=None):
    return (x @ w.T) if out is None else out.copy_(x @ w.T)
'''


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead but not yet reaped by its parent
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def gone_within(pids, seconds: float) -> bool:
    """Every pid dead (or a zombie) within `seconds`."""
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def bad_plugin(tmp_path):
    pids = tmp_path / "pids.txt"
    p = tmp_path / "bad_impls.py"
    p.write_text(BAD_IMPLS.format(pids=str(pids)))
    return p, pids


def test_crashes_and_hangs_are_recorded_and_the_run_goes_on(tmp_path, bad_plugin):
    plugin, pids = bad_plugin
    out = tmp_path / "runs"
    p = run_cli("run", *GEMV, "--plugin", str(plugin), "--case-timeout", "4", "--budget",
                "quick", "--out", str(out), "--strict", "--no-progress", timeout=240)
    assert p.returncode == 1, p.stderr  # --strict: failed impls
    assert "Traceback" not in p.stderr + p.stdout
    (f,) = out.iterdir()
    recs = {r["impl"]: r for r in map(json.loads, f.read_text().splitlines())}
    assert {"a_segfault", "b_hang", "c_abort", "d_exit", "e_good", "torch_matmul"} <= set(recs), \
        p.stderr  # a run cut short says why there
    assert recs["a_segfault"]["status"] == "crashed"
    assert "the worker died in its check: SIGSEGV" in recs["a_segfault"]["error"]
    assert "its last output line: reading address 0" in recs["a_segfault"]["error"]  # stderr
    assert recs["b_hang"]["status"] == "timeout"
    assert "ran past --case-timeout 4 s in its check" in recs["b_hang"]["error"]
    assert recs["b_hang"]["phase"] == "check" and recs["b_hang"]["correct"] is None
    assert recs["c_abort"]["status"] == "crashed" and "SIGABRT" in recs["c_abort"]["error"]
    assert recs["d_exit"]["status"] == "crashed" and "exit code 7" in recs["d_exit"]["error"]
    # a stdout line is an output line too, and no terminal control reaches the record or table
    assert recs["d_exit"]["error"].endswith("its last output line: goodbye from stdout")
    assert "\x1b" not in p.stdout and "\x07" not in p.stdout
    for name in ("a_segfault", "b_hang", "c_abort", "d_exit"):
        assert recs[name]["time_s"] is None and recs[name]["achieved_gbps"] is None
    # the cases after the bad ones still ran and were timed
    assert recs["e_good"]["status"] == "ok" and recs["e_good"]["time_s"]["n"] > 0
    assert recs["torch_matmul"]["status"] == "ok"
    # the table shows both new statuses
    assert "CRASHED" in p.stdout and "TIMEOUT" in p.stdout
    # the hung worker and the process it started are gone
    started = [int(line.split()[1]) for line in pids.read_text().splitlines()]
    assert len(started) == 2 and not any(alive(pid) for pid in started)


def test_without_strict_a_crash_exits_0_and_says_so(tmp_path, bad_plugin):
    plugin, _ = bad_plugin
    p = run_cli("run", *GEMV, "--plugin", str(plugin), "--impl", "d_exit", "--impl", "e_good",
                "--budget", "quick", "--no-save", "--json", "--no-progress")
    assert p.returncode == 0, p.stderr
    recs = {r["impl"]: r["status"] for r in map(json.loads, p.stdout.splitlines())}
    assert recs == {"d_exit": "crashed", "e_good": "ok"}
    assert "crashed or timed out" in p.stderr


def test_plugin_that_raises_at_import_or_has_a_syntax_error(tmp_path):
    out = tmp_path / "runs"
    for text, expect in (("raise RuntimeError('plugin exploded')\n", "plugin exploded"),
                         ("def broken(:\n", "SyntaxError")):
        plugin = tmp_path / "p.py"
        plugin.write_text(text)
        p = run_cli("run", *GEMV, "--plugin", str(plugin), "--out", str(out))
        assert p.returncode == 2 and "Traceback" not in p.stderr
        lines = [x for x in p.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and expect in lines[0], p.stderr
        assert not out.exists() or not list(out.iterdir())


def test_a_lost_device_context_ends_its_worker_and_the_run_goes_on(tmp_path):
    """An impl whose error leaves the device unusable (a CUDA fault, faked here through the CPU
    backend's context_lost hook in the plugin) is recorded crashed; the next impl gets a fresh
    worker."""
    plugin = tmp_path / "poison.py"
    plugin.write_text(
        "from backends import get_backend\n"
        "from kernels import register_impl\n"
        "get_backend('cpu').context_lost = lambda: 'illegal memory access (fake)'\n\n"
        "@register_impl('gemv_bf16', 'a_poison', backends=['cpu'])\n"
        "def a_poison(x, w):\n"
        "    raise RuntimeError('CUDA error: an illegal memory access was encountered')\n")
    p = run_cli("run", *GEMV, "--plugin", str(plugin), "--budget", "quick", "--no-save",
                "--json", "--no-progress")
    assert p.returncode == 0, p.stderr
    recs = {r["impl"]: r for r in map(json.loads, p.stdout.splitlines())}
    assert recs["a_poison"]["status"] == "crashed"
    assert "context is lost (illegal memory access (fake))" in recs["a_poison"]["error"]
    assert recs["torch_matmul"]["status"] == "ok"


# The CLI with os.killpg wrapped so that a second Ctrl-C lands in the cleanup after the first
# signal, just before it kills the worker's process group (raise_signal: delivered at once), once
# the hanging impl has started (the plugin preflight's kill, at the start, is left alone). A
# worker asked to exit gets EXIT_WAIT_S_IN_TEST here, not the run's 5 s: on a busy 2-core machine
# the kill and the CLI's own exit alone can take several seconds (up to 9 s seen under load, 0.5-1 s
# idle), so only a wait far longer than that tells "asked first" from "killed at once".
EXIT_WAIT_S_IN_TEST = 40.0
SECOND_CTRL_C_IN_CLEANUP = f"""
import os, signal, sys
import bench.isolation
bench.isolation.EXIT_WAIT_S = {EXIT_WAIT_S_IN_TEST!r}
killpg = os.killpg
def second_ctrl_c_then_killpg(pgid, sig):
    pids = os.environ["DW_TEST_PIDS"]
    if os.path.exists(pids) and "child" in open(pids).read():
        os.killpg = killpg
        signal.raise_signal(signal.SIGINT)
    killpg(pgid, sig)
os.killpg = second_ctrl_c_then_killpg
from bench.cli import main
sys.exit(main())
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_a_hang_kills_the_worker_at_once_and_keeps_finished_cases(
        tmp_path, bad_plugin, signum):
    """Ctrl-C or SIGTERM while an impl hangs in its check: its worker's process group (the
    process the kernel started included) is killed at once, not asked to exit; a second Ctrl-C
    during that cleanup changes nothing; the finished case, the table and one stderr line are
    kept; exit 128 + the signal; no temporary file is left."""
    plugin, pids = bad_plugin
    out, tmp = tmp_path / "runs", tmp_path / "tmp"
    tmp.mkdir()
    cmd = [sys.executable, "-c", SECOND_CTRL_C_IN_CLEANUP, "run", *GEMV, "--plugin", str(plugin),
           "--impl", "torch_matmul", "--impl", "b_hang", "--budget", "quick", "--out", str(out),
           "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(REPO), TRITON_INTERPRET="1", PYTHONFAULTHANDLER="1",
               TMPDIR=str(tmp), DW_TEST_PIDS=str(pids))
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=default_sigint)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (pids.exists() and "child" in pids.read_text()):
            time.sleep(0.2)
        assert pids.exists(), "the hanging impl never started"
        t0 = time.monotonic()
        proc.send_signal(signum)
        try:
            stdout, err = proc.communicate(timeout=EXIT_WAIT_S_IN_TEST + 30)
        except subprocess.TimeoutExpired:  # say where it was stuck: faulthandler's dump on SIGABRT
            proc.send_signal(signal.SIGABRT)
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            pytest.fail(f"no exit {EXIT_WAIT_S_IN_TEST + 30:g} s after the signal; its stderr "
                        f"ends:\n{err[-4000:]}")
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err
    # Asking a busy worker to exit first would wait EXIT_WAIT_S_IN_TEST (40 s) for nothing; the
    # kill and the exit take a fraction of that even on a loaded machine.
    assert elapsed < EXIT_WAIT_S_IN_TEST * 0.75, f"{elapsed:.1f} s from the signal to the exit"
    (f,) = out.iterdir()
    assert [json.loads(x)["impl"] for x in f.read_text().splitlines()] == ["torch_matmul"]
    word = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
    said = [x for x in err.splitlines() if "waited for the CPU" not in x]  # a busy CPU's notes
    assert said == [f"decodewall: {word}; 1 finished case(s) kept in {f}"], err
    assert "torch_matmul" in stdout and "Traceback" not in stdout + err  # the table
    started = [int(line.split()[1]) for line in pids.read_text().splitlines()]
    # SIGKILLed with their group before the CLI exited; on a busy machine the kernel may take a
    # moment to finish them (the hung kernel's child is nobody's to reap but init's)
    assert started and gone_within(started, 10), [pid for pid in started if alive(pid)]
    assert not list(tmp.glob("decodewall-*")), list(tmp.iterdir())  # worker logs included


def test_describe_exit():
    assert describe_exit(-signal.SIGSEGV).startswith("SIGSEGV (")
    assert "OOM" in describe_exit(-signal.SIGKILL)
    assert describe_exit(3) == "exit code 3"


def _worker_with_log(path):
    """A Worker that is only its log (nothing started): what the parent reads after a crash."""
    from bench.isolation import Worker
    w = Worker.__new__(Worker)
    w.log_path = path
    return w


def test_the_last_output_line_is_read_from_the_tail_of_the_log_only(tmp_path):
    """A kernel that wrote gigabytes before it died: the parent reads the log's last 64 KiB,
    not everything after the impl began, which would take as much of the parent's memory."""
    import tracemalloc
    log = tmp_path / "worker.log"
    with open(log, "wb") as f:
        f.write(b"before the impl\n")
        f.truncate(64 << 20)  # 64 MiB of the impl's output (sparse: no disk, no time)
        f.seek(0, os.SEEK_END)
        f.write(b"\nxxx\n\x1b[31mfinal words\x1b[0m before abort\x07\n\n")
    w = _worker_with_log(log)
    tracemalloc.start()
    try:
        last = w.last_output_line(len(b"before the impl\n"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert last == "final words before abort"  # no terminal control reaches a message
    assert peak < 4 << 20, f"{peak >> 20} MiB read for one line"
    assert _worker_with_log(tmp_path / "none.log").last_output_line(0) == ""


def _ctx(check_only=False):
    from backends import get_backend
    from bench.roofline import Roof
    from bench.runner import RunContext
    from bench.timing import BUDGETS
    import torch
    b = get_backend("cpu")
    return RunContext(backend=b, roof=Roof("cpu", 20.0, 20.0, 1 << 28,
                                           matmul_tflops={"float32": 0.1}),
                      chip=None, device_info=b.device_info(), budget=BUDGETS["quick"], seed=0,
                      run_id="test", command="pytest", git_commit=None,
                      versions={"torch": torch.__version__}, impl_filter=("torch_matmul",),
                      check_only=check_only)


def test_the_worker_tells_the_parent_each_stage_and_the_check_result():
    """The worker's side: the phase, then the check's result as soon as it is known, the
    warm-up's input sets, the start of timing, then the record (in that order, as Runner and
    bench.timing.measure reach them)."""
    import torch

    from bench.case import Case
    from bench.isolation import _Reporter
    from bench.results import ResultWriter
    from bench.runner import Runner
    from kernels.gemv import GemvShape

    class Pipe:
        def __init__(self):
            self.sent = []

        def send(self, msg):
            self.sent.append(msg)

    ctx = _ctx()
    pipe = Pipe()
    reporter = _Reporter(pipe)
    runner = Runner(ctx, ResultWriter(None, ctx.run_id), on_record=reporter.record,
                    on_start=reporter.phase, on_stage=reporter.stage)
    (rec,) = runner.run_case(Case("gemv_bf16", GemvShape(1, 64, 128), torch.float32))
    assert rec["status"] == "ok"
    kinds = [m[0] if m[0] != "stage" else f"stage {m[1]}" for m in pipe.sent]
    assert kinds == ["phase", "phase", "checked", "stage warm-up", "stage timing",
                     "stage after-timing", "record"]
    assert [m[1] for m in pipe.sent[:2]] == ["inputs", "torch_matmul"]
    assert pipe.sent[2][1:] == (rec["rel_err"], True)
    assert pipe.sent[3][2] == rec["n_sets"]  # the warm-up: making the sets, a call on each
    assert type(pipe.sent[-1][1]) is dict and pipe.sent[-1][1] == dict(rec)


class FakeWorker:
    """A worker that says `script` (messages, then TIMEOUT, or a death with exit code `rc`)."""
    script: list = []
    rc = None
    closed: list = []

    def __init__(self, *a, **k):
        self.msgs = list(self.script)

    def wait_ready(self, *a):
        pass

    def log_size(self):
        return 0

    def send(self, msg):
        pass

    def recv(self, timeout):
        from bench.isolation import TIMEOUT, WorkerDied
        if self.msgs:
            return self.msgs.pop(0)
        if self.rc is None:
            return TIMEOUT
        raise WorkerDied("exited")

    def wait(self, timeout=10):
        return self.rc

    def describe_end(self, rc):
        return describe_exit(rc)

    def last_output_line(self, since):
        return "last words"

    def close(self, now=False):
        FakeWorker.closed.append(now)


@pytest.mark.parametrize("stage, rc, expect", [
    ("check", None, "ran past --case-timeout 2 s in its check and was killed"),
    ("warm-up", None, "ran past --case-timeout 2 s in its warm-up (making its 4096 rotated "
                      "input sets and calls on each; the limit counts the warm-up with the check "
                      "and timing) and was killed; its check had passed (rel err 1e-07)"),
    ("timing", None, "ran past --case-timeout 2 s in timing and was killed; its check had "
                     "passed (rel err 1e-07)"),
    ("timing", -signal.SIGSEGV, "the worker died in timing: SIGSEGV (Segmentation fault); its "
                                "last output line: last words; its check had passed"),
    ("after-timing", -signal.SIGSEGV, "the worker died in the check after its timing: SIGSEGV "
                                      "(Segmentation fault); its last output line: last words; "
                                      "its check had passed"),
])
def test_a_timeout_or_crash_record_keeps_the_stage_and_the_check(monkeypatch, stage, rc, expect):
    """The parent's side: an impl that passed its check, then hung (or died) in its warm-up or
    timing keeps correct and rel_err, and its message and `phase` say where it was; the
    warm-up's message says what the warm-up does, since it counts against the limit too."""
    import torch

    import bench.isolation as iso
    from bench.case import Case
    from bench.results import ResultWriter
    from kernels.gemv import GemvShape

    script = [("phase", "inputs", 0), ("phase", "torch_matmul", 0)]
    if stage != "check":
        script += [("checked", 1e-7, True), ("stage", "warm-up", 4096)]
    if stage in ("timing", "after-timing"):
        script += [("stage", "timing", None)]
    if stage == "after-timing":
        script += [("stage", "after-timing", None)]
    monkeypatch.setattr(FakeWorker, "script", script)
    monkeypatch.setattr(FakeWorker, "rc", rc)
    monkeypatch.setattr(FakeWorker, "closed", [])
    monkeypatch.setattr(iso, "Worker", FakeWorker)
    runner = iso.IsolatedRunner(_ctx(check_only=True), ResultWriter(None, "test"),
                                case_timeout=2)
    try:
        (rec,) = runner.run_case(Case("gemv_bf16", GemvShape(1, 64, 128), torch.float32))
    finally:
        runner.close()
    assert rec["status"] == ("timeout" if rc is None else "crashed")
    assert rec["error"].startswith(expect), rec["error"]
    assert rec["phase"] == stage
    if stage == "check":
        assert rec["correct"] is None and rec["rel_err"] is None
    else:
        assert rec["correct"] is True and rec["rel_err"] == 1e-7
    assert FakeWorker.closed == [True]  # a lost case's worker is killed at once, not asked


class ClockedWorker(FakeWorker):
    """A FakeWorker on a fake clock: ("tick", s) in its script is time passing before the next
    message, which comes as TIMEOUT where that passes the deadline it was asked with."""
    clock = [0.0]

    def recv(self, timeout):
        from bench.isolation import TIMEOUT
        while self.msgs and self.msgs[0][0] == "tick":
            dt = self.msgs.pop(0)[1]
            self.clock[0] += dt
            timeout -= dt
        return TIMEOUT if timeout <= 0 else super().recv(timeout)


def clocked_runner(monkeypatch, script, case_timeout: float):
    """An IsolatedRunner (check only) whose workers are ClockedWorkers playing `script`, with
    the isolation module's clock theirs."""
    import types

    import bench.isolation as iso
    from bench.results import ResultWriter
    monkeypatch.setattr(ClockedWorker, "script", script)
    monkeypatch.setattr(ClockedWorker, "rc", None)
    monkeypatch.setattr(FakeWorker, "closed", [])
    monkeypatch.setattr(ClockedWorker, "clock", [0.0])
    monkeypatch.setattr(iso, "Worker", ClockedWorker)
    monkeypatch.setattr(iso, "time",
                        types.SimpleNamespace(monotonic=lambda: ClockedWorker.clock[0]))
    return iso.IsolatedRunner(_ctx(check_only=True), ResultWriter(None, "test"),
                              case_timeout=case_timeout)


def test_after_a_record_the_next_message_gets_its_own_limit(monkeypatch):
    """An impl that finished near --case-timeout: what the worker says next (the next impl,
    "done") is not held to what was left of that impl's limit, so a worker that hung nowhere is
    not killed."""
    import torch

    from bench.case import Case
    from bench.runner import base_record
    from kernels import OPS
    from kernels.gemv import GemvShape

    case = Case("gemv_bf16", GemvShape(1, 64, 128), torch.float32)
    rec = base_record(_ctx(), case, OPS["gemv_bf16"].impls["torch_matmul"])
    rec.update(status="ok", correct=True, rel_err=1e-7)
    runner = clocked_runner(monkeypatch, [
        ("phase", "inputs", 0), ("phase", "torch_matmul", 0), ("tick", 1.5), ("record", rec),
        ("tick", 1.0), ("done",)], case_timeout=2)
    try:
        (got,) = runner.run_case(case)
        assert got["status"] == "ok"
        assert FakeWorker.closed == []  # not killed: kept for the next case
    finally:
        runner.close()


def test_a_message_waiting_at_the_deadline_is_taken():
    """The record of an impl that finished in time is read even when the parent gets to it at
    or past the deadline."""
    from multiprocessing.connection import Connection

    from bench.isolation import TIMEOUT, Worker

    r, w = os.pipe()
    tx, rx = Connection(w, readable=False), Connection(r, writable=False)
    worker = Worker.__new__(Worker)
    worker.rx, worker.proc = rx, subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        tx.send(("done",))
        assert worker.recv(0) == ("done",)
        assert worker.recv(-1) is TIMEOUT  # nothing waits: at once, no block
    finally:
        worker.proc.wait()
        tx.close()
        rx.close()


CLOSE_PIPES_AND_RUN_ON = """
import os, time

def main():
    for fd in map(int, __import__("sys").argv[1:]):
        os.close(fd)
    time.sleep(600)
"""


def test_a_worker_that_closes_its_pipe_and_runs_on_is_killed_and_says_so(tmp_path, monkeypatch):
    """An impl that closes the worker's pipes and runs on is killed by the run after a grace
    period; its record says so rather than blame the OOM killer for a SIGKILL the run sent."""
    from bench.isolation import Worker, WorkerDied
    (tmp_path / "closer.py").write_text(CLOSE_PIPES_AND_RUN_ON)
    monkeypatch.syspath_prepend(str(tmp_path))
    w = Worker("cpu", [], tmp_path, entry="closer:main", wait=False)
    try:
        with pytest.raises(WorkerDied):
            w.recv(60)
        rc = w.wait(0.5)
        words = w.describe_end(rc)
    finally:
        w.kill()
    assert rc == -signal.SIGKILL and w.killed
    assert "did not exit" in words and "decodewall killed it" in words and "OOM" not in words


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_still_importing_dies_with_its_parent(tmp_path):
    """A worker or rank imports torch for seconds before its entry runs; a parent killed then
    (SIGKILL: no cleanup of its own) must not leave it running (boot.py asks the kernel for
    that on its first line)."""
    importing = tmp_path / "importing"  # the entry module's import has begun
    (tmp_path / "slow_entry.py").write_text(
        f"import time\nopen({str(importing)!r}, 'w').close()\ntime.sleep(60)\n\n"
        "def main():\n    pass\n")
    pidfile = tmp_path / "child.pid"
    parent = (
        "import json, os, subprocess, sys, time\n"
        f"env = dict(os.environ, DECODEWALL_WORKER_PATH=json.dumps([{str(tmp_path)!r}] + sys.path))\n"
        f"p = subprocess.Popen([sys.executable, {str(REPO / 'bench' / 'boot.py')!r}, 'slow_entry:main'], env=env)\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", parent])
    try:
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(pidfile.read_text())
        # Kill the parent once the child is in its entry module's import (not after a fixed
        # sleep: on a busy machine the child may not even have reached boot.py's first line
        # 0.5 s after it was started, and a child orphaned before it asked for PR_SET_PDEATHSIG
        # is a different case: boot.py's getppid check covers it, for workers told their parent)
        deadline = time.monotonic() + 60
        while not importing.exists() and time.monotonic() < deadline:
            assert proc.poll() is None, "the parent ended early"
            time.sleep(0.05)
        assert importing.exists(), "the child never reached its entry module"
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            if open(f"/proc/{child}/stat").read().split(")")[-1].split()[0] == "Z":
                break  # dead, not yet reaped
            time.sleep(0.1)
        else:
            os.kill(child, signal.SIGKILL)
            pytest.fail("the worker outlived its parent")
    finally:
        proc.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_whose_parent_died_before_its_first_line_exits_at_once(tmp_path):
    """PR_SET_PDEATHSIG does not fire for a parent already gone: a worker that finds another
    parent than DECODEWALL_PARENT (it was reparented) exits 1 before importing its entry."""
    (tmp_path / "entry.py").write_text(
        "import pathlib\n\ndef main():\n    pathlib.Path('ran').write_text('1')\n")
    env = dict(os.environ, DECODEWALL_WORKER_PATH=json.dumps([str(tmp_path)] + sys.path))
    cmd = [sys.executable, str(REPO / "bench" / "boot.py"), "entry:main"]
    gone = subprocess.run(cmd, env=dict(env, DECODEWALL_PARENT=str(2**22 + 1)), cwd=tmp_path,
                          timeout=60)
    assert gone.returncode == 1 and not (tmp_path / "ran").exists()
    alive = subprocess.run(cmd, env=dict(env, DECODEWALL_PARENT=str(os.getpid())), cwd=tmp_path,
                           timeout=60)
    assert alive.returncode == 0 and (tmp_path / "ran").exists()


FORKY = '''
import os
from kernels import register_impl

@register_impl("copy", "forky", backends=["cpu"])
def forky(src, out=None):
    if not os.environ.get("FORKED"):
        os.environ["FORKED"] = "1"
        os.fork()  # both processes go on, back into the harness
    return out.copy_(src) if out is not None else src.clone()
'''


def test_an_impl_that_forks_gets_one_record_and_the_next_case_runs(tmp_path):
    """A child an impl forked returns into the worker's code: it ends at its first report
    instead of sending a second record and stealing the next case's messages."""
    plugin = tmp_path / "forky.py"
    plugin.write_text(FORKY)
    p = run_cli("run", "--op", "copy", "--shape", "N=1024", "--shape", "N=2048", "--plugin",
                str(plugin), "--budget", "quick", "--no-save", "--json", "--no-progress")
    assert p.returncode == 0, p.stderr[-2000:]
    recs = [json.loads(x) for x in p.stdout.splitlines()]
    seen = sorted((r["impl"], r["shape"]["N"], r["status"]) for r in recs)
    assert seen == sorted((i, n, "ok") for i in ("forky", "torch_copy") for n in (1024, 2048)), seen


def test_inputs_cannot_name_an_impl(tmp_path, capsys):
    """The worker reports building a case's inputs as the phase "inputs": an impl of that name
    would have its crash taken for the inputs'."""
    from bench.cli import main
    plugin = tmp_path / "named.py"
    plugin.write_text("from kernels import register_impl\n\n"
                      "@register_impl('copy', 'inputs', backends=['cpu'])\n"
                      "def f(src):\n    return src.clone()\n")
    assert main(["run", "--op", "copy", "--shape", "N=1024", "--plugin", str(plugin),
                 "--no-save"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'inputs' cannot name an impl" in err[0], err


def test_a_worker_holds_no_descriptor_of_its_log_in_the_parent(tmp_path):
    """Held open here, a worker's log keeps its disk space after it is deleted, and a run of
    many crashing cases runs out of descriptors."""
    from bench.isolation import Worker
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc/self/fd here")
    w = Worker("cpu", [], tmp_path, wait=False)
    try:
        held = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                held.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:  # listdir's own descriptor, closed by now
                pass
        assert str(w.log_path) not in held, held
    finally:
        w.close(now=True)


def test_a_closed_worker_leaves_no_descriptor_and_no_log(tmp_path):
    """Every crash or timeout replaces the worker: the one dropped leaves no pipe open in the
    parent and no log behind, or a run of many crashing cases runs out of descriptors and fills
    its temporary folder."""
    from bench.isolation import Worker
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc/self/fd here")
    before = set(os.listdir("/proc/self/fd"))
    w = Worker("cpu", [], tmp_path, wait=False)
    w.close(now=True)
    assert set(os.listdir("/proc/self/fd")) <= before
    assert not w.log_path.exists()


def test_a_record_sent_just_before_the_worker_exits_is_taken():
    """A worker whose impl lost the device context sends the record and exits at once: a
    message already in the pipe when the parent finds the worker exited is still read, not
    taken for a death."""
    from multiprocessing.connection import Connection

    from bench.isolation import Worker

    r, w = os.pipe()
    tx, rx = Connection(w, readable=False), Connection(r, writable=False)

    class SentThenExited:  # between the parent's look at the pipe and its look at the process
        def poll(self):
            if not tx.closed:
                tx.send(("record", {"impl": "torch_matmul"}))
                tx.close()
            return 4

    worker = Worker.__new__(Worker)
    worker.rx, worker.proc = rx, SentThenExited()
    try:
        assert worker.recv(10) == ("record", {"impl": "torch_matmul"})
    finally:
        rx.close()


FORK_THEN_EXIT = """
import os, time

def main():
    if os.fork() == 0:  # a helper that holds the worker's pipes and outlives it
        time.sleep(600)
        os._exit(0)
    os._exit(3)
"""


def test_a_worker_that_exits_while_its_child_holds_the_pipe_is_seen_dead(tmp_path, monkeypatch):
    """No end of file comes while a process the worker forked holds its pipe: the parent sees
    the worker's own exit, so the impl is `crashed` with its exit code at once, not a `timeout`
    after --case-timeout."""
    from bench.isolation import TIMEOUT, Worker, WorkerDied
    (tmp_path / "forker.py").write_text(FORK_THEN_EXIT)
    monkeypatch.syspath_prepend(str(tmp_path))
    w = Worker("cpu", [], tmp_path, entry="forker:main", wait=False)
    try:
        try:
            got = w.recv(60)
        except WorkerDied:
            got = "died"
        assert got == "died", "TIMEOUT" if got is TIMEOUT else got
        assert w.wait() == 3
    finally:
        w.kill()  # the helper too: it is in the worker's process group


def test_a_lost_device_context_gives_the_impls_after_it_a_fresh_worker(tmp_path):
    """The worker whose context is lost ends after the record: the case's impls after the
    faulting one run in a new worker, each with its own record, not "the worker sent no
    record"."""
    plugin = tmp_path / "poison_first.py"
    plugin.write_text(
        "import torch\n"
        "from backends import get_backend\n"
        "from kernels import register_impl\n"
        "get_backend('cpu').context_lost = lambda: 'illegal memory access (fake)'\n\n"
        "@register_impl('gemv_bf16', 'a_poison', backends=['cpu'])\n"
        "def a_poison(x, w):\n"
        "    raise RuntimeError('CUDA error: an illegal memory access was encountered')\n\n"
        "@register_impl('gemv_bf16', 'b_after', backends=['cpu'])\n"
        "def b_after(x, w, out=None):\n"
        "    return torch.matmul(x, w.T, out=out)\n")
    p = run_cli("run", *GEMV, "--impl", "a_poison", "--impl", "b_after", "--plugin",
                str(plugin), "--budget", "quick", "--no-save", "--json", "--no-progress")
    recs = {r["impl"]: r for r in map(json.loads, p.stdout.splitlines())}
    assert recs["a_poison"]["status"] == "crashed", p.stderr[-2000:]
    assert recs["b_after"]["status"] == "ok", recs["b_after"]["error"]


def test_a_forked_child_ends_at_its_first_report_and_sends_nothing(monkeypatch):
    """A process an impl forked returns into the worker's code with the worker's pipe: each
    report it would make ends it first, so it can neither send a second record nor go on to
    read the next case's messages."""
    import types

    import bench.isolation as iso
    sent = []
    rep = iso._Reporter(types.SimpleNamespace(send=sent.append))
    rep.pid = os.getpid() + 1  # the reporter was made in the parent of this process

    def exits(code):
        raise SystemExit(code)
    monkeypatch.setattr(iso.os, "_exit", exits)
    for report in (lambda: rep.phase("torch_matmul"), lambda: rep.stage("timing", None),
                   lambda: rep.stage("checked", (0.0, True)), lambda: rep.record({})):
        with pytest.raises(SystemExit):
            report()
    assert sent == []


TEMPORARY = '''
import ctypes, resource, torch
from kernels import register_impl

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                              "usmblks", "fsmblks", "uordblks", "fordblks",
                                              "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
calls = [0]
quiet = [False]  # a call took its temporary without faults: the freed block is reused
late = [0]  # calls after that whose temporary faulted in afresh

@register_impl("gemv_bf16", "temporary", backends=["cpu"], dtypes=["float32"])
def temporary(x, w):
    """A 64 MiB temporary a call, as a naive dequantize-then-matmul makes."""
    calls[0] += 1
    mapped, faults = libc.mallinfo2().hblks, resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(16 * 2**20)
    t[::1024].fill_(1.0)  # a float a 4 KiB page: every page touched
    mapped = libc.mallinfo2().hblks - mapped
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    late[0] += quiet[0] and faults > 1000  # the harness allocates between warm-up calls
    quiet[0] = quiet[0] or faults < 1000
    if mapped or late[0] > 2:
        raise RuntimeError(f"call {calls[0]}: the temporary was mapped afresh ({mapped} blocks "
                           f"mapped, {faults} page faults; {late[0]} such calls after one "
                           "reused it)")
    return x @ w.T
'''


@pytest.mark.skipif(not hasattr(__import__("ctypes").CDLL(None), "mallinfo2"),
                    reason="glibc 2.33 or later only")
def test_a_temporary_each_call_reuses_freed_memory_in_the_worker(tmp_path):
    """glibc maps each block of 32 MiB or more afresh and the kernel zeroes its pages on first
    touch; whether a smaller one is fresh depends on the cases before. The worker's malloc
    keeps what it frees, so an impl's per-call temporary costs the same in every run."""
    plugin = tmp_path / "temporary.py"
    plugin.write_text(TEMPORARY)
    p = run_cli("run", *GEMV, "--plugin", str(plugin), "--impl", "temporary", "--budget",
                "quick", "--no-save", "--json", "--no-progress")
    assert p.returncode == 0, p.stderr[-2000:]
    (rec,) = [json.loads(x) for x in p.stdout.splitlines()]
    assert rec["status"] == "ok", rec["error"]


HELD = '''
import os, torch
from kernels import register_impl

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

held = {"calls": 0}

@register_impl("gemv_bf16", "a_big", backends=["cpu"], dtypes=["float32"])
def a_big(x, w):
    """A 256 MiB temporary on its first calls (the warm-up makes thousands at this shape):
    freed, and kept by the worker's malloc for the next call."""
    held["calls"] += 1
    if held["calls"] <= 2:
        t = torch.ones(64 * 2**20)
        del t
        held["rss"] = rss()
    return x @ w.T

@register_impl("gemv_bf16", "b_after", backends=["cpu"], dtypes=["float32"])
def b_after(x, w):
    if "rss" in held and rss() > held.pop("rss") - 128 * 2**20:
        raise RuntimeError("the 256 MiB a_big freed is still held")
    return x @ w.T
'''


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc only")
def test_an_impl_starts_without_the_memory_the_impl_before_it_kept(tmp_path):
    """The worker's malloc keeps freed memory for an impl's next call, and hands it back before
    the next impl: a case's peak is one impl's temporaries, not every impl's so far."""
    plugin = tmp_path / "held.py"
    plugin.write_text(HELD)
    p = run_cli("run", *GEMV, "--plugin", str(plugin), "--impl", "a_big", "--impl", "b_after",
                "--budget", "quick", "--no-save", "--json", "--no-progress")
    assert p.returncode == 0, p.stderr[-2000:]
    recs = {r["impl"]: r for r in map(json.loads, p.stdout.splitlines())}
    assert [recs[i]["status"] for i in ("a_big", "b_after")] == ["ok", "ok"], \
        recs["b_after"]["error"]


def test_freed_memory_is_kept_for_reuse_until_released():
    """keep_freed_memory: 256 MiB freed stays this process's (its next temporary reuses it);
    release_freed_memory hands it back at a case's end."""
    code = '''if True:
        import os, sys
        from bench.isolation import keep_freed_memory, release_freed_memory
        import torch
        PAGE = os.sysconf("SC_PAGE_SIZE")  # statm counts pages: 64 KiB on some Arm kernels
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * PAGE / 2**20
        if not keep_freed_memory():
            sys.exit(77)
        base = rss()
        t = torch.ones(64 * 2**20)
        del t
        kept = rss() - base
        release_freed_memory()
        print(f"{kept:.0f} {rss() - base:.0f}")
    '''
    import platform
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the C library is not glibc: malloc is left as it is")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    kept, after = map(float, p.stdout.split())
    assert kept > 200 and after < 50, (kept, after)
