"""Triton INT4 GEMV: `triton_w4`, an impl of `gemv_w4` (W4A16, kernels/gemv/ops.py).

W[n, k] = (q[n, k] - zeros[n, g]) * scales[n, g], q packed two per byte, low nibble = even k.
The GEMV path (M <= 4) reads 32-bit words of eight codes and turns each code into the float
1 + q/128 by moving it into the mantissa of 1.0, in PTX (ASM=1) or its Triton twin (ASM=0, the
interpreter's): no int-to-float conversion, which Hopper issues at 1/8 of the FMA rate. Scale
and zero are applied once per word: sum_i x_i (q_i - z) s = 128 s p - (128 + z) s xs with
p = sum_i x_i f_i and xs = sum_i x_i. At M = 1 with bf16 x the PK=1 configs put two codes in
each instruction instead: the codes as fp16 subnormals (no bias), x scaled by a power of two into
fp16, one fma.rn.f16x2 per two codes (see _pk_loop). Above M = 4, tl.dot over one group a step
on the same codes, scale and zero applied to the product. K is split across programs where N
leaves SMs idle (triton_common.split_for), the partial sums added into an fp32 workspace that
the last split of each tile casts into y (triton_common.split_add).
`python -m bench.gpucheck.sass` counts each config's loop for sm_90.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..registry import register_impl
from ..triton_util import TRITON_BACKENDS, autotune_or_fixed, launch_meta
from .ops import check_w4_args
from .triton_common import (PTX, batch_path, check_elements, check_weights, output, split_add,
                            split_for, split_scratch, two_paths, word_gemv_configs)

# M <= 4 (GEMV): BLOCK_N rows x BLOCK_K codes a step, with the codes turned into floats in
# PTX (ASM=1) or in Triton (ASM=0, 1.3x the loop's instructions; the interpreter's path), and
# PREFETCH=1 loading the next step's words during this one (more bytes in flight where few
# programs fit an SM). `python -m bench.gpucheck.sass` counts each config's loop for sm_90.
# X3D=1 (M = 1 only) keeps the accumulator in the weights' layout: on the 32 x 2048 8-warp
# tile, where it takes the word tile's trip through shared memory out of the loop (bench.gpucheck.sass);
# the 64 x 1024 X3D tile spills 504 B under Triton 3.6 and is not offered.
_GEMV_CONFIGS = word_gemv_configs(((16, 2048, 4, 3), (32, 1024, 4, 3), (16, 1024, 4, 3),
                                   (16, 1024, 2, 3), (8, 2048, 4, 3), (32, 2048, 8, 3),
                                   (64, 1024, 8, 3))) + [
    triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "ASM": 1, "PREFETCH": 0, "X3D": 1},
                  num_warps=8, num_stages=3) for bn, bk in ((32, 2048),)] + [
    # PK=1 (M = 1, bf16 x): packed fp16x2 math on the codes (see _pk_loop). A thread holds one
    # segment of 32 codes of 8 rows on the first two tiles, of 16 rows on the last four: fewer
    # instructions a code (its x work serves more rows), more registers (bench.gpucheck.sass);
    # PIPE=3 on three of them: the next step's words copied to shared memory meanwhile
    triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "ASM": 1, "PREFETCH": 0, "PK": 1, "PIPE": pp},
                  num_warps=nw, num_stages=3)
    for bn, bk, nw, pp in ((32, 1024, 4, 0), (16, 1024, 2, 0), (64, 1024, 4, 0),
                           (32, 2048, 4, 0), (32, 1024, 2, 0), (16, 2048, 2, 0),
                           (32, 2048, 4, 3), (32, 1024, 4, 3), (16, 1024, 2, 3))]
# M > 4: tl.dot over one group a step (BLOCK_K and PREFETCH unused), in both orientations
# (SWAP), the codes converted in PTX; the Triton conversion kept for one tile. The 2-warp
# 64-row tiles (HMMA) spend 0.11 warp instructions a code against 0.17-0.18 for the 4-warp
# SWAP=1 one (HGMMA), at the same 6 CTAs an SM (results/sass-sm90-dot.txt).
_DOT_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_K": 256, "ASM": asm, "PREFETCH": 0, "SWAP": sw},
                  num_warps=nw, num_stages=ns)
    for bn, sw, nw, ns, asm in ((64, 1, 4, 3, 1), (128, 1, 4, 3, 1), (128, 1, 8, 3, 1),
                                (64, 0, 4, 3, 1), (128, 0, 4, 3, 1), (32, 0, 4, 3, 1),
                                (64, 1, 4, 3, 0), (64, 0, 2, 3, 1), (64, 1, 2, 3, 1))
]
# Above M = 1: at most 32 words a thread at M = 2 and 16 at M = 3-4 (larger tiles spill there)
_ALL_CONFIGS, configs_for, _paths_prune = two_paths(_GEMV_CONFIGS, _DOT_CONFIGS,
                                                    batched=(8, {2: 32, 4: 16}))


def _prune(configs: list, nargs: dict, **kw) -> list:
    """The two paths' prune, PK configs only where they run as such (M = 1, bf16 x: elsewhere
    they would time their PK=0 twin again) on a GPU whose ptxas takes them (pk_compiles), and
    no 2-warp tl.dot tile with fp32 x, whose fp32 codes spill there (6-17 KB at G = 256,
    `--compile-all`)."""
    x = nargs["x_ptr"]
    pk = kw.get("BLOCK_M") == 1 and x.dtype == torch.bfloat16 and pk_compiles(x)
    fp32 = x.dtype == torch.float32
    return [c for c in _paths_prune(configs, nargs, **kw) if (pk or not c.kwargs.get("PK"))
            and not (fp32 and kw.get("USE_DOT") and c.num_warps < 4)]


@triton.jit
def _code(words, i: tl.constexpr):
    """Code i (bits 4i..4i+3) of each word as the float 1 + q/128: moved to bits 16-19 of
    1.0f's pattern, whose bit 23 (0x80 of byte 2) is the exponent's and stays set."""
    if i <= 4:
        m = (words << (16 - 4 * i)) & 0xF0000
    else:
        m = (words >> (4 * i - 16)) & 0xF0000
    return (m | 0x3F800000).to(tl.float32, bitcast=True)


@triton.jit
def _codes_asm(words):
    """All 8 codes of each word as floats 1 + q/128, in PTX: the even and the odd nibbles
    masked, each OR-ed with 0x80 (3 ops a word), then one byte permute a code places it in
    bits 16-23 under 0x3F (1.0f's top byte). GPU only: the interpreter runs no PTX."""
    return tl.inline_asm_elementwise(
        asm="""{
        .reg .b32 m, o, top, lo, hi;
        mov.b32 m, 0x0F0F0F0F;
        mov.b32 o, 0x80808080;
        mov.b32 top, 0x3F000000;
        lop3.b32 lo, $8, m, o, 0xEA;
        shr.b32 hi, $8, 4;
        lop3.b32 hi, hi, m, o, 0xEA;
        prmt.b32 $0, lo, top, 0x7044;
        prmt.b32 $1, hi, top, 0x7044;
        prmt.b32 $2, lo, top, 0x7144;
        prmt.b32 $3, hi, top, 0x7144;
        prmt.b32 $4, lo, top, 0x7244;
        prmt.b32 $5, hi, top, 0x7244;
        prmt.b32 $6, lo, top, 0x7344;
        prmt.b32 $7, hi, top, 0x7344;
        }""",
        constraints="=r,=r,=r,=r,=r,=r,=r,=r,r",
        args=[words], dtype=(tl.uint32,) * 8, is_pure=True, pack=1)


@triton.jit
def _codes(words, ASM: tl.constexpr):
    """The 8 codes of each word as floats 1 + q/128, in PTX (ASM) or in Triton."""
    if ASM:
        c = _codes_asm(words)
        return (c[0].to(tl.float32, bitcast=True), c[1].to(tl.float32, bitcast=True),
                c[2].to(tl.float32, bitcast=True), c[3].to(tl.float32, bitcast=True),
                c[4].to(tl.float32, bitcast=True), c[5].to(tl.float32, bitcast=True),
                c[6].to(tl.float32, bitcast=True), c[7].to(tl.float32, bitcast=True))
    else:
        return (_code(words, 0), _code(words, 1), _code(words, 2), _code(words, 3),
                _code(words, 4), _code(words, 5), _code(words, 6), _code(words, 7))


@triton.jit
def _split8(x8):
    """x[..., 8] (the x of each word's 8 codes) as 8 tensors x[..., i], by halving the last
    dimension three times (evens/odds, then 4 apart, then 2 apart): registers only."""
    ev, od = tl.split(tl.reshape(x8, x8.shape[:-1] + [4, 2]))
    e04, e26 = tl.split(tl.reshape(ev, ev.shape[:-1] + [2, 2]))
    o15, o37 = tl.split(tl.reshape(od, od.shape[:-1] + [2, 2]))
    x0, x4 = tl.split(e04)
    x2, x6 = tl.split(e26)
    x1, x5 = tl.split(o15)
    x3, x7 = tl.split(o37)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _dot_codes_asm(b, FP16: tl.constexpr):
    """The even and odd codes of each byte as 1 + q/128 in bf16 (0x3F80 | q) or fp16
    (0x3C00 | q << 3), four bytes at a time in PTX: the low and the high nibbles masked
    into place (3 ops; fp16 4), then one byte permute per pair of codes puts each under its
    high byte. GPU only: the interpreter runs no PTX."""
    if FP16:
        return tl.inline_asm_elementwise(
            asm="""{
            .reg .b32 m, top, lo, hi;
            mov.b32 m, 0x78787878;
            mov.b32 top, 0x3C3C3C3C;
            shl.b32 lo, $4, 3;
            and.b32 lo, lo, m;
            shr.b32 hi, $4, 1;
            and.b32 hi, hi, m;
            prmt.b32 $0, lo, top, 0x5140;
            prmt.b32 $1, lo, top, 0x7362;
            prmt.b32 $2, hi, top, 0x5140;
            prmt.b32 $3, hi, top, 0x7362;
            }""",
            constraints="=r,=r,=r,=r,r", args=[b], dtype=(tl.float16, tl.float16),
            is_pure=True, pack=4)
    else:
        return tl.inline_asm_elementwise(
            asm="""{
            .reg .b32 m, o, top, lo, hi;
            mov.b32 m, 0x0F0F0F0F;
            mov.b32 o, 0x80808080;
            mov.b32 top, 0x3F3F3F3F;
            lop3.b32 lo, $4, m, o, 0xEA;
            shr.b32 hi, $4, 4;
            lop3.b32 hi, hi, m, o, 0xEA;
            prmt.b32 $0, lo, top, 0x5140;
            prmt.b32 $1, lo, top, 0x7362;
            prmt.b32 $2, hi, top, 0x5140;
            prmt.b32 $3, hi, top, 0x7362;
            }""",
            constraints="=r,=r,=r,=r,r", args=[b], dtype=(tl.bfloat16, tl.bfloat16),
            is_pure=True, pack=4)


@triton.jit
def _dot_code(nib, dtype: tl.constexpr):
    """A code (uint8 0..15) as 1 + q/128 in `dtype`, its bits set directly (Triton's twin
    of the PTX above; fp32 for the IEEE path)."""
    if dtype == tl.float32:
        return ((nib.to(tl.uint32) << 16) | 0x3F800000).to(tl.float32, bitcast=True)
    elif dtype == tl.float16:
        return ((nib.to(tl.uint16) << 3) | 0x3C00).to(tl.float16, bitcast=True)
    else:
        return (nib.to(tl.uint16) | 0x3F80).to(tl.bfloat16, bitcast=True)


@triton.jit
def _dot_codes(b, dtype: tl.constexpr, ASM: tl.constexpr):
    """Bytes of codes -> (even-k codes, odd-k codes) as 1 + q/128 in x's dtype."""
    if ASM and dtype != tl.float32:
        return _dot_codes_asm(b, dtype == tl.float16)
    return _dot_code(b & 0xF, dtype), _dot_code(b >> 4, dtype)


# --- PK=1 (M = 1, bf16 x): packed fp16x2 arithmetic on the codes ------------------------------
# A warp's lanes take consecutive segments of 32 codes (4 words of a row, one 16-byte load), its
# warps and each thread's registers the rows: a thread holds one segment of several rows.
# A word's 8 codes become four fp16x2 pairs of subnormals, no bias: w & 0x000F000F is
# (q0, q4) 2^-24, w & 0x00F000F0 is (q1, q5) 2^-20, and the same masks on w >> 8 give (q2, q6)
# and (q3, q7): 5 instructions a word. The segment's x, scaled by a power of two 2^k (the odd
# codes' x by 2^(k-4), for their extra 16) and rounded to fp16 (exact down to 2^-27 of the
# segment's largest |x|: bf16's 8 bits fit fp16's 11), makes each product x q 2^(k-24) a normal
# fp16 number from the largest x down: one fma.rn.f16x2 per two codes, an fp16 chain
# along the row's segment; its two halves added, it goes to fp32 once, where s (2^(24-k) t - z X)
# is added in. The x side (k, the pairs, X = sum x) is computed once per segment and thread
# and serves all the thread's rows. fp16 x keeps the fp32 loop: the fp16 chain's error there
# came to 1.7-2.0e-3 on Llama-like rows, at fp16's 2e-3 tolerance (docs/kernels.md).

# The PK step's PTX needs sm_90: mul.rn.bf16x2 is Hopper's and max.xorsign.abs.bf16x2 sm_86's
# (PTX ISA), and ptxas refuses both for an A100 (sm_80) or a T4. Below it the tuners leave the PK
# configs out rather than compile each one into a ptxas error at every new shape.
PK_MIN_CAPABILITY = (9, 0)


def pk_compiles(x: torch.Tensor) -> bool:
    """Whether the PK configs' PTX compiles for x's device: an NVIDIA GPU of compute capability
    9.0 or later, or no GPU at all (the interpreter runs the PK step's Triton twin). (A ROCm
    build has no PK configs: triton_common.ptx_free.)"""
    return x.device.type != "cuda" or \
        PTX and torch.cuda.get_device_capability(x.device) >= PK_MIN_CAPABILITY


def _pk_x_ptx(load: bool) -> str:
    """PTX of a segment's x side. In: 16 x words (two bf16 each, x0..x31 in order) in $18-$33,
    or (load) the segment's 16-byte aligned address in $18. Out: $0-$15 the fp16x2 pairs of
    the codes' pairs (word j: (x0, x4) 2^k, (x1, x5) 2^(k-4), (x2, x6) 2^k, (x3, x7) 2^(k-4)),
    $16 -X (X = the sum of the 32 x) and $17 u = 2^(24-k), both fp32.

    k = 137 - e puts the largest |x| in [2^10, 2^11) (e: its bf16 exponent field, clamped to
    [11, 240] so that 2^k, 2^-k and u are normal): the fp16 products and their sums stay far
    from overflow (at most 16 * 15 * 2^11 * 2^-24 a chain) and the largest far above fp16's
    subnormals; x scaled by a power of two is exact, and its 8 bits fit fp16's 11 (down to
    2^-27 of the largest |x|, where fp16's subnormals start to round)."""
    a = [f"a{i}" if load else f"${18 + i}" for i in range(16)]
    L = ["{", ".reg .b32 m<15>, t, lo, hi, mx, sc, ik, b<16>, f<32>, xe, xo;"]
    if load:
        L += [".reg .b32 a<16>;"]
        L += [f"ld.global.nc.v4.u32 {{a{4 * j}, a{4 * j + 1}, a{4 * j + 2}, a{4 * j + 3}}}, "
              f"[$18+{16 * j}];" for j in range(4)]
    # the largest |x|: 15 packed max-of-magnitudes, then the larger half's exponent field
    mx_op = "max.xorsign.abs.bf16x2"
    L += [f"{mx_op} m{i}, {a[2 * i]}, {a[2 * i + 1]};" for i in range(8)]
    L += [f"{mx_op} m{8 + i}, m{2 * i}, m{2 * i + 1};" for i in range(4)]
    L += [f"{mx_op} m{12 + i}, m{8 + 2 * i}, m{9 + 2 * i};" for i in range(2)]
    L += [f"{mx_op} m0, m12, m13;",
          "and.b32 t, m0, 0x7F807F80;", "shr.u32 hi, t, 16;", "and.b32 lo, t, 0xFFFF;",
          "max.u32 mx, lo, hi;", "max.u32 mx, mx, 0x580;", "min.u32 mx, mx, 0x7800;",
          # with mx = e << 7: bf16x2 (2^k, 2^(k-4)), fp32 2^-k and u = 2^(24-k)
          "mad.lo.u32 sc, mx, 0xFFFEFFFF, 0x82008400;",
          "mad.lo.u32 ik, mx, 0x10000, 0x7B000000;",  # -2^-k
          "mad.lo.u32 $17, mx, 0x10000, 0x07000000;"]
    L += [f"mul.rn.bf16x2 b{i}, {a[i]}, sc;" for i in range(16)]  # exact: powers of two
    for j in range(4):  # each scaled x as fp32 (its bf16 bits on top), two a pair to fp16x2
        b0, b1, b2, b3 = (f"b{4 * j + i}" for i in range(4))
        f = [f"f{8 * j + i}" for i in range(8)]
        L += [f"shl.b32 {f[0]}, {b0}, 16;", f"and.b32 {f[1]}, {b0}, 0xFFFF0000;",
              f"shl.b32 {f[2]}, {b1}, 16;", f"and.b32 {f[3]}, {b1}, 0xFFFF0000;",
              f"shl.b32 {f[4]}, {b2}, 16;", f"and.b32 {f[5]}, {b2}, 0xFFFF0000;",
              f"shl.b32 {f[6]}, {b3}, 16;", f"and.b32 {f[7]}, {b3}, 0xFFFF0000;",
              f"cvt.rn.f16x2.f32 ${4 * j}, {f[4]}, {f[0]};",
              f"cvt.rn.f16x2.f32 ${4 * j + 1}, {f[5]}, {f[1]};",
              f"cvt.rn.f16x2.f32 ${4 * j + 2}, {f[6]}, {f[2]};",
              f"cvt.rn.f16x2.f32 ${4 * j + 3}, {f[7]}, {f[3]};"]
    # X in fp32 from the exact scaled values: the even x (x 2^k) and the odd (x 2^(k-4))
    # summed apart by pairs, then (even + 16 odd) (-2^-k)
    for name, idx in (("xe", range(0, 32, 2)), ("xo", range(1, 32, 2))):
        v = [f"f{i}" for i in idx]
        while len(v) > 1:
            nxt = []
            for i in range(0, len(v), 2):
                L += [f"add.f32 {v[i]}, {v[i]}, {v[i + 1]};"]
                nxt.append(v[i])
            v = nxt
        L += [f"mov.b32 {name}, {v[0]};"]
    L += ["fma.rn.f32 xe, xo, 0f41800000, xe;", "mul.f32 $16, xe, ik;", "}"]
    return "\n".join(L)


def _pk_dot_ptx() -> str:
    """PTX of one row's segment: its 4 words in $1-$4, _pk_x_ptx's 16 pairs in $5-$20, its -X
    and u in $21-$22, the accumulator in $23; the segment's scale and zero are loaded here,
    element $24 of the bf16 arrays at $25 and $26: $0 = acc + s (u t - z X), t the sum of the
    32 products x q 2^(k-24). Per word 5 instructions make the four code pairs and 4
    fma.rn.f16x2 add them into one fp16x2 chain, whose halves are added in fp16, then to fp32.
    (Scale and zero are loaded here, not by Triton: a Triton load of them may take a layout
    with the rows along the lanes, and the whole step would follow it.)"""
    L = ["{", ".reg .b32 v, c, acc, sf, zf;", ".reg .b16 hl, hh;", ".reg .b64 sa, za;",
         ".reg .f32 fl;",
         "mad.wide.s32 sa, $24, 2, $25;", "mad.wide.s32 za, $24, 2, $26;",
         "ld.global.nc.u16 sf, [sa];", "ld.global.nc.u16 zf, [za];"]
    for j in range(4):
        w = f"${1 + j}"
        x = [f"${5 + 4 * j + i}" for i in range(4)]
        L += [f"and.b32 c, {w}, 0x000F000F;",
              f"mul.rn.f16x2 acc, c, {x[0]};" if j == 0 else f"fma.rn.f16x2 acc, c, {x[0]}, acc;",
              f"and.b32 c, {w}, 0x00F000F0;", f"fma.rn.f16x2 acc, c, {x[1]}, acc;",
              f"shr.b32 v, {w}, 8;",
              "and.b32 c, v, 0x000F000F;", f"fma.rn.f16x2 acc, c, {x[2]}, acc;",
              "and.b32 c, v, 0x00F000F0;", f"fma.rn.f16x2 acc, c, {x[3]}, acc;"]
    L += ["mov.b32 {hl, hh}, acc;", "add.rn.f16 hl, hl, hh;", "cvt.f32.f16 fl, hl;",
          "shl.b32 sf, sf, 16;", "shl.b32 zf, zf, 16;",  # bf16 -> fp32
          "mul.f32 fl, fl, $22;", "fma.rn.f32 fl, zf, $21, fl;", "fma.rn.f32 $0, sf, fl, $23;",
          "}"]
    return "\n".join(L)


_PK_X = tl.constexpr(_pk_x_ptx(load=False))
_PK_XLD = tl.constexpr(_pk_x_ptx(load=True))
_PK_DOT = tl.constexpr(_pk_dot_ptx())
_PK_X_REGS = tl.constexpr("=r," * 18 + ",".join(["r"] * 16))  # 18 out, 16 in
_PK_XLD_REGS = tl.constexpr("=r," * 18 + "l")  # 18 out, an address in
_PK_DOT_REGS = tl.constexpr("=r," + ",".join(["r"] * 24) + ",l,l")  # acc out; 4 words,
# 16 pairs, -X, u, acc, the scale's and zero's index, the two arrays in


@triton.jit
def _halves(v):
    """v[..., n] as (v[..., 0::2], v[..., 1::2])."""
    return tl.split(tl.reshape(v, v.shape[:-1] + [v.shape[-1] // 2, 2]))


@triton.jit
def _quarters(v):
    """v[..., 4] as its 4 slices v[..., i], in order."""
    e, o = _halves(v)
    v0, v2 = tl.split(e)
    v1, v3 = tl.split(o)
    return v0, v1, v2, v3


@triton.jit
def _pk_x_asm(a):
    """The x side (_pk_x_ptx) of each segment, from its 16 x words (a tuple of tensors)."""
    return tl.inline_asm_elementwise(
        asm=_PK_X, constraints=_PK_X_REGS,
        args=[a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12],
              a[13], a[14], a[15]],
        dtype=(tl.uint32,) * 18, is_pure=True, pack=1)


@triton.jit
def _pk_xld_asm(addr):
    """The x side (_pk_x_ptx) of each segment, loading its 64 bytes at addr (int64) itself:
    a Triton load of x would give each thread a quarter of a segment, and moving the rest to
    it would take shared memory and barriers every step."""
    return tl.inline_asm_elementwise(
        asm=_PK_XLD, constraints=_PK_XLD_REGS, args=[addr], dtype=(tl.uint32,) * 18,
        is_pure=True, pack=1)


@triton.jit
def _pk_dot_asm(acc, w, p, sz_idx, s_ptr, z_ptr):
    """acc + each row's segment (_pk_dot_ptx): its 4 words w (a tuple) against the pairs and
    -X, u of p; its scale and zero at sz_idx [BLOCK_N, NSEG] of s_ptr, z_ptr."""
    zero = tl.zeros_like(sz_idx).to(tl.int64)
    return tl.inline_asm_elementwise(
        asm=_PK_DOT, constraints=_PK_DOT_REGS,
        args=[w[0], w[1], w[2], w[3], p[0][None, :], p[1][None, :], p[2][None, :],
              p[3][None, :], p[4][None, :], p[5][None, :], p[6][None, :], p[7][None, :],
              p[8][None, :], p[9][None, :], p[10][None, :], p[11][None, :], p[12][None, :],
              p[13][None, :], p[14][None, :], p[15][None, :], p[16][None, :], p[17][None, :],
              acc.to(tl.uint32, bitcast=True), sz_idx, zero + s_ptr.to(tl.int64),
              zero + z_ptr.to(tl.int64)],
        dtype=tl.uint32, is_pure=True, pack=1).to(tl.float32, bitcast=True)


@triton.jit
def _half16(v):
    """fp32 -> its fp16 bits in the low half of a uint32."""
    return v.to(tl.float16).to(tl.uint16, bitcast=True).to(tl.uint32)


@triton.jit
def _pk_x_word(a0, a1, a2, a3, sc, sco):
    """Twin of one x word of _pk_x_ptx: its 4 pairs and the sum of its 8 x."""
    x0, x1 = (a0 << 16).to(tl.float32, bitcast=True), (a0 & 0xFFFF0000).to(tl.float32, bitcast=True)
    x2, x3 = (a1 << 16).to(tl.float32, bitcast=True), (a1 & 0xFFFF0000).to(tl.float32, bitcast=True)
    x4, x5 = (a2 << 16).to(tl.float32, bitcast=True), (a2 & 0xFFFF0000).to(tl.float32, bitcast=True)
    x6, x7 = (a3 << 16).to(tl.float32, bitcast=True), (a3 & 0xFFFF0000).to(tl.float32, bitcast=True)
    return (_half16(x0 * sc) | (_half16(x4 * sc) << 16),
            _half16(x1 * sco) | (_half16(x5 * sco) << 16),
            _half16(x2 * sc) | (_half16(x6 * sc) << 16),
            _half16(x3 * sco) | (_half16(x7 * sco) << 16),
            ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)))


@triton.jit
def _pk_x_twin(a):
    """Triton's twin of _pk_x_ptx (the interpreter's): the same k, pairs and u; -X summed in
    fp32 from the unscaled x."""
    mx = a[0] & 0x7F80
    for i in tl.static_range(16):
        mx = tl.maximum(mx, tl.maximum(a[i] & 0x7F80, (a[i] >> 16) & 0x7F80))
    k = 137 - (tl.minimum(tl.maximum(mx, 0x580), 0x7800) >> 7).to(tl.int32)
    sc = ((127 + k) << 23).to(tl.float32, bitcast=True)
    sco = ((123 + k) << 23).to(tl.float32, bitcast=True)
    p0, p1, p2, p3, s0 = _pk_x_word(a[0], a[1], a[2], a[3], sc, sco)
    p4, p5, p6, p7, s1 = _pk_x_word(a[4], a[5], a[6], a[7], sc, sco)
    p8, p9, p10, p11, s2 = _pk_x_word(a[8], a[9], a[10], a[11], sc, sco)
    p12, p13, p14, p15, s3 = _pk_x_word(a[12], a[13], a[14], a[15], sc, sco)
    nX = -((s0 + s1) + (s2 + s3))
    u = ((151 - k) << 23).to(tl.float32, bitcast=True)
    return (p0, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12, p13, p14, p15,
            nX.to(tl.uint32, bitcast=True), u.to(tl.uint32, bitcast=True))


@triton.jit
def _pk_dot_twin(acc, w, p, sc, zc):
    """Triton's twin of _pk_dot_ptx: the same products of codes and pairs, summed in fp32,
    and the same acc + s (u t - z X), given the scales sc and zeros zc."""
    t = tl.zeros(w[0].shape, dtype=tl.float32)
    for j in tl.static_range(4):
        for i in tl.static_range(8):
            q = ((w[j] >> (4 * i)) & 0xF).to(tl.float32)
            half = (p[4 * j + i % 4][None, :] >> (16 * (i // 4))) & 0xFFFF
            xq = half.to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
            t += q * xq * (2.0 ** -20 if i % 2 else 2.0 ** -24)
    nX = p[16][None, :].to(tl.float32, bitcast=True)
    u = p[17][None, :].to(tl.float32, bitcast=True)
    return acc + sc.to(tl.float32) * (t * u + zc.to(tl.float32) * nX)


@triton.jit
def _pk_step(acc, w_ptrs, x_ptrs, x_addr, s_ptr, z_ptr, sz, s0, s_hi, SPG: tl.constexpr,
             NSEG: tl.constexpr, MASKED: tl.constexpr, ASM: tl.constexpr):
    """One step of NSEG segments from segment s0: acc[BLOCK_N, NSEG] += each row's
    s (sum_k x q - z X) over its segment; sz: each row's and segment's index into the scales
    and zeros in a first step. MASKED: a last step that ends past s_hi: its missing segments
    read as zero words and zero x (their scales and zeros those of its last group)."""
    g0 = s0 // SPG
    if MASKED:
        s_mask = (s0 + tl.arange(0, NSEG)) < s_hi
        words = tl.load(w_ptrs + s0 * 4, mask=(s0 * 4 + tl.arange(0, 4 * NSEG) < s_hi * 4)[None, :],
                        other=0)
        sz = sz - tl.maximum(tl.arange(0, NSEG) // SPG - ((s_hi - 1) // SPG - g0), 0)[None, :]
    else:
        words = tl.load(w_ptrs + s0 * 4)
    w = _quarters(tl.reshape(words, (words.shape[0], NSEG, 4)))
    if ASM and not MASKED:
        xo = _pk_xld_asm(x_addr + s0 * 64)
    else:
        if MASKED:
            xw = (tl.load(x_ptrs[0] + s0 * 16, mask=s_mask[:, None], other=0),
                  tl.load(x_ptrs[1] + s0 * 16, mask=s_mask[:, None], other=0),
                  tl.load(x_ptrs[2] + s0 * 16, mask=s_mask[:, None], other=0),
                  tl.load(x_ptrs[3] + s0 * 16, mask=s_mask[:, None], other=0))
        else:
            xw = (tl.load(x_ptrs[0] + s0 * 16), tl.load(x_ptrs[1] + s0 * 16),
                  tl.load(x_ptrs[2] + s0 * 16), tl.load(x_ptrs[3] + s0 * 16))
        a0, a1, a2, a3 = _quarters(xw[0])
        a4, a5, a6, a7 = _quarters(xw[1])
        a8, a9, a10, a11 = _quarters(xw[2])
        a12, a13, a14, a15 = _quarters(xw[3])
        a = (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15)
        xo = _pk_x_asm(a) if ASM else _pk_x_twin(a)
    if ASM:
        return _pk_dot_asm(acc, w, xo, sz + g0, s_ptr, z_ptr)
    return _pk_dot_twin(acc, w, xo, tl.load(s_ptr + sz + g0), tl.load(z_ptr + sz + g0))


@triton.jit
def _pk_ptrs(x_ptr, q_ptr, offs_n, N, stride_qn, stride_sn, G: tl.constexpr,
             BLOCK_K: tl.constexpr):
    """A PK step's addresses for rows offs_n (those past N read row N - 1: their sums are never
    stored): (the words as [BLOCK_N, 4 NSEG], x as 4 [NSEG, 4] word grids, each segment's x
    address, each row's and segment's index into the scales and zeros)."""
    SPG: tl.constexpr = G // 32  # segments a group (BLOCK_K >= G: a step holds whole groups)
    NSEG: tl.constexpr = BLOCK_K // 32
    offs_s = tl.arange(0, NSEG)
    rows = tl.minimum(offs_n, N - 1)
    q32 = q_ptr.to(tl.pointer_type(tl.uint32))
    x32 = x_ptr.to(tl.pointer_type(tl.uint32))
    # the words contiguous along K: the lanes go along it, 16 bytes (a segment) a lane, the
    # rows to the warps and the registers
    w_ptrs = q32 + rows[:, None] * (stride_qn // 4) + tl.arange(0, 4 * NSEG)[None, :]
    x_offs = offs_s[:, None] * 16 + tl.arange(0, 4)[None, :]
    x_ptrs = (x32 + x_offs, x32 + x_offs + 4, x32 + x_offs + 8, x32 + x_offs + 12)
    x_addr = x_ptr.to(tl.int64) + offs_s.to(tl.int64) * 64
    sz = rows[:, None] * stride_sn + (offs_s // SPG)[None, :]
    return w_ptrs, x_ptrs, x_addr, sz


@triton.jit
def _pk_loop(x_ptr, q_ptr, s_ptr, z_ptr, offs_n, N, g_lo, g_hi, stride_qn, stride_sn,
             G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ASM: tl.constexpr,
             PIPE: tl.constexpr):
    """PK=1: y[offs_n] over the groups [g_lo, g_hi), BLOCK_K / 32 segments a step. No masks
    in the loop (rows past N read row N - 1); a last step that would end past the range is
    masked, outside it. PIPE: Triton's pipeliner copies the words of the next PIPE - 1 steps
    into shared memory (cp.async) while this one computes; without it ptxas spreads a step's
    word loads through the step, each first used 70-250 instructions after issue (sm_90)."""
    SPG: tl.constexpr = G // 32
    NSEG: tl.constexpr = BLOCK_K // 32
    w_ptrs, x_ptrs, x_addr, sz = _pk_ptrs(x_ptr, q_ptr, offs_n, N, stride_qn, stride_sn, G,
                                          BLOCK_K)
    s_lo = g_lo * SPG
    s_hi = g_hi * SPG
    n_full = (s_hi - s_lo) // NSEG
    acc = tl.zeros((BLOCK_N, NSEG), dtype=tl.float32)
    if PIPE:
        for i in tl.range(n_full, num_stages=PIPE):
            acc = _pk_step(acc, w_ptrs, x_ptrs, x_addr, s_ptr, z_ptr, sz, s_lo + i * NSEG, s_hi,
                           SPG, NSEG, False, ASM)
    else:
        for i in range(n_full):
            acc = _pk_step(acc, w_ptrs, x_ptrs, x_addr, s_ptr, z_ptr, sz, s_lo + i * NSEG, s_hi,
                           SPG, NSEG, False, ASM)
    s_end = s_lo + n_full * NSEG
    if s_end < s_hi:
        acc = _pk_step(acc, w_ptrs, x_ptrs, x_addr, s_ptr, z_ptr, sz, s_end, s_hi, SPG, NSEG,
                       True, ASM)
    return tl.sum(acc, axis=1)


@autotune_or_fixed(_ALL_CONFIGS, key=["M", "N", "K", "G", "SPLIT_K", "BLOCK_M"],
                   fixed={"BLOCK_N": 16, "BLOCK_K": 256, "ASM": 0, "PREFETCH": 1},
                   prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _w4_kernel(x_ptr, q_ptr, s_ptr, z_ptr, y_ptr, ws_ptr, lock_ptr, M, N, K, stride_xm, stride_qn,
               stride_sn, stride_ym, G: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
               ASM: tl.constexpr, PREFETCH: tl.constexpr, SPLIT_K: tl.constexpr,
               USE_DOT: tl.constexpr, IEEE: tl.constexpr, SWAP: tl.constexpr = 0,
               X3D: tl.constexpr = 0, PK: tl.constexpr = 0, PIPE: tl.constexpr = 0):
    # Program (n, split, m) walks its share of the K groups.
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
        # One group a step, its codes as f = 1 + q/128 in x's dtype (exact there), tl.dot over
        # them, scale and zero applied to the [M, N] product: sum_k x (q - z) s
        # = 128 s sum_k x f - (128 + z) s sum_k x. No int-to-float conversion and no
        # dequantized matrix: a code costs its share of one PTX word conversion (ASM) and a
        # tensor-core MAC. SWAP computes y.T = W x.T instead, the rows of W filling the MMA's
        # M (64 a warpgroup on Hopper) and the batch its N.
        offs_x = tl.arange(0, G)
        if SWAP:
            acc_t = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for g in range(g_lo, g_hi):
            b = tl.load(q_ptr + offs_n[:, None] * stride_qn + g * HALF + offs_j[None, :],
                        mask=n_mask[:, None], other=0)
            fe, fo = _dot_codes(b, x_ptr.dtype.element_ty, ASM)
            xg = tl.load(x_ptr + offs_m[:, None] * stride_xm + g * G + offs_x[None, :],
                         mask=m_mask[:, None], other=0.0)
            xe, xo = tl.split(tl.reshape(xg, (BLOCK_M, HALF, 2)))  # even and odd k
            xs = tl.sum(xg.to(tl.float32), axis=1)
            s = tl.load(s_ptr + offs_n * stride_sn + g, mask=n_mask, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + offs_n * stride_sn + g, mask=n_mask, other=0.0).to(tl.float32)
            a = 128.0 * s
            c = -s * (128.0 + z)
            if SWAP:
                d = _dot(fe, tl.trans(xe), None, IEEE)
                d = _dot(fo, tl.trans(xo), d, IEEE)
                acc_t += d * a[:, None] + c[:, None] * xs[None, :]
            else:
                d = _dot(xe, tl.trans(fe), None, IEEE)
                d = _dot(xo, tl.trans(fo), d, IEEE)
                acc += d * a[None, :] + xs[:, None] * c[None, :]
        if SWAP:
            acc = tl.trans(acc_t)
    elif PK and BLOCK_M == 1 and x_ptr.dtype.element_ty == tl.bfloat16:
        # two codes an instruction (the PK section above); other batches and dtypes run a PK
        # config as the fp32 loop below
        acc = _pk_loop(x_ptr, q_ptr, s_ptr, z_ptr, offs_n, N, g_lo, g_hi, stride_qn,
                       stride_sn, G, BLOCK_N, BLOCK_K, ASM, PIPE)[None, :]
    else:
        # GEMV: GROUPS groups of BLOCK_N rows a step, read as 32-bit words (8 codes each) in
        # [BLOCK_N, GROUPS, G/8] tiles. Code i of a word becomes the float f = 1 + q/128 by
        # shifting it into the mantissa of 1.0 (no int-to-float conversion, which Hopper
        # issues at 1/8 of the FMA rate). Per word, sum_i x_i (q_i - z) s
        # = 128 s p - (128 + z) s xs with p = sum_i x_i f_i and xs = sum_i x_i: one FMA a
        # code, two a word. Word sums pile up in an accumulator of plain FMAs, summed across
        # threads once, after the loop.
        GROUPS: tl.constexpr = BLOCK_K // G
        WPG: tl.constexpr = G // 8
        offs_g = tl.arange(0, GROUPS)
        offs_w = tl.arange(0, WPG)
        q32 = q_ptr.to(tl.pointer_type(tl.uint32))
        # X3D (M = 1): the accumulator has the words' own shape, so it takes their layout and
        # only x's slices change layout each step; with a leading M dimension the whole word
        # tile is moved through shared memory every step (the TTGIR shows it).
        X3: tl.constexpr = X3D and BLOCK_M == 1
        if X3:
            acc_w = tl.zeros((BLOCK_N, GROUPS, WPG), dtype=tl.float32)
        else:
            acc_w = tl.zeros((BLOCK_M, BLOCK_N, GROUPS, WPG), dtype=tl.float32)
        w_ptrs = q32 + offs_n[:, None, None] * (stride_qn // 4) + offs_w[None, None, :]
        if PREFETCH:  # the next step's words load while this step's are used
            nxt = tl.load(w_ptrs + (g_lo + offs_g)[None, :, None] * WPG,
                          mask=n_mask[:, None, None] & (g_lo + offs_g < g_hi)[None, :, None],
                          other=0)
        for g0 in range(g_lo, g_hi, GROUPS):
            gi = g0 + offs_g
            g_mask = gi < g_hi
            if PREFETCH:
                words = nxt
                nxt = tl.load(w_ptrs + (gi + GROUPS)[None, :, None] * WPG,
                              mask=n_mask[:, None, None] & (gi + GROUPS < g_hi)[None, :, None],
                              other=0)
            else:
                words = tl.load(w_ptrs + gi[None, :, None] * WPG,
                                mask=n_mask[:, None, None] & g_mask[None, :, None], other=0)
            sz_offs = offs_n[:, None] * stride_sn + gi[None, :]
            sz_mask = n_mask[:, None] & g_mask[None, :]
            s = tl.load(s_ptr + sz_offs, mask=sz_mask, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + sz_offs, mask=sz_mask, other=0.0).to(tl.float32)
            # x for the step as [BLOCK_M, GROUPS, G/8, 8] (X3: [GROUPS, G/8, 8]): 16
            # contiguous bytes per word, split into its 8 codes' x in registers
            x_words = (gi[:, None, None] * WPG + offs_w[None, :, None]) * 8 \
                + tl.arange(0, 8)[None, None, :]
            x_mask = g_mask[:, None, None]
            if X3:
                x8 = tl.load(x_ptr + x_words, mask=x_mask, other=0.0)
            else:
                x8 = tl.load(x_ptr + offs_m[:, None, None, None] * stride_xm + x_words[None],
                             mask=m_mask[:, None, None, None] & x_mask[None], other=0.0)
            x0, x1, x2, x3, x4, x5, x6, x7 = _split8(x8.to(tl.float32))
            xs = ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7))
            a = 128.0 * s
            c = -s * (128.0 + z)
            # x broadcast over the rows, the codes (X3: as they are) over the rows of x
            if X3:
                f0, f1, f2, f3, f4, f5, f6, f7 = _codes(words, ASM)
                x0, x1, x2, x3 = x0[None], x1[None], x2[None], x3[None]
                x4, x5, x6, x7 = x4[None], x5[None], x6[None], x7[None]
                xs, a, c = xs[None], a[:, :, None], c[:, :, None]
            else:
                f0, f1, f2, f3, f4, f5, f6, f7 = _codes(words[None, :, :, :], ASM)
                x0, x1, x2, x3 = x0[:, None], x1[:, None], x2[:, None], x3[:, None]
                x4, x5, x6, x7 = x4[:, None], x5[:, None], x6[:, None], x7[:, None]
                xs, a, c = xs[:, None], a[None, :, :, None], c[None, :, :, None]
            # per word: p = sum_i x_i f_i (8 FMAs a row), xs = sum_i x_i (shared by the rows)
            p = x0 * f0
            p += x1 * f1
            p += x2 * f2
            p += x3 * f3
            p += x4 * f4
            p += x5 * f5
            p += x6 * f6
            p += x7 * f7
            acc_w += a * p + c * xs
        if X3:
            acc_w = acc_w[None, :, :, :]
        acc = tl.sum(tl.sum(acc_w, axis=3), axis=2)
    y_mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :],
                 acc.to(y_ptr.dtype.element_ty), mask=y_mask)
    else:
        split_add(ws_ptr, y_ptr, lock_ptr, offs_m, offs_n, y_mask, N, stride_ym, acc)


_w4_kernel.configs_for = configs_for


@register_impl("gemv_w4", "triton_w4", backends=TRITON_BACKENDS, kind="triton")
def triton_w4(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
              group_size: int, out: torch.Tensor | None = None,
              split_k: int | None = None) -> torch.Tensor:
    """Triton INT4 GEMV: 32-bit words of codes turned into floats without conversions, scale
    and zero applied per word, per-thread sums; at M = 1 with bf16 x the tuner may also pick
    the PK configs (two codes an fp16x2 FMA); tl.dot once M > 4; split-K only where N leaves
    SMs idle."""
    M, N, K = check_w4_args(x, qweight, scales, zeros, group_size)
    check_elements("triton_w4", x, qweight)
    check_weights("triton_w4", qweight, scales, zeros)
    if qweight.data_ptr() % 4 or qweight.stride(0) % 4:
        raise ValueError("triton_w4 reads qweight as 32-bit words: its rows must start on "
                         "4-byte boundaries")
    x = x.contiguous()
    if M == 1 and x.dtype == torch.bfloat16 and x.data_ptr() % 16:
        x = x.clone()  # the PK path loads x 16 bytes at a time
    y = output("triton_w4", x, out, N)
    use_dot, block_m = batch_path(M)
    split = split_k or split_for(M, N, K, block_m, use_dot, x.device)
    split = max(1, min(split, K // group_size))
    # counters: one a (row tile, M tile), at most N row tiles of one row
    ws, locks = (split_scratch(x.device, M, N, N * triton.cdiv(M, block_m)) if split > 1
                 else (y, y))
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), split, triton.cdiv(M, block_m))
    _w4_kernel[grid](x, qweight, scales, zeros, y, ws, locks, M, N, K, x.stride(0),
                     qweight.stride(0), scales.stride(0), y.stride(0), G=group_size,
                     BLOCK_M=block_m, SPLIT_K=split, USE_DOT=use_dot,
                     IEEE=x.dtype == torch.float32, **launch_meta(_w4_kernel, use_dot))
    return y

