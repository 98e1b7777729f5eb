"""gemv_bf16: reference and byte count by hand, shapes, inputs, every impl against the reference."""
import pytest
import torch

from kernels import OPS, rel_err
from kernels.gemv import GemvShape


def test_gemv_reference_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0]])
    w = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    y = OPS["gemv_bf16"].reference(x, w)
    assert y.dtype == torch.float64
    assert y.tolist() == [[1.0 - 3.0, 0.5 + 1.0 + 1.5]]


def test_byte_and_flop_counts():
    op = OPS["gemv_bf16"]
    s = GemvShape(M=2, N=3, K=4)
    assert op.bytes_moved(s, torch.bfloat16) == (2 * 4 + 3 * 4 + 2 * 3) * 2
    assert op.bytes_moved(s, torch.float32) == (2 * 4 + 3 * 4 + 2 * 3) * 4
    assert op.flops(s) == 2 * 2 * 3 * 4


@pytest.mark.parametrize("kw, msg", [
    (dict(M=0, N=4, K=4), "M must be a positive"),
    (dict(M=1, N=4, K=-1), "K must be a positive"),
    (dict(M=5000, N=4, K=4), "not a decode batch"),
])
def test_impossible_gemv_shapes(kw, msg):
    with pytest.raises(ValueError, match=msg):
        OPS["gemv_bf16"].shape(**kw)


def test_inputs_are_fresh_random_and_seeded():
    op = OPS["gemv_bf16"]
    s = GemvShape(M=2, N=8, K=16)
    a = op.make_inputs(s, torch.float32, "cpu", 1)
    b = op.make_inputs(s, torch.float32, "cpu", 1)
    c = op.make_inputs(s, torch.float32, "cpu", 2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[1], c[1])
    assert (a[1] != 0).float().mean() > 0.99  # never zeros


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("M,N,K", [(1, 70, 200), (3, 33, 64), (7, 50, 130), (20, 17, 96)])
def test_triton_gemv_interpreted(M, N, K, dtype):
    from kernels.triton_util import HAS_TRITON, INTERPRET
    if not (HAS_TRITON and INTERPRET):
        pytest.skip("needs triton under TRITON_INTERPRET=1")
    op = OPS["gemv_bf16"]
    x, w = op.make_inputs(GemvShape(M, N, K), dtype, "cpu", 3)
    out = torch.full((M, N), float("nan"), dtype=dtype)
    op.impls["triton_gemv"](x, w, out=out)
    assert rel_err(out, op.reference(x, w)) <= op.tol(dtype)


def _gemv_check(shape, dtype, device):
    from tests.helpers import check_impl
    return lambda: check_impl(OPS["gemv_bf16"], "triton_gemv", shape, dtype, device, seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("use_dot", [False, True])
def test_triton_gemv_every_config_interpreted(use_dot, monkeypatch):
    """Every config the GPU tuner may pick, on steps that overrun K and rows that overrun N."""
    from kernels.triton_util import HAS_TRITON, INTERPRET
    if not (HAS_TRITON and INTERPRET):
        pytest.skip("needs triton under TRITON_INTERPRET=1")
    import kernels.gemv.triton_bf16 as mod
    from tests.helpers import check_every_config
    check_every_config(monkeypatch, mod, "_gemv_kernel", use_dot,
                       _gemv_check(GemvShape(6 if use_dot else 1, 20, 1100), torch.float16, "cpu"))


def test_torch_impls_against_reference_all_dtypes():
    op = OPS["gemv_bf16"]
    for dtype in op.dtypes:
        x, w = op.make_inputs(GemvShape(3, 40, 96), dtype, "cpu", 5)
        out = torch.full((3, 40), float("nan"), dtype=dtype)
        op.impls["torch_matmul"](x, w, out=out)
        assert rel_err(out, op.reference(x, w)) <= op.tol(dtype)


def test_dot_configs_fit_shared_memory():
    """tl.dot at 16-64 rows: the configs kept fit sm_90's shared memory by the model (an sm_90
    compile agrees: test_sass) and wider tiles are dropped at 64 rows, so the first config (what
    DECODEWALL_AUTOTUNE=0 runs) fits too."""
    tb = pytest.importorskip("kernels.gemv.triton_bf16")
    from kernels.common import SM90_SMEM_BYTES
    for bm in (16, 32, 64):
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            es = torch.empty(0, dtype=dtype).element_size()
            kept = tb.configs_for(True, bm, es)
            assert kept and all(tb._dot_smem(c, bm, es) <= SM90_SMEM_BYTES for c in kept)
            nargs = {"x_ptr": torch.empty(1, dtype=dtype)}
            assert tb._prune(tb._CONFIGS, nargs, USE_DOT=True, BLOCK_M=bm) == kept
    # By hand, 3 stages of a [rows, BLOCK_K] x tile and a [BLOCK_N, BLOCK_K] w tile against
    # sm_90's 232448 B (227 KiB) a block. 64 rows of bf16: 64 x 256 takes 3*(64+64)*256*2 =
    # 196608 B, 64 x 128 98304, 32 x 128 73728; 16 x 512 takes 3*(64+16)*512*2 = 245760 and
    # 32 x 512 294912, too much. 16 rows of fp32: 16 x 512 takes 3*(16+16)*512*4 = 196608,
    # 64 x 128 122880, 32 x 128 73728; 64 x 256 takes 245760, 32 x 512 294912, 16 x 1024 393216.
    tiles = lambda cs: {(c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]) for c in cs}  # noqa: E731
    assert tiles(tb.configs_for(True, 64, 2)) == {(64, 256), (64, 128), (32, 128)}
    assert tiles(tb.configs_for(True, 16, 4)) == {(16, 512), (64, 128), (32, 128)}
    assert tiles(tb._path(tb._CONFIGS, True, 64, 2, 50_000)) == {(32, 128)}  # none fits: the smallest
    nargs = {"x_ptr": torch.empty(1, dtype=torch.bfloat16)}
    assert tb._prune(tb._CONFIGS, nargs, USE_DOT=False, BLOCK_M=1) == tb.configs_for(False, 1)
    assert all(c.kwargs["BLOCK_K"] > 128 for c in tb.configs_for(False, 1))  # dot-only tiles


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("M,N,K", [(1, 4096, 4096), (5, 1000, 3000), (16, 6144, 4096), (64, 512, 8192)])
def test_triton_gemv_cuda(M, N, K, dtype):
    op = OPS["gemv_bf16"]
    x, w = op.make_inputs(GemvShape(M, N, K), dtype, "cuda", 7)
    out = torch.full((M, N), float("nan"), dtype=dtype, device="cuda")
    op.impls["triton_gemv"](x, w, out=out)
    assert rel_err(out, op.reference(x, w)) <= op.tol(dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("use_dot", [False, True])
def test_triton_gemv_every_config_cuda(use_dot, monkeypatch):
    """Every config the tuner may pick, compiled for the GPU, bf16: the tuner checks none."""
    import kernels.gemv.triton_bf16 as mod
    from tests.helpers import check_every_config
    # K past every BLOCK_K by 64 (a masked last step); N and K multiples of 16, as the suite's
    # are, so that the suite's tuning can find these compiles in Triton's cache
    shape = GemvShape(16, 1000, 3000) if use_dot else GemvShape(1, 4096, 4160)
    check_every_config(monkeypatch, mod, "_gemv_kernel", use_dot,
                       _gemv_check(shape, torch.bfloat16, "cuda"))


# M = 1 and M > 1 (tiles of 4 x rows, then single ones), N past the last 4-row tile, K with a tail
# past the vector loop (32 in zmm, 16 in ymm), and one 8192-wide row (prefetches past the end).
SIMD_SHAPES = [GemvShape(1, 256, 512), GemvShape(1, 37, 200), GemvShape(1, 13, 1000),
               GemvShape(3, 50, 96), GemvShape(5, 20, 33), GemvShape(4, 7, 64),
               GemvShape(9, 130, 4096), GemvShape(1, 3, 8192)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", SIMD_SHAPES, ids=str)
def test_simd_c_matches_reference(shape, dtype):
    from tests.helpers import check_impl
    check_impl(OPS["gemv_bf16"], "simd_c", shape, dtype, seed=4)


def test_simd_c_beats_a_wrong_answer():
    """The check can fail: a weight row dropped (rows past the last tile) is caught."""
    op = OPS["gemv_bf16"]
    x, w = op.make_inputs(GemvShape(1, 13, 256), torch.float32, "cpu", 0)
    ref = op.reference(x, w)
    y = op.impls["simd_c"](x, w)
    assert rel_err(y, ref) <= op.tol(torch.float32)
    y[0, 12] = 0.0
    assert rel_err(y, ref) > op.tol(torch.float32)


def test_simd_c_refuses_mismatched_weights():
    from kernels.gemv import simd as gemv_simd
    x = torch.ones(1, 64, dtype=torch.bfloat16)
    with pytest.raises(NotImplementedError, match="x's dtype"):
        gemv_simd.gemv_bf16(x, torch.ones(8, 64, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"w must be \[N, 64\]"):
        gemv_simd.gemv_bf16(x, torch.ones(8, 32, dtype=torch.bfloat16))


def test_simd_c_scalar_fallback_without_avx2(tmp_path):
    """The C source built for a baseline x86-64 (no AVX2/F16C) computes the same, in every dtype."""
    from kernels.gemv import simd as gemv_simd
    from tests import helpers
    lib = helpers.build_baseline_x86(gemv_simd.library, tmp_path)
    op = OPS["gemv_bf16"]
    for shape in (GemvShape(1, 13, 200), GemvShape(5, 9, 96)):
        for dtype, code in ((torch.float32, 0), (torch.bfloat16, 1), (torch.float16, 2)):
            x, w = op.make_inputs(shape, dtype, "cpu", 2)
            y = torch.full((shape.M, shape.N), float("nan"))
            scratch = torch.empty(shape.M * ((shape.K + 31) // 32 * 32))
            assert lib.gemv_bf16(x.data_ptr(), code, shape.M, shape.K, w.data_ptr(), shape.N,
                                 y.data_ptr(), scratch.data_ptr(), 1, y.data_ptr(), 0) == 0
            assert rel_err(y, op.reference(x, w)) <= op.tol(torch.float32), (shape, dtype)
