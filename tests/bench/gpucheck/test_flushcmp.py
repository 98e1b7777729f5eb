"""bench.gpucheck.flushcmp without a GPU: its CPU behaviour, and its comparison driven on the CPU
by a backend whose "flush" modes take known times."""
import json

import pytest
import torch

from backends.cpu import CPUBackend
from bench.gpucheck import flushcmp
from bench.timing import Budget
from kernels import OPS, register_impl
from tests.helpers import REPO

TINY = (("gemv_bf16", "torch_matmul", dict(M=1, N=32, K=64)),
        ("gemv_w4", "torch_dequant", dict(M=1, N=32, K=256, group_size=128)))
TIMES = {"memset": 20e-6, "read": 10e-6, "memset+read": 11e-6}


class ModeTimed(CPUBackend):
    """Runs each call; a sample "takes" TIMES[the flush mode set]."""

    def __init__(self):
        super().__init__()
        self.mode, self.modes_timed, self.modes_set = None, [], []

    def set_flush_mode(self, mode):
        self.mode = mode
        self.modes_set.append(mode)

    def time_calls(self, call, idxs, flush=True):
        assert flush
        for i in idxs:
            call(i)
        self.modes_timed.append(self.mode)
        return [TIMES[self.mode]] * len(idxs)


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(flushcmp, "BUDGET", Budget(warmup_s=0.0, min_samples=3, max_samples=6,
                                                  min_time_s=0.0, max_time_s=1.0, batch=3))


def test_compare_times_every_mode_and_reports_the_difference(quick):
    b = ModeTimed()
    res = flushcmp.compare(rounds=2, backend=b, cases=TINY)
    assert res["modes"][0] == "memset" and set(res["modes"]) == set(TIMES)
    assert [c["impl"] for c in res["cases"]] == ["torch_matmul", "torch_dequant"]
    for c in res["cases"]:
        assert "error" not in c and c["rel_err"] <= 0.02
        for m, v in c["modes"].items():
            assert v["median_s"] == pytest.approx(TIMES[m]) and len(v["round_medians_s"]) == 2
            assert v["gbps"] == pytest.approx(c["bytes"] / TIMES[m] / 1e9)
        assert c["diff_pct"] == pytest.approx({"read": -50.0, "memset+read": -45.0})
    # rounds interleave the modes; after each case the backend flushes as the environment says
    assert b.modes_set == (res["modes"] * 2 + [None]) * 2 and b.mode is None
    text = flushcmp.render(res)
    assert "-50.0% vs memset" in text and "-45.0% vs memset" in text
    json.dumps(res)


def test_a_wrong_kernel_is_reported_and_never_timed(quick):
    @register_impl("gemv_bf16", "t_flushcmp_wrong", backends=["cpu"], dtypes=["bfloat16"])
    def wrong(x, w, out=None):
        y = torch.matmul(x, w.T) * 1.1
        return y if out is None else out.copy_(y)
    try:
        b = ModeTimed()
        res = flushcmp.compare(backend=b, cases=(("gemv_bf16", "t_flushcmp_wrong",
                                                  dict(M=1, N=32, K=64)),))
    finally:
        OPS["gemv_bf16"].impls.pop("t_flushcmp_wrong")
    (c,) = res["cases"]
    assert "tolerance" in c["error"] and "modes" not in c and b.modes_timed == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible: main() would "
                    "time a real comparison, not report that there is none")
def test_without_cuda_one_line_and_exit_0(capsys):
    assert flushcmp.main([]) == 0
    out = capsys.readouterr()
    assert out.err == "" and len(out.out.strip().splitlines()) == 1 and "no CUDA" in out.out
    assert flushcmp.main(["--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["cases"] == [] and res["device"] is None


def test_dry_run_prints_the_plan(capsys):
    assert flushcmp.main(["--dry-run", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["dry_run"] and res["cases"] == [] and res["modes"] == flushcmp.modes()
    from kernels.triton_util import HAS_TRITON
    assert [p["impl"] for p in res["plan"]] == ["torch_matmul"] + ["triton_w4"] * HAS_TRITON
    assert res["plan"][0]["shape"] == dict(M=1, N=4096, K=4096)
    if HAS_TRITON:
        assert res["plan"][1]["shape"] == dict(M=1, N=57344, K=8192, group_size=128)


@pytest.mark.parametrize("argv", [["--rounds", "0"], ["--bogus"], ["--rounds", "x"]])
def test_bad_arguments_one_line_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        rc = flushcmp.main(argv)
        raise SystemExit(rc)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m bench.gpucheck.flushcmp: error:")


@pytest.mark.parametrize("given, after", [(None, "0"), ("1", "1")])
def test_importing_flushcmp_leaves_the_autotune_setting_alone(given, after):
    """Only flushcmp's own run sets DECODEWALL_AUTOTUNE=0, and only where it is not set: a
    process that imports it (pytest, the device check) and the processes it starts keep tuning,
    and a setting given to flushcmp is kept."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "DECODEWALL_AUTOTUNE"}
    if given is not None:
        env["DECODEWALL_AUTOTUNE"] = given
    code = ("import os, bench.gpucheck.flushcmp as f; a = os.environ.get('DECODEWALL_AUTOTUNE'); "
            "f.main(['--dry-run']); "
            "print(a, os.environ.get('DECODEWALL_AUTOTUNE'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-500:]
    assert r.stdout.strip().splitlines()[-1] == f"{given} {after}"


class DriftingModeTimed(ModeTimed):
    """ModeTimed whose samples take TIMES[mode] x ROUND_FACTOR[round]: each round of a mode is
    slower or faster, as drift would make it."""
    ROUND_FACTOR = (1.0, 4.0, 2.0)

    def time_calls(self, call, idxs, flush=True):
        for i in idxs:
            call(i)
        k = self.modes_set.count(self.mode) - 1
        return [TIMES[self.mode] * self.ROUND_FACTOR[k]] * len(idxs)


def test_each_mode_is_the_median_of_its_round_medians(quick):
    """A mode's figure is the median over the rounds (not the fastest round, not the mean): one
    drifted round moves it as little as it can. Here 1x, 4x and 2x a mode's time: 2x."""
    res = flushcmp.compare(rounds=3, backend=DriftingModeTimed(), cases=TINY[:1])
    (c,) = res["cases"]
    for m, v in c["modes"].items():
        assert v["round_medians_s"] == pytest.approx([TIMES[m] * f for f in (1, 4, 2)])
        assert v["median_s"] == pytest.approx(2 * TIMES[m])
    assert c["diff_pct"] == pytest.approx({"read": -50.0, "memset+read": -45.0})


def test_without_triton_the_triton_case_is_not_planned(monkeypatch):
    """On a machine without Triton the INT4 case (a Triton kernel) is left out of the plan rather
    than reported as an error at its first call; the torch case stays."""
    from kernels import triton_util
    monkeypatch.setattr(triton_util, "HAS_TRITON", False)
    assert [c["impl"] for c in flushcmp.plan()] == ["torch_matmul"]
    monkeypatch.setattr(triton_util, "HAS_TRITON", True)
    want = ["torch_matmul"] + ["triton_w4"] * ("triton_w4" in OPS["gemv_w4"].impls)
    assert [c["impl"] for c in flushcmp.plan()] == want
