"""Bandwidth probes `copy` and `read`: the measured memory roof every other op is judged against.

`copy` moves N elements in and N out (bytes = read + write; write-allocate traffic on CPUs is not
counted, so a CPU copy may look slower than a read). `read` only reads, reducing to one scalar
(its 4 bytes counted too).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..common import check_out, esize
from ..registry import Op, register_impl, register_op

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


@dataclass(frozen=True)
class ProbeShape:
    N: int  # elements

    def __post_init__(self) -> None:
        if self.N < 1:
            raise ValueError(f"N must be positive, got {self.N}")
        if self.N > 2**34:
            raise ValueError(f"N={self.N} elements is larger than any device memory")


def make_inputs(shape: ProbeShape, dtype: torch.dtype, device, seed: int) -> tuple:
    g = torch.Generator(device="cpu").manual_seed(seed)
    # Uniform [0.5, 1.5): a sum of these cannot cancel, so relative error stays meaningful.
    src = (torch.rand(shape.N, generator=g, dtype=torch.float32) + 0.5).to(dtype)
    return (src.to(device),)


def host_footprint(s: ProbeShape, dtype: torch.dtype, backend: str, ref_copies: int) -> int:
    """Host bytes that `make_inputs` and a probe's float64 reference hold at their peak: src is
    drawn in fp32 on the host and shifted (8 bytes an element; its dtype copy comes after the
    draw is freed); the reference holds src (off CUDA) and `ref_copies` float64 copies of it."""
    held = s.N * esize(dtype) if backend != "cuda" else 0
    return max(8 * s.N, held + 8 * ref_copies * s.N)


# --- copy -------------------------------------------------------------------------------------

def copy_reference(src: torch.Tensor) -> torch.Tensor:
    return src.detach().to("cpu", torch.float64).clone()


copy = register_op(Op(
    name="copy",
    shape_type=ProbeShape,
    make_inputs=make_inputs,
    reference=copy_reference,
    bytes_moved=lambda s, dt: 2 * s.N * esize(dt),
    flops=lambda s: 0,
    out_spec=lambda s, dt: ((s.N,), dt),
    host_footprint=lambda s, dt, b: host_footprint(s, dt, b, ref_copies=2),  # float64, cloned
    tolerance={F32: 0.0, F16: 0.0, BF16: 0.0},
    dtypes=(F32, F16, BF16),
    doc="dst = src: bandwidth probe, bytes = read + write",
    smoke=((ProbeShape(N=1 << 16), F32),),
))


@register_impl("copy", "torch_copy", backends=("cpu", "cuda", "xla"), kind="torch", baseline=True)
def torch_copy(src: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Tensor.copy_ into a preallocated buffer."""
    if out is None:
        return src.clone()
    check_out("torch_copy", out, tuple(src.shape), src.device, (src.dtype,))  # copy_ would cast
    return out.copy_(src)


# --- read -------------------------------------------------------------------------------------

def read_reference(src: torch.Tensor) -> torch.Tensor:
    return src.detach().to("cpu", torch.float64).sum()


read = register_op(Op(
    name="read",
    shape_type=ProbeShape,
    make_inputs=make_inputs,
    reference=read_reference,
    bytes_moved=lambda s, dt: s.N * esize(dt) + 4,  # src read, the fp32 sum written
    flops=lambda s: s.N,
    out_spec=lambda s, dt: ((), torch.float32),
    footprint=lambda s, dt: s.N * esize(dt) + 4,  # src and the fp32 sum
    host_footprint=lambda s, dt, b: host_footprint(s, dt, b, ref_copies=1),  # summed in float64
    # the sum accumulates in fp32 whatever the input dtype (a bf16 sum would not read any faster)
    tolerance={F32: 1e-4, F16: 1e-4, BF16: 1e-4},
    dtypes=(F32, F16, BF16),
    doc="sum(src) in fp32: bandwidth probe, bytes = src read and the 4-byte sum written",
    smoke=((ProbeShape(N=1 << 16), F32),),
))


@register_impl("read", "torch_sum", backends=("cpu", "cuda", "xla"), kind="torch", baseline=True)
def torch_sum(src: torch.Tensor) -> torch.Tensor:
    """Tensor.sum with fp32 accumulation: one streaming pass over src."""
    return src.sum(dtype=torch.float32)


MATVEC_COLS = 4096  # a row of the matrix the matvec probe reads src as


@register_impl("read", "torch_matvec", backends=("xla",), kind="torch", dtypes=(F32,))
def torch_matvec(src: torch.Tensor) -> torch.Tensor:
    """src read as the rows of a [N/4096, 4096] matrix times a [4096, 1] matrix of ones, the
    row sums then summed: one pass over src, streamed by XLA's dot as a GEMV's weights are.
    The ones are a matrix, not a vector: torchax lowers a matrix times a vector into a multiply
    and a reduce, which XLA:CPU (jax 0.10.2) folds with the constant ones into torch_sum's
    single reduce; a matrix product stays a dot."""
    if src.numel() % MATVEC_COLS:
        raise NotImplementedError(f"N={src.numel()} is not a multiple of {MATVEC_COLS}")
    ones = torch.ones(MATVEC_COLS, 1, dtype=src.dtype, device=src.device)
    return (src.reshape(-1, MATVEC_COLS) @ ones).sum(dtype=torch.float32)


__all__ = ["ProbeShape", "copy", "read"]
