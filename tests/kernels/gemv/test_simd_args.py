"""The C GEMVs get raw addresses: what reaches them must be CPU tensors of the op's shapes. The
public helpers (kernels.gemv.simd.gemv_w8, gemv_w4, gemv_bf16) check as the impls do, since a
wrong-sized scales or a device tensor would be read past its end or as host memory."""
import pytest
import torch

from kernels import OPS
from kernels.gemv import GemvShape, GemvW4Shape, GemvW8Shape
from kernels.gemv import simd
from tests.helpers import skip_if_machine_lacks

F32 = torch.float32


@pytest.fixture(scope="module", autouse=True)
def built():
    try:
        simd.library()
    except NotImplementedError as e:
        skip_if_machine_lacks(e)


def cases():
    x, q, s = OPS["gemv_w8"].make_inputs(GemvW8Shape(1, 64, 128), F32, "cpu", 0)
    yield "w8 scales short", simd.gemv_w8, (x, q, s[:1].clone()), {}
    yield "w8 qweight on meta", simd.gemv_w8, (x, q.to("meta"), s), {}
    yield "w8 out on meta", simd.gemv_w8, (x, q, s), {"out": torch.empty(1, 64, device="meta")}
    yield "w8 out too wide, strided", simd.gemv_w8, (x, q, s), {"out": torch.empty(1, 130)[:, ::2]}
    x, q, s, z, g = OPS["gemv_w4"].make_inputs(GemvW4Shape(1, 64, 128, 32), F32, "cpu", 0)
    yield "w4 zeros short", simd.gemv_w4, (x, q, s, z[:, :1].clone(), g), {}
    yield "w4 qweight too narrow", simd.gemv_w4, (x, q[:, :32].clone(), s, z, g), {}
    yield "w4 zeros on meta", simd.gemv_w4, (x, q, s, z.to("meta"), g), {}
    x, w = OPS["gemv_bf16"].make_inputs(GemvShape(1, 64, 128), F32, "cpu", 0)
    yield "bf16 w on meta", simd.gemv_bf16, (x, w.to("meta")), {}


@pytest.mark.parametrize("what, fn, args, kw", list(cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_bad_arguments_are_refused_before_the_c_sees_them(what, fn, args, kw):
    with pytest.raises(ValueError):
        fn(*args, **kw)


def test_the_impls_refuse_a_weight_on_another_device():
    x, q, s = OPS["gemv_w8"].make_inputs(GemvW8Shape(1, 64, 128), F32, "cpu", 0)
    with pytest.raises(ValueError, match="on the CPU"):
        OPS["gemv_w8"].impls["simd_c"](x, q.to("meta"), s)
