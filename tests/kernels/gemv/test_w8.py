"""gemv_w8: byte model, reference by hand, every impl against the float64 reference."""
import os
import subprocess
import sys

import pytest
import torch

from kernels import OPS, rel_err
from tests import helpers
from kernels.gemv import GemvW8Shape
from kernels.gemv.pytorch import INT8PACK_CPU_FAULT
from tests.helpers import REPO

OP = OPS["gemv_w8"]
F16, F32, BF16 = torch.float16, torch.float32, torch.bfloat16


def check_impl(name, shape, dtype, device="cpu", seed=0, **kw):
    return helpers.check_impl(OP, name, shape, dtype, device, seed, **kw)


def test_byte_count_by_hand():
    s = GemvW8Shape(M=2, N=3, K=8)
    # x 2*8*2 + qweight 3*8*1 + scales 3*2 + y 2*3*2
    assert OP.bytes_moved(s, BF16) == 32 + 24 + 6 + 12
    assert OP.bytes_moved(s, F32) == 64 + 24 + 12 + 24
    assert OP.flops(s) == 2 * 2 * 3 * 8


def test_reference_by_hand():
    x = torch.tensor([[1.0, 2.0]])
    q = torch.tensor([[1, -2], [127, 0]], dtype=torch.int8)
    s = torch.tensor([0.5, 0.25])
    assert OP.reference(x, q, s).tolist() == [[(1 - 4) * 0.5, 127 * 0.25]]


def test_inputs_are_realistic():
    x, q, s = OP.make_inputs(GemvW8Shape(M=2, N=64, K=128), BF16, "cpu", 0)
    assert x.dtype == s.dtype == BF16 and q.dtype == torch.int8
    assert q.abs().max() == 127 and (q != 0).float().mean() > 0.9


# (1, 9, 248): the C kernel's M = 1 loop in zmm (224 weights), a ymm step (16) and a scalar tail
SHAPES = [GemvW8Shape(1, 37, 200), GemvW8Shape(1, 9, 248), GemvW8Shape(3, 50, 96),
          GemvW8Shape(7, 16, 1000), GemvW8Shape(17, 9, 64), GemvW8Shape(64, 33, 160)]
_g = torch.Generator().manual_seed(8)
SHAPES += [GemvW8Shape(int(torch.randint(1, 40, (), generator=_g)), int(torch.randint(1, 90, (), generator=_g)),
                       int(torch.randint(1, 700, (), generator=_g))) for _ in range(3)]


@pytest.mark.parametrize("name", ["torch_dequant", "simd_c"])
@pytest.mark.parametrize("dtype", [BF16, F16, F32])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cpu_impls_match_reference(name, dtype, shape):
    check_impl(name, shape, dtype)


@pytest.mark.parametrize("dtype", [BF16, F16, F32])
@pytest.mark.parametrize("shape", SHAPES + [GemvW8Shape(4, 64, 512)], ids=str)
def test_cpu_builtin_passes_but_for_its_known_bf16_fault(isolated, dtype, shape):
    """PyTorch's CPU `_weight_int8pack_mm`, in the case worker, takes every shape: fp32 and fp16
    must pass the check; bf16 crashes or answers wrongly at some shapes, which ones depending on
    the CPU (INT8PACK_CPU_FAULT), so there it may be recorded as that fault instead."""
    rec = isolated("gemv_w8", "torch_int8pack_mm", shape, dtype)
    if dtype == BF16 and rec["status"] in ("crashed", "failed-check"):
        assert rec["error"].endswith(f"({INT8PACK_CPU_FAULT})"), rec["error"]
        # PyTorch's, not our wiring's: the builtin called bare on the same inputs fails too
        assert builtin_alone(shape, rec["tolerance"]) != "ok", rec["error"]
    else:
        assert rec["status"] == "ok" and rec["correct"], (rec["status"], rec["error"])


_BARE = """
import sys, torch
from kernels import OPS
from kernels.gemv import GemvW8Shape
op = OPS["gemv_w8"]
x, q, s = op.make_inputs(GemvW8Shape(*map(int, sys.argv[1:4])), torch.bfloat16, "cpu", 0)
ref = op.reference(x, q, s)
def padded(t, fill):  # what lies around a buffer is garbage, as in a busy process: a read
    buf = torch.full((t.numel() + 2 * 65536,), fill, dtype=t.dtype)  # past it shows every time
    return buf[65536:65536 + t.numel()].view(t.shape).copy_(t)
x, q, s = padded(x, 1e30), padded(q, 127), padded(s, 1e30)
y = torch._weight_int8pack_mm(x, q, s).double()
err = ((y - ref).norm() / ref.norm()).item()
print("ok" if err <= float(sys.argv[4]) else f"wrong: {err:.3g}")
"""


def builtin_alone(shape: GemvW8Shape, tolerance: float, tries: int = 3) -> str:
    """`torch._weight_int8pack_mm` on the harness's inputs (seed 0), each in a buffer between
    runs of garbage, in a process of its own: "ok", "wrong: <rel err>", or how it died; the first
    failure of up to `tries` calls (a crash need not happen every time)."""
    for _ in range(tries):
        r = subprocess.run([sys.executable, "-c", _BARE, str(shape.M), str(shape.N), str(shape.K),
                            str(tolerance)], capture_output=True, text=True, cwd=REPO,
                           timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
        if r.returncode:
            return f"died ({r.returncode}): {(r.stderr.strip().splitlines() or [''])[-1]}"
        if r.stdout.strip().splitlines()[-1] != "ok":
            return r.stdout.strip().splitlines()[-1]
    return "ok"


def test_simd_kernel_beats_a_wrong_answer():
    """The check can fail: a corrupted weight byte is caught."""
    s = GemvW8Shape(2, 40, 256)
    x, q, sc = OP.make_inputs(s, F32, "cpu", 0)
    ref = OP.reference(x, q, sc)
    assert rel_err(OP.impls["simd_c"](x, q, sc), ref) < 1e-4  # right on the true weights
    q[5] = -q[5]
    assert rel_err(OP.impls["simd_c"](x, q, sc), ref) > 1e-2


@pytest.mark.slow  # torch.compile: seconds of compiling
@pytest.mark.parametrize("shape, dtype", [(GemvW8Shape(3, 24, 96), F32), (GemvW8Shape(1, 40, 256), BF16)],
                         ids=str)
def test_compiled_matches_reference(shape, dtype):
    check_impl("torch_compiled", shape, dtype)


@pytest.mark.parametrize("dtype", [F16, F32])
@pytest.mark.parametrize("shape", [GemvW8Shape(1, 37, 200), GemvW8Shape(5, 20, 96),
                                   GemvW8Shape(2, 37, 320)], ids=str)
@pytest.mark.parametrize("split_k", [None, 2])
def test_triton_interpreted(dtype, shape, split_k):
    pytest.importorskip("triton")
    check_impl("triton_w8", shape, dtype, split_k=split_k)
    from kernels.triton_split import scratch_is_zero  # the split's workspace and counters are
    assert scratch_is_zero()  # zero again for the next call


def test_triton_fp32_words_keep_fp32_precision():
    """fp32 x on the word path (M <= 4, K % 16 == 0) takes f - 1 exactly: x f - sum x rounds at
    2^-16 of the sum (median 4.6e-5 at K = 4096, a fraction of the 1e-4 tolerance, past it at
    small N); the split kernel's fp32 sits near 5e-7."""
    pytest.importorskip("triton")
    errs = [check_impl("triton_w8", GemvW8Shape(1, 16, 4096), F32, seed=s) for s in range(3)]
    assert max(errs) < 5e-6, errs


def test_triton_unaligned_weights_take_the_byte_path():
    """A weight view that does not start on a 16-byte boundary is read a byte at a time."""
    pytest.importorskip("triton")
    x, q, s = OP.make_inputs(GemvW8Shape(2, 24, 64), F16, "cpu", 2)
    shifted = torch.empty(q.numel() + 1, dtype=torch.int8)[1:].view(q.shape)
    shifted.copy_(q)
    out = torch.full((2, 24), float("nan"), dtype=F16)
    OP.impls["triton_w8"](x, shifted, s, out=out)
    assert rel_err(out, OP.reference(x, q, s)) < OP.tol(F16)


@pytest.mark.slow
@pytest.mark.parametrize("M, split_k", [(1, None), (3, None), (6, None), (1, 2)])
def test_triton_every_config_interpreted(M, split_k, monkeypatch):
    """Every config the GPU tuner may pick (here: those without PTX; at M = 1 the accumulator in
    the words' layout, X3D), on 32-bit words (K % 16 == 0) with steps that overrun K and rows
    that overrun N; M = 6 takes tl.dot; with split-K too."""
    pytest.importorskip("triton")
    import kernels.gemv.triton_w8 as mod
    shape = GemvW8Shape(M, 20, 640)
    helpers.check_every_config(
        monkeypatch, mod, "_w8_kernel", M > 4,
        lambda: check_impl("triton_w8", shape, F16, seed=3, split_k=split_k))


@pytest.mark.parametrize("K, msg", [(0, "K must be a positive"), (-3, "K must be a positive")])
def test_bad_shapes(K, msg):
    with pytest.raises(ValueError, match=msg):
        OP.shape(M=1, N=4, K=K)


def test_mismatched_arguments():
    x, q, s = OP.make_inputs(GemvW8Shape(1, 8, 32), F32, "cpu", 0)
    with pytest.raises(ValueError, match="scales must have x's dtype"):
        OP.impls["simd_c"](x, q, s.half())
    with pytest.raises(ValueError, match="qweight must be int8"):
        OP.impls["simd_c"](x, q[:, :16].contiguous(), s)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["triton_w8", "torch_int8pack_mm", "torch_dequant"])
@pytest.mark.parametrize("dtype", [BF16, F16])
@pytest.mark.parametrize("shape", [GemvW8Shape(1, 4096, 4096), GemvW8Shape(16, 1000, 2048),
                                   GemvW8Shape(3, 37, 200), GemvW8Shape(64, 512, 512)], ids=str)
def test_cuda_impls(name, dtype, shape):
    try:
        check_impl(name, shape, dtype, device="cuda")
    except NotImplementedError as e:
        if name.startswith("triton"):  # ours takes every case here; a builtin may refuse one
            raise
        pytest.skip(str(e))


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [GemvW8Shape(1, 1000, 4096), GemvW8Shape(3, 37, 2048),
                                   GemvW8Shape(16, 1000, 4096)], ids=str)
def test_cuda_split_k(shape):
    """K split on the GPU on both paths (at these test shapes the policy splits only tl.dot's)."""
    helpers.check_split_k(check_impl, "triton_w8", shape)


@pytest.mark.cuda
@pytest.mark.parametrize("use_dot", [False, True])
def test_cuda_every_config(use_dot, monkeypatch):
    """Every config the tuner may pick, compiled for the GPU, bf16: the tuner checks none."""
    import kernels.gemv.triton_w8 as mod
    shape = GemvW8Shape(16, 1000, 2048) if use_dot else GemvW8Shape(1, 4096, 4096)
    helpers.check_every_config(monkeypatch, mod, "_w8_kernel", use_dot,
                               lambda: check_impl("triton_w8", shape, BF16, device="cuda", seed=4))


@pytest.mark.cuda
@pytest.mark.slow
def test_cuda_compiled():
    """torch.compile on CUDA, one shape (tens of seconds of compiling: not in the device check)."""
    check_impl("torch_compiled", GemvW8Shape(1, 4096, 4096), BF16, device="cuda")


def test_reference_dequantizes_in_float64_not_in_the_scales_dtype():
    """The reference is the float64 truth every impl is judged against: W = q * s must be formed
    in float64. bf16 scales times int8 codes are mostly not bf16 numbers (127 * (1 + 2^-7) needs
    14 significant bits), so a reference that rounded W to the scales' dtype would be off by up
    to half a bf16 ulp per weight and would pass a kernel that makes the same rounding."""
    x = torch.tensor([[1.0, -0.5, 0.25, 2.0], [0.75, 1.5, -1.0, 0.125]], dtype=BF16)
    q = torch.tensor([[127, -127, 101, 3], [-77, 55, 127, -101]], dtype=torch.int8)
    s = torch.tensor([1 + 2**-7, 0.01171875 + 2**-14], dtype=BF16)  # both exact in bf16
    assert s.double().tolist() == [1 + 2**-7, 0.01171875 + 2**-14]
    xs, qs, ss = x.double().tolist(), q.tolist(), s.double().tolist()
    w = [[c * ss[n] for c in qs[n]] for n in range(2)]
    w_bf16 = torch.tensor(w, dtype=torch.float64).to(BF16).double()
    assert not torch.equal(w_bf16, torch.tensor(w, dtype=torch.float64))  # the case is not moot
    want = torch.tensor([[sum(xm[k] * w[n][k] for k in range(4)) for n in range(2)] for xm in xs],
                        dtype=torch.float64)
    got = OP.reference(x, q, s)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
