"""The GEMV ops of decode: `gemv_bf16`, `gemv_w8` (INT8 weights) and `gemv_w4` (INT4 weights).

Read in this order: ops.py (the three ops: shapes, inputs, float64 references, byte counts),
pytorch.py (the PyTorch baselines), simd.py and simd.c (the CPU kernels in C), then the Triton
kernels, one a file: triton_bf16.py, triton_w8.py, triton_w4.py, and what they share in
triton_common.py; peers.py runs GemLite beside them (optional, imported on first use).
Importing this package registers the ops and every impl.
"""
from ..triton_util import HAS_TRITON
from .ops import (GemvShape, GemvW4Shape, GemvW8Shape, weight_bytes_bf16, weight_bytes_w4,
                  weight_bytes_w8)
from . import pytorch, simd  # noqa: F401  (register the PyTorch and C impls)

# The Triton kernel behind each op's Triton impl, for static analysis (python -m bench.sass):
# `.jit_fn` is the @triton.jit function, `.configs_for(use_dot)` (bf16: `(use_dot, block_m)`)
# the configs a launch on that path tunes over. Empty without Triton.
TRITON_KERNELS: dict = {}
if HAS_TRITON:
    from . import triton_bf16, triton_w8, triton_w4  # noqa: F401  (register the Triton impls)
    TRITON_KERNELS.update(gemv_bf16=triton_bf16._gemv_kernel, gemv_w8=triton_w8._w8_kernel,
                          gemv_w4=triton_w4._w4_kernel)
from . import peers  # noqa: F401  (registers the GemLite impls; GemLite itself loads on first use)

__all__ = ["GemvShape", "GemvW8Shape", "GemvW4Shape", "TRITON_KERNELS", "weight_bytes_bf16",
           "weight_bytes_w8", "weight_bytes_w4"]
