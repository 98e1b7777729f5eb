"""Paged decode attention in Triton: `triton_onepass`, `triton_splitkv` and `triton` (auto), impls
of `paged_attention` and `paged_attention_kv8`.

One program per (sequence, KV head[, token split]) serves all G = Hq / Hkv query heads of its KV
head from one read of each K/V tile, through the block table, with the running softmax in fp32
registers (log2 domain). INT8 KV is dequantized in registers. Split-KV (flash-decoding) adds a
reduction kernel that merges the splits' partial outputs by their (max, sum); `triton` splits
only when (sequence, KV head) programs cannot fill the GPU and sequences are long.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import esize, num_sms, smem_per_block
from ..registry import register_impl
from ..triton_util import TRITON_BACKENDS, autotune_or_fixed
from .ops import check_inputs, validate

REDUCE_BLOCK_D = 32  # the head-dim slice of a reduction program
# 4 warps: in the H200's autotune timings (results/h200/, 2026-12-04) the best 8-warp config
# was 1.2-3.5% behind the best 4-warp one in every case, and each config is a compile the
# device check's time box pays for. num_stages - 1 K/V tiles are in flight (kv_buffers): the
# kernel loads each step's table entries one step ahead (see the loop).
_CONFIGS = [
    triton.Config({"BLOCK_N": bn}, num_warps=4, num_stages=ns)
    for bn in (32, 64, 128) for ns in (2, 3, 4)
]


def kv_buffers(num_stages: int) -> int:
    """K/V tiles Triton's pipeliner keeps in shared memory at `num_stages` (an sm_90 compile's
    shared memory agrees: tests/bench/gpucheck/test_sass.py)."""
    return max(1, num_stages - 1)


def kv_smem(cfg: triton.Config, D: int, G_PAD: int, q_esize: int, kv_esize: int) -> int:
    """Shared memory of a config, an upper bound: its K and V tiles (and each token's table
    entry and INT8 scales, 16 bytes at most) times kv_buffers, then q and p (G_PAD rows)."""
    bn = cfg.kwargs["BLOCK_N"]
    return kv_buffers(cfg.num_stages) * bn * (2 * D * kv_esize + 16) + G_PAD * (D + bn) * q_esize


def _prune(configs: list, nargs: dict, **kw) -> list:
    """The configs whose shared memory fits a block of the device (fp32 at BLOCK_N = 128 with
    two or three buffers does not); the first config always fits."""
    q, k = nargs["q_ptr"], nargs["k_ptr"]
    limit = smem_per_block(q.device)
    return [c for c in configs
            if kv_smem(c, kw["D"], kw["G_PAD"], esize(q.dtype), esize(k.dtype)) <= limit] \
        or configs[:1]


@autotune_or_fixed(_CONFIGS, key=["G_PAD", "D", "BLOCK_SIZE", "KV8", "NUM_SPLITS"],
                   fixed={"BLOCK_N": 32}, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _paged_attn_kernel(
    q_ptr, k_ptr, v_ptr, ks_ptr, vs_ptr, bt_ptr, sl_ptr, o_ptr, ml_ptr,
    scale_log2,
    stride_qb, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_sb, stride_ss,
    stride_btb,
    stride_ob, stride_oh, stride_os,
    split_tokens,
    G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    KV8: tl.constexpr, NUM_SPLITS: tl.constexpr, IEEE: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # One program: sequence b, KV head h, token split s. Its G query heads share every K/V
    # tile it loads; scores and the running softmax stay in fp32 registers.
    b = tl.program_id(0)
    h = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(sl_ptr + b)
    start = split * split_tokens
    end = tl.minimum(seq_len, start + split_tokens)

    offs_g = tl.arange(0, G_PAD)
    offs_d = tl.arange(0, D)
    g_mask = offs_g < G
    q = tl.load(q_ptr + b * stride_qb + (h * G + offs_g)[:, None] * stride_qh + offs_d[None, :],
                mask=g_mask[:, None], other=0.0)

    m_i = tl.full((G_PAD,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((G_PAD,), dtype=tl.float32)
    acc = tl.zeros((G_PAD, D), dtype=tl.float32)
    # Table entries are loaded only for live tokens (garbage entries are never touched), each
    # step's one step ahead: loaded in the step that uses them, they would make the K/V loads
    # indirect, and Triton's pipeliner then splits num_stages between the two loads and keeps
    # a single K/V tile at 3 and 4 stages (the sm_90 TTGIR shows it), none in flight while the
    # last is used.
    offs_t = start + tl.arange(0, BLOCK_N)
    blk_next = tl.load(bt_ptr + b * stride_btb + offs_t // BLOCK_SIZE, mask=offs_t < end, other=0)
    for t0 in range(start, end, BLOCK_N):
        offs_t = t0 + tl.arange(0, BLOCK_N)
        t_mask = offs_t < end
        blk = blk_next
        offs_next = offs_t + BLOCK_N
        blk_next = tl.load(bt_ptr + b * stride_btb + offs_next // BLOCK_SIZE,
                           mask=offs_next < end, other=0)
        slot = offs_t % BLOCK_SIZE
        row = blk.to(tl.int64) * stride_kb + slot * stride_ks + h * stride_kh
        k = tl.load(k_ptr + row[:, None] + offs_d[None, :], mask=t_mask[:, None], other=0)
        v = tl.load(v_ptr + row[:, None] + offs_d[None, :], mask=t_mask[:, None], other=0)
        if KV8:  # dequantize in registers, then compute in q's dtype like the 16-bit path
            srow = blk.to(tl.int64) * stride_sb + slot * stride_ss + h
            ks = tl.load(ks_ptr + srow, mask=t_mask, other=0).to(tl.float32)
            vs = tl.load(vs_ptr + srow, mask=t_mask, other=0).to(tl.float32)
            k = (k.to(tl.float32) * ks[:, None]).to(q.dtype)
            v = (v.to(tl.float32) * vs[:, None]).to(q.dtype)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(t_mask[None, :], s * scale_log2, float("-inf"))  # log2 domain
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    offs_h = h * G + offs_g
    if NUM_SPLITS == 1:
        o = acc / l_i[:, None]
        tl.store(o_ptr + b * stride_ob + offs_h[:, None] * stride_oh + offs_d[None, :],
                 o.to(o_ptr.dtype.element_ty), mask=g_mask[:, None])
    else:
        # Unnormalized partial output plus (max, sum) per query head; an empty split leaves
        # m = -inf, l = 0, acc = 0, which the reduction weighs by zero.
        base = b * stride_ob + offs_h * stride_oh + split * stride_os
        tl.store(o_ptr + base[:, None] + offs_d[None, :], acc, mask=g_mask[:, None])
        ml = ((b * tl.num_programs(1) * G + offs_h) * NUM_SPLITS + split) * 2
        tl.store(ml_ptr + ml, m_i, mask=g_mask)
        tl.store(ml_ptr + ml + 1, l_i, mask=g_mask)


@triton.jit
def _splitkv_reduce_kernel(part_ptr, ml_ptr, o_ptr, stride_pb, stride_ph, stride_ps,
                           stride_ob, stride_oh, Hq,
                           D: tl.constexpr, NUM_SPLITS: tl.constexpr, S_PAD: tl.constexpr,
                           BLOCK_D: tl.constexpr):
    # One program per (sequence, query head, BLOCK_D of the head dim): rescale each split by
    # exp2(m_s - max m) and normalize by the combined sum. Slicing D gives a batch of one
    # D / BLOCK_D times the programs (one a head took 6 us of the H200's 45 at 1 x 32768).
    b = tl.program_id(0)
    hq = tl.program_id(1)
    offs_s = tl.arange(0, S_PAD)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    s_mask = offs_s < NUM_SPLITS
    ml = (b * Hq + hq) * NUM_SPLITS * 2 + offs_s * 2
    m = tl.load(ml_ptr + ml, mask=s_mask, other=float("-inf"))
    l = tl.load(ml_ptr + ml + 1, mask=s_mask, other=0.0)
    m_max = tl.max(m, axis=0)
    w = tl.where(s_mask & (m > float("-inf")), tl.exp2(m - m_max), 0.0)
    part = tl.load(part_ptr + b * stride_pb + hq * stride_ph + offs_s[:, None] * stride_ps
                   + offs_d[None, :], mask=s_mask[:, None], other=0.0)
    o = tl.sum(part * w[:, None], axis=0) / tl.sum(l * w, axis=0)
    tl.store(o_ptr + b * stride_ob + hq * stride_oh + offs_d, o.to(o_ptr.dtype.element_ty))


def auto_splits(B: int, Hkv: int, max_tokens: int, sms: int | None) -> int:
    """Split-KV when (sequence, KV head) programs cannot fill the `sms` SMs of the GPU and
    each sequence is long enough that a split still streams >= 512 tokens: aim for ~2 waves
    of programs. No GPU (sms None): one pass."""
    programs = B * Hkv
    if sms is None or programs >= sms or max_tokens < 1024:
        return 1
    return max(1, min(-(-2 * sms // programs), max_tokens // 512, 64))


def _launch(q, k, v, ks, vs, block_table, seq_lens, scale, out, num_splits):
    check_inputs(q, k, v, block_table, seq_lens, ks, vs, values=False)
    if k.stride(3) != 1 or v.stride() != k.stride() or q.stride(2) != 1:
        raise ValueError("paged attention needs contiguous head-dim rows and k/v of one layout")
    B, Hq, D = q.shape
    NB, BS, Hkv, _ = k.shape
    G = Hq // Hkv
    MB = block_table.shape[1]
    out = torch.empty_like(q) if out is None else out
    if out.stride(2) != 1:
        raise ValueError("out needs contiguous head-dim rows")
    kv8 = ks is not None
    if not kv8:
        ks = vs = k  # unused pointers
    elif ks.stride() != vs.stride() or ks.stride(2) != 1:
        raise ValueError("k_scale and v_scale need the same contiguous layout")
    g_pad = max(16, triton.next_power_of_2(G))
    meta = _paged_attn_kernel.fixed_meta
    # Each split covers a multiple of the largest BLOCK_N, so splits never share a tile.
    split_tokens = triton.cdiv(triton.cdiv(MB * BS, num_splits), 128) * 128
    num_splits = triton.cdiv(MB * BS, split_tokens)
    common = dict(G=G, G_PAD=g_pad, D=D, BLOCK_SIZE=BS, KV8=kv8,
                  IEEE=q.dtype == torch.float32, **meta)
    args = (q, k, v, ks, vs, block_table, seq_lens)
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
               ks.stride(0), ks.stride(1), block_table.stride(0))
    scale_log2 = float(scale) * 1.4426950408889634
    if num_splits == 1:
        _paged_attn_kernel[(B, Hkv, 1)](*args, out, out, scale_log2, *strides,
                                        out.stride(0), out.stride(1), 0, MB * BS,
                                        NUM_SPLITS=1, **common)
        return out
    part = torch.empty(B, Hq, num_splits, D, device=q.device, dtype=torch.float32)
    ml = torch.empty(B, Hq, num_splits, 2, device=q.device, dtype=torch.float32)
    _paged_attn_kernel[(B, Hkv, num_splits)](*args, part, ml, scale_log2, *strides,
                                             part.stride(0), part.stride(1), part.stride(2),
                                             split_tokens, NUM_SPLITS=num_splits, **common)
    block_d = min(D, REDUCE_BLOCK_D)
    _splitkv_reduce_kernel[(B, Hq, D // block_d)](part, ml, out, part.stride(0), part.stride(1),
                                                  part.stride(2), out.stride(0), out.stride(1),
                                                  Hq, D=D, NUM_SPLITS=num_splits,
                                                  S_PAD=triton.next_power_of_2(num_splits),
                                                  BLOCK_D=block_d)
    return out


def _auto(q, k_cache, block_table) -> int:
    return auto_splits(q.shape[0], k_cache.shape[2], block_table.shape[1] * k_cache.shape[1],
                       num_sms(q.device))


def _fixed_splits(block_table, block_size) -> int:
    """Split-KV impls always split (at least 2 when the table allows), to test that path."""
    return max(2, triton.cdiv(block_table.shape[1] * block_size, 512))


def _register_triton(op_name: str, kv8: bool) -> None:
    """triton_onepass, triton_splitkv and triton (auto) for one op; same kernel, kv8 a flag."""
    def unpack(args: tuple) -> tuple:
        if kv8:
            return args
        q, k, v, bt, sl, scale = args
        return q, k, v, None, None, bt, sl, scale

    def reg(name: str, splits, doc: str) -> None:
        def fn(*args, out: torch.Tensor | None = None) -> torch.Tensor:
            q, k, v, ks, vs, bt, sl, scale = unpack(args)
            return _launch(q, k, v, ks, vs, bt, sl, scale, out, splits(q, k, bt))
        fn.__doc__ = doc
        fn.__name__ = fn.__qualname__ = name
        register_impl(op_name, name, backends=TRITON_BACKENDS, kind="triton",
                      prepare=validate)(fn)

    what = "INT8 KV dequantized in registers, " if kv8 else ""
    reg("triton_onepass", lambda q, k, bt: 1,
        f"Triton, one program per (sequence, KV head): {what}GQA-aware, online softmax.")
    reg("triton_splitkv", lambda q, k, bt: _fixed_splits(bt, k.shape[1]),
        f"Triton split-KV (flash-decoding) + reduction kernel: {what}always splits.")
    reg("triton", _auto,
        f"Triton, split-KV chosen automatically for small batch x long context: {what}auto.")


_register_triton("paged_attention", kv8=False)
_register_triton("paged_attention_kv8", kv8=True)
