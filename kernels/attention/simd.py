"""Paged attention on the CPU in C (simd.c: AVX2 + FMA + F16C, or portable C where the target has
not all three, as on Arm; OpenMP where the compiler has it), built on first use, called via
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
from functools import lru_cache
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
                         ctypes.c_float, i64, i64, ptr, ptr, i32, i32], i32),
    "bf16_dot_loops": ([], i32),
}, libs=("-lm",))
_scratch = library.scratch_ptr


def bf16_dot() -> bool:
    """Whether bf16 q with bf16 or INT8 KV runs through VDPBF16PS in this build (a target with
    AVX512_BF16), see simd.c: p (INT8 KV: p times v_scale) is then rounded to bf16 before P.V."""
    return bool(library().bf16_dot_loops())


@lru_cache(maxsize=1024)
def splits_for(B: int, max_tokens: int, threads: int) -> int:
    """Token splits per sequence, so that the B * S tasks spread evenly over the threads (a
    multiple of the thread count, or at least 4 a thread): toward 4 tasks a thread for load
    balance over ragged lengths where splits keep 512 tokens or more (each split costs its q rows,
    its partial results and their merge), else the fewest that spread, down to 64-token splits.
    On a 2-core Zen 4 one sequence of 128-2048 tokens read 1.4-1.9x as fast in two splits as
    whole, three of 512 tokens 1.2x as six tasks."""
    if B >= 4 * threads:
        return 1

    def even(S: int) -> bool:
        return (B * S) % threads == 0 or B * S >= 4 * threads

    for S in range(min(-(-4 * threads // B), max_tokens // 512), 1, -1):
        if even(S):
            return S
    most = max(1, max_tokens // 64)
    return next((S for S in range(1, most + 1) if even(S)), most)


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
    if not all(t.is_cpu for t in tensors):  # the C would read a device address
        raise ValueError("the C attention kernel takes every tensor on the CPU")
    if not all(t.is_contiguous() for t in tensors):
        raise ValueError("the C attention kernel needs contiguous tensors")
    check_out("the C attention kernel", out, (B, Hq, D), q.device)
    # The C writes the result in its own dtype (out=None: q's) into y; a strided out gets it copied.
    y = torch.empty(B, Hq, D, dtype=q.dtype) if out is None else out if out.is_contiguous() \
        else torch.empty(B, Hq, D, dtype=out.dtype)
    lib = library()
    threads = torch.get_num_threads()
    MB = block_table.shape[1]
    S = splits_for(B, MB * BS, threads)
    split_tokens = -(-MB * BS // S)
    split_tokens = -(-split_tokens // BS) * BS
    S = -(-MB * BS // split_tokens)
    G = Hq // Hkv
    G4 = -(-G // 4) * 4
    part = _scratch("part", B * S * (2 * Hkv * G4 * D + 2 * Hq))
    kvdt = _DT[k.dtype]
    rc = lib.paged_attention(
        q.data_ptr(), _DT[q.dtype], kvdt, B, Hq, Hkv, D, k.data_ptr(), v.data_ptr(),
        k_scale.data_ptr() if k_scale is not None else None,
        v_scale.data_ptr() if v_scale is not None else None,
        BS, block_table.data_ptr(), MB, seq_lens.data_ptr(), float(scale), S, split_tokens,
        part, y.data_ptr(), _DT[y.dtype], threads)
    if rc != 0:
        raise NotImplementedError("the C attention kernel rejected this shape")
    return y if out is None or y is out else out.copy_(y)


# --- the impls --------------------------------------------------------------------------------

@register_impl("paged_attention", "simd_c", backends=("cpu",), kind="compiled", prepare=validate,
               build_info=library.info)
def simd_c(q, k_cache, v_cache, block_table, seq_lens, scale: float,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-written C kernel (AVX2/AVX-512, or portable): one fp32 online-softmax pass per
    (sequence[, token split]), every KV head of each block in turn."""
    return paged_attention(q, k_cache, v_cache, block_table, seq_lens, scale,
                                               out=out)


@register_impl("paged_attention_kv8", "simd_c", backends=("cpu",), kind="compiled",
               prepare=validate, build_info=library.info)
def simd_c_kv8(q, k_cache, v_cache, k_scale, v_scale, block_table, seq_lens, scale: float,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-written C kernel: int8 rows widened as they are read, scales folded into s and p."""
    return paged_attention(q, k_cache, v_cache, block_table, seq_lens, scale,
                                               k_scale, v_scale, out=out)
