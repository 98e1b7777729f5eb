"""Triton GEMV for 16-bit (or fp32) weights: `triton_gemv`, an impl of `gemv_bf16`.

One program owns BLOCK_N output columns for BLOCK_M rows of x and streams its [BLOCK_N, K] slab
of w. At M <= 4 it takes inner products in fp32 registers, with ACC3 a [BLOCK_M, BLOCK_N,
BLOCK_K] accumulator of plain FMAs reduced once after the loop instead of a cross-thread
reduction every step; above, `tl.dot` (M padded to 16, see triton_common.batch_path).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import SM90_SMEM_BYTES, smem_per_block
from ..registry import register_impl
from ..triton_util import TRITON_BACKENDS, autotune_or_fixed, launch_meta
from .triton_common import batch_path, check_elements, load_xw, output

# (BLOCK_N, BLOCK_K, warps) x ACC3: wide K steps won on an H200 (results/h200/); ACC3 keeps a
# [BLOCK_M, BLOCK_N, BLOCK_K] accumulator of plain FMAs and reduces it once after the loop,
# instead of a cross-thread reduction every step.
# The BLOCK_K = 128 tiles serve tl.dot alone: at 64 rows the wider K steps' x and w tiles
# outgrow shared memory (see _dot_smem).
_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "ACC3": acc3}, num_warps=nw, num_stages=3)
    for bn, bk, nw in ((16, 512, 4), (8, 1024, 4), (4, 2048, 4), (16, 1024, 8), (8, 2048, 8),
                       (32, 512, 8), (32, 512, 4), (64, 256, 4), (64, 128, 4), (32, 128, 4))
    for acc3 in (1, 0)
]


def _dot_smem(cfg: triton.Config, block_m: int, esize: int) -> int:
    """Shared memory of a tl.dot config: each pipeline stage holds a [BLOCK_M, BLOCK_K] x tile
    and a [BLOCK_N, BLOCK_K] w tile (Triton 3.9's sm_90 compiles allocate exactly this)."""
    k = cfg.kwargs
    return cfg.num_stages * (block_m + k["BLOCK_N"]) * k["BLOCK_K"] * esize


def _path(configs: list, use_dot: bool, block_m: int, esize: int, smem: int) -> list:
    """The configs that can run on a path: tl.dot takes 16 rows at least, no 3-D accumulator
    and tiles that fit `smem` bytes of shared memory (at `esize`-byte elements; the smallest if
    none does); the GEMV path leaves out the BLOCK_K = 128 tiles, which are there for tl.dot."""
    if use_dot:
        dot = [c for c in configs if c.kwargs["BLOCK_N"] >= 16 and not c.kwargs["ACC3"]]
        need = {id(c): _dot_smem(c, block_m, esize) for c in dot}
        fits = [c for c in dot if need[id(c)] <= smem]
        return fits or [min(dot, key=lambda c: need[id(c)])]
    configs = [c for c in configs if c.kwargs["BLOCK_K"] > 128]
    if block_m > 1:  # the 3-D accumulator is BLOCK_M times larger
        return [c for c in configs if not c.kwargs["ACC3"]] + \
            [c for c in configs if c.kwargs["ACC3"] and c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"] <= 4096]
    return configs


def _prune(configs: list, nargs: dict, **kw) -> list:
    """The tuner's: the launch's path, at x's element size and its device's shared memory."""
    x = nargs["x_ptr"]
    return _path(configs, bool(kw.get("USE_DOT")), kw.get("BLOCK_M", 1), x.element_size(),
                 smem_per_block(x.device))


@autotune_or_fixed(_CONFIGS, key=["M", "N", "K"], fixed={"BLOCK_N": 16, "BLOCK_K": 64, "ACC3": 1},
                   prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _gemv_kernel(x_ptr, w_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 ACC3: tl.constexpr, USE_DOT: tl.constexpr, IEEE: tl.constexpr):
    # One program owns BLOCK_N output columns for BLOCK_M rows of x and streams its slab of w.
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # the 3-D accumulator's depth (1 where unused: tl.dot, or ACC3 off)
    KA: tl.constexpr = 1 + (BLOCK_K - 1) * ACC3 * (1 - USE_DOT)
    acc3 = tl.zeros((BLOCK_M, BLOCK_N, KA), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        x, w = load_xw(x_ptr, w_ptr, offs_m, offs_n, m_mask, n_mask, k0, K, stride_xm,
                       stride_wn, BLOCK_K)
        if USE_DOT:
            if IEEE:
                acc += tl.dot(x, tl.trans(w), input_precision="ieee")
            else:
                acc += tl.dot(x, tl.trans(w))
        elif ACC3:
            acc3 += x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
        else:
            # M is tiny: an inner product per (m, n) in fp32 registers, no tensor cores needed.
            acc += tl.sum(x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
    if KA > 1:
        acc = tl.sum(acc3, axis=2)
    y = acc.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], y,
             mask=m_mask[:, None] & n_mask[None, :])


def configs_for(use_dot: bool, block_m: int = 1, esize: int = 4) -> list:
    """The configs a launch on this path tunes over (tl.dot: those whose tiles fit sm_90's
    shared memory at `block_m` rows of `esize`-byte elements; fp32 where not said)."""
    return _path(_CONFIGS, use_dot, block_m, esize, SM90_SMEM_BYTES)


_gemv_kernel.configs_for = configs_for


@register_impl("gemv_bf16", "triton_gemv", backends=TRITON_BACKENDS, kind="triton")
def triton_gemv(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-written Triton GEMV: fp32 accumulation, tl.dot once M > 4."""
    M, K = x.shape
    N = w.shape[0]
    if w.shape[1] != K:
        raise ValueError(f"x has K={K} but w has K={w.shape[1]}")
    if w.dtype != x.dtype:
        raise ValueError(f"w must have x's dtype {x.dtype}, got {w.dtype}")
    check_elements("triton_gemv", x, w)
    x = x.contiguous()
    w = w.contiguous()
    y = output("triton_gemv", x, out, N)
    use_dot, block_m = batch_path(M)
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(M, block_m))
    _gemv_kernel[grid](x, w, y, M, N, K, x.stride(0), w.stride(0), y.stride(0),
                       BLOCK_M=block_m, USE_DOT=use_dot, IEEE=x.dtype == torch.float32,
                       **launch_meta(_gemv_kernel, use_dot, block_m=block_m,
                                     esize=x.element_size()))
    return y
