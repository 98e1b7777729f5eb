"""The `read` probe in C for the CPU: the most a core can read, so the roof is not set too low.

Why: `Tensor.sum` reads one stream per thread. With four streams per thread, interleaved 128 bytes
at a time, the hardware prefetchers run ahead in each, and a 2-core Zen 3 guest read 23-27 GB/s
where `sum` read 20-22 (same buffer, same process). A roof from `sum` put kernels that read several
streams at once (the INT8 GEMV reads four rows) at 104-124% of it, and a harness that reports more
than its roof is wrong; bench/roofline.py takes the best probe impl.

No C copy: a copy with non-temporal stores (no write-allocate reads) moved 26-30 GB/s here,
counted read + write, more than two cores can read (~24): a roof from it would be out of reach of
every kernel that reads, which is what this tool measures. `copy` stays torch's (its
write-allocate reads uncounted), and on this box `read` sets the roof.

fp32 only (the roof is measured in fp32); other dtypes raise NotImplementedError.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from ..cbuild import CLibrary
from ..registry import register_impl

library = CLibrary("probes", Path(__file__).with_name("simd.c"), {
    "read_sum": ([ctypes.c_void_p, ctypes.c_int64, ctypes.c_int], ctypes.c_double),
})


def _check(src: torch.Tensor) -> None:
    if src.device.type != "cpu":
        raise NotImplementedError(f"the C read probe runs on the CPU, not {src.device.type}")
    if src.dtype != torch.float32:
        raise NotImplementedError(f"the C read probe takes fp32 (the roof's dtype), not {src.dtype}")
    if not src.is_contiguous():
        raise ValueError("the C read probe needs a contiguous tensor")


@register_impl("read", "simd_c", backends=("cpu",), dtypes=("float32",), kind="compiled",
               build_info=library.info)
def read_simd_c(src: torch.Tensor) -> torch.Tensor:
    """sum(src) reading four interleaved streams per thread (see the module docstring)."""
    _check(src)
    total = library().read_sum(src.data_ptr(), src.numel(), torch.get_num_threads())
    return torch.tensor(total, dtype=torch.float32)


__all__ = ["library", "read_simd_c"]
