"""A tiny emulator for the PTX in the GEMV kernels' inline asm, so the CPU tests can check that
text: the interpreter runs no PTX, and CI has no GPU.

Integer and bit instructions on .b32/.u32 (mov, lop3, and, xor, shl, shr, sub, max, min, mad.lo,
mad.wide, prmt), the packed 16-bit float arithmetic of the INT4 kernel's PK path (mul/fma/add .rn
on f16x2, mul .rn on bf16x2, add .rn on f16, max.xorsign.abs on f16x2/bf16x2), its conversions
(cvt.rn.f16x2.f32, cvt.f32.f16), add/mul/fma on f32 (0f... literals too), the 16-bit halves of a
register (mov.b32 {lo, hi}, r) and ld.global(.nc) .v4.u32 and .u16 from a memory the caller
provides. Floating-point results are computed exactly (fractions) and rounded once to nearest
even in the destination format, subnormals kept, as PTX's .rn without .ftz does.
"""
from __future__ import annotations

import re
from fractions import Fraction
from typing import Callable

import numpy as np

M32 = 0xFFFFFFFF


def _lop3(a: int, b: int, c: int, lut: int) -> int:
    out = 0
    for bit in range(32):
        idx = (((a >> bit) & 1) << 2) | (((b >> bit) & 1) << 1) | ((c >> bit) & 1)
        out |= ((lut >> idx) & 1) << bit
    return out


def _prmt(a: int, b: int, sel: int) -> int:
    """prmt.b32 default mode: result byte n = byte (sel >> 4n) & 7 of {b, a} (a: 0-3, b: 4-7);
    bit 3 of a selector nibble replicates that byte's sign bit."""
    pool = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    out = 0
    for n in range(4):
        s = (sel >> (4 * n)) & 0xF
        byte = pool[s & 7]
        if s & 8:
            byte = 0xFF if byte & 0x80 else 0x00
        out |= byte << (8 * n)
    return out


# --- IEEE binary formats: bits <-> exact values, round to nearest even ------------------------

class Fmt:
    """A binary floating-point format: `man` stored mantissa bits, `exp` exponent bits."""

    def __init__(self, man: int, exp: int) -> None:
        self.man, self.exp = man, exp
        self.bias = (1 << (exp - 1)) - 1
        self.width = 1 + exp + man
        self.nan = (((1 << exp) - 1) << man) | (1 << (man - 1)) | ((1 << (man - 1)) - 1)

    def decode(self, bits: int) -> Fraction | float:
        """The value of `bits`: a Fraction, or a float for +-inf and NaN."""
        sign = -1 if (bits >> (self.width - 1)) & 1 else 1
        e = (bits >> self.man) & ((1 << self.exp) - 1)
        m = bits & ((1 << self.man) - 1)
        if e == (1 << self.exp) - 1:
            return float("nan") if m else sign * float("inf")
        if e == 0:
            return sign * Fraction(m, 1 << self.man) * Fraction(2) ** (1 - self.bias)
        return sign * (1 + Fraction(m, 1 << self.man)) * Fraction(2) ** (e - self.bias)

    def encode(self, v: Fraction | float) -> int:
        """`v` rounded to nearest even (overflow to inf, subnormals kept), as bits."""
        if isinstance(v, float):
            if v != v:
                return self.nan
            if v in (float("inf"), float("-inf")):
                return (((1 << self.exp) - 1) << self.man) | ((v < 0) << (self.width - 1))
            v = Fraction(v)
        sign = 1 if v < 0 else 0
        a = abs(v)
        if a == 0:
            return sign << (self.width - 1)
        e = a.numerator.bit_length() - a.denominator.bit_length()
        if Fraction(2) ** e > a:
            e -= 1
        e = max(e, 1 - self.bias)  # subnormals share the smallest normal exponent's quantum
        q = Fraction(2) ** (e - self.man)
        n, r = divmod(a, q)
        n = int(n)
        if r * 2 > q or (r * 2 == q and n & 1):
            n += 1
        if n >> (self.man + 1):  # rounding carried into the next binade
            n >>= 1
            e += 1
        if e > self.bias:
            return (((1 << self.exp) - 1) << self.man) | (sign << (self.width - 1))
        if n >> self.man:  # normal
            bits = ((e + self.bias) << self.man) | (n & ((1 << self.man) - 1))
        else:  # subnormal
            bits = n
        return bits | (sign << (self.width - 1))


F16, BF16, F32 = Fmt(10, 5), Fmt(7, 8), Fmt(23, 8)


def _arith(fmt: Fmt, op: str, *xs: int) -> int:
    """mul, add or fma (a * b + c) on `fmt` bits, rounded once; IEEE signed zeros."""
    vals = [fmt.decode(x) for x in xs]
    if any(isinstance(v, float) for v in vals):  # inf/NaN: IEEE semantics through floats
        f = [float(v) for v in vals]
        res = {"mul": lambda: f[0] * f[1], "add": lambda: f[0] + f[1],
               "fma": lambda: f[0] * f[1] + f[2]}[op]()
        return fmt.encode(float(res))
    neg = [bool((x >> (fmt.width - 1)) & 1) for x in xs]
    a = vals
    if op == "mul":
        exact, zero_neg = a[0] * a[1], neg[0] != neg[1]
    elif op == "add":
        exact, zero_neg = a[0] + a[1], neg[0] and neg[1] and a[0] == 0 and a[1] == 0
    else:
        prod_neg = neg[0] != neg[1]
        exact = a[0] * a[1] + a[2]
        zero_neg = a[0] * a[1] == 0 and a[2] == 0 and prod_neg and neg[2]
    if exact == 0:  # an exact zero takes its sign from the operands (x + -x is +0)
        return int(zero_neg) << (fmt.width - 1)
    return fmt.encode(exact)


def _cvt(src: Fmt, dst: Fmt, bits: int) -> int:
    """cvt.rn from `src` to `dst` bits (a zero keeps its sign)."""
    if bits & ((1 << (src.width - 1)) - 1) == 0:
        return ((bits >> (src.width - 1)) & 1) << (dst.width - 1)
    return dst.encode(src.decode(bits))


def _max_xorsign_abs(fmt: Fmt, a: int, b: int) -> int:
    """max.xorsign.abs: the larger magnitude (NaN only when both are NaN), sign = xor of the
    signs."""
    mag = (1 << (fmt.width - 1)) - 1
    va, vb = fmt.decode(a & mag), fmt.decode(b & mag)
    na, nb = va != va, vb != vb
    if na and nb:
        return fmt.nan
    pick = b & mag if na else a & mag if nb else (a & mag if va >= vb else b & mag)
    return pick | ((a ^ b) & (1 << (fmt.width - 1)))


def _lanes(op: Callable[..., int], *xs: int) -> int:
    """A 16-bit op applied to the low and the high halves of 32-bit operands."""
    lo = op(*[x & 0xFFFF for x in xs])
    hi = op(*[(x >> 16) & 0xFFFF for x in xs])
    return (lo & 0xFFFF) | ((hi & 0xFFFF) << 16)


def _operands(rest: str) -> list[str]:
    """Split an operand list at commas outside braces and brackets."""
    out, depth, cur = [], 0, ""
    for ch in rest:
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def _address(tok: str, val: Callable[[str], int]) -> int:
    """[reg] or [reg+imm]."""
    m = re.fullmatch(r"\[\s*(\S+?)\s*(?:\+\s*(\d+))?\s*\]", tok)
    return val(m.group(1)) + int(m.group(2) or 0)


def run(asm: str, inputs: list[int], n_out: int,
        load32: Callable[[int], int] | None = None) -> list[int]:
    """Run `asm` (operands $0..$(n_out-1) out, then the inputs) on one set of inputs (32-bit,
    or 64-bit addresses); `load32(address)` serves ld.global."""
    regs: dict[str, int] = {f"${n_out + i}": v for i, v in enumerate(inputs)}

    def val(tok: str) -> int:
        tok = tok.strip()
        if tok in regs:
            return regs[tok]
        if re.fullmatch(r"-?(0[xX][0-9a-fA-F]+|\d+)", tok):
            return int(tok, 0) & M32
        if re.fullmatch(r"0[fF][0-9a-fA-F]{8}", tok):  # an fp32 literal's bits
            return int(tok[2:], 16)
        raise ValueError(f"unknown operand {tok!r} (unset register?)")

    body = re.sub(r"//[^\n]*", "", asm).strip()
    if body.startswith("{") and body.endswith("}"):  # the block around the whole asm
        body = body[1:-1]
    for line in body.split(";"):
        line = line.strip()
        if not line or line.startswith(".reg"):
            continue
        op, _, rest = line.partition(" ")
        args = _operands(rest)
        d = args[0]
        if op == "mov.b32" and d.startswith("{"):  # 16-bit halves of a register, low first
            lo, hi = (t.strip() for t in d.strip("{}").split(","))
            v = val(args[1])
            regs[lo], regs[hi] = v & 0xFFFF, (v >> 16) & 0xFFFF
        elif op == "mov.b32":
            regs[d] = val(args[1])
        elif op == "lop3.b32":
            regs[d] = _lop3(val(args[1]), val(args[2]), val(args[3]), val(args[4]))
        elif op in ("shr.b32", "shr.u32"):
            regs[d] = val(args[1]) >> val(args[2])
        elif op == "shl.b32":
            regs[d] = (val(args[1]) << val(args[2])) & M32
        elif op == "and.b32":
            regs[d] = val(args[1]) & val(args[2])
        elif op == "xor.b32":
            regs[d] = val(args[1]) ^ val(args[2])
        elif op == "sub.u32":
            regs[d] = (val(args[1]) - val(args[2])) & M32
        elif op == "max.u32":
            regs[d] = max(val(args[1]), val(args[2]))
        elif op == "min.u32":
            regs[d] = min(val(args[1]), val(args[2]))
        elif op == "mad.lo.u32":
            regs[d] = (val(args[1]) * val(args[2]) + val(args[3])) & M32
        elif op == "prmt.b32":
            regs[d] = _prmt(val(args[1]), val(args[2]), val(args[3]))
        elif op in ("mul.rn.f16x2", "mul.rn.bf16x2", "add.rn.f16x2"):
            fmt = BF16 if "bf16" in op else F16
            kind = op.split(".")[0]
            regs[d] = _lanes(lambda a, b: _arith(fmt, kind, a, b), val(args[1]), val(args[2]))
        elif op == "fma.rn.f16x2":
            regs[d] = _lanes(lambda a, b, c: _arith(F16, "fma", a, b, c),
                             val(args[1]), val(args[2]), val(args[3]))
        elif op == "add.rn.f16":
            regs[d] = _arith(F16, "add", val(args[1]) & 0xFFFF, val(args[2]) & 0xFFFF)
        elif op in ("max.xorsign.abs.f16x2", "max.xorsign.abs.bf16x2"):
            fmt = BF16 if "bf16" in op else F16
            regs[d] = _lanes(lambda a, b: _max_xorsign_abs(fmt, a, b), val(args[1]), val(args[2]))
        elif op == "cvt.rn.f16x2.f32":  # a to the high half, b to the low half
            regs[d] = _cvt(F32, F16, val(args[2])) | (_cvt(F32, F16, val(args[1])) << 16)
        elif op == "cvt.f32.f16":
            regs[d] = _cvt(F16, F32, val(args[1]) & 0xFFFF)
        elif op in ("add.f32", "mul.f32"):
            regs[d] = _arith(F32, op.split(".")[0], val(args[1]), val(args[2]))
        elif op == "fma.rn.f32":
            regs[d] = _arith(F32, "fma", val(args[1]), val(args[2]), val(args[3]))
        elif op in ("mad.wide.s32", "mad.wide.u32"):  # 32 x 32 -> 64-bit, plus a 64-bit c
            a, b = val(args[1]), val(args[2])
            if op.endswith("s32"):
                a, b = (a ^ 0x80000000) - 0x80000000, (b ^ 0x80000000) - 0x80000000
            regs[d] = (a * b + val(args[3])) & 0xFFFFFFFFFFFFFFFF
        elif op in ("ld.global.nc.u16", "ld.global.u16"):  # zero-extended
            if load32 is None:
                raise ValueError("ld.global needs load32")
            addr = _address(args[1], val)
            assert addr % 2 == 0, "misaligned u16 load"
            regs[d] = (load32(addr & ~3) >> (8 * (addr & 3))) & 0xFFFF
        elif op in ("ld.global.nc.v4.u32", "ld.global.v4.u32"):
            if load32 is None:
                raise ValueError("ld.global needs load32")
            addr = _address(args[1], val)
            for i, r in enumerate(t.strip() for t in d.strip("{}").split(",")):
                regs[r] = load32(addr + 4 * i) & M32
        else:
            raise ValueError(f"instruction {op!r} is not emulated")
    return [regs[f"${i}"] for i in range(n_out)]


def as_f32(bits: int) -> float:
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])
