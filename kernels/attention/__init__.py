"""Paged decode attention: `paged_attention` and `paged_attention_kv8` (INT8 KV cache).

Read in this order: ops.py (the paged KV layout, inputs, float64 reference, byte count),
pytorch.py (the PyTorch impls), simd.py and simd.c (the CPU kernel in C), triton_paged.py (the
Triton kernels), peers.py (FlashInfer beside them: optional, imported on first use). Importing
this package registers the ops and every impl.
"""
from ..triton_util import HAS_TRITON, register_without_triton
from .ops import PagedAttentionShape, build_inputs, kv_bytes_per_token
from . import pytorch, simd  # noqa: F401  (register the PyTorch and C impls)

# The Triton kernels by name, for static analysis (python -m bench.gpucheck.sass): `.jit_fn` is
# the @triton.jit function (the reduction kernel is one); triton_paged's launch_plan, splits_for
# and configs_for say what a launch compiles. Empty without Triton.
TRITON_KERNELS: dict = {}
# The Triton impls of each op, which triton_paged registers (a test holds the two equal).
TRITON_IMPLS = {op: ("triton_onepass", "triton_splitkv", "triton_splitkv_fused", "triton")
                for op in ("paged_attention", "paged_attention_kv8")}
if HAS_TRITON:
    from . import triton_paged  # noqa: F401  (registers the Triton impls)
    TRITON_KERNELS.update(paged_attention=triton_paged._paged_attn_kernel.jit_fn,
                          splitkv_reduce=triton_paged._splitkv_reduce_kernel)
else:  # listed all the same, and recorded skipped with the reason
    register_without_triton(TRITON_IMPLS)
from . import peers  # noqa: F401  (registers the FlashInfer impls; FlashInfer loads on first use)

__all__ = ["PagedAttentionShape", "TRITON_KERNELS", "build_inputs", "kv_bytes_per_token"]
