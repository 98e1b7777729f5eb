"""triton_w4_splitk and triton_w8_splitk (kernels/gemv/triton_splitk.py): every config against the
float64 reference with the output poisoned, under the interpreter (fp16, fp32; the INT4 PK configs
with bf16 x through their Triton twin) and on CUDA (bf16; the PK configs also against the numpy
model of their roundings); the workspace each call leaves zeroed; what the impls refuse."""
import pytest
import torch

from kernels import OPS, rel_err
from kernels.gemv import GemvShape, GemvW4Shape, GemvW8Shape
from tests import helpers
from tests.kernels.gemv import w4_pk_model as model

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402  (visible to the jit function below)

import kernels.gemv.triton_splitk as splitk_mod  # noqa: E402

W4, W8, B16 = OPS["gemv_w4"], OPS["gemv_w8"], OPS["gemv_bf16"]
F16, F32, BF16 = torch.float16, torch.float32, torch.bfloat16

# Rows past N in the last row block; G = 256 has chunks of part of a group (BLOCK_K 128 < G)
W4_SHAPES = [GemvW4Shape(1, 37, 256, 32), GemvW4Shape(3, 20, 768, 256),
             GemvW4Shape(4, 9, 256, 128), GemvW4Shape(2, 50, 192, 64)]
W8_SHAPES = [GemvW8Shape(1, 37, 208), GemvW8Shape(3, 20, 96), GemvW8Shape(4, 9, 320)]
# K not a multiple of the chunk (a masked last chunk), rows past N in the last row block
B16_SHAPES = [GemvShape(1, 37, 200), GemvShape(3, 20, 96), GemvShape(4, 9, 1030)]


def check(op, name, shape, dtype, device="cpu", seed=0):
    return helpers.check_impl(op, name, shape, dtype, device, seed)


def workspaces_are_zero() -> bool:
    """The workspace and the row tiles' counters are all zeros again, as the next call needs."""
    from kernels.triton_split import scratch_is_zero
    return scratch_is_zero()


def test_scratch_is_as_long_as_asked_and_zero():
    """A request past the buffer's length gets a new, longer one (all zeros), not a shorter view
    that a kernel would write past; int32 counters and fp32 sums never share a buffer."""
    from kernels.triton_split import scratch
    cpu = torch.device("cpu")
    small = scratch(cpu, 8)
    big = scratch(cpu, small.untyped_storage().nbytes() // 4 + 5)
    assert big.numel() == small.untyped_storage().nbytes() // 4 + 5 and not big.any()
    counters = scratch(cpu, 8, torch.int32)
    assert counters.dtype == torch.int32 and counters.data_ptr() != scratch(cpu, 8).data_ptr()


def test_scratch_is_zero_looks_at_every_element():
    """The check the split tests end on: one stray value at the end of a buffer is seen."""
    from kernels.triton_split import scratch, scratch_is_zero
    buf = scratch(torch.device("cpu"), 1 << 14)
    assert scratch_is_zero()
    try:
        buf[-1] = 1.0
        assert not scratch_is_zero()
    finally:
        buf[-1] = 0.0
    assert scratch_is_zero()


@pytest.mark.parametrize("dtype", [F16, F32])
@pytest.mark.parametrize("op, name, shape",
                         [(W4, "triton_w4_splitk", s) for s in W4_SHAPES]
                         + [(W8, "triton_w8_splitk", s) for s in W8_SHAPES]
                         + [(B16, "triton_gemv_splitk", s) for s in B16_SHAPES],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_interpreted(op, name, shape, dtype):
    """Two calls in a row on fresh inputs: the second adds into what the first left behind."""
    check(op, name, shape, dtype, seed=0)
    check(op, name, shape, dtype, seed=1)
    assert workspaces_are_zero()


def test_w8_fp32_is_exact_to_fp32():
    """fp32 x subtracts 1 from each code's float before the product: ~1e-6 of y where the
    16-bit formula (x f - sum x per word) leaves up to ~1e-4, fp32's whole tolerance."""
    assert check(W8, "triton_w8_splitk", GemvW8Shape(2, 8, 8192), F32) < 1e-5


@pytest.mark.slow  # every config, interpreted: ~10 s together
@pytest.mark.parametrize("M, dtype, G, K", [(1, F16, 64, 640), (3, F32, 256, 768),
                                            (2, F16, 32, 160)])
def test_w4_every_config_interpreted(M, dtype, G, K, monkeypatch):
    """Every config the GPU tuner may pick, on shapes where the last chunk overruns K (whole
    groups masked), chunks hold part of a group (G = 256) and row blocks overrun N."""
    import kernels.gemv.triton_splitk as mod
    n = helpers.check_every_config(
        monkeypatch, mod, "_w4_splitk_kernel", False,
        lambda: check(W4, "triton_w4_splitk", GemvW4Shape(M, 20, K, G), dtype, seed=3),
        keep=lambda c: not c.kwargs.get("PK"))  # pruned off bf16: test_w4_pk_every_config_...
    assert n == len(mod._W4_CONFIGS) - len(pk_configs())


def pk_configs() -> list:
    import kernels.gemv.triton_splitk as mod
    return [c for c in mod._w4_splitk_kernel.configs_for(False) if c.kwargs.get("PK")]


def run_pk(shape, seed: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """triton_w4_splitk at an M = 1 bf16 shape, y kept in fp32 (no output rounding): (y, the
    float64 reference)."""
    x, qw, s, z, G = W4.make_inputs(shape, BF16, device, seed)
    out = torch.full((1, shape.N), float("nan"), dtype=F32, device=device)
    W4.impls["triton_w4_splitk"].fn(x, qw, s, z, G, out=out)
    return out.cpu().double(), W4.reference(x, qw, s, z, G).cpu()


_STEP = splitk_mod._pk_step


@triton.jit
def _first_chunk_x(acc, w_ptrs, x_ptrs, x_addr, s_ptr, z_ptr, sz, s0, s_hi, SPG: tl.constexpr,
                   NSEG: tl.constexpr, MASKED: tl.constexpr, ASM: tl.constexpr):
    """A planted bug: the PK step of every chunk reads the first chunk's x."""
    shifted = (x_ptrs[0] - s0 * 16, x_ptrs[1] - s0 * 16, x_ptrs[2] - s0 * 16, x_ptrs[3] - s0 * 16)
    return _STEP(acc, w_ptrs, shifted, x_addr, s_ptr, z_ptr, sz, s0, s_hi, SPG, NSEG, MASKED, ASM)


# K a multiple of every PK chunk (the prune's condition); rows past N in the last row block
PK_SHAPES = [GemvW4Shape(1, 20, 2048, 128), GemvW4Shape(1, 37, 2048, 32),
             GemvW4Shape(1, 9, 4096, 256)]


def test_w4_pk_every_config_interpreted(monkeypatch):
    """Every PK config through its Triton twin (fp32 sums: the only error left is fp32's), G =
    32 to 256, tiles past N, then once with a bf16 y; the workspace is left zeroed."""
    import kernels.gemv.triton_splitk as mod
    configs = pk_configs()
    assert len(configs) >= 4 and all(c.kwargs["ASM"] == 0 for c in configs)
    kernel = mod._w4_splitk_kernel
    for cfg in configs:
        monkeypatch.setattr(mod, "_w4_splitk_kernel", helpers.FixedConfig(kernel, cfg))
        for i, shape in enumerate(PK_SHAPES):
            y, ref = run_pk(shape, seed=i)
            assert rel_err(y, ref) < 1e-6, (cfg, shape, rel_err(y, ref))
        check(W4, "triton_w4_splitk", PK_SHAPES[0], BF16, seed=5)
    assert workspaces_are_zero()


def test_w4_pk_check_sees_a_wrong_chunk(monkeypatch):
    """The PK check can fail: every program reading the first chunk's x is far off."""
    import kernels.gemv.triton_splitk as mod
    monkeypatch.setattr(mod, "_w4_splitk_kernel",
                        helpers.FixedConfig(mod._w4_splitk_kernel, pk_configs()[0]))
    monkeypatch.setattr(mod, "_pk_step", _first_chunk_x)
    y, ref = run_pk(PK_SHAPES[0], seed=0)
    assert rel_err(y, ref) > 0.1
    assert workspaces_are_zero()  # wrong sums are still read back as zeros


def test_w4_prune_keeps_pk_where_it_runs_as_such():
    """PK configs are timed only at M = 1, bf16 x, K a multiple of their chunk and their chunk
    a multiple of G; elsewhere they would time their fp32 twin again."""
    import kernels.gemv.triton_splitk as mod
    n_pk = len([c for c in mod._W4_CONFIGS if c.kwargs.get("PK")])

    def kept(M, dtype, K, G):
        nargs = {"x_ptr": torch.empty(0, dtype=dtype), "K": K}
        return sum(bool(c.kwargs.get("PK")) for c in mod._w4_prune(mod._W4_CONFIGS, nargs, M=M, G=G))
    assert kept(1, BF16, 8192, 128) == n_pk
    assert kept(1, BF16, 1024 * 7, 128) == len([c for c in mod._W4_CONFIGS
                                                if c.kwargs.get("PK") and c.kwargs["BLOCK_K"] < 2048])
    assert kept(1, BF16, 512 * 3, 128) == len([c for c in mod._W4_CONFIGS
                                               if c.kwargs.get("PK") and c.kwargs["BLOCK_K"] == 512])
    assert kept(1, F16, 8192, 128) == kept(1, F32, 8192, 128) == kept(2, BF16, 8192, 128) == 0
    assert kept(1, BF16, 8192, 1024) == len([c for c in mod._W4_CONFIGS
                                             if c.kwargs.get("PK") and c.kwargs["BLOCK_K"] >= 1024])


def test_w4_pk_gets_x_on_a_16_byte_boundary():
    """The PK configs load x 16 bytes at a time: a caller's x off the boundary is copied."""
    x, qw, s, z, G = W4.make_inputs(GemvW4Shape(1, 8, 1024, 128), BF16, "cpu", 0)
    shifted = torch.empty(1025, dtype=BF16)[1:].view(1, 1024)
    shifted.copy_(x)
    assert shifted.data_ptr() % 16
    seen = []
    import kernels.gemv.triton_splitk as mod

    class Recorder:
        fixed_meta: dict = {}

        def __getitem__(self, grid):
            return lambda *args, **kw: seen.append(args[0].data_ptr())
    real = mod._w4_splitk_kernel
    try:
        mod._w4_splitk_kernel = Recorder()
        W4.impls["triton_w4_splitk"].fn(shifted, qw, s, z, G)
        W4.impls["triton_w4_splitk"].fn(x, qw, s, z, G)
    finally:
        mod._w4_splitk_kernel = real
    assert seen[0] % 16 == 0 and seen[1] == x.data_ptr()


@pytest.mark.slow  # every config, interpreted: ~10 s together
@pytest.mark.parametrize("M, dtype", [(1, F16), (3, F32), (4, F16)])
def test_w8_every_config_interpreted(M, dtype, monkeypatch):
    import kernels.gemv.triton_splitk as mod
    n = helpers.check_every_config(
        monkeypatch, mod, "_w8_splitk_kernel", False,
        lambda: check(W8, "triton_w8_splitk", GemvW8Shape(M, 20, 336), dtype, seed=3))
    assert n == len(mod._W8_CONFIGS)


@pytest.mark.slow  # every config, interpreted: ~5 s together
@pytest.mark.parametrize("M, dtype", [(1, F16), (4, F32)])
def test_bf16_every_config_interpreted(M, dtype, monkeypatch):
    import kernels.gemv.triton_splitk as mod
    n = helpers.check_every_config(
        monkeypatch, mod, "_bf16_splitk_kernel", False,
        lambda: check(B16, "triton_gemv_splitk", GemvShape(M, 20, 1100), dtype, seed=3))
    assert n == len(mod._BF16_CONFIGS)


def test_prune_keeps_the_small_tiles_above_one_row():
    import kernels.gemv.triton_splitk as mod
    nargs = {"x_ptr": torch.empty(0, dtype=BF16), "K": 8192}
    assert mod._w4_prune(mod._W4_CONFIGS, nargs, M=1, G=128) == mod._W4_CONFIGS
    kept = mod._w4_prune(mod._W4_CONFIGS, nargs, M=3, G=128)
    assert kept and all(mod.words_per_thread(c, 8) <= 16 for c in kept)
    assert len(kept) < len(mod._W4_CONFIGS)


def test_refuses_batches_above_four_and_w8_rows_not_in_16_bytes():
    x, qw, s, z, G = W4.make_inputs(GemvW4Shape(5, 8, 64, 32), F16, "cpu", 0)
    with pytest.raises(NotImplementedError, match="batch 1-4"):
        W4.impls["triton_w4_splitk"](x, qw, s, z, G)
    x, qw, s = W8.make_inputs(GemvW8Shape(5, 8, 64), F16, "cpu", 0)
    with pytest.raises(NotImplementedError, match="batch 1-4"):
        W8.impls["triton_w8_splitk"](x, qw, s)
    x, qw, s = W8.make_inputs(GemvW8Shape(1, 8, 200), F16, "cpu", 0)
    with pytest.raises(NotImplementedError, match="K % 16"):
        W8.impls["triton_w8_splitk"](x, qw, s)
    x, w = B16.make_inputs(GemvShape(5, 8, 64), F16, "cpu", 0)
    with pytest.raises(NotImplementedError, match="batch 1-4.*triton_gemv reads"):
        B16.impls["triton_gemv_splitk"](x, w)
    with pytest.raises(ValueError, match="K=64 but w has K=32"):
        B16.impls["triton_gemv_splitk"](x[:4], w[:, :32])


def test_refuses_unaligned_words():
    x, qw, s, z, G = W4.make_inputs(GemvW4Shape(1, 8, 64, 32), F16, "cpu", 0)
    shifted = torch.empty(qw.numel() + 1, dtype=torch.uint8)[1:].view(qw.shape)
    shifted.copy_(qw)
    with pytest.raises(ValueError, match="4-byte boundaries"):
        W4.impls["triton_w4_splitk"](x, shifted, s, z, G)
    with pytest.raises(ValueError, match="zeros must have x's dtype"):
        W4.impls["triton_w4_splitk"](x, qw, s, z.float(), G)


@pytest.mark.cuda
@pytest.mark.parametrize("op, name, attr, shape", [
    (W4, "triton_w4_splitk", "_w4_splitk_kernel", GemvW4Shape(1, 4096, 4096, 128)),
    (W4, "triton_w4_splitk", "_w4_splitk_kernel", GemvW4Shape(3, 1000, 2048, 32)),
    (W8, "triton_w8_splitk", "_w8_splitk_kernel", GemvW8Shape(1, 4096, 4096)),
    (W8, "triton_w8_splitk", "_w8_splitk_kernel", GemvW8Shape(3, 1000, 2048)),
    (B16, "triton_gemv_splitk", "_bf16_splitk_kernel", GemvShape(1, 4096, 4160)),
    (B16, "triton_gemv_splitk", "_bf16_splitk_kernel", GemvShape(3, 1000, 2048)),
], ids=lambda v: getattr(v, "name", str(v)))
def test_cuda_every_config(op, name, attr, shape, monkeypatch):
    """Every config the tuner may pick at the shape (the INT4 kernel's prune applied), compiled
    for the GPU, bf16: the tuner checks none."""
    import kernels.gemv.triton_splitk as mod
    from kernels.triton_util import describe
    kept = getattr(mod, attr).configs_for(False)
    if attr == "_w4_splitk_kernel":
        kept = mod._w4_prune(kept, {"x_ptr": torch.empty(0, dtype=BF16, device="cuda"),
                                    "K": shape.K},
                             M=shape.M, G=shape.group_size)
    n = helpers.check_every_config(monkeypatch, mod, attr, False,
                                   lambda: check(op, name, shape, BF16, device="cuda", seed=4),
                                   keep=lambda c: describe(c) in {describe(k) for k in kept})
    assert n == len(kept) and workspaces_are_zero()


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [GemvW4Shape(1, 4100, 8192, 128), GemvW4Shape(1, 1000, 2048, 32),
                                   GemvW4Shape(1, 777, 4096, 256)], ids=str)
def test_cuda_pk_every_config_is_the_model(monkeypatch, shape):
    """Every PK config's PTX on the GPU against the numpy model of its roundings (y in fp32):
    they differ only by the fp32 tail's roundings and summation order (~1e-7)."""
    helpers.skip_unless_pk_compiles()
    import kernels.gemv.triton_splitk as mod
    kernel = mod._w4_splitk_kernel
    x, qw, s, z, G = W4.make_inputs(shape, BF16, "cuda", 11)
    want = torch.from_numpy(model.gemv(x.cpu(), qw.cpu(), s.cpu(), z.cpu(), G))[None]
    for cfg in pk_configs():
        monkeypatch.setattr(mod, "_w4_splitk_kernel", helpers.FixedConfig(kernel, cfg))
        got, ref = run_pk(shape, 11, "cuda")
        assert rel_err(got, want) < 1e-5, (cfg, rel_err(got, want))
        assert rel_err(got.to(BF16), ref) < W4.tol(BF16)
    assert workspaces_are_zero()


@pytest.mark.cuda
@pytest.mark.parametrize("op, name, shape", [
    (W4, "triton_w4_splitk", GemvW4Shape(1, 8192, 8192, 128)),
    (W8, "triton_w8_splitk", GemvW8Shape(2, 8192, 8192)),
], ids=lambda v: getattr(v, "name", None) or str(v))
def test_cuda_tuned_twice(op, name, shape):
    """As the harness runs it: the tuner times every config on the shared workspace and
    counters, each run leaving them zeroed for the next, then two calls on fresh inputs."""
    from kernels.triton_util import AUTOTUNE
    if not AUTOTUNE:  # the device check's pytest step; its suite step checks after tuning
        pytest.skip("DECODEWALL_AUTOTUNE=0: nothing is tuned")
    check(op, name, shape, BF16, device="cuda", seed=5)
    check(op, name, shape, BF16, device="cuda", seed=6)
    assert workspaces_are_zero()


@pytest.mark.parametrize("op_name, impl_name", [
    ("gemv_bf16", "triton_gemv"), ("gemv_bf16", "triton_gemv_splitk"),
    ("gemv_w8", "triton_w8"), ("gemv_w8", "triton_w8_splitk"),
    ("gemv_w4", "triton_w4"), ("gemv_w4", "triton_w4_splitk")])
def test_weights_past_32_bit_offsets_are_refused_not_miscomputed(op_name, impl_name,
                                                                 monkeypatch):
    """The kernels' offsets are 32-bit: a weight of 2^31 elements or more (an expanded view here,
    no memory) is refused with the reason, before any launch, and before any copy of it (a
    contiguous copy of this view is 8.6 GB)."""
    from kernels import OPS
    op = OPS[op_name]
    N, K = 2**17, 2**15 + 256  # N·K/2 past 2^31: every format (int4 packs K/2 bytes a row)
    x, *ws = op.make_inputs(op.shape(M=1, N=16, K=K), torch.float16, "cpu", 0)
    big = [w[:1].expand(N, *w.shape[1:]) if isinstance(w, torch.Tensor) else w for w in ws]
    contiguous = torch.Tensor.contiguous

    def no_big_copy(t, *args, **kwargs):
        assert t.is_contiguous() or t.numel() < 2**31, "a weight it refuses was copied first"
        return contiguous(t, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "contiguous", no_big_copy)
    with pytest.raises(NotImplementedError, match="offsets in 32 bits"):
        op.impls[impl_name].fn(x, *big)
