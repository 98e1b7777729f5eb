"""Paged attention in PyTorch: the gather + SDPA baseline and a chunked, cache-resident variant.

- `gather_sdpa` (baseline): gather the padded cache through the table, then SDPA; the gather's
  extra write and re-read is exactly the cost a paged kernel exists to avoid.
- `torch_chunked`: all sequences advance together a chunk of blocks at a time, gathered into a
  reused buffer that stays in the last-level cache; PyTorch's fused CPU flash-attention kernel
  runs on a strided view of each chunk, and chunks merge by log-sum-exp.
"""
from __future__ import annotations

import math
import threading

import torch

from ..common import check_out
from ..registry import register_impl
from .ops import validate

# --- baseline: gather + SDPA ------------------------------------------------------------------

def _gather_sdpa(q, k, v, block_table, seq_lens, scale, out=None):
    B, Hq, D = q.shape
    check_out("gather_sdpa", out, (B, Hq, D), q.device)
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
               prepare=validate)
def gather_sdpa(q, k_cache, v_cache, block_table, seq_lens, scale: float,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """Gather the padded cache through the table, then scaled_dot_product_attention."""
    return _gather_sdpa(q, k_cache, v_cache, block_table, seq_lens, scale, out)


@register_impl("paged_attention_kv8", "gather_sdpa", backends=("cpu", "cuda", "xla"), baseline=True,
               prepare=validate)
def gather_sdpa_kv8(q, k_cache, v_cache, k_scale, v_scale, block_table, seq_lens, scale: float,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """Dequantize the whole cache, gather it, then scaled_dot_product_attention."""
    kd = k_cache.to(q.dtype) * k_scale[..., None]
    vd = v_cache.to(q.dtype) * v_scale[..., None]
    return _gather_sdpa(q, kd, vd, block_table, seq_lens, scale, out)


# --- hand-written PyTorch: chunked gather into a cache-resident buffer ------------------------

CPU_FLASH = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")
CHUNK_TOKENS = 1024  # tokens per sequence per step: 8 sequences x 8 KV heads bf16 K+V = 32 MiB
_LOCAL = threading.local()  # the workspace buffers, a set per thread


def _workspace(name: str, shape: tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor:
    """Buffers reused across calls (fresh large CPU allocations page-fault on every call), a set
    per thread: two threads calling at once must not share one."""
    workspace = vars(_LOCAL).setdefault("workspace", {})  # this thread's
    key = (name, dtype, str(device))
    n = math.prod(shape)
    buf = workspace.get(key)
    if buf is None or buf.numel() < n:
        buf = workspace[key] = torch.empty(n, dtype=dtype, device=device)
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
    check_out("torch_chunked", out, (B, Hq, D), q.device)
    caches = [k, v] + ([k_scale, v_scale] if k_scale is not None else [])
    if not all(t.is_contiguous() for t in caches):  # gathered a block at a time as flat rows
        raise ValueError("torch_chunked needs contiguous caches (and scales)")
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


@register_impl("paged_attention", "torch_chunked", backends=("cpu", "cuda"), prepare=validate)
def torch_chunked(q, k_cache, v_cache, block_table, seq_lens, scale: float,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-written PyTorch: LLC-sized chunk gathers, fused attention per chunk, LSE merge."""
    return _chunked(q, k_cache, v_cache, block_table, seq_lens, scale, out=out)


@register_impl("paged_attention_kv8", "torch_chunked", backends=("cpu", "cuda"), prepare=validate)
def torch_chunked_kv8(q, k_cache, v_cache, k_scale, v_scale, block_table, seq_lens, scale: float,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-written PyTorch: int8 chunks dequantized in a cache-resident buffer, then as above."""
    return _chunked(q, k_cache, v_cache, block_table, seq_lens, scale, k_scale, v_scale, out=out)
