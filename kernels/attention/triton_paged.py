"""Paged decode attention in Triton: `triton_onepass`, `triton_splitkv` and `triton` (auto), impls
of `paged_attention` and `paged_attention_kv8`.

One program per (sequence, KV head[, token split]) serves all G = Hq / Hkv query heads of its KV
head from one read of each K/V tile, through the block table, with the running softmax in fp32
registers (log2 domain). INT8 KV is dequantized in registers. Split-KV (flash-decoding) merges the
splits' partial outputs by their (max, sum): `triton_splitkv` in a reduction kernel launched after
the splits, `triton_splitkv_fused` in the last program of each (sequence, KV head) to finish,
which finds out it is last from a counter (one launch: no second kernel's launch, ramp-up and
drain). `triton` splits only when (sequence, KV head) programs cannot fill the GPU and sequences
are long.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import check_out, esize, num_sms, smem_per_block
from ..registry import register_impl
from ..triton_split import last_split, scratch
from ..triton_util import TRITON_BACKENDS, autotune_or_fixed
from .ops import check_inputs, validate

REDUCE_OUTPUTS = 32  # (query head, head dim) outputs a reduction program merges
MERGE_FLOATS = 32 * 128  # partials a merge loads at once: 32 registers a thread, 4 warps
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
    entry and INT8 scales, 16 bytes at most) times kv_buffers, then q and p (G_PAD rows). INT8
    K and V dequantized for fp32's dot (IEEE, no tensor cores) are staged in shared memory once
    more, in fp32 (2 x BLOCK_N x D x 4 bytes in sm_90 compiles)."""
    bn = cfg.kwargs["BLOCK_N"]
    staged = 2 * bn * D * q_esize if kv_esize < q_esize == 4 else 0
    return (kv_buffers(cfg.num_stages) * bn * (2 * D * kv_esize + 16) + G_PAD * (D + bn) * q_esize
            + staged)


# fp32 q: its dot runs on FMA (IEEE), not tensor cores, with the K and V tiles in registers (256 a
# thread at 128 tokens of D = 128): every sm_90 compile at 128 tokens spills 2.7-22 KB a thread on
# Triton 3.6 and 3.9 (`python -m bench.gpucheck.sass --compile-all`), and with INT8 KV, which is
# dequantized into a second copy of each tile, every compile at 64 spills 6.3-8.5 KB; the tuner is
# not given those tiles.
FP32_MAX_BLOCK_N = 64
FP32_KV8_MAX_BLOCK_N = 32


def _prune(configs: list, nargs: dict, **kw) -> list:
    """The configs whose shared memory fits a block of the device (fp32 at BLOCK_N = 128 with
    two or three buffers does not), fp32's tiles at most FP32_MAX_BLOCK_N tokens
    (FP32_KV8_MAX_BLOCK_N with INT8 KV); the first config always stays."""
    q, k = nargs["q_ptr"], nargs["k_ptr"]
    limit = smem_per_block(q.device)
    qes, kves = esize(q.dtype), esize(k.dtype)
    most = FP32_MAX_BLOCK_N if kves > 1 else FP32_KV8_MAX_BLOCK_N
    return [c for c in configs
            if kv_smem(c, kw["D"], kw["G_PAD"], qes, kves) <= limit
            and (qes < 4 or c.kwargs["BLOCK_N"] <= most)] or configs[:1]


def configs_for(q_dtype: torch.dtype, kv_dtype: torch.dtype, D: int, G_PAD: int) -> list:
    """The configs the tuner times for q and K/V of these dtypes where a block has sm_90's shared
    memory (what the prune keeps), for bench.gpucheck.sass to compile."""
    nargs = {"q_ptr": torch.empty(0, dtype=q_dtype), "k_ptr": torch.empty(0, dtype=kv_dtype)}
    return _prune(_CONFIGS, nargs, D=D, G_PAD=G_PAD)


# The key holds what the best tile depends on: the heads a program takes (G), the tokens it
# walks (split_tokens) and how many programs share the SMs (n_programs, a power of two)
@autotune_or_fixed(_CONFIGS, key=["G", "G_PAD", "D", "BLOCK_SIZE", "KV8", "NUM_SPLITS", "FUSED",
                                  "split_tokens", "n_programs"],
                   fixed={"BLOCK_N": 32}, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _paged_attn_kernel(
    q_ptr, k_ptr, v_ptr, ks_ptr, vs_ptr, bt_ptr, sl_ptr, o_ptr, ml_ptr, out_ptr, lock_ptr,
    scale_log2,
    stride_qb, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_sb, stride_ss,
    stride_btb,
    stride_ob, stride_oh, stride_os,
    stride_outb, stride_outh,
    split_tokens, n_programs,
    G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    KV8: tl.constexpr, NUM_SPLITS: tl.constexpr, IEEE: tl.constexpr, FUSED: tl.constexpr,
    G2: tl.constexpr, S_PAD: tl.constexpr, S_CHUNK: tl.constexpr, BLOCK_N: tl.constexpr,
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
        if FUSED:  # the last split of (b, h) to finish merges (kernels/triton_split.py)
            if last_split(lock_ptr + b * tl.num_programs(1) + h, NUM_SPLITS):
                _merge_splits(o_ptr, ml_ptr, out_ptr, b, h, tl.num_programs(1) * G,
                              stride_ob, stride_oh, stride_os, stride_outb, stride_outh, 0,
                              G, G2, D, NUM_SPLITS, S_PAD, S_CHUNK)


@triton.jit
def _merge_splits(part_ptr, ml_ptr, o_ptr, b, h, Hq, stride_pb, stride_ph, stride_ps,
                  stride_ob, stride_oh, d0, G: tl.constexpr, G2: tl.constexpr,
                  BLOCK_D: tl.constexpr, NUM_SPLITS: tl.constexpr, S_PAD: tl.constexpr,
                  S_CHUNK: tl.constexpr):
    # The G query heads of KV head h, head dims d0 .. d0 + BLOCK_D: each split's partial output
    # weighed by exp2(m_s - max m), over the splits' combined sum. S_CHUNK splits a load, their
    # partials [S_CHUNK, G2, BLOCK_D] kept to ~32 registers a thread; the loads bypass L1
    # (.cg): in the fused merge other SMs wrote them during this launch.
    offs_g = tl.arange(0, G2)
    g_mask = offs_g < G
    hq = h * G + offs_g
    offs_d = d0 + tl.arange(0, BLOCK_D)
    offs_s = tl.arange(0, S_PAD)
    mask = (offs_s < NUM_SPLITS)[:, None] & g_mask[None, :]
    ml = ((b * Hq + hq[None, :]) * NUM_SPLITS + offs_s[:, None]) * 2
    m = tl.load(ml_ptr + ml, mask=mask, other=float("-inf"), cache_modifier=".cg")
    l = tl.load(ml_ptr + ml + 1, mask=mask, other=0.0, cache_modifier=".cg")
    m_max = tl.max(m, axis=0)  # -inf only for padded heads, whose rows are never stored
    den = tl.sum(tl.where(m > float("-inf"), l * tl.exp2(m - m_max[None, :]), 0.0), axis=0)
    acc = tl.zeros((G2, BLOCK_D), dtype=tl.float32)
    for s0 in tl.static_range(0, S_PAD, S_CHUNK):
        offs_c = s0 + tl.arange(0, S_CHUNK)
        cmask = (offs_c < NUM_SPLITS)[:, None] & g_mask[None, :]
        mc = tl.load(ml_ptr + ((b * Hq + hq[None, :]) * NUM_SPLITS + offs_c[:, None]) * 2,
                     mask=cmask, other=float("-inf"), cache_modifier=".cg")
        w = tl.where(mc > float("-inf"), tl.exp2(mc - m_max[None, :]), 0.0)
        part = tl.load(part_ptr + b * stride_pb + hq[None, :, None] * stride_ph
                       + offs_c[:, None, None] * stride_ps + offs_d[None, None, :],
                       mask=cmask[:, :, None], other=0.0, cache_modifier=".cg")
        acc += tl.sum(part * w[:, :, None], axis=0)
    o = acc / den[:, None]
    tl.store(o_ptr + b * stride_ob + hq[:, None] * stride_oh + offs_d[None, :],
             o.to(o_ptr.dtype.element_ty), mask=g_mask[:, None])


@triton.jit
def _splitkv_reduce_kernel(part_ptr, ml_ptr, o_ptr, stride_pb, stride_ph, stride_ps,
                           stride_ob, stride_oh, G: tl.constexpr, G2: tl.constexpr,
                           BLOCK_D: tl.constexpr, NUM_SPLITS: tl.constexpr, S_PAD: tl.constexpr,
                           S_CHUNK: tl.constexpr):
    # One program per (sequence, KV head, BLOCK_D of the head dim). Slicing D gives a batch of
    # one D / BLOCK_D times the programs (one a head took 6 us of the H200's 45 at 1 x 32768).
    _merge_splits(part_ptr, ml_ptr, o_ptr, tl.program_id(0), tl.program_id(1),
                  tl.num_programs(1) * G, stride_pb, stride_ph, stride_ps, stride_ob, stride_oh,
                  tl.program_id(2) * BLOCK_D, G, G2, BLOCK_D, NUM_SPLITS, S_PAD, S_CHUNK)


def auto_splits(B: int, Hkv: int, max_tokens: int, sms: int | None) -> int:
    """Split-KV when (sequence, KV head) programs cannot fill the `sms` SMs of the GPU and
    each sequence is long enough that a split still streams >= 512 tokens: aim for ~2 waves
    of programs. No GPU (sms None): one pass."""
    programs = B * Hkv
    if sms is None or programs >= sms or max_tokens < 1024:
        return 1
    return max(1, min(-(-2 * sms // programs), max_tokens // 512, 64))


def merge_meta(G: int, D: int, num_splits: int) -> dict:
    """The merge's tile: G2 query-head rows (G padded to a power of two), S_PAD splits loaded
    S_CHUNK at a time, and the reduction kernel's head-dim slice BLOCK_D."""
    g2 = triton.next_power_of_2(G)
    s_pad = triton.next_power_of_2(num_splits)
    block_d = max(1, min(D, REDUCE_OUTPUTS // g2))
    return dict(G2=g2, S_PAD=s_pad, BLOCK_D=block_d,
                S_CHUNK=min(s_pad, max(1, MERGE_FLOATS // (g2 * D))),
                REDUCE_S_CHUNK=min(s_pad, max(1, MERGE_FLOATS // (g2 * block_d))))


def launch_plan(B: int, Hq: int, Hkv: int, D: int, BS: int, MB: int, kv8: bool, ieee: bool,
                num_splits: int, fused: bool) -> dict:
    """What a launch at this shape compiles and runs: the split count and tokens a split, the
    kernel's grid and constexprs (the config's left to the tuner) and, split but not fused, the
    reduction kernel's grid and constexprs. _launch runs it; bench.gpucheck.sass compiles the
    same variants for sm_90 without a GPU."""
    G = Hq // Hkv
    # Each split covers a multiple of the largest BLOCK_N, so splits never share a tile.
    split_tokens = triton.cdiv(triton.cdiv(MB * BS, num_splits), 128) * 128
    num_splits = triton.cdiv(MB * BS, split_tokens)
    if num_splits == 1:  # one pass: the table's width bounds it
        split_tokens = MB * BS
    fused = fused and num_splits > 1
    mm = merge_meta(G, D, num_splits)
    const = dict(G=G, G_PAD=max(16, triton.next_power_of_2(G)), D=D, BLOCK_SIZE=BS, KV8=kv8,
                 NUM_SPLITS=num_splits, IEEE=ieee, FUSED=fused, G2=mm["G2"], S_PAD=mm["S_PAD"],
                 S_CHUNK=mm["S_CHUNK"])
    reduce = None
    if num_splits > 1 and not fused:
        reduce = dict(grid=(B, Hkv, D // mm["BLOCK_D"]),
                      const=dict(G=G, G2=mm["G2"], BLOCK_D=mm["BLOCK_D"], NUM_SPLITS=num_splits,
                                 S_PAD=mm["S_PAD"], S_CHUNK=mm["REDUCE_S_CHUNK"]))
    return dict(grid=(B, Hkv, num_splits), split_tokens=split_tokens, const=const,
                reduce=reduce, n_programs=triton.next_power_of_2(B * Hkv * num_splits))


def _launch(q, k, v, ks, vs, block_table, seq_lens, scale, out, num_splits, fused=False):
    check_inputs(q, k, v, block_table, seq_lens, ks, vs, values=False)
    if k.stride(3) != 1 or v.stride() != k.stride() or q.stride(2) != 1:
        raise ValueError("paged attention needs contiguous head-dim rows and k/v of one layout")
    if block_table.shape[1] > 1 and block_table.stride(1) != 1 or \
            seq_lens.shape[0] > 1 and seq_lens.stride(0) != 1:
        raise ValueError("paged attention reads block_table rows and seq_lens as contiguous "
                         f"(strides {block_table.stride()} and {seq_lens.stride()})")
    B, Hq, D = q.shape
    if D & (D - 1):
        raise NotImplementedError(f"the Triton paged attention loads a head in one power-of-two "
                                  f"block: D={D} is not a power of two")
    NB, BS, Hkv, _ = k.shape
    check_out("paged attention", out, (B, Hq, D), q.device)  # stored through its pointer
    out = torch.empty_like(q) if out is None else out
    if out.stride(2) != 1:
        raise ValueError("out needs contiguous head-dim rows")
    kv8 = ks is not None
    if not kv8:
        ks = vs = k  # unused pointers
    elif ks.stride() != vs.stride() or ks.stride(2) != 1:
        raise ValueError("k_scale and v_scale need the same contiguous layout")
    plan = launch_plan(B, Hq, Hkv, D, BS, block_table.shape[1], kv8, q.dtype == torch.float32,
                       num_splits, fused)
    const = {**plan["const"], **_paged_attn_kernel.fixed_meta}
    args = (q, k, v, ks, vs, block_table, seq_lens)
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
               ks.stride(0), ks.stride(1), block_table.stride(0))
    scale_log2 = float(scale) * 1.4426950408889634
    if const["NUM_SPLITS"] == 1:
        _paged_attn_kernel[plan["grid"]](*args, out, out, out, seq_lens, scale_log2, *strides,
                                         out.stride(0), out.stride(1), 0, 0, 0,
                                         plan["split_tokens"], plan["n_programs"], **const)
        return out
    part = torch.empty(B, Hq, const["NUM_SPLITS"], D, device=q.device, dtype=torch.float32)
    ml = torch.empty(B, Hq, const["NUM_SPLITS"], 2, device=q.device, dtype=torch.float32)
    # one counter a (sequence, KV head); an unused pointer when not fused
    locks = scratch(q.device, B * Hkv, torch.int32) if const["FUSED"] else seq_lens
    _paged_attn_kernel[plan["grid"]](*args, part, ml, out, locks, scale_log2, *strides,
                                     part.stride(0), part.stride(1), part.stride(2),
                                     out.stride(0), out.stride(1), plan["split_tokens"],
                                     plan["n_programs"], **const)
    if plan["reduce"] is not None:
        _splitkv_reduce_kernel[plan["reduce"]["grid"]](
            part, ml, out, part.stride(0), part.stride(1), part.stride(2), out.stride(0),
            out.stride(1), **plan["reduce"]["const"])
    return out


def splits_for(impl: str, B: int, Hkv: int, MB: int, BS: int, sms: int | None) -> tuple[int, bool]:
    """(splits asked, fused) of a Triton impl at this shape on a GPU of `sms` SMs. The split-KV
    impls always split (at least 2 when the table allows), to test that path; `triton` chooses."""
    if impl == "triton_onepass":
        return 1, False
    if impl in ("triton_splitkv", "triton_splitkv_fused"):
        return max(2, triton.cdiv(MB * BS, 512)), impl == "triton_splitkv_fused"
    return auto_splits(B, Hkv, MB * BS, sms), False


def _register_triton(op_name: str, kv8: bool) -> None:
    """triton_onepass, triton_splitkv, triton_splitkv_fused and triton (auto) for one op; same
    kernel, kv8 a flag."""
    def unpack(args: tuple) -> tuple:
        if kv8:
            return args
        q, k, v, bt, sl, scale = args
        return q, k, v, None, None, bt, sl, scale

    def reg(name: str, doc: str) -> None:
        def fn(*args, out: torch.Tensor | None = None) -> torch.Tensor:
            q, k, v, ks, vs, bt, sl, scale = unpack(args)
            splits, fused = splits_for(name, q.shape[0], k.shape[2], bt.shape[1], k.shape[1],
                                       num_sms(q.device))
            return _launch(q, k, v, ks, vs, bt, sl, scale, out, splits, fused)
        fn.__doc__ = doc
        fn.__name__ = fn.__qualname__ = name
        register_impl(op_name, name, backends=TRITON_BACKENDS, kind="triton",
                      prepare=validate)(fn)

    what = "INT8 KV dequantized in registers, " if kv8 else ""
    reg("triton_onepass",
        f"Triton, one program per (sequence, KV head): {what}GQA-aware, online softmax.")
    reg("triton_splitkv",
        f"Triton split-KV (flash-decoding) + reduction kernel: {what}always splits.")
    reg("triton_splitkv_fused",
        f"Triton split-KV, the last split of each (sequence, KV head) merges (one launch): "
        f"{what}always splits.")
    reg("triton",
        f"Triton, split-KV chosen automatically for small batch x long context: {what}auto.")


_register_triton("paged_attention", kv8=False)
_register_triton("paged_attention_kv8", kv8=True)
