"""bench/gpucheck/sass.py: the static issue ceiling, and a real sm_90 compile of one config (no
GPU)."""
import os
import re
import subprocess
import sys

import pytest

from bench.gpucheck.sass import SM90_TARGET_CLOCK_HZ, SM90_TARGET_SMS, LoopCount
from tests.helpers import REPO


def test_ceiling_is_four_warp_instructions_a_clock():
    # INT4 at 4800 GB/s: 9.6e12 codes/s over 132 SMs at 1.98 GHz = 36.7 codes a clock an SM,
    # so 4 warp instructions a clock allow 0.109 a code
    budget = 4 / (4800e9 / 0.5 / (SM90_TARGET_SMS * SM90_TARGET_CLOCK_HZ))
    assert budget == pytest.approx(0.109, abs=1e-3)
    row = LoopCount("gemv_w4", "", per_code=2 * budget, loop=0, regs=None, top=[])
    assert row.ceiling_pct(4800, 0.5) == pytest.approx(50.0)
    assert LoopCount("gemv_w4", "", budget / 2, 0, None, []).ceiling_pct(4800, 0.5) == 100.0


@pytest.mark.slow  # a real sm_90 compile
@pytest.mark.parametrize("dot", [False, True], ids=["gemv", "dot"])
def test_counts_one_config_of_the_int4_kernel_for_sm90(dot):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run([sys.executable, "-m", "bench.gpucheck.sass", "--op", "gemv_w4",
                        "--configs", "1", *(["--dot"] if dot else [])],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    if r.returncode == 2 and "cannot compile for sm_90" in r.stderr:
        pytest.skip(r.stderr.strip())
    assert r.returncode == 0, r.stderr[-800:]
    assert ("M = 16, tl.dot" in r.stdout) == dot
    rows = [ln for ln in r.stdout.splitlines() if ln.strip().startswith("gemv_w4")]
    assert len(rows) == 1
    per_code = float(re.search(r"stages=\d+\s+([\d.]+)\s+ceiling", rows[0]).group(1))
    assert 0.02 < per_code < 1.0  # a loop was found
    bar, smem = map(int, re.search(r"bar (\d+) smem (\d+)", rows[0]).groups())
    assert 0 <= bar <= 64 and 0 <= smem <= 128  # per pass: a layout conversion costs ~2 and ~2
    if not dot:
        assert "FFMA" in rows[0]  # the GEMV's loop: its FMAs among the 8 commonest


def test_compile_all_walks_every_config_of_every_path(monkeypatch):
    """The enumeration alone (compiling is stubbed): each kernel's configs on each path, INT4 at
    three group sizes, INT8 GEMV on words and bytes, two dtypes; a failure is listed, not raised."""
    pytest.importorskip("triton")
    import bench.gpucheck.sass as sass
    from kernels import OPS  # noqa: F401  (registers the kernels)
    import kernels.gemv.triton_bf16 as bf
    import kernels.gemv.triton_w4 as w4
    import kernels.gemv.triton_w8 as w8
    seen = []

    def fake_compile(fn, types, const, num_warps, num_stages, aligned):
        seen.append((fn, dict(const)))
        if const.get("G") == 256 and const.get("BLOCK_N") == 128:
            raise RuntimeError("out of resources\nmore")

    monkeypatch.setattr(sass, "compile_sm90", fake_compile)
    ok, bad = sass.compile_all(("bf16", "fp32"))
    k4, k8, kb = w4._w4_kernel, w8._w8_kernel, bf._gemv_kernel
    per_dtype = (3 * (2 * len(k4.configs_for(False)) + len(k4.configs_for(True)))
                 + 2 * 2 * len(k8.configs_for(False)) + len(k8.configs_for(True))
                 + len(kb.configs_for(False, 1)) + len(kb.configs_for(False, 4))
                 + len(kb.configs_for(True, 16)))
    assert ok + len(bad) == len(seen) == 2 * per_dtype
    assert bad and all("out of resources" in b and "more" not in b for b in bad)
    assert {c["IEEE"] for _, c in seen} == {True, False}
    assert {c["BLOCK_M"] for _, c in seen} == {1, 4, 16}
