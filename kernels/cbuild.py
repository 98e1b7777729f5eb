"""Build, cache and load the hand-written C kernels: the `.c` files shipped in the package, each
beside the module that wraps it (gemv/simd.c, attention/simd.c, probes/simd.c).

They are compiled on first use with the machine's own compiler and `-march=native`, so they use
whatever SIMD the CPU has (AVX2 on one x86-64, AVX-512 on another: two different binaries, both
tested; $DECODEWALL_MARCH names another target, e.g. x86-64-v3). A source file may include the
headers of its own folder. The shared object is cached under $DECODEWALL_CACHE/cext (default
${XDG_CACHE_HOME:-~/.cache}/decodewall/cext, or $TMPDIR/decodewall-<uid>/cext without a home folder
this user can write) keyed by the source and those headers, the compiler command, its version and
the instruction sets the target turns on (its predefined macros), the flags and the CPU's identity;
a cached entry that does not load is built again. Where the compiler cannot build with -fopenmp
the library is built without it (one thread; `CLibrary.info` says so). Without a compiler (or
with a CC that is not a command line), on a CPU without the instructions a kernel needs, for a
-march above the CPU, or when the compiler runs past COMPILE_TIMEOUT_S, calls raise
NotImplementedError and the runner records the impl as skipped with that reason.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fopenmp"]

# Compiled into every library beside its source: whether the build has OpenMP. Where the compiler
# refuses -fopenmp (Apple's clang; clang without libomp) the library is built without it and its
# kernels run on one thread, which the records must say (`CLibrary.info`).
INFO_SOURCE = b"""int decodewall_openmp(void) {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}
"""

# A build takes seconds; a compiler still running after this is stuck. The roof's `read` probe
# builds in the CLI's own process, where no --case-timeout applies: without a limit the run hangs.
COMPILE_TIMEOUT_S = 120.0


def default_march() -> str:
    """The -march a build without its own takes: $DECODEWALL_MARCH, else native."""
    return os.environ.get("DECODEWALL_MARCH") or "native"


def flags(march: str | None = None) -> list[str]:
    march = march or default_march()
    return [f if f != "-march=native" else f"-march={march}" for f in FLAGS]


def _tmp_cache() -> str:
    """This user's folder in the temporary directory: the cache where there is no home folder
    this user can write."""
    return os.path.join(tempfile.gettempdir(), f"decodewall-{os.getuid()}")


def _can_make(path: str) -> bool:
    """Whether the folder `path` is there, or can be made, and this user can write in it."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:  # a read-only or foreign home, a file in the way
        return False
    return os.access(path, os.W_OK | os.X_OK)


def cache_dir() -> str:
    base = os.environ.get("DECODEWALL_CACHE")
    if not base:
        home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        base = os.path.join(home, "decodewall")
        # no $HOME and a uid without a passwd entry leave the "~": a folder named ~ in the cwd;
        # a home this user cannot write (HOME=/ under `docker run --user`) holds no cache
        if home.startswith("~") or not _can_make(os.path.join(base, "cext")):
            base = _tmp_cache()
    return os.path.join(base, "cext")


def define(source: Path, name: str) -> int:
    """The integer of `#define NAME <int>` in a C file: a layout constant the C and its Python
    wrapper share, defined once, in the C."""
    m = re.search(rf"^#define {re.escape(name)} (\d+)\b", source.read_text(), re.M)
    if m is None:
        raise LookupError(f"no '#define {name} <int>' in {source}")
    return int(m.group(1))


def _cpuinfo() -> bytes:
    try:
        with open("/proc/cpuinfo", "rb") as f:
            return f.read()
    except OSError:
        return b""


# Instruction-set macros a -march turns on, and the /proc/cpuinfo flag of each: a build for a
# target above the CPU ($DECODEWALL_MARCH=x86-64-v4 on an AVX2 machine) is refused, not run
ISA_MACROS = {"__AVX__": "avx", "__AVX2__": "avx2", "__FMA__": "fma", "__F16C__": "f16c",
              "__AVX512F__": "avx512f", "__AVX512BW__": "avx512bw", "__AVX512VL__": "avx512vl",
              "__AVX512DQ__": "avx512dq", "__AVX512VNNI__": "avx512_vnni",
              "__AVX512BF16__": "avx512_bf16"}


# Instruction families a compiler emits in ordinary code (vector loops, conversions, builtins): a
# target that turns on one that the compiler's -march=native does not is above this CPU, whatever
# ISA_MACROS lists (a sapphirerapids build loads every fp16 with AVX512-FP16's vmovw). System
# instructions (SGX, PCONFIG, ...) are left out: only intrinsics emit them.
CODEGEN_MACRO = re.compile(r"__(AVX|AMX|FMA|F16C|BMI|LZCNT|POPCNT|MOVBE|SSE|SSSE|GFNI|VAES|"
                           r"VPCLMULQDQ|APX|EVEX|ADX|SHA)\w*__")


def _codegen_features(macros: str) -> set[str]:
    """The CODEGEN_MACRO macros that `macros` (a -E -dM listing) defines to 1."""
    return {m for m in re.findall(r"^#define (__\w+__) 1$", macros, re.M)
            if CODEGEN_MACRO.fullmatch(m)}


def _compile(cmd: list[str], cc: list[str], doing: str) -> subprocess.CompletedProcess:
    """Run a compiler command; past COMPILE_TIMEOUT_S (or on Ctrl-C), kill it with every process
    it started (a driver's cc1, as, ld: killing the driver alone leaves them running) and raise
    NotImplementedError. It stays in this process's group: a case worker killed with its group
    takes its compiler with it."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        try:
            out, err = p.communicate(timeout=COMPILE_TIMEOUT_S)
        except BaseException as e:
            _kill_tree(p.pid)
            if not isinstance(e, subprocess.TimeoutExpired):
                raise
            raise NotImplementedError(f"the C compiler ({shlex.join(cc)}) ran past "
                                      f"{COMPILE_TIMEOUT_S:g} s {doing} and was killed") from None
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def _kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every process it started. Each is stopped first and the tree listed
    again until a listing finds none new: a process still running while the others were listed
    could start one more, which a kill of the listed ones alone would leave running."""
    stopped: list[int] = []
    new = [pid]
    while new:
        for p in new:
            _signal(p, signal.SIGSTOP)
        stopped += new
        new = [c for c in _descendants(pid) if c not in stopped]
    for p in stopped:
        _signal(p, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):  # gone already, or (setuid) not ours to end
        pass


def _descendants(pid: int) -> list[int]:
    """The processes `pid` started, and theirs, from /proc's parent links (none without /proc:
    there the compiler alone is killed)."""
    children: dict[int, list[int]] = {}
    try:
        entries = [d for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return []
    for d in entries:
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):  # ended meanwhile
            continue
        children.setdefault(ppid, []).append(int(d))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _compiler_name(target: str, cc: list[str]) -> str:
    """The compiler as its predefined macros name it ("gcc 12.2.0", "Debian Clang 14.0.6",
    "Apple LLVM 15.0.0 (clang-1500.3.9.4)"), else its command."""
    m = re.search(r'^#define __VERSION__ "(.*)"$', target, re.M)
    if not m:
        return shlex.join(cc)
    gcc = "#define __GNUC__ " in target and "#define __clang__ " not in target
    return f"gcc {m.group(1)}" if gcc and m.group(1)[:1].isdigit() else m.group(1)


@functools.lru_cache(maxsize=None)
def _target(cc: tuple[str, ...], march: str) -> str:
    """The compiler's predefined macros for `march` (its version, `__VERSION__`, and the
    instruction sets the target turns on), sorted; "" where it will not say; NotImplementedError
    where it does not answer within COMPILE_TIMEOUT_S."""
    try:
        r = _compile([*cc, march, "-E", "-dM", "-x", "c", os.devnull], list(cc),
                     f"listing its {march} macros")
    except (OSError, subprocess.SubprocessError):
        return ""
    return "\n".join(sorted(r.stdout.splitlines())) if r.returncode == 0 else ""


def _cpu_flags(cpu: bytes) -> set[str]:
    """The x86 `flags` of /proc/cpuinfo (empty on other CPUs, whose ISA is not checked)."""
    m = re.search(rb"^flags\s*:(.*)$", cpu, re.M)
    return set(m.group(1).decode(errors="replace").split()) if m else set()


def _native_flags(cc: tuple[str, ...]) -> set[str]:
    """The /proc/cpuinfo flags of ISA_MACROS that the compiler's -march=native turns on: what
    this CPU has where /proc/cpuinfo does not say (macOS, a container that masks /proc)."""
    native = _target(cc, "-march=native")
    return {flag for m, flag in ISA_MACROS.items() if f"#define {m} 1" in native}


def _cpu_identity(cpu: bytes) -> bytes:
    """The first CPU's lines of /proc/cpuinfo that name it and its features (vendor, family,
    model, flags; Arm's implementer, part, features), without the ones that change at run time."""
    lines = []
    for line in cpu.split(b"\n\n")[0].splitlines():
        name = line.split(b":")[0].strip().lower()
        if name in (b"vendor_id", b"cpu family", b"model", b"model name", b"stepping", b"flags",
                    b"features", b"cpu implementer", b"cpu architecture", b"cpu variant",
                    b"cpu part", b"cpu revision", b"isa", b"uarch"):
            lines.append(line)
    return b"\n".join(lines)


def _first_error(stderr: str) -> str:
    """The compiler's first `error:` line (gcc follows a bad -march with a list of every valid
    one, so its last lines name no error), else its last line; at most 300 characters."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    first = next((ln for ln in lines if re.search(r"\berror:", ln)), lines[-1] if lines else "")
    return first[:300] or "no output"


class CLibrary:
    """One C source file built lazily into a shared library, with its functions' ctypes signatures.

    `source` is the .c file (it may include headers from its own folder); `signatures` maps
    function name -> (argtypes, restype); `needs` lists /proc/cpuinfo flags the code cannot run
    without (where /proc/cpuinfo has no flags line, checked against those -march=native turns
    on); `march` overrides -march (default native, or $DECODEWALL_MARCH). The build is
    attempted once per process; a failure is remembered.
    """

    def __init__(self, name: str, source: Path, signatures: dict[str, tuple[list, Any]],
                 needs: tuple[str, ...] = (), libs: tuple[str, ...] = (),
                 march: str | None = None) -> None:
        self.name, self.source, self.signatures = name, Path(source), signatures
        self.needs, self.libs, self.march = needs, libs, march
        self._lib: ctypes.CDLL | None = None
        self._error: str | None = None
        self._info: dict[str, Any] | None = None
        self._local = threading.local()  # scratch buffers, a set per thread (buffer())

    def for_march(self, march: str) -> CLibrary:
        """The same library built for another -march (a separate build and cache entry)."""
        return CLibrary(self.name, self.source, self.signatures, self.needs, self.libs, march)

    def text(self) -> bytes:
        """What the build reads: the source, the headers of its folder (sorted by name), then
        INFO_SOURCE."""
        headers = sorted(self.source.parent.glob("*.h"))
        return b"".join(p.read_bytes() for p in (self.source, *headers)) + INFO_SOURCE

    def _march_flag(self, fl: list[str]) -> str:
        """`-march=X`, and where X came from when it is not the machine's own."""
        flag = next(f for f in fl if f.startswith("-march="))
        from_env = self.march is None and os.environ.get("DECODEWALL_MARCH")
        return f"{flag} (from DECODEWALL_MARCH)" if from_env else flag

    def _build(self) -> ctypes.CDLL:
        found = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        try:
            cc = shlex.split(os.environ.get("CC") or "") or ([found] if found else [])
        except ValueError as e:  # an unclosed quote: a bad environment, like no compiler
            raise NotImplementedError(f"CC={os.environ['CC']!r} is not a command line ({e}) "
                                      f"to build the {self.name} kernels") from None
        if not cc:
            raise NotImplementedError(f"no C compiler found (set CC) to build the {self.name} kernels")
        cpu = _cpuinfo()
        have = _cpu_flags(cpu)  # whole flags: "fma" is not in "fma4" nor in a model name
        if not have and self.needs:  # no flags line (macOS, a masked /proc): ask the compiler
            have = _native_flags(tuple(cc))
        missing = [n for n in self.needs if n not in have]
        if missing:
            raise NotImplementedError(f"the {self.name} kernels need {', '.join(self.needs)}; "
                                      f"this CPU lacks {', '.join(missing)}")
        fl = flags(self.march)
        target = _target(tuple(cc), next(f for f in fl if f.startswith("-march=")))
        built = {flag for m, flag in ISA_MACROS.items() if f"#define {m} 1" in target}
        off = [n for n in self.needs if target and n in ISA_MACROS.values() and n not in built]
        if off:  # a target below what the code needs ($DECODEWALL_MARCH=x86-64): say so, not
            # the compiler's "inlining failed ... target specific option mismatch"
            raise NotImplementedError(f"the {self.name} kernels need {', '.join(self.needs)}; "
                                      f"{self._march_flag(fl)} does not turn on {', '.join(off)}")
        have = have if "-march=native" not in fl else set()  # native: this CPU
        lacks = [m for m, flag in ISA_MACROS.items()
                 if have and f"#define {m} 1" in target and flag not in have]
        names = [ISA_MACROS[m] for m in lacks]
        native = _target(tuple(cc), "-march=native") if "-march=native" not in fl else ""
        if native:  # what the target turns on beyond what the compiler finds on this CPU
            names += [m.strip("_").lower() for m in
                      sorted(_codegen_features(target) - _codegen_features(native) - set(lacks))]
        if names:  # a -march above this CPU (DECODEWALL_MARCH): its code would die of SIGILL
            raise NotImplementedError(
                f"the {self.name} kernels built with {self._march_flag(fl)} use "
                f"{', '.join(names)}, which this CPU lacks")
        # the key: what is compiled, how, by which compiler (its version and the instruction
        # sets the target turns on, from its predefined macros) and for which CPU (its identity
        # lines; cpu MHz, which moves on a machine that scales its clock, stays out)
        key = hashlib.sha256(self.text() + " ".join([*cc, *fl, *self.libs]).encode()
                             + target.encode() + _cpu_identity(cpu)
                             + sys.platform.encode()).hexdigest()[:16]
        folder = cache_dir()
        if folder == os.path.join(_tmp_cache(), "cext"):
            # a shared /tmp: a folder of this name that another user made could hand us their .so
            os.makedirs(_tmp_cache(), mode=0o700, exist_ok=True)
            if os.stat(_tmp_cache()).st_uid != os.getuid():
                raise NotImplementedError(f"{_tmp_cache()}, the C kernels' cache without a home "
                                          f"folder, belongs to another user: set DECODEWALL_CACHE")
        path = os.path.join(folder, f"{self.name}_{key}.so")
        lib = None
        if os.path.exists(path):
            try:
                lib = self._load(path)
            except (OSError, AttributeError):  # cut short (a crash, a full disk, a partial
                #                                copy), a symbol missing: built again, once
                try:
                    os.unlink(path)
                except FileNotFoundError:  # another process got there first
                    pass
        if lib is None:
            self._compile_to(path, cc, fl)
            lib = self._load(path)
        openmp = bool(lib.decodewall_openmp())
        self._info = {"compiler": _compiler_name(target, cc), "openmp": openmp,
                      "flags": " ".join(f for f in fl if openmp or f != "-fopenmp")}
        return lib

    def _compile_to(self, path: str, cc: list[str], fl: list[str]) -> None:
        """Build the library into the cache entry `path`, which appears whole or not at all."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # built beside the cache entry: os.replace cannot cross file systems (a tmpfs /tmp and a
        # cache on disk), and a failed rename would skip every C kernel
        with tempfile.TemporaryDirectory(dir=os.path.dirname(path), prefix=".build-") as tmp:
            src, inc, out = str(self.source), f"-I{self.source.parent}", os.path.join(tmp, "k.so")
            info = os.path.join(tmp, "decodewall_info.c")
            with open(info, "wb") as f:
                f.write(INFO_SOURCE)
            doing = f"building the {self.name} kernels"
            r = _compile([*cc, *fl, inc, src, info, "-o", out, *self.libs], cc, doing)
            if r.returncode != 0:  # e.g. no OpenMP: single-threaded rather than nothing
                r = _compile([*cc, *fl[:-1], inc, src, info, "-o", out, *self.libs], cc, doing)
            if r.returncode != 0:
                raise NotImplementedError(
                    f"building the {self.name} kernels with {self._march_flag(fl)} "
                    f"failed: {_first_error(r.stderr)}")
            with open(out, "rb") as f:  # on disk before its name is: a crash leaves no short .so
                os.fsync(f.fileno())
            os.replace(out, path)  # atomic: concurrent builders never see half a file

    def _load(self, path: str) -> ctypes.CDLL:
        lib = ctypes.CDLL(path)
        lib.decodewall_openmp.argtypes, lib.decodewall_openmp.restype = [], ctypes.c_int
        for fn, (argtypes, restype) in self.signatures.items():
            getattr(lib, fn).argtypes = argtypes
            getattr(lib, fn).restype = restype
        return lib

    def __call__(self) -> ctypes.CDLL:
        """The loaded library; NotImplementedError (with the reason) if it cannot be built."""
        if self._lib is None:
            if self._error is not None:
                raise NotImplementedError(self._error)
            try:
                self._lib = self._build()
            except NotImplementedError as e:
                self._error = str(e)
                raise NotImplementedError(self._error) from None
            except OSError as e:  # a compiler that cannot start, a cache that cannot be written
                self._error = f"cannot build the {self.name} kernels (cache {cache_dir()}): {e}"
                raise NotImplementedError(self._error) from None
        return self._lib

    def info(self) -> dict[str, Any] | None:
        """How the loaded library was built: `compiler` (name and version), `flags` (those used:
        without -fopenmp where the compiler refused it) and `openmp` (False: its kernels ran on
        one thread); None before it is built, or where it cannot be."""
        return self._info

    def _buffers(self) -> dict[str, torch.Tensor]:
        return vars(self._local).setdefault("buffers", {})  # this thread's

    def buffer(self, name: str, numel: int) -> torch.Tensor:
        """An fp32 scratch buffer reused across calls (fresh pages fault slowly on the CPU), one
        for each thread: two threads calling a kernel at once must not share its scratch."""
        buffers = self._buffers()
        buf = buffers.get(name)
        if buf is None or buf.numel() < numel:
            buf = buffers[name] = torch.empty(max(numel, 1), dtype=torch.float32)
        return buf[:numel]

    def scratch_ptr(self, name: str, numel: int) -> int:
        """The address of buffer(name, numel), without making a view (~3 us a call saved)."""
        buf = self._buffers().get(name)
        if buf is None or buf.numel() < numel:
            buf = self.buffer(name, numel)
        return buf.data_ptr()
