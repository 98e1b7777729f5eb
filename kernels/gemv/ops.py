"""The GEMV ops of decode: y[M, N] = x[M, K] @ W[N, K].T, W in three formats.

- `gemv_bf16`: W in 16-bit floats (or fp32), the unquantized baseline.
- `gemv_w8`: W8A16, `W = qweight * scales[:, None]`, INT8 per output channel (kernels/quant.py).
  Half the weight bytes of bf16: a kernel at the wall runs ~2x faster than `gemv_bf16`.
- `gemv_w4`: W4A16, `W[n, k] = (q[n, k] - zeros[n, k // G]) * scales[n, k // G]`, INT4 per group
  of G along K, two codes a byte, low nibble = even k (kernels/quant.py). ~1/4 of bf16's weight
  bytes plus scales and zeros: the ideal speedup over bf16 at G = 128 is 2 / (0.5 + 4/128) = 3.76x.

At decode M (the batch) is 1..64, so the weight read dominates: bytes = x + W (codes, scales and
zeros included) + y, and a kernel is at the wall when it streams W at the memory roof. Each op
below: its shape, inputs, float64 reference, byte count, then its registration. The impls live
beside this file: pytorch.py, simd.py (C), triton_bf16.py, triton_w8.py, triton_w4.py,
triton_splitk.py (split-K, M <= 4), peers.py (GemLite, optional).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..common import TOLERANCE, esize
from ..quant import (CHUNK_ELEMENTS, check_int4_dims, dequant_int4, dequant_int8, quantize_int4,
                     quantize_int8, row_slices)
from ..registry import Op, register_op

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
MAX_M = 4096
# Elements of x, w and y together: 16x Llama-3-70B's largest weight (1.05e9), and under this bound
# every size and byte count fits in int64. Whether a shape fits a device's memory is checked
# against that device (bench/cli/run.py).
MAX_ELEMENTS = 2**34


def check_gemv_dims(M: int, N: int, K: int) -> None:
    for name, v in (("M", M), ("N", N), ("K", K)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if M > MAX_M:
        raise ValueError(f"M={M} is not a decode batch (at most {MAX_M})")
    if N * K > MAX_ELEMENTS:
        raise ValueError(f"N*K={N * K} weights is larger than any device memory")
    if M * K + N * K + M * N > MAX_ELEMENTS:
        raise ValueError(f"x[M,K], w[N,K] and y[M,N] hold {M * K + N * K + M * N} elements "
                         f"together, more than a GEMV shape may have ({MAX_ELEMENTS})")


def _random_xw(shape, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x[M, K] and w[N, K] in fp32 on the CPU, w scaled so that y stays O(1)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(shape.M, shape.K, generator=g)
    w = torch.randn(shape.N, shape.K, generator=g).div_(math.sqrt(shape.K))  # no second copy
    return x, w


def rows_reference(x: torch.Tensor, N: int, K: int,
                   rows: Callable[[slice, torch.device], torch.Tensor]) -> torch.Tensor:
    """x @ W.T in float64, W made by `rows(slice, device)` a few rows at a time (row_slices):
    a float64 copy of a whole 70B layer would be 4-40 GB, a slice of it is ~32 MB."""
    d = ref_device(x)
    x64 = x.detach().to(d, torch.float64)
    y = torch.empty(x.shape[0], N, dtype=torch.float64, device=d)
    for r in row_slices(N, K):
        y[:, r] = x64 @ rows(r, d).T
    return y


def ref_device(t: torch.Tensor) -> torch.device:
    """Where a float64 reference is computed: on a CUDA tensor's GPU (seconds less per 70B-sized
    case than the host), else on the CPU (XLA tensors included)."""
    return t.device if t.device.type == "cuda" else torch.device("cpu")


def _xy_bytes(s, dtype: torch.dtype) -> int:
    """x read and y written, both in the activation dtype."""
    return (s.M * s.K + s.M * s.N) * esize(dtype)


def host_bytes(s, backend: str, held: int, build_tmp: int, ref_per_weight: int) -> int:
    """Host bytes that building a GEMV case's inputs and its float64 reference hold at their peak.

    Building runs on the host whatever the backend: x and w drawn in fp32 (4 bytes a weight), the
    `held` inputs made from them, and the quantizer's temporaries for one slice of rows
    (`row_slices`, CHUNK_ELEMENTS weights; `build_tmp` bytes a weight of it: INT8's |w|, w /
    scale and its rounding; INT4's w / scale + zero, its rounding and the packing), plus each
    group's min, max, scale and zero. The reference runs on the host except on CUDA (on the GPU
    there): the `held` inputs, x and y in float64 (y twice: a slice's product, then its place),
    and one slice of W in float64 (`ref_per_weight` bytes a weight: 8 for bf16; 16 for INT8, the
    codes as float64, then scaled; 40 for INT4, the codes as float64, scales and zeros repeated
    along K, q - z and the product).
    """
    chunk = min(s.N, max(1, CHUNK_ELEMENTS // s.K)) * s.K  # weights in one slice of rows
    groups = chunk // s.group_size if hasattr(s, "group_size") else 0
    build = 4 * s.M * s.K + 4 * s.N * s.K + held + build_tmp * chunk + 32 * groups
    if backend == "cuda":
        return build
    return max(build, held + 8 * s.M * s.K + 16 * s.M * s.N + ref_per_weight * chunk + 16 * groups)


# What every GEMV op shares: y[M, N] in x's dtype, 2MNK flops, fp32-accumulation tolerances.
GEMV_COMMON = dict(
    flops=lambda s: 2 * s.M * s.N * s.K,
    out_spec=lambda s, dt: ((s.M, s.N), dt),
    tolerance=TOLERANCE,
    dtypes=(BF16, F16, F32),
)


# --- gemv_bf16 --------------------------------------------------------------------------------

@dataclass(frozen=True)
class GemvShape:
    M: int
    N: int
    K: int

    def __post_init__(self) -> None:
        check_gemv_dims(self.M, self.N, self.K)


def make_inputs_bf16(shape: GemvShape, dtype: torch.dtype, device, seed: int) -> tuple:
    x, w = _random_xw(shape, seed)
    return x.to(device=device, dtype=dtype), w.to(device=device, dtype=dtype)


def reference_bf16(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return rows_reference(x, *w.shape, lambda r, d: w[r].detach().to(d, torch.float64))


def weight_bytes_bf16(N: int, K: int, dtype: torch.dtype) -> int:
    """Bytes of one [N, K] weight in `dtype`."""
    return N * K * esize(dtype)


gemv_bf16 = register_op(Op(
    name="gemv_bf16",
    shape_type=GemvShape,
    make_inputs=make_inputs_bf16,
    reference=reference_bf16,
    bytes_moved=lambda s, dt: _xy_bytes(s, dt) + weight_bytes_bf16(s.N, s.K, dt),
    host_footprint=lambda s, dt, b: host_bytes(s, b, gemv_bf16.footprint_bytes(s, dt), 0, 8),
    **GEMV_COMMON,
    doc="y = x @ w.T, unquantized 16-bit weights",
    smoke=((GemvShape(M=1, N=256, K=512), BF16), (GemvShape(M=4, N=96, K=320), F32)),
))


# --- gemv_w8 ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class GemvW8Shape:
    M: int
    N: int
    K: int

    def __post_init__(self) -> None:
        check_gemv_dims(self.M, self.N, self.K)


def make_inputs_w8(shape: GemvW8Shape, dtype: torch.dtype, device, seed: int) -> tuple:
    """Random x and weights, the weights quantized by kernels.quant on the CPU, then moved."""
    x, w = _random_xw(shape, seed)
    qweight, scales = quantize_int8(w, dtype)
    return (x.to(device=device, dtype=dtype), qweight.to(device), scales.to(device))


def reference_w8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return rows_reference(x, *qweight.shape, lambda r, d: dequant_int8(
        qweight[r].detach().to(d), scales[r].detach().to(d), torch.float64))


def weight_bytes_w8(N: int, K: int, dtype: torch.dtype) -> int:
    """Bytes of one [N, K] INT8 weight: the int8 codes + one scale per row in x's dtype."""
    return N * K + N * esize(dtype)


def check_w8_args(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor
                  ) -> tuple[int, int, int]:
    """(M, N, K) of a gemv_w8 call; ValueError naming the argument that does not fit."""
    M, K = x.shape
    N = qweight.shape[0]
    if qweight.dtype != torch.int8 or tuple(qweight.shape) != (N, K):
        raise ValueError(f"qweight must be int8[N, {K}], got {qweight.dtype}{list(qweight.shape)}")
    if tuple(scales.shape) != (N,):
        raise ValueError(f"scales must be [N={N}], got {list(scales.shape)}")
    if scales.dtype != x.dtype:
        raise ValueError(f"scales must have x's dtype {x.dtype}, got {scales.dtype}")
    return M, N, K


gemv_w8 = register_op(Op(
    name="gemv_w8",
    shape_type=GemvW8Shape,
    make_inputs=make_inputs_w8,
    reference=reference_w8,
    bytes_moved=lambda s, dt: _xy_bytes(s, dt) + weight_bytes_w8(s.N, s.K, dt),
    host_footprint=lambda s, dt, b: host_bytes(s, b, gemv_w8.footprint_bytes(s, dt), 12, 16),
    **GEMV_COMMON,
    doc="y = x @ (qweight * scales).T, INT8 per-channel weights",
    smoke=((GemvW8Shape(M=1, N=256, K=512), BF16), (GemvW8Shape(M=3, N=96, K=320), F32)),
))


# --- gemv_w4 ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class GemvW4Shape:
    M: int
    N: int
    K: int
    group_size: int = 128

    def __post_init__(self) -> None:
        check_gemv_dims(self.M, self.N, self.K)
        check_int4_dims(self.K, self.group_size)


def make_inputs_w4(shape: GemvW4Shape, dtype: torch.dtype, device, seed: int) -> tuple:
    """Random x and weights, quantized by kernels.quant on the CPU, then moved to the device."""
    x, w = _random_xw(shape, seed)
    qweight, scales, zeros = quantize_int4(w, shape.group_size, dtype)
    return (x.to(device=device, dtype=dtype), qweight.to(device), scales.to(device),
            zeros.to(device), shape.group_size)


def reference_w4(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                 zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    return rows_reference(x, qweight.shape[0], 2 * qweight.shape[1], lambda r, d: dequant_int4(
        qweight[r].detach().to(d), scales[r].detach().to(d), zeros[r].detach().to(d),
        group_size, torch.float64))


def weight_bytes_w4(N: int, K: int, group_size: int, dtype: torch.dtype) -> int:
    """Bytes of one [N, K] INT4 weight: half a byte per code + a scale and a zero per group."""
    return N * K // 2 + 2 * N * (K // group_size) * esize(dtype)


def check_w4_args(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                  zeros: torch.Tensor, group_size: int) -> tuple[int, int, int]:
    """(M, N, K) of a gemv_w4 call; ValueError naming the argument that does not fit."""
    M, K = x.shape
    N = qweight.shape[0]
    check_int4_dims(K, group_size)
    if qweight.dtype != torch.uint8 or tuple(qweight.shape) != (N, K // 2):
        raise ValueError(f"qweight must be uint8[N, {K // 2}], got {qweight.dtype}{list(qweight.shape)}")
    for name, t in (("scales", scales), ("zeros", zeros)):
        if tuple(t.shape) != (N, K // group_size):
            raise ValueError(f"{name} must be [N={N}, K/G={K // group_size}], got {list(t.shape)}")
        if t.dtype != x.dtype:
            raise ValueError(f"{name} must have x's dtype {x.dtype}, got {t.dtype}")
    return M, N, K


gemv_w4 = register_op(Op(
    name="gemv_w4",
    shape_type=GemvW4Shape,
    make_inputs=make_inputs_w4,
    reference=reference_w4,
    bytes_moved=lambda s, dt: _xy_bytes(s, dt) + weight_bytes_w4(s.N, s.K, s.group_size, dt),
    host_footprint=lambda s, dt, b: host_bytes(s, b, gemv_w4.footprint_bytes(s, dt), 16, 40),
    **GEMV_COMMON,
    doc="y = x @ W.T, W in asymmetric group-wise INT4 (low nibble = even k)",
    smoke=((GemvW4Shape(M=1, N=256, K=512, group_size=128), BF16),
           (GemvW4Shape(M=3, N=96, K=320, group_size=32), F32)),
))


__all__ = ["GemvShape", "GemvW8Shape", "GemvW4Shape", "check_gemv_dims", "check_w8_args",
           "check_w4_args", "gemv_bf16", "gemv_w8", "gemv_w4", "ref_device", "weight_bytes_bf16",
           "weight_bytes_w8", "weight_bytes_w4"]
