"""`allreduce`: the sum of one tensor over every rank of a process group, in place.

A tensor-parallel decode step all-reduces its activations twice a layer: hidden size x batch x
dtype bytes, 8 KiB to 16 MiB for today's models. Every rank contributes known, rank-dependent
small integers (`pattern`), so the sum is exact and checkable on each rank; a world size whose sum
the dtype cannot hold exactly (`inexact`) is not checked.

Bytes follow nccl-tests: `bytes` is the message size; algorithm bandwidth = bytes / time; bus
bandwidth = algbw * 2(n-1)/n, what each rank's links carry in a ring all-reduce, comparable with
the link's datasheet bandwidth whatever n is. Impls take the tensor and the process group
(None: the default group) and return it reduced; they run in every rank process at once
(bench/collectives.py), never in the single-process runner.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import Op, register_impl, register_op

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
MAX_BYTES = 2**34


@dataclass(frozen=True)
class AllreduceShape:
    bytes: int  # the message: what each rank contributes and receives
    world_size: int = 2  # ranks in the group (`run --world-size` sets it)

    def __post_init__(self) -> None:
        if self.bytes < 4 or self.bytes % 4:
            raise ValueError(f"bytes must be a positive multiple of 4, got {self.bytes}")
        if self.bytes > MAX_BYTES:
            raise ValueError(f"bytes={self.bytes} is larger than any device memory")
        if not 1 <= self.world_size <= 4096:
            raise ValueError(f"world_size must be in 1..4096, got {self.world_size}")


def esize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def numel(s: AllreduceShape, dtype: torch.dtype) -> int:
    return s.bytes // esize(dtype)


def pattern(numel: int, rank: int, world_size: int,
            dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Rank r's values among n ranks: 2 at its own elements (i % (n + 1) == r), 1 elsewhere.

    The sum is n + 1, and n where i % (n + 1) == n. A sum that drops a rank or counts one twice
    is off by at least 1 at every element; one that counts rank a in place of rank b is off at
    a's and b's own elements; a shifted result moves the elements that hold n. Every rank has
    own elements when the message has n of them or more."""
    t = torch.ones(numel, dtype=dtype)
    t[rank::world_size + 1] = 2
    return t


def contribution(s: AllreduceShape, dtype: torch.dtype, rank: int, device) -> torch.Tensor:
    return pattern(numel(s, dtype), rank, s.world_size, dtype).to(device)


def expected(s: AllreduceShape, dtype: torch.dtype) -> torch.Tensor:
    """The sum over ranks, float64 on the CPU."""
    n = s.world_size
    e = torch.full((numel(s, dtype),), float(n + 1), dtype=torch.float64)
    e[n::n + 1] = n
    return e


def max_exact_world_size(dtype: torch.dtype) -> int:
    """The most ranks whose check the dtype holds exactly: its sums, partial ones included, are
    integers up to n + 1, and a dtype holds every integer up to 2 / eps = 2^(mantissa bits + 1)
    (bf16: 255 ranks, fp16: 2047)."""
    return round(2 / torch.finfo(dtype).eps) - 1


def inexact(s: AllreduceShape, dtype: torch.dtype) -> str | None:
    """Why the check cannot be exact for this case in `dtype`, or None when it is."""
    most = max_exact_world_size(dtype)
    if s.world_size <= most:
        return None
    name = str(dtype).removeprefix("torch.")
    return (f"the check's sums (up to world size + 1) are exact in {name} for at most {most} "
            f"ranks, not {s.world_size}: a correct all-reduce would fail it")


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def make_inputs(s: AllreduceShape, dtype: torch.dtype, device, seed: int) -> tuple:
    """This rank's contribution (rank 0 outside a process group). Deterministic by design: the
    check needs to know every rank's values."""
    return (contribution(s, dtype, _rank(), device),)


def host_footprint(s: AllreduceShape, dtype: torch.dtype, backend: str) -> int:
    """Host bytes one rank's contribution and expected sum hold at their peak: the contribution,
    made in the dtype on the host (held there off CUDA), beside the float64 expectation (8 bytes
    an element)."""
    held = s.bytes if backend != "cuda" else 0
    return held + 8 * numel(s, dtype)


def algbw_gbps(s: AllreduceShape, time_s: float) -> float:
    return s.bytes / time_s / 1e9


def bus_factor(n: int) -> float:
    """Bytes each of n ranks' links carries in a ring all-reduce, per byte of the message:
    2(n-1)/n (a reduce-scatter and an all-gather), 0 for one rank, as nccl-tests counts."""
    return 2 * (n - 1) / n


def busbw_gbps(s: AllreduceShape, time_s: float) -> float:
    """What each rank's links carry in a ring all-reduce: algbw x bus_factor."""
    return algbw_gbps(s, time_s) * bus_factor(s.world_size)


allreduce = register_op(Op(
    name="allreduce",
    shape_type=AllreduceShape,
    make_inputs=make_inputs,
    reference=lambda t: expected(AllreduceShape(t.numel() * t.element_size(), _world()),
                                 t.dtype),
    bytes_moved=lambda s, dt: s.bytes,
    flops=lambda s: 0,  # (n-1) adds an element, spread over the ring: not what limits it
    out_spec=lambda s, dt: ((numel(s, dt),), dt),
    host_footprint=host_footprint,
    tolerance={F32: 0.0, F16: 0.0, BF16: 0.0},  # integer sums: exact (see `inexact`)
    dtypes=(F32, BF16, F16),
    doc="sum over ranks in place (torch.distributed): bytes = message, busbw = algbw 2(n-1)/n",
    smoke=((AllreduceShape(bytes=1 << 16, world_size=2), F32),),
    collective=True,
))


def _world() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@register_impl("allreduce", "torch_distributed", backends=("cpu", "cuda"), baseline=True)
def torch_distributed(t: torch.Tensor, group=None) -> torch.Tensor:
    """torch.distributed.all_reduce: gloo on the CPU, NCCL on CUDA."""
    torch.distributed.all_reduce(t, group=group)
    return t


__all__ = ["AllreduceShape", "allreduce", "algbw_gbps", "bus_factor", "busbw_gbps", "contribution", "expected",
           "inexact", "max_exact_world_size"]
