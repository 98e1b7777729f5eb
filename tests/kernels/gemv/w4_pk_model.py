"""A numpy model of the INT4 kernel's PK path (kernels/gemv/triton_w4.py, PK=1), rounding where
its PTX rounds: the tests check it against the emulated PTX bit for bit on random segments, then
use it where emulating instruction by instruction would take hours (the error of whole
realistic GEMVs against the float64 reference).

Every fp16 result here is computed exactly in float64 (products of fp16 values and codes, and
their sums with an fp16 accumulator of the magnitudes that occur, fit in 53 bits) and rounded
once by numpy's float64 -> float16 conversion, which rounds to nearest even with subnormals.
"""
from __future__ import annotations

import numpy as np
import torch


def f16(bits: np.ndarray) -> np.ndarray:
    """uint16 fp16 bits -> float64 values."""
    return np.asarray(bits, np.uint16).view(np.float16).astype(np.float64)


def to16(v: np.ndarray) -> np.ndarray:
    """float64 -> fp16 bits (round to nearest even, subnormals kept)."""
    with np.errstate(over="ignore"):
        return np.asarray(v, np.float64).astype(np.float16).view(np.uint16).astype(np.uint32)


def bf16(bits: np.ndarray) -> np.ndarray:
    """uint16 bf16 bits -> float64 values."""
    return (np.asarray(bits, np.uint32) << 16).astype(np.uint32).view(np.float32).astype(np.float64)


def to_bf16(v: np.ndarray) -> np.ndarray:
    """float64 (exactly an fp32 value) -> bf16 bits, round to nearest even."""
    t = torch.from_numpy(np.asarray(v, np.float64).astype(np.float32)).to(torch.bfloat16)
    return t.view(torch.int16).numpy().astype(np.uint32) & 0xFFFF


def lanes(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return u & 0xFFFF, u >> 16


def pack(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return (np.asarray(lo, np.uint32) | (np.asarray(hi, np.uint32) << 16)).astype(np.uint32)


def _f32(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, np.float64).astype(np.float32).astype(np.float64)


def _max_exp_bits(h: np.ndarray, mag_mask: int, nan_above: int, exp_mask: int) -> np.ndarray:
    """The exponent bits of the largest magnitude of each row of 16-bit values, NaN ignored
    unless all are NaN (max.xorsign.abs, then and)."""
    mag = h & mag_mask
    nan = mag > nan_above
    m = np.where(nan, 0, mag).max(axis=-1)
    m = np.where(nan.all(axis=-1), mag_mask, m)
    return m & exp_mask


def x_side(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """a[S, 16]: each segment's 16 x words (two bf16 each). -> (pairs[S, 16] uint32, X[S] and
    u[S], fp32 values), as _pk_x_ptx computes them."""
    a = np.asarray(a, np.uint32)
    h = np.stack(lanes(a), axis=-1).reshape(a.shape[0], 32)  # x0 .. x31 of the segment
    odd = (np.arange(32) % 2 == 1)
    e = np.clip((_max_exp_bits(h, 0x7FFF, 0x7F80, 0x7F80) >> 7).astype(np.int64), 11, 240)
    k = 137 - e
    kk = k[:, None]
    f = bf16(to_bf16(bf16(h) * 2.0 ** np.where(odd, kk - 4, kk)))  # scaled, exact fp32 values
    xq = to16(f).reshape(-1, 4, 8)  # [S, word j, i]
    pairs = np.stack([pack(xq[..., i], xq[..., i + 4]) for i in range(4)], axis=-1).reshape(-1, 16)

    def tree(v: list[np.ndarray]) -> np.ndarray:  # fp32 adds of neighbours, level by level
        while len(v) > 1:
            v = [_f32(v[i] + v[i + 1]) for i in range(0, len(v), 2)]
        return v[0]
    xe = tree([f[:, i] for i in range(0, 32, 2)])
    xo = tree([f[:, i] for i in range(1, 32, 2)])
    X = _f32(_f32(xe + 16 * xo) * 2.0 ** (-k))
    u = 2.0 ** (24 - k)
    return pairs, X, u


def add16(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """add.rn.f16x2."""
    return pack(to16(f16(a & 0xFFFF) + f16(b & 0xFFFF)), to16(f16(a >> 16) + f16(b >> 16)))


def dot(words: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """words[..., S, 4] (one row's segment each), pairs[S, 16] -> t[..., S] fp32 values: the
    fp16 chain of _pk_dot_ptx, its two halves added in fp16."""
    w = np.asarray(words, np.uint32)
    lo = hi = None
    for j in range(4):
        v = w[..., j] >> 8
        for i, c in enumerate((w[..., j] & 0x000F000F, w[..., j] & 0x00F000F0,
                               v & 0x000F000F, v & 0x00F000F0)):
            p = pairs[:, 4 * j + i]
            plo, phi = f16(c & 0xFFFF) * f16(p & 0xFFFF), f16(c >> 16) * f16(p >> 16)
            lo = to16(plo if lo is None else plo + f16(lo))
            hi = to16(phi if hi is None else phi + f16(hi))
    return _f32(f16(to16(f16(lo) + f16(hi))))


def gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
         G: int) -> np.ndarray:
    """y[N] (float64, before the output's rounding) of an M = 1 gemv_w4 as the PK path computes
    it: per row and segment of 32 codes s (t u - z X), summed in float64 (the kernel's fp32
    tail adds ~1e-7 relative, far below the fp16 chain's error)."""
    N, half = qweight.shape
    K = 2 * half
    S = K // 32
    xw = x.reshape(-1).contiguous().view(torch.int32).numpy().view(np.uint32).reshape(S, 16)
    pairs, X, u = x_side(xw)
    words = qweight.contiguous().view(torch.int32).numpy().view(np.uint32).reshape(N, S, 4)
    t = dot(words, pairs)
    g = np.arange(S) * 32 // G
    s = scales.double().numpy()[:, g]
    z = zeros.double().numpy()[:, g]
    return (s * (t * u[None, :] - z * X[None, :])).sum(axis=1)
