"""Each op's `host_footprint` bounds the host memory its make_inputs and float64 reference really
take: measured as the peak resident set of a fresh interpreter building one case of each op, and
not so loose that `run` would refuse cases the host can hold."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from kernels import OPS, parse_dtype
from tests.helpers import REPO

# One moderate shape per op: peaks of 40-210 MB, far above the allocator's and libraries' noise.
SHAPES = {
    "copy": (dict(N=2**22), "float32"),
    "read": (dict(N=2**22), "bfloat16"),
    # 8 slices of rows each (kernels.quant.row_slices): the quantizers and references by slice
    "gemv_bf16": (dict(M=4, N=8192, K=4096), "bfloat16"),
    "gemv_w8": (dict(M=4, N=8192, K=4096), "bfloat16"),
    "gemv_w4": (dict(M=4, N=8192, K=4096, group_size=32), "bfloat16"),
    "paged_attention": (dict(B=4, Hq=8, Hkv=2, D=128, context=4096), "bfloat16"),
    "paged_attention_kv8": (dict(B=4, Hq=8, Hkv=2, D=128, context=4096), "bfloat16"),
    "allreduce": (dict(bytes=2**22, world_size=2), "bfloat16"),
}

# Per op: warm up on a smoke shape (libraries' first-call buffers are not the case's), reset the
# peak resident set (/proc/self/clear_refs), build the inputs and the reference, and report the
# peak's growth over the resident set before the build.
MEASURE = r"""
import json, os, sys
import torch
import kernels
from kernels import OPS, parse_dtype
from kernels.collectives.ops import expected

torch.set_num_threads(2)  # per-thread scratch of a many-core machine is not the op's

def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

def build(op, shape, dtype):
    args = op.make_inputs(shape, dtype, "cpu", 0)
    # a collective's ranks compare with `expected`, the sum over the shape's world size
    return args, expected(shape, dtype) if op.collective else op.reference(*args)

try:
    open("/proc/self/clear_refs", "w").write("5")
except OSError as e:
    print(json.dumps({"skip": f"cannot reset the peak resident set: {e}"}))
    sys.exit(0)
peaks = {}
for name, (kw, dt) in json.loads(sys.argv[1]).items():
    op = OPS[name]
    build(op, *op.smoke[0])
    base = rss("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")
    kept = build(op, op.shape(**kw), parse_dtype(dt))
    peaks[name] = rss("VmHWM") - base
    del kept
print(json.dumps(peaks))
"""


@pytest.fixture(scope="module")
def peaks() -> dict[str, int]:
    if not sys.platform.startswith("linux"):
        pytest.skip("the peak resident set is read from /proc")
    # every allocation past 64 KiB is its own mapping, returned when freed, as the large tensors
    # of real cases are (glibc maps those past 32 MiB): the resident set is then what is held
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(SHAPES)], capture_output=True,
                       text=True, timeout=300, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    if "skip" in got:
        pytest.skip(got["skip"])
    return got


def test_every_builtin_op_states_and_is_measured():
    builtin = {n for n, op in OPS.items() if op.make_inputs.__module__.startswith("kernels.")}
    assert set(SHAPES) == builtin
    assert all(OPS[n].host_footprint is not None for n in builtin)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_host_footprint_bounds_the_measured_peak(peaks, name):
    op = OPS[name]
    kw, dt = SHAPES[name]
    shape, dtype = op.shape(**kw), parse_dtype(dt)
    bound = op.host_footprint_bytes(shape, dtype, "cpu")
    counted = op.host_footprint(shape, dtype, "cpu")
    peak = peaks[name]
    assert peak <= bound, f"{name}: measured {peak / 1e6:.1f} MB > bound {bound / 1e6:.1f} MB"
    assert peak >= counted / 2, f"{name}: measured {peak / 1e6:.1f} MB, counted {counted / 1e6:.1f} MB"


def test_off_the_host_is_not_counted():
    """On CUDA the GEMV reference and attention's caches live on the GPU: the host keeps less
    (a GEMV's building, the same on both, outweighs its reference past one slice of rows)."""
    w4 = OPS["gemv_w4"]
    one_slice = w4.shape(M=4, N=1024, K=2048, group_size=32)
    assert w4.host_footprint(one_slice, torch.bfloat16, "cuda") < \
        w4.host_footprint(one_slice, torch.bfloat16, "cpu") / 1.5
    op = OPS["paged_attention"]
    kw, dt = SHAPES["paged_attention"]
    shape, dtype = op.shape(**kw), parse_dtype(dt)
    assert op.host_footprint(shape, dtype, "cuda") < op.host_footprint(shape, dtype, "cpu") / 2


def test_an_op_without_a_host_footprint_gets_a_multiple_of_its_footprint(monkeypatch):
    from kernels.registry import HOST_FACTOR
    op = OPS["copy"]
    monkeypatch.setattr(op, "host_footprint", None)
    shape = op.shape(N=1000)
    assert op.host_footprint_bytes(shape, torch.float32) == \
        HOST_FACTOR * op.footprint_bytes(shape, torch.float32)


def test_a_multiple_of_the_footprint_holds_the_inputs_and_a_float64_copy(monkeypatch):
    """Without a count of its own, a bf16 op's bound takes at least its inputs (1x) and a
    float64 copy of each (4x), the least any float64 reference holds."""
    op = OPS["gemv_bf16"]
    monkeypatch.setattr(op, "host_footprint", None)
    shape = op.shape(M=1, N=64, K=64)
    assert op.host_footprint_bytes(shape, torch.bfloat16) >= \
        5 * op.footprint_bytes(shape, torch.bfloat16)


def test_the_host_margin_rounds_up(monkeypatch):
    """An op's own count takes 10% on top, rounded up to a whole byte: 15 -> 16.5 -> 17."""
    op = OPS["copy"]
    monkeypatch.setattr(op, "host_footprint", lambda s, dt, backend: 15)
    assert op.host_footprint_bytes(op.shape(N=1), torch.float32) == 17
