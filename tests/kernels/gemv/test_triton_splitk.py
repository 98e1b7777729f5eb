"""triton_w4_splitk and triton_w8_splitk (kernels/gemv/triton_splitk.py): every config against the
float64 reference with the output poisoned, under the interpreter (fp16, fp32) and on CUDA (bf16);
the workspace each call leaves zeroed; what the impls refuse."""
import pytest
import torch

from kernels import OPS
from kernels.gemv import GemvW4Shape, GemvW8Shape
from tests import helpers

triton = pytest.importorskip("triton")

W4, W8 = OPS["gemv_w4"], OPS["gemv_w8"]
F16, F32, BF16 = torch.float16, torch.float32, torch.bfloat16

# Rows past N in the last row block; G = 256 has chunks of part of a group (BLOCK_K 128 < G)
W4_SHAPES = [GemvW4Shape(1, 37, 256, 32), GemvW4Shape(3, 20, 768, 256),
             GemvW4Shape(4, 9, 256, 128), GemvW4Shape(2, 50, 192, 64)]
W8_SHAPES = [GemvW8Shape(1, 37, 208), GemvW8Shape(3, 20, 96), GemvW8Shape(4, 9, 320)]


def check(op, name, shape, dtype, device="cpu", seed=0):
    return helpers.check_impl(op, name, shape, dtype, device, seed)


def workspaces_are_zero() -> bool:
    from kernels.gemv import triton_splitk
    return all(not ws.any() for ws in triton_splitk._WORKSPACES.values())


@pytest.mark.parametrize("dtype", [F16, F32])
@pytest.mark.parametrize("shape", W4_SHAPES, ids=str)
def test_w4_interpreted(shape, dtype):
    """Two calls in a row on fresh inputs: the second adds into what the first left behind."""
    check(W4, "triton_w4_splitk", shape, dtype, seed=0)
    check(W4, "triton_w4_splitk", shape, dtype, seed=1)
    assert workspaces_are_zero()


@pytest.mark.parametrize("dtype", [F16, F32])
@pytest.mark.parametrize("shape", W8_SHAPES, ids=str)
def test_w8_interpreted(shape, dtype):
    check(W8, "triton_w8_splitk", shape, dtype, seed=0)
    check(W8, "triton_w8_splitk", shape, dtype, seed=1)
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
        lambda: check(W4, "triton_w4_splitk", GemvW4Shape(M, 20, K, G), dtype, seed=3))
    assert n == len(mod._W4_CONFIGS)


@pytest.mark.slow  # every config, interpreted: ~10 s together
@pytest.mark.parametrize("M, dtype", [(1, F16), (3, F32), (4, F16)])
def test_w8_every_config_interpreted(M, dtype, monkeypatch):
    import kernels.gemv.triton_splitk as mod
    n = helpers.check_every_config(
        monkeypatch, mod, "_w8_splitk_kernel", False,
        lambda: check(W8, "triton_w8_splitk", GemvW8Shape(M, 20, 336), dtype, seed=3))
    assert n == len(mod._W8_CONFIGS)


def test_prune_keeps_the_small_tiles_above_one_row():
    import kernels.gemv.triton_splitk as mod
    assert mod._w4_prune(mod._W4_CONFIGS, {}, M=1) == mod._W4_CONFIGS
    kept = mod._w4_prune(mod._W4_CONFIGS, {}, M=3)
    assert kept and all(mod._words_per_thread(c, 8) <= 16 for c in kept)
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
], ids=str)
def test_cuda_every_config(op, name, attr, shape, monkeypatch):
    """Every config the tuner may pick, compiled for the GPU, bf16: the tuner checks none."""
    import kernels.gemv.triton_splitk as mod
    helpers.check_every_config(monkeypatch, mod, attr, False,
                               lambda: check(op, name, shape, BF16, device="cuda", seed=4))
    assert workspaces_are_zero()


@pytest.mark.cuda
@pytest.mark.parametrize("op, name, shape", [
    (W4, "triton_w4_splitk", GemvW4Shape(1, 8192, 8192, 128)),
    (W8, "triton_w8_splitk", GemvW8Shape(2, 8192, 8192)),
], ids=str)
def test_cuda_tuned_twice(op, name, shape):
    """As the harness runs it: the tuner times every config on the shared workspace (zeroing it
    before each run), then two calls on fresh inputs, each from a zeroed workspace."""
    check(op, name, shape, BF16, device="cuda", seed=5)
    check(op, name, shape, BF16, device="cuda", seed=6)
    assert workspaces_are_zero()
