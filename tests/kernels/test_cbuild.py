"""kernels/cbuild.py on a tiny C file of its own: the cache key follows everything the build
reads or is built with (source, headers, compiler, flags, CPU), -march follows
$DECODEWALL_MARCH and for_march, the .so appears whole and only in its cache folder, OpenMP is
used where the compiler has it and dropped where it has not, a missing compiler or CPU flag, a
CC that is not a command line and a compiler that hangs (killed, with what it started) are a
NotImplementedError with the reason (the runner's "skipped"), found once per process, a cache
entry that does not load is built again, and without a home the cache is in a tmp folder."""
import ctypes
import os
import platform
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kernels import cbuild
from kernels.cbuild import CLibrary

pytestmark = pytest.mark.skipif(not shutil.which("cc"), reason="needs a C compiler")

SOURCE = """#include "k.h"
#ifdef _OPENMP
#include <omp.h>
#endif
int value(void) { return VALUE; }
int has_avx2(void) {
#ifdef __AVX2__
  return 1;
#else
  return 0;
#endif
}
int wrapped(void) {
#ifdef VIA_WRAPPER
  return 1;
#else
  return 0;
#endif
}
int openmp(void) {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}
"""
SIGS = {f: ([], ctypes.c_int) for f in ("value", "has_avx2", "wrapped", "openmp")}


@pytest.fixture
def src(tmp_path, monkeypatch):
    """k.c including k.h (VALUE 1), a fresh cache, the machine's cc and -march."""
    d = tmp_path / "src"
    d.mkdir()
    (d / "k.c").write_text(SOURCE)
    (d / "k.h").write_text("#define VALUE 1\n")
    monkeypatch.setenv("DECODEWALL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DECODEWALL_MARCH", raising=False)
    monkeypatch.delenv("CC", raising=False)
    return d / "k.c"


def lib(src: Path, **kw) -> CLibrary:
    return CLibrary("t", src, SIGS, **kw)


def so(library: CLibrary) -> str:
    return library()._name


def wrapper(tmp_path: Path, body: str) -> str:
    """A shell script standing in for the compiler."""
    w = tmp_path / "cc-wrapper"
    w.write_text(f"#!/bin/sh\n{body}\n")
    w.chmod(w.stat().st_mode | stat.S_IEXEC)
    return str(w)


def test_the_so_is_cached_under_decodewall_cache_and_reused(src, tmp_path):
    first = so(lib(src))
    assert Path(first).parent == tmp_path / "cache" / "cext"
    assert lib(src)().value() == 1 and so(lib(src)) == first


def test_an_edited_header_is_a_new_build_not_the_stale_so(src):
    """The source includes k.h: a key from the .c alone would load the old VALUE."""
    first = so(lib(src))
    (src.parent / "k.h").write_text("#define VALUE 2\n")
    again = lib(src)
    assert again().value() == 2 and so(again) != first


def test_another_compiler_is_a_new_build(src, tmp_path, monkeypatch):
    """The same cc behind another name (CC) that defines a macro: its own build, not the .so
    the plain cc made."""
    assert lib(src)().wrapped() == 0
    monkeypatch.setenv("CC", wrapper(tmp_path, f'exec {shutil.which("cc")} -DVIA_WRAPPER "$@"'))
    assert lib(src)().wrapped() == 1


def test_other_build_flags_are_a_new_build(src, monkeypatch):
    """The flags are in the cache key: a build with other flags (a release that changes FLAGS)
    is a build of its own, not the .so that the old flags made."""
    assert lib(src)().wrapped() == 0
    monkeypatch.setattr(cbuild, "FLAGS", ["-DVIA_WRAPPER", *cbuild.FLAGS])
    assert lib(src)().wrapped() == 1


def test_another_cpu_is_a_new_build(src, monkeypatch):
    """A cache shared by two machines (a home folder on NFS) must not hand one the other's
    -march=native binary."""
    first = so(lib(src))
    monkeypatch.setattr(cbuild, "_cpuinfo", lambda: b"flags : another cpu")
    assert so(lib(src)) != first


def test_a_clock_change_is_not_a_new_build(src, monkeypatch):
    """/proc/cpuinfo's `cpu MHz` moves on a machine that scales its clock: in the key, every
    process would rebuild every kernel and the cache fill with copies."""
    real = cbuild._cpuinfo()
    if not re.search(rb"^cpu MHz", real, re.M):
        pytest.skip("this CPU's /proc/cpuinfo shows no clock")
    first = so(lib(src))
    moved = re.sub(rb"(cpu MHz\s*:\s*)[\d.]+", rb"\g<1>1234.567", real)
    assert moved != real
    monkeypatch.setattr(cbuild, "_cpuinfo", lambda: moved)
    assert so(lib(src)) == first


def test_the_compiler_behind_the_same_name_changed_is_a_new_build(src, tmp_path, monkeypatch):
    """An upgraded cc at the same path (its version is in its predefined macros): a new build,
    not the old compiler's .so."""
    cc = shutil.which("cc")
    monkeypatch.setenv("CC", wrapper(tmp_path, f'exec {cc} "$@"'))
    assert lib(src)().wrapped() == 0
    wrapper(tmp_path, f'exec {cc} -DVIA_WRAPPER "$@"')  # the same path, another compiler
    cbuild._target.cache_clear()  # a new process would ask it afresh
    assert lib(src)().wrapped() == 1


def test_a_cc_with_arguments_is_split_as_a_shell_would(src, monkeypatch):
    """CC="ccache gcc" or CC="gcc -m64": a command line, not one program's name."""
    monkeypatch.setenv("CC", f"{shutil.which('cc')} -DVIA_WRAPPER")
    assert lib(src)().wrapped() == 1


def test_a_march_above_this_cpu_is_a_skip_naming_what_it_lacks(src, monkeypatch):
    """DECODEWALL_MARCH=x86-64-v3 on a CPU without AVX2: its code would die of SIGILL, so the
    kernels are skipped with the reason; -march=native is this CPU and never refused."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86-64 targets")
    knows = subprocess.run(["cc", "-march=x86-64-v3", "-x", "c", "-c", "-o", os.devnull,
                            os.devnull], capture_output=True)
    if knows.returncode:  # gcc < 11, clang < 12
        pytest.skip("this compiler does not take -march=x86-64-v3")
    monkeypatch.setattr(cbuild, "_cpuinfo", lambda: b"flags\t\t: fpu sse sse2\n")
    assert lib(src)().value() == 1  # native
    monkeypatch.setenv("DECODEWALL_MARCH", "x86-64-v3")
    with pytest.raises(NotImplementedError, match=r"x86-64-v3 \(from DECODEWALL_MARCH\) use "
                                                  r"avx.*avx2.*which this CPU lacks"):
        lib(src)()


def test_a_target_turning_on_what_native_does_not_is_refused(src, monkeypatch):
    """ISA_MACROS lists the common sets; a target can turn on others this CPU lacks
    (-march=sapphirerapids: AVX512-FP16, whose vmovw loads every fp16, and AMX), which its
    -march=native does not: refused by name. System instructions (SGX) the compiler never emits
    unasked, and arch names and tuning macros, are not features."""
    real = cbuild._target
    if not real(("cc",), "-march=native"):
        pytest.skip("this compiler lists no macros for -march=native")
    # made-up sets in the families a compiler emits: no real CPU has them natively
    extra = "#define __AVX512ZZFAKE__ 1\n#define __AMX_ZZFAKE__ 1\n#define __SGX__ 1\n" \
            "#define __sapphirerapids__ 1\n#define __tune_sapphirerapids__ 1"
    monkeypatch.setattr(cbuild, "_target", lambda cc, march: real(cc, "-march=native") +
                        ("\n" + extra if march == "-march=fake-above" else ""))
    monkeypatch.setenv("DECODEWALL_MARCH", "fake-above")
    with pytest.raises(NotImplementedError) as e:
        lib(src)()
    msg = str(e.value)
    assert "amx_zzfake, avx512zzfake, which this CPU lacks" in msg and "sgx" not in msg
    assert "tune" not in msg and "sapphirerapids" not in msg
    monkeypatch.delenv("DECODEWALL_MARCH")
    assert lib(src)().value() == 1  # native: never compared with itself


def test_the_gemv_kernels_build_and_load_without_openmp(tmp_path, monkeypatch):
    """The fallback build without -fopenmp must give a library that loads where no OpenMP
    runtime is (a process without torch's libgomp): the source must not need omp.h or its
    functions then."""
    monkeypatch.setenv("DECODEWALL_CACHE", str(tmp_path / "cache"))
    cc = shutil.which("cc")
    monkeypatch.setenv("CC", wrapper(tmp_path, 'for a in "$@"; do [ "$a" = -fopenmp ] && '
                                     f'exit 1; done; exec {cc} "$@"'))
    gemv = CLibrary("gemv_noomp", Path(cbuild.__file__).parent / "gemv" / "simd.c", {})
    path = gemv()._name
    r = subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({path!r})"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


needs_avx2 = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or "avx2" not in cbuild._cpuinfo().decode(),
    reason="needs an x86-64 CPU with AVX2")


@needs_avx2
def test_decodewall_march_is_the_target_and_its_own_cache_entry(src, monkeypatch):
    """-march=native on this AVX2 CPU; $DECODEWALL_MARCH=x86-64 builds code without AVX2, a
    separate .so (not the native one found in the cache under a key without the flags)."""
    native = lib(src)
    assert native().has_avx2() == 1
    monkeypatch.setenv("DECODEWALL_MARCH", "x86-64")
    assert "-march=x86-64" in cbuild.flags() and "-march=native" not in cbuild.flags()
    base = lib(src)
    assert base().has_avx2() == 0 and so(base) != so(native)
    assert cbuild.flags("x86-64-v3") != cbuild.flags()  # an explicit march wins over the variable


@needs_avx2
def test_for_march_builds_for_that_march(src):
    native = lib(src)
    base = native.for_march("x86-64")
    assert base.march == "x86-64"
    assert native().has_avx2() == 1 and base().has_avx2() == 0


@needs_avx2
def test_a_target_below_what_the_code_needs_is_a_skip_naming_what_it_leaves_off(src,
                                                                                monkeypatch):
    """The CPU has AVX2, but $DECODEWALL_MARCH=x86-64 does not turn it on: code that needs it is
    refused in one line naming what the target leaves off, not compiled into the compiler's
    "inlining failed ... target specific option mismatch"."""
    real_compile = cbuild._compile

    def run(cmd, *a, **kw):
        assert "-o" not in cmd or cmd[cmd.index("-o") + 1] == os.devnull, "compiled"
        return real_compile(cmd, *a, **kw)
    monkeypatch.setattr(cbuild, "_compile", run)
    base = lib(src, needs=("avx2", "fma", "sse2")).for_march("x86-64")
    with pytest.raises(NotImplementedError) as e:
        base()
    assert str(e.value) == ("the t kernels need avx2, fma, sse2; -march=x86-64 does not turn on "
                            "avx2, fma")
    monkeypatch.setattr(cbuild, "_compile", real_compile)
    assert lib(src, needs=("avx2", "fma")).for_march("x86-64-v3")().has_avx2() == 1


def test_openmp_is_used_where_the_compiler_has_it_and_dropped_where_not(src, tmp_path,
                                                                         monkeypatch):
    """The kernels' threads come from OpenMP: a build without it would run on one core and set
    a roof too low. A compiler without OpenMP still gives a (single-threaded) library."""
    probe = subprocess.run(["cc", "-fopenmp", "-x", "c", "-", "-o", os.devnull, "-shared"],
                           input="int f(void){return 0;}", capture_output=True, text=True)
    if probe.returncode == 0:
        assert "-fopenmp" in cbuild.flags()
        with_omp = lib(src)
        assert with_omp.info() is None  # not built yet
        assert with_omp().openmp() == 1
        assert with_omp.info()["openmp"] is True and "-fopenmp" in with_omp.info()["flags"]
    cc = shutil.which("cc")
    monkeypatch.setenv("CC", wrapper(tmp_path, 'for a in "$@"; do [ "$a" = -fopenmp ] && '
                                     f'exit 1; done; exec {cc} "$@"'))
    built = lib(src)
    assert built().openmp() == 0 and built().value() == 1
    info = built.info()  # what the records say of it: built without OpenMP, one thread
    assert info["openmp"] is False and "-fopenmp" not in info["flags"].split()
    assert "-O3" in info["flags"].split() and info["compiler"]
    cached = lib(src)  # a second process finds the cached library, and the same answer
    cached()
    assert cached.info() == info


@pytest.mark.parametrize("macros, name", [
    ('#define __GNUC__ 12\n#define __VERSION__ "12.2.0"', "gcc 12.2.0"),
    ('#define __GNUC__ 4\n#define __VERSION__ "Debian Clang 14.0.6"\n#define __clang__ 1',
     "Debian Clang 14.0.6"),
    ('#define __GNUC__ 4\n#define __VERSION__ "Apple LLVM 15.0.0 (clang-1500.3.9.4)"\n'
     '#define __clang__ 1', "Apple LLVM 15.0.0 (clang-1500.3.9.4)"),
    ("", "ccache gcc"),  # a compiler that lists no macros: its command
])
def test_the_compiler_is_named_as_its_macros_name_it(macros, name):
    assert cbuild._compiler_name(macros, ["ccache", "gcc"]) == name


def test_the_so_appears_whole_by_a_rename_within_the_cache_folder(src, tmp_path, monkeypatch):
    """Another process may load the cached .so at any moment: the compiler writes elsewhere and
    the finished file is renamed into place. The file it writes is inside the cache folder:
    os.replace across file systems (/tmp on tmpfs, the cache on disk) fails with EXDEV, which
    left every C kernel 'skipped' on such machines."""
    seen = []
    real_compile = cbuild._compile

    def run(cmd, *a, **kw):
        r = real_compile(cmd, *a, **kw)
        if "-o" not in cmd:  # the compiler asked for its predefined macros: no output file
            return r
        out = Path(cmd[cmd.index("-o") + 1])
        seen.append(out)
        cached = list((tmp_path / "cache" / "cext").glob("*.so"))
        assert not cached, f"{cached} exists before the compiler's output is renamed"
        return r

    monkeypatch.setattr(cbuild, "_compile", run)
    path = Path(so(lib(src)))
    assert seen and all(p != path for p in seen)
    cache = (tmp_path / "cache" / "cext").resolve()
    assert all(cache in p.resolve().parents for p in seen)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no build folder left behind


def test_a_cache_on_another_file_system_builds(src, tmp_path, monkeypatch):
    """/dev/shm is a tmpfs where /tmp is not (or the reverse): one of them is on another file
    system than the temporary folder."""
    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        pytest.skip("no /dev/shm")
    shm = Path("/dev/shm") / f"decodewall-test-{os.getpid()}"
    other = shm if os.stat("/dev/shm").st_dev != os.stat(tmp_path).st_dev else tmp_path / "c"
    monkeypatch.setenv("TMPDIR", str(tmp_path if other == shm else "/dev/shm"))
    monkeypatch.setattr(cbuild.tempfile, "tempdir", None)
    monkeypatch.setenv("DECODEWALL_CACHE", str(other))
    try:
        assert lib(src)().value() == 1
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def test_no_compiler_is_a_skip_with_the_reason_found_once(src, monkeypatch):
    monkeypatch.setattr(cbuild.shutil, "which", lambda name: None)
    library = lib(src)
    with pytest.raises(NotImplementedError, match="no C compiler found"):
        library()
    calls = []
    monkeypatch.setattr(cbuild.shutil, "which", lambda name: calls.append(name))
    with pytest.raises(NotImplementedError, match="no C compiler found"):
        library()  # remembered: not looked for, nor built, again
    assert calls == []


def test_a_cpu_without_the_needed_flags_is_a_skip_naming_them(src, monkeypatch):
    calls = []
    monkeypatch.setattr(cbuild, "_compile", lambda *a, **k: calls.append(a))
    with pytest.raises(NotImplementedError, match="lacks no_such_flag"):
        lib(src, needs=("no_such_flag",))()
    assert calls == []  # nothing was compiled for a CPU that cannot run it


@pytest.mark.parametrize("cpuinfo", [
    b"model name\t: Example CPU\nflags\t\t: fpu sse sse2 avx avx2 f16c fma4\n",
    b"model name\t: fmaker avx2 f16c\nflags\t\t: fpu sse sse2 avx avx2 f16c\n"])
def test_a_needed_flag_is_a_whole_flag_of_the_flags_line(src, monkeypatch, cpuinfo):
    """`fma` is not had by a CPU whose flags hold only `fma4`, nor by a model name that spells
    it: the kernels that need it are refused naming it, not compiled into SIGILL."""
    monkeypatch.setattr(cbuild, "_cpuinfo", lambda: cpuinfo)
    monkeypatch.setattr(cbuild, "_compile", lambda *a, **k: pytest.fail("compiled"))
    with pytest.raises(NotImplementedError, match="this CPU lacks fma$"):
        lib(src, needs=("avx2", "fma", "f16c"))()


def test_without_cpuinfo_flags_the_needed_flags_are_what_native_turns_on(src, monkeypatch):
    """No flags line in /proc/cpuinfo (macOS, a container that masks /proc) is no proof that the
    CPU lacks what a kernel needs: the compiler's -march=native says what it has, so an AVX2
    CPU builds the kernels that need AVX2 and a flag no target turns on is still refused."""
    native = cbuild._target((shutil.which("cc"),), "-march=native")
    if "#define __AVX2__ 1" not in native or "#define __FMA__ 1" not in native:
        pytest.skip("needs a compiler whose -march=native here turns on AVX2 and FMA")
    monkeypatch.setattr(cbuild, "_cpuinfo", lambda: b"")
    assert lib(src, needs=("avx2", "fma"))().has_avx2() == 1
    with pytest.raises(NotImplementedError, match="this CPU lacks no_such_flag$"):
        lib(src, needs=("avx2", "no_such_flag"))()


def test_the_read_probe_runs_on_torchs_threads(monkeypatch):
    """The roof is what every core together reads: the C probe is given torch's thread count,
    not one thread."""
    from kernels.probes import simd as probes_simd
    got = []

    class Fake:
        def read_sum(self, ptr, n, threads):
            got.append(threads)
            return 0.0

    monkeypatch.setattr(probes_simd, "library", lambda: Fake())
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        probes_simd.read_simd_c(torch.ones(8))
    finally:
        torch.set_num_threads(before)
    assert got == [3]


def test_a_target_the_compiler_refuses_is_a_skip_naming_its_error(src, monkeypatch):
    """gcc follows a bad -march with the list of every valid one: the reason is its error line
    and the flag's source, not the tail of that list."""
    monkeypatch.setenv("DECODEWALL_MARCH", "no-such-cpu")
    with pytest.raises(NotImplementedError) as e:
        lib(src)()
    why = str(e.value)
    assert why.startswith("building the t kernels with -march=no-such-cpu (from DECODEWALL_MARCH) "
                          "failed: "), why
    assert "error" in why.split("failed: ", 1)[1] and "no-such-cpu" in why.split("failed: ", 1)[1]
    assert len(why) < 500


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie no longer does: where PID 1 does not reap, one stays)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.parametrize("hangs", ["always", "building"])
def test_a_compiler_that_hangs_is_killed_with_what_it_started_and_skipped(src, tmp_path,
                                                                         monkeypatch, hangs):
    """The roof's probe builds in the CLI's own process, where no --case-timeout applies: a
    compiler that never returns (asked for its macros, or building) must not hang the run. It
    is killed past COMPILE_TIMEOUT_S with every process it started, and the kernels skipped."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs /proc")
    monkeypatch.setattr(cbuild, "COMPILE_TIMEOUT_S", 1.0)
    pids = tmp_path / "pids"
    only = 'hang=0; for a in "$@"; do [ "$a" = -o ] && hang=1; done\n' \
           f'[ $hang = 1 ] || exec {shutil.which("cc")} "$@"\n' if hangs == "building" else ""
    cc = wrapper(tmp_path, f'{only}sleep 1000 &\necho $$ $! > {pids}\nsleep 1000')
    monkeypatch.setenv("CC", cc)
    with pytest.raises(NotImplementedError, match=rf"\({re.escape(cc)}\) ran past 1 s .*killed"):
        lib(src)()
    started = [int(p) for p in pids.read_text().split()]
    for _ in range(50):  # SIGKILL is delivered at once, the exit a moment later
        if not any(alive(p) for p in started):
            break
        time.sleep(0.1)
    assert not any(alive(p) for p in started), started


def test_a_cc_that_is_not_a_command_line_is_a_skip_naming_cc(src, monkeypatch):
    """An unclosed quote in CC is a bad environment, like no compiler: skipped with the reason,
    not the impl's `error` (which fails --strict)."""
    monkeypatch.setenv("CC", '"x')
    with pytest.raises(NotImplementedError, match=r"""CC='"x' is not a command line"""):
        lib(src)()


def test_without_a_home_the_cache_is_a_tmp_folder_of_this_users_own(src, tmp_path, monkeypatch):
    """No $HOME and a uid without a passwd entry (a container's --user): expanduser leaves the
    "~", which would make a folder named ~ in the working directory."""
    for name in ("DECODEWALL_CACHE", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cbuild.os.path, "expanduser", lambda p: p)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(cbuild.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    mine = tmp_path / "tmp" / f"decodewall-{os.getuid()}"
    assert cbuild.cache_dir() == str(mine / "cext")
    assert Path(so(lib(src))).parent == mine / "cext"
    assert list((tmp_path / "cwd").iterdir()) == []
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700
    monkeypatch.setattr(cbuild.os, "getuid", lambda: os.geteuid() + 1)  # a folder not ours
    (tmp_path / "tmp" / f"decodewall-{os.getuid()}").mkdir()
    with pytest.raises(NotImplementedError, match="belongs to another user"):
        lib(src)()


def test_a_home_this_user_cannot_write_keeps_the_cache_in_a_tmp_folder(src, tmp_path,
                                                                       monkeypatch):
    """HOME=/ under `docker run --user` (or a read-only home): no cache can be made there, and
    every C kernel would be skipped; the cache goes where it goes without a home. An explicit
    DECODEWALL_CACHE is never replaced."""
    for name in ("DECODEWALL_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "home").write_text("")  # a file where the home's .cache would have to be made
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(cbuild.tempfile, "tempdir", str(tmp_path / "tmp"))
    mine = tmp_path / "tmp" / f"decodewall-{os.getuid()}" / "cext"
    assert cbuild.cache_dir() == str(mine)
    assert Path(so(lib(src))).parent == mine
    monkeypatch.setenv("DECODEWALL_CACHE", str(tmp_path / "home" / "cache"))
    with pytest.raises(NotImplementedError, match="cannot build the t kernels"):
        lib(src)()


def test_a_cached_so_cut_short_is_built_again(src, tmp_path, monkeypatch):
    """A cache entry truncated (a crash before it reached the disk, a partial copy) fails to
    load ('file too short'), and kept would skip the kernels in every run after: it is built
    again."""
    first = Path(so(lib(src)))
    # in another cache folder: this process has `first` loaded, and dlopen would reuse it by name
    short = tmp_path / "short" / "cext" / first.name
    short.parent.mkdir(parents=True)
    short.write_bytes(first.read_bytes()[:100])
    monkeypatch.setenv("DECODEWALL_CACHE", str(tmp_path / "short"))
    again = lib(src)
    assert again().value() == 1 and so(again) == str(short)


def test_a_build_that_does_not_load_is_a_skip_and_built_again_only_once(src, tmp_path,
                                                                       monkeypatch):
    """A compiler whose output never loads: skipped with the loader's reason; the bad entry it
    left in the cache is built once more by the next process, not again and again."""
    builds = tmp_path / "builds"
    monkeypatch.setenv("CC", wrapper(tmp_path, f"""
prev=; out=
for a in "$@"; do [ "$prev" = -o ] && out=$a; prev=$a; done
{shutil.which("cc")} "$@" || exit $?
[ -z "$out" ] || {{ echo >> {builds}; head -c 100 "$out" > "$out.t"; mv "$out.t" "$out"; }}"""))
    for n in (1, 2):
        with pytest.raises(NotImplementedError, match=r"\.so: .*(too short|cannot read|ELF)"):
            lib(src)()
        assert len(builds.read_text().splitlines()) == n


def test_the_so_is_on_disk_before_it_is_renamed_into_place(src, monkeypatch):
    """os.replace without fsync can leave, after a crash, the name with a short or empty file."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(cbuild.os, "fsync",
                        lambda fd: (events.append(("fsync", os.fstat(fd).st_ino)), real_fsync(fd)))
    monkeypatch.setattr(cbuild.os, "replace", lambda a, b: (
        events.append(("replace", os.stat(a).st_ino)), real_replace(a, b)))
    path = Path(so(lib(src)))
    ino = path.stat().st_ino
    assert events == [("fsync", ino), ("replace", ino)]


def test_the_compilers_first_error_line_is_the_reason():
    assert cbuild._first_error("a.c: In function f:\na.c:3: error: x\nnote: y\n") == "a.c:3: error: x"
    assert cbuild._first_error("a.c: In function 'on_error':\nk.h:1: fatal error: z.h: gone\n") \
        == "k.h:1: fatal error: z.h: gone"
    assert cbuild._first_error("warning only\nlast words\n") == "last words"
    assert cbuild._first_error("") == "no output"
    assert len(cbuild._first_error("error: " + "z" * 1000)) == 300


def test_default_march_is_the_variable_or_native(monkeypatch):
    """What a build without its own -march takes, and what CPU records name as c_march."""
    monkeypatch.delenv("DECODEWALL_MARCH", raising=False)
    assert cbuild.default_march() == "native" and "-march=native" in cbuild.flags()
    monkeypatch.setenv("DECODEWALL_MARCH", "x86-64-v3")
    assert cbuild.default_march() == "x86-64-v3" and "-march=x86-64-v3" in cbuild.flags()


def test_only_a_machine_that_lacks_something_skips_a_c_kernels_tests():
    """tests.helpers.skip_if_machine_lacks: the messages CLibrary gives for a CPU without the
    instructions or no compiler skip; a failed build re-raises (fails the test)."""
    from tests.helpers import skip_if_machine_lacks
    for msg in ("the probes kernels need avx2; this CPU lacks avx2",
                "no C compiler found (set CC) to build the probes kernels"):
        with pytest.raises(pytest.skip.Exception):
            skip_if_machine_lacks(NotImplementedError(msg))
    failed = NotImplementedError("building the probes kernels with -march=native failed: "
                                 "simd.c:3: error: expected ';'")
    with pytest.raises(NotImplementedError, match="failed"):
        skip_if_machine_lacks(failed)


def test_a_compiler_dies_with_the_case_worker_that_started_it(tmp_path):
    """A worker past --case-timeout is killed with its process group, which must hold the
    compilers it started: one in a session of its own would outlive it (a hung one for
    good)."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs /proc")
    pid_file = tmp_path / "cc.pid"
    child = (f"import sys; sys.path.insert(0, {str(Path(cbuild.__file__).parents[1])!r})\n"
             "from kernels import cbuild\n"
             f"cbuild._compile(['sh', '-c', 'echo $$ > {pid_file}; exec sleep 60'], ['sh'], "
             "'building')\n")
    worker = subprocess.Popen([sys.executable, "-c", child], start_new_session=True)
    try:
        for _ in range(300):
            if pid_file.exists() and pid_file.read_text().strip():
                break
            time.sleep(0.1)
        cc = int(pid_file.read_text())
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # what Worker.kill does
        worker.wait()
    for _ in range(50):
        if not alive(cc):
            break
        time.sleep(0.1)
    assert not alive(cc)


def test_a_compiler_still_starting_processes_is_killed_with_every_one(tmp_path, monkeypatch):
    """A timed-out compiler may start a process while its tree is being listed: each process
    is stopped before the listing that looks for its children, so none it started survives."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs /proc")
    monkeypatch.setattr(cbuild, "COMPILE_TIMEOUT_S", 1.0)
    pids = tmp_path / "pids"
    # two levels, each starting a process every few ms (a count between: ~250 in the second):
    # the driver, and a shell it started
    spawn = (f"while :; do sleep 1000 & echo $! >> {pids}; i=0; "
             "while [ $i -lt 3000 ]; do i=$((i + 1)); done; done")
    cc = wrapper(tmp_path, f"sh -c '{spawn}' &\necho $! >> {pids}\n{spawn}")
    with pytest.raises(NotImplementedError, match="ran past 1 s"):
        cbuild._compile([cc], [cc], "building")
    started = [int(p) for p in pids.read_text().split()]
    for _ in range(50):
        if not any(alive(p) for p in started):
            break
        time.sleep(0.1)
    left = [p for p in started if alive(p)]
    for p in left:  # a failure leaves no shell starting processes for good
        os.kill(p, signal.SIGKILL)
    assert len(started) > 2 and not left, f"{len(left)} of {len(started)} left running"
