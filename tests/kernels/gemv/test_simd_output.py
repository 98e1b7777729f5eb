"""The C kernels write y in the caller's dtype themselves: rounding must be torch's, bit for bit."""
import platform
import shutil

import pytest
import torch

from kernels import OPS, cbuild
from kernels.gemv import simd as gemv_simd
from kernels.gemv import GemvW4Shape
from kernels.gemv import GemvW8Shape
from tests import helpers

DT = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def values() -> torch.Tensor:
    """Random magnitudes over the whole float range plus the rounding edge cases."""
    g = torch.Generator().manual_seed(0)
    rnd = torch.randn(4093, generator=g) * torch.exp2(torch.randint(-40, 40, (4093,), generator=g))
    bits = torch.tensor([0x3F808000, 0x3F818000, 0x3F80FFFF, 0x7F7FFFFF, 0x00000001, 0x33000000,
                         0x33400000, 0x38800000, 0x387FF000, 0x477FE000, 0x477FEFFF, 0x477FF000],
                        dtype=torch.int32).view(torch.float32)  # bf16/fp16 ties, limits, subnormals
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 65504.0, 65519.0, 65520.0,
                            1e-8, -3 * 2.0**-25, 2.0**-24, 5e-6])
    return torch.cat((rnd, bits, -bits, special))


def store(lib, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    out = torch.full(y.shape, 7, dtype=torch.int16).view(dtype)  # poisoned
    lib.store_out(y.data_ptr(), out.data_ptr(), y.numel(), DT[dtype])
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_store_out_rounds_like_torch(dtype, tmp_path):
    y = values()
    for lib in (gemv_simd.library(),  # AVX2/F16C vector loop and the scalar tail (numel % 8 != 0)
                helpers.build_baseline_x86(gemv_simd.library, tmp_path)):
        out = store(lib, y, dtype)
        assert torch.equal(out.view(torch.int16), y.to(dtype).view(torch.int16))
        nan = store(lib, torch.full((11,), float("nan")), dtype)
        assert nan.isnan().all()


def test_a_build_with_f16c_but_not_avx2_loads_and_rounds_like_torch(tmp_path, monkeypatch):
    """Ivy Bridge, AMD Piledriver and Jaguar have F16C without AVX2 (-march=native there, or
    ivybridge anywhere): the fp16 conversions take F16C's intrinsics, whose header must be
    included for them too, or the library does not load and every C GEMV is skipped."""
    if platform.machine() not in ("x86_64", "AMD64") or not shutil.which("cc") or \
            not {"avx", "f16c"} <= cbuild._cpu_flags(cbuild._cpuinfo()):
        pytest.skip("needs an x86-64 CPU with AVX and F16C, and a C compiler")
    monkeypatch.setenv("DECODEWALL_CACHE", str(tmp_path / "cache"))
    lib = gemv_simd.library.for_march("ivybridge")
    try:
        built = lib()
    except NotImplementedError as e:
        helpers.skip_if_machine_lacks(e)
    y = values()
    out = store(built, y, torch.float16)  # F16C's conversion, one value at a time
    assert torch.equal(out.view(torch.int16), y.to(torch.float16).view(torch.int16))
    monkeypatch.setattr(gemv_simd, "library", lib)
    for op_name, shape in (("gemv_w8", GemvW8Shape(3, 10, 96)),
                           ("gemv_w4", GemvW4Shape(1, 37, 256, 64))):
        helpers.check_impl(OPS[op_name], "simd_c", shape, torch.float16, seed=5)


@pytest.mark.parametrize("op_name, shape", [("gemv_w8", GemvW8Shape(1, 37, 256)),
                                            ("gemv_w8", GemvW8Shape(3, 10, 96)),
                                            ("gemv_w4", GemvW4Shape(1, 37, 256, 64)),
                                            ("gemv_w4", GemvW4Shape(3, 10, 256, 32))])
def test_out_dtypes(op_name, shape):
    """Every out the C can write gives the fp32 result rounded once; any other out (fp64, strided)
    still gets the answer; a wrong-shaped out is an error, not a silent broadcast."""
    op = OPS[op_name]
    x, *rest = op.make_inputs(shape, torch.bfloat16, "cpu", 3)
    fn = gemv_simd.gemv_w8 if op_name == "gemv_w8" else gemv_simd.gemv_w4
    y32 = fn(x, *rest, out=torch.full((shape.M, shape.N), float("nan")))
    assert not y32.isnan().any()
    for dt in (torch.bfloat16, torch.float16, torch.float64):
        out = torch.full((shape.M, shape.N), float("nan"), dtype=dt)
        assert fn(x, *rest, out=out) is out
        assert torch.equal(out, y32.to(dt))
    strided = torch.full((shape.N, shape.M), float("nan"), dtype=torch.bfloat16).t()
    assert torch.equal(fn(x, *rest, out=strided), y32.to(torch.bfloat16))
    new = fn(x, *rest)
    assert new.dtype == x.dtype and torch.equal(new, y32.to(x.dtype))
    with pytest.raises(ValueError, match="out must be"):
        fn(x, *rest, out=torch.empty(shape.M, shape.N + 1, dtype=torch.bfloat16))
