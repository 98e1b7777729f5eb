"""The one quantizer: float weights and KV caches → the INT8 and INT4 formats of docs/kernels.md (Formats), and back.

INT8 is symmetric: weights per output channel, `w[n, k] = qweight[n, k] * scales[n]`; a KV cache
per (token, head) along the head dim, `k[..., d] = k_int8[..., d] * k_scale[...]`. Both are one
rule: absmax / 127 along the last dimension.
INT4 is asymmetric per group of G along K: `w[n, k] = (q[n, k] - zeros[n, g]) * scales[n, g]`
with g = k // G, q in [0, 15] packed two per byte, low nibble = even k.

Scales and zeros are stored in the activation dtype, so every impl (and the byte count) sees the
same rounded values; quantization divides by the *rounded* scale so the codes match it. Every op,
test and baseline conversion goes through this file: there is one definition of the formats.
"""
from __future__ import annotations

import torch

INT4_GROUP_SIZES = (32, 64, 128, 256)
# Quantizers (and the GEMV references) work through a matrix this many elements of rows at a
# time: each row's result is the same, and their temporaries (~40 bytes an INT4 weight in float64)
# stay ~100 MB whatever the matrix, instead of dozens of GB for a 70B layer.
CHUNK_ELEMENTS = 1 << 22


def row_slices(rows: int, row_len: int) -> list[slice]:
    """Slices of whole rows covering `rows`, about CHUNK_ELEMENTS elements each."""
    step = max(1, CHUNK_ELEMENTS // max(1, row_len))
    return [slice(r, min(r + step, rows)) for r in range(0, rows, step)]


def check_int4_dims(K: int, group_size: int) -> None:
    """ValueError unless K and G fit the INT4 format (G allowed, even K, K % G == 0)."""
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"group_size={group_size} is not allowed for INT4 "
                         f"(allowed: {', '.join(map(str, INT4_GROUP_SIZES))})")
    if K % 2:
        raise ValueError(f"K={K} must be even for INT4 (two 4-bit values per byte)")
    if K % group_size:
        raise ValueError(f"K={K} is not a multiple of group_size={group_size}")


# --- INT8 -------------------------------------------------------------------------------------

def _int8_last_dim(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric INT8 along the last dimension: scale = absmax / 127 (1 for an all-zero row, so
    it stays finite); -128 is never used, so the range is symmetric."""
    rows = x.reshape(-1, x.shape[-1])
    q = torch.empty(rows.shape, dtype=torch.int8, device=x.device)
    scales = torch.empty(rows.shape[0], dtype=dtype, device=x.device)
    for r in row_slices(*rows.shape):
        xf = rows[r].float()
        amax = xf.abs().amax(dim=-1)
        scales[r] = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax)).to(dtype)
        q[r] = torch.round(xf / scales[r].float()[..., None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(x.shape), scales.reshape(x.shape[:-1])


def quantize_int8(w: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """w[N, K] float → (qweight int8[N, K], scales[N] in `dtype`, default w's dtype), per row."""
    if w.dim() != 2:
        raise ValueError(f"weights must be 2-D [N, K], got shape {tuple(w.shape)}")
    return _int8_last_dim(w, dtype or w.dtype)


def quantize_kv_int8(kv: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A KV cache [..., D] float → (int8 [..., D], scales [...] in `dtype`), per (token, head)."""
    return _int8_last_dim(kv, dtype)


def dequant_int8(qweight: torch.Tensor, scales: torch.Tensor,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (qweight.to(dtype) * scales.to(dtype)[:, None])


# --- INT4 -------------------------------------------------------------------------------------

def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q[N, K] with values in [0, 15] → uint8[N, K//2]: byte j = q[2j] | q[2j+1] << 4."""
    if q.shape[-1] % 2:
        raise ValueError(f"K={q.shape[-1]} must be even to pack two 4-bit values per byte")
    q = q.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8[N, K//2] → uint8[N, K] codes in [0, 15] (low nibble = even k)."""
    lo = packed & 0x0F
    hi = packed >> 4
    return torch.stack((lo, hi), dim=-1).flatten(-2)


def quantize_int4(w: torch.Tensor, group_size: int = 128, dtype: torch.dtype | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w[N, K] float → (qweight uint8[N, K//2], scales[N, K//G], zeros[N, K//G]).

    Asymmetric min/max per group: scale = (max - min) / 15, zero = -min / scale (a float, not
    rounded to an integer), so both ends of each group's range are representable.
    """
    if w.dim() != 2:
        raise ValueError(f"weights must be 2-D [N, K], got shape {tuple(w.shape)}")
    N, K = w.shape
    check_int4_dims(K, group_size)
    dtype = dtype or w.dtype
    G = K // group_size
    packed = torch.empty(N, K // 2, dtype=torch.uint8, device=w.device)
    scales = torch.empty(N, G, dtype=dtype, device=w.device)
    zeros = torch.empty(N, G, dtype=dtype, device=w.device)
    for r in row_slices(N, K):
        wg = w[r].float().reshape(-1, G, group_size)
        lo = wg.amin(dim=2)
        hi = wg.amax(dim=2)
        span = hi - lo
        scales[r] = torch.where(span > 0, span / 15.0, torch.ones_like(span)).to(dtype)
        zeros[r] = (-lo / scales[r].float()).to(dtype)
        q = torch.round(wg / scales[r].float()[..., None] + zeros[r].float()[..., None]).clamp_(0, 15)
        packed[r] = pack_int4(q.reshape(-1, K))
    return packed, scales, zeros


def dequant_int4(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 group_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The INT4 format's meaning, written plainly: (q - zeros[g]) * scales[g]."""
    q = unpack_int4(qweight).to(dtype)
    N, K = q.shape
    s = scales.to(dtype).repeat_interleave(group_size, dim=1)
    z = zeros.to(dtype).repeat_interleave(group_size, dim=1)
    return (q - z) * s


def to_torch_int4_scales_zeros(scales: torch.Tensor, zeros: torch.Tensor,
                               dtype: torch.dtype | None = None) -> torch.Tensor:
    """Our (scales, zeros) → PyTorch's scales_and_zeros[K//G, N, 2] for `_weight_int4pack_mm*`.

    PyTorch dequantizes `(q - 8) * scale + zero`; ours is `(q - z) * s = (q - 8) * s + (8 - z) * s`,
    so their zero is (8 - z) * s, computed in fp32 and rounded once to `dtype`.
    """
    dtype = dtype or scales.dtype
    s = scales.float()
    their_zero = (8.0 - zeros.float()) * s
    return torch.stack((s, their_zero), dim=-1).transpose(0, 1).contiguous().to(dtype)


__all__ = ["CHUNK_ELEMENTS", "INT4_GROUP_SIZES", "check_int4_dims", "row_slices", "quantize_int8", "quantize_kv_int8", "dequant_int8",
           "pack_int4", "unpack_int4", "quantize_int4", "dequant_int4", "to_torch_int4_scales_zeros"]
