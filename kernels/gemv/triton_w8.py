"""Triton INT8 GEMV: `triton_w8`, an impl of `gemv_w8` (W8A16, kernels/gemv/ops.py).

Per-channel INT8 halves bf16's weight bytes, so at the wall this runs ~2x faster than the bf16
GEMV, if it streams the int8 weights once and widens them in registers. The scale is per output
row, so it leaves the reduction: y = s[n] * sum_k x[k] q[n, k].

The GEMV path (M <= 4) reads 32-bit words of four codes and turns each code into a float without
an int-to-float conversion (Hopper issues those at 1/8 of the FMA rate): the code's byte goes into
the mantissa of 1.0, in PTX (ASM=1) or its Triton twin (ASM=0, the interpreter's). Above M = 4,
tl.dot on the codes widened to x's dtype (exact: |q| <= 127). K is split across programs where
N leaves SMs idle (triton_common.split_for), the partial sums added into an fp32 workspace that
the last split of each tile casts into y (triton_common.split_add).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..registry import register_impl
from ..triton_util import TRITON_BACKENDS, autotune_or_fixed, launch_meta
from .ops import check_w8_args
from .triton_common import (batch_path, check_elements, check_weights, load_xw, output,
                            split_add, split_for, split_scratch, two_paths, word_gemv_configs)

# GEMV path (M <= 4): BLOCK_N rows x BLOCK_K codes a step; ASM turns codes into floats in
# PTX (the interpreter runs the Triton twin, ASM=0); PREFETCH loads the next step's words
# during this one. tl.dot path (M > 4): BLOCK_N >= 16.
# X3D=1 (M = 1 only): the accumulator in the words' layout (see the kernel), on the three
# tiles where it cut the loop's barriers from 16-32 to 10 and its count 3-7% (bench.gpucheck.sass).
# The last two tiles (16 words a thread) are for batches 3-4, where the larger ones spill.
_GEMV_CONFIGS = word_gemv_configs(((16, 1024, 4, 3), (16, 2048, 4, 3), (32, 1024, 4, 3),
                                   (8, 2048, 4, 3), (32, 2048, 8, 3), (16, 1024, 2, 3),
                                   (64, 512, 4, 3), (16, 512, 4, 3), (32, 512, 8, 3))) + [
    triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "ASM": 1, "PREFETCH": 0, "X3D": 1},
                  num_warps=nw, num_stages=3)
    for bn, bk, nw in ((64, 512, 4), (32, 2048, 8), (16, 1024, 4))]
_DOT_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "ASM": 0, "PREFETCH": 0}, num_warps=nw,
                  num_stages=3)
    for bn, bk, nw in ((16, 256, 4), (32, 256, 4), (32, 512, 8), (64, 128, 4), (64, 256, 8),
                       (128, 128, 8))
]
# Above M = 1: at most 32 words a thread at M = 2 and 16 at M = 3-4 (larger tiles spill there)
_ALL_CONFIGS, _configs_for, _prune = two_paths(_GEMV_CONFIGS, _DOT_CONFIGS,
                                               batched=(4, {2: 32, 4: 16}))


@triton.jit
def _codes_asm(words):
    """The 4 int8 codes of each word as floats 1 + (q + 128) / 2^15, in PTX: one XOR a word
    (q + 128 as a byte), then one byte permute a code into bits 8-15 under 0x3F80 (1.0f)."""
    return tl.inline_asm_elementwise(
        asm="""{
        .reg .b32 t, top;
        mov.b32 top, 0x3F800000;
        xor.b32 t, $4, 0x80808080;
        prmt.b32 $0, t, top, 0x7604;
        prmt.b32 $1, t, top, 0x7614;
        prmt.b32 $2, t, top, 0x7624;
        prmt.b32 $3, t, top, 0x7634;
        }""",
        constraints="=r,=r,=r,=r,r", args=[words], dtype=(tl.uint32,) * 4, is_pure=True, pack=1)


@triton.jit
def _code8(words, i: tl.constexpr):
    """Code i (byte i) of each word as the float 1 + (q + 128) / 2^15 (Triton's twin of the
    PTX above): q + 128 in bits 8-15 of 1.0f's pattern."""
    if i == 0:
        u = (words << 8) & 0xFF00
    else:
        u = (words >> (8 * i - 8)) & 0xFF00
    return ((u ^ 0x8000) | 0x3F800000).to(tl.float32, bitcast=True)


@triton.jit
def _codes(words, ASM: tl.constexpr):
    """The 4 codes of each word as floats 1 + (q + 128) / 2^15, in PTX (ASM) or in Triton."""
    if ASM:
        c = _codes_asm(words)
        return (c[0].to(tl.float32, bitcast=True), c[1].to(tl.float32, bitcast=True),
                c[2].to(tl.float32, bitcast=True), c[3].to(tl.float32, bitcast=True))
    else:
        return _code8(words, 0), _code8(words, 1), _code8(words, 2), _code8(words, 3)


@autotune_or_fixed(_ALL_CONFIGS, key=["M", "N", "K", "SPLIT_K", "BLOCK_M", "WORDS"],
                   fixed={"BLOCK_N": 16, "BLOCK_K": 64, "ASM": 0, "PREFETCH": 1},
                   prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _w8_kernel(x_ptr, q_ptr, s_ptr, y_ptr, ws_ptr, lock_ptr, M, N, K, stride_xm, stride_qn,
               stride_ym,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
               ASM: tl.constexpr, PREFETCH: tl.constexpr, WORDS: tl.constexpr,
               SPLIT_K: tl.constexpr,
               USE_DOT: tl.constexpr, IEEE: tl.constexpr, X3D: tl.constexpr = 0):
    # Program (n, split, m) owns BLOCK_N rows of qweight and the split-th slice of K. Each row's
    # BLOCK_K int8 are contiguous, so a thread loads 16 of them at once and widens in registers.
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    k_per_split = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if USE_DOT:
        for k0 in range(k_lo, k_hi, BLOCK_K):
            x, q = load_xw(x_ptr, q_ptr, offs_m, offs_n, m_mask, n_mask, k0, K, stride_xm,
                           stride_qn, BLOCK_K)
            # int8 → x's dtype is exact (|q| <= 127), so tensor cores see the true weights.
            if IEEE:
                acc += tl.dot(x, tl.trans(q.to(x.dtype)), input_precision="ieee")
            else:
                acc += tl.dot(x, tl.trans(q.to(x.dtype)))
    elif WORDS:
        # GEMV on 32-bit words (K % 16 == 0): code i of a word becomes the float
        # f = 1 + u/2^15, u = q + 128, by placing u in the mantissa of 1.0 (no int-to-float
        # conversion, which Hopper issues at 1/8 of the FMA rate). Per word,
        # sum_i x_i q_i = 2^15 sum_i x_i (f_i - 1) - 128 sum_i x_i: the first sum is taken
        # per word (p - xs, small and exact enough) and piles up in a per-thread accumulator
        # of plain adds; sum x is the same for every row. No cross-thread sums in the loop.
        KW: tl.constexpr = BLOCK_K // 4
        offs_w = tl.arange(0, KW)
        q32 = q_ptr.to(tl.pointer_type(tl.uint32))
        # X3D (M = 1): the accumulator has the words' own shape, so it keeps their register
        # layout; with a leading M dimension the word tile goes through shared memory every step.
        X3: tl.constexpr = X3D and BLOCK_M == 1
        if X3:
            acc_w = tl.zeros((BLOCK_N, KW), dtype=tl.float32)
            xsum = tl.zeros((KW,), dtype=tl.float32)
        else:
            acc_w = tl.zeros((BLOCK_M, BLOCK_N, KW), dtype=tl.float32)
            xsum = tl.zeros((BLOCK_M, KW), dtype=tl.float32)
        w_ptrs = q32 + offs_n[:, None] * (stride_qn // 4)
        if PREFETCH:  # the next step's words load while this step's are used
            nxt = tl.load(w_ptrs + (k_lo // 4 + offs_w)[None, :],
                          mask=n_mask[:, None] & (k_lo // 4 + offs_w < k_hi // 4)[None, :],
                          other=0)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            wi = k0 // 4 + offs_w
            w_mask = wi < k_hi // 4
            if PREFETCH:
                words = nxt
                nxt = tl.load(w_ptrs + (wi + KW)[None, :],
                              mask=n_mask[:, None] & (wi + KW < k_hi // 4)[None, :], other=0)
            else:
                words = tl.load(w_ptrs + wi[None, :], mask=n_mask[:, None] & w_mask[None, :],
                                other=0)
            x_words = wi[:, None] * 4 + tl.arange(0, 4)[None, :]
            if X3:
                x4 = tl.load(x_ptr + x_words, mask=w_mask[:, None], other=0.0)
            else:
                x4 = tl.load(x_ptr + offs_m[:, None, None] * stride_xm + x_words[None],
                             mask=m_mask[:, None, None] & w_mask[None, :, None], other=0.0)
            ev, od = tl.split(tl.reshape(x4.to(tl.float32), x4.shape[:-1] + [2, 2]))
            x0, x2 = tl.split(ev)
            x1, x3 = tl.split(od)
            xs = (x0 + x1) + (x2 + x3)
            xsum += xs
            # x broadcast over the rows, the codes (X3: as they are) over the rows of x
            if X3:
                f0, f1, f2, f3 = _codes(words, ASM)
                x0, x1, x2, x3, xs = x0[None], x1[None], x2[None], x3[None], xs[None]
            else:
                f0, f1, f2, f3 = _codes(words[None, :, :], ASM)
                x0, x1, x2, x3, xs = x0[:, None], x1[:, None], x2[:, None], x3[:, None], xs[:, None]
            if x_ptr.dtype.element_ty == tl.float32:
                # p - xs rounds at 2^-16 of p, up to ~1e-4 of y: fp32's tolerance. fp32 x takes
                # the exact f - 1 first (one add a code more), as the split-K kernel does.
                p = x0 * (f0 - 1.0)
                p += x1 * (f1 - 1.0)
                p += x2 * (f2 - 1.0)
                p += x3 * (f3 - 1.0)
            else:
                p = x0 * f0 - xs
                p += x1 * f1
                p += x2 * f2
                p += x3 * f3
            acc_w += p
        if X3:
            acc = (tl.sum(acc_w, axis=1) * 32768.0 - 128.0 * tl.sum(xsum, axis=0))[None, :]
        else:
            acc = tl.sum(acc_w, axis=2) * 32768.0 - 128.0 * tl.sum(xsum, axis=1)[:, None]
    else:
        # GEMV on bytes (K not a multiple of 16): the int-to-float conversion, and a
        # cross-thread sum a step
        for k0 in range(k_lo, k_hi, BLOCK_K):
            x, q = load_xw(x_ptr, q_ptr, offs_m, offs_n, m_mask, n_mask, k0, K, stride_xm,
                           stride_qn, BLOCK_K)
            acc += tl.sum(x.to(tl.float32)[:, None, :] * q.to(tl.float32)[None, :, :], axis=2)
    s = tl.load(s_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    acc = acc * s[None, :]
    y_offs = offs_m[:, None] * stride_ym + offs_n[None, :]
    y_mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=y_mask)
    else:
        split_add(ws_ptr, y_ptr, lock_ptr, offs_m, offs_n, y_mask, N, stride_ym, acc)


_w8_kernel.configs_for = _configs_for


@register_impl("gemv_w8", "triton_w8", backends=TRITON_BACKENDS, kind="triton")
def triton_w8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
              out: torch.Tensor | None = None, split_k: int | None = None) -> torch.Tensor:
    """Triton INT8 GEMV: codes to floats in registers without conversions, per-thread sums for
    M <= 4, tl.dot above, split-K only where N leaves SMs idle."""
    M, N, K = check_w8_args(x, qweight, scales)
    check_elements("triton_w8", x, qweight)
    check_weights("triton_w8", qweight, scales)
    x = x.contiguous()
    y = output("triton_w8", x, out, N)
    use_dot, block_m = batch_path(M)
    split = split_k or split_for(M, N, K, block_m, use_dot, x.device)
    # counters: one a (row tile, M tile), at most N row tiles of one row
    ws, locks = (split_scratch(x.device, M, N, N * triton.cdiv(M, block_m)) if split > 1
                 else (y, y))
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), split, triton.cdiv(M, block_m))
    # 32-bit words where rows and the start allow (else one byte at a time)
    words = K % 16 == 0 and qweight.data_ptr() % 16 == 0 and qweight.stride(0) % 16 == 0
    _w8_kernel[grid](x, qweight, scales, y, ws, locks, M, N, K, x.stride(0), qweight.stride(0),
                     y.stride(0), BLOCK_M=block_m, WORDS=words, SPLIT_K=split,
                     USE_DOT=use_dot, IEEE=x.dtype == torch.float32,
                     **launch_meta(_w8_kernel, use_dot))
    return y
