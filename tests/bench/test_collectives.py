"""allreduce through torch.distributed: gloo ranks started by the run itself or by torchrun, the
record contract, and ranks that crash, raise or hang."""
import json
import os
import shutil
import subprocess
import time

import pytest
import torch

from kernels import OPS, rel_err
from kernels.collectives.ops import (AllreduceShape, busbw_gbps, contribution, expected, inexact,
                                     max_exact_world_size)
from tests.helpers import REPO, run_cli

AR = ["run", "--op", "allreduce", "--budget", "quick", "--no-progress"]

BAD_RANKS = '''
import ctypes, os, time, torch
from kernels import register_impl

def note(tag):
    with open({pids!r}, "a") as f:
        f.write(f"{{tag}} {{os.getpid()}}\\n")

@register_impl("allreduce", "r1_segfault", backends=["cpu"])
def r1_segfault(t, group=None):
    note("segv")
    if torch.distributed.get_rank() == 1:
        print("rank one reads address 0", flush=True)
        ctypes.string_at(0)
    torch.distributed.all_reduce(t)
    return t

@register_impl("allreduce", "r1_hangs", backends=["cpu"])
def r1_hangs(t, group=None):
    note("hang")
    if torch.distributed.get_rank() == 1:
        time.sleep(600)
    torch.distributed.all_reduce(t)
    return t

@register_impl("allreduce", "r1_raises", backends=["cpu"])
def r1_raises(t, group=None):
    if torch.distributed.get_rank() == 1:
        raise RuntimeError("rank one refuses")
    torch.distributed.all_reduce(t)
    return t

@register_impl("allreduce", "r1_exits", backends=["cpu"])
def r1_exits(t, group=None):
    if torch.distributed.get_rank() == 1:
        import sys
        sys.exit(0)
    torch.distributed.all_reduce(t)
    return t

@register_impl("allreduce", "drops_a_rank", backends=["cpu"])
def drops_a_rank(t, group=None):
    if torch.distributed.get_rank() == 1:
        t.zero_()
    torch.distributed.all_reduce(t)
    return t
'''


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def test_expected_sum_is_the_sum_of_every_rank():
    for n in (1, 2, 3, 5, 8):
        s = AllreduceShape(bytes=4 * 37, world_size=n)
        for dt in (torch.float32, torch.bfloat16):
            direct = sum(contribution(s, dt, r, "cpu").double() for r in range(n))
            assert torch.equal(direct, expected(s, dt)), (n, dt)
    assert not torch.equal(contribution(s, torch.float32, 0, "cpu"),
                           contribution(s, torch.float32, 1, "cpu"))


def test_the_check_tells_every_rank_apart():
    """A sum that counts one rank twice and drops another, drops one, or is shifted by one
    element, fails the check at every world size, whichever ranks."""
    op = OPS["allreduce"]
    for n in (2, 3, 4, 5, 8):
        s = AllreduceShape(bytes=4 * 40, world_size=n)
        for dt in (torch.float32, torch.bfloat16):
            part = [contribution(s, dt, r, "cpu") for r in range(n)]
            want = expected(s, dt)
            wrong = [torch.roll(sum(part), 1)]
            for a in range(n):
                wrong.append(sum(part) - part[a])
                wrong += [sum(part) + part[a] - part[b] for b in range(n) if b != a]
            for w in wrong:
                assert rel_err(w.to(dt), want) > op.tol(dt), (n, dt)


def test_bus_bandwidth_as_nccl_tests():
    s = AllreduceShape(bytes=1 << 20, world_size=4)
    assert busbw_gbps(s, 1e-3) == pytest.approx((1 << 20) / 1e-3 / 1e9 * 2 * 3 / 4)
    assert busbw_gbps(AllreduceShape(bytes=1 << 20, world_size=1), 1e-3) == 0  # no link used


def test_allreduce_on_gloo_through_the_cli(tmp_path):
    out = tmp_path / "runs"
    p = run_cli(*AR, "--shape", "bytes=65536", "--shape", "bytes=8192", "--world-size", "2",
                "--json", "--out", str(out), timeout=300)
    assert p.returncode == 0, p.stderr
    recs = [json.loads(x) for x in p.stdout.splitlines()]
    (f,) = out.iterdir()
    assert [json.loads(x) for x in f.read_text().splitlines()] == recs
    assert len(recs) == 2
    for r in recs:
        assert r["op"] == "allreduce" and r["status"] == "ok" and r["correct"] is True
        assert r["shape"]["world_size"] == 2 and r["world_size"] == 2
        assert r["bytes"] == r["shape"]["bytes"]
        med = r["time_s"]["median"]
        assert r["algbw_gbps"] == pytest.approx(r["bytes"] / med / 1e9)
        assert r["busbw_gbps"] == pytest.approx(r["algbw_gbps"] * 2 * (2 - 1) / 2)
        assert r["achieved_gbps"] == r["busbw_gbps"]
        assert r["time_s"]["n"] >= 5 and r["roof_gbps"] is None
    assert recs[0]["start_s"] > 0 and recs[1]["start_s"] is None  # the second reuses the group


@pytest.mark.slow  # rank groups started seven times, one of them waiting out a 12 s case timeout
def test_faulty_ranks_are_named_and_nothing_is_left_running(tmp_path):
    pids = tmp_path / "pids.txt"
    plugin = tmp_path / "bad_ranks.py"
    plugin.write_text(BAD_RANKS.format(pids=str(pids)))
    p = run_cli(*AR, "--shape", "bytes=8192", "--world-size", "2", "--plugin", str(plugin),
                "--case-timeout", "12", "--json", "--no-save", "--strict", timeout=300)
    assert p.returncode == 1, p.stderr  # --strict: impls failed
    assert "Traceback" not in p.stderr
    recs = {r["impl"]: r for r in map(json.loads, p.stdout.splitlines())}
    assert recs["torch_distributed"]["status"] == "ok"
    assert recs["r1_segfault"]["status"] == "crashed"
    assert recs["r1_segfault"]["error"] == ("rank 1 died: SIGSEGV (Segmentation fault); its last "
                                            "output line: rank one reads address 0")
    assert recs["r1_hangs"]["status"] == "timeout"
    assert recs["r1_hangs"]["error"].startswith("rank(s) 1 did not finish")
    assert recs["r1_raises"]["status"] == "error"
    assert recs["r1_raises"]["error"] == "rank 1: RuntimeError: rank one refuses"
    # sys.exit in an impl is its error, as in the kernels' runner, not a rank that died
    assert recs["r1_exits"]["status"] == "error", recs["r1_exits"]
    assert recs["r1_exits"]["error"].startswith("rank 1: SystemExit")
    assert recs["drops_a_rank"]["status"] == "failed-check"
    started = [int(x.split()[1]) for x in pids.read_text().splitlines()]
    assert len(started) >= 4 and not any(alive(pid) for pid in started)


def test_a_world_size_the_machine_cannot_run_is_refused(capsys, tmp_path):
    from tests.helpers import one_error_line
    line = one_error_line(capsys, [*AR, "--shape", "bytes=8192", "--world-size", "4096",
                                   "--out", str(tmp_path)])
    assert "world size 4096 is more ranks than this machine runs" in line
    assert not list(tmp_path.iterdir())


def context(chip: str | None = None, check_only: bool = False):
    from backends import get_backend
    from backends.catalog import load
    from bench.roofline import Roof
    from bench.runner import RunContext
    from bench.timing import BUDGETS
    return RunContext(backend=get_backend("cpu"), roof=Roof("cpu", 1.0, 1.0, 1),
                      chip=load()[chip] if chip else None, device_info={"name": "test"},
                      budget=BUDGETS["quick"], seed=0, run_id="test", command="pytest",
                      git_commit=None, versions={}, check_only=check_only)


@pytest.fixture
def ranks(tmp_path, monkeypatch):
    """make(plugin source, ...): a CollectiveRunner in this process whose ranks load the plugin;
    its impls are registered here too, for this test only. Every runner made is closed."""
    from bench.collectives import CollectiveRunner
    from bench.plugins import load_plugins
    from bench.results import ResultWriter
    made = []

    def make(source: str = "", chip: str | None = None, check_only: bool = False,
             case_timeout: float = 60.0):
        plugins = []
        if source:
            path = tmp_path / f"plugin_{len(made)}.py"
            path.write_text(source)
            impls = OPS["allreduce"].impls
            before = set(impls)
            load_plugins([str(path)])
            for name in set(impls) - before:  # removed again when the test ends
                monkeypatch.setitem(impls, name, impls.pop(name))
            plugins = [str(path)]
        made.append(CollectiveRunner(context(chip, check_only), ResultWriter(None, "test"),
                                     case_timeout=case_timeout, plugins=plugins))
        return made[-1]
    yield make
    for r in made:
        r.close(now=True)


def case(nbytes: int = 8192, n: int = 2, dtype=torch.float32, impls=None):
    from bench.case import Case
    return Case("allreduce", AllreduceShape(bytes=nbytes, world_size=n), dtype, impls=impls)


def test_a_suite_case_past_the_machine_is_skipped_with_the_reason(ranks):
    """A suite's case (the smoke suite's 2 ranks on a 1-GPU machine) is recorded, not refused,
    and judged, like every allreduce record, against the chip's link, not its memory."""
    (r,) = ranks(chip="h100-sxm").run_case(case(n=4096))
    assert r["status"] == "skipped" and "world size 4096" in r["error"]
    assert r["datasheet_gbps"] == 450  # the H100 SXM's NVLink, a direction (its HBM: 3350)


def test_a_sum_the_dtype_cannot_hold_exactly_is_skipped_with_the_reason(ranks, monkeypatch):
    """As if this machine ran 256 ranks; none is started."""
    import bench.collectives
    monkeypatch.setattr(bench.collectives, "world_size_error", lambda backend, n: None)
    monkeypatch.setattr(bench.collectives.CollectiveRunner, "_start",
                        lambda self, n: "not started by this test")
    (r,) = ranks().run_case(case(n=256, dtype=torch.bfloat16))
    assert r["status"] == "skipped"
    assert r["error"] == ("the check's sums (up to world size + 1) are exact in bfloat16 for at "
                          "most 255 ranks, not 256: a correct all-reduce would fail it")


def test_the_exact_limit_is_where_a_correct_sum_stops_being_exact():
    """Summed rank by rank in the dtype (as a ring does), the contributions give the expected sum
    exactly up to max_exact_world_size, and not one rank past it."""
    for dt, most in ((torch.bfloat16, 255), (torch.float16, 2047)):
        assert max_exact_world_size(dt) == most
        for n in (most, most + 1):
            s = AllreduceShape(bytes=4 * (n + 2), world_size=n)
            acc = contribution(s, dt, 0, "cpu")
            for r in range(1, n):
                acc += contribution(s, dt, r, "cpu")
            assert torch.equal(acc.double(), expected(s, dt)) == (n == most), (dt, n)
            assert (inexact(s, dt) is None) == (n == most)
    assert max_exact_world_size(torch.float32) >= 4096  # every world size a shape allows


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_the_same_command_under_torchrun(tmp_path):
    out = tmp_path / "runs"
    env = dict(os.environ, PYTHONPATH=str(REPO), TRITON_INTERPRET="1")
    from tests.helpers import free_port
    p = subprocess.run(["torchrun", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                        "--master-port", str(free_port()), "-m", "bench.cli", *AR, "--shape", "bytes=65536",
                        "--out", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    (f,) = out.iterdir()  # one file, rank 0's
    (r,) = [json.loads(x) for x in f.read_text().splitlines()]
    assert r["status"] == "ok" and r["correct"] and r["shape"]["world_size"] == 2
    assert "2 ranks (torchrun)" in p.stdout


def test_kernel_ops_refuse_torchrun_and_world_size(capsys, monkeypatch):
    from bench.cli import main
    assert main(["run", "--op", "gemv_bf16", "--world-size", "2", "--no-save"]) == 2
    assert "collective ops" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert main(["run", "--op", "gemv_bf16", "--no-save"]) == 2
    assert "under torchrun" in capsys.readouterr().err


@pytest.mark.parametrize("rank", [0, 1])
def test_under_torchrun_rank_0_alone_saves_prints_and_fails_strict(capsys, monkeypatch, tmp_path,
                                                                   rank):
    """Every rank measures; rank 0 alone writes the results file and the records, and --strict
    makes its exit status 1 when an impl failed. The process group waits half the case timeout,
    5 s at least. (The ranks' own work is faked here: a failed-check record for each case.)"""
    import bench.collectives as coll
    from bench.case import DEFAULT_CASE_TIMEOUT_S
    from bench.cli import main
    from bench.runner import base_record
    for k, v in {"RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(k, v)

    waits = []

    def run_as_rank(ctx, cases, writer, on_record, pg_timeout_s):
        waits.append(pg_timeout_s)
        for case in cases:
            rec = {**base_record(ctx, case, OPS["allreduce"].impls["torch_distributed"]),
                   "status": "failed-check", "correct": False}
            writer.write(rec)
            on_record(rec)
        return 0
    monkeypatch.setattr(coll, "run_as_rank", run_as_rank)
    out = tmp_path / "runs"
    argv = [*AR, "--shape", "bytes=4096", "--json", "--out", str(out)]
    assert main(argv) == 0
    assert main(argv + ["--strict", "--case-timeout", "4"]) == (1 if rank == 0 else 0)
    assert waits == [DEFAULT_CASE_TIMEOUT_S / 2, 5.0]
    printed = capsys.readouterr().out.splitlines()
    files = sorted(out.iterdir()) if out.exists() else []
    if rank == 0:
        assert [json.loads(x)["status"] for x in printed] == ["failed-check"] * 2
        assert len(files) == 2
    else:
        assert printed == [] and files == []


@pytest.mark.cuda
def test_allreduce_on_nccl_over_two_gpus(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip(f"NCCL needs two GPUs; this machine has {torch.cuda.device_count()}")
    p = run_cli("run", "--backend", "cuda", *AR[1:], "--shape", "bytes=1048576", "--world-size",
                "2", "--json", "--no-save", timeout=300)
    assert p.returncode == 0, p.stderr
    (r,) = map(json.loads, p.stdout.splitlines())
    assert r["status"] == "ok" and r["correct"]


def test_allreduce_is_a_collective_op():
    assert OPS["allreduce"].collective and not OPS["gemv_bf16"].collective


# --- ranks run in this test's process (CollectiveRunner), one plugin each ------------------------

FOUR_RANKS = '''
import torch
from kernels import register_impl

@register_impl("allreduce", "rank0_twice_no_rank3", backends=["cpu"])
def rank0_twice_no_rank3(t, group=None):
    every = [torch.empty_like(t) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(every, t)
    t.copy_(every[0] + every[0] + every[1] + every[2])
    return t
'''


def test_a_sum_that_counts_rank_0_twice_and_drops_rank_3_fails_its_check(ranks, monkeypatch):
    """Four real gloo ranks (more than this machine may have cores: the check alone, untimed)."""
    import bench.collectives
    monkeypatch.setattr(bench.collectives, "world_size_error", lambda backend, n: None)
    runner = ranks(FOUR_RANKS, check_only=True)
    recs = {r["impl"]: r for r in runner.run_case(
        case(n=4, impls=("torch_distributed", "rank0_twice_no_rank3")))}
    assert recs["torch_distributed"]["status"] == "ok" and recs["torch_distributed"]["correct"]
    assert recs["rank0_twice_no_rank3"]["status"] == "failed-check"


SLOW_START = '''
import os, time
if "DECODEWALL_WORKER_PATH" in os.environ:  # a rank, not the test's process
    time.sleep(3)
'''


def test_start_up_counts_against_neither_the_case_timeout_nor_wall_s(ranks):
    runner = ranks(SLOW_START, case_timeout=2)
    (first,) = runner.run_case(case())
    (second,) = runner.run_case(case(nbytes=4096))
    assert first["status"] == "ok", first["error"]
    assert first["start_s"] >= 3 and first["wall_s"] < 2
    assert second["status"] == "ok" and second["start_s"] is None  # the group is reused


BAD_START = '''
import os, sys, time
if os.environ.get("RANK") == "1" and "DECODEWALL_WORKER_PATH" in os.environ:
    if os.environ["DW_TEST_START"] == "exit":
        print("rank one cannot start", file=sys.stderr, flush=True)
        os._exit(7)
    time.sleep(600)
'''


def test_a_rank_that_fails_to_start_is_named_at_once(ranks, monkeypatch):
    """Rank 1 exits while rank 0 waits for it in the rendezvous (up to START_TIMEOUT_S): rank 1
    is named as soon as it exits. Rank 1 hangs instead: the start ends at its own bound (not
    --case-timeout), naming rank 1."""
    import bench.collectives
    from bench.collectives import START_TIMEOUT_S
    runner = ranks(BAD_START, case_timeout=600)
    monkeypatch.setenv("DW_TEST_START", "exit")
    t = time.monotonic()
    (r,) = runner.run_case(case())
    loaded = time.monotonic() - t  # rank 1 loaded (torch, the plugin) and exited: a rank's load
    assert r["status"] == "crashed"
    assert r["error"] == ("the process group did not start: rank 1 ended at start (exit code 7): "
                          "rank one cannot start")
    assert loaded < START_TIMEOUT_S / 2  # at once, not at the start's bound
    # Rank 0 must have loaded by the bound, or it is rightly named too: the bound is 5 times the
    # load just seen (at least 4 s). A fixed 4 s failed on a busy 2-core machine, where a rank's
    # import of torch alone took 7 s.
    bound = float(max(4, round(5 * loaded)))
    monkeypatch.setenv("DW_TEST_START", "hang")
    monkeypatch.setattr(bench.collectives, "START_TIMEOUT_S", bound)
    t = time.monotonic()
    (r,) = runner.run_case(case())
    assert r["status"] == "crashed"
    assert r["error"] == \
        f"the process group did not start: rank(s) 1 did not load within {bound:g} s"
    assert bound <= time.monotonic() - t < bound + 60  # its own bound, not --case-timeout 600


CRASH = '''
import os, signal, torch
from kernels import register_impl

@register_impl("allreduce", "r1_crashes", backends=["cpu"])
def r1_crashes(t, group=None):
    if torch.distributed.get_rank() == 1:
        print("rank one about to fault", flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
    torch.distributed.all_reduce(t)
    return t
'''


def test_a_crashed_rank_is_named_with_its_last_output_line(ranks):
    (r,) = ranks(CRASH, chip="h100-sxm").run_case(case(impls=("r1_crashes",)))
    assert r["status"] == "crashed"
    assert r["error"] == ("rank 1 died: SIGSEGV (Segmentation fault); its last output line: "
                          "rank one about to fault")
    assert r["datasheet_gbps"] == 450  # the link, as on an ok record


PREPARED = '''
import torch
from kernels import register_impl

def into_own_buffer(t, group=None):
    return t.clone(), group, "prepared"

@register_impl("allreduce", "own_buffer", backends=["cpu"], prepare=into_own_buffer)
def own_buffer(t, group=None, tag=None):
    assert tag == "prepared", "called without its prepare"
    assert t.max() <= 2, "its input holds an earlier sum, not an input set"
    torch.distributed.all_reduce(t, group=group)
    return t
'''


def test_prepare_is_applied_to_the_checked_and_the_timed_input_sets(ranks):
    """`fn(*prepare(t))`: the check's contributions and the timed zeros are each prepared (here
    copied into the impl's own buffer), untimed."""
    (r,) = ranks(PREPARED).run_case(case(impls=("own_buffer",)))
    assert r["status"] == "ok", r["error"]
    assert r["correct"] and r["time_s"]["n"] >= 5


def test_a_torchrun_rank_s_skipped_record_is_judged_against_the_link(monkeypatch):
    """run_as_rank as a one-rank torchrun launch: a case it skips (its bf16 sum past 255 ranks
    cannot be exact; the skip comes before any collective) still names the chip's link."""
    from bench.collectives import run_as_rank
    from tests.helpers import free_port
    from bench.results import ResultWriter
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(k, v)
    recs: list = []
    threads = torch.get_num_threads()
    try:
        run_as_rank(context("h100-sxm"), [case(n=256, dtype=torch.bfloat16)],
                    ResultWriter(None, "test"), recs.append, 10.0)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        torch.set_num_threads(threads)
    (r,) = recs
    assert r["status"] == "skipped" and "exact in bfloat16 for at most 255 ranks" in r["error"]
    assert r["datasheet_gbps"] == 450


def test_a_suite_at_one_world_size_measures_each_message_once(monkeypatch):
    """`run --suite collectives --world-size 2` on an 8-core machine: the suite's messages at 2
    ranks, once each; under torchrun (WORLD_SIZE=4) at 4 ranks."""
    import argparse
    from bench.cli.run import resolve_cases
    from bench.suites import SuiteContext
    import backends.cpu
    monkeypatch.setattr(backends.cpu, "usable_cpus", lambda: 8)
    ctx = SuiteContext("cpu", 64 * 10**9, 32 * 2**20)
    args = argparse.Namespace(op=None, suite="collectives", shape=None, dtype=None,
                              world_size=None, warm=False)
    assert {c.shape.world_size for c in resolve_cases(args, ctx)} == {2, 4, 8}
    args.world_size = 2
    cases = resolve_cases(args, ctx)
    assert len(cases) == 12 == len({c.shape for c in cases})
    assert all(c.shape.world_size == 2 and c.group == "allreduce x2" for c in cases)
    args.world_size = None
    for k, v in {"RANK": "0", "WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(k, v)
    cases = resolve_cases(args, ctx)
    assert len(cases) == 12 == len({c.shape for c in cases})
    assert all(c.shape.world_size == 4 and c.group == "allreduce x4" for c in cases)


RANK1_LATE = '''
import time, torch
from kernels import register_impl

@register_impl("allreduce", "rank1_late", backends=["cpu"])
def rank1_late(t, group=None):
    torch.distributed.all_reduce(t, group=group)
    if torch.distributed.get_rank() == 1:
        time.sleep(0.02)  # only rank 1 finishes late: its clock alone sees it
    return t

@register_impl("allreduce", "rank1_wrong", backends=["cpu"])
def rank1_wrong(t, group=None):
    torch.distributed.all_reduce(t, group=group)
    if torch.distributed.get_rank() == 1:
        t += 1  # rank 0 holds the right sum; rank 1 does not
    return t
'''


def test_three_ranks_are_timed_by_the_slowest_and_judged_by_bus_bandwidth(ranks, monkeypatch):
    """Three real gloo ranks, timed: a sample is the slowest rank's time (rank 1 ends each call
    20 ms late, which rank 0's clock never sees), and at 3 ranks busbw = algbw x 4/3 is what the
    record reports as achieved and judges against the link (at 2 ranks the factor is 1, so only
    another world size tells algbw from busbw)."""
    import bench.collectives
    monkeypatch.setattr(bench.collectives, "world_size_error", lambda backend, n: None)
    (r,) = ranks(RANK1_LATE, chip="h100-sxm").run_case(case(n=3, impls=("rank1_late",)))
    assert r["status"] == "ok", r["error"]
    med = r["time_s"]["median"]
    assert med >= 0.02 and r["time_s"]["min"] >= 0.02
    assert r["algbw_gbps"] == pytest.approx(8192 / med / 1e9)
    assert r["busbw_gbps"] == pytest.approx(r["algbw_gbps"] * 4 / 3)
    assert r["achieved_gbps"] == r["busbw_gbps"]
    assert r["pct_datasheet"] == pytest.approx(100 * r["busbw_gbps"] / 450)
    assert r["verdict"] == "below the link"


def test_one_wrong_rank_fails_the_check(ranks):
    """The worst rank decides: rank 0's sum is right, rank 1's is off by one everywhere, and the
    case fails its check (a check that took the best rank's error would pass it)."""
    (r,) = ranks(RANK1_LATE, check_only=True).run_case(case(impls=("rank1_wrong",)))
    assert r["status"] == "failed-check" and r["correct"] is False


def test_judge_against_the_link():
    """% of the datasheet link is busbw over the link figure; "at the link" from AT_LINK (80%) of
    it; one rank moves nothing over a link and a chip without a link figure is not judged (no %,
    not 0%)."""
    from bench.collectives import AT_LINK, judge
    assert AT_LINK == 0.80
    assert judge(360.0, 450, 2) == (pytest.approx(80.0), "at the link")
    assert judge(359.0, 450, 8) == (pytest.approx(100 * 359 / 450), "below the link")
    assert judge(4.0, 450, 2)[1] == "below the link"  # 0.9%: not "at" by a % read as a fraction
    assert judge(0.0, 450, 1) == (None, "not judged: one rank moves nothing over a link")
    assert judge(10.0, None, 4) == (None, "not judged: no datasheet link bandwidth for this device")


class _SeenRank:
    """What _blame asks of a rank process: its end and its last output line."""

    def last_output_line(self, since):
        return "rank one about to fault"

    def describe_end(self, rc):
        return f"exit code {rc}"


def _blame(events, seen):
    from types import SimpleNamespace

    from bench.collectives import CollectiveRunner
    me = SimpleNamespace(_ranks=[_SeenRank(), _SeenRank()], case_timeout=60.0)
    impl = SimpleNamespace(known_issue=None)
    return CollectiveRunner._blame(me, events, seen, 2, [0, 0], impl)


def test_a_silent_death_is_blamed_though_a_peers_error_arrived_first():
    """Rank 1 dies; rank 0's all_reduce then fails ("connection closed by peer") and says so.
    The two reach the parent in either order, or in one wait() that lists rank 0 first: the
    dead rank is the cause whenever its end is seen within DEATH_GRACE_S of the error. A death
    seen long after an error (a rank torn down by its own watchdog once its peer had raised)
    leaves the error named."""
    from bench.collectives import DEATH_GRACE_S
    events = [("error", 0, "RuntimeError: Connection closed by peer"), ("died", 1, -11)]
    got = _blame(events, [100.0, 100.0])
    assert got["status"] == "crashed" and got["error"].startswith("rank 1 died: exit code -11")
    assert _blame(events, [100.0, 100.0 + DEATH_GRACE_S / 2])["status"] == "crashed"
    late = _blame(events, [100.0, 100.0 + 2 * DEATH_GRACE_S])
    assert late == {"status": "error", "error": "rank 0: RuntimeError: Connection closed by peer"}
    said = [("error", 0, "ValueError: bad input"), ("error", 1, "RuntimeError: peer gone"),
            ("died", 1, 5)]  # rank 1 raised, then exited as a rank that raised does: not silent
    assert _blame(said, [1.0, 1.0, 1.0])["error"] == "rank 0: ValueError: bad input"


def test_the_rank_that_raised_first_is_named_whichever_message_is_read_first():
    """Rank 1 raises and exits; rank 0's all_reduce then fails at the closed connection and says
    so. Both messages can be waiting when the parent wakes, and wait() lists ready pipes in no
    set order: each rank stamps when it raised, and the earlier stamp is the cause."""
    from multiprocessing import Pipe
    from types import SimpleNamespace

    from bench.collectives import CollectiveRunner
    pipes = [Pipe(duplex=False) for _ in range(2)]
    me = SimpleNamespace(_ranks=[SimpleNamespace(rx=rx) for rx, _ in pipes])
    pipes[0][1].send(("error", 0, "RuntimeError: Connection closed by peer", 5.25))
    pipes[1][1].send(("error", 1, "RuntimeError: rank one refuses", 5.0))
    events, seen = CollectiveRunner._collect(me, 2, time.monotonic() + 30)
    assert sorted(zip(seen, events)) == [(5.0, ("error", 1, "RuntimeError: rank one refuses")),
                                         (5.25, ("error", 0, "RuntimeError: Connection closed "
                                                 "by peer"))]
    rank_order = [events.index(e) for e in sorted(events, key=lambda e: e[1])]
    for order in (rank_order, rank_order[::-1]):  # as if read rank 0 first, then rank 1 first
        got = _blame([events[i] for i in order], [seen[i] for i in order])
        assert got == {"status": "error", "error": "rank 1: RuntimeError: rank one refuses"}
    skip = [("error", 0, "RuntimeError: Connection closed by peer"),
            ("skipped", 1, "no kernel for this dtype")]
    assert _blame(skip, [7.5, 7.0]) == {"status": "skipped",
                                        "error": "rank 1: no kernel for this dtype"}


def test_the_ranks_a_run_starts_meet_without_a_tcp_store(ranks):
    """They meet through a file: a TCPStore's server looks up each peer's address for its logs,
    a DNS query on hosts whose resolver is asked before /etc/hosts, and the tool never touches
    the network. Here the ranks' torch has no TCPStore at all, and the case still runs; gloo is
    told the loopback interface (else it resolves the hostname)."""
    from bench.collectives import loopback
    src = ("import os\n"
           "import torch.distributed as dist\n"
           "def _no_tcp_store(*args, **kwargs):\n"
           "    raise RuntimeError('a TCPStore was opened')\n"
           "dist.TCPStore = _no_tcp_store\n"
           "if 'DECODEWALL_RANK_STORE' in os.environ:  # a rank, not this test's process\n"
           f"    assert os.environ.get('GLOO_SOCKET_IFNAME') == {loopback()!r}\n")
    (rec,) = ranks(src).run_case(case())
    assert rec["status"] == "ok", rec["error"]


def test_allreduce_is_checked_exactly_to_one_ulp():
    """The contributions are small integers whose sum every dtype holds exactly (up to
    max_exact_world_size), so the check is exact: tolerance 0 for every dtype the op takes. Any
    looser, and a sum off by one ulp at one element of a large message would pass."""
    op = OPS["allreduce"]
    assert set(op.dtypes) == {torch.float32, torch.float16, torch.bfloat16}
    assert {dt: op.tol(dt) for dt in op.dtypes} == {dt: 0.0 for dt in op.dtypes}
    for dt in op.dtypes:
        s = AllreduceShape(bytes=1 << 16, world_size=4)
        want = expected(s, dt)
        got = want.to(dt)
        assert rel_err(got, want) <= op.tol(dt), dt
        i = torch.tensor([7])
        got[i] = torch.nextafter(got[i], torch.full_like(got[i], float("inf")))
        assert rel_err(got, want) > op.tol(dt), dt


def _wait_ready(said: dict[int, list]):
    """CollectiveRunner._wait_ready over two live ranks that said `said[r]` and then nothing,
    with its deadline 0.3 s away."""
    from multiprocessing import Pipe
    from types import SimpleNamespace

    from bench.collectives import CollectiveRunner
    ranks, keep = [], []
    for r in range(2):
        rx, tx = Pipe(duplex=False)
        for msg in said[r]:
            tx.send(msg)
        keep.append(tx)
        ranks.append(SimpleNamespace(rx=rx, proc=SimpleNamespace(poll=lambda: None)))
    return CollectiveRunner._wait_ready(SimpleNamespace(_ranks=ranks), time.monotonic() + 0.3)


def test_a_start_past_its_bound_names_the_ranks_by_stage():
    """At the start's bound the ranks still loading (torch, the plugins) are named as not
    loaded; when every rank had loaded, those that had not joined the group are named so."""
    from bench.collectives import START_TIMEOUT_S
    assert _wait_ready({0: [("joining",)], 1: []}) == \
        f"rank(s) 1 did not load within {START_TIMEOUT_S:g} s"
    assert _wait_ready({0: [("joining",)], 1: [("joining",)]}) == \
        f"rank(s) 0, 1 did not join the group within {START_TIMEOUT_S:g} s"
    assert _wait_ready({0: [("joining",), ("ready",)], 1: [("joining",)]}) == \
        f"rank(s) 1 did not join the group within {START_TIMEOUT_S:g} s"


@pytest.mark.parametrize("env, threads", [({"WORLD_SIZE": "4"}, 2),
                                          ({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "2"}, 4)])
def test_cpu_ranks_share_this_nodes_cores(monkeypatch, env, threads):
    """A gloo rank takes the usable cores (8 here) over the ranks on this node: LOCAL_WORLD_SIZE
    where torchrun sets it (ranks on other nodes use other cores), else WORLD_SIZE."""
    import backends.cpu
    from bench.collectives import init_rank
    monkeypatch.setattr(backends.cpu, "usable_cpus", lambda: 8)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)  # no group joined
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for k, v in {"RANK": "0", **env}.items():
        monkeypatch.setenv(k, v)
    before = torch.get_num_threads()
    try:
        assert init_rank("cpu", 10.0) == "cpu"
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


FAULTS = '''
import os, time, torch
from kernels import register_impl

@register_impl("allreduce", "r1_talks", backends=["cpu"])
def r1_talks(t, group=None):
    if torch.distributed.get_rank() == 1:
        print("rank one was here", flush=True)
    torch.distributed.all_reduce(t, group=group)
    return t

@register_impl("allreduce", "r1_vanishes", backends=["cpu"], known_issue="see issue 7")
def r1_vanishes(t, group=None):
    if torch.distributed.get_rank() == 1:
        os._exit(9)
    torch.distributed.all_reduce(t, group=group)
    return t

@register_impl("allreduce", "not_here", backends=["cpu"], known_issue="see issue 8")
def not_here(t, group=None):
    raise NotImplementedError("needs NVLink")

@register_impl("allreduce", "all_hang", backends=["cpu"])
def all_hang(t, group=None):
    time.sleep(600)
'''


def test_faults_are_recorded_by_kind_and_each_leaves_a_fresh_group(ranks):
    """On one runner, in turn: a rank that dies without a word is named without what it printed
    in an earlier case, with the impl's known issue; NotImplementedError on the ranks is a skip
    (no known issue: nothing failed); ranks that all hang are a timeout, and the next case runs
    on a new group, not on the hung ranks."""
    runner = ranks(FAULTS, check_only=True, case_timeout=4)
    (r,) = runner.run_case(case(impls=("r1_talks",)))
    assert r["status"] == "ok", r["error"]
    (r,) = runner.run_case(case(impls=("r1_vanishes",)))
    assert (r["status"], r["error"]) == ("crashed", "rank 1 died: exit code 9 (see issue 7)")
    (r,) = runner.run_case(case(impls=("not_here",)))
    assert r["status"] == "skipped"
    assert r["error"] in ("rank 0: needs NVLink", "rank 1: needs NVLink")  # the first to say it
    (r,) = runner.run_case(case(impls=("all_hang",)))
    assert r["status"] == "timeout", r["error"]
    assert r["error"] == "rank(s) 0, 1 did not finish within --case-timeout 4 s; all ranks killed"
    (r,) = runner.run_case(case(impls=("torch_distributed",)))
    assert r["status"] == "ok", r["error"]
    assert r["start_s"] is not None  # a new group


def test_a_case_past_the_machine_starts_no_rank(ranks, monkeypatch):
    """A suite's case of more ranks than this machine runs is skipped before any rank process
    is started: starting them (4096 here) would load the machine for minutes before failing.
    `_start` is replaced by one that records its call, so a break fails at once, not by hang."""
    import bench.collectives
    started = []
    monkeypatch.setattr(bench.collectives.CollectiveRunner, "_start",
                        lambda self, n: started.append(n) or "not started by this test")
    (r,) = ranks(chip="h100-sxm").run_case(case(n=4096))
    assert started == [] and r["status"] == "skipped" and "world size 4096" in r["error"]


@pytest.mark.parametrize("rank, kept", [(0, 1), (1, 0)])
def test_under_torchrun_a_skipped_case_is_recorded_by_rank_0_alone(monkeypatch, rank, kept):
    """A case every rank skips (a bf16 sum past 255 ranks) is one record, rank 0's: a rank >0
    that wrote or printed its own would double the case in what the run shows. The group's
    rendezvous and its barrier are faked; the skip comes before any collective."""
    import bench.collectives as coll
    monkeypatch.setattr(coll, "_rendezvous", lambda backend, timeout: "cpu")
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: rank)
    monkeypatch.setattr(torch.distributed, "barrier", lambda: None)
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda: None)
    written: list = []
    shown: list = []

    class Writer:
        def write(self, rec):
            written.append(rec)
    assert coll.run_as_rank(context("h100-sxm"), [case(n=256, dtype=torch.bfloat16)], Writer(),
                            shown.append, 10.0) == rank
    assert len(written) == len(shown) == kept
    assert all(r["status"] == "skipped" for r in written)


@pytest.mark.parametrize("rank", ["2", "-1"])
def test_a_torchrun_rank_outside_the_world_is_refused(monkeypatch, rank):
    """RANK counts from 0 to WORLD_SIZE - 1: RANK=2 of 2 is refused in one line naming it,
    before a rendezvous that would wait for a rank that never comes."""
    from bench.collectives import torchrun_env
    for k, v in {"RANK": rank, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(ValueError, match=f"RANK={rank} is out of range 0..1"):
        torchrun_env()


def test_a_one_core_machine_still_runs_two_cpu_ranks(monkeypatch):
    """On the CPU a machine runs one rank a usable core, and at least 2 (the smoke suite's
    allreduce): a one-core container takes world size 2 and refuses 3."""
    import backends.cpu
    from bench.collectives import max_world_size, world_size_error
    monkeypatch.setattr(backends.cpu, "usable_cpus", lambda: 1)
    assert max_world_size("cpu") == 2 and world_size_error("cpu", 2) is None
    assert world_size_error("cpu", 3) == "world size 3 is more ranks than this machine runs (2)"
