"""`gemv_bf16`: y[M,N] = x[M,K] @ w[N,K].T in 16-bit floats, the unquantized decode baseline.

At decode M (the batch) is 1..64, so the weight read dominates: bytes = x + w + y, and the kernel
is at the wall when it streams w at the memory roof. The Triton kernel below covers small M with a
broadcast-and-reduce inner product and larger M with `tl.dot` (M padded to 16).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..common import TOLERANCE, esize
from ..registry import Op, register_impl, register_op
from ..triton_util import HAS_TRITON, TRITON_BACKENDS, autotune_or_fixed, launch_meta

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
MAX_M = 4096


def check_gemv_dims(M: int, N: int, K: int) -> None:
    for name, v in (("M", M), ("N", N), ("K", K)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if M > MAX_M:
        raise ValueError(f"M={M} is not a decode batch (at most {MAX_M})")
    if N * K > 2**34:
        raise ValueError(f"N*K={N * K} weights is larger than any device memory")


@dataclass(frozen=True)
class GemvShape:
    M: int
    N: int
    K: int

    def __post_init__(self) -> None:
        check_gemv_dims(self.M, self.N, self.K)


def make_inputs(shape: GemvShape, dtype: torch.dtype, device, seed: int) -> tuple:
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(shape.M, shape.K, generator=g)
    w = torch.randn(shape.N, shape.K, generator=g) / math.sqrt(shape.K)
    return x.to(device=device, dtype=dtype), w.to(device=device, dtype=dtype)


def ref_device(t: torch.Tensor) -> torch.device:
    """Where a float64 reference is computed: on a CUDA tensor's GPU (seconds less per 70B-sized
    case than the host), else on the CPU (XLA tensors included)."""
    return t.device if t.device.type == "cuda" else torch.device("cpu")


def reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    d = ref_device(x)
    return x.detach().to(d, torch.float64) @ w.detach().to(d, torch.float64).T


def weight_bytes(N: int, K: int, dtype: torch.dtype) -> int:
    """Bytes of one [N, K] weight in `dtype`."""
    return N * K * esize(dtype)


def bytes_moved(s: GemvShape, dtype: torch.dtype) -> int:
    return (s.M * s.K + s.M * s.N) * esize(dtype) + weight_bytes(s.N, s.K, dtype)


# What every GEMV op (bf16, INT8, INT4) shares: y[M, N] in x's dtype, 2MNK flops, fp32-accumulation
# tolerances.
GEMV_COMMON = dict(
    flops=lambda s: 2 * s.M * s.N * s.K,
    out_spec=lambda s, dt: ((s.M, s.N), dt),
    tolerance=TOLERANCE,
    dtypes=(BF16, F16, F32),
)

gemv_bf16 = register_op(Op(
    name="gemv_bf16",
    shape_type=GemvShape,
    make_inputs=make_inputs,
    reference=reference,
    bytes_moved=bytes_moved,
    **GEMV_COMMON,
    doc="y = x @ w.T, unquantized 16-bit weights",
    smoke=((GemvShape(M=1, N=256, K=512), BF16), (GemvShape(M=4, N=96, K=320), F32)),
))


@register_impl("gemv_bf16", "torch_matmul", backends=("cpu", "cuda", "xla"), baseline=True)
def torch_matmul(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """torch.matmul (cuBLAS / oneDNN): the vendor baseline."""
    return torch.matmul(x, w.T, out=out)


# --- Triton -----------------------------------------------------------------------------------

if HAS_TRITON:
    import triton
    import triton.language as tl

    # (BLOCK_N, BLOCK_K, warps) x ACC3: wide K steps won on an H200 (results/h200/); ACC3 keeps a
    # [BLOCK_M, BLOCK_N, BLOCK_K] accumulator of plain FMAs and reduces it once after the loop,
    # instead of a cross-thread reduction every step.
    _CONFIGS = [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "ACC3": acc3}, num_warps=nw, num_stages=3)
        for bn, bk, nw in ((16, 512, 4), (8, 1024, 4), (4, 2048, 4), (16, 1024, 8), (8, 2048, 8),
                           (32, 512, 8), (32, 512, 4), (64, 256, 4))
        for acc3 in (1, 0)
    ]

    def _prune(configs: list, nargs: dict, **kw) -> list:
        if kw.get("USE_DOT"):  # tl.dot: 16 rows at least, no 3-D accumulator
            return [c for c in configs if c.kwargs["BLOCK_N"] >= 16 and not c.kwargs["ACC3"]]
        if kw.get("BLOCK_M", 1) > 1:  # the 3-D accumulator is BLOCK_M times larger
            return [c for c in configs if not c.kwargs["ACC3"]] + \
                [c for c in configs if c.kwargs["ACC3"] and c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"] <= 4096]
        return configs

    @triton.jit
    def load_xw(x_ptr, w_ptr, offs_m, offs_n, m_mask, n_mask, k0, K, stride_xm, stride_wn,
                BLOCK_K: tl.constexpr):
        """x[BLOCK_M, BLOCK_K] and w[BLOCK_N, BLOCK_K] at k0, zero past K (the GEMVs' K step)."""
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :],
                    mask=n_mask[:, None] & k_mask[None, :], other=0)
        return x, w

    @autotune_or_fixed(_CONFIGS, key=["M", "N", "K"], fixed={"BLOCK_N": 16, "BLOCK_K": 64, "ACC3": 1},
                       prune_configs_by={"early_config_prune": _prune})
    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     ACC3: tl.constexpr, USE_DOT: tl.constexpr, IEEE: tl.constexpr):
        # One program owns BLOCK_N output columns for BLOCK_M rows of x and streams its slab of w.
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_mask = offs_m < M
        n_mask = offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        # the 3-D accumulator's depth (1 where unused: tl.dot, or ACC3 off)
        KA: tl.constexpr = 1 + (BLOCK_K - 1) * ACC3 * (1 - USE_DOT)
        acc3 = tl.zeros((BLOCK_M, BLOCK_N, KA), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            x, w = load_xw(x_ptr, w_ptr, offs_m, offs_n, m_mask, n_mask, k0, K, stride_xm,
                           stride_wn, BLOCK_K)
            if USE_DOT:
                if IEEE:
                    acc += tl.dot(x, tl.trans(w), input_precision="ieee")
                else:
                    acc += tl.dot(x, tl.trans(w))
            elif ACC3:
                acc3 += x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
            else:
                # M is tiny: an inner product per (m, n) in fp32 registers, no tensor cores needed.
                acc += tl.sum(x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
        if KA > 1:
            acc = tl.sum(acc3, axis=2)
        y = acc.to(y_ptr.dtype.element_ty)
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], y,
                 mask=m_mask[:, None] & n_mask[None, :])

    _gemv_kernel.configs_for = lambda use_dot, block_m=1: _prune(_CONFIGS, {}, USE_DOT=use_dot,
                                                                 BLOCK_M=block_m)

    @register_impl("gemv_bf16", "triton_gemv", backends=TRITON_BACKENDS, kind="triton")
    def triton_gemv(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Hand-written Triton GEMV: fp32 accumulation, tl.dot once M > 4."""
        M, K = x.shape
        N = w.shape[0]
        if w.shape[1] != K:
            raise ValueError(f"x has K={K} but w has K={w.shape[1]}")
        x = x.contiguous()
        w = w.contiguous()
        y = out if out is not None else torch.empty(M, N, device=x.device, dtype=x.dtype)
        use_dot = M > 4
        block_m = max(16, triton.next_power_of_2(min(M, 64))) if use_dot else triton.next_power_of_2(M)
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(M, block_m))
        _gemv_kernel[grid](x, w, y, M, N, K, x.stride(0), w.stride(0), y.stride(0),
                           BLOCK_M=block_m, USE_DOT=use_dot, IEEE=x.dtype == torch.float32,
                           **launch_meta(_gemv_kernel, use_dot))
        return y


__all__ = ["GEMV_COMMON", "GemvShape", "check_gemv_dims", "gemv_bf16"]
