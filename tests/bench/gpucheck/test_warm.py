"""The device check's background compiles (bench/gpucheck/warm.py): the suite's cases shared among
processes, each Triton impl called once with the autotuner compiling every config it keeps and
launching none, and what the check reports of it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench.gpucheck import warm
from bench.gpucheck.check import warm_report
from bench.gpucheck.summary import warm_line
from kernels.triton_util import HAS_TRITON

REPO = Path(__file__).resolve().parents[3]


def test_shares_give_each_case_once_to_the_least_loaded_process_in_plan_order():
    assert warm.shares([3, 3, 1, 0, 2, 1], 2) == [[0, 2, 5], [1, 4]]
    got = warm.shares([1] * 7, 3)
    assert got == [[0, 3, 6], [1, 4], [2, 5]]  # every process starts on one of the first cases
    assert sorted(i for s in warm.shares([2, 0, 1, 4, 1], 4) for i in s) == [0, 2, 3, 4]


class _Fn:
    """A stand-in @triton.jit function: records what warmup compiles; a launch is an error."""
    arg_names = ["x", "n"]

    def __init__(self) -> None:
        self.warmed: list[dict] = []

    @staticmethod
    def fn(x, n):  # the Python function Autotuner looks for at the bottom of .fn
        pass

    def warmup(self, *args, grid, **kwargs):
        self.warmed.append({"grid": grid, "args": args, **kwargs})
        return object()

    def run(self, *args, **kwargs):
        raise AssertionError("compile-only mode launched a kernel")


def test_compile_only_compiles_every_config_the_prune_keeps_and_launches_nothing(monkeypatch):
    triton = pytest.importorskip("triton")
    from triton.runtime.autotuner import Autotuner
    monkeypatch.setattr(Autotuner, "run", Autotuner.run)  # compile_only's patch is undone after
    monkeypatch.setattr(warm, "COMPILED", [0])
    seen = {}

    def prune(configs, nargs, **kw):
        seen.update(nargs=dict(nargs), kw=sorted(kw))
        return configs[:2]

    fn = _Fn()
    tuned = triton.autotune(configs=[triton.Config({"B": b}, num_warps=w)
                                     for b, w in ((16, 1), (32, 2), (64, 4))],
                            key=["n"], prune_configs_by={"early_config_prune": prune})(fn)
    warm.compile_only()
    assert tuned[(4,)](torch.zeros(4), 4) is None  # as a launcher calls it: kernel[grid](...)
    assert [(w["B"], w["num_warps"]) for w in fn.warmed] == [(16, 1), (32, 2)]
    assert all(w["grid"] == (4,) and w["args"][1] == 4 for w in fn.warmed)
    assert seen["nargs"]["n"] == 4 and "warmup" not in seen["kw"]
    assert warm.COMPILED == [2]
    assert not tuned.cache and getattr(tuned, "configs_timings", None) is None  # nothing timed


def _impl(name, fn, prepare=None, out_arg=True):
    return SimpleNamespace(name=name, fn=fn, prepare=prepare, out_arg=out_arg)


def test_warm_case_calls_each_impl_once_and_says_what_happened():
    from backends import get_backend
    from bench.case import Case
    from kernels import OPS
    op = OPS["gemv_bf16"]
    case = Case("gemv_bf16", op.shape(M=1, N=64, K=128), torch.float32)
    calls = []

    def good(x, w, out):
        calls.append((x.shape, w.shape, out.shape, out.dtype))
        out.copy_(x @ w.T)

    def unprepared(x, w):
        raise NotImplementedError("this peer is not installed\nsecond line")

    def broken(x, w, out):
        raise RuntimeError("out of resources")

    got = dict(warm.warm_case(get_backend("cpu"), case, [
        _impl("good", good), _impl("peer", good, prepare=unprepared),
        _impl("broken", broken)]))
    assert calls == [((1, 128), (64, 128), (1, 64), torch.float32)]
    assert got["peer"] == "skipped: this peer is not installed"
    assert got["broken"] == "failed: RuntimeError: out of resources"
    assert got["good"].startswith(("ran under the interpreter in ", "0 configs compiled in "))


@pytest.mark.skipif(not HAS_TRITON, reason="no Triton")
def test_warm_runs_the_dry_plans_triton_impls_under_the_interpreter():
    """The dry run's process: the CPU plan, its Triton impls called once each (a tiny attention
    case is quick under the interpreter; the GEMVs are not, so one case is taken)."""
    from backends import get_backend
    b = get_backend("cpu")
    cases = [c for c in warm.plan(b, "gpu-check") if c.op == "paged_attention"]
    impls = warm.triton_impls(cases[0], "cpu")
    # and FlashInfer, whose first call builds its kernel (skipped here: no FlashInfer, no CUDA)
    assert {i.name for i in impls} >= {"triton_onepass", "triton_splitkv", "triton",
                                       "flashinfer_decode"}
    got = warm.warm_case(b, cases[0], impls)
    assert [n for n, _ in got] == [i.name for i in impls]
    assert all(w.startswith("ran under the interpreter in ") for n, w in got
               if n not in warm.JIT_PEERS), got
    assert dict(got)["flashinfer_decode"].startswith(("skipped: ", "failed: "))


def test_bad_shard_is_one_line_and_exit_2():
    r = subprocess.run([sys.executable, "-m", "bench.gpucheck.warm", "--shard", "3/2"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "--shard" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_check_reads_what_the_processes_said():
    texts = ["warm 0/2: gemv_w4 M=1 bfloat16 triton_w4: 21 configs compiled in 6.6 s\n"
             "warm 0/2: gemv_w4 M=1 bfloat16 gemlite_w4: skipped: gemlite is not installed\n"
             "warm 0/2: paged_attention B=1 bfloat16 triton: failed: OutOfResources: shared\n"
             "warm 0/2 done: 1 of 3 pairs, 21 configs, 9.0 s\n",
             "warm 1/2: gemv_w8 M=1 bfloat16 triton_w8: 18 configs compiled in 4.3 s\n"]
    w = warm_report(texts, cut=1, seconds=12.3)
    assert w == {"processes": 2, "finished": 1, "stopped": 1, "seconds": 12.3, "done": 2,
                 "skipped": 1, "failed": 1, "configs": 39, "ended": [], "crashed": 0,
                 "failures": ["paged_attention B=1 bfloat16 triton: failed: OutOfResources: shared"]}
    line = warm_line(w)
    assert "(warm)  warn" in line and "2 processes: 2 (case, impl) pairs compiled ahead " \
        "(39 configs)" in line and "1 skipped" in line and "1 stopped" in line
    assert "OutOfResources" in line
    ok = warm_line({**w, "stopped": 0, "failed": 0, "skipped": 0, "processes": 1, "done": 1})
    assert "(warm)  ok" in ok and "1 process: 1 (case, impl) pair compiled" in ok


def test_a_warm_process_that_crashed_is_a_warning_naming_its_error(tmp_path):
    """warm.py's own GPU path (Triton's tuner in compile-only mode, the device's inputs) runs in
    no dry run: a process that ended without its done line is said with its last line, not
    summed into an ok line of 0 pairs compiled."""
    import subprocess as sp
    import sys
    import time

    from tests.bench.gpucheck.test_device_check import _check
    c = _check(tmp_path, no_warm=False)
    try:
        procs = []
        for i, body in enumerate(["print('warm 0/2 done: 0 of 0 pairs, 0 configs, 0.1 s')",
                                  "raise SystemExit('AttributeError: no Autotuner.warmup')"]):
            out = tmp_path / f"warm{i}.out"
            with open(out, "w") as f:
                procs.append((sp.Popen([sys.executable, "-c", body], stdout=f,
                                       stderr=sp.STDOUT, start_new_session=True), out))
        for proc, _ in procs:
            proc.wait(timeout=30)
        c.warm_procs, c.warm_t0 = procs, time.monotonic()
        c.finish_warm()
    finally:
        c.log.close()
    w = c.warm
    assert (w["finished"], w["stopped"], w["crashed"]) == (1, 0, 1)
    assert w["ended"] == ["exit code 1: AttributeError: no Autotuner.warmup"]
    line = warm_line(w)
    assert "(warm)  warn" in line and "1 ended without finishing" in line
    assert "no Autotuner.warmup" in line


def test_a_warm_process_killed_by_a_signal_is_said_so_not_as_an_exit_status(tmp_path):
    """A compile process that a signal ended (a segfault in a compiler, the OOM killer) has no
    exit status: the warning names the signal, not Popen's negative return code."""
    import subprocess as sp
    import sys
    import time

    from tests.bench.gpucheck.test_device_check import _check
    c = _check(tmp_path, no_warm=False)
    body = ("import os, signal\n"
            "print('warm 0/1: gemv_w8 M=1 bfloat16 triton_w8: 2 configs compiled in 1.0 s',"
            " flush=True)\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    out = tmp_path / "warm0.out"
    try:
        with open(out, "w") as f:
            proc = sp.Popen([sys.executable, "-c", body], stdout=f, stderr=sp.STDOUT,
                            start_new_session=True)
        proc.wait(timeout=30)
        c.warm_procs, c.warm_t0 = [(proc, out)], time.monotonic()
        c.finish_warm()
    finally:
        c.log.close()
    (ended,) = c.warm["ended"]
    assert ended.startswith("SIGSEGV (") and ": warm 0/1: gemv_w8" in ended, ended
    assert "exit -" not in warm_line(c.warm)


# The GPU path without a GPU: Triton's driver replaced by one that reports an sm_90 device and
# cannot launch, so a JIT warmup compiles for sm_90 (ptxas included) and a launch would fail.
_SM90_WARM = r'''
import json, os, sys
import torch
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver

class NoLaunchDriver:
    def get_current_device(self): return 0
    def get_current_stream(self, device=None): return 0
    def get_current_target(self): return GPUTarget("cuda", 90, 32)

driver.set_active(NoLaunchDriver())
from backends import get_backend
from bench.case import Case
from bench.gpucheck import warm
from kernels import OPS
import kernels.attention.triton_paged as tp
warm.compile_only()
op = OPS["paged_attention"]
case = Case("paged_attention", op.shape(B=2, Hq=8, Hkv=2, D=64, context=64), torch.float16)
impls = [i for i in warm.triton_impls(case, "cuda") if i.name == "triton_onepass"]
got = warm.warm_case(get_backend("cpu"), case, impls)
s = case.shape
plan = tp.launch_plan(s.B, s.Hq, s.Hkv, s.D, s.block_size, s.max_blocks, False, False, 1, False)
keep = tp.configs_for(torch.float16, torch.float16, s.D, plan["const"]["G_PAD"])
files = [f for _, _, fs in os.walk(os.environ["TRITON_CACHE_DIR"]) for f in fs if f.endswith(".cubin")]
print(json.dumps({"got": got, "configs": len(keep), "cubins": len(files)}))
'''


@pytest.mark.slow  # sm_90 compiles
def test_compile_only_compiles_a_real_launchers_configs_for_sm90_into_the_cache(tmp_path):
    from tests.bench.gpucheck.test_sass import _compile_env, need_sm90_tools
    need_sm90_tools()
    script = tmp_path / "sm90_warm.py"
    script.write_text(_SM90_WARM)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=REPO,
                       env=_compile_env(TRITON_CACHE_DIR=str(tmp_path / "cache"),
                                        DECODEWALL_AUTOTUNE="1"),  # the prune runs only when tuning
                       timeout=600)
    assert r.returncode == 0, r.stderr[-800:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    (name, what), = out["got"]
    assert what.startswith(f"{out['configs']} configs compiled in "), what
    assert out["cubins"] == out["configs"] > 1  # each kept config's sm_90 binary, on disk


def test_main_compiles_only_its_share_of_the_suite_asked_for(monkeypatch, capsys):
    """main on the GPU path: the autotuner is put in compile-only mode before any kernel is
    called (else the first call would tune, timing every config beside the tests), the cases are
    those of --suite, and shard I/N takes share I of them. On the CPU it asks for the
    interpreter before kernels/ is imported and compiles nothing. (Backend, plan and calls are
    stand-ins: no GPU here.)"""
    import os

    import backends
    from kernels import triton_util
    monkeypatch.setattr(warm.os, "nice", lambda n: 0)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(triton_util, "HAS_TRITON", True)
    monkeypatch.setattr(warm, "COMPILED", [0])
    calls = []
    monkeypatch.setattr(warm, "compile_only", lambda: calls.append("compile_only"))
    fake = SimpleNamespace(available=lambda: (True, ""))
    monkeypatch.setattr(backends, "get_backend", lambda name: fake)
    cases = [SimpleNamespace(name=f"case{i}") for i in range(4)]

    def plan(backend, suite):
        calls.append(("plan", suite))
        return cases

    monkeypatch.setattr(warm, "plan", plan)
    monkeypatch.setattr(warm, "triton_impls", lambda case, backend: [SimpleNamespace(name="k")])
    monkeypatch.setattr(warm, "label", lambda case: case.name)
    monkeypatch.setattr(warm, "warm_case", lambda backend, case, impls: (
        calls.append(("warm", case.name)), [("k", "3 configs compiled in 0.1 s")])[1])
    monkeypatch.setattr(triton_util, "INTERPRET", False)
    assert warm.main(["--shard", "1/2", "--suite", "attention"]) == 0
    assert calls == ["compile_only", ("plan", "attention"), ("warm", "case1"), ("warm", "case3")]
    out = capsys.readouterr().out
    assert "warm 1/2: case1 k: 3 configs compiled" in out and "warm 1/2 done: 2 of 2 pairs" in out
    calls.clear()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(triton_util, "INTERPRET", True)
    assert warm.main(["--shard", "0/2", "--backend", "cpu"]) == 0
    assert os.environ.get("TRITON_INTERPRET") == "1"
    assert calls == [("plan", "gpu-check"), ("warm", "case0"), ("warm", "case2")]
