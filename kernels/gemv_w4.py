"""`gemv_w4`: y[M,N] = x[M,K] @ W.T with W in asymmetric group-wise INT4 (W4A16).

W[n, k] = (q[n, k] - zeros[n, k // G]) * scales[n, k // G], q packed two per byte along K with the
low nibble holding the even k (see DESIGN.md and kernels/quant.py). Weight bytes drop to ~1/4 of
bf16, plus the scales and zeros: the ideal speedup over bf16 at G=128 is 2 / (0.5 + 4/128) = 3.76x.

bytes = x + qweight (K/2 B per row) + scales + zeros (x's dtype, K/G per row each) + y.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import cpu_simd
from .gemv_bf16 import GEMV_COMMON, check_gemv_dims, esize, ref_device
from .gemv_w8 import compile_for
from .quant import INT4_GROUP_SIZES, check_int4_dims, dequant_int4, quantize_int4, \
    to_torch_int4_scales_zeros, unpack_int4
from .registry import Op, register_impl, register_op
from .triton_util import HAS_TRITON, TRITON_BACKENDS, autotune_or_fixed

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


@dataclass(frozen=True)
class GemvW4Shape:
    M: int
    N: int
    K: int
    group_size: int = 128

    def __post_init__(self) -> None:
        check_gemv_dims(self.M, self.N, self.K)
        check_int4_dims(self.K, self.group_size)


def make_inputs(shape: GemvW4Shape, dtype: torch.dtype, device, seed: int) -> tuple:
    """Random x and weights, quantized by kernels.quant on the CPU, then moved to the device."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(shape.M, shape.K, generator=g)
    w = torch.randn(shape.N, shape.K, generator=g) / math.sqrt(shape.K)
    qweight, scales, zeros = quantize_int4(w, shape.group_size, dtype)
    return (x.to(device=device, dtype=dtype), qweight.to(device), scales.to(device),
            zeros.to(device), shape.group_size)


def reference(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
              group_size: int) -> torch.Tensor:
    d = ref_device(x)
    w = dequant_int4(qweight.detach().to(d), scales.detach().to(d), zeros.detach().to(d),
                     group_size, torch.float64)
    return x.detach().to(d, torch.float64) @ w.T


def weight_bytes(N: int, K: int, group_size: int, dtype: torch.dtype) -> int:
    """Bytes of one [N, K] INT4 weight: half a byte per code + a scale and a zero per group."""
    return N * K // 2 + 2 * N * (K // group_size) * esize(dtype)


def bytes_moved(s: GemvW4Shape, dtype: torch.dtype) -> int:
    return (s.M * s.K + s.M * s.N) * esize(dtype) + weight_bytes(s.N, s.K, s.group_size, dtype)


def check_args(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               group_size: int) -> tuple[int, int, int]:
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
    make_inputs=make_inputs,
    reference=reference,
    bytes_moved=bytes_moved,
    **GEMV_COMMON,
    doc="y = x @ W.T, W in asymmetric group-wise INT4 (low nibble = even k)",
    smoke=((GemvW4Shape(M=1, N=256, K=512, group_size=128), BF16),
           (GemvW4Shape(M=3, N=96, K=320, group_size=32), F32)),
))


# --- PyTorch ----------------------------------------------------------------------------------

@register_impl("gemv_w4", "torch_dequant", backends=("cpu", "cuda", "xla"), baseline=True)
def torch_dequant(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                  group_size: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Naive: unpack and dequantize the whole matrix to x's dtype, then matmul."""
    w = dequant_int4(qweight, scales, zeros, group_size, x.dtype)
    return torch.matmul(x, w.T, out=out)


def _prepare_int4pack(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                      zeros: torch.Tensor, group_size: int) -> tuple:
    """Our format → PyTorch's tiled int4 layout and scales_and_zeros (untimed)."""
    M, N, K = check_args(x, qweight, scales, zeros, group_size)
    sz = to_torch_int4_scales_zeros(scales, zeros, x.dtype)
    q = unpack_int4(qweight).to(torch.int32)  # [N, K] codes, our order
    try:
        if x.device.type == "cpu":
            packed = torch._convert_weight_to_int4pack_for_cpu(q, 2)
        else:
            if x.dtype != BF16:
                raise NotImplementedError(f"_weight_int4pack_mm on CUDA takes bf16 only, not {x.dtype}")
            inner = next((t for t in (8, 4, 2) if K % (16 * t) == 0), None)
            if inner is None or N % 8:
                raise NotImplementedError(f"_weight_int4pack_mm needs N % 8 == 0 and K % 32 == 0 (N={N}, K={K})")
            # Since PyTorch 2.5 the CUDA converter takes uint8 with the *high* nibble = even k.
            theirs = ((q[:, 0::2] << 4) | q[:, 1::2]).to(torch.uint8)
            packed = torch._convert_weight_to_int4pack(theirs, inner)
    except RuntimeError as e:
        raise NotImplementedError(f"PyTorch's int4 packing rejects this case: {str(e).splitlines()[0]}") from None
    return x.contiguous(), packed, group_size, sz


@register_impl("gemv_w4", "torch_int4pack_mm", kind="builtin", baseline=True, prepare=_prepare_int4pack)
def torch_int4pack_mm(x: torch.Tensor, packed: torch.Tensor, group_size: int,
                      scales_and_zeros: torch.Tensor) -> torch.Tensor:
    """PyTorch's `_weight_int4pack_mm_for_cpu` / `_weight_int4pack_mm`, fed our weights repacked."""
    if x.device.type == "cpu":
        return torch._weight_int4pack_mm_for_cpu(x, packed, group_size, scales_and_zeros)
    return torch._weight_int4pack_mm(x, packed, group_size, scales_and_zeros)


def _fused(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
           group_size: int) -> torch.Tensor:
    # One reduction over K with the unpack and (q - z) * s written per element: the compiler
    # fuses it into the loads, so no dequantized matrix is ever written.
    M, K = x.shape
    N = qweight.shape[0]
    q = torch.stack((qweight & 0x0F, qweight >> 4), dim=-1).view(N, K // group_size, group_size)
    w = (q.float() - zeros.float()[..., None]) * scales.float()[..., None]
    acc = (x.float()[:, None, :] * w.view(1, N, K)).sum(dim=-1)
    return acc.to(x.dtype)


def _prepare_compiled(x, qweight, scales, zeros, group_size) -> tuple:
    return x, qweight, scales, zeros, group_size, compile_for(_fused, x, qweight, scales, zeros, group_size)


@register_impl("gemv_w4", "torch_compiled", kind="compiled", prepare=_prepare_compiled)
def torch_compiled(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                   group_size: int, fn=None, out: torch.Tensor | None = None) -> torch.Tensor:
    """torch.compile of the fused unpack-dequant-reduce (compiled once per shape in `prepare`)."""
    fn = fn or compile_for(_fused, x, qweight, scales, zeros, group_size)
    y = fn(x, qweight, scales, zeros, group_size)
    return y if out is None else out.copy_(y)


@register_impl("gemv_w4", "simd_c", backends=("cpu",), kind="compiled")
def simd_c(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
           group_size: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-written AVX2 C kernel (kernels/cpu_simd.py) reading our layout in place: in-register
    unpack (one AND per 8 nibbles on AMD), zero point hoisted out of the loop."""
    check_args(x, qweight, scales, zeros, group_size)
    return cpu_simd.gemv_w4(x, qweight, scales, zeros, group_size, out=out)


def _prepare_tiled(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                   zeros: torch.Tensor, group_size: int) -> tuple:
    """Reorder the packed bytes into blocks of 4-row tiles once, outside timing, as the builtins
    repack (the same bytes: the byte count is unchanged)."""
    check_args(x, qweight, scales, zeros, group_size)
    if x.device.type != "cpu":
        raise NotImplementedError(f"simd_c_tiled runs on the CPU, not {x.device.type}")
    tiled = x.shape[1] % 64 == 0
    return x, cpu_simd.tile_int4_rows(qweight) if tiled else qweight, scales, zeros, group_size, tiled


@register_impl("gemv_w4", "simd_c_tiled", backends=("cpu",), kind="compiled", prepare=_prepare_tiled)
def simd_c_tiled(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 group_size: int, tiled: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
    """simd_c on the same bytes reordered (K % 64 == 0; else the row layout): 4-row tiles, one
    contiguous stream instead of 4 streams 4 KiB apart that share L1 sets, walked in K-blocks of
    4096 so that x's slice stays in L1 (cpu_simd.tile_int4_rows). At M > 1 the M = 1 kernel runs
    once per row of x (faster here than a row-by-row M > 1 loop over tiles)."""
    return cpu_simd.gemv_w4(x, qweight, scales, zeros, group_size, out=out, tiled=tiled)


# --- Triton -----------------------------------------------------------------------------------

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .gemv_w8 import split_k_for

    # M <= 4 (GEMV): BLOCK_N rows x BLOCK_K codes a step (2-16 KB of weights), with the two ways
    # to turn a nibble into a float (MAGIC, below) for the tuner to choose between.
    _GEMV_CONFIGS = [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "MAGIC": magic}, num_warps=nw, num_stages=ns)
        for bn, bk, nw, ns in ((16, 512, 4, 3), (8, 512, 4, 3), (8, 1024, 4, 3), (16, 256, 4, 3),
                               (16, 1024, 4, 3), (16, 1024, 8, 3), (32, 256, 4, 3), (32, 512, 4, 3),
                               (32, 1024, 8, 3), (64, 256, 4, 3), (64, 512, 8, 3), (16, 512, 4, 4))
        for magic in (1, 0)
    ]
    # M > 4: tl.dot over one group a step (BLOCK_K and MAGIC unused).
    _DOT_CONFIGS = [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": 256, "MAGIC": 0}, num_warps=nw, num_stages=ns)
        for bn in (16, 32, 64, 128) for nw, ns in ((4, 2), (4, 4))
    ]
    _DOT_IDS = {id(c) for c in _DOT_CONFIGS}

    def configs_for(use_dot: bool) -> list:
        """The configs that can run on a path (tl.dot needs BLOCK_N >= 16; BLOCK_K is GEMV's)."""
        return _DOT_CONFIGS if use_dot else _GEMV_CONFIGS

    def _prune(configs: list, nargs: dict, **kw) -> list:
        return [c for c in configs if (id(c) in _DOT_IDS) == bool(kw.get("USE_DOT"))]

    @autotune_or_fixed(_GEMV_CONFIGS + _DOT_CONFIGS, key=["M", "N", "K", "G", "SPLIT_K", "BLOCK_M"],
                       fixed={"BLOCK_N": 16, "BLOCK_K": 256, "MAGIC": 1}, reset_to_zero=["ws_ptr"],
                       prune_configs_by={"early_config_prune": _prune})
    @triton.jit
    def _w4_kernel(x_ptr, q_ptr, s_ptr, z_ptr, y_ptr, ws_ptr, M, N, K, stride_xm, stride_qn,
                   stride_sn, stride_ym, G: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   MAGIC: tl.constexpr, SPLIT_K: tl.constexpr, USE_DOT: tl.constexpr,
                   IEEE: tl.constexpr):
        # Program (n, split, m) walks its share of the K groups. A row holds G/2 contiguous bytes
        # per group, loaded whole and split into even/odd nibbles in registers; x is read as its
        # even and odd halves so the nibbles never need interleaving.
        HALF: tl.constexpr = G // 2
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        pid_m = tl.program_id(2)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_j = tl.arange(0, HALF)
        m_mask = offs_m < M
        n_mask = offs_n < N
        ng = K // G
        per_split = tl.cdiv(ng, SPLIT_K)
        g_lo = pid_k * per_split
        g_hi = tl.minimum(g_lo + per_split, ng)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if USE_DOT:
            for g in range(g_lo, g_hi):
                b = tl.load(q_ptr + offs_n[:, None] * stride_qn + g * HALF + offs_j[None, :],
                            mask=n_mask[:, None], other=0)
                s = tl.load(s_ptr + offs_n * stride_sn + g, mask=n_mask, other=0.0).to(tl.float32)
                z = tl.load(z_ptr + offs_n * stride_sn + g, mask=n_mask, other=0.0).to(tl.float32)
                w_even = ((b & 0xF).to(tl.float32) - z[:, None]) * s[:, None]
                w_odd = ((b >> 4).to(tl.float32) - z[:, None]) * s[:, None]
                x_offs = x_ptr + offs_m[:, None] * stride_xm + g * G + 2 * offs_j[None, :]
                x_even = tl.load(x_offs, mask=m_mask[:, None], other=0.0)
                x_odd = tl.load(x_offs + 1, mask=m_mask[:, None], other=0.0)
                if IEEE:
                    acc += tl.dot(x_even, tl.trans(w_even), input_precision="ieee")
                    acc += tl.dot(x_odd, tl.trans(w_odd), input_precision="ieee")
                else:
                    acc += tl.dot(x_even, tl.trans(w_even.to(x_even.dtype)))
                    acc += tl.dot(x_odd, tl.trans(w_odd.to(x_odd.dtype)))
        else:
            # GEMV: GROUPS groups a step as a [BLOCK_N, GROUPS, HALF] tile. The scale and zero
            # leave the inner sum: sum_j x_j (q_j - z) s = s (sum_j x_j q_j - z sum_j x_j), so a
            # code costs one FMA after its conversion to float.
            GROUPS: tl.constexpr = BLOCK_K // G
            offs_g = tl.arange(0, GROUPS)
            for g0 in range(g_lo, g_hi, GROUPS):
                gi = g0 + offs_g
                g_mask = gi < g_hi
                b = tl.load(q_ptr + offs_n[:, None, None] * stride_qn + gi[None, :, None] * HALF
                            + offs_j[None, None, :],
                            mask=n_mask[:, None, None] & g_mask[None, :, None], other=0)
                if MAGIC:
                    # 0x4B000000 | q is the float 2^23 + q: an OR and a subtraction instead of an
                    # int-to-float conversion, which Hopper issues at 1/8 of the FMA rate.
                    bi = b.to(tl.uint32)
                    q_even = ((bi & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
                    q_odd = ((bi >> 4) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
                else:
                    q_even = (b & 0xF).to(tl.float32)
                    q_odd = (b >> 4).to(tl.float32)
                sz_offs = offs_n[:, None] * stride_sn + gi[None, :]
                sz_mask = n_mask[:, None] & g_mask[None, :]
                s = tl.load(s_ptr + sz_offs, mask=sz_mask, other=0.0).to(tl.float32)
                z = tl.load(z_ptr + sz_offs, mask=sz_mask, other=0.0).to(tl.float32)
                x_offs = x_ptr + offs_m[:, None, None] * stride_xm + gi[None, :, None] * G \
                    + 2 * offs_j[None, None, :]
                x_mask = m_mask[:, None, None] & g_mask[None, :, None]
                x_even = tl.load(x_offs, mask=x_mask, other=0.0).to(tl.float32)
                x_odd = tl.load(x_offs + 1, mask=x_mask, other=0.0).to(tl.float32)
                xq = tl.sum(x_even[:, None, :, :] * q_even[None, :, :, :]
                            + x_odd[:, None, :, :] * q_odd[None, :, :, :], axis=3)
                xs = tl.sum(x_even + x_odd, axis=2)
                acc += tl.sum((xq - z[None, :, :] * xs[:, None, :]) * s[None, :, :], axis=2)
        y_mask = m_mask[:, None] & n_mask[None, :]
        if SPLIT_K == 1:
            tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :],
                     acc.to(y_ptr.dtype.element_ty), mask=y_mask)
        else:
            tl.atomic_add(ws_ptr + offs_m[:, None] * N + offs_n[None, :], acc, mask=y_mask)

    _w4_kernel.configs_for = configs_for

    @register_impl("gemv_w4", "triton_w4", backends=TRITON_BACKENDS, kind="triton")
    def triton_w4(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                  group_size: int, out: torch.Tensor | None = None,
                  split_k: int | None = None) -> torch.Tensor:
        """Triton INT4 GEMV: several groups a step, in-register unpack, scale and zero applied per
        group after the sum; tl.dot once M > 4; split-K only where N leaves SMs idle."""
        M, N, K = check_args(x, qweight, scales, zeros, group_size)
        x = x.contiguous()
        y = out if out is not None else torch.empty(M, N, device=x.device, dtype=x.dtype)
        use_dot = M > 4
        block_m = max(16, triton.next_power_of_2(min(M, 64))) if use_dot else triton.next_power_of_2(M)
        split = split_k or split_k_for(triton.cdiv(N, 16) * triton.cdiv(M, block_m), K, x.device)
        split = max(1, min(split, K // group_size))
        ws = torch.zeros(M, N, device=x.device, dtype=torch.float32) if split > 1 else y
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), split, triton.cdiv(M, block_m))
        _w4_kernel[grid](x, qweight, scales, zeros, y, ws, M, N, K, x.stride(0), qweight.stride(0),
                         scales.stride(0), y.stride(0), G=group_size, BLOCK_M=block_m,
                         SPLIT_K=split, USE_DOT=use_dot, IEEE=x.dtype == torch.float32,
                         **_w4_kernel.fixed_meta)
        if split > 1:
            y.copy_(ws)
        return y


__all__ = ["GemvW4Shape", "gemv_w4", "check_args", "INT4_GROUP_SIZES"]
