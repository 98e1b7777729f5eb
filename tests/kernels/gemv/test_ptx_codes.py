"""The inline PTX that turns packed codes into floats (gemv_w4, gemv_w8 on a GPU, ASM=1) against
the Triton twins that the interpreter checks against the float64 reference (ASM=0): emulated
instruction by instruction on random words and on every byte value."""
import inspect
import random
import re

import numpy as np
import pytest

from tests import ptx_emu

pytest.importorskip("triton")


def asms_of(jit_fn) -> list[str]:
    """The asm strings of a @triton.jit function, in source order (interpreted: its source)."""
    src = getattr(jit_fn, "src", None) or inspect.getsource(jit_fn.fn)
    found = re.findall(r'asm="""(.*?)"""', src, re.S)
    assert found, "no inline asm found"
    return found


def asm_of(jit_fn) -> str:
    (asm,) = asms_of(jit_fn)
    return asm


def words():
    rnd = random.Random(0)
    every_byte = [b * 0x01010101 for b in range(256)]  # each byte value in every position
    return every_byte + [rnd.getrandbits(32) for _ in range(2000)] + [0, 0xFFFFFFFF]


def test_int4_codes_ptx_matches_its_twin():
    import kernels.gemv.triton_w4 as w4
    asm = asm_of(w4._codes_asm)
    for w in words():
        out = ptx_emu.run(asm, [w], 8)
        for i, bits in enumerate(out):
            q = (w >> (4 * i)) & 0xF
            assert bits == 0x3F800000 | (q << 16), (hex(w), i, hex(bits))  # the twin's bits
            assert ptx_emu.as_f32(bits) == 1 + q / 128


@pytest.mark.parametrize("fp16", [True, False], ids=["fp16", "bf16"])
def test_int4_dot_codes_ptx_matches_its_twin(fp16):
    """tl.dot path: 4 bytes in, even codes of bytes 0-3 in $0-$1 and odd ones in $2-$3, two
    16-bit codes a register, element i in the low half first (Triton's packing)."""
    import kernels.gemv.triton_w4 as w4
    asm = asms_of(w4._dot_codes_asm)[0 if fp16 else 1]
    assert ("0x3C3C3C3C" in asm) == fp16
    for w in words():
        out = ptx_emu.run(asm, [w], 4)
        halves = [(r >> (16 * h)) & 0xFFFF for r in out for h in (0, 1)]
        for i, bits in enumerate(halves):
            byte = (w >> (8 * (i % 4))) & 0xFF
            q = byte & 0xF if i < 4 else byte >> 4  # evens first, then odds
            twin = 0x3C00 | (q << 3) if fp16 else 0x3F80 | q
            assert bits == twin, (hex(w), i, hex(bits))
            value = (np.array([bits], np.uint16).view(np.float16)[0] if fp16
                     else ptx_emu.as_f32(bits << 16))
            assert float(value) == 1 + q / 128


def test_int8_codes_ptx_matches_its_twin():
    import kernels.gemv.triton_w8 as w8
    asm = asm_of(w8._codes_asm)
    for w in words():
        out = ptx_emu.run(asm, [w], 4)
        for i, bits in enumerate(out):
            byte = (w >> (8 * i)) & 0xFF
            q = byte - 256 if byte > 127 else byte  # the int8 code
            assert bits == 0x3F800000 | ((byte ^ 0x80) << 8), (hex(w), i, hex(bits))
            assert ptx_emu.as_f32(bits) == 1 + (q + 128) / 2**15


def test_emulator_knows_prmt_and_lop3():
    # CUDA's __byte_perm examples, and (a & b) | c as LUT 0xEA
    assert ptx_emu._prmt(0x33221100, 0x77665544, 0x3210) == 0x33221100
    assert ptx_emu._prmt(0x33221100, 0x77665544, 0x0123) == 0x00112233
    assert ptx_emu._prmt(0x000000F0, 0, 0x8880) == 0xFFFFFFF0  # sign replication
    assert ptx_emu._lop3(0xF0F0F0F0, 0xFF00FF00, 0x0000000F, 0xEA) == 0xF000F00F
