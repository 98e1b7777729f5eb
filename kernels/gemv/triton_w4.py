"""Triton INT4 GEMV: `triton_w4`, an impl of `gemv_w4` (W4A16, kernels/gemv/ops.py).

W[n, k] = (q[n, k] - zeros[n, g]) * scales[n, g], q packed two per byte, low nibble = even k.
The GEMV path (M <= 4) reads 32-bit words of eight codes and turns each code into the float
1 + q/128 by moving it into the mantissa of 1.0, in PTX (ASM=1) or its Triton twin (ASM=0, the
interpreter's): no int-to-float conversion, which Hopper issues at 1/8 of the FMA rate. Scale
and zero are applied once per word: sum_i x_i (q_i - z) s = 128 s p - (128 + z) s xs with
p = sum_i x_i f_i and xs = sum_i x_i. Above M = 4, tl.dot over one group a step on the same
codes, scale and zero applied to the product. K is split across programs only where N leaves
SMs idle (triton_common.split_k_for). `python -m bench.sass` counts each config's loop for sm_90.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..registry import register_impl
from ..triton_util import TRITON_BACKENDS, autotune_or_fixed, launch_meta
from .ops import check_w4_args
from .triton_common import batch_path, split_k_for, two_paths, word_gemv_configs

# M <= 4 (GEMV): BLOCK_N rows x BLOCK_K codes a step, with the codes turned into floats in
# PTX (ASM=1) or in Triton (ASM=0, 1.3x the loop's instructions; the interpreter's path), and
# PREFETCH=1 loading the next step's words during this one (more bytes in flight where few
# programs fit an SM). `python -m bench.sass` counts each config's loop for sm_90.
# X3D=1 (M = 1 only) keeps the accumulator in the weights' layout: on the two 8-warp tiles,
# where it takes the word tile's trip through shared memory out of the loop (bench.sass).
_GEMV_CONFIGS = word_gemv_configs(((16, 2048, 4, 3), (32, 1024, 4, 3), (16, 1024, 4, 3),
                                   (16, 1024, 2, 3), (8, 2048, 4, 3), (32, 2048, 8, 3),
                                   (64, 1024, 8, 3))) + [
    triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "ASM": 1, "PREFETCH": 0, "X3D": 1},
                  num_warps=8, num_stages=3) for bn, bk in ((64, 1024), (32, 2048))]
# M > 4: tl.dot over one group a step (BLOCK_K and PREFETCH unused), in both orientations
# (SWAP), the codes converted in PTX; the Triton conversion kept for one tile.
_DOT_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_K": 256, "ASM": asm, "PREFETCH": 0, "SWAP": sw},
                  num_warps=nw, num_stages=ns)
    for bn, sw, nw, ns, asm in ((64, 1, 4, 3, 1), (128, 1, 4, 3, 1), (128, 1, 8, 3, 1),
                                (64, 0, 4, 3, 1), (128, 0, 4, 3, 1), (32, 0, 4, 3, 1),
                                (64, 1, 4, 3, 0))
]
_ALL_CONFIGS, configs_for, _prune = two_paths(_GEMV_CONFIGS, _DOT_CONFIGS)


@triton.jit
def _code(words, i: tl.constexpr):
    """Code i (bits 4i..4i+3) of each word as the float 1 + q/128: moved to bits 16-19 of
    1.0f's pattern, whose bit 23 (0x80 of byte 2) is the exponent's and stays set."""
    if i <= 4:
        m = (words << (16 - 4 * i)) & 0xF0000
    else:
        m = (words >> (4 * i - 16)) & 0xF0000
    return (m | 0x3F800000).to(tl.float32, bitcast=True)


@triton.jit
def _codes_asm(words):
    """All 8 codes of each word as floats 1 + q/128, in PTX: the even and the odd nibbles
    masked, each OR-ed with 0x80 (3 ops a word), then one byte permute a code places it in
    bits 16-23 under 0x3F (1.0f's top byte). GPU only: the interpreter runs no PTX."""
    return tl.inline_asm_elementwise(
        asm="""{
        .reg .b32 m, o, top, lo, hi;
        mov.b32 m, 0x0F0F0F0F;
        mov.b32 o, 0x80808080;
        mov.b32 top, 0x3F000000;
        lop3.b32 lo, $8, m, o, 0xEA;
        shr.b32 hi, $8, 4;
        lop3.b32 hi, hi, m, o, 0xEA;
        prmt.b32 $0, lo, top, 0x7044;
        prmt.b32 $1, hi, top, 0x7044;
        prmt.b32 $2, lo, top, 0x7144;
        prmt.b32 $3, hi, top, 0x7144;
        prmt.b32 $4, lo, top, 0x7244;
        prmt.b32 $5, hi, top, 0x7244;
        prmt.b32 $6, lo, top, 0x7344;
        prmt.b32 $7, hi, top, 0x7344;
        }""",
        constraints="=r,=r,=r,=r,=r,=r,=r,=r,r",
        args=[words], dtype=(tl.uint32,) * 8, is_pure=True, pack=1)


@triton.jit
def _codes(words, ASM: tl.constexpr):
    """The 8 codes of each word as floats 1 + q/128, in PTX (ASM) or in Triton."""
    if ASM:
        c = _codes_asm(words)
        return (c[0].to(tl.float32, bitcast=True), c[1].to(tl.float32, bitcast=True),
                c[2].to(tl.float32, bitcast=True), c[3].to(tl.float32, bitcast=True),
                c[4].to(tl.float32, bitcast=True), c[5].to(tl.float32, bitcast=True),
                c[6].to(tl.float32, bitcast=True), c[7].to(tl.float32, bitcast=True))
    else:
        return (_code(words, 0), _code(words, 1), _code(words, 2), _code(words, 3),
                _code(words, 4), _code(words, 5), _code(words, 6), _code(words, 7))


@triton.jit
def _split8(x8):
    """x[..., 8] (the x of each word's 8 codes) as 8 tensors x[..., i], by halving the last
    dimension three times (evens/odds, then 4 apart, then 2 apart): registers only."""
    ev, od = tl.split(tl.reshape(x8, x8.shape[:-1] + [4, 2]))
    e04, e26 = tl.split(tl.reshape(ev, ev.shape[:-1] + [2, 2]))
    o15, o37 = tl.split(tl.reshape(od, od.shape[:-1] + [2, 2]))
    x0, x4 = tl.split(e04)
    x2, x6 = tl.split(e26)
    x1, x5 = tl.split(o15)
    x3, x7 = tl.split(o37)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _dot_codes_asm(b, FP16: tl.constexpr):
    """The even and odd codes of each byte as 1 + q/128 in bf16 (0x3F80 | q) or fp16
    (0x3C00 | q << 3), four bytes at a time in PTX: the low and the high nibbles masked
    into place (3 ops; fp16 4), then one byte permute per pair of codes puts each under its
    high byte. GPU only: the interpreter runs no PTX."""
    if FP16:
        return tl.inline_asm_elementwise(
            asm="""{
            .reg .b32 m, top, lo, hi;
            mov.b32 m, 0x78787878;
            mov.b32 top, 0x3C3C3C3C;
            shl.b32 lo, $4, 3;
            and.b32 lo, lo, m;
            shr.b32 hi, $4, 1;
            and.b32 hi, hi, m;
            prmt.b32 $0, lo, top, 0x5140;
            prmt.b32 $1, lo, top, 0x7362;
            prmt.b32 $2, hi, top, 0x5140;
            prmt.b32 $3, hi, top, 0x7362;
            }""",
            constraints="=r,=r,=r,=r,r", args=[b], dtype=(tl.float16, tl.float16),
            is_pure=True, pack=4)
    else:
        return tl.inline_asm_elementwise(
            asm="""{
            .reg .b32 m, o, top, lo, hi;
            mov.b32 m, 0x0F0F0F0F;
            mov.b32 o, 0x80808080;
            mov.b32 top, 0x3F3F3F3F;
            lop3.b32 lo, $4, m, o, 0xEA;
            shr.b32 hi, $4, 4;
            lop3.b32 hi, hi, m, o, 0xEA;
            prmt.b32 $0, lo, top, 0x5140;
            prmt.b32 $1, lo, top, 0x7362;
            prmt.b32 $2, hi, top, 0x5140;
            prmt.b32 $3, hi, top, 0x7362;
            }""",
            constraints="=r,=r,=r,=r,r", args=[b], dtype=(tl.bfloat16, tl.bfloat16),
            is_pure=True, pack=4)


@triton.jit
def _dot_code(nib, dtype: tl.constexpr):
    """A code (uint8 0..15) as 1 + q/128 in `dtype`, its bits set directly (Triton's twin
    of the PTX above; fp32 for the IEEE path)."""
    if dtype == tl.float32:
        return ((nib.to(tl.uint32) << 16) | 0x3F800000).to(tl.float32, bitcast=True)
    elif dtype == tl.float16:
        return ((nib.to(tl.uint16) << 3) | 0x3C00).to(tl.float16, bitcast=True)
    else:
        return (nib.to(tl.uint16) | 0x3F80).to(tl.bfloat16, bitcast=True)


@triton.jit
def _dot_codes(b, dtype: tl.constexpr, ASM: tl.constexpr):
    """Bytes of codes -> (even-k codes, odd-k codes) as 1 + q/128 in x's dtype."""
    if ASM and dtype != tl.float32:
        return _dot_codes_asm(b, dtype == tl.float16)
    return _dot_code(b & 0xF, dtype), _dot_code(b >> 4, dtype)


@autotune_or_fixed(_ALL_CONFIGS, key=["M", "N", "K", "G", "SPLIT_K", "BLOCK_M"],
                   fixed={"BLOCK_N": 16, "BLOCK_K": 256, "ASM": 0, "PREFETCH": 1},
                   reset_to_zero=["ws_ptr"],
                   prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _w4_kernel(x_ptr, q_ptr, s_ptr, z_ptr, y_ptr, ws_ptr, M, N, K, stride_xm, stride_qn,
               stride_sn, stride_ym, G: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
               ASM: tl.constexpr, PREFETCH: tl.constexpr, SPLIT_K: tl.constexpr,
               USE_DOT: tl.constexpr, IEEE: tl.constexpr, SWAP: tl.constexpr = 0,
               X3D: tl.constexpr = 0):
    # Program (n, split, m) walks its share of the K groups.
    HALF: tl.constexpr = G // 2
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_j = tl.arange(0, HALF)
    m_mask = offs_m < M
    n_mask = offs_n < N
    ng = K // G
    per_split = tl.cdiv(ng, SPLIT_K)
    g_lo = pid_k * per_split
    g_hi = tl.minimum(g_lo + per_split, ng)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if USE_DOT:
        # One group a step, its codes as f = 1 + q/128 in x's dtype (exact there), tl.dot over
        # them, scale and zero applied to the [M, N] product: sum_k x (q - z) s
        # = 128 s sum_k x f - (128 + z) s sum_k x. No int-to-float conversion and no
        # dequantized matrix: a code costs its share of one PTX word conversion (ASM) and a
        # tensor-core MAC. SWAP computes y.T = W x.T instead, the rows of W filling the MMA's
        # M (64 a warpgroup on Hopper) and the batch its N.
        offs_x = tl.arange(0, G)
        if SWAP:
            acc_t = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for g in range(g_lo, g_hi):
            b = tl.load(q_ptr + offs_n[:, None] * stride_qn + g * HALF + offs_j[None, :],
                        mask=n_mask[:, None], other=0)
            fe, fo = _dot_codes(b, x_ptr.dtype.element_ty, ASM)
            xg = tl.load(x_ptr + offs_m[:, None] * stride_xm + g * G + offs_x[None, :],
                         mask=m_mask[:, None], other=0.0)
            xe, xo = tl.split(tl.reshape(xg, (BLOCK_M, HALF, 2)))  # even and odd k
            xs = tl.sum(xg.to(tl.float32), axis=1)
            s = tl.load(s_ptr + offs_n * stride_sn + g, mask=n_mask, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + offs_n * stride_sn + g, mask=n_mask, other=0.0).to(tl.float32)
            a = 128.0 * s
            c = -s * (128.0 + z)
            if SWAP:
                d = _dot(fe, tl.trans(xe), None, IEEE)
                d = _dot(fo, tl.trans(xo), d, IEEE)
                acc_t += d * a[:, None] + c[:, None] * xs[None, :]
            else:
                d = _dot(xe, tl.trans(fe), None, IEEE)
                d = _dot(xo, tl.trans(fo), d, IEEE)
                acc += d * a[None, :] + xs[:, None] * c[None, :]
        if SWAP:
            acc = tl.trans(acc_t)
    else:
        # GEMV: GROUPS groups of BLOCK_N rows a step, read as 32-bit words (8 codes each) in
        # [BLOCK_N, GROUPS, G/8] tiles. Code i of a word becomes the float f = 1 + q/128 by
        # shifting it into the mantissa of 1.0 (no int-to-float conversion, which Hopper
        # issues at 1/8 of the FMA rate). Per word, sum_i x_i (q_i - z) s
        # = 128 s p - (128 + z) s xs with p = sum_i x_i f_i and xs = sum_i x_i: one FMA a
        # code, two a word. Word sums pile up in an accumulator of plain FMAs, summed across
        # threads once, after the loop.
        GROUPS: tl.constexpr = BLOCK_K // G
        WPG: tl.constexpr = G // 8
        offs_g = tl.arange(0, GROUPS)
        offs_w = tl.arange(0, WPG)
        q32 = q_ptr.to(tl.pointer_type(tl.uint32))
        # X3D (M = 1): the accumulator has the words' own shape, so it takes their layout and
        # only x's slices change layout each step; with a leading M dimension the whole word
        # tile is moved through shared memory every step (the TTGIR shows it).
        X3: tl.constexpr = X3D and BLOCK_M == 1
        if X3:
            acc_w = tl.zeros((BLOCK_N, GROUPS, WPG), dtype=tl.float32)
        else:
            acc_w = tl.zeros((BLOCK_M, BLOCK_N, GROUPS, WPG), dtype=tl.float32)
        w_ptrs = q32 + offs_n[:, None, None] * (stride_qn // 4) + offs_w[None, None, :]
        if PREFETCH:  # the next step's words load while this step's are used
            nxt = tl.load(w_ptrs + (g_lo + offs_g)[None, :, None] * WPG,
                          mask=n_mask[:, None, None] & (g_lo + offs_g < g_hi)[None, :, None],
                          other=0)
        for g0 in range(g_lo, g_hi, GROUPS):
            gi = g0 + offs_g
            g_mask = gi < g_hi
            if PREFETCH:
                words = nxt
                nxt = tl.load(w_ptrs + (gi + GROUPS)[None, :, None] * WPG,
                              mask=n_mask[:, None, None] & (gi + GROUPS < g_hi)[None, :, None],
                              other=0)
            else:
                words = tl.load(w_ptrs + gi[None, :, None] * WPG,
                                mask=n_mask[:, None, None] & g_mask[None, :, None], other=0)
            sz_offs = offs_n[:, None] * stride_sn + gi[None, :]
            sz_mask = n_mask[:, None] & g_mask[None, :]
            s = tl.load(s_ptr + sz_offs, mask=sz_mask, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + sz_offs, mask=sz_mask, other=0.0).to(tl.float32)
            # x for the step as [BLOCK_M, GROUPS, G/8, 8] (X3: [GROUPS, G/8, 8]): 16
            # contiguous bytes per word, split into its 8 codes' x in registers
            x_words = (gi[:, None, None] * WPG + offs_w[None, :, None]) * 8 \
                + tl.arange(0, 8)[None, None, :]
            x_mask = g_mask[:, None, None]
            if X3:
                x8 = tl.load(x_ptr + x_words, mask=x_mask, other=0.0)
            else:
                x8 = tl.load(x_ptr + offs_m[:, None, None, None] * stride_xm + x_words[None],
                             mask=m_mask[:, None, None, None] & x_mask[None], other=0.0)
            x0, x1, x2, x3, x4, x5, x6, x7 = _split8(x8.to(tl.float32))
            xs = ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7))
            a = 128.0 * s
            c = -s * (128.0 + z)
            # x broadcast over the rows, the codes (X3: as they are) over the rows of x
            if X3:
                f0, f1, f2, f3, f4, f5, f6, f7 = _codes(words, ASM)
                x0, x1, x2, x3 = x0[None], x1[None], x2[None], x3[None]
                x4, x5, x6, x7 = x4[None], x5[None], x6[None], x7[None]
                xs, a, c = xs[None], a[:, :, None], c[:, :, None]
            else:
                f0, f1, f2, f3, f4, f5, f6, f7 = _codes(words[None, :, :, :], ASM)
                x0, x1, x2, x3 = x0[:, None], x1[:, None], x2[:, None], x3[:, None]
                x4, x5, x6, x7 = x4[:, None], x5[:, None], x6[:, None], x7[:, None]
                xs, a, c = xs[:, None], a[None, :, :, None], c[None, :, :, None]
            # per word: p = sum_i x_i f_i (8 FMAs a row), xs = sum_i x_i (shared by the rows)
            p = x0 * f0
            p += x1 * f1
            p += x2 * f2
            p += x3 * f3
            p += x4 * f4
            p += x5 * f5
            p += x6 * f6
            p += x7 * f7
            acc_w += a * p + c * xs
        if X3:
            acc_w = acc_w[None, :, :, :]
        acc = tl.sum(tl.sum(acc_w, axis=3), axis=2)
    y_mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :],
                 acc.to(y_ptr.dtype.element_ty), mask=y_mask)
    else:
        tl.atomic_add(ws_ptr + offs_m[:, None] * N + offs_n[None, :], acc, mask=y_mask)


_w4_kernel.configs_for = configs_for


@register_impl("gemv_w4", "triton_w4", backends=TRITON_BACKENDS, kind="triton")
def triton_w4(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
              group_size: int, out: torch.Tensor | None = None,
              split_k: int | None = None) -> torch.Tensor:
    """Triton INT4 GEMV: 32-bit words of codes turned into floats without conversions, scale
    and zero applied per word, per-thread sums; tl.dot once M > 4; split-K only where N
    leaves SMs idle."""
    M, N, K = check_w4_args(x, qweight, scales, zeros, group_size)
    if qweight.data_ptr() % 4 or qweight.stride(1) != 1:
        raise ValueError("triton_w4 reads qweight as 32-bit words: it must be contiguous and "
                         "start on a 4-byte boundary")
    x = x.contiguous()
    y = out if out is not None else torch.empty(M, N, device=x.device, dtype=x.dtype)
    use_dot, block_m = batch_path(M)
    split = split_k or split_k_for(triton.cdiv(N, 16) * triton.cdiv(M, block_m), K, x.device)
    split = max(1, min(split, K // group_size))
    ws = torch.zeros(M, N, device=x.device, dtype=torch.float32) if split > 1 else y
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), split, triton.cdiv(M, block_m))
    _w4_kernel[grid](x, qweight, scales, zeros, y, ws, M, N, K, x.stride(0), qweight.stride(0),
                     scales.stride(0), y.stride(0), G=group_size, BLOCK_M=block_m,
                     SPLIT_K=split, USE_DOT=use_dot, IEEE=x.dtype == torch.float32,
                     **launch_meta(_w4_kernel, use_dot))
    if split > 1:
        y.copy_(ws)
    return y
