"""The GEMV ops of decode: `gemv_bf16`, `gemv_w8` (INT8 weights) and `gemv_w4` (INT4 weights).

Read in this order: ops.py (the three ops: shapes, inputs, float64 references, byte counts),
pytorch.py (the PyTorch baselines), simd.py and simd.c (the CPU kernels in C), then the Triton
kernels, one a file: triton_bf16.py, triton_w8.py, triton_w4.py, and what they share in
triton_common.py; triton_splitk.py, a second design of each for M <= 4 (one short K chunk a
program, atomics); peers.py runs GemLite beside them (optional, imported on first use).
Importing this package registers the ops and every impl.
"""
from ..triton_util import HAS_TRITON, register_without_triton
from .ops import (GemvShape, GemvW4Shape, GemvW8Shape, weight_bytes_bf16, weight_bytes_w4,
                  weight_bytes_w8)
from . import pytorch, simd  # noqa: F401  (register the PyTorch and C impls)

# The Triton kernel behind each op's Triton impl (and, as `<op>_splitk`, the split-K design's),
# for static analysis (python -m bench.gpucheck.sass): `.jit_fn` is the @triton.jit function,
# `.configs_for(use_dot)` (bf16: `(use_dot, block_m, esize)`) the configs a launch on that path tunes
# over. Empty without Triton.
TRITON_KERNELS: dict = {}
# The Triton impls of each op, which the modules below register (a test holds the two equal).
TRITON_IMPLS = {"gemv_bf16": ("triton_gemv", "triton_gemv_splitk"),
                "gemv_w8": ("triton_w8", "triton_w8_splitk"),
                "gemv_w4": ("triton_w4", "triton_w4_splitk")}
if HAS_TRITON:
    # (importing them registers the Triton impls)
    from . import triton_bf16, triton_w8, triton_w4, triton_splitk  # noqa: F401
    TRITON_KERNELS.update(gemv_bf16=triton_bf16._gemv_kernel, gemv_w8=triton_w8._w8_kernel,
                          gemv_w4=triton_w4._w4_kernel,
                          gemv_w4_splitk=triton_splitk._w4_splitk_kernel,
                          gemv_w8_splitk=triton_splitk._w8_splitk_kernel,
                          gemv_bf16_splitk=triton_splitk._bf16_splitk_kernel)
else:  # listed all the same, and recorded skipped with the reason
    register_without_triton(TRITON_IMPLS)
from . import peers  # noqa: F401  (registers the GemLite impls; GemLite itself loads on first use)

__all__ = ["GemvShape", "GemvW8Shape", "GemvW4Shape", "TRITON_KERNELS", "weight_bytes_bf16",
           "weight_bytes_w8", "weight_bytes_w4"]
