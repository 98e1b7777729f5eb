"""Which records a case gets and what ends a worker, in-process on the CPU backend: impls written
for another backend stay out unless named, a case whose inputs cannot be built still gets a record
for each impl, a lost device context is raised after its record, and a warm set within
WARM_CACHE_FACTOR x the LLC is not judged against the DRAM roof."""
import json

import pytest
import torch

import backends.cpu as cpu_backend
import bench.runner as runner_mod
from bench.case import Case
from bench.roofline import IN_CACHE
from bench.runner import WARM_CACHE_FACTOR, ContextLost
from kernels import OPS, register_impl
from kernels.gemv import GemvShape
from tests.bench.test_runner_numbers import ScriptedCPU, runner

SHAPE = GemvShape(1, 64, 256)


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
    for n in ("t_fault", "t_next"):
        OPS["gemv_bf16"].impls.pop(n, None)


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
    try:
        r = runner(tmp_path, ["t_late_fault"], backend=_Poisoned())
        with pytest.raises(ContextLost):
            r.run_case(Case("gemv_bf16", SHAPE, torch.float32))
        r.writer.close()
        rec = json.loads((tmp_path / "numbers.jsonl").read_text())
        assert rec["status"] == "crashed" and rec["phase"] == "warm-up", rec
        assert " in its warm-up; the device context is lost" in rec["error"]
    finally:
        OPS["gemv_bf16"].impls.pop("t_late_fault", None)


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
