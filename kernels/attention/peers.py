"""FlashInfer for `paged_attention`: what a serving stack would pick instead, run beside our kernels.

FlashInfer (flashinfer-ai/flashinfer, `flashinfer-python`) is an optional baseline:
`pip install 'decodewall[peers]'` installs the version whose source this file was written
against (0.7.2.post1). It is imported only when the impl is prepared, never when kernels/ is
imported, so the impls are registered either way. They are written for CUDA: another backend
records them (skipped) only when `--impl` names them. Without FlashInfer, without a GPU, or for a case it
cannot take, `prepare` raises NotImplementedError saying why and the harness records the case as
skipped with that reason.

Our paged layout in FlashInfer's terms (flashinfer/decode.py, BatchDecodeWithPagedKVCacheWrapper):
- the caches: its "NHD" layout is ours, `[num_pages, page_size, num_kv_heads, head_dim]`, passed
  to `run(q, (k_cache, v_cache))` as they are;
- the table: FlashInfer takes a CSR page table instead of a padded block table: `kv_indptr`
  [B + 1] (sequence b owns pages kv_indices[indptr[b]:indptr[b+1]]), `kv_indices` (the pages in
  order) and `kv_last_page_len` [B] in [1, page_size]; a sequence's length is
  (pages - 1) * page_size + last_page_len (flashinfer/page.py, get_seq_lens).
  `csr_page_table` builds it from block_table and seq_lens, taking only each sequence's first
  ceil(seq_len / block_size) entries, so table entries past a sequence are never passed on;
- GQA: num_qo_heads / num_kv_heads, query head h on KV head h // group, as ours; the softmax
  scale goes to `plan(..., sm_scale=scale)`.

`prepare` (untimed) builds the CSR table and a wrapper and runs `plan` (which JIT-compiles the
decode kernel for the dtype and head dim with nvcc on first use, then caches it on disk); the
timed call is `run` alone, into the harness's output buffer. The wrapper is FlashInfer's default
for decode: CUDA-core kernels (use_tensor_cores=False), backend "fa2", which is also what its
"auto" backend picks for one query token a sequence.

`paged_attention_kv8` has an impl here too, always skipped: FlashInfer has no INT8 KV cache (its
quantized caches are FP8, e4m3 or e5m2, with one scale per tensor, and NVFP4), so it cannot read
our per-(token, head) INT8 cache; the table says so instead of leaving the peer out silently.
"""
from __future__ import annotations

from typing import Any

import torch

from ..common import check_out
from ..registry import register_impl
from .ops import validate

BF16, F16, I32 = torch.bfloat16, torch.float16, torch.int32
INSTALL_HINT = "pip install 'decodewall[peers]'"
# Query heads per KV head that FlashInfer's decode kernels are instantiated for
# (DISPATCH_GQA_GROUP_SIZE in include/flashinfer/utils.cuh); others raise "Unsupported group_size".
GQA_GROUPS = (1, 2, 3, 4, 6, 8, 16)
WORKSPACE_BYTES = 128 * 1024 * 1024  # the float workspace size FlashInfer's docs recommend
NO_INT8_KV = ("FlashInfer has no INT8 KV cache: its quantized caches are FP8 (e4m3/e5m2, one "
              "scale per tensor) and NVFP4, not int8 with a scale per (token, head)")

_WORKSPACES: dict[str, torch.Tensor] = {}
_WRAPPERS: dict[tuple, Any] = {}


def import_flashinfer() -> Any:
    """The flashinfer module, or NotImplementedError saying why it cannot be had."""
    try:
        import flashinfer
    except ModuleNotFoundError as e:
        if e.name == "flashinfer":
            raise NotImplementedError(f"flashinfer is not installed ({INSTALL_HINT})") from None
        raise NotImplementedError(f"flashinfer cannot be imported: {e}") from None
    except Exception as e:
        msg = (str(e).strip().splitlines() or [""])[0]
        raise NotImplementedError(f"flashinfer cannot be imported here ({type(e).__name__}: {msg})") from None
    return flashinfer


def csr_page_table(block_table: torch.Tensor, seq_lens: torch.Tensor, block_size: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Our padded block table → FlashInfer's CSR page table (kv_indptr, kv_indices,
    kv_last_page_len), int32, on block_table's device.

    Sequence b owns pages block_table[b, :ceil(seq_lens[b] / block_size)], in that order; the
    entries after them (garbage by contract) are dropped. last_page_len = seq_len - (pages - 1)
    * block_size, in [1, block_size]."""
    dev = block_table.device
    lens = seq_lens.to(dev, torch.int64)
    pages = (lens + block_size - 1) // block_size
    indptr = torch.zeros(lens.numel() + 1, dtype=torch.int64, device=dev)
    indptr[1:] = torch.cumsum(pages, 0)
    used = torch.arange(block_table.shape[1], device=dev)[None, :] < pages[:, None]
    indices = block_table[used]  # row-major: sequence by sequence, each in table order
    last = lens - (pages - 1) * block_size
    return indptr.to(I32), indices.to(I32), last.to(I32)


def _check_case(q: torch.Tensor, k_cache: torch.Tensor) -> None:
    Hq, Hkv = q.shape[1], k_cache.shape[2]
    if q.dtype not in (BF16, F16):
        raise NotImplementedError(f"FlashInfer's decode takes bfloat16 and float16, not {q.dtype}")
    if Hq // Hkv not in GQA_GROUPS:
        raise NotImplementedError(f"FlashInfer's decode kernels take {', '.join(map(str, GQA_GROUPS))} "
                                  f"query heads per KV head, not {Hq // Hkv}")


def _require_cuda(q: torch.Tensor) -> None:
    if q.device.type != "cuda":
        raise NotImplementedError(f"FlashInfer runs on CUDA devices, not {q.device.type}")


def _workspace(device: torch.device) -> torch.Tensor:
    # One float workspace per device, shared by every wrapper (FlashInfer wants it zeroed before
    # its first use); a run writes its split-KV partials there and reads them back in the same run.
    key = str(device)
    if key not in _WORKSPACES:
        _WORKSPACES[key] = torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
    return _WORKSPACES[key]


def _wrapper(fi: Any, q: torch.Tensor, k_cache: torch.Tensor, indptr: torch.Tensor,
             indices: torch.Tensor, last: torch.Tensor, scale: float) -> Any:
    """A planned wrapper, shared by every input set with the same plan: the harness's rotated
    input sets are copies with equal tables, and each wrapper holds 16 MB of its own buffers."""
    B, Hq, D = q.shape
    _, BS, Hkv, _ = k_cache.shape
    table = torch.cat((indptr, indices, last)).cpu().numpy().tobytes()
    key = (str(q.device), q.dtype, k_cache.dtype, B, Hq, Hkv, D, BS, float(scale), table)
    if key not in _WRAPPERS:
        _WRAPPERS.clear()  # one plan at a time: a new case brings new tables
        w = fi.BatchDecodeWithPagedKVCacheWrapper(_workspace(q.device), "NHD", backend="fa2")
        w.plan(indptr, indices, last, Hq, Hkv, D, BS, pos_encoding_mode="NONE",
               q_data_type=q.dtype, kv_data_type=k_cache.dtype, sm_scale=float(scale))
        _WRAPPERS[key] = w
    return _WRAPPERS[key]


def _prepare(q, k_cache, v_cache, block_table, seq_lens, scale) -> tuple:
    """Untimed: check the inputs, build the CSR page table, plan (compiling on first use)."""
    validate(q, k_cache, v_cache, block_table, seq_lens, scale)
    fi = import_flashinfer()
    _check_case(q, k_cache)
    _require_cuda(q)
    indptr, indices, last = csr_page_table(block_table, seq_lens, k_cache.shape[1])
    return q, k_cache, v_cache, _wrapper(fi, q, k_cache, indptr, indices, last, scale)


@register_impl("paged_attention", "flashinfer_decode", backends=("cuda",), dtypes=(BF16, F16),
               kind="compiled", baseline=True, prepare=_prepare)
def flashinfer_decode(q, k_cache, v_cache, wrapper, out: torch.Tensor | None = None) -> torch.Tensor:
    """FlashInfer (peer): BatchDecodeWithPagedKVCacheWrapper on our NHD caches, CSR page table."""
    check_out("flashinfer_decode", out, tuple(q.shape), q.device)
    return wrapper.run(q, (k_cache, v_cache), out=out)


def _prepare_kv8(*args) -> tuple:
    raise NotImplementedError(NO_INT8_KV)


# Every dtype, so each case's record gives the one reason that holds for all of them.
@register_impl("paged_attention_kv8", "flashinfer_decode", backends=("cuda",), kind="compiled",
               baseline=True, prepare=_prepare_kv8)
def flashinfer_decode_kv8(*args, out: torch.Tensor | None = None) -> torch.Tensor:
    """FlashInfer (peer): always skipped, it has no INT8 KV cache (FP8 and NVFP4 only)."""
    raise NotImplementedError(NO_INT8_KV)


__all__ = ["csr_page_table", "import_flashinfer", "flashinfer_decode", "NO_INT8_KV"]
