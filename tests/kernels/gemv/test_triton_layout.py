"""The Triton GEMVs index their tensors as row * row stride + column and scales and zeros by one
row stride: a caller's strided tensor (a column-major weight, scales and zeros that are views of
one interleaved tensor, a row stride the 32-bit words cannot follow, a strided or wrong `out`)
gets the reference's answer or a ValueError, never a misread one. Interpreted on the CPU."""
import pytest
import torch

from kernels import OPS, rel_err
from kernels.gemv import GemvShape, GemvW4Shape, GemvW8Shape
from kernels.triton_util import HAS_TRITON

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="no Triton")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
F16 = torch.float16


def _padded(t: torch.Tensor, extra: int) -> torch.Tensor:
    """t as the first columns of a wider tensor: its rows `extra` elements apart more."""
    big = torch.zeros(t.shape[0], t.shape[1] + extra, dtype=t.dtype)
    big[:, :t.shape[1]] = t
    return big[:, :t.shape[1]]


def _pair_views(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a and b as views of one [N, G, 2] tensor: same shape, strides (2G, 2), not a's own."""
    both = torch.stack([a, b], dim=-1)
    return both[..., 0], both[..., 1]


def w8_variants(x, q, s):
    yield "scales strided", (x, q, torch.stack([s, s], 1)[:, 0])
    yield "qweight column-major", (x, q.t().contiguous().t(), s)
    yield "qweight row stride 65", (x, _padded(q, 1), s)


def w4_variants(x, q, s, z, g):
    yield "scales and zeros interleaved", (x, q, *_pair_views(s, z), g)
    yield "zeros column-major", (x, q, s, z.t().contiguous().t(), g)
    yield "qweight row stride 33", (x, _padded(q, 1), s, z, g)


CASES = [("gemv_w8", GemvW8Shape(M=1, N=24, K=64), w8_variants),
         ("gemv_w8", GemvW8Shape(M=6, N=24, K=64), w8_variants),
         ("gemv_w4", GemvW4Shape(M=1, N=24, K=128, group_size=32), w4_variants),
         ("gemv_w4", GemvW4Shape(M=6, N=24, K=128, group_size=32), w4_variants)]


def ours(op):
    """Our Triton impls of the op (a peer's, GemLite's, has its own layout rules)."""
    return [(n, i) for n, i in op.impls.items() if i.kind == "triton" and not i.baseline]


def _run(impl, args):
    out = torch.full((args[0].shape[0], args[1].shape[0]), float("nan"), dtype=F16, device=DEV)
    impl(*[a.to(DEV) if isinstance(a, torch.Tensor) else a for a in args], out=out)
    return out.cpu()


@pytest.mark.parametrize("op_name, shape, variants", CASES,
                         ids=[f"{o}-M{s.M}" for o, s, _ in CASES])
def test_strided_weights_are_read_right_or_refused(op_name, shape, variants):
    op = OPS[op_name]
    base = op.make_inputs(shape, F16, "cpu", 3)
    triton = ours(op)
    assert len(triton) == 2
    for what, args in variants(*base):
        assert any(isinstance(a, torch.Tensor) and not a.is_contiguous() for a in args), what
        ref = op.reference(*args)
        for name, impl in triton:
            try:
                out = _run(impl, args)
            except NotImplementedError:  # the splitk impls above M = 4
                continue
            except ValueError:
                continue
            assert rel_err(out, ref) <= op.tol(F16), f"{name}, {what}"


@pytest.mark.parametrize("op_name, shape", [
    ("gemv_bf16", GemvShape(M=2, N=24, K=64)), ("gemv_w8", GemvW8Shape(M=2, N=24, K=64)),
    ("gemv_w4", GemvW4Shape(M=2, N=24, K=128, group_size=32))], ids=str)
def test_an_out_the_kernels_cannot_store_into_is_refused(op_name, shape):
    op = OPS[op_name]
    args = [a.to(DEV) if isinstance(a, torch.Tensor) else a
            for a in op.make_inputs(shape, F16, "cpu", 1)]
    M, N = shape.M, shape.N
    bad = {"too small": torch.empty(M, N - 1, dtype=F16, device=DEV),
           "not a float": torch.empty(M, N, dtype=torch.int32, device=DEV),
           "strided rows": torch.empty(M, 2 * N, dtype=F16, device=DEV)[:, ::2]}
    for name, impl in ours(op):
        for what, out in bad.items():
            with pytest.raises(ValueError, match="out"):
                impl(*args, out=out)


def test_triton_gemv_refuses_a_weight_of_another_dtype():
    x = torch.randn(2, 64, dtype=F16, device=DEV)
    w = torch.randn(24, 64, dtype=torch.float32, device=DEV)
    for name, impl in ours(OPS["gemv_bf16"]):
        with pytest.raises(ValueError, match="dtype"):
            impl(x, w)
