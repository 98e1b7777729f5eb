"""What the suites hold: smoke is every op at each of its own smoke cases (both dtypes where it
lists two), and a collective's host need counts every rank the machine runs."""
import torch

from bench.case import Case, host_need
from bench.suites import HOST_FRACTION, SuiteContext, cases_for
from kernels import OPS


def test_smoke_runs_every_op_at_each_of_its_smoke_cases():
    """The CI's one pass over every impl: an op that lists an fp32 and a bf16 smoke case gets
    both (an impl's fp32 path is code of its own)."""
    got = [(c.op, c.shape, c.dtype) for c in cases_for("smoke", SuiteContext("cpu"))]
    want = [(name, shape, dtype) for name, op in OPS.items() for shape, dtype in op.smoke]
    assert got == want
    assert any(len(op.smoke) > 1 for op in OPS.values())


def test_a_collectives_host_need_is_counted_for_every_rank():
    """Each rank of a CPU all-reduce is a process on this host: 8 ranks need 8x one rank's
    memory, so a case that one rank's need would fit is left out when all of them do not."""
    from kernels.collectives.ops import AllreduceShape

    def case(ranks):
        return Case("allreduce", AllreduceShape(bytes=1 << 26, world_size=ranks), torch.float32)

    def need(ranks):  # one rank's
        return host_need(OPS["allreduce"], case(ranks).shape, torch.float32, "cpu")
    mem = int(4 * need(4) / HOST_FRACTION) + 1  # room for 4 ranks
    assert need(8) <= HOST_FRACTION * mem < 8 * need(8)  # one rank of 8 fits, eight do not
    ctx = SuiteContext("cpu", memory_bytes=mem)
    assert ctx.fits_host(case(4)) and not ctx.fits_host(case(8))


def test_a_case_planned_twice_is_kept_once():
    """On a small last-level cache the size sweep's smallest sizes round to one shape."""
    cases = cases_for("sweep-size", SuiteContext("cuda", 16 * 2**30, 4 * 2**20))
    keys = [(c.op, c.shape, c.dtype, c.warm) for c in cases]
    assert len(keys) == len(set(keys)) and len(keys) > 12


def test_cases_too_big_for_the_device_are_noted_and_said(capsys):
    """A 2 GiB machine cannot hold Llama-3-70B's gate_up in bf16: the suite leaves those cases
    out, and run says so on stderr."""
    import argparse
    from bench.cli.run import resolve_cases
    ctx = SuiteContext("cpu", 2 * 2**30, 32 * 2**20)
    kept = cases_for("gemv", ctx)
    assert {(c.op, c.shape.N, c.shape.K) for c in ctx.too_big} == {
        (op, 57344, 8192) for op in ("gemv_w4", "gemv_w8", "gemv_bf16")}
    assert not set(ctx.too_big) & set(kept)
    args = argparse.Namespace(op=None, suite="gemv", shape=None, dtype=None, world_size=None,
                              warm=False)
    resolve_cases(args, ctx)
    err = capsys.readouterr().err
    assert "suite gemv leaves out 3 case(s) whose working set needs more than 40% of the " \
           "device's memory: gemv_w4 M=1,N=57344,K=8192" in err, err


def test_a_plugins_compiled_impl_is_in_the_gpu_suites(monkeypatch):
    """Only torch.compile's impls are left out of the GPU GEMV suites past M = 1 (each compiles
    per shape): another impl of kind "compiled" (a plugin's CUDA C++) stays."""
    from kernels import register_impl
    for op in OPS.values():
        monkeypatch.setattr(op, "impls", dict(op.impls))

    @register_impl("gemv_bf16", "cutlass_gemv", backends=["cuda"], kind="compiled")
    def cutlass_gemv(x, w):
        return x @ w.T
    ctx = SuiteContext("cuda", 80 * 2**30, 50 * 2**20)
    for suite in ("gemv", "sweep-batch", "sweep-size"):
        picked = [c for c in cases_for(suite, ctx) if c.op == "gemv_bf16"]
        assert picked and all(c.impls is None or "cutlass_gemv" in c.impls for c in picked), suite
        assert all(c.impls is None or "torch_compiled" not in c.impls for c in picked)


def test_a_suite_case_leaves_out_no_op_that_runs_on_its_backend():
    """A case whose impl list names none of the impls its op has on the backend gets no record
    and no word (the size sweep's INT4 and INT8 GEMVs on XLA, were it to leave out the
    dequantize-then-matmul). An op with no impl on a backend at all, allreduce on XLA, is the
    op's own limit, said by the run."""
    from bench.runner import select_impls
    from bench.suites import SUITES
    for backend in ("cpu", "cuda", "xla"):
        ctx = SuiteContext(backend, 80 * 2**30, 50 * 2**20, world_size=2)
        for name in SUITES:
            for c in cases_for(name, ctx):
                if not any(backend in i.backends for i in OPS[c.op].impls.values()):
                    continue
                runs = [i.name for i in select_impls(c, None) if backend in i.backends]
                assert runs, f"{name} on {backend}: {c.op} {c.shape} has no impl there"


def test_a_suite_op_with_no_impl_on_the_backend_is_left_out_and_said(capsys):
    """The smoke suite on XLA holds allreduce, which has no XLA impl: the run leaves it out
    with a line naming it, not in silence."""
    import argparse
    from bench.cli.run import resolve_cases
    args = argparse.Namespace(op=None, suite="smoke", shape=None, dtype=None, world_size=None,
                              warm=False, impl=None)
    planned = cases_for("smoke", SuiteContext("xla"))
    n = sum(c.op == "allreduce" for c in planned)
    assert n
    kept = resolve_cases(args, SuiteContext("xla"))
    assert [c for c in planned if c.op != "allreduce"] == kept
    assert capsys.readouterr().err == (f"decodewall: suite smoke leaves out {n} case(s) of "
                                       "allreduce: no impl of it runs on xla\n")
    assert resolve_cases(args, SuiteContext("cpu")) == cases_for("smoke", SuiteContext("cpu"))
    assert capsys.readouterr().err == ""


def _grid(suite: str, backend: str) -> set[tuple]:
    """(op, the case's sizes, dtype) of every case of `suite` on `backend`, memory unbounded."""
    out = set()
    for c in cases_for(suite, SuiteContext(backend)):
        s = c.shape
        sizes = (s.B, s.context, s.Hq) if c.op.startswith("paged_attention") else (s.M, s.N, s.K)
        out.add((c.op, *sizes, c.dtype))
    return out


def test_the_suites_hold_the_grids_their_descriptions_promise():
    """`run --list` tells each suite's cases (decode's attention at 64 x 4096 on a GPU and 8 x
    4096 elsewhere, attention's batch x context grid, the batch sweep's M = 1..256): a case
    dropped or resized would change what a user compares without a word."""
    bf, f32 = torch.bfloat16, torch.float32
    gemvs = {("gemv_bf16", 1, n, k, bf) for n, k in ((6144, 4096), (4096, 4096), (28672, 4096),
                                                       (4096, 14336))}
    for backend, B in (("cuda", 64), ("cpu", 8)):
        decode = _grid("decode", backend)
        assert {g for g in decode if g[0] == "gemv_bf16"} == gemvs, backend
        assert {g[1:4] for g in decode if g[0] in ("gemv_w8", "gemv_w4")} == {g[1:4] for g in gemvs}
        assert {g for g in decode if g[0] == "paged_attention"} == \
            {("paged_attention", B, 4096, 32, bf)}, backend
    gpu = {(B, c) for B in (1, 8, 32, 64) for c in (512, 4096)} | {(1, 32768)}
    assert _grid("attention", "cuda") == \
        {("paged_attention", B, c, Hq, bf) for B, c in gpu for Hq in (32, 64)} | \
        {("paged_attention_kv8", B, c, 32, bf) for B, c in gpu}
    cpu = {(B, c, dt) for B in (1, 8) for c in (512, 4096) for dt in (bf, f32)}
    assert _grid("attention", "cpu") == \
        {("paged_attention", B, c, 32, dt) for B, c, dt in cpu} | \
        {("paged_attention", 1, 32768, 32, bf), ("paged_attention", 8, 4096, 64, bf),
         ("paged_attention_kv8", 8, 4096, 32, bf)}
    for backend, n in (("cuda", 8192), ("cpu", 4096)):
        assert _grid("sweep-batch", backend) == {
            (op, M, n, n, bf) for op in ("gemv_w4", "gemv_w8", "gemv_bf16")
            for M in (1, 2, 4, 8, 16, 32, 64, 128, 256)}, backend


def _args(**kw):
    """`run`'s arguments for resolve_cases: none given but those named."""
    import argparse
    return argparse.Namespace(**{"op": None, "suite": None, "shape": None, "dtype": None,
                                 "world_size": None, "warm": False, "impl": None, **kw})


def test_without_suite_or_op_the_decode_suite_runs():
    from bench.cli.run import resolve_cases
    ctx = SuiteContext("cpu", 64 * 10**9, 32 * 2**20)
    assert resolve_cases(_args(), ctx) == cases_for("decode", ctx)


def test_an_op_at_a_given_shape_takes_the_dtype_of_its_first_smoke_case():
    """gemv_bf16's smoke case is bf16 (its dtypes list fp32 too), copy's fp32."""
    from bench.cli.run import resolve_cases
    for op, shape, dtype in (("gemv_bf16", "M=1,N=64,K=128", torch.bfloat16),
                             ("copy", "N=4096", torch.float32)):
        (case,) = resolve_cases(_args(op=op, shape=[shape]), SuiteContext("cpu"))
        assert case.dtype == dtype == OPS[op].smoke[0][1]


def test_a_suite_names_three_cases_it_leaves_out_and_counts_the_rest(capsys):
    """A 200 MB machine: dozens of the GEMV suite's cases are too big for it, the first three
    named (op, shape, dtype) and the rest counted."""
    import dataclasses

    from bench.cli.run import resolve_cases
    from kernels import dtype_name

    def named(c):
        shape = ",".join(f"{k}={v}" for k, v in dataclasses.asdict(c.shape).items())
        return f"{c.op} {shape} {dtype_name(c.dtype)}"
    ctx = SuiteContext("cpu", 2 * 10**8, 32 * 2**20)
    resolve_cases(_args(suite="gemv"), ctx)
    left_out: list = []
    cases_for("gemv", SuiteContext("cpu", 2 * 10**8, 32 * 2**20), left_out)
    assert len(ctx.too_big) > 4 and len(left_out) > 4
    assert capsys.readouterr().err.splitlines() == [
        f"decodewall: suite gemv leaves out {len(out)} case(s) whose {why}: "
        f"{'; '.join(named(c) for c in out[:3])} and {len(out) - 3} more"
        for out, why in ((ctx.too_big, "working set needs more than 40% of the device's memory"),
                         (left_out, "inputs and float64 reference need more than 90% of this "
                                    "machine's memory"))]


def test_a_suite_with_no_case_on_this_machine_is_refused(monkeypatch):
    """The collectives need two ranks: a machine of one GPU runs none of them."""
    import pytest

    from bench.cli.run import resolve_cases
    from bench.errors import UsageError
    monkeypatch.setattr("bench.collectives.max_world_size", lambda backend: 1)
    with pytest.raises(UsageError, match=r"^suite collectives has no cases on this machine "
                                         r"\(cuda\)$"):
        resolve_cases(_args(suite="collectives"), SuiteContext("cuda", 80 * 2**30, 50 * 2**20))


def test_a_suite_none_of_whose_ops_runs_here_or_whose_impl_is_named_keeps_its_cases(capsys):
    """Only a part of a suite without an impl here is left out: a suite all of which is (the
    collectives on XLA), or one whose impls are named with --impl, is kept whole, for the run
    to refuse with the reason or record as skipped."""
    from bench.cli.run import resolve_cases
    ctx = SuiteContext("xla")
    assert resolve_cases(_args(suite="collectives"), ctx) == cases_for("collectives", ctx)
    assert resolve_cases(_args(suite="smoke", impl=["torch_matmul"]), ctx) == \
        cases_for("smoke", ctx)
    assert capsys.readouterr().err == ""


def test_a_warm_and_a_cold_case_of_one_shape_are_both_kept(monkeypatch):
    """A case planned twice is timed once, but the warm (in-cache) and the cold timing of one
    shape are two measurements: both stay."""
    from bench import suites
    from kernels.probes import ProbeShape
    pair = [Case("read", ProbeShape(N=4096), torch.float32, warm=w) for w in (False, True)]
    monkeypatch.setitem(suites.SUITES, "t_pair", (lambda ctx: pair + pair, "both sides"))
    assert cases_for("t_pair", SuiteContext("cpu")) == pair


def test_off_the_cpu_the_devices_memory_leaves_no_case_out_for_the_hosts_sake():
    """A GPU's memory says nothing of the host's: a case whose host need exceeds it is kept
    (run checks the host's available memory itself)."""
    case = Case("gemv_w4", OPS["gemv_w4"].shape(M=1, N=4096, K=4096, group_size=128),
                torch.bfloat16)
    need = host_need(OPS["gemv_w4"], case.shape, case.dtype, "cuda")
    assert SuiteContext("cuda", memory_bytes=need // 4).fits_host(case)
    assert not SuiteContext("cpu", memory_bytes=need // 4).fits_host(case)
