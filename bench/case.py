"""A case: one op at one shape and dtype, the unit every part of the harness passes around.

Suites produce cases; the runner, its worker processes and the collective ranks measure them,
on inputs from `make_inputs`. torch is imported where a tensor is made, not with the module: the
CLI reads DEFAULT_CASE_TIMEOUT_S as it builds its parser, for every command.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# How long one impl-case may take (`run --case-timeout`): check, warm-up and timing, compiling
# included. No honest case on a 2-core CPU comes near it: the slowest impl-case of the default
# suite there (gemv_w4 torch_dequant at 28672 x 4096, check and timing) takes well under a minute
# (docs/measurement.md, "Isolation").
DEFAULT_CASE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Case:
    op: str
    shape: Any
    dtype: torch.dtype
    impls: tuple[str, ...] | None = None  # None: every impl that supports backend and dtype
    group: str = ""  # free label for reports, e.g. "llama-3-8b qkv" or "precision"
    # True: one input set reused call after call, no cache flush (the size sweep): a working set
    # the cache holds is timed from the cache, and not judged against the DRAM roof.
    warm: bool = False


def make_inputs(backend: Any, op: Any, shape: Any, dtype: torch.dtype, seed: int) -> tuple:
    """The op's fresh inputs on the backend's device: built where the backend builds its data
    (`build_device()`: the device itself, or the host for XLA), then moved to the device."""
    import torch
    where = backend.build_device()
    args = op.make_inputs(shape, dtype, where, seed)
    if where == backend.device():
        return args
    return tuple(backend.to_device(a) if isinstance(a, torch.Tensor) else a for a in args)


def host_need(op: Any, shape: Any, dtype: torch.dtype, backend: str) -> int:
    """Host bytes a case holds at its peak on `backend` (per rank for a collective): building its
    inputs and float64 reference (`Op.host_footprint_bytes`), or the runner's correctness check
    where that holds more: off CUDA the inputs, their snapshot and the output (twice the
    footprint bounds them), and the float64 reference, the output's float64 copy, their
    difference and its finite mask (25 bytes an output element)."""
    out_shape, _ = op.out_spec(shape, dtype)
    check = 25 * math.prod(out_shape)
    if backend != "cuda":
        check += 2 * op.footprint_bytes(shape, dtype)
    return max(op.host_footprint_bytes(shape, dtype, backend), check)
