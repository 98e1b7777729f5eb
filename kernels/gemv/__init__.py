"""The GEMV ops of decode: `gemv_bf16`, `gemv_w8` (INT8 weights) and `gemv_w4` (INT4 weights).

Read in this order: ops.py (the three ops: shapes, inputs, float64 references, byte counts),
pytorch.py (the PyTorch baselines), simd.py and simd.c (the CPU kernels in C), then the Triton
kernels, one a file: triton_bf16.py, triton_w8.py, triton_w4.py, and what they share in
triton_common.py. Importing this package registers the ops and every impl.
"""
from ..triton_util import HAS_TRITON
from .ops import (GemvShape, GemvW4Shape, GemvW8Shape, weight_bytes_bf16, weight_bytes_w4,
                  weight_bytes_w8)
from . import pytorch, simd  # noqa: F401  (register the PyTorch and C impls)

if HAS_TRITON:
    from . import triton_bf16, triton_w8, triton_w4  # noqa: F401  (register the Triton impls)

__all__ = ["GemvShape", "GemvW8Shape", "GemvW4Shape", "weight_bytes_bf16", "weight_bytes_w8",
           "weight_bytes_w4"]
