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


def asan_runtime() -> str | None:
    """The compiler's ASan runtime library, or None where it has none."""
    cc = shutil.which("cc")
    if cc is None:
        return None
    r = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True)
    path = r.stdout.strip()
    return path if r.returncode == 0 and os.path.isabs(path) and os.path.exists(path) else None


def test_c_kernels_pass_their_tests_under_addresssanitizer(tmp_path):
    runtime = asan_runtime()
    if runtime is None:
        pytest.skip("no C compiler with an AddressSanitizer runtime here")
    wrapper = tmp_path / "asan-cc"
    wrapper.write_text("#!/bin/sh\nexec cc -fsanitize=address -fno-omit-frame-pointer \"$@\"\n")
    wrapper.chmod(0o755)
    cache = tmp_path / "cache"
    env = {**os.environ, "CC": str(wrapper), "DECODEWALL_CACHE": str(cache),
           "LD_PRELOAD": runtime, "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1",
           "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        *SELECTION], capture_output=True, text=True, cwd=REPO, env=env,
                       timeout=1200)
    out = r.stdout + r.stderr
    assert "AddressSanitizer" not in out, out[-4000:]
    assert r.returncode == 0, out[-4000:]
    assert " passed" in out and "no tests ran" not in out, out[-2000:]
    built = sorted(Path(cache).rglob("*.so"))
    assert {p.name.split("_")[0] for p in built} >= {"dequant", "paged", "probes"}, built
    for lib in built:  # each library really instrumented
        syms = subprocess.run(["nm", "-D", str(lib)], capture_output=True, text=True).stdout
        assert "__asan" in syms, lib
