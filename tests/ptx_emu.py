"""A tiny emulator for the PTX in the GEMV kernels' inline asm (mov, lop3, shl, shr, and, xor and
prmt on .b32), so the CPU tests can check that text: the interpreter runs no PTX, and CI has no
GPU."""
from __future__ import annotations

import re

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


def run(asm: str, inputs: list[int], n_out: int) -> list[int]:
    """Run `asm` (operands $0..$(n_out-1) out, then the inputs) on one set of 32-bit inputs."""
    regs: dict[str, int] = {f"${n_out + i}": v & M32 for i, v in enumerate(inputs)}

    def val(tok: str) -> int:
        tok = tok.strip()
        if tok in regs:
            return regs[tok]
        if re.fullmatch(r"0[xX][0-9a-fA-F]+|\d+", tok):
            return int(tok, 0) & M32
        raise ValueError(f"unknown operand {tok!r} (unset register?)")

    for line in asm.split(";"):
        line = line.strip().strip("{}").strip()
        if not line or line.startswith(".reg"):
            continue
        op, _, rest = line.partition(" ")
        args = [t.strip() for t in rest.split(",")]
        if op == "mov.b32":
            regs[args[0]] = val(args[1])
        elif op == "lop3.b32":
            regs[args[0]] = _lop3(val(args[1]), val(args[2]), val(args[3]), val(args[4]))
        elif op == "shr.b32":
            regs[args[0]] = val(args[1]) >> val(args[2])
        elif op == "shl.b32":
            regs[args[0]] = (val(args[1]) << val(args[2])) & M32
        elif op == "and.b32":
            regs[args[0]] = val(args[1]) & val(args[2])
        elif op == "xor.b32":
            regs[args[0]] = val(args[1]) ^ val(args[2])
        elif op == "prmt.b32":
            regs[args[0]] = _prmt(val(args[1]), val(args[2]), val(args[3]))
        else:
            raise ValueError(f"instruction {op!r} is not emulated")
    return [regs[f"${i}"] for i in range(n_out)]


def as_f32(bits: int) -> float:
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])
