"""Split work merged inside the launch that split it: the last program of a tile to finish merges.

Split-K GEMVs and split-KV attention leave partial results (sums added into a workspace, or
partial outputs with their softmax max and sum) that something must combine. A second kernel
costs a kernel boundary: the split kernel's drain, a launch, the merge's own ramp-up, ~2 us on
an H200, a visible share of a 5-40 us decode op. Here every program of a tile counts itself done
on the tile's counter, and the program that finds `splits - 1` there merges and zeroes the
counter again, so the counters (and a workspace of sums, which that program zeroes once it has
read them) are all zero between launches.

Memory order, as CUTLASS's `Semaphore`: a barrier puts every thread's partial writes before the
counter's update, which one thread makes with release semantics at GPU scope; its acquire
semantics put the merge's reads after every other program's release. The merge reads past L1
(`.cg` loads): other SMs wrote those lines during this launch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_SCRATCH: dict[tuple[str, int, torch.dtype], torch.Tensor] = {}


def scratch(device: torch.device, numel: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`numel` zeros of `dtype` from the device and stream's scratch buffer, which every launch
    leaves zeroed (launches on one stream run in order, so none overlap): no launch pays for a
    memset."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # "cuda" and "cuda:0": one buffer
        device = torch.device("cuda", torch.cuda.current_device())
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (str(device), stream, dtype)
    buf = _SCRATCH.get(key)
    if buf is None or buf.numel() < numel:
        buf = _SCRATCH[key] = torch.zeros(max(numel, 1 << 14), device=device, dtype=dtype)
    return buf[:numel]


def scratch_is_zero() -> bool:
    """Every scratch buffer all zeros, as a finished launch must leave it (for the tests)."""
    return all(not buf.any() for buf in _SCRATCH.values())


@triton.jit
def last_split(lock_ptr, splits):
    """True in the last of the `splits` programs sharing the int32 counter at `lock_ptr` to
    count itself done, which has zeroed the counter again. Every program calls it after writing
    its partials; the one it returns True in may read all of them."""
    tl.debug_barrier()
    last = tl.atomic_add(lock_ptr, 1, sem="acq_rel", scope="gpu") == splits - 1
    if last:
        tl.atomic_xchg(lock_ptr, 0, sem="relaxed", scope="gpu")
    return last
