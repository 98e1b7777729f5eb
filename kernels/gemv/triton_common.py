"""What the Triton GEMV kernels share: the path a batch takes, the K-step load, when to split K and
how a split ends (its last program of a row tile writes y: kernels/triton_split.py), and the
config families the INT8 and INT4 kernels tune over.

Two paths by the batch M. Up to M = 4 a GEMV: each program keeps a per-thread inner product in
fp32 registers, and tensor cores would idle on rows of zeros. Above, `tl.dot`, which needs 16
rows at least: M is padded to a power of two of 16 to 64 rows (BLOCK_M), more rows take more
programs along the grid's M axis.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import triton
import triton.language as tl

from ..common import check_out, num_sms
from ..triton_split import last_split, scratch
from ..triton_util import INTERPRET

GEMV_MAX_M = 4  # the largest batch on the GEMV path; above it tl.dot
# The kernels index a tensor as row * row stride + column in 32-bit integers (64-bit address math
# would cost instructions in every loop), so no tensor they read may hold 2^31 elements: 4 GiB of
# bf16, past any single weight of today's models.
MAX_ELEMENTS = 2**31 - 1


def check_elements(name: str, *tensors: torch.Tensor) -> None:
    """NotImplementedError (the case is skipped with this reason) where a tensor is too large
    for the kernels' 32-bit offsets."""
    for t in tensors:
        if t.numel() > MAX_ELEMENTS:
            raise NotImplementedError(
                f"{name} computes offsets in 32 bits: a {'×'.join(map(str, t.shape))} tensor "
                f"has {t.numel()} elements, past 2^31 - 1")


def check_weights(name: str, qweight: torch.Tensor, *small: torch.Tensor) -> None:
    """ValueError unless qweight's rows are unit-stride and each of `small` (scales, zeros) is
    contiguous: the kernels index codes as row * row stride + column, and scales and zeros by
    scales' row stride alone."""
    if qweight.shape[-1] > 1 and qweight.stride(-1) != 1:
        raise ValueError(f"{name} needs qweight's rows contiguous (strides {qweight.stride()})")
    for t in small:
        if not t.is_contiguous():
            raise ValueError(f"{name} needs contiguous scales and zeros (a "
                             f"{'×'.join(map(str, t.shape))} tensor with strides {t.stride()})")


def output(name: str, x: torch.Tensor, out: torch.Tensor | None, N: int) -> torch.Tensor:
    """y: `out` where given (ValueError unless it is a float [M, N] on x's device with
    unit-stride rows, which the kernels store into, cast to its dtype: an fp32 out keeps the
    fp32 sums), else a new one of x's dtype; NotImplementedError where y is past the kernels'
    32-bit offsets."""
    M = x.shape[0]
    if out is None:
        y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    else:
        check_out(name, out, (M, N), x.device)
        if N > 1 and out.stride(1) != 1:
            raise ValueError(f"{name}: out needs contiguous rows (strides {out.stride()})")
        y = out
    check_elements(name, y)
    return y


def batch_path(M: int) -> tuple[bool, int]:
    """(use tl.dot, BLOCK_M) for a batch of M rows (see the module docstring)."""
    if M > GEMV_MAX_M:
        return True, max(16, triton.next_power_of_2(min(M, 64)))
    return False, triton.next_power_of_2(M)


@triton.jit
def load_xw(x_ptr, w_ptr, offs_m, offs_n, m_mask, n_mask, k0, K, stride_xm, stride_wn,
            BLOCK_K: tl.constexpr):
    """x[BLOCK_M, BLOCK_K] and w[BLOCK_N, BLOCK_K] at k0, zero past K (the GEMVs' K step)."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                mask=m_mask[:, None] & k_mask[None, :], other=0.0)
    w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :],
                mask=n_mask[:, None] & k_mask[None, :], other=0)
    return x, w


def split_k_for(n_tiles: int, K: int, device: torch.device, per_sm: int = 1,
                min_k: int = 1024) -> int:
    """How many programs split K: doubled while the `n_tiles` row tiles (the caller counts them
    at a BLOCK_N its tuned configs use) times the split give fewer than `per_sm` programs an
    SM and each split keeps at least `min_k` of K. A split costs atomics into the fp32
    workspace and each program a counter's round trip (`split_add`); too few programs an SM
    cost more (`split_for` gives the H200's figures)."""
    sms = num_sms(device)
    if sms is None:
        return 1
    split = 1
    while n_tiles * split < per_sm * sms and K // (split * 2) >= min_k:
        split *= 2
    return split


def split_for(M: int, N: int, K: int, block_m: int, use_dot: bool, device: torch.device) -> int:
    """The word-loop GEMVs' split (triton_w4, triton_w8). GEMV (M <= 4): only where 16-row
    programs would leave SMs idle; splitting INT4 toward 4 programs an SM of 32 rows measured
    slower on the H200 (8192 x 8192: 38% of the roof against 49%, measured with a finishing
    launch after the split, ~2 us of the ~16). tl.dot: 2 programs an SM of 64 rows (the tiles it
    picks), each at least 1024 of K deep; unsplit, INT4 at M = 16, 6144 x 4096, ran on 96
    programs at 13% of the roof."""
    if not use_dot:
        return split_k_for(triton.cdiv(N, 16) * triton.cdiv(M, block_m), K, device)
    return split_k_for(triton.cdiv(N, 64) * triton.cdiv(M, block_m), K, device, per_sm=2)


@triton.jit
def _take(ptrs, mask):
    """The workspace's sums at `ptrs`, read past L1 (other SMs added them during this launch),
    and zeros written back for the next launch. Plain loads, not atomic exchanges: where a
    layout holds an element in several threads, Triton issues an atomic from one of them and
    promises its result to none of the others. The barrier: where several threads hold an
    element, one stores the zero, and every other must have loaded the sum before it does."""
    v = tl.load(ptrs, mask=mask, other=0.0, cache_modifier=".cg")
    tl.debug_barrier()
    tl.store(ptrs, tl.zeros_like(v), mask=mask)
    return v


@triton.jit
def split_add(ws_ptr, y_ptr, lock_ptr, offs_m, offs_n, mask, N, stride_ym, acc):
    """The end of a split program of the (N tiles, splits, M tiles) grid: `acc` added into the
    fp32 workspace (M x N, zero between launches); the tile's last split to add writes y from
    the sums in y's dtype and zeroes them."""
    offs = offs_m[:, None] * N + offs_n[None, :]
    tl.atomic_add(ws_ptr + offs, acc, mask=mask, sem="relaxed")
    if last_split(lock_ptr + tl.program_id(2) * tl.num_programs(0) + tl.program_id(0),
                  tl.num_programs(1)):
        v = _take(ws_ptr + offs, mask)
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :],
                 v.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def split_rows_done(ws_ptr, y_ptr, s_ptr, lock_ptr, N, stride_ym, M: tl.constexpr,
                    SCALE: tl.constexpr, BLOCK_N: tl.constexpr):
    """The end of a split-K program of the (N tiles, K chunks) grid, its rows' partials added:
    the row tile's last chunk writes y's M rows from the workspace's sums (times the row
    scales s where SCALE) and zeroes them. The row offsets are computed here again rather than
    held across the counter's round trip."""
    if last_split(lock_ptr + tl.program_id(0), tl.num_programs(1)):
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        for m in tl.static_range(M):
            v = _take(ws_ptr + m * N + offs_n, n_mask)
            if SCALE:
                v = v * tl.load(s_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
            tl.store(y_ptr + m * stride_ym + offs_n, v.to(y_ptr.dtype.element_ty), mask=n_mask)


def split_scratch(device: torch.device, M: int, N: int, tiles: int) -> tuple:
    """The fp32 workspace (M x N) and `tiles` int32 counters a split launch uses; both zero."""
    return scratch(device, M * N), scratch(device, tiles, torch.int32)


# --- the quantized GEMVs' configs -------------------------------------------------------------

def without_ptx(cfg: Any) -> Any:
    """A copy of `cfg` that converts codes in Triton rather than in inline PTX (ASM=0): the
    interpreter runs no PTX, but everything else about the config can still be checked there."""
    if not cfg.kwargs.get("ASM"):
        return cfg
    return triton.Config({**cfg.kwargs, "ASM": 0}, num_warps=cfg.num_warps,
                         num_stages=cfg.num_stages)


# Inline PTX (the ASM=1 code conversions, the PK step) compiles for NVIDIA GPUs only. A ROCm build
# of torch calls an AMD GPU "cuda" too, and Triton's AMD assembler rejects PTX with a RuntimeError
# that Triton's autotuner does not skip: every tuning of a kernel with one PTX config would fail.
PTX = torch.version.hip is None


def ptx_free(configs: list, ptx: bool = PTX) -> list:
    """`configs` as this torch's GPUs compile them: as they are where PTX runs (`ptx`); else
    each with its Triton twin in place of the PTX (ASM=0), once, and no PK config (its step is
    PTX through and through)."""
    if ptx:
        return configs
    out, seen = [], set()
    for c in configs:
        twin = without_ptx(c)
        key = (tuple(sorted(twin.kwargs.items())), twin.num_warps, twin.num_stages)
        if not c.kwargs.get("PK") and key not in seen:
            seen.add(key)
            out.append(twin)
    return out


def word_gemv_configs(tiles: tuple) -> list:
    """The quantized GEMVs' M <= 4 configs: each (BLOCK_N, BLOCK_K, warps, stages) tile with the
    PTX code conversion (ASM=1), also with PREFETCH where the tile has at most 16 K codes (it
    holds two steps of words); the first tile also with the Triton conversion (ASM=0, 1.3x the
    loop's instructions on sm_90), so each tuning records what the PTX buys."""
    def cfg(tile: tuple, asm: int, pf: int) -> Any:
        bn, bk, nw, ns = tile
        return triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "ASM": asm, "PREFETCH": pf},
                             num_warps=nw, num_stages=ns)
    return ([cfg(t, 1, 0) for t in tiles] + [cfg(t, 1, 1) for t in tiles if t[0] * t[1] <= 16384]
            + [cfg(tiles[0], 0, 0)])


def words_per_thread(cfg: Any, codes_per_word: int) -> int:
    """32-bit words of weights a thread holds in one step of a GEMV config."""
    return cfg.kwargs["BLOCK_N"] * cfg.kwargs["BLOCK_K"] // codes_per_word // (32 * cfg.num_warps)


def two_paths(gemv: list, dot: list,
              batched: tuple[int, dict[int, int]] | None = None) -> tuple[list, Callable, Callable]:
    """A kernel with a GEMV path and a tl.dot path (USE_DOT): all its configs, `configs_for(
    use_dot)` (under the interpreter with PTX swapped for the Triton twin) and the tuner's prune
    (each launch tries only its own path's configs, and X3D ones, an M = 1 layout, only at
    BLOCK_M = 1: elsewhere they would run as their X3D=0 twin). `batched` = (codes a word,
    {BLOCK_M: most words a thread}): above M = 1 each row of x keeps the step's converted codes
    live, so larger tiles spill registers on sm_90 (bench.gpucheck.sass --compile-all) and the
    prune drops them there."""
    gemv, dot = ptx_free(gemv), ptx_free(dot)
    dot_ids = {id(c) for c in dot}

    def configs_for(use_dot: bool) -> list:
        configs = dot if use_dot else gemv
        return [without_ptx(c) for c in configs] if INTERPRET else configs

    def fits(c: Any, block_m: int | None) -> bool:
        if batched is None or block_m in (None, 1):
            return True
        cpw, most = batched
        return words_per_thread(c, cpw) <= most.get(block_m, min(most.values()))

    def prune(configs: list, nargs: dict, **kw: Any) -> list:
        use_dot, block_m = bool(kw.get("USE_DOT")), kw.get("BLOCK_M")
        return [c for c in configs if (id(c) in dot_ids) == use_dot
                and (block_m == 1 or not c.kwargs.get("X3D"))
                and (use_dot or fits(c, block_m))]

    return gemv + dot, configs_for, prune


__all__ = ["GEMV_MAX_M", "PTX", "batch_path", "load_xw", "ptx_free", "split_add", "split_for",
           "split_k_for", "split_rows_done", "split_scratch", "two_paths", "without_ptx",
           "word_gemv_configs", "words_per_thread"]
