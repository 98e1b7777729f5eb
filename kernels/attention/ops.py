"""`paged_attention` and `paged_attention_kv8`: one decode step of attention over a paged KV cache.

    paged_attention(q[B,Hq,D], k_cache[NB,BS,Hkv,D], v_cache[NB,BS,Hkv,D],
                    block_table int32[B,MB], seq_lens int32[B], scale) -> out[B,Hq,D]
    paged_attention_kv8(q[B,Hq,D], k_cache int8[NB,BS,Hkv,D], v_cache int8[NB,BS,Hkv,D],
                        k_scale[NB,BS,Hkv], v_scale[NB,BS,Hkv],
                        block_table int32[B,MB], seq_lens int32[B], scale) -> out[B,Hq,D]

Layout (docs/kernels.md, "Formats"): token t of sequence b lives in block
`block_table[b, t // BS]`, slot `t % BS`; query head h reads KV head `h // (Hq // Hkv)`; positions
>= seq_lens[b] and table entries past the sequence may hold anything (NaN, inf, out-of-range block
ids) and must not change the output: the C and Triton kernels never read them, the PyTorch impls
gather whole blocks and zero K and V past seq_len before attention. INT8 KV is symmetric per
(token, head): `k = k_int8 * k_scale`, scales in q's dtype, produced by kernels.quant.quantize_kv_int8.

At decode each step reads every sequence's whole KV cache once, so that read is the traffic:
bytes = q + out + K and V of the actual seq_lens tokens (all KV heads, each block once however many
query heads share it) + the table entries and seq_lens read (+ scales for kv8). Impls:
- `gather_sdpa` (baseline): gather the padded cache through the table, then SDPA; the gather's
  extra write and re-read is exactly the cost a paged kernel exists to avoid.
- `torch_chunked`: all sequences advance together a chunk of blocks at a time, gathered into a
  reused buffer that stays in the last-level cache; PyTorch's fused CPU flash-attention kernel runs
  on a strided view of each chunk, and chunks merge by log-sum-exp.
- `simd_c` (CPU): hand-written C with OpenMP (simd.c: AVX2/AVX-512, portable C elsewhere), one
  fp32 online-softmax pass per sequence reading each block once, in place: the fast CPU path.
- `triton_onepass` / `triton_splitkv` / `triton_splitkv_fused` / `triton` (auto): one program per
  (sequence, KV head[, split]) serving all query heads of the group from one read of each block,
  online softmax in fp32; split-KV merges the splits in a reduction kernel or (fused) in the last
  program of each (sequence, KV head) to finish, and `triton` splits for small batch x long context.

This file holds the ops (layout, inputs, float64 reference, bytes, registration); the impls sit
beside it: pytorch.py, simd.py with simd.c, triton_paged.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from ..common import TOLERANCE, esize
from ..quant import CHUNK_ELEMENTS, quantize_kv_int8
from ..registry import Op, register_op

F32, F16, BF16, I8, I32 = torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.int32
BLOCK_SIZES = (8, 16, 32, 64)
HEAD_DIMS = (32, 64, 128, 256)
# Unused slots: K holds GARBAGE (finite in every dtype, it dominates any softmax that reads it),
# V holds NaN (a kernel that reads it, even with zero weight, returns NaN: the contract says such
# slots may hold NaN). INT8 V: its codes from GARBAGE, its scales NaN.
GARBAGE = 100.0
MAX_POOL_BYTES = 2**36  # no device holds a pool larger than 64 GiB in this project's catalog
MAX_HEADS = 4096  # query heads; today's models have at most 128
MAX_CONTEXT = 2**31 - 1  # seq_lens are int32


# --- shape ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PagedAttentionShape:
    """B sequences of at most `context` tokens; Hq query heads over Hkv KV heads of size D.

    ragged=1: seq_lens are drawn in [context/2, context] (the first is exactly `context`), a
    function of the shape alone so bytes_moved knows them; ragged=0: every sequence is `context`.
    The pool holds `pool` times the blocks read (>= 2 by default, so a sequence's blocks are
    scattered through memory that is mostly not read).
    """
    B: int
    Hq: int
    Hkv: int
    D: int
    context: int
    block_size: int = 16
    ragged: int = 1
    pool: int = 2

    def __post_init__(self) -> None:
        for name in ("B", "Hq", "Hkv", "D", "context", "block_size", "pool"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.Hq % self.Hkv:
            raise ValueError(f"Hq={self.Hq} is not a multiple of Hkv={self.Hkv} "
                             "(each KV head serves Hq/Hkv query heads)")
        if self.block_size not in BLOCK_SIZES:
            raise ValueError(f"block_size must be one of {BLOCK_SIZES}, got {self.block_size}")
        if self.D not in HEAD_DIMS:
            raise ValueError(f"head dim D must be one of {HEAD_DIMS}, got {self.D}")
        if self.ragged not in (0, 1):
            raise ValueError(f"ragged must be 0 or 1, got {self.ragged!r}")
        if self.B > 4096:
            raise ValueError(f"B={self.B} is not a decode batch (at most 4096)")
        if self.Hq > MAX_HEADS:
            raise ValueError(f"Hq={self.Hq} query heads is more than any model has "
                             f"(at most {MAX_HEADS})")
        if self.context > MAX_CONTEXT:  # before pool_blocks, which draws the ragged seq_lens
            raise ValueError(f"context={self.context} does not fit the int32 seq_lens "
                             f"(at most {MAX_CONTEXT})")
        if self.pool_blocks * self.block_size * self.Hkv * self.D * 2 * 4 > MAX_POOL_BYTES:
            raise ValueError(f"KV pool of {self.pool_blocks} blocks is larger than any device "
                             "memory; lower B, context or pool")

    def seq_lens(self) -> list[int]:
        return list(_seq_lens(self.B, self.context, self.ragged))

    @property
    def max_blocks(self) -> int:
        """Table width MB: blocks of the longest possible sequence."""
        return -(-self.context // self.block_size)

    @property
    def blocks_read(self) -> int:
        return sum(-(-n // self.block_size) for n in self.seq_lens())

    @property
    def pool_blocks(self) -> int:
        return max(self.pool * self.blocks_read, self.blocks_read + 8)


@lru_cache(maxsize=256)
def _seq_lens(B: int, context: int, ragged: int) -> tuple[int, ...]:
    if not ragged or B == 1:
        return (context,) * B
    g = torch.Generator().manual_seed(1000003 * B + context)
    lo = max(1, context // 2)
    rest = torch.randint(lo, context + 1, (B - 1,), generator=g).tolist()
    return (context, *rest)


# --- inputs -----------------------------------------------------------------------------------

def build_inputs(shape: PagedAttentionShape, dtype: torch.dtype, device, seed: int,
                 seq_lens: list[int] | None = None, kv8: bool = False) -> tuple:
    """Random paged-attention inputs; `seq_lens` overrides the shape's policy (tests).

    Each sequence's blocks are a random subset of a pool `shape.pool` times larger than what is
    read, in random order (never contiguous); unused table entries hold garbage, including
    out-of-range block numbers, and unused blocks and slots past a sequence's end hold large
    values, so a kernel that reads them gives a wrong answer.
    """
    B, Hq, Hkv, D, BS, MB = shape.B, shape.Hq, shape.Hkv, shape.D, shape.block_size, shape.max_blocks
    lens = shape.seq_lens() if seq_lens is None else [int(n) for n in seq_lens]
    if len(lens) != B:
        raise ValueError(f"{len(lens)} seq_lens for B={B}")
    needed = [-(-n // BS) for n in lens]
    NB = max(shape.pool * sum(needed), sum(needed) + 8)
    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    gdev = torch.Generator(device=dev).manual_seed(seed) if dev.type == "cuda" else g
    on_dev = dict(device=dev) if dev.type == "cuda" else {}

    perm = torch.randperm(NB, generator=g)
    table = torch.randint(-NB, 2 * NB, (B, MB), generator=g, dtype=I32)  # garbage
    used = torch.zeros(NB, BS, dtype=torch.bool)
    pos = 0
    for b, n in enumerate(needed):
        blocks = perm[pos:pos + n]
        pos += n
        table[b, :n] = blocks.to(I32)
        full = torch.arange(n * BS) < lens[b]
        used[blocks] = full.view(n, BS)

    unused = ~used.to(dev)[:, :, None, None]

    def cache() -> torch.Tensor:
        x = torch.randn(NB, BS, Hkv, D, generator=gdev, dtype=F32, **on_dev)
        return x.masked_fill_(unused, GARBAGE)

    q = torch.randn(B, Hq, D, generator=gdev, dtype=F32, **on_dev)
    k, v = cache(), cache()
    if kv8:
        k, k_scale = quantize_kv_int8(k, dtype)
        v, v_scale = quantize_kv_int8(v, dtype)
        v_scale.masked_fill_(unused[..., 0], float("nan"))
        kv = (k.to(dev), v.to(dev), k_scale.to(dev), v_scale.to(dev))
    else:
        v.masked_fill_(unused, float("nan"))
        kv = (k.to(device=dev, dtype=dtype), v.to(device=dev, dtype=dtype))
    sl = torch.tensor(lens, dtype=I32)
    return (q.to(device=dev, dtype=dtype), *kv, table.to(dev), sl.to(dev), 1.0 / math.sqrt(D))


def make_inputs(shape: PagedAttentionShape, dtype: torch.dtype, device, seed: int) -> tuple:
    return build_inputs(shape, dtype, device, seed)


def make_inputs_kv8(shape: PagedAttentionShape, dtype: torch.dtype, device, seed: int) -> tuple:
    return build_inputs(shape, dtype, device, seed, kv8=True)


# --- validation -------------------------------------------------------------------------------

def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_table: torch.Tensor,
                 seq_lens: torch.Tensor, k_scale: torch.Tensor | None = None,
                 v_scale: torch.Tensor | None = None, values: bool = True) -> None:
    """Raise ValueError naming the first inconsistency. `values` also checks seq_lens against the
    table (reads seq_lens: a device sync, so launchers skip it and `prepare` does it untimed)."""
    if q.dim() != 3:
        raise ValueError(f"q must be [B, Hq, D], got shape {tuple(q.shape)}")
    B, Hq, D = q.shape
    if k.dim() != 4 or k.shape != v.shape:
        raise ValueError(f"k_cache and v_cache must both be [NB, BS, Hkv, D], got "
                         f"{tuple(k.shape)} and {tuple(v.shape)}")
    NB, BS, Hkv, Dk = k.shape
    if Dk != D:
        raise ValueError(f"q has head dim {D} but the KV cache has {Dk}")
    if Hq % Hkv:
        raise ValueError(f"Hq={Hq} is not a multiple of Hkv={Hkv}")
    kv8 = k_scale is not None
    kv_dtype = I8 if kv8 else q.dtype
    if q.dtype not in (F32, F16, BF16):
        raise ValueError(f"q must be float32, float16 or bfloat16, got {q.dtype}")
    if k.dtype != kv_dtype or v.dtype != kv_dtype:
        raise ValueError(f"KV cache dtype {k.dtype}/{v.dtype} does not match: expected {kv_dtype}"
                         + (" (INT8 KV)" if kv8 else " (q's dtype)"))
    if kv8:
        for name, s in (("k_scale", k_scale), ("v_scale", v_scale)):
            if s is None or tuple(s.shape) != (NB, BS, Hkv):
                raise ValueError(f"{name} must be [NB, BS, Hkv] = {(NB, BS, Hkv)}, got "
                                 f"{None if s is None else tuple(s.shape)}")
            if s.dtype != q.dtype:
                raise ValueError(f"{name} dtype {s.dtype} does not match q's {q.dtype}")
    if block_table.dim() != 2 or block_table.shape[0] != B or block_table.dtype != I32:
        raise ValueError(f"block_table must be int32 [B={B}, MB], got {block_table.dtype} "
                         f"{tuple(block_table.shape)}")
    if tuple(seq_lens.shape) != (B,) or seq_lens.dtype != I32:
        raise ValueError(f"seq_lens must be int32 [B={B}], got {seq_lens.dtype} "
                         f"{tuple(seq_lens.shape)}")
    if values and B:
        MB = block_table.shape[1]
        lo, hi = int(seq_lens.min()), int(seq_lens.max())
        if lo < 1:
            raise ValueError(f"seq_lens must be >= 1, got {lo}")
        if hi > MB * BS:
            raise ValueError(f"seq_len {hi} is past the block table ({MB} blocks of {BS} tokens "
                             f"= {MB * BS})")
        lens = seq_lens.cpu()
        need = (lens + BS - 1) // BS
        used = torch.arange(MB)[None, :] < need[:, None]
        entries = block_table.cpu()[used]
        if entries.numel() and (int(entries.min()) < 0 or int(entries.max()) >= NB):
            raise ValueError(f"block_table entry out of range [0, {NB}) within a sequence")


def validate(*args):
    """`prepare` of every impl: the full (untimed) input check; arguments pass through."""
    q, k, v, *rest = args
    if len(rest) == 5:  # kv8
        ks, vs, bt, sl, _ = rest
        check_inputs(q, k, v, bt, sl, ks, vs)
    else:
        bt, sl, _ = rest
        check_inputs(q, k, v, bt, sl)
    return args


# --- reference, bytes, flops ------------------------------------------------------------------

def reference(q, k, v, block_table, seq_lens, scale) -> torch.Tensor:
    """Float64 on the CPU: per sequence, gather its tokens through the table, plain softmax."""
    check_inputs(q, k, v, block_table, seq_lens)
    return _reference(q, k, v, block_table, seq_lens, scale)


def reference_kv8(q, k, v, k_scale, v_scale, block_table, seq_lens, scale) -> torch.Tensor:
    check_inputs(q, k, v, block_table, seq_lens, k_scale, v_scale)
    return _reference(q, k, v, block_table, seq_lens, scale, k_scale, v_scale)


def _reference(q, k, v, block_table, seq_lens, scale, k_scale=None, v_scale=None) -> torch.Tensor:
    B, Hq, D = q.shape
    BS, Hkv = k.shape[1], k.shape[2]
    G = Hq // Hkv  # query head h = kv * G + g reads KV head kv = h // G
    out = torch.empty(B, Hkv, G, D, dtype=torch.float64)
    table, lens = block_table.cpu(), seq_lens.cpu()

    def tokens(cache, cache_scale, blocks, slots):  # [n, Hkv, D] float64, only what is read
        x = cache[blocks.to(cache.device), slots.to(cache.device)].cpu().double()
        if cache_scale is not None:
            sc = cache_scale[blocks.to(cache.device), slots.to(cache.device)]
            x = x * sc.cpu().double()[..., None]
        return x

    for b in range(B):
        t = torch.arange(int(lens[b]))
        blocks, slots = table[b, t // BS].long(), t % BS
        kb = tokens(k, k_scale, blocks, slots)
        vb = tokens(v, v_scale, blocks, slots)
        qb = q[b].cpu().double().view(Hkv, G, D)
        s = torch.einsum("kgd,nkd->kgn", qb, kb) * scale
        out[b] = torch.einsum("kgn,nkd->kgd", torch.softmax(s, dim=-1), vb)
    return out.view(B, Hq, D)


def kv_bytes_per_token(Hkv: int, D: int, dtype: torch.dtype, kv8: bool = False) -> int:
    """K and V of one cached token, every KV head once (+ their scales, in q's dtype, for INT8)."""
    e = esize(dtype)
    return 2 * Hkv * D * (1 if kv8 else e) + (2 * Hkv * e if kv8 else 0)


def bytes_moved(s: PagedAttentionShape, dtype: torch.dtype, kv8: bool = False) -> int:
    """q + out + each sequence's actual K and V (every KV head once) + the table entries and
    seq_lens read (+ the K and V scales of those tokens for INT8 KV)."""
    tokens = sum(s.seq_lens())
    return (2 * s.B * s.Hq * s.D * esize(dtype) + tokens * kv_bytes_per_token(s.Hkv, s.D, dtype, kv8)
            + 4 * s.blocks_read + 4 * s.B)


def footprint(s: PagedAttentionShape, dtype: torch.dtype, kv8: bool = False) -> int:
    """One input set and its output as `build_inputs` makes them: q and out, the whole pool of K
    and V blocks, read or not (+ their scales for INT8 KV), the block table and seq_lens."""
    e = esize(dtype)
    slots = s.pool_blocks * s.block_size * s.Hkv
    kv = 2 * slots * (s.D + e if kv8 else s.D * e)
    return 2 * s.B * s.Hq * s.D * e + kv + 4 * s.B * s.max_blocks + 4 * s.B


def host_footprint(s: PagedAttentionShape, dtype: torch.dtype, backend: str,
                   kv8: bool = False) -> int:
    """Host bytes that `build_inputs` and the float64 reference hold at their peak.

    Building: the table's bookkeeping (block permutation, garbage table, used-slot masks), and
    off CUDA (where the caches are drawn on the GPU) q, K and V drawn in fp32 with their copies
    in the dtype (none for fp32), or for INT8 KV both fp32 caches beside the codes of the first
    and the quantizer's temporaries for one slice of rows (kernels.quant.row_slices). The reference (always on the host) holds the inputs (off CUDA), its
    float64 output and, a sequence at a time, the tokens read as float64 K and V: at most the
    previous sequence's K and V (16 bytes an element), the new one's float64 copy and the
    indexed tokens it is made from (8 + the cache's element size), and for INT8 KV the scaled
    copy (8); per token, its int64 positions and indices, the scales, and the scores with their
    scaled copy and softmax (8 bytes each).
    """
    e = esize(dtype)
    kv_e = 1 if kv8 else e
    slots, elems = s.pool_blocks * s.block_size, s.pool_blocks * s.block_size * s.Hkv * s.D
    q = s.B * s.Hq * s.D
    build = 8 * s.pool_blocks + 4 * s.B * s.max_blocks + 2 * slots + 9 * s.max_blocks * s.block_size
    held = 4 * s.B * s.max_blocks + 4 * s.B
    if backend != "cuda":
        if kv8:  # both fp32 caches, one's codes, a slice of rows' temporaries (row_slices)
            kv = 9 * elems + 13 * min(elems, CHUNK_ELEMENTS) + 24 * slots * s.Hkv
        else:
            kv = 8 * elems + (2 * e * elems if dtype != F32 else 0)
        build += (4 + e) * q + kv
        held = footprint(s, dtype, kv8)
    per_token = (s.Hkv * s.D * ((16 if s.B > 1 else 8) + 8 + kv_e + (8 if kv8 else 0))
                 + 16 * s.Hkv + 32 * s.Hq + 32)
    return max(build, held + 8 * q + s.context * per_token)


def flops(s: PagedAttentionShape) -> int:
    return 4 * sum(s.seq_lens()) * s.Hq * s.D  # q.k and p.v, 2 flops per multiply-add each


paged_attention = register_op(Op(
    name="paged_attention",
    shape_type=PagedAttentionShape,
    make_inputs=make_inputs,
    reference=reference,
    bytes_moved=bytes_moved,
    flops=flops,
    out_spec=lambda s, dt: ((s.B, s.Hq, s.D), dt),
    tolerance=TOLERANCE,
    dtypes=(BF16, F16, F32),
    footprint=footprint,
    host_footprint=host_footprint,
    doc="decode attention over a paged KV cache (block table, ragged seq_lens, GQA)",
    smoke=((PagedAttentionShape(B=3, Hq=8, Hkv=2, D=64, context=100), BF16),
           (PagedAttentionShape(B=2, Hq=4, Hkv=4, D=128, context=70, block_size=32), F32)),
))

paged_attention_kv8 = register_op(Op(
    name="paged_attention_kv8",
    shape_type=PagedAttentionShape,
    make_inputs=make_inputs_kv8,
    reference=reference_kv8,
    bytes_moved=lambda s, dt: bytes_moved(s, dt, kv8=True),
    flops=flops,
    out_spec=lambda s, dt: ((s.B, s.Hq, s.D), dt),
    tolerance=TOLERANCE,
    dtypes=(BF16, F16, F32),
    footprint=lambda s, dt: footprint(s, dt, kv8=True),
    host_footprint=lambda s, dt, b: host_footprint(s, dt, b, kv8=True),
    doc="decode attention over a paged INT8 KV cache with per-(token, head) scales",
    smoke=((PagedAttentionShape(B=3, Hq=8, Hkv=2, D=64, context=100), BF16),),
))


__all__ = ["PagedAttentionShape", "build_inputs", "bytes_moved", "check_inputs", "flops",
           "footprint", "host_footprint", "kv_bytes_per_token", "paged_attention", "paged_attention_kv8",
           "reference", "reference_kv8", "validate"]
