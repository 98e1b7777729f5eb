"""The C kernels' own tests again with the kernels built under AddressSanitizer: a read or write
past a buffer (an odd tail, a block table entry, a K that is no multiple of a vector) that the
float64 check happens not to see stops the run with ASan's report."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow  # every C library built again, its tests run instrumented

# The tests that call our C kernels (the builtins' tests are left out: PyTorch's own CPU kernels
# are not built for ASan, and some crash under it).
SELECTION = ["tests/kernels/gemv/test_w8.py", "tests/kernels/gemv/test_w4.py",
             "tests/kernels/gemv/test_bf16.py", "tests/kernels/gemv/test_simd_output.py",
             "tests/kernels/attention/test_paged_attention.py", "tests/kernels/probes",
             "-k", "simd or tiled or read_probe or c_kernel"]


def _cc_lib(cc: str, name: str) -> str | None:
    r = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True, text=True)
    path = r.stdout.strip()
    return path if r.returncode == 0 and os.path.isabs(path) and os.path.exists(path) else None


def asan_runtime() -> str | None:
    """What to preload: the compiler's ASan runtime, then its libstdc++ where it has one, or None
    where it has no ASan runtime. ASan looks up the real `__cxa_throw` as it starts; Python does
    not link libstdc++, so without it preloaded the lookup finds nothing, and the first C++
    exception thrown (Triton 3.8's libtriton throws and catches one as it is imported) stops the
    process with a CHECK failure."""
    cc = shutil.which("cc")
    if cc is None:
        return None
    asan = _cc_lib(cc, "libasan.so")
    if asan is None:
        return None
    return " ".join(p for p in (asan, _cc_lib(cc, "libstdc++.so")) if p)


def test_c_kernels_pass_their_tests_under_addresssanitizer(tmp_path):
    runtime = asan_runtime()
    if runtime is None:
        pytest.skip("no C compiler with an AddressSanitizer runtime here")
    wrapper = tmp_path / "asan-cc"
    # -O1 after the build's own -O3: ASan's usual level, and the GEMV library's many inlined loop
    # variants take minutes to instrument at -O3 on a 2-core machine (seconds at -O1)
    wrapper.write_text("#!/bin/sh\nexec cc -fsanitize=address -fno-omit-frame-pointer \"$@\" -O1\n")
    wrapper.chmod(0o755)
    # One process builds every library, and a build that fails is not tried again in it: a
    # compile cut at COMPILE_TIMEOUT_S (instrumented builds are slow on a busy machine) would
    # fail every test of its library. The plugin gives the builds the test's own time.
    (tmp_path / "asan_builds.py").write_text(
        "from kernels import cbuild\ncbuild.COMPILE_TIMEOUT_S = 900.0\n")
    cache = tmp_path / "cache"
    env = {**os.environ, "CC": str(wrapper), "DECODEWALL_CACHE": str(cache),
           "LD_PRELOAD": runtime, "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1",
           "TRITON_INTERPRET": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-p", "asan_builds", *SELECTION], capture_output=True, text=True,
                       cwd=REPO, env=env, timeout=1200)
    out = r.stdout + r.stderr
    assert "AddressSanitizer" not in out, out[-4000:]
    assert r.returncode == 0, out[-4000:]
    assert " passed" in out and "no tests ran" not in out, out[-2000:]
    built = sorted(Path(cache).rglob("*.so"))
    assert {p.name.split("_")[0] for p in built} >= {"dequant", "paged", "probes"}, built
    for lib in built:  # each library really instrumented
        syms = subprocess.run(["nm", "-D", str(lib)], capture_output=True, text=True).stdout
        assert "__asan" in syms, lib


def test_the_scalar_int4_kernel_reads_unaligned_words_without_undefined_behaviour(tmp_path):
    """Without AVX2 (a build for plain x86-64) the INT4 GEMV reads qweight's 32-bit words in C:
    qweight is bytes, and a view of it can start at any address; UBSan, made fatal, stops a
    misaligned int32 load."""
    import platform
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the x86-64 scalar build")
    cc = shutil.which("cc")
    runtime = cc and subprocess.run([cc, "-print-file-name=libubsan.so"], capture_output=True,
                                    text=True).stdout.strip()
    if not runtime or not os.path.isabs(runtime) or not os.path.exists(runtime):
        pytest.skip("no C compiler with an UndefinedBehaviorSanitizer runtime here")
    wrapper = tmp_path / "ubsan-cc"
    wrapper.write_text("#!/bin/sh\nexec cc -fsanitize=undefined -fno-sanitize-recover=all "
                       "\"$@\"\n")
    wrapper.chmod(0o755)
    code = """
import torch
from kernels import OPS, rel_err
from kernels.gemv import GemvW4Shape, simd
assert simd.tile_bits() == 0  # the scalar path
op = OPS["gemv_w4"]
x, q, s, z, g = op.make_inputs(GemvW4Shape(1, 8, 128, 32), torch.float32, "cpu", 0)
odd = torch.empty(q.numel() + 1, dtype=torch.uint8)[1:].view(q.shape)
odd.copy_(q)
assert odd.data_ptr() % 4
print(rel_err(simd.gemv_w4(x, odd, s, z, g), op.reference(x, q, s, z, g)))
"""
    env = {**os.environ, "CC": str(wrapper), "DECODEWALL_CACHE": str(tmp_path / "cache"),
           "DECODEWALL_MARCH": "x86-64", "LD_PRELOAD": runtime, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env=env, timeout=600)
    assert r.returncode == 0 and "runtime error" not in r.stderr, r.stderr[-3000:]
    assert float(r.stdout.split()[-1]) < 1e-4
