"""The C GEMVs and the read probe built for Arm (AArch64) and run under qemu-user.

On Arm the kernels build from their portable C (no AVX2 and F16C), which an Arm compiler
vectorizes its own way: `char` is unsigned there, a * b + c may become one fused multiply-add, and
unaligned loads behave differently. tests/kernels/test_cpu_isa.py checks the same C built for plain
x86-64; this checks what an Arm compiler makes of it, on the machines that have a cross compiler
and qemu-user (on Debian: `apt-get install gcc-aarch64-linux-gnu libgomp1-arm64-cross qemu-user`),
and is skipped elsewhere. The paged attention kernel builds its portable C there (it takes AVX2,
FMA and F16C on x86 where the target has them).
"""
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from kernels import OPS, cbuild, rel_err
from kernels.gemv import GemvShape, GemvW4Shape, GemvW8Shape
from kernels.attention.ops import PagedAttentionShape, build_inputs
from kernels.gemv import simd as gemv_simd
from kernels.probes import ProbeShape

pytestmark = pytest.mark.slow

CC, QEMU, SYSROOT = "aarch64-linux-gnu-gcc", "qemu-aarch64", Path("/usr/aarch64-linux-gnu")
KERNELS = Path(__file__).resolve().parents[2] / "kernels"
MARCHES = ["armv8-a", "armv8.2-a+fp16"]  # the first Arm 64-bit cores; half-precision arithmetic
# GCC, and Clang (macOS's compiler on Apple silicon), which takes the cross toolchain's sysroot:
# the two optimize differently where C's rules allow it (Clang reorders accesses that break the
# aliasing rules where GCC keeps their order)
COMPILERS = {"gcc": [CC], "clang": ["clang", "--target=aarch64-linux-gnu"]}

CASES = [
    ("gemv_bf16", GemvShape(1, 37, 200)),
    ("gemv_bf16", GemvShape(5, 22, 1000)),
    ("gemv_w8", GemvW8Shape(1, 37, 200)),
    ("gemv_w8", GemvW8Shape(7, 16, 1000)),
    ("gemv_w8", GemvW8Shape(3, 50, 96)),
    ("gemv_w4", GemvW4Shape(1, 37, 256, 32)),
    ("gemv_w4", GemvW4Shape(5, 20, 512, 128)),
    ("gemv_w4", GemvW4Shape(1, 13, 1024, 128)),
    ("gemv_w4", GemvW4Shape(1, 10, 160, 32)),
    ("gemv_w4", GemvW4Shape(1, 8, 8192, 256)),  # two K-blocks of the tiled layout
]
# paged attention: op, sequence lengths, Hq, Hkv, D, block size
ATTENTION = [
    ("paged_attention", [100, 7, 33], 8, 2, 64, 16),
    ("paged_attention", [37, 1], 4, 4, 128, 16),
    ("paged_attention", [300], 12, 2, 32, 32),  # G = 6: a group of 4 heads and a padded one
    ("paged_attention_kv8", [100, 7, 33], 8, 2, 64, 16),
]
DT = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.int8: 3}


@pytest.fixture(scope="module", params=[(c, m) for c in COMPILERS for m in MARCHES],
                ids=lambda p: f"{p[0]}-{p[1]}")
def driver(request, tmp_path_factory) -> list[str]:
    """The kernels built for Arm as cbuild.py builds them (its flags, the param's compiler and
    -march), the driver linked against them: the command line that runs it under qemu."""
    compiler, march = request.param
    cc = COMPILERS[compiler]
    if not (shutil.which(CC) and shutil.which(QEMU) and SYSROOT.is_dir()):
        pytest.skip(f"needs {CC} and {QEMU} with an AArch64 sysroot in {SYSROOT}")
    if not shutil.which(cc[0]):
        pytest.skip(f"no {cc[0]}")
    d = tmp_path_factory.mktemp(f"{compiler}-{march.replace('+', '_')}")
    fl = cbuild.flags(march)
    if subprocess.run([*cc, "-fopenmp", "-x", "c", "-", "-o", str(d / "omp.so"), "-shared"],
                      input=b"int f(void){return 0;}", capture_output=True).returncode:
        fl.remove("-fopenmp")  # no Arm OpenMP runtime: single-threaded, as cbuild.py builds then
    libs = []
    for name in ("gemv", "probes", "attention"):
        src = KERNELS / name / "simd.c"
        r = subprocess.run([*cc, *fl, f"-I{src.parent}", str(src), "-o", str(d / f"lib{name}.so"),
                            "-lm"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr  # a build that fails is a fault in the C
        libs.append(f"-l{name}")
    exe, omp = d / "driver", [f for f in fl if f == "-fopenmp"]
    r = subprocess.run([*cc, "-O2", str(Path(__file__).with_name("arm_driver.c")), "-o", str(exe),
                        f"-L{d}", *libs, f"-Wl,-rpath,{d}", *omp], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return [QEMU, "-L", str(SYSROOT), str(exe)]


def run(driver: list[str], tmp_path: Path, fn: str, dtype: torch.dtype, dims: tuple, tiled: int,
        nthreads: int, *tensors: torch.Tensor) -> torch.Tensor:
    """One kernel call on the Arm build: its fp32 output."""
    files = []
    for i, t in enumerate(tensors):
        files.append(tmp_path / f"{i}.bin")
        files[-1].write_bytes(t.contiguous().view(torch.uint8).numpy().tobytes())
    r = subprocess.run([*driver, fn, str(DT[dtype]), *map(str, dims), str(tiled), str(nthreads),
                        *map(str, files)], capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return torch.frombuffer(bytearray(r.stdout), dtype=torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gemvs_built_for_arm(driver, tmp_path, dtype):
    """Every GEMV on one and two threads, INT4 in both layouts, against the float64 reference
    (the driver fills the output with NaN first)."""
    for op_name, shape in CASES:
        op = OPS[op_name]
        args = op.make_inputs(shape, dtype, "cpu", 3)
        ref = op.reference(*args)
        M, K = args[0].shape
        N = args[1].shape[0]
        for nthreads in (1, 2):
            for tiled in ((0, 1) if op_name == "gemv_w4" and K % 64 == 0 else (0,)):
                if op_name == "gemv_w4":
                    x, q, s, z, G = args
                    q = gemv_simd.tile_int4_rows(q) if tiled else q
                    y = run(driver, tmp_path, op_name, dtype, (M, K, N, G), tiled, nthreads,
                            x, q, s, z)
                else:
                    y = run(driver, tmp_path, op_name, dtype, (M, K, N, 0), 0, nthreads, *args)
                err = rel_err(y.view(M, N), ref)
                assert err <= op.tol(dtype), (op_name, shape, dtype, nthreads, tiled, err)


def test_read_probe_built_for_arm(driver, tmp_path):
    op = OPS["read"]
    (src,) = op.make_inputs(ProbeShape(N=100_003), torch.float32, "cpu", 0)
    for nthreads in (1, 2):
        y = run(driver, tmp_path, "read_sum", torch.float32, (1, 0, 1, 0), 0, nthreads, src)
        assert rel_err(y.view(()), op.reference(src)) <= op.tol(torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_paged_attention_built_for_arm(driver, tmp_path, dtype):
    """The portable attention C on one thread in one split a sequence and on two threads in
    three (so the merge runs), against the float64 reference; the output in q's dtype, as the
    impl asks for it (the driver fills it with NaN first)."""
    for op_name, lens, Hq, Hkv, D, BS in ATTENTION:
        op = OPS[op_name]
        shape = PagedAttentionShape(B=len(lens), Hq=Hq, Hkv=Hkv, D=D, context=max(lens) + 5,
                                    block_size=BS)
        args = build_inputs(shape, dtype, "cpu", 4, seq_lens=lens,
                            kv8=op_name.endswith("kv8"))
        ref = op.reference(*args)
        q, k, v, *scales, table, seq_lens, scale = args
        MB = table.shape[1]
        for nthreads, S in ((1, 1), (2, 3)):
            split = -(-(-(-MB * BS // S)) // BS) * BS  # tokens a split, whole blocks
            dims = (DT[q.dtype], DT[k.dtype], len(lens), Hq, Hkv, D, BS, MB,
                    -(-MB * BS // split), split, repr(float(scale)), nthreads)
            files = []
            for i, t in enumerate((q, k, v, table, seq_lens, *scales)):
                files.append(tmp_path / f"a{i}.bin")
                files[-1].write_bytes(t.contiguous().view(torch.uint8).numpy().tobytes())
            r = subprocess.run([*driver, "paged_attention", *map(str, dims), *map(str, files)],
                               capture_output=True, timeout=300)
            assert r.returncode == 0, r.stderr.decode(errors="replace")
            y = torch.frombuffer(bytearray(r.stdout), dtype=q.dtype).view(q.shape)
            err = rel_err(y, ref)
            assert err <= op.tol(dtype), (op_name, lens, dtype, nthreads, S, err)
