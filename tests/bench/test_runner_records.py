"""Which records a case gets and what ends a worker, in-process on the CPU backend: impls written
for another backend stay out unless named, a case whose inputs cannot be built still gets a record
for each impl, a lost device context is raised after its record, and a warm set within
WARM_CACHE_FACTOR x the LLC is not judged against the DRAM roof."""
import json
import sys

import pytest
import torch

import backends.cpu as cpu_backend
import bench.runner as runner_mod
from bench.case import Case
from bench.roofline import IN_CACHE
from bench.runner import WARM_CACHE_FACTOR, ContextLost
from kernels import OPS, register_impl
from kernels.gemv import GemvShape
from kernels.triton_util import HAS_TRITON
from tests.bench.test_runner_numbers import ScriptedCPU, runner, slightly_off  # noqa: F401

SHAPE = GemvShape(1, 64, 256)


@pytest.fixture(autouse=True)
def _own_impls(monkeypatch):
    """The impls a test registers go with it: each op's registry is a copy for the test."""
    for op in OPS.values():
        monkeypatch.setattr(op, "impls", dict(op.impls))


@pytest.mark.skipif(not HAS_TRITON, reason="no Triton")
def test_impls_for_another_backend_get_no_record_unless_named(tmp_path):
    """A CPU run of every impl lists the CPU's; a CUDA-only impl named on the command line is
    recorded skipped, saying why."""
    r = runner(tmp_path, [])
    r.ctx.impl_filter, r.ctx.check_only = None, True
    recs = r.run_case(Case("gemv_bf16", SHAPE, torch.float32))
    cpu_impls = [n for n, i in OPS["gemv_bf16"].impls.items() if "cpu" in i.backends]
    assert [x["impl"] for x in recs] == cpu_impls and "triton_gemv" not in cpu_impls
    r.ctx.impl_filter = ("triton_gemv",)
    (rec,) = r.run_case(Case("gemv_bf16", SHAPE, torch.float32))
    r.writer.close()
    assert rec["status"] == "skipped" and "cuda" in rec["error"]


def test_inputs_that_cannot_be_built_give_each_impl_an_error_record(tmp_path, monkeypatch):
    def out_of_memory(*a, **k):
        raise RuntimeError("not enough memory: you tried to allocate 1 TB")
    monkeypatch.setattr(runner_mod, "make_inputs", out_of_memory)
    r = runner(tmp_path, ["torch_matmul"])
    r.ctx.impl_filter = None
    recs = r.run_case(Case("gemv_bf16", SHAPE, torch.float32))
    r.writer.close()
    assert len(recs) >= 1 and len(recs) == r.writer.count
    for rec in recs:
        assert rec["status"] == "error" and rec["error"].startswith("building inputs: RuntimeError")


class _Poisoned(ScriptedCPU):
    def context_lost(self):
        return "illegal memory access (fake)"


@pytest.fixture
def faulting():
    @register_impl("gemv_bf16", "t_fault", backends=["cpu"], dtypes=["float32"])
    def fault(x, w):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    @register_impl("gemv_bf16", "t_next", backends=["cpu"], dtypes=["float32"])
    def after(x, w, out=None):
        return torch.matmul(x, w.T, out=out)
    yield


def test_a_lost_context_is_recorded_crashed_then_raised(tmp_path, faulting):
    """Every later call on a poisoned CUDA context fails: the runner writes the impl's record and
    raises ContextLost, so its worker is replaced before anything else runs there."""
    r = runner(tmp_path, ["t_fault", "t_next"], backend=_Poisoned())
    with pytest.raises(ContextLost, match="illegal memory access"):
        r.run_case(Case("gemv_bf16", SHAPE, torch.float32))
    r.writer.close()
    assert r.writer.count == 1  # t_fault's record; t_next was not run on that context
    text = (tmp_path / "numbers.jsonl").read_text()
    assert '"status":"crashed"' in text and "context is lost" in text
    rec = json.loads(text)
    assert rec["phase"] == "check" and " in its check; the device context is lost" in rec["error"]


def _lost_record(r, tmp_path) -> dict:
    """The one record of a case whose impl loses the device context (ContextLost raised)."""
    with pytest.raises(ContextLost):
        r.run_case(Case("gemv_bf16", SHAPE, torch.float32))
    r.writer.close()
    return json.loads((tmp_path / "numbers.jsonl").read_text())


def test_a_lost_context_names_the_phase_it_was_lost_in(tmp_path):
    """A fault after the check (its warm-up's calls) is recorded with that phase, as the parent
    records a worker that dies there."""
    calls = {"n": 0}

    @register_impl("gemv_bf16", "t_late_fault", backends=["cpu"], dtypes=["float32"])
    def late(x, w):
        calls["n"] += 1
        if calls["n"] > 1:  # the check's call passes; the warm-up's first faults
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return torch.matmul(x, w.T)
    rec = _lost_record(runner(tmp_path, ["t_late_fault"], backend=_Poisoned()), tmp_path)
    assert rec["status"] == "crashed" and rec["phase"] == "warm-up", rec
    assert " in its warm-up; the device context is lost" in rec["error"]


def test_a_fault_after_timing_is_not_the_timings(tmp_path):
    """An impl that returns its own output is called once more after timing, to check what the
    timed calls return: a fault there is recorded in that phase, not in timing."""
    state = {"timing": False}

    @register_impl("gemv_bf16", "t_after_fault", backends=["cpu"], dtypes=["float32"])
    def late(x, w):
        if state["timing"]:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return torch.matmul(x, w.T)
    r = runner(tmp_path, ["t_after_fault"], backend=_Poisoned())
    report = r._report_stage

    def on_stage(stage, detail):  # the first call after timing faults, none before
        state["timing"] = stage == "after-timing"
        report(stage, detail)
    r._report_stage = on_stage
    rec = _lost_record(r, tmp_path)
    assert rec["status"] == "crashed" and rec["phase"] == "after-timing", rec
    assert " in the check after its timing; the device context is lost" in rec["error"]


def test_a_warm_set_a_few_times_the_llc_is_still_in_cache(tmp_path, monkeypatch):
    """Between 1x and WARM_CACHE_FACTOR x the LLC a warm set is partly cached (the L2s and a
    victim L3 hold more than the LLC alone): timed, not judged."""
    r = runner(tmp_path, ["torch_matmul"])
    touched = OPS["gemv_bf16"].bytes_moved(SHAPE, torch.float32)
    monkeypatch.setattr(cpu_backend, "read_caches", lambda: {"L3": touched // 2})
    assert touched <= WARM_CACHE_FACTOR * (touched // 2)
    (rec,) = r.run_case(Case("gemv_bf16", SHAPE, torch.float32, warm=True))
    r.writer.close()
    assert rec["status"] == "ok" and rec["n_sets"] == 1
    assert rec["verdict"] == IN_CACHE and not rec["cold"]


def test_a_warm_set_judged_against_the_dram_roof_is_marked_cold(tmp_path, monkeypatch):
    """Past WARM_CACHE_FACTOR x the LLC a warm set is judged like a cold one, so its record says
    cold, whatever the other cache levels add to the rotation target: readers (plots,
    projections, the above-roof flag) take warm-and-not-cold as in cache. With L2s as large as
    the L3 (Sapphire Rapids, Sierra Forest), a set between 4x the L3 and 4x all levels was judged
    yet marked not cold."""
    from bench.results import in_cache
    r = runner(tmp_path, ["torch_matmul"])
    touched = OPS["gemv_bf16"].bytes_moved(SHAPE, torch.float32)
    l3 = touched // 5
    monkeypatch.setattr(cpu_backend, "read_caches", lambda: {"L2": l3, "L3": l3})
    assert WARM_CACHE_FACTOR * l3 < touched <= r.ctx.backend.rotate_bytes()
    (rec,) = r.run_case(Case("gemv_bf16", SHAPE, torch.float32, warm=True))
    r.writer.close()
    assert rec["status"] == "ok" and rec["n_sets"] == 1
    assert rec["verdict"] != IN_CACHE and rec["cold"] is True and not in_cache(rec)


def test_an_impl_that_calls_sys_exit_is_recorded_with_that_error_and_the_case_goes_on(
        tmp_path, slightly_off):
    """sys.exit inside an impl ends neither the case nor its worker (which would record it
    "crashed: exit code 0"): the impl's record is an error naming the SystemExit, its spoiled
    input is put back, and the next impl is checked and timed."""
    @register_impl("gemv_bf16", "t_exit", backends=["cpu"], dtypes=["float32"])
    def leaves(x, w):
        x.mul_(2)
        sys.exit(0)

    r = runner(tmp_path, ["t_exit", "t_right"])
    recs = r.run_case(Case("gemv_bf16", SHAPE, torch.float32))
    r.writer.close()
    by = {x["impl"]: x for x in recs}
    assert sorted(by) == ["t_exit", "t_right"]
    assert by["t_exit"]["status"] == "error" and by["t_exit"]["error"].startswith("SystemExit")
    assert "changed its input" in by["t_exit"]["error"]
    assert by["t_right"]["status"] == "ok", by["t_right"]["error"]


def test_a_case_that_names_its_impls_runs_those_alone(tmp_path):
    """A suite case lists its impls (the CPU suites leave out torch.compile's and the naive
    dequant at large shapes): only those are checked, timed and recorded."""
    r = runner(tmp_path, [])
    r.ctx.impl_filter, r.ctx.check_only = None, True
    recs = r.run_case(Case("gemv_bf16", SHAPE, torch.float32, impls=("torch_matmul",)))
    r.writer.close()
    assert [x["impl"] for x in recs] == ["torch_matmul"]


def test_the_check_alone_catches_an_impl_that_changes_its_inputs(tmp_path):
    """Under check_only (the builtins' tests) no timing follows to find it later: the check
    itself compares the inputs with their snapshot, fails the impl and puts them back."""
    @register_impl("gemv_bf16", "t_scribbles", backends=["cpu"], dtypes=["float32"])
    def scribbles(x, w):
        y = x @ w.T
        w.zero_()
        return y
    r = runner(tmp_path, ["t_scribbles", "torch_matmul"])
    r.ctx.check_only = True
    recs = {x["impl"]: x for x in r.run_case(Case("gemv_bf16", SHAPE, torch.float32))}
    r.writer.close()
    bad = recs["t_scribbles"]
    assert bad["status"] == "failed-check" and bad["correct"] is False
    assert "changed its input 1" in bad["error"] and "after its check" not in bad["error"]
    assert recs["torch_matmul"]["status"] == "ok" and recs["torch_matmul"]["rel_err"] < 1e-6


def test_an_exact_answer_at_a_zero_tolerance_is_correct(tmp_path):
    """A copy is held to a tolerance of 0: an exact copy (rel err 0) is correct, recorded so,
    and timed; the gate is err <= tol."""
    from kernels.probes import ProbeShape
    r = runner(tmp_path, ["torch_copy"])
    (rec,) = r.run_case(Case("copy", ProbeShape(N=4096), torch.float32))
    r.writer.close()
    assert rec["tolerance"] == 0 and rec["rel_err"] == 0
    assert rec["status"] == "ok" and rec["correct"] is True and rec["time_s"] is not None


def test_an_impl_that_spoils_its_inputs_then_says_not_implemented_leaves_them_put_back(
        tmp_path):
    """A skip is no licence to leave the inputs changed: the next impl is checked on them."""
    @register_impl("gemv_bf16", "t_spoils_skips", backends=["cpu"], dtypes=["float32"])
    def spoils_skips(x, w):
        w.mul_(-1)
        raise NotImplementedError("needs K % 1024 == 0")
    r = runner(tmp_path, ["t_spoils_skips", "torch_matmul"])
    recs = {x["impl"]: x for x in r.run_case(Case("gemv_bf16", SHAPE, torch.float32))}
    r.writer.close()
    assert recs["t_spoils_skips"]["status"] == "skipped"
    assert "changed its input 1" in recs["t_spoils_skips"]["error"]
    assert recs["torch_matmul"]["status"] == "ok" and recs["torch_matmul"]["rel_err"] < 1e-6


def test_a_context_lost_in_a_check_is_recorded_in_the_check_after_a_timed_impl(tmp_path):
    """The phase a lost context names is the impl's own: after an impl that reached its timing,
    the next one that faults in its check says "check", not the last impl's "timing"."""
    @register_impl("gemv_bf16", "t_timed_first", backends=["cpu"], dtypes=["float32"])
    def timed_first(x, w, out=None):
        return torch.matmul(x, w.T, out=out)

    @register_impl("gemv_bf16", "t_faults_next", backends=["cpu"], dtypes=["float32"])
    def faults_next(x, w):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    r = runner(tmp_path, ["t_timed_first", "t_faults_next"], backend=_Poisoned())
    with pytest.raises(ContextLost):
        r.run_case(Case("gemv_bf16", SHAPE, torch.float32))
    r.writer.close()
    first, lost = (json.loads(x) for x in (tmp_path / "numbers.jsonl").read_text().splitlines())
    assert first["impl"] == "t_timed_first" and first["status"] == "ok"
    assert lost["status"] == "crashed" and lost["phase"] == "check"


def test_check_only_checks_and_does_not_time(tmp_path):
    """check_only (the builtins' tests) is the correctness gate alone: an ok record with its
    rel err and no timing."""
    r = runner(tmp_path, ["torch_matmul"])
    r.ctx.check_only = True
    (rec,) = r.run_case(Case("gemv_bf16", SHAPE, torch.float32))
    r.writer.close()
    assert rec["status"] == "ok" and rec["correct"] is True and rec["rel_err"] < 1e-6
    assert rec["time_s"] is None and rec["achieved_gbps"] is None and r.ctx.backend.k == 0


def test_a_case_of_a_dtype_without_a_compute_rate_gets_one_before_it_is_judged(tmp_path,
                                                                             monkeypatch):
    """The in-process runner measures the compute roof of a case's dtype before timing it, so
    the record has a ridge and a % of compute to judge by."""
    import bench.roofline as rl
    monkeypatch.setattr(rl, "matmul_tflops", lambda backend, dt, budget: 0.5)
    monkeypatch.setattr(rl, "compute_dtype", lambda backend, dt: dt)
    r = runner(tmp_path, ["torch_matmul"])
    r.ctx.roof.matmul_tflops.clear()
    (rec,) = r.run_case(Case("gemv_bf16", SHAPE, torch.float32))
    r.writer.close()
    assert rec["status"] == "ok", rec["error"]
    assert r.ctx.roof.matmul_tflops == {"float32": 0.5}
    assert rec["ridge"] == pytest.approx(0.5e12 / 25e9) and rec["pct_compute"] is not None


def test_a_collective_is_held_to_the_chips_links_a_kernel_to_its_memory():
    """% of datasheet compares an all-reduce with the interconnect's bandwidth and a kernel
    with the memory's: the two differ by an order of magnitude on a GPU."""
    from backends import lookup_chip
    from bench.runner import base_record
    from kernels.collectives.ops import AllreduceShape
    chip = lookup_chip("h100-sxm")
    assert chip.interconnect.link_gbps != chip.mem_bw_gbps
    r = runner(None, [], chip=chip)
    ar = Case("allreduce", AllreduceShape(bytes=8192, world_size=2), torch.bfloat16)
    gemv = Case("gemv_bf16", SHAPE, torch.float32)
    ops = {c.op: c for c in (ar, gemv)}
    recs = {op: base_record(r.ctx, c, next(iter(OPS[op].impls.values())))
            for op, c in ops.items()}
    assert recs["allreduce"]["datasheet_gbps"] == chip.interconnect.link_gbps
    assert recs["gemv_bf16"]["datasheet_gbps"] == chip.mem_bw_gbps


def test_a_record_names_the_configs_its_own_impl_was_tuned_to(tmp_path, monkeypatch):
    """The autotuner's picks are forgotten before each impl: a record carries the configs its
    impl ran with, never the last impl's."""
    picks: dict = {}
    monkeypatch.setattr(runner_mod, "forget_tuned", picks.clear)
    monkeypatch.setattr(runner_mod, "tuned", lambda: dict(picks))

    @register_impl("gemv_bf16", "t_tunes", backends=["cpu"], dtypes=["float32"])
    def tunes(x, w, out=None):
        picks["t_kernel"] = {"config": "BLOCK_N: 64"}
        return torch.matmul(x, w.T, out=out)

    @register_impl("gemv_bf16", "t_untuned", backends=["cpu"], dtypes=["float32"])
    def untuned(x, w, out=None):
        return torch.matmul(x, w.T, out=out)
    r = runner(tmp_path, ["t_tunes", "t_untuned"])
    recs = r.run_case(Case("gemv_bf16", SHAPE, torch.float32))
    r.writer.close()
    assert [x["impl"] for x in recs] == ["t_tunes", "t_untuned"]
    assert recs[0]["tuned"] == {"t_kernel": {"config": "BLOCK_N: 64"}}
    assert recs[1]["status"] == "ok" and "tuned" not in recs[1]


def test_flushing_denormals_does_not_outlive_the_impl_that_set_it(tmp_path):
    """Flushing denormals to zero changes the next impl's arithmetic (and has no getter to put
    back): the runner turns it off after every impl."""
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals")
    seen = []

    @register_impl("gemv_bf16", "t_ftz", backends=["cpu"], dtypes=["float32"])
    def ftz(x, w, out=None):
        torch.set_flush_denormal(True)
        return torch.matmul(x, w.T, out=out)

    @register_impl("gemv_bf16", "t_after_ftz", backends=["cpu"], dtypes=["float32"])
    def after(x, w, out=None):
        seen.append((torch.tensor([1e-40]) * 1.0).item())
        return torch.matmul(x, w.T, out=out)
    try:
        r = runner(tmp_path, ["t_ftz", "t_after_ftz"])
        r.ctx.check_only = True
        r.run_case(Case("gemv_bf16", SHAPE, torch.float32))
        r.writer.close()
    finally:
        torch.set_flush_denormal(False)
    assert seen and all(v != 0.0 for v in seen)


def test_a_failure_of_an_impl_with_a_known_issue_names_the_issue(tmp_path):
    """An impl whose library is known to be at fault says so in each failure's message (a
    wrong answer, a raise), so a reader does not take it for the harness's or the kernel's
    own bug."""
    @register_impl("gemv_bf16", "t_known_wrong", backends=["cpu"], dtypes=["float32"],
                   known_issue="see issue 12")
    def known_wrong(x, w):
        return (x @ w.T) * 1.05

    @register_impl("gemv_bf16", "t_known_raises", backends=["cpu"], dtypes=["float32"],
                   known_issue="see issue 12")
    def known_raises(x, w):
        raise RuntimeError("boom")
    r = runner(tmp_path, ["t_known_wrong", "t_known_raises"])
    recs = {x["impl"]: x for x in r.run_case(Case("gemv_bf16", SHAPE, torch.float32))}
    r.writer.close()
    assert recs["t_known_wrong"]["status"] == "failed-check"
    assert recs["t_known_raises"]["status"] == "error"
    assert all(x["error"].endswith(" (see issue 12)") for x in recs.values()), recs


_FORKS_AND_EXITS = r'''
import json, os, sys, pathlib
import torch
import backends.cpu as cpu_backend
cpu_backend.read_caches = lambda: {"L3": 1 << 14}  # one or two input sets: few forks
from bench.case import Case
from kernels import register_impl
from kernels.gemv import GemvShape
from tests.bench.test_runner_numbers import runner

statuses = []

@register_impl("gemv_bf16", "t_forks", backends=["cpu"], dtypes=["float32"])
def forks(x, w):
    pid = os.fork()
    if pid == 0:
        sys.exit(7)
    statuses.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    return x @ w.T

out = pathlib.Path(sys.argv[1])
r = runner(out, ["t_forks"])
recs = r.run_case(Case("gemv_bf16", GemvShape(1, 64, 256), torch.float32))
r.writer.close()
print(json.dumps({"pid": os.getpid(), "statuses": sorted(set(statuses)),
                  "records": [x["status"] for x in recs]}))
'''


def test_a_process_an_impl_forks_ends_at_its_sys_exit(tmp_path):
    """A child the impl forked that calls sys.exit ends there with its status, as the impl
    asked: the runner does not take it for the impl's error (recording a second record from the
    child, or running the cleanup's torch ops in it, where a forked OpenMP pool deadlocks) and
    the impl's own record is ok."""
    import subprocess

    from tests.helpers import REPO
    p = subprocess.run([sys.executable, "-c", _FORKS_AND_EXITS, str(tmp_path)],
                       capture_output=True, text=True, cwd=REPO, timeout=240)
    outs = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert len(outs) == 1, p.stdout[-2000:] + p.stderr[-2000:]  # no child went on to print
    assert outs[0]["statuses"] == [7] and outs[0]["records"] == ["ok"], outs
    lines = (tmp_path / "numbers.jsonl").read_text().splitlines()
    assert [json.loads(ln)["status"] for ln in lines] == ["ok"]
