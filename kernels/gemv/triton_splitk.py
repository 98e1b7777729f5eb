"""Triton split-K GEMVs, batch 1-4: `triton_w4_splitk` (gemv_w4), `triton_w8_splitk` (gemv_w8) and
`triton_gemv_splitk` (gemv_bf16).

A second design beside triton_w4 / triton_w8 / triton_gemv, whose few programs each walk all of K
for a block of rows. Here a program owns one short K chunk (BLOCK_K codes) of BLOCK_N rows and has
no loop: it loads the chunk's 32-bit words at once (16 bytes a thread a load), turns the codes into
floats with the same mantissa trick and PTX as triton_w4 / triton_w8 (no int-to-float conversion;
16-bit weights are used as they are), sums the chunk across its threads and adds its [BLOCK_N]
partial for each row of x into an fp32 workspace with atomics. The grid is (N / BLOCK_N) x (K /
BLOCK_K): thousands of small programs at decode shapes, each SM holding many, all their loads in
flight at once. Why: to stream at the roof an SM must keep (bandwidth / SMs) x DRAM latency in
flight (13 KiB on an H200 at the 370 ns idle latency, more under load), and a thread that walks all
of K issues its loads a step at a time.

Output: the atomics add into an fp32 workspace, and the last program of each row tile to add its
partials (a counter a row tile: kernels/triton_split.py) writes y in x's dtype from it (INT8:
times the row scale) and zeroes it again, so the workspace, kept per device and stream, is
all zeros before every call: no memset, no second launch.
Adding straight into a zeroed y in bf16 or fp16 would round at every add (in bf16 1% of y at
K / BLOCK_K = 64 chunks, the whole tolerance: docs/kernels.md), and y would still need a memset.
The workspace traffic (4 bytes an output a chunk, 8 to read it back) is the kernel's own
overhead, not in the op's byte count.

Each config gives a thread 16 or 32 words of weights (4 or 8 loads of 16 bytes); more words a
thread share the program's fixed cost (addresses, the cross-thread sums, the atomics) among
more codes. At M = 1 with bf16 x the INT4 kernel's PK configs run triton_w4's packed fp16x2 step
on the chunk instead (two codes an instruction). `python -m bench.gpucheck.sass` counts these
kernels' whole programs (they have no loop).
"""
from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from ..registry import register_impl
from ..triton_util import INTERPRET, TRITON_BACKENDS, autotune_or_fixed, launch_meta
from .ops import check_w4_args, check_w8_args
from .triton_common import (GEMV_MAX_M, check_elements, check_weights, output, ptx_free,
                            split_rows_done, split_scratch, without_ptx, words_per_thread)
from .triton_w4 import _codes as _codes4, _pk_ptrs, _pk_step, _split8, pk_compiles
from .triton_w8 import _codes as _codes8


def _configs(tiles: tuple) -> list:
    """(BLOCK_N, BLOCK_K, warps) tiles with the PTX code conversion (ASM=1), the first also with
    its Triton twin (ASM=0), so each tuning records what the PTX buys. One stage: without a loop
    there is nothing to pipeline."""
    return ([triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "ASM": 1}, num_warps=nw, num_stages=1)
             for bn, bk, nw in tiles]
            + [triton.Config({"BLOCK_N": tiles[0][0], "BLOCK_K": tiles[0][1], "ASM": 0},
                             num_warps=tiles[0][2], num_stages=1)])


# INT4 (8 codes a word): BLOCK_N x BLOCK_K / 8 words over 32 x warps threads, 32 words a thread
# in the first five tiles, 16 in the rest (8 words a thread count ~1.5x the 32-word tiles'
# instructions a code on sm_90: docs/kernels.md). BLOCK_K codes are BLOCK_K / 2 bytes of a row:
# 128 codes fill half a 128-byte line, 256 a line.
_W4_CONFIGS = ptx_free(_configs(((32, 256, 1), (64, 128, 1), (128, 128, 2), (64, 256, 2),
                                 (32, 512, 2), (16, 256, 1), (16, 512, 2), (32, 256, 2),
                                 (64, 128, 2))) + [
    # PK=1 (M = 1, bf16 x): triton_w4's packed step (two codes an fp16x2 FMA) on one chunk of
    # BLOCK_K / 32 segments of 32 codes, the segments along the lanes, the rows along the
    # registers (the x side of a segment serves all a thread's rows); 0.075-0.083 warp
    # instructions a code on sm_90 against the word loop's 0.061, for the sum across the lanes
    # and the counter each chunk pays (bench.gpucheck.sass)
    triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "ASM": 1, "PK": 1}, num_warps=nw,
                  num_stages=1)
    for bn, bk, nw in ((32, 1024, 1), (64, 1024, 2), (64, 2048, 4), (32, 512, 1),
                       (32, 1024, 2), (16, 1024, 1))])
# INT8 (4 codes a word): 32 words a thread in the first six tiles, 16 in the rest.
_W8_CONFIGS = ptx_free(_configs(((32, 128, 1), (16, 256, 1), (32, 256, 2), (16, 512, 2),
                                 (64, 128, 2), (32, 512, 4), (16, 256, 2), (8, 256, 1),
                                 (16, 512, 4))))


def _pk_runs(cfg: Any, M: int, x: torch.Tensor, K: int, G: int) -> bool:
    """A PK config runs as such at M = 1 with bf16 x on whole chunks of whole groups (the PK
    step has no masks), where its PTX compiles (triton_w4.pk_compiles); elsewhere it would time
    its PK=0 twin again, or fail to compile."""
    bk = cfg.kwargs["BLOCK_K"]
    return M == 1 and x.dtype == torch.bfloat16 and K % bk == 0 and bk % G == 0 and \
        pk_compiles(x)


def _w4_prune(configs: list, nargs: dict, **kw: Any) -> list:
    """PK configs only where they run as such (_pk_runs). Above M = 1 the INT4 tiles of 32
    words a thread spill registers on sm_90 (each row of x keeps the chunk's converted codes
    live): at most 16 there."""
    M = kw.get("M", 1)
    kept = [c for c in configs if not c.kwargs.get("PK")
            or _pk_runs(c, M, nargs["x_ptr"], nargs["K"], kw["G"])]
    if M == 1:
        return kept
    return [c for c in kept if words_per_thread(c, 8) <= 16]


def _configs_for(configs: list):
    def configs_for(use_dot: bool = False) -> list:
        """The configs a launch tunes over (there is no tl.dot path: M <= 4 only), PTX swapped
        for its Triton twin under the interpreter."""
        if use_dot:
            return []
        return [without_ptx(c) for c in configs] if INTERPRET else configs
    return configs_for


@triton.jit
def _w4_chunk(x_ptr, q_ptr, s_ptr, z_ptr, ws_ptr, N, K, stride_xm, stride_qn, stride_sn, pid_k,
              offs_n, n_mask, M: tl.constexpr, G: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_K: tl.constexpr, ASM: tl.constexpr):
    """Program (n, k) of the fp32 path: rows offs_n, codes k * BLOCK_K.. of each row of x."""
    # The chunk as [BLOCK_N, GROUPS, WPG] words: GROUPS whole groups, or (BLOCK_K < G) a part
    # of one group. G and BLOCK_K are powers of two and K % G == 0, so a chunk of part of a
    # group never passes K, and of a chunk of whole groups only groups past K are masked: the
    # mask is constant along each group's words, and the loads stay 16 bytes.
    GROUPS: tl.constexpr = BLOCK_K // G if BLOCK_K >= G else 1
    WPG: tl.constexpr = G // 8 if BLOCK_K >= G else BLOCK_K // 8
    gi = (pid_k * BLOCK_K) // G + tl.arange(0, GROUPS)
    g_mask = gi < K // G
    wi = pid_k * (BLOCK_K // 8) + tl.arange(0, GROUPS)[:, None] * WPG \
        + tl.arange(0, WPG)[None, :]  # [GROUPS, WPG]
    q32 = q_ptr.to(tl.pointer_type(tl.uint32))
    words = tl.load(q32 + offs_n[:, None, None] * (stride_qn // 4) + wi[None],
                    mask=n_mask[:, None, None] & g_mask[None, :, None], other=0,
                    eviction_policy="evict_first")  # read once
    sz_offs = offs_n[:, None] * stride_sn + gi[None, :]
    sz_mask = n_mask[:, None] & g_mask[None, :]
    s = tl.load(s_ptr + sz_offs, mask=sz_mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + sz_offs, mask=sz_mask, other=0.0).to(tl.float32)
    a = 128.0 * s
    c = -s * (128.0 + z)
    f0, f1, f2, f3, f4, f5, f6, f7 = _codes4(words, ASM)  # 1 + q/128, code i of each word
    # Per word p = sum_i x_i f_i, and per group sum x (q - z) s = 128 s P - (128 + z) s XS with
    # P and XS the group's sums of p and of x. One row of x at a time, each in the words' own
    # shape: a leading M dimension costs layout conversions (docs/kernels.md has the counts).
    x_k = wi[:, :, None] * 8 + tl.arange(0, 8)[None, None, :]  # [GROUPS, WPG, 8]
    for m in tl.static_range(M):
        # the N / BLOCK_N programs of this K chunk all read this x, so it is kept in cache
        x8 = tl.load(x_ptr + m * stride_xm + x_k, mask=g_mask[:, None, None], other=0.0,
                     eviction_policy="evict_last").to(tl.float32)
        x0, x1, x2, x3, x4, x5, x6, x7 = _split8(x8)
        p = x0[None] * f0
        p += x1[None] * f1
        p += x2[None] * f2
        p += x3[None] * f3
        p += x4[None] * f4
        p += x5[None] * f5
        p += x6[None] * f6
        p += x7[None] * f7
        XS = tl.sum(tl.sum(x8, axis=2), axis=1)  # [GROUPS]
        part = tl.sum(a * tl.sum(p, axis=2) + c * XS[None, :], axis=1)  # [BLOCK_N]
        tl.atomic_add(ws_ptr + m * N + offs_n, part, mask=n_mask, sem="relaxed")


@autotune_or_fixed(_W4_CONFIGS, key=["M", "N", "K", "G"],
                   fixed={"BLOCK_N": 8, "BLOCK_K": 128, "ASM": 0},
                   prune_configs_by={"early_config_prune": _w4_prune})
@triton.jit
def _w4_splitk_kernel(x_ptr, q_ptr, s_ptr, z_ptr, ws_ptr, y_ptr, lock_ptr, N, K, stride_xm,
                      stride_qn, stride_sn, stride_ym, M: tl.constexpr, G: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ASM: tl.constexpr,
                      PK: tl.constexpr = 0):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    if PK and M == 1 and x_ptr.dtype.element_ty == tl.bfloat16:
        # PK: the chunk is whole groups and within K (the prune's _pk_runs), so no masks
        NSEG: tl.constexpr = BLOCK_K // 32
        w_ptrs, x_ptrs, x_addr, sz = _pk_ptrs(x_ptr, q_ptr, offs_n, N, stride_qn, stride_sn,
                                              G, BLOCK_K)
        acc = _pk_step(tl.zeros((BLOCK_N, NSEG), dtype=tl.float32), w_ptrs, x_ptrs, x_addr,
                       s_ptr, z_ptr, sz, pid_k * NSEG, K // 32, G // 32, NSEG, False, ASM)
        tl.atomic_add(ws_ptr + offs_n, tl.sum(acc, axis=1), mask=n_mask, sem="relaxed")
    else:
        _w4_chunk(x_ptr, q_ptr, s_ptr, z_ptr, ws_ptr, N, K, stride_xm, stride_qn, stride_sn,
                  pid_k, offs_n, n_mask, M, G, BLOCK_N, BLOCK_K, ASM)
    split_rows_done(ws_ptr, y_ptr, s_ptr, lock_ptr, N, stride_ym, M, False, BLOCK_N)


@autotune_or_fixed(_W8_CONFIGS, key=["M", "N", "K"],
                   fixed={"BLOCK_N": 8, "BLOCK_K": 64, "ASM": 0})
@triton.jit
def _w8_splitk_kernel(x_ptr, q_ptr, s_ptr, ws_ptr, y_ptr, lock_ptr, N, K, stride_xm, stride_qn,
                      stride_ym, M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      ASM: tl.constexpr):
    # Program (n, k): rows n * BLOCK_N.., codes k * BLOCK_K.., as [BLOCK_N, BLOCK_K / 16, 4]
    # words: 16-byte pieces of 4 words, masked a piece (K % 16 == 0), so the loads stay 16 bytes.
    KV: tl.constexpr = BLOCK_K // 16
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    vi = pid_k * KV + tl.arange(0, KV)
    v_mask = vi < K // 16
    wi = vi[:, None] * 4 + tl.arange(0, 4)[None, :]  # [KV, 4]
    q32 = q_ptr.to(tl.pointer_type(tl.uint32))
    words = tl.load(q32 + offs_n[:, None, None] * (stride_qn // 4) + wi[None],
                    mask=n_mask[:, None, None] & v_mask[None, :, None], other=0,
                    eviction_policy="evict_first")  # read once
    f0, f1, f2, f3 = _codes8(words, ASM)  # 1 + (q + 128) / 2^15, code i of each word
    # Per word sum_i x_i q_i = 2^15 sum_i x_i (f_i - 1) - 128 sum_i x_i: the first sum taken per
    # word (p, small, no cancellation across the chunk), the row scale applied to the sum.
    # In 16 bits p = x_0 f_0 - sum x + ..., one FMA a code, rounding at 2^-24 of x, 2^-16 of p:
    # far below a 16-bit y's rounding, but up to ~1e-4 of y, fp32's tolerance, so fp32 x takes
    # the exact f - 1 first (one add a code more). One row of x at a time, as in the INT4 kernel.
    x_k = wi[:, :, None] * 4 + tl.arange(0, 4)[None, None, :]  # [KV, 4, 4]
    for m in tl.static_range(M):
        x4 = tl.load(x_ptr + m * stride_xm + x_k, mask=v_mask[:, None, None], other=0.0,
                     eviction_policy="evict_last").to(tl.float32)
        ev, od = tl.split(tl.reshape(x4, x4.shape[:-1] + [2, 2]))
        x0, x2 = tl.split(ev)
        x1, x3 = tl.split(od)
        xs = (x0 + x1) + (x2 + x3)
        if x_ptr.dtype.element_ty == tl.float32:
            p = x0[None] * (f0 - 1.0)
            p += x1[None] * (f1 - 1.0)
            p += x2[None] * (f2 - 1.0)
            p += x3[None] * (f3 - 1.0)
        else:
            p = x0[None] * f0 - xs[None]
            p += x1[None] * f1
            p += x2[None] * f2
            p += x3[None] * f3
        part = tl.sum(tl.sum(p, axis=2), axis=1) * 32768.0 \
            - 128.0 * tl.sum(tl.sum(xs, axis=1), axis=0)
        tl.atomic_add(ws_ptr + m * N + offs_n, part, mask=n_mask, sem="relaxed")
    split_rows_done(ws_ptr, y_ptr, s_ptr, lock_ptr, N, stride_ym, M, True, BLOCK_N)


# 16-bit weights (8 a 16-byte load): 64 weights a thread in the first six tiles, 128 in the rest
_BF16_CONFIGS = [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=nw, num_stages=1)
                 for bn, bk, nw in ((8, 256, 1), (16, 128, 1), (16, 256, 2), (32, 256, 4),
                                    (16, 512, 4), (8, 1024, 4), (16, 256, 1), (32, 512, 4))]


@autotune_or_fixed(_BF16_CONFIGS, key=["M", "N", "K"], fixed={"BLOCK_N": 8, "BLOCK_K": 64})
@triton.jit
def _bf16_splitk_kernel(x_ptr, w_ptr, ws_ptr, y_ptr, lock_ptr, N, K, stride_xm, stride_wn,
                        stride_ym, M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # Program (n, k): rows n * BLOCK_N.., K chunk k * BLOCK_K..: the weights as they are, fp32
    # products with each row of x, summed along the chunk and added into the workspace.
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :],
                mask=n_mask[:, None] & k_mask[None, :], other=0.0,
                eviction_policy="evict_first").to(tl.float32)  # read once
    for m in tl.static_range(M):
        x = tl.load(x_ptr + m * stride_xm + offs_k, mask=k_mask, other=0.0,
                    eviction_policy="evict_last").to(tl.float32)
        part = tl.sum(w * x[None, :], axis=1)
        tl.atomic_add(ws_ptr + m * N + offs_n, part, mask=n_mask, sem="relaxed")
    split_rows_done(ws_ptr, y_ptr, ws_ptr, lock_ptr, N, stride_ym, M, False, BLOCK_N)


_w4_splitk_kernel.configs_for = _configs_for(_W4_CONFIGS)
_w8_splitk_kernel.configs_for = _configs_for(_W8_CONFIGS)
_bf16_splitk_kernel.configs_for = _configs_for(_BF16_CONFIGS)

def _check_batch(name: str, M: int, instead: str) -> None:
    if M > GEMV_MAX_M:
        raise NotImplementedError(
            f"{name} is a GEMV for batch 1-{GEMV_MAX_M} (M={M}): above, {instead} reads the "
            f"weights once for all rows with tl.dot")


def _check_words(name: str, qweight: torch.Tensor) -> None:
    if qweight.data_ptr() % 4 or qweight.stride(1) != 1 or qweight.stride(0) % 4:
        raise ValueError(f"{name} reads qweight as 32-bit words: its rows must be contiguous and "
                         "start on 4-byte boundaries")


def _run(name: str, kernel: Any, x: torch.Tensor, weights: tuple, strides: tuple, N: int,
         K: int, out: torch.Tensor | None, **const: Any) -> torch.Tensor:
    """What the three impls share: y, the workspace and a counter a row tile, the (N / BLOCK_N)
    x (K / BLOCK_K) launch of `kernel(x, *weights, ws, y, counters, N, K, x's row stride,
    *strides, y's row stride, M=M, **const)`."""
    M = x.shape[0]
    check_elements(name, x, *weights)
    check_weights(name, *weights)
    y = output(name, x, out, N)
    ws, locks = split_scratch(x.device, M, N, N)  # at most N row tiles
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(K, meta["BLOCK_K"]))
    kernel[grid](x, *weights, ws, y, locks, N, K, x.stride(0), *strides, y.stride(0), M=M,
                 **const, **launch_meta(kernel))
    return y


@register_impl("gemv_w4", "triton_w4_splitk", backends=TRITON_BACKENDS, kind="triton")
def triton_w4_splitk(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                     zeros: torch.Tensor, group_size: int,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """Triton INT4 GEMV, M <= 4: one short K chunk a program, no loop, many programs an SM,
    partial sums added with atomics into an fp32 workspace, which the last program of each row
    tile casts into y."""
    M, N, K = check_w4_args(x, qweight, scales, zeros, group_size)
    _check_batch("triton_w4_splitk", M, "triton_w4")
    _check_words("triton_w4_splitk", qweight)
    x = x.contiguous()
    if M == 1 and x.dtype == torch.bfloat16 and x.data_ptr() % 16:
        x = x.clone()  # the PK configs load x 16 bytes at a time
    return _run("triton_w4_splitk", _w4_splitk_kernel, x, (qweight, scales, zeros),
                (qweight.stride(0), scales.stride(0)), N, K, out, G=group_size)


@register_impl("gemv_w8", "triton_w8_splitk", backends=TRITON_BACKENDS, kind="triton")
def triton_w8_splitk(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """Triton INT8 GEMV, M <= 4: one short K chunk a program, no loop, many programs an SM,
    partial sums added with atomics into an fp32 workspace, which the last program of each row
    tile scales and casts into y."""
    M, N, K = check_w8_args(x, qweight, scales)
    _check_batch("triton_w8_splitk", M, "triton_w8")
    if K % 16:
        raise NotImplementedError(f"triton_w8_splitk reads rows in 16-byte pieces: it needs "
                                  f"K % 16 == 0 (K={K})")
    _check_words("triton_w8_splitk", qweight)
    x = x.contiguous()
    return _run("triton_w8_splitk", _w8_splitk_kernel, x, (qweight, scales), (qweight.stride(0),), N, K, out)


@register_impl("gemv_bf16", "triton_gemv_splitk", backends=TRITON_BACKENDS, kind="triton")
def triton_gemv_splitk(x: torch.Tensor, w: torch.Tensor,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """Triton 16-bit GEMV, M <= 4: one short K chunk a program, no loop, many programs an SM,
    partial sums added with atomics into an fp32 workspace, which the last program of each row
    tile casts into y."""
    M, K = x.shape
    N = w.shape[0]
    if w.shape[1] != K:
        raise ValueError(f"x has K={K} but w has K={w.shape[1]}")
    if w.dtype != x.dtype:
        raise ValueError(f"w must have x's dtype {x.dtype}, got {w.dtype}")
    _check_batch("triton_gemv_splitk", M, "triton_gemv")
    check_elements("triton_gemv_splitk", x, w)  # before a copy of a weight it would refuse
    x = x.contiguous()
    w = w.contiguous()
    return _run("triton_gemv_splitk", _bf16_splitk_kernel, x, (w,), (w.stride(0),), N, K, out)


__all__ = ["triton_gemv_splitk", "triton_w4_splitk", "triton_w8_splitk"]
