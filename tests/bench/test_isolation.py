"""Impls that crash, hang or break at import, through the real `decodewall run`: each bad case is
recorded (crashed / timeout) and the run goes on; nothing is left running."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bench.isolation import describe_exit
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
    assert recs["a_segfault"]["status"] == "crashed"
    assert "SIGSEGV" in recs["a_segfault"]["error"]
    assert "reading address 0" in recs["a_segfault"]["error"]  # its last stderr line
    assert recs["b_hang"]["status"] == "timeout" and "--case-timeout 4" in recs["b_hang"]["error"]
    assert recs["c_abort"]["status"] == "crashed" and "SIGABRT" in recs["c_abort"]["error"]
    assert recs["d_exit"]["status"] == "crashed" and "exit code 7" in recs["d_exit"]["error"]
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


def test_ctrl_c_during_a_hang_keeps_finished_cases_and_kills_the_worker(tmp_path, bad_plugin):
    plugin, pids = bad_plugin
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "bench.cli", "run", *GEMV, "--plugin", str(plugin), "--impl",
           "torch_matmul", "--impl", "b_hang", "--budget", "quick", "--out", str(out), "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(REPO), TRITON_INTERPRET="1", PYTHONFAULTHANDLER="1")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=default_sigint)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (pids.exists() and "child" in pids.read_text()):
            time.sleep(0.2)
        assert pids.exists(), "the hanging impl never started"
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # say where it was stuck: faulthandler's dump on SIGABRT
            proc.send_signal(signal.SIGABRT)
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            pytest.fail(f"no exit 60 s after SIGINT; its stderr ends:\n{err[-4000:]}")
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    (f,) = out.iterdir()
    assert [json.loads(x)["impl"] for x in f.read_text().splitlines()] == ["torch_matmul"]
    started = [int(line.split()[1]) for line in pids.read_text().splitlines()]
    time.sleep(0.5)
    assert started and not any(alive(pid) for pid in started)


def test_describe_exit():
    assert describe_exit(-signal.SIGSEGV).startswith("SIGSEGV (")
    assert "OOM" in describe_exit(-signal.SIGKILL)
    assert describe_exit(3) == "exit code 3"
