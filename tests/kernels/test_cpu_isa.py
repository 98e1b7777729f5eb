"""The C kernels built for each x86-64 level this CPU can run, checked against the reference.

`-march=native` gives an AVX2 binary on one CPU and an AVX-512 one on another (the compiler
vectorizes the same C differently): both must be correct wherever either is built. An AVX-512 CPU
checks both builds here; an AVX2-only CPU checks the ones it can run. The baseline level (plain
x86-64) builds every kernel's portable C, what a CPU without AVX2, FMA and F16C runs and what an
Arm build compiles (tests/kernels/test_cpu_arm.py runs that one under qemu where a cross compiler
is installed).
"""
import os
import platform
import shlex
import shutil
import subprocess

import pytest
import torch

import kernels
from kernels import OPS
from kernels.attention import simd as attention_simd
from kernels.gemv import simd as gemv_simd
from kernels.probes import simd as probes_simd
from kernels.gemv import GemvShape
from kernels.gemv import GemvW4Shape
from kernels.gemv import GemvW8Shape
from kernels.attention.ops import PagedAttentionShape
from tests import helpers

pytestmark = pytest.mark.slow  # every C library compiled again for each level

# cpuinfo flags each level adds to the one before it (gcc's -march=x86-64, -v3, -v4)
LEVELS = {
    "x86-64": (),
    "x86-64-v3": ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "xsave"),
    "x86-64-v4": ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"),
}

CASES = [
    ("gemv_bf16", "simd_c", GemvShape(1, 37, 200)),
    ("gemv_bf16", "simd_c", GemvShape(5, 22, 1000)),
    ("gemv_w8", "simd_c", GemvW8Shape(1, 37, 200)),
    ("gemv_w8", "simd_c", GemvW8Shape(7, 16, 1000)),
    ("gemv_w8", "simd_c", GemvW8Shape(3, 50, 96)),
    ("gemv_w8", "simd_c", GemvW8Shape(1, 9, 248)),  # M = 1, K: zmm loop, ymm step, scalar tail
    ("gemv_w4", "simd_c", GemvW4Shape(1, 37, 256, 32)),
    ("gemv_w4", "simd_c", GemvW4Shape(5, 20, 512, 128)),
    ("gemv_w4", "simd_c_tiled", GemvW4Shape(1, 13, 1024, 128)),
    ("gemv_w4", "simd_c_tiled", GemvW4Shape(1, 10, 160, 32)),
    ("gemv_w4", "simd_c_tiled", GemvW4Shape(5, 20, 512, 128)),  # M > 1: 4 or 2 rows of x a pass
    ("gemv_w4", "simd_c_tiled", GemvW4Shape(3, 10, 8192, 64)),  # M > 1 over two K-blocks
    ("paged_attention", "simd_c", PagedAttentionShape(B=3, Hq=8, Hkv=2, D=64, context=100)),
    ("paged_attention", "simd_c", PagedAttentionShape(B=2, Hq=4, Hkv=4, D=128, context=37)),
    ("paged_attention_kv8", "simd_c", PagedAttentionShape(B=3, Hq=8, Hkv=2, D=64, context=100)),
]


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


CLANG = "clang:native"  # Clang's build for this CPU, beside gcc's levels


@pytest.fixture(scope="module", params=[*LEVELS, CLANG])
def built(request, tmp_path_factory):
    """Every C library of kernels/ built for one x86-64 level (skipped where this CPU cannot run
    it or the compiler does not know the level), or by Clang for this CPU (macOS's compiler,
    which reads C's aliasing rules more strictly than GCC): {module: library}."""
    march = request.param
    mp = pytest.MonkeyPatch()
    if march == CLANG:
        if platform.machine() not in ("x86_64", "AMD64") or not shutil.which("clang"):
            pytest.skip("needs an x86-64 CPU and clang")
        mp.setenv("CC", "clang")
        mp.setenv("DECODEWALL_CACHE", str(tmp_path_factory.mktemp("clang")))
        try:
            libs = {mod: mod.library.for_march("native") for mod in
                    (gemv_simd, attention_simd, probes_simd)}
            for lib in libs.values():
                lib()  # a build that fails here is a fault in the C, not a skip
        finally:
            mp.undo()
        return march, libs
    if platform.machine() not in ("x86_64", "AMD64") or not shutil.which("cc"):
        pytest.skip("needs an x86-64 CPU and a C compiler")
    need = [f for lv in list(LEVELS)[:list(LEVELS).index(march) + 1] for f in LEVELS[lv]]
    missing = [f for f in need if f not in cpu_flags()]
    if missing:
        pytest.skip(f"this CPU cannot run {march} code (lacks {', '.join(missing)})")
    knows = subprocess.run(["cc", f"-march={march}", "-x", "c", "-c", "-o", os.devnull,
                            os.devnull], capture_output=True, text=True)
    if knows.returncode:  # an older compiler (gcc < 11 has no levels): no build to check
        pytest.skip(f"this compiler does not take -march={march}")
    mp.setenv("DECODEWALL_CACHE", str(tmp_path_factory.mktemp(march)))
    libs = {}
    try:
        for mod in (gemv_simd, attention_simd, probes_simd):
            libs[mod] = mod.library.for_march(march)
            libs[mod]()  # a build that fails here is a fault in the C, not a skip
    finally:
        mp.undo()
    return march, libs


@pytest.fixture
def level(built, monkeypatch):
    march, libs = built
    for mod, lib in libs.items():
        monkeypatch.setattr(mod, "library", lib)
    return march


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_c_kernels_at_each_level(level, dtype):
    for op_name, impl, shape in CASES:
        if dtype not in OPS[op_name].impls[impl].dtypes:
            continue
        helpers.check_impl(OPS[op_name], impl, shape, dtype, seed=3)


def test_c_read_probe_at_each_level(level):
    from kernels.probes import ProbeShape
    helpers.check_impl(OPS["read"], "simd_c", ProbeShape(N=100_003), torch.float32)


def test_the_impls_call_the_level_build(level):
    """The rebuilt library is the one the impls call, not the cached native build."""
    march, folder = ("native", "clang") if level == CLANG else (level, level)
    assert gemv_simd.library.march == march and folder in gemv_simd.library()._name


def test_tiled_int4_loop_width_follows_the_level(level):
    """The x86-64-v4 build takes the zmm tile forms of w4_asm.h, the v3 build the ymm ones, the
    baseline the portable C (0): the level's flags reach the #if that picks them."""
    if level == CLANG:
        pytest.skip("Clang's build is for this CPU, not a level")
    assert gemv_simd.tile_bits() == {"x86-64": 0, "x86-64-v3": 256, "x86-64-v4": 512}[level]


def test_bf16_attention_dot_loops_follow_the_target(level):
    """No x86-64 level turns on AVX512_BF16, so their attention builds widen bf16 and use FMAs
    (checked against the reference above); -march=native takes VDPBF16PS exactly where the
    compiler's native target defines __AVX512BF16__: the #if that picks them sees the flag."""
    from kernels import cbuild
    if level == CLANG:
        pytest.skip("Clang's build is for this CPU, not a level")
    assert attention_simd.bf16_dot() is False
    native = attention_simd.library.for_march("native")
    cc = tuple(shlex.split(os.environ.get("CC") or "")) or (shutil.which("cc"),)  # as the build
    macros = cbuild._target(cc, "-march=native")
    assert bool(native().bf16_dot_loops()) == ("#define __AVX512BF16__ 1" in macros
                                               and "#define __AVX512F__ 1" in macros)


def test_int4_dot_loop_follows_the_target(level):
    """No x86-64 level turns on AVX512_BF16, so their GEMV builds have no VDPBF16PS INT4 loop (and
    refuse unpack="dot"); -march=native has it exactly where the compiler's native target defines
    __AVX512BF16__, __AVX512BW__ and __AVX512F__."""
    from kernels import cbuild
    if level == CLANG:
        pytest.skip("Clang's build is for this CPU, not a level")
    assert gemv_simd.dot_unpack() is False
    x, qw, sc, z, G = OPS["gemv_w4"].make_inputs(GemvW4Shape(1, 4, 64, 32), torch.bfloat16,
                                                 "cpu", 11)
    with pytest.raises(NotImplementedError, match="unpack='dot' takes bf16 x"):
        gemv_simd.gemv_w4(x, gemv_simd.tile_int4_rows(qw), sc, z, G, tiled=True, unpack="dot")
    native = gemv_simd.library.for_march("native")
    cc = tuple(shlex.split(os.environ.get("CC") or "")) or (shutil.which("cc"),)  # as the build
    macros = cbuild._target(cc, "-march=native")
    assert bool(native().w4_dot_unpack()) == all(
        f"#define __{m}__ 1" in macros for m in ("AVX512BF16", "AVX512BW", "AVX512F"))


@pytest.mark.parametrize("unpack", ["cvt", "denormal"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_tiled_int4_unpacks_at_each_level(level, unpack, dtype):
    """Both M = 1 unpacks, forced, through the tiled loop at each level: two K-blocks, pairs of full
    blocks of tiles (two streams), an odd and a short block, rows past the last tile, every group
    size's span (G = 32 takes two groups a vector). The baseline build has no denormal unpack and
    says so."""
    kbk = 8 * gemv_simd.W4_KBLOCK_WORDS
    op = OPS["gemv_w4"]
    if level == "x86-64" and unpack == "denormal":
        x, qw, sc, z, G = op.make_inputs(GemvW4Shape(1, 4, 64, 32), dtype, "cpu", 11)
        with pytest.raises(NotImplementedError, match="this build has no denormal unpack"):
            gemv_simd.gemv_w4(x, gemv_simd.tile_int4_rows(qw), sc, z, G, tiled=True,
                              unpack=unpack)
        return
    for shape in (GemvW4Shape(1, 406, 2 * kbk, 32), GemvW4Shape(1, 262, 2 * kbk, 64),
                  GemvW4Shape(1, 134, kbk, 128), GemvW4Shape(1, 406, 2 * kbk, 256)):
        x, qw, sc, z, G = op.make_inputs(shape, dtype, "cpu", 11)
        ref = op.reference(x, qw, sc, z, G)
        out = torch.full((1, shape.N), float("nan"), dtype=dtype)
        gemv_simd.gemv_w4(x, gemv_simd.tile_int4_rows(qw), sc, z, G, out=out, tiled=True,
                          unpack=unpack)
        assert kernels.rel_err(out, ref) < op.tol(dtype), (shape, unpack, dtype)


def test_portable_attention_fp16_conversions_match_numpy(tmp_path):
    """The attention kernel's portable C converts fp16 itself (a target without F16C; Arm uses
    its own conversions): every fp16 value to fp32, and to fp16 every fp32 that is an fp16 value,
    a tie between two of them or one fp32 step either side of a tie (round to nearest even), the
    overflow edge and NaN, against numpy's. Random rows never reach subnormals, ties or Inf."""
    import numpy as np
    if platform.machine() not in ("x86_64", "AMD64") or not shutil.which("cc"):
        pytest.skip("needs an x86-64 CPU and a C compiler")
    src = tmp_path / "conv.c"
    src.write_text(f'#include "{attention_simd.library.source}"\n#include <stdio.h>\n'
                   "int main(void) {\n"
                   "  for (uint32_t h = 0; h < 65536; h++) {\n"
                   "    const float f = f16_to_f32((uint16_t)h); fwrite(&f, 4, 1, stdout); }\n"
                   "  float f;\n"
                   "  while (fread(&f, 4, 1, stdin) == 1) {\n"
                   "    const uint16_t h = f32_to_f16(f); fwrite(&h, 2, 1, stdout); }\n"
                   "  return 0;\n}\n")
    exe = tmp_path / "conv"
    r = subprocess.run(["cc", "-O2", "-march=x86-64", str(src), "-o", str(exe), "-lm"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    halves = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    wide = halves.astype(np.float32)
    finite = np.sort(wide[np.isfinite(wide)])
    ties = ((finite[1:].astype(np.float64) + finite[:-1]) / 2).astype(np.float32)
    probes = np.concatenate([wide, ties, np.nextafter(ties, np.float32(np.inf)),
                             np.nextafter(ties, np.float32(-np.inf)),
                             np.array([65519.996, 65520.0, 7e4, 1e30, np.inf, -np.inf, np.nan,
                                       2.0 ** -25, 2.0 ** -26, 1e-30], dtype=np.float32)])
    out = subprocess.run([str(exe)], input=probes.tobytes(), capture_output=True,
                         timeout=60).stdout
    got = np.frombuffer(out[:65536 * 4], dtype=np.float32)
    nan = np.isnan(wide)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), wide[~nan].view(np.uint32))
    got = np.frombuffer(out[65536 * 4:], dtype=np.uint16).view(np.float16)
    with np.errstate(over="ignore"):
        want = probes.astype(np.float16)
    nan = np.isnan(want)
    assert len(got) == len(probes) and np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint16), want[~nan].view(np.uint16))
