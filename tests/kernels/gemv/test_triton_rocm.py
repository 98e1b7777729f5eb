"""The quantized Triton GEMVs under a ROCm build of torch, which calls an AMD GPU "cuda" too.

Their ASM=1 configs convert codes in inline PTX, which Triton's AMD assembler rejects with a
RuntimeError that Triton's autotuner does not skip, so one PTX config among those a launch tunes
would fail the tuning. With torch.version.hip set, every config list holds Triton twins only
(ASM=0, no PK: kernels/gemv/triton_common.py ptx_free) and every launch's prune still keeps one.
No AMD GPU is here: the kernels are imported in a process that takes torch for a ROCm build, and
their twins compiled for gfx942 (MI300X) with the AMD backend in Triton's wheel.
"""
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

triton = pytest.importorskip("triton")
from kernels.gemv.triton_common import ptx_free  # noqa: E402  (imports Triton)

_AS_ROCM = r'''
import json
import torch
torch.version.hip = "6.4.0"  # what a ROCm build of torch says, before kernels/ is imported
import kernels.gemv.triton_splitk as sk
import kernels.gemv.triton_w4 as w4
import kernels.gemv.triton_w8 as w8
from kernels.gemv.triton_common import PTX
out = {"ptx": PTX, "asm": [], "kept": {}}
lists = {"w4": w4._ALL_CONFIGS, "w8": w8._ALL_CONFIGS, "w4_splitk": sk._W4_CONFIGS,
         "w8_splitk": sk._W8_CONFIGS}
for name, configs in lists.items():
    out["asm"] += [name for c in configs if c.kwargs.get("ASM") or c.kwargs.get("PK")]
    out["kept"][name] = len(configs)
for dtype in (torch.bfloat16, torch.float16, torch.float32):
    x = torch.empty(0, dtype=dtype)
    for bm, dot in ((1, False), (2, False), (4, False), (16, True), (64, True)):
        for name, kernel, extra in (("w4", w4, {"G": 128}), ("w8", w8, {"WORDS": True})):
            n = len(kernel._prune(lists[name], {"x_ptr": x}, BLOCK_M=bm, USE_DOT=dot, **extra))
            out["kept"][f"{name} {dtype} M={bm}"] = n
    for m in (1, 2, 3, 4):
        for g in (32, 128):
            n = len(sk._w4_prune(sk._W4_CONFIGS, {"x_ptr": x, "K": 4096}, M=m, G=g))
            out["kept"][f"w4_splitk {dtype} M={m} G={g}"] = n
print(json.dumps(out))
'''


def test_a_rocm_build_tunes_no_ptx_and_every_launch_keeps_a_config():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the GPU's lists
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run([sys.executable, "-c", _AS_ROCM], capture_output=True, text=True,
                       cwd=REPO, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["ptx"] is False and got["asm"] == []
    empty = [k for k, n in got["kept"].items() if n == 0]
    assert not empty, empty
    # each ASM=1 tile became its twin once: the INT4 word tiles, PK gone
    assert got["kept"]["w4_splitk"] == 9 and got["kept"]["w8_splitk"] == 9


def test_ptx_free_swaps_ptx_for_the_twin_once_and_drops_pk():
    C = triton.Config
    configs = [C({"BLOCK_N": 16, "ASM": 1}, num_warps=4), C({"BLOCK_N": 16, "ASM": 0}, num_warps=4),
               C({"BLOCK_N": 32, "ASM": 1, "PK": 1}, num_warps=4),
               C({"BLOCK_N": 32, "ASM": 1}, num_warps=2), C({"BLOCK_N": 8}, num_warps=1)]
    assert ptx_free(configs, ptx=True) is configs
    got = [(c.kwargs, c.num_warps) for c in ptx_free(configs, ptx=False)]
    assert got == [({"BLOCK_N": 16, "ASM": 0}, 4), ({"BLOCK_N": 32, "ASM": 0}, 2),
                   ({"BLOCK_N": 8}, 1)]


_GFX942_PROBE = r'''
import json
import torch
torch.version.hip = "6.4.0"
from bench.gpucheck.sass import _plans, compile_sm, path_configs
out = {}
for op in ("gemv_w4", "gemv_w8"):
    for name, fn, types, base, aligned, _ in _plans(op, "bf16"):
        for dot in ((False, True) if not name.endswith("_splitk") else (False,)):
            const = {"BLOCK_M": 16, "USE_DOT": True} if dot else {}
            cfg = path_configs(name, dot, 16 if dot else 1)[0]
            try:
                compile_sm(fn, types, {**base, **const, **cfg.kwargs}, cfg.num_warps,
                           cfg.num_stages, aligned, arch="gfx942")
                out[f"{name} dot={dot}"] = "ok"
            except Exception as e:
                out[f"{name} dot={dot}"] = f"{type(e).__name__}: {str(e)[:300]}"
print(json.dumps(out))
'''


@pytest.mark.slow  # six real compiles for gfx942
def test_the_rocm_configs_compile_for_an_mi300x():
    """The first config each launch tunes under ROCm, compiled for gfx942: the word loop and
    tl.dot of both kernels, and both split-K kernels."""
    try:  # a GPU target Triton's wheel cannot build for here is the machine's, not the code's
        from triton.backends.amd.compiler import HIPBackend  # noqa: F401
    except Exception as e:
        pytest.skip(f"no AMD backend in this Triton: {e}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run([sys.executable, "-c", _GFX942_PROBE], capture_output=True, text=True,
                       cwd=REPO, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {k: "ok" for k in got} and len(got) == 6, got
