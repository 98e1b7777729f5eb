"""Paged attention on the CPU in C (simd.c: AVX2 + FMA + OpenMP), built on first use, called via
ctypes; registers `simd_c` for `paged_attention` and `paged_attention_kv8`.

Why C: at decode each KV element feeds only G = Hq/Hkv multiply-adds, so the work is a skinny
matrix product that BLAS runs at a fraction of its speed (M = 4 sgemm: ~15-20 GFLOP/s a core
here), and any PyTorch formulation first copies the gathered blocks somewhere. The C reads each K
and V row once, straight from its block, in one online-softmax pass (how: simd.c). The library is
built with the host compiler for the host CPU and cached; without one the impl raises
NotImplementedError and the runner skips it with that reason.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from ..cbuild import CLibrary
from ..common import check_out
from ..registry import register_impl
from .ops import validate

_DT = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.int8: 3}
i64, ptr, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
library = CLibrary("paged_attention", Path(__file__).with_name("simd.c"), {
    "paged_attention": ([ptr, i32, i32, i64, i64, i64, i64, ptr, ptr, ptr, ptr, i64, ptr, i64, ptr,
                         ctypes.c_float, i64, i64, ptr, ptr, i32], i32),
    "bf16_dot_loops": ([], i32),
}, needs=("avx2", "fma", "f16c"), libs=("-lm",))
_buffer = library.buffer


def bf16_dot() -> bool:
    """Whether bf16 KV runs through VDPBF16PS in this build (a target with AVX512_BF16), see
    simd.c: p is then rounded to bf16 before P.V."""
    return bool(library().bf16_dot_loops())


def splits_for(B: int, max_tokens: int, threads: int) -> int:
    """Token splits per sequence so that there are >= 4 tasks per thread (load balance)."""
    if B >= 4 * threads or max_tokens < 1024:
        return 1
    return max(1, min(-(-4 * threads // B), max_tokens // 512))


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_table: torch.Tensor,
                    seq_lens: torch.Tensor, scale: float, k_scale: torch.Tensor | None = None,
                    v_scale: torch.Tensor | None = None,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """Inputs already validated by the op (ops.validate); CPU, contiguous."""
    if q.device.type != "cpu":
        raise NotImplementedError(f"the C attention kernel runs on the CPU, not {q.device.type}")
    B, Hq, D = q.shape
    NB, BS, Hkv, _ = k.shape
    if D % 32 or D > 256 or BS > 64:
        raise NotImplementedError(f"the C attention kernel takes D % 32 == 0, D <= 256 and block "
                                  f"size <= 64, not D={D}, BS={BS}")
    tensors = [q, k, v, block_table, seq_lens] + ([k_scale, v_scale] if k_scale is not None else [])
    if any(t.device.type != "cpu" for t in tensors):  # the C would read a device address
        raise ValueError("the C attention kernel takes every tensor on the CPU")
    if not all(t.is_contiguous() for t in tensors):
        raise ValueError("the C attention kernel needs contiguous tensors")
    check_out("the C attention kernel", out, (B, Hq, D), q.device)
    lib = library()
    threads = torch.get_num_threads()
    MB = block_table.shape[1]
    S = splits_for(B, MB * BS, threads)
    split_tokens = -(-MB * BS // S)
    split_tokens = -(-split_tokens // BS) * BS
    S = -(-MB * BS // split_tokens)
    G = Hq // Hkv
    G4 = -(-G // 4) * 4
    part = _buffer("part", B * S * (2 * Hkv * G4 * D + 2 * Hq))
    o32 = _buffer("out", B * Hq * D)
    kvdt = _DT[k.dtype]
    rc = lib.paged_attention(
        q.data_ptr(), _DT[q.dtype], kvdt, B, Hq, Hkv, D, k.data_ptr(), v.data_ptr(),
        k_scale.data_ptr() if k_scale is not None else None,
        v_scale.data_ptr() if v_scale is not None else None,
        BS, block_table.data_ptr(), MB, seq_lens.data_ptr(), float(scale), S, split_tokens,
        part.data_ptr(), o32.data_ptr(), threads)
    if rc != 0:
        raise NotImplementedError("the C attention kernel rejected this shape")
    res = o32.view(B, Hq, D)
    if out is None:
        return res.to(q.dtype, copy=True)  # a new tensor, fp32 too: o32 is a reused buffer
    return out.copy_(res)


# --- the impls --------------------------------------------------------------------------------

@register_impl("paged_attention", "simd_c", backends=("cpu",), kind="compiled", prepare=validate)
def simd_c(q, k_cache, v_cache, block_table, seq_lens, scale: float,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-written AVX2 C kernel: one fp32 online-softmax pass per (sequence[, token split]),
    every KV head of each block in turn."""
    return paged_attention(q, k_cache, v_cache, block_table, seq_lens, scale,
                                               out=out)


@register_impl("paged_attention_kv8", "simd_c", backends=("cpu",), kind="compiled",
               prepare=validate)
def simd_c_kv8(q, k_cache, v_cache, k_scale, v_scale, block_table, seq_lens, scale: float,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-written AVX2 C kernel: int8 rows widened in registers, scales folded into s and p."""
    return paged_attention(q, k_cache, v_cache, block_table, seq_lens, scale,
                                               k_scale, v_scale, out=out)
