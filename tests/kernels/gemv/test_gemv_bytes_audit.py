"""GEMV byte and FLOP counts pinned by hand from the formats (docs/kernels.md, "Formats").

Per case: x read (M*K) and y written (M*N) in x's dtype; the weight once whatever M: bf16 N*K
elements in x's dtype, INT8 N*K bytes + N scales, INT4 N*K/2 bytes + N*K/G scales and as many
zeros, scales and zeros in x's dtype. Numbers are worked out in the comments.
"""
from __future__ import annotations

import pytest
import torch

from bench.model.workload import weight_bytes
from kernels import OPS

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


@pytest.mark.parametrize("op, kw, dtype, expect", [
    # x 3*7*2 = 42, w 5*7*2 = 70, y 3*5*2 = 30
    ("gemv_bf16", dict(M=3, N=5, K=7), F16, 142),
    ("gemv_bf16", dict(M=3, N=5, K=7), BF16, 142),
    ("gemv_bf16", dict(M=3, N=5, K=7), F32, 284),
    # x 17*2 = 34, codes 13*17 = 221, scales 13*2 = 26, y 13*2 = 26
    ("gemv_w8", dict(M=1, N=13, K=17), BF16, 307),
    # fp32: x 68, codes 221, scales 52, y 52
    ("gemv_w8", dict(M=1, N=13, K=17), F32, 393),
    # M=4: x 4*17*2 = 136, codes 221 (once), scales 26, y 4*13*2 = 104
    ("gemv_w8", dict(M=4, N=13, K=17), BF16, 487),
    # x 5*96*2 = 960, codes 7*48 = 336, scales 7*3*2 = 42, zeros 42, y 5*7*2 = 70
    ("gemv_w4", dict(M=5, N=7, K=96, group_size=32), F16, 1450),
    # fp32: x 1920, codes 336, scales 84, zeros 84, y 140
    ("gemv_w4", dict(M=5, N=7, K=96, group_size=32), F32, 2564),
    # one group a row: x 512, codes 9*128 = 1152, scales 18, zeros 18, y 18
    ("gemv_w4", dict(M=1, N=9, K=256, group_size=256), BF16, 1718),
    # x 64*512*2 = 65536, codes 17*256 = 4352, scales 17*4*2 = 136, zeros 136, y 64*17*2 = 2176
    ("gemv_w4", dict(M=64, N=17, K=512, group_size=128), BF16, 72336),
    ("gemv_w4", dict(M=1, N=17, K=512, group_size=128), BF16, 5682),
])
def test_bytes_by_hand(op, kw, dtype, expect):
    assert OPS[op].bytes_moved(OPS[op].shape(**kw), dtype) == expect


def test_flops_by_hand():
    assert OPS["gemv_bf16"].flops(OPS["gemv_bf16"].shape(M=3, N=5, K=7)) == 210
    assert OPS["gemv_w4"].flops(OPS["gemv_w4"].shape(M=5, N=7, K=96, group_size=32)) == 6720


@pytest.mark.parametrize("kw", [dict(K=96, group_size=64), dict(K=33, group_size=32)])
def test_int4_shapes_the_format_cannot_hold_are_refused(kw):
    """K must be a multiple of G (and so even): no partial group to count."""
    with pytest.raises(ValueError):
        OPS["gemv_w4"].shape(M=1, N=8, **kw)


def test_workload_weight_bytes_by_hand():
    """The model projection's per-weight bytes (bf16 activations): 17 x 512."""
    assert weight_bytes(17, 512, "bf16") == 17408            # 17*512*2
    assert weight_bytes(17, 512, "int8") == 8704 + 34         # codes + 17 bf16 scales
    assert weight_bytes(17, 512, "int4", 128) == 4352 + 272   # codes + 2 * 17*4 * 2


@pytest.mark.parametrize("op", ["gemv_bf16", "gemv_w8", "gemv_w4"])
@pytest.mark.parametrize("dtype", [F32, F16, BF16])
@pytest.mark.parametrize("M, N, K", [(1, 13, 64), (5, 7, 96), (64, 17, 512)])
def test_bytes_match_the_tensors_built(op, dtype, M, N, K):
    """A GEMV reads every input whole and writes y: the count is the sum of their sizes."""
    o = OPS[op]
    s = o.shape(M=M, N=N, K=K, **({"group_size": 32} if op == "gemv_w4" else {}))
    args = o.make_inputs(s, dtype, "cpu", 0)
    (out_shape, out_dtype) = o.out_spec(s, dtype)
    want = sum(t.numel() * t.element_size() for t in args if isinstance(t, torch.Tensor))
    want += torch.empty(out_shape, dtype=out_dtype).numel() * out_dtype.itemsize
    assert o.bytes_moved(s, dtype) == want
