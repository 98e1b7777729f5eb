"""`paged_attention` and `paged_attention_kv8`: one decode step of attention over a paged KV cache.

    paged_attention(q[B,Hq,D], k_cache[NB,BS,Hkv,D], v_cache[NB,BS,Hkv,D],
                    block_table int32[B,MB], seq_lens int32[B], scale) -> out[B,Hq,D]
    paged_attention_kv8(q[B,Hq,D], k_cache int8[NB,BS,Hkv,D], v_cache int8[NB,BS,Hkv,D],
                        k_scale[NB,BS,Hkv], v_scale[NB,BS,Hkv],
                        block_table int32[B,MB], seq_lens int32[B], scale) -> out[B,Hq,D]

Layout (DESIGN.md, "Paged KV-cache layout"): token t of sequence b lives in block
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
- `simd_c` (CPU): hand-written AVX2/OpenMP C (kernels/paged_attention_cpu.py), one fp32
  online-softmax pass per sequence reading each block once, in place: the fast CPU path.
- `triton_onepass` / `triton_splitkv` / `triton` (auto): one program per (sequence, KV head[,
  split]) serving all query heads of the group from one read of each block, online softmax in fp32;
  the split-KV variant adds a reduction kernel and is chosen for small batch x long context.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from . import simd as paged_attention_cpu
from ..common import TOLERANCE, esize, num_sms
from ..quant import quantize_kv_int8
from ..registry import Op, register_impl, register_op
from ..triton_util import HAS_TRITON, TRITON_BACKENDS, autotune_or_fixed

F32, F16, BF16, I8, I32 = torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.int32
BLOCK_SIZES = (8, 16, 32, 64)
HEAD_DIMS = (32, 64, 128, 256)
GARBAGE = 100.0  # unused slots: finite in every dtype, but dominates any softmax that reads it
MAX_POOL_BYTES = 2**36  # no device holds a pool larger than 64 GiB in this project's catalog


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
        kv = (k.to(dev), v.to(dev), k_scale.to(dev), v_scale.to(dev))
    else:
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


def _validate(*args):
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
    doc="decode attention over a paged INT8 KV cache with per-(token, head) scales",
    smoke=((PagedAttentionShape(B=3, Hq=8, Hkv=2, D=64, context=100), BF16),),
))


# --- baseline: gather + SDPA ------------------------------------------------------------------

def _gather_sdpa(q, k, v, block_table, seq_lens, scale, out=None):
    B, Hq, D = q.shape
    BS, Hkv = k.shape[1], k.shape[2]
    MB = block_table.shape[1]
    t = torch.arange(MB * BS, device=q.device)
    valid = t[None, :] < seq_lens[:, None]  # [B, T]
    # Unused entries may hold anything: point them at the sequence's first block (masked anyway).
    used = torch.arange(MB, device=q.device)[None, :] < (seq_lens[:, None] + BS - 1) // BS
    table = torch.where(used, block_table, block_table[:, :1]).long()
    kg = k[table].view(B, MB * BS, Hkv, D).transpose(1, 2)  # [B, Hkv, T, D]: the gather copy
    vg = v[table].view(B, MB * BS, Hkv, D).transpose(1, 2)
    if kg.dtype != q.dtype:  # kv8 hands dequantized caches in
        kg, vg = kg.to(q.dtype), vg.to(q.dtype)
    G = Hq // Hkv
    qg = q.view(B, Hkv, G, D)  # GQA as a batch of G query rows per KV head
    # Slots past seq_len may hold NaN or inf, which a masked (-inf) score does not cancel
    # (NaN + -inf, 0 * inf): zero K and V there.
    dead = ~valid[:, None, :, None]
    kg, vg = kg.masked_fill(dead, 0), vg.masked_fill(dead, 0)
    o = torch.nn.functional.scaled_dot_product_attention(
        qg, kg, vg, attn_mask=valid[:, None, None, :], scale=scale)
    o = o.reshape(B, Hq, D)
    if out is None:
        return o
    return out.copy_(o)


@register_impl("paged_attention", "gather_sdpa", backends=("cpu", "cuda", "xla"), baseline=True,
               prepare=_validate)
def gather_sdpa(q, k_cache, v_cache, block_table, seq_lens, scale: float,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """Gather the padded cache through the table, then scaled_dot_product_attention."""
    return _gather_sdpa(q, k_cache, v_cache, block_table, seq_lens, scale, out)


@register_impl("paged_attention_kv8", "gather_sdpa", backends=("cpu", "cuda", "xla"), baseline=True,
               prepare=_validate)
def gather_sdpa_kv8(q, k_cache, v_cache, k_scale, v_scale, block_table, seq_lens, scale: float,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """Dequantize the whole cache, gather it, then scaled_dot_product_attention."""
    kd = k_cache.to(q.dtype) * k_scale[..., None]
    vd = v_cache.to(q.dtype) * v_scale[..., None]
    return _gather_sdpa(q, kd, vd, block_table, seq_lens, scale, out)


# --- hand-written PyTorch: chunked gather into a cache-resident buffer ------------------------

CPU_FLASH = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")
CHUNK_TOKENS = 1024  # tokens per sequence per step: 8 sequences x 8 KV heads bf16 K+V = 32 MiB
_WORKSPACE: dict[tuple, torch.Tensor] = {}


def _workspace(name: str, shape: tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor:
    """Buffers reused across calls: fresh large CPU allocations page-fault on every call."""
    key = (name, dtype, str(device))
    n = math.prod(shape)
    buf = _WORKSPACE.get(key)
    if buf is None or buf.numel() < n:
        buf = _WORKSPACE[key] = torch.empty(n, dtype=dtype, device=device)
    return buf[:n].view(shape)


def _chunk_attention(q, k, v, mask, scale):
    """Attention of q [n, Hkv, G, D] over one chunk k, v [n, Hkv, T, D] (strided views);
    returns (out fp32 [n, Hkv, G, D], logsumexp fp32 [n, Hkv, G]) so chunks can be merged.

    On the CPU this is PyTorch's fused flash-attention kernel, with the G query heads of a KV
    head as its "query length": it reads the strided chunk in place, never materializing scores
    or a repeated-head copy. Elsewhere, plain fp32 matmuls."""
    if q.device.type == "cpu" and CPU_FLASH:
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=mask, scale=scale)
        return o.float(), lse
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if mask is not None:
        s = s + mask
    lse = torch.logsumexp(s, dim=-1)
    return torch.matmul(torch.exp(s - lse[..., None]), v.float()), lse


def _chunked(q, k, v, block_table, seq_lens, scale, k_scale=None, v_scale=None, out=None):
    """All sequences advance together, CT tokens (CB blocks) per step. Each step gathers the
    step's blocks of every live sequence with one index_select into a reused buffer (the only
    copy: it stays in the last-level cache), runs one fused attention call on a strided view of
    it, and merges the result into the running output by log-sum-exp (split-KV style).

    Sequences are sorted longest first so the live ones are always a prefix; table entries past
    a sequence's last block are pointed at that last block (already in cache, so no extra DRAM
    traffic) and positions >= seq_len are masked, their K and V zeroed in the chunk buffer (they
    may hold NaN or inf, which a -inf score does not cancel). INT8 chunks are dequantized into a
    q-dtype buffer right after the gather."""
    B, Hq, D = q.shape
    NB, BS, Hkv, _ = k.shape
    G = Hq // Hkv
    dev = q.device
    row = BS * Hkv * D
    lens = seq_lens.tolist()
    order = sorted(range(B), key=lambda b: -lens[b])
    lens_sorted = [lens[b] for b in order]
    CB = max(1, min(-(-lens_sorted[0] // BS), CHUNK_TOKENS // BS))
    CT = CB * BS
    n_chunks = -(-lens_sorted[0] // CT)
    live = [sum(1 for n in lens_sorted if n > c * CT) for c in range(n_chunks)]
    full = [sum(1 for n in lens_sorted if n >= (c + 1) * CT) for c in range(n_chunks)]

    perm = torch.tensor(order, device=dev)
    sl = seq_lens.to(dev, torch.long)[perm]
    last = (sl + BS - 1) // BS - 1  # each sequence's last block column
    cols = torch.arange(n_chunks * CB, device=dev).clamp(max=block_table.shape[1] - 1)
    cols = torch.minimum(cols[None, :], last[:, None])  # past the end: repeat the last block
    table = torch.gather(block_table.to(dev, torch.long)[perm], 1, cols)  # [B, n_chunks*CB]
    pos = torch.arange(n_chunks * CT, device=dev).view(n_chunks, 1, CT)
    mask = torch.zeros((), dtype=q.dtype, device=dev).masked_fill(
        pos >= sl.view(1, B, 1), float("-inf"))  # [n_chunks, B, CT]
    qg = q[perm].view(B, Hkv, G, D)

    kraw = _workspace("kraw", (B * CB, row), k.dtype, dev)
    vraw = _workspace("vraw", (B * CB, row), k.dtype, dev)
    if k_scale is not None:
        kdq = _workspace("kdq", (B * CB, row), q.dtype, dev)
        vdq = _workspace("vdq", (B * CB, row), q.dtype, dev)
        sraw = _workspace("sraw", (B * CB, BS * Hkv), k_scale.dtype, dev)

    def gather(src, src_scale, raw, dq, idx):  # -> [n, Hkv, CT, D] strided view
        g = torch.index_select(src.view(NB, row), 0, idx, out=raw[:idx.numel()])
        if src_scale is not None:
            s = torch.index_select(src_scale.view(NB, BS * Hkv), 0, idx, out=sraw[:idx.numel()])
            g = torch.mul(g.view(-1, BS * Hkv, D), s[..., None],
                          out=dq[:idx.numel()].view(-1, BS * Hkv, D))
        return g.view(-1, CT, Hkv, D).transpose(1, 2)

    acc = lse = None
    for c, n in enumerate(live):
        idx = table[:n, c * CB:(c + 1) * CB].reshape(-1)
        kc = gather(k, k_scale, kraw, kdq if k_scale is not None else None, idx)
        vc = gather(v, v_scale, vraw, vdq if v_scale is not None else None, idx)
        m = None
        if full[c] < n:  # sequences full[c]:n stop inside this chunk
            m = mask[c, :n, None, None, :]
            for b in range(full[c], n):  # zero only their slots past seq_len
                kc[b, :, lens_sorted[b] - c * CT:].zero_()
                vc[b, :, lens_sorted[b] - c * CT:].zero_()
        o, l = _chunk_attention(qg[:n], kc, vc, m, scale)
        if acc is None:
            acc, lse = o, l
            continue
        new = torch.logaddexp(lse[:n], l)
        acc[:n].mul_(torch.exp(lse[:n] - new)[..., None]).add_(o * torch.exp(l - new)[..., None])
        lse[:n] = new
    out = torch.empty_like(q) if out is None else out
    return out.index_copy_(0, perm, acc.view(B, Hq, D).to(out.dtype))


@register_impl("paged_attention", "torch_chunked", backends=("cpu", "cuda"), prepare=_validate)
def torch_chunked(q, k_cache, v_cache, block_table, seq_lens, scale: float,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-written PyTorch: LLC-sized chunk gathers, fused attention per chunk, LSE merge."""
    return _chunked(q, k_cache, v_cache, block_table, seq_lens, scale, out=out)


@register_impl("paged_attention_kv8", "torch_chunked", backends=("cpu", "cuda"), prepare=_validate)
def torch_chunked_kv8(q, k_cache, v_cache, k_scale, v_scale, block_table, seq_lens, scale: float,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-written PyTorch: int8 chunks dequantized in a cache-resident buffer, then as above."""
    return _chunked(q, k_cache, v_cache, block_table, seq_lens, scale, k_scale, v_scale, out=out)


# --- hand-written C (AVX2 + OpenMP), kernels/paged_attention_cpu.py ------------------------

@register_impl("paged_attention", "simd_c", backends=("cpu",), kind="compiled", prepare=_validate)
def simd_c(q, k_cache, v_cache, block_table, seq_lens, scale: float,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-written AVX2 C kernel: one fp32 online-softmax pass per (sequence, KV head[, split])."""
    return paged_attention_cpu.paged_attention(q, k_cache, v_cache, block_table, seq_lens, scale,
                                               out=out)


@register_impl("paged_attention_kv8", "simd_c", backends=("cpu",), kind="compiled",
               prepare=_validate)
def simd_c_kv8(q, k_cache, v_cache, k_scale, v_scale, block_table, seq_lens, scale: float,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-written AVX2 C kernel: int8 rows widened in registers, scales folded into s and p."""
    return paged_attention_cpu.paged_attention(q, k_cache, v_cache, block_table, seq_lens, scale,
                                               k_scale, v_scale, out=out)


# --- Triton -----------------------------------------------------------------------------------

if HAS_TRITON:
    import triton
    import triton.language as tl

    _CONFIGS = [
        triton.Config({"BLOCK_N": bn}, num_warps=nw, num_stages=ns)
        for bn in (32, 64, 128) for nw in (4, 8) for ns in (2, 3, 4)
    ]

    @autotune_or_fixed(_CONFIGS, key=["G_PAD", "D", "BLOCK_SIZE", "KV8", "NUM_SPLITS"],
                       fixed={"BLOCK_N": 32})
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
        for t0 in range(start, end, BLOCK_N):
            offs_t = t0 + tl.arange(0, BLOCK_N)
            t_mask = offs_t < end
            # Table entries are loaded only for live tokens: garbage entries are never touched.
            blk = tl.load(bt_ptr + b * stride_btb + offs_t // BLOCK_SIZE, mask=t_mask, other=0)
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
                               D: tl.constexpr, NUM_SPLITS: tl.constexpr, S_PAD: tl.constexpr):
        # One program per (sequence, query head): rescale each split by exp2(m_s - max m) and
        # normalize by the combined sum.
        b = tl.program_id(0)
        hq = tl.program_id(1)
        offs_s = tl.arange(0, S_PAD)
        offs_d = tl.arange(0, D)
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
        _splitkv_reduce_kernel[(B, Hq)](part, ml, out, part.stride(0), part.stride(1),
                                        part.stride(2), out.stride(0), out.stride(1), Hq, D=D,
                                        NUM_SPLITS=num_splits,
                                        S_PAD=triton.next_power_of_2(num_splits))
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
                          prepare=_validate)(fn)

        what = "INT8 KV dequantized in registers, " if kv8 else ""
        reg("triton_onepass", lambda q, k, bt: 1,
            f"Triton, one program per (sequence, KV head): {what}GQA-aware, online softmax.")
        reg("triton_splitkv", lambda q, k, bt: _fixed_splits(bt, k.shape[1]),
            f"Triton split-KV (flash-decoding) + reduction kernel: {what}always splits.")
        reg("triton", _auto,
            f"Triton, split-KV chosen automatically for small batch x long context: {what}auto.")

    _register_triton("paged_attention", kv8=False)
    _register_triton("paged_attention_kv8", kv8=True)


__all__ = ["PagedAttentionShape", "build_inputs", "bytes_moved", "check_inputs", "flops",
           "paged_attention", "paged_attention_kv8", "reference",
           "reference_kv8"]
