"""allreduce through torch.distributed: gloo ranks started by the run itself or by torchrun, the
record contract, and ranks that crash, raise or hang."""
import json
import os
import shutil
import subprocess

import pytest
import torch

from kernels import OPS
from kernels.collectives.ops import AllreduceShape, busbw_gbps, contribution, expected
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


@pytest.mark.slow  # rank groups started six times, one of them waiting out a 12 s case timeout
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
    assert recs["r1_segfault"]["error"].startswith("rank 1 died: SIGSEGV")
    assert recs["r1_hangs"]["status"] == "timeout"
    assert recs["r1_hangs"]["error"].startswith("rank(s) 1 did not finish")
    assert recs["r1_raises"]["status"] == "error"
    assert recs["r1_raises"]["error"] == "rank 1: RuntimeError: rank one refuses"
    assert recs["drops_a_rank"]["status"] == "failed-check"
    started = [int(x.split()[1]) for x in pids.read_text().splitlines()]
    assert len(started) >= 4 and not any(alive(pid) for pid in started)


def test_a_world_size_the_machine_cannot_run_is_refused(capsys, tmp_path):
    from tests.helpers import one_error_line
    line = one_error_line(capsys, [*AR, "--shape", "bytes=8192", "--world-size", "4096",
                                   "--out", str(tmp_path)])
    assert "world size 4096 is more ranks than this machine runs" in line
    assert not list(tmp_path.iterdir())


def test_a_suite_case_past_the_machine_is_skipped_with_the_reason():
    """A suite's case (the smoke suite's 2 ranks on a 1-GPU machine) is recorded, not refused."""
    from backends import get_backend
    from bench.case import Case
    from bench.collectives import CollectiveRunner
    from bench.results import ResultWriter
    from bench.roofline import Roof
    from bench.runner import RunContext
    from bench.timing import BUDGETS
    ctx = RunContext(backend=get_backend("cpu"), roof=Roof("cpu", 1.0, 1.0, 1), chip=None,
                     device_info={"name": "test"}, budget=BUDGETS["quick"], seed=0,
                     run_id="test", command="pytest", git_commit=None, versions={})
    with CollectiveRunner(ctx, ResultWriter(None, "test")) as runner:
        (r,) = runner.run_case(Case("allreduce", AllreduceShape(bytes=8192, world_size=4096),
                                    torch.float32))
    assert r["status"] == "skipped" and "world size 4096" in r["error"]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_the_same_command_under_torchrun(tmp_path):
    out = tmp_path / "runs"
    env = dict(os.environ, PYTHONPATH=str(REPO), TRITON_INTERPRET="1")
    from bench.collectives import free_port
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
