"""The GEMV ops on the CPU in C (simd.c, w4_asm.h: AVX2 + OpenMP; the tiled INT4 at M = 1, the INT8
and the 16-bit loops in AVX-512 where the build has it, bf16 x through VDPBF16PS where it has
AVX512_BF16), built on first use, called via ctypes;
registers `simd_c` for `gemv_bf16`, `gemv_w8` and `gemv_w4`, and `simd_c_tiled` for `gemv_w4`.

Why C and not torch.compile on the CPU: Inductor's CPU code for an int8/int4 reduction loads the
weights with partial (count < width) vector loads or 2-D transposes and runs 10-40x under the
memory roof; a GEMV has to stream the packed weights once and unpack them in registers.

The kernels read the op's tensors in place (x, scales and zeros in bf16/fp16/fp32, weights packed
as docs/kernels.md's Formats says), so their bytes are the op's byte model (simd_c_tiled at M > 1
with more than 1024 groups a row in an AVX2 build excepted: it runs the M = 1 kernel once per row
of x, reading the weights each time); gemv_w4 also takes the same bytes reordered
into blocks of 4-row tiles (tile_int4_rows, done once outside timing). Tricks:
- INT8: `vpmovsxbd` widens 8 int8 at a time (16 with AVX-512F) straight from memory, then
  convert and FMA; at M > 1 in the 16-bit GEMV's tile loop, each widened vector feeding up to 4
  rows of x (1.5-1.7x one x row at a time on a Zen 4 at M = 2-16).
- bf16 x with bf16 weights, and with INT8 weights at M > 1, in a build with AVX512_BF16:
  VDPBF16PS multiplies adjacent pairs of k, 32 weights an instruction, the bf16 weights as loaded
  and the INT8 ones converted to bf16 (exactly) once for up to 4 rows of x: on a Zen 4 2.0-2.1x
  the FMA loop at M = 8-32 (bf16) and 1.2-1.7x at M = 2-16 (INT8).
- INT4: a 32-bit word holds 8 nibbles, k = 8i..8i+7 in order. Nibble j is `word & (0xF << 4j)`,
  an exact float after conversion (4 significant bits); x is pre-scaled by 16^-j to cancel the
  shift, so unpacking costs one AND per 8 weights. On AMD at M = 1 even the conversion goes: the
  ANDed word's bits are already the float q * 2^(p - 149), a denormal (see simd.c). Lane i of a
  vector holds k = 8i..8i+7, all in one group, so scales apply per lane and G = 32 needs no
  special case.
- INT4 tiled, M = 1, in a build with AVX-512F: one zmm holds a chunk of two rows of a tile, so an
  AND and an FMA take 16 weights (a ymm op takes 8). The loop is the limit on a CPU that executes
  512-bit ops whole: 1.13-1.39x the ymm loop on a Zen 5 (docs/cpu-results.md).
- INT4, M = 1, bf16 x, in a build with AVX512_BF16: each nibble looked up as a bf16 (VPERMW) and
  two a lane multiplied by their x values in one VDPBF16PS, 32 weights an instruction. On a Zen 4,
  whose 256-bit datapaths held the denormal loop below the memory, 1.15x (tiled) and 1.22-1.34x
  (row layout) from DRAM. At M > 1 each looked-up vector feeds up to 4 rows of x: 1.2-2.4x
  the loops it replaced.
- INT4 at M > 1 without it (AVX2 + F16C): a tile's word vectors are unpacked once (denormal on
  AMD) for 2 rows of x a pass, 4 with AVX-512F, the tile in L1/L2 between passes: FMA-bound,
  1.02-1.34x the M = 1 kernel run once per row of x on a Zen 4 (the most from DRAM, where the
  weights are read once instead of M times).
- The zero point leaves the inner loop: sum_k x (q - z) s = s (sum_k x q) - s z sum_k x, with
  sum_k x per group computed once per call.
- y leaves the C already in the caller's dtype (rounded as torch rounds): a conversion op in Python
  cost ~10 us a call, a few % of a 4096 x 4096 INT4 GEMV.
The library is compiled with the host's compiler for the host's CPU (-march=native) and cached;
without a compiler the impls raise NotImplementedError, so the runner skips them with the reason.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from ..cbuild import CLibrary, define
from ..common import FLOATS, check_out
from ..registry import register_impl
from .ops import check_w4_args, check_w8_args

SOURCE = Path(__file__).with_name("simd.c")
W4_TILE_BLOCK = define(SOURCE, "W4_TB")  # tiles per block in the tiled INT4 layout
W4_KBLOCK_WORDS = define(SOURCE, "W4_KBW")  # words per row of a K-block of it: 4096 k

_DT = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
i64, ptr = ctypes.c_int64, ctypes.c_void_p
library = CLibrary("dequant_gemv", SOURCE, {
    "gemv_w8": ([ptr, ctypes.c_int, i64, i64, ptr, ptr, i64, ptr, ptr, ctypes.c_int, ptr,
                 ctypes.c_int], ctypes.c_int),
    "gemv_w4": ([ptr, ctypes.c_int, i64, i64, ptr, ptr, ptr, i64, i64, ptr, ptr, ctypes.c_int,
                 ctypes.c_int, ctypes.c_int, ptr, ctypes.c_int], ctypes.c_int),
    "gemv_bf16": ([ptr, ctypes.c_int, i64, i64, ptr, i64, ptr, ptr, ctypes.c_int, ptr, ctypes.c_int],
                  ctypes.c_int),
    "w4_denormal_unpack": ([], ctypes.c_int),
    "w4_dot_unpack": ([], ctypes.c_int),
    "w4_tile_bits": ([], ctypes.c_int),
    "store_out": ([ptr, ptr, i64, ctypes.c_int], None),
}, libs=("-lm",))
_scratch = library.scratch_ptr


def _check(x: torch.Tensor, *tensors: torch.Tensor, out: torch.Tensor | None = None) -> None:
    """What the C needs of the tensors whose addresses it gets: the CPU (a device address would
    be read as host memory), x's dtype, contiguous weights."""
    if x.device.type != "cpu":
        raise NotImplementedError(f"the C SIMD kernels run on the CPU, not {x.device.type}")
    if x.dtype not in _DT:
        raise NotImplementedError(f"the C SIMD kernels take bf16/fp16/fp32 x, not {x.dtype}")
    for t in (*tensors, *([out] if out is not None else [])):
        if t.device.type != "cpu":
            raise ValueError(f"the C SIMD kernels take every tensor on the CPU, not one on "
                             f"{t.device}")
    for t in tensors:
        if not t.is_contiguous():
            raise ValueError("the C SIMD kernels need contiguous tensors")


def _output(x: torch.Tensor, M: int, N: int, out: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(tensor the C writes, tensor to return, its fp32 row buffer pointer, its dtype code).

    The C writes y in `out`'s dtype itself (no out: x's dtype); a float `out` it cannot write
    (fp64, strided) gets the fp32 result copied into it."""
    check_out("the C SIMD kernels", out, (M, N), x.device, (*FLOATS, torch.float64))
    if out is None:
        y = torch.empty(M, N, dtype=x.dtype)
    elif out.dtype in _DT and out.is_contiguous():
        y = out
    else:
        y = torch.empty(M, N)
    odt = _DT[y.dtype]
    y32 = y.data_ptr() if odt == 0 else _scratch("y", M * N)
    return y, out if out is not None else y, y32, odt


def _finish(y: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    return result if result is y else result.copy_(y)


def gemv_w8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
            out: torch.Tensor | None = None) -> torch.Tensor:
    M, N, K = check_w8_args(x, qweight, scales)
    x = x.contiguous()
    _check(x, qweight, scales, out=out)
    y, result, y32, odt = _output(x, M, N, out)
    library().gemv_w8(x.data_ptr(), _DT[x.dtype], M, K, qweight.data_ptr(), scales.data_ptr(), N,
                      y32, _scratch("x", M * ((K + 31) // 32 * 32)), torch.get_num_threads(),
                      y.data_ptr(), odt)
    return _finish(y, result)


def gemv_bf16(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    x = x.contiguous()
    _check(x, w, out=out)
    if w.dtype != x.dtype:
        raise NotImplementedError(f"the C bf16 GEMV takes w in x's dtype ({x.dtype}), not {w.dtype}")
    M, K = x.shape
    if w.dim() != 2 or w.shape[1] != K:
        raise ValueError(f"w must be [N, {K}], got {list(w.shape)}")
    N = w.shape[0]
    y, result, y32, odt = _output(x, M, N, out)
    library().gemv_bf16(x.data_ptr(), _DT[x.dtype], M, K, w.data_ptr(), N, y32,
                        _scratch("x", M * ((K + 31) // 32 * 32)), torch.get_num_threads(),
                        y.data_ptr(), odt)
    return _finish(y, result)


def w4_kblock_words(K: int) -> int:
    """Words per row of one K-block of the tiled layout (w4_kbw in simd.c): 8 * W4_KBLOCK_WORDS k
    (4096) where K is a larger multiple of that, else all of K."""
    kw = K // 8
    return W4_KBLOCK_WORDS if kw > W4_KBLOCK_WORDS and kw % W4_KBLOCK_WORDS == 0 else kw


def tile_int4_rows(qweight: torch.Tensor) -> torch.Tensor:
    """qweight [N, K/2] in row layout -> the same bytes tiled (see simd.c): 4-row tiles whose 32-byte
    pieces are stored together, W4_TILE_BLOCK tiles to a block, each block ordered K-block by
    K-block (all its tiles' first K-block, then the next ...); rows past the last full tile as
    they were. K % 64 == 0."""
    N, half_k = qweight.shape
    if half_k % 32:
        raise ValueError(f"tiling needs K % 64 == 0, got K={2 * half_k}")
    kw, nt = half_k // 4, N // 4
    kbw = w4_kblock_words(2 * half_k)
    words = qweight.contiguous().view(torch.int32)  # [N, K/8]
    tiles = words[:4 * nt].reshape(nt, 4, kw // kbw, kbw // 8, 8)  # [tile, row, K-block, chunk, word]
    parts = [tiles[b:b + W4_TILE_BLOCK].permute(2, 0, 3, 1, 4).reshape(-1)
             for b in range(0, nt, W4_TILE_BLOCK)]
    return torch.cat(parts + [words[4 * nt:].reshape(-1)]).view(torch.uint8).view(N, half_k)


def denormal_unpack() -> bool:
    """Whether gemv_w4 at M = 1 unpacks nibbles as denormal floats on this CPU (AMD) where the
    VDPBF16PS loops do not apply (dot_unpack()), see simd.c."""
    return bool(library().w4_denormal_unpack())


def dot_unpack() -> bool:
    """Whether this build has the INT4 loops through VDPBF16PS (AVX512_BF16): what gemv_w4 takes
    for bf16 x with K % 64 == 0, in either layout, see simd.c's w4dot_words."""
    return bool(library().w4_dot_unpack())


def tile_bits() -> int:
    """Register width of the tiled INT4 loop at M = 1 in this build: 512 (AVX-512F), 256 (AVX2),
    0 (no SIMD: the scalar path)."""
    return library().w4_tile_bits()


_UNPACK = {"auto": 0, "cvt": 1, "denormal": 2, "dot": 3}  # gemv_w4's `unpack` in simd.c


def gemv_w4(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
            group_size: int, out: torch.Tensor | None = None, tiled: bool = False,
            unpack: str = "auto") -> torch.Tensor:
    """INT4 GEMV in C. `tiled`: qweight is in tile_int4_rows' layout. `unpack`: "auto" picks "dot"
    where it applies (bf16 x, K % 64 == 0, a build with AVX512_BF16: dot_unpack()), else the
    denormal unpack on AMD CPUs; "cvt", "denormal" and "dot" force one (tests run each where it
    exists; "denormal" is correct everywhere, slow on Intel, and NotImplementedError in a build
    without AVX2 + F16C; "dot" NotImplementedError where it does not apply). The unpack applies at
    M = 1 and to the M > 1 loops of whole tiles (K % 64 == 0)."""
    if unpack not in _UNPACK:
        raise ValueError(f"unpack must be one of {', '.join(map(repr, _UNPACK))}, got {unpack!r}")
    M, N, K = check_w4_args(x, qweight, scales, zeros, group_size)
    x = x.contiguous()
    _check(x, qweight, scales, zeros, out=out)
    kw8, ng, nthreads = (K // 8 + 7) // 8 * 8, K // group_size, torch.get_num_threads()
    y, result, y32, odt = _output(x, M, N, out)
    rc = library().gemv_w4(x.data_ptr(), _DT[x.dtype], M, K, qweight.data_ptr(), scales.data_ptr(),
                           zeros.data_ptr(), N, group_size, y32,
                           _scratch("x", M * 8 * kw8 + M * ng + M * 4 * kw8
                                    + tiled * nthreads * 8 * W4_TILE_BLOCK * ng),
                           nthreads, int(tiled), _UNPACK[unpack], y.data_ptr(), odt)
    if rc == 2:
        raise NotImplementedError("unpack='denormal' needs the C kernels built with AVX2 and F16C; "
                                  "this build has no denormal unpack")
    if rc == 3:
        raise NotImplementedError("unpack='dot' takes bf16 x and K % 64 == 0 in a build with "
                                  "AVX512_BF16 (dot_unpack())")
    if rc:
        raise ValueError(f"the tiled INT4 layout needs K % 64 == 0, got K={K}")
    return _finish(y, result)


# --- the impls --------------------------------------------------------------------------------

@register_impl("gemv_bf16", "simd_c", backends=("cpu",), kind="compiled", build_info=library.info)
def simd_c_bf16(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-written C kernel (kernels/gemv/simd.c): weights widened to fp32 in registers, 4 rows
    sharing each x load, OpenMP over row tiles; zmm where the build has AVX-512F, bf16 through
    VDPBF16PS where it has AVX512_BF16. An unquantized
    GEMV that streams its weights as the quantized kernels stream theirs, so that the precision
    comparison measures bytes, not oneDNN's GEMV."""
    return gemv_bf16(x, w, out=out)


@register_impl("gemv_w8", "simd_c", backends=("cpu",), kind="compiled", build_info=library.info)
def simd_c_w8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-written AVX2 C kernel (kernels/gemv/simd.c): int8 widened in registers, OpenMP over rows."""
    return gemv_w8(x, qweight, scales, out=out)


@register_impl("gemv_w4", "simd_c", backends=("cpu",), kind="compiled", build_info=library.info)
def simd_c_w4(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
              group_size: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Hand-written AVX2 C kernel (kernels/gemv/simd.c) reading our layout in place: in-register
    unpack (one AND per 8 nibbles on AMD), zero point hoisted out of the loop."""
    return gemv_w4(x, qweight, scales, zeros, group_size, out=out)


def _prepare_tiled(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                   zeros: torch.Tensor, group_size: int) -> tuple:
    """Reorder the packed bytes into blocks of 4-row tiles once, outside timing, as the builtins
    repack (the same bytes: the byte count is unchanged)."""
    check_w4_args(x, qweight, scales, zeros, group_size)
    if x.device.type != "cpu":
        raise NotImplementedError(f"simd_c_tiled runs on the CPU, not {x.device.type}")
    tiled = x.shape[1] % 64 == 0
    return x, tile_int4_rows(qweight) if tiled else qweight, scales, zeros, group_size, tiled


@register_impl("gemv_w4", "simd_c_tiled", backends=("cpu",), kind="compiled",
               prepare=_prepare_tiled, build_info=library.info)
def simd_c_tiled(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 group_size: int, tiled: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
    """simd_c on the same bytes reordered (K % 64 == 0; else the row layout): 4-row tiles, one
    contiguous stream instead of 4 streams 4 KiB apart that share L1 sets, walked in K-blocks of
    4096 so that x's slice stays in L1 (tile_int4_rows). At M > 1 a tile at a time for several
    rows of x, as simd_c does."""
    return gemv_w4(x, qweight, scales, zeros, group_size, out=out, tiled=tiled)


__all__ = ["library", "gemv_bf16", "gemv_w8", "gemv_w4", "tile_int4_rows", "w4_kblock_words",
           "denormal_unpack", "dot_unpack", "tile_bits"]
