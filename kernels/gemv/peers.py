"""GemLite for `gemv_w4` and `gemv_w8`: what a user would pick instead of our kernels, run beside them.

GemLite (mobiusml/gemlite, pure Triton) is an optional baseline: `pip install 'decodewall[peers]'`
installs the version whose source this file was written against (0.6.0.post2). It is imported
only when an impl is prepared, never when kernels/ is imported, so the impls are registered
either way. They are written for CUDA: another backend records them (skipped) only when `--impl` names them.
Without GemLite, without a GPU, or for a case it cannot take, `prepare` raises
NotImplementedError saying why and the harness records the case as skipped with that reason.

Our formats in GemLite's terms (gemlite/core.py, GemLiteLinearTriton):
- INT4: `pack(W_q, scales, zeros)` takes the codes unpacked, uint8 [N, K] in k order (it packs
  them eight to an int32 along K itself), and scales and zeros as [N, K/G] (it transposes them to
  [K/G, N]). With float zeros and its default fma_mode it stores z' = -zeros * scales, rounded
  once to the zeros' dtype, and its kernels dequantize w = fma(q, s, z') (W_group_mode 4): our
  (q - z) * s up to that one rounding, which alone moves a GEMV ~5e-3 (bf16) / ~6e-4 (fp16) from
  the exact result. So the conversion unpacks our codes (`to_gemlite_w4`); scales and zeros pass
  as they are.
- INT8: `pack(qweight, scales[N], zeros=None)` is w = q * scales[n]: our format unchanged. Its
  A16W8 helper then sets W_group_mode 2 / channel_scale_mode 0 on NVIDIA (the scale applied to
  each weight before the dot, "pre-scaling"); this impl does the same.

Accumulation: GemLite's split-K kernels add their partial sums into the output with atomics in
the output dtype. In bf16 or fp16 every add rounds, which at Llama-70B K (8192-28672) puts the
result ~1-2% (bf16) or ~0.3-0.6% (fp16) from the exact one (a CPU simulation of that rounding
with 16-128 K elements a partial sum, as its configs split K), past our 1e-2 / 2e-3 tolerances, so such a run would be "failed-check" and never timed. The
impls therefore ask GemLite for an fp32 output (its atomics then add in fp32) and cast it to x's
dtype, one small extra kernel inside the timed call: the same fp32 buffer and cast GemLite uses
itself for bf16 when its `set_native_atomic_bfp16(False)` accuracy switch is off.

float32 inputs are not offered: GemLite's GEMM paths (M > 4 for INT4, M > 2 for INT8) use
`tl.dot`, which Triton runs in TF32 on float32 operands.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..common import check_out
from ..quant import unpack_int4
from ..registry import register_impl
from .ops import check_w4_args, check_w8_args

BF16, F16 = torch.bfloat16, torch.float16
INSTALL_HINT = "pip install 'decodewall[peers]'"
MIN_K = 32  # GemLiteLinearTriton.MIN_SIZE: in_features must be a multiple of it


def import_gemlite() -> Any:
    """The gemlite module, or NotImplementedError saying why it cannot be had."""
    try:
        import gemlite
    except ModuleNotFoundError as e:
        if e.name == "gemlite":
            raise NotImplementedError(f"gemlite is not installed ({INSTALL_HINT})") from None
        raise NotImplementedError(f"gemlite cannot be imported: {e}") from None
    except Exception as e:  # it reads the CUDA device's properties at import
        msg = (str(e).strip().splitlines() or [""])[0]
        raise NotImplementedError(f"gemlite cannot be imported here ({type(e).__name__}: {msg})") from None
    return gemlite


def to_gemlite_w4(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Our INT4 weights → the (W_q, scales, zeros) that GemLiteLinearTriton.pack takes.

    W_q: uint8 [N, K] codes in k order (ours unpacked: low nibble = even k); scales and zeros
    unchanged, [N, K/G] in x's dtype. GemLite dequantizes them as q * s + (-z * s), the last
    term rounded once to the zeros' dtype (its fma_mode)."""
    return unpack_int4(qweight).contiguous(), scales, zeros


def _check_case(x: torch.Tensor, K: int) -> None:
    if x.dtype not in (BF16, F16):
        raise NotImplementedError(f"GemLite is run on bfloat16 and float16 only, not {x.dtype} "
                                  "(its GEMM paths run tl.dot, TF32 on float32)")
    if K % MIN_K:
        raise NotImplementedError(f"GemLite needs K % {MIN_K} == 0 (K={K})")


def _require_cuda(x: torch.Tensor) -> None:
    if x.device.type != "cuda":
        raise NotImplementedError(f"GemLite runs on CUDA devices, not {x.device.type}")


def _layer(gl: Any, x: torch.Tensor, W_nbits: int, group_size: int, N: int, K: int) -> Any:
    in_dtype = gl.DType.BF16 if x.dtype == BF16 else gl.DType.FP16
    return gl.GemLiteLinearTriton(W_nbits, group_size=group_size, in_features=K, out_features=N,
                                  input_dtype=in_dtype, output_dtype=gl.DType.FP32)


def _functional(gl: Any, x: torch.Tensor, layer: Any) -> tuple:
    # GemLiteLinearTriton.forward is forward_functional(x, bias, get_tensor_args(),
    # get_meta_args()); its tensors are listed one by one so the harness counts them as this
    # input set's bytes when it rotates sets past the cache.
    W_q, scales, zeros, meta_scale = layer.get_tensor_args()
    return (x, W_q, scales, zeros, meta_scale, layer.get_meta_args(), gl.forward_functional)


def _prepare_w4(x, qweight, scales, zeros, group_size) -> tuple:
    """Untimed: unpack our codes and let GemLite pack them into its own layout on the GPU."""
    M, N, K = check_w4_args(x, qweight, scales, zeros, group_size)
    gl = import_gemlite()
    _check_case(x, K)
    _require_cuda(x)
    layer = _layer(gl, x, 4, group_size, N, K)
    layer.pack(*to_gemlite_w4(qweight, scales, zeros))
    return _functional(gl, x, layer)


def _prepare_w8(x, qweight, scales) -> tuple:
    """Untimed: GemLite's INT8 layer over our tensors (it keeps a transposed view of qweight)."""
    M, N, K = check_w8_args(x, qweight, scales)
    gl = import_gemlite()
    _check_case(x, K)
    _require_cuda(x)
    layer = _layer(gl, x, 8, K, N, K)
    layer.pack(qweight, scales, zeros=None)
    layer.W_group_mode, layer.channel_scale_mode = 2, 0  # as gemlite.helper.A16W8 on NVIDIA
    return _functional(gl, x, layer)


def _run(x: torch.Tensor, W_q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
         meta_scale: torch.Tensor, meta_args: list[int], forward: Callable,
         out: torch.Tensor | None = None) -> torch.Tensor:
    y = forward(x, None, [W_q, scales, zeros, meta_scale], meta_args)  # fp32 [M, N]
    check_out("gemlite", out, tuple(y.shape), x.device)  # before copy_ casts or broadcasts
    return y.to(x.dtype) if out is None else out.copy_(y)


@register_impl("gemv_w4", "gemlite_w4", backends=("cuda",), dtypes=(BF16, F16), kind="triton",
               baseline=True, prepare=_prepare_w4)
def gemlite_w4(x, W_q, scales, zeros, meta_scale, meta_args, forward,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """GemLite (peer, Triton): our INT4 repacked into its layout, its own kernel choice per M."""
    return _run(x, W_q, scales, zeros, meta_scale, meta_args, forward, out)


@register_impl("gemv_w8", "gemlite_w8", backends=("cuda",), dtypes=(BF16, F16), kind="triton",
               baseline=True, prepare=_prepare_w8)
def gemlite_w8(x, W_q, scales, zeros, meta_scale, meta_args, forward,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """GemLite (peer, Triton): our INT8 as it is, its own kernel choice per M."""
    return _run(x, W_q, scales, zeros, meta_scale, meta_args, forward, out)


__all__ = ["import_gemlite", "to_gemlite_w4", "gemlite_w4", "gemlite_w8"]
