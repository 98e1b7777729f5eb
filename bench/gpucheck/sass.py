"""Static cost of the Triton GEMV kernels, with no GPU: compile each config for sm_90 (Triton's own
compiler and ptxas, no driver needed), disassemble the cubin (cuobjdump from Triton's wheel),
and count the warp instructions of the hot loop per weight code.

    python -m bench.gpucheck.sass                 # every GEMV kernel, its M = 1 configs, bf16
    python -m bench.gpucheck.sass --op gemv_w4 --gbps 3350
    python -m bench.gpucheck.sass --dot           # the tl.dot paths at M = 16
    python -m bench.gpucheck.sass --compile-all   # every config of every path compiles for sm_90
    python -m bench.gpucheck.sass --compile-all --arch 80     # ... for an A100 (gfx942: MI300X)

Why: a memory-bound kernel must also issue its instructions in time. An SM issues at most 4 warp
instructions a clock; at the roof it must consume R / (SMs x clock) bytes a clock, so a kernel
spending more than 4 x SMs x clock x (bytes a code) / R warp instructions a code cannot reach the
roof however its loads behave. The count is a ceiling, not a prediction (latency, occupancy and
the DRAM itself come on top): on an H200 the first INT4 kernel counted 0.42 (ceiling 30% of
roof) and ran at 14-16% (results/h200/20261128-064357-*).

Latency and occupancy are counted too, from the same compile: registers and spills (ptxas's
spill bytes are the bytes of the local-memory stores and loads, STL/LDL, in the SASS), the CTAs
an SM holds (the CUDA occupancy calculator's rules with Hopper's limits), and the bytes of weights
those CTAs have requested when each first waits, against what Little's law asks of an SM to keep
the bandwidth flowing: bandwidth / SMs x DRAM latency. docs/kernels.md has the figures' sources.

    python -m bench.gpucheck.sass --out results/sass-sm90   # writes results/sass-sm90{,-dot}.txt
"""
from __future__ import annotations

import collections
import contextlib
import datetime
import inspect
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any
from bench.errors import OneLineParser

# The sm_90 part the ceiling is computed for, by its datasheet (not read from a device: there is
# none here): H100 SXM and H200, 132 SMs at up to 1980 MHz. The code compiled for sm_90 is the same
# on every sm_90 part; only this ceiling depends on the part's SM count and clock.
SM90_TARGET_SMS, SM90_TARGET_CLOCK_HZ = 132, 1.98e9
DEFAULT_GBPS = 4800.0  # H200 datasheet; pass --gbps for another card or a measured roof

# Compute capability 9.0's per-SM limits, from the CUDA C++ Programming Guide's "Technical
# Specifications per Compute Capability" table: 64K 32-bit registers an SM and a CTA, 255 a
# thread, 64 resident warps and 32 resident CTAs an SM, 228 KiB of shared memory an SM and at most
# 227 KiB a CTA. How they are allocated is the CUDA occupancy calculator's (cuda_occupancy.h,
# cudaOccMaxBlocksPerSMRegsLimit / SmemLimit): a warp's registers are rounded up to 256 and lie
# in one of the SM's 4 sub-partitions, each a quarter of the register file (so warps fit per
# sub-partition, not per SM); a CTA's shared memory is its own plus the 1 KiB the driver reserves
# for every CTA, rounded up to 128 bytes.
SM90_REGS_PER_SM = 65536
SM90_REGS_PER_CTA = 65536
SM90_MAX_REGS_PER_THREAD = 255
SM90_REG_ALLOC_UNIT = 256  # registers, a warp's allocation granularity
SM90_SUBPARTITIONS = 4
SM90_MAX_WARPS_PER_SM = 64
SM90_MAX_CTAS_PER_SM = 32
SM90_SMEM_PER_SM = 228 * 1024
SM90_SMEM_PER_CTA = 227 * 1024
SM90_SMEM_RESERVED_PER_CTA = 1024
SM90_SMEM_ALLOC_UNIT = 128
WARP = 32

# DRAM latency for Little's law: a one-warp pointer chase on an H100 PCIe (te42kyfo/gpu-benches,
# gpu-latency/h100_pcie.txt) levels off at 650-658 cycles at 1755 MHz, 370-375 ns, for working
# sets from 125 MB to 1.5 GB. That is the idle latency; a loaded memory system answers later, so
# the bytes this asks for are a floor. No H200 figure is published; its HBM3e is assumed alike.
DRAM_LATENCY_NS = 370.0


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def ctas_per_sm(regs: int, warps: int, smem: int) -> tuple[int, str]:
    """How many CTAs of `warps` warps, `regs` registers a thread and `smem` bytes of shared memory
    one sm_90 SM holds at once, and which limit binds ('regs', 'smem', 'warps' or 'ctas'; 0 CTAs:
    the CTA does not fit at all). Fewer CTAs, fewer loads in flight to hide DRAM latency."""
    reg_warp = _round_up(regs * WARP, SM90_REG_ALLOC_UNIT)
    # the launch check assumes a CTA's warps spread over all 4 sub-partitions
    fits = (regs <= SM90_MAX_REGS_PER_THREAD and reg_warp * warps <= SM90_REGS_PER_CTA
            and reg_warp * _round_up(warps, SM90_SUBPARTITIONS) <= SM90_REGS_PER_CTA)
    if not fits:
        by_regs = 0
    elif reg_warp == 0:
        by_regs = SM90_MAX_CTAS_PER_SM
    else:
        warps_per_sub = SM90_REGS_PER_SM // SM90_SUBPARTITIONS // reg_warp
        by_regs = warps_per_sub * SM90_SUBPARTITIONS // warps
    smem_cta = _round_up(smem + SM90_SMEM_RESERVED_PER_CTA, SM90_SMEM_ALLOC_UNIT)
    by_smem = 0 if smem > SM90_SMEM_PER_CTA else SM90_SMEM_PER_SM // smem_cta
    limits = {"regs": by_regs, "smem": by_smem, "warps": SM90_MAX_WARPS_PER_SM // warps,
              "ctas": SM90_MAX_CTAS_PER_SM}
    binding = min(limits, key=lambda k: limits[k])
    return limits[binding], binding


def bytes_needed_per_sm(gbps: float, latency_ns: float = DRAM_LATENCY_NS,
                        sms: int = SM90_TARGET_SMS) -> float:
    """Little's law: the bytes an SM must have requested and not yet received for the chip to
    move `gbps` when each request takes `latency_ns` to come back."""
    return gbps * 1e9 / sms * latency_ns * 1e-9


_LOCAL_WIDTH = {"8": 1, "U8": 1, "S8": 1, "16": 2, "U16": 2, "S16": 2, "64": 8, "128": 16}


def spill_bytes(sass_lines: list[str]) -> tuple[int, int]:
    """(store, load) bytes of the local-memory instructions (STL, LDL) in SASS: what ptxas -v
    reports as spill stores and loads (Triton kernels keep no arrays in local memory)."""
    st = ld = 0
    for ins in sass_lines:
        m = re.search(r"\b(STL|LDL)((?:\.\w+)*)\s", ins)
        if not m:
            continue
        width = 4
        for mod in m.group(2).split(".")[1:]:
            width = _LOCAL_WIDTH.get(mod, width)
        if m.group(1) == "STL":
            st += width
        else:
            ld += width
    return st, ld


_TTGIR_DTYPE = {"bf16": "bf16", "fp16": "f16", "fp32": "f32"}


def load_depth(ttgir: str, block_n: int, weight_types: tuple[str, ...],
               prefetch: int) -> tuple[int, bool]:
    """(steps of weight tiles a CTA has requested when it first waits for one, whether Triton's
    software pipeliner did it). A load the pipeliner takes (num_stages > 1, in practice a load
    that feeds tl.dot) becomes async copies into a ring of shared-memory buffers, D of them
    (`!ttg.memdesc<D x tile>`), D steps in flight; a load it leaves is issued where the kernel
    writes it: one step, two with the kernel's own PREFETCH (the next step's tile loads while
    this one's is used). The weight tile: a [BLOCK_N, ...] tile of `weight_types`."""
    for m in re.finditer(r"async_copy_global_to_local[^\n]*?tensor<((?:\d+x)+)!tt\.ptr<(\w+)>",
                         ttgir):
        dims, elem = m.group(1).rstrip("x"), m.group(2)
        if elem not in weight_types or int(dims.split("x")[0]) != block_n:
            continue
        ring = re.search(rf"local_alloc\s*:\s*\(\)\s*->\s*!ttg\.memdesc<(\d+)x{dims}x{elem}\b",
                         ttgir)
        if ring:
            return int(ring.group(1)), True
    return 1 + prefetch, False


@dataclass
class LoopCount:
    op: str
    config: str
    per_code: float  # warp instructions of the hot loop per weight code
    loop: int  # warp instructions in one pass of the loop
    regs: int | None
    top: list[tuple[str, int]]
    barriers: int = 0  # BAR in one pass: each stops the whole CTA (layout conversions, mostly)
    smem: int = 0  # shared-memory loads and stores in one pass (STS, LDS, their matrix forms)
    warps: int = 4
    shared: int = 0  # bytes of shared memory a CTA allocates (Triton's metadata)
    spill_st: int = 0  # bytes, whole kernel (ptxas's "spill stores")
    spill_ld: int = 0
    loop_spills: int = 0  # STL/LDL in one pass of the hot loop
    step_bytes: int = 0  # weight bytes one CTA loads a step
    depth: int = 1  # steps of weights requested when the CTA first waits (load_depth)
    pipelined: bool = False

    def ceiling_pct(self, gbps: float, bytes_per_code: float) -> float:
        """The % of `gbps` the issue rate allows at this count (4 warp instructions a clock)."""
        codes_per_clock = gbps * 1e9 / bytes_per_code / (SM90_TARGET_SMS * SM90_TARGET_CLOCK_HZ)
        return min(100.0, 100.0 * 4 / codes_per_clock / self.per_code)

    def occupancy(self) -> tuple[int, str]:
        """CTAs an SM holds and the binding limit ('?' without a register count)."""
        if self.regs is None:
            return 0, "?"
        return ctas_per_sm(self.regs, self.warps, self.shared)

    def in_flight(self) -> int:
        """Weight bytes an SM has requested when its CTAs first wait: a step's tile x the depth
        x CTAs an SM holds (a grid of at least that many CTAs on every SM)."""
        return self.step_bytes * self.depth * self.occupancy()[0]


def _tools() -> str:
    import triton
    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    if not os.path.exists(os.path.join(bin_dir, "cuobjdump")):
        raise RuntimeError(f"no cuobjdump in Triton's wheel ({bin_dir}): needs Triton's NVIDIA backend")
    return bin_dir


def _ptxas() -> Any:
    """Triton's ptxas for sm_90 (`.path`, `.version`); Triton 3.4 and 3.5 take no arch."""
    from triton.backends.nvidia.compiler import get_ptxas
    try:
        return get_ptxas(90)
    except TypeError:
        return get_ptxas()


def missing_toolchain() -> str | None:
    """Why this machine cannot compile and disassemble for sm_90 (no Triton, no NVIDIA backend in
    it, no ptxas or cuobjdump in its wheel, a ptxas that does not run), or None: a compile that
    fails past this check is a failure of the code compiled, not of the machine."""
    try:
        import triton  # noqa: F401
        _tools()
        subprocess.run([_ptxas().path, "--version"], capture_output=True, check=True, timeout=60)
    except Exception as e:
        return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
    return None


def toolchain() -> str:
    """'triton X, ptxas Y': the compiler whose code is counted (its wheel's ptxas)."""
    import triton
    try:
        ptxas = _ptxas().version
    except Exception:  # another Triton layout: the Triton version still says which compiler
        ptxas = "?"
    return f"triton {triton.__version__}, ptxas {ptxas}"


def compile_sm(fn: Any, types: dict[str, str], const: dict[str, Any], num_warps: int,
               num_stages: int, div16: tuple[str, ...], arch: int | str = 90) -> Any:
    """Compile a @triton.jit function for a GPU, as a launch with 16-byte aligned pointers and
    strides would (Triton specializes those; the loads' vector width depends on it). `arch`: an
    NVIDIA compute capability as a number (90: H100, H200; 80: A100) or an AMD gfx target
    ("gfx942": MI300X); Triton's wheel compiles for either without a GPU."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    names = fn.arg_names
    defaults = {p.name: p.default for p in inspect.signature(fn.fn).parameters.values()
                if p.default is not inspect.Parameter.empty}
    const = {**{k: v for k, v in defaults.items() if k not in types}, **const}
    sig = {n: types.get(n, "constexpr") for n in names}
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in div16}
    src = ASTSource(fn, sig, const, attrs)
    target = GPUTarget("hip", arch, 64) if isinstance(arch, str) else GPUTarget("cuda", arch, 32)
    return triton.compile(src, target=target,
                          options={"num_warps": num_warps, "num_stages": num_stages})


def disassemble(kernel: Any) -> tuple[list[tuple[int, str]], int | None]:
    """The kernel's SASS as (address, instruction) pairs, and its register count."""
    bin_dir = _tools()
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
        path = f.name
    try:
        sass = subprocess.run([f"{bin_dir}/cuobjdump", "-sass", path], capture_output=True,
                              text=True, check=True).stdout
        res = subprocess.run([f"{bin_dir}/cuobjdump", "-res-usage", path], capture_output=True,
                             text=True).stdout
    finally:
        os.unlink(path)
    lines = [(int(m.group(1), 16), m.group(2).strip()) for m in
             (re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", ln) for ln in sass.splitlines()) if m]
    regs = re.search(r"REG:(\d+)", res)
    return lines, int(regs.group(1)) if regs else None


def longest_loop(lines: list[tuple[int, str]]) -> list[str]:
    """The instructions of the longest backward-branch loop in the SASS."""
    best: list[str] = []
    for addr, ins in lines:
        m = re.search(r"BRA\s+(?:`\(\.L_x_\d+\)\s*)?0x([0-9a-f]+)", ins)
        if m and int(m.group(1), 16) < addr:
            body = [x for a, x in lines if int(m.group(1), 16) <= a <= addr]
            best = body if len(body) > len(best) else best
    return best


def whole_program(lines: list[tuple[int, str]]) -> list[str]:
    """Every instruction up to the last EXIT, NOPs left out: the count of a kernel without a
    loop (the split-K GEMVs: one K chunk a program), which pays all of it for its one chunk."""
    last = max(i for i, (_, ins) in enumerate(lines) if _opcode(ins) == "EXIT")
    return [ins for _, ins in lines[:last + 1] if _opcode(ins) != "NOP"]


def _opcode(ins: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", ins).split()[0].split(".")[0]


def _plans(op: str, dtype: str) -> list[tuple[str, Any, dict, dict, tuple, list]]:
    """(op, jit fn, runtime arg types, M = 1 constexprs, 16-byte aligned args, configs)."""
    from kernels.gemv import TRITON_KERNELS as tk
    plans = []
    if op in ("all", "gemv_w4"):
        t = dict(x_ptr=f"*{dtype}", q_ptr="*u8", s_ptr=f"*{dtype}", z_ptr=f"*{dtype}",
                 y_ptr=f"*{dtype}", ws_ptr="*fp32", lock_ptr="*i32", M="i32", N="i32", K="i32",
                 stride_xm="i32", stride_qn="i32", stride_sn="i32", stride_ym="i32")
        plans.append(("gemv_w4", tk["gemv_w4"].jit_fn, t,
                      dict(G=128, BLOCK_M=1, SPLIT_K=1, USE_DOT=False, IEEE=False),
                      tuple(k for k in t if k not in ("M", "N")), tk["gemv_w4"].configs_for(False)))
        t = dict(x_ptr=f"*{dtype}", q_ptr="*u8", s_ptr=f"*{dtype}", z_ptr=f"*{dtype}",
                 ws_ptr="*fp32", y_ptr=f"*{dtype}", lock_ptr="*i32", N="i32", K="i32",
                 stride_xm="i32", stride_qn="i32", stride_sn="i32", stride_ym="i32")
        plans.append(("gemv_w4_splitk", tk["gemv_w4_splitk"].jit_fn, t, dict(M=1, G=128),
                      tuple(k for k in t if k != "N"), tk["gemv_w4_splitk"].configs_for(False)))
    if op in ("all", "gemv_w8"):
        t = dict(x_ptr=f"*{dtype}", q_ptr="*i8", s_ptr=f"*{dtype}", y_ptr=f"*{dtype}",
                 ws_ptr="*fp32", lock_ptr="*i32", M="i32", N="i32", K="i32", stride_xm="i32",
                 stride_qn="i32", stride_ym="i32")
        plans.append(("gemv_w8", tk["gemv_w8"].jit_fn, t,
                      dict(BLOCK_M=1, WORDS=True, SPLIT_K=1, USE_DOT=False, IEEE=False),
                      tuple(k for k in t if k not in ("M", "N")), tk["gemv_w8"].configs_for(False)))
        t = dict(x_ptr=f"*{dtype}", q_ptr="*i8", s_ptr=f"*{dtype}", ws_ptr="*fp32",
                 y_ptr=f"*{dtype}", lock_ptr="*i32", N="i32", K="i32", stride_xm="i32",
                 stride_qn="i32", stride_ym="i32")
        plans.append(("gemv_w8_splitk", tk["gemv_w8_splitk"].jit_fn, t, dict(M=1),
                      tuple(k for k in t if k != "N"), tk["gemv_w8_splitk"].configs_for(False)))
    if op in ("all", "gemv_bf16"):
        t = dict(x_ptr=f"*{dtype}", w_ptr=f"*{dtype}", y_ptr=f"*{dtype}", M="i32", N="i32",
                 K="i32", stride_xm="i32", stride_wn="i32", stride_ym="i32")
        plans.append(("gemv_bf16", tk["gemv_bf16"].jit_fn, t,
                      dict(BLOCK_M=1, USE_DOT=False, IEEE=False),
                      tuple(k for k in t if k not in ("M", "N")), tk["gemv_bf16"].configs_for(False)))
        t = dict(x_ptr=f"*{dtype}", w_ptr=f"*{dtype}", ws_ptr="*fp32", y_ptr=f"*{dtype}",
                 lock_ptr="*i32", N="i32", K="i32", stride_xm="i32", stride_wn="i32",
                 stride_ym="i32")
        plans.append(("gemv_bf16_splitk", tk["gemv_bf16_splitk"].jit_fn, t, dict(M=1),
                      tuple(k for k in t if k != "N"), tk["gemv_bf16_splitk"].configs_for(False)))
    return plans


_TORCH_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def path_configs(name: str, use_dot: bool, block_m: int, dtype: str = "fp32") -> list:
    """The configs a launch of op `name`'s Triton kernel tunes over on one path (the bf16
    GEMV's also depend on BLOCK_M and, on tl.dot, on the element size: its tiles must fit
    shared memory)."""
    import torch

    from kernels.common import esize
    from kernels.gemv import TRITON_KERNELS
    kern = TRITON_KERNELS[name]
    if name == "gemv_bf16":
        return kern.configs_for(use_dot, block_m, esize(getattr(torch, _TORCH_DTYPE[dtype])))
    return kern.configs_for(use_dot)


def tuner_configs(name: str, use_dot: bool, const: dict, dtype: str) -> list:
    """The configs the tuner may time at a launch with these constexprs and x's dtype: the
    path's configs less what the kernel's prune drops (a PK config off M = 1 and bf16, an X3D
    one off M = 1), given a K that every BLOCK_K divides. What is pruned never runs there, so it
    is neither counted nor compiled."""
    import torch

    from kernels.gemv import TRITON_KERNELS
    configs = path_configs(name, use_dot, const.get("BLOCK_M", const.get("M", 1)), dtype)
    prune = getattr(TRITON_KERNELS[name], "early_config_prune", None)
    if prune is None:  # DECODEWALL_AUTOTUNE=0: the kernel is not tuned, nothing is pruned
        return configs
    nargs = {"x_ptr": torch.empty(0, dtype=getattr(torch, _TORCH_DTYPE[dtype])), "K": 1 << 16}
    return prune(configs, nargs, **const)


BYTES_PER_CODE = {"gemv_w4": 0.5, "gemv_w8": 1.0, "gemv_bf16": 2.0, "gemv_w4_splitk": 0.5,
                  "gemv_w8_splitk": 1.0, "gemv_bf16_splitk": 2.0}


def count(op: str = "all", dtype: str = "bf16", first: int | None = None,
          dot: bool = False) -> list[LoopCount]:
    """Hot-loop warp instructions per code, spills, occupancy and loads in flight for each M = 1
    config (the first `first` of each) of the op's Triton kernel; `dot`: its tl.dot path's
    configs at M = 16 instead."""
    from kernels.triton_util import describe
    out = []
    for name, fn, types, const, aligned, _ in _plans(op, dtype):
        if dot:
            const = {**const, "BLOCK_M": 16, "USE_DOT": True}
        configs = tuner_configs(name, dot, const, dtype)
        weight_types = (_TTGIR_DTYPE[dtype],) if name.startswith("gemv_bf16") else ("i8", "i32")
        for cfg in configs[:first]:
            kw = cfg.kwargs
            k = compile_sm(fn, types, {**const, **kw}, cfg.num_warps, cfg.num_stages, aligned)
            lines, regs = disassemble(k)
            body = longest_loop(lines) or whole_program(lines)
            # codes a pass: the INT4 tl.dot path takes one group a step, the others BLOCK_K
            step = const["G"] if dot and name == "gemv_w4" else kw["BLOCK_K"]
            codes = kw["BLOCK_N"] * step
            c = collections.Counter(_opcode(i) for i in body)
            st, ld = spill_bytes([i for _, i in lines])
            depth, piped = load_depth(k.asm["ttgir"], kw["BLOCK_N"], weight_types,
                                      int(kw.get("PREFETCH", 0)))
            out.append(LoopCount(name, describe(cfg), len(body) * cfg.num_warps / codes,
                                 len(body), regs, c.most_common(8), c["BAR"],
                                 sum(c[o] for o in ("STS", "LDS", "STSM", "LDSM")),
                                 warps=cfg.num_warps, shared=int(k.metadata.shared),
                                 spill_st=st, spill_ld=ld, loop_spills=c["STL"] + c["LDL"],
                                 step_bytes=int(codes * BYTES_PER_CODE[name]), depth=depth,
                                 pipelined=piped))
    return out


def for_arch(configs: list, arch: int | str) -> list:
    """The configs a tuner times on a GPU of `arch` (compile_sm's): below sm_90 without the INT4
    PK configs, as the prunes leave them out there; for an AMD target the PTX-free twins a ROCm
    build tunes."""
    from kernels.gemv.triton_common import ptx_free
    from kernels.gemv.triton_w4 import PK_MIN_CAPABILITY
    if isinstance(arch, str):
        return ptx_free(configs, ptx=False)
    if divmod(arch, 10) < PK_MIN_CAPABILITY:
        return [c for c in configs if not c.kwargs.get("PK")]
    return configs


def compile_all(dtypes: tuple[str, ...] = ("bf16", "fp32"),
                arch: int | str = 90) -> tuple[int, list[str], list[str]]:
    """Compile every config the tuner may time on every path (GEMV at M = 1 and 4, tl.dot at
    M = 16; INT4 at G = 32, 128, 256; INT8 on words and on bytes) for sm_90, or another `arch`
    (for_arch's configs): (compiled, failures, spilling; spills of NVIDIA code only, which
    cuobjdump reads). What the tuner may pick on a GPU must at least compile there, and CI has
    no GPU to find out."""
    from kernels.triton_util import describe
    ok, bad, spills = 0, [], []
    for dtype in dtypes:
        for name, fn, types, const, aligned, _ in _plans("all", dtype):
            for use_dot, bm in ((False, 1), (False, 4), (True, 16)):
                if use_dot and name.endswith("_splitk"):  # batch 1-4 only: no tl.dot path
                    continue
                variants = [{"G": g} for g in (32, 128, 256)] if name.startswith("gemv_w4") else \
                    [{"WORDS": w} for w in (True, False)] if name == "gemv_w8" and not use_dot else [{}]
                for var in variants:
                    c0 = {**const, "BLOCK_M": bm, "USE_DOT": use_dot, "IEEE": dtype == "fp32", **var}
                    if name.endswith("_splitk"):  # batch rows as a constexpr, one path
                        c0 = {**const, "M": bm, **var}
                    for cfg in for_arch(tuner_configs(name, use_dot, c0, dtype), arch):
                        c = {**c0, **cfg.kwargs}
                        what = f"{name} {dtype} M={bm} dot={use_dot} {var} {describe(cfg)}"
                        try:
                            k = compile_sm(fn, types, c, cfg.num_warps, cfg.num_stages, aligned,
                                           arch=arch)
                            ok += 1
                        except Exception as e:
                            bad.append(f"{what}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                            continue
                        if isinstance(arch, str):
                            continue
                        st, ld = spill_bytes([i for _, i in disassemble(k)[0]])
                        if st or ld:
                            spills.append(f"{what}: spill stores {st} B, loads {ld} B")
    return ok, bad, spills


ATTN_IMPLS = ("triton_onepass", "triton_splitkv", "triton_splitkv_fused", "triton")
ATTN_ALIGNED = ("q_ptr", "k_ptr", "v_ptr", "bt_ptr", "o_ptr", "out_ptr", "stride_qb", "stride_qh",
                "stride_kb", "stride_ks", "stride_kh", "stride_btb", "stride_ob", "stride_oh",
                "stride_os", "split_tokens")


def attention_variants(dtypes: tuple[str, ...] = ("bf16", "fp32")) -> list[tuple]:
    """(description, jit fn, arg types, constexprs, warps, stages, 16-byte aligned args) for each
    distinct compile of the Triton paged-attention kernels that the CUDA `attention` suite and the
    device check's cases ask for: each case, each Triton impl (its split count on 132 SMs, and
    its merge: in the last split, or the reduction kernel), q in each of `dtypes` (INT8 KV for
    paged_attention_kv8), each config the kernel's prune keeps for an sm_90 block."""
    import torch

    import kernels.attention.triton_paged as tp
    from bench.suites import ATTN_OPS, SuiteContext, cases_for, gpu_check_cases
    from kernels.attention import TRITON_KERNELS
    from kernels.triton_util import describe
    attn, reduction = TRITON_KERNELS["paged_attention"], TRITON_KERNELS["splitkv_reduce"]
    ctx = SuiteContext("cuda")
    cases = [c for c in cases_for("attention", ctx) + gpu_check_cases(ctx) if c.op in ATTN_OPS]
    strides = [n for n in attn.arg_names if n.startswith("stride")]
    out, seen = [], set()

    def put(what: str, fn: Any, types: dict, const: dict, warps: int, stages: int,
            aligned: tuple) -> None:
        key = (fn.__name__, tuple(sorted(types.items())), tuple(sorted(const.items())), warps,
               stages)
        if key not in seen:
            seen.add(key)
            out.append((what, fn, types, const, warps, stages, aligned))

    for c in cases:
        s = c.shape
        kv8 = c.op == "paged_attention_kv8"
        for dtype in dtypes:
            kv = "i8" if kv8 else dtype
            for impl in ATTN_IMPLS:
                if c.impls is not None and impl not in c.impls:
                    continue
                splits, fused = tp.splits_for(impl, s.B, s.Hkv, s.max_blocks, s.block_size,
                                              SM90_TARGET_SMS)
                plan = tp.launch_plan(s.B, s.Hq, s.Hkv, s.D, s.block_size, s.max_blocks, kv8,
                                      dtype == "fp32", splits, fused)
                const = plan["const"]
                split = const["NUM_SPLITS"] > 1
                o = "*fp32" if split else f"*{dtype}"  # one pass: o, ml and out are `out`
                types = {"q_ptr": f"*{dtype}", "k_ptr": f"*{kv}", "v_ptr": f"*{kv}",
                         "ks_ptr": f"*{dtype if kv8 else kv}", "vs_ptr": f"*{dtype if kv8 else kv}",
                         "bt_ptr": "*i32", "sl_ptr": "*i32", "o_ptr": o, "ml_ptr": o,
                         "out_ptr": f"*{dtype}", "lock_ptr": "*i32", "scale_log2": "fp32",
                         "split_tokens": "i32", "n_programs": "i32",
                         **{n: "i32" for n in strides}}
                q_dtype = getattr(torch, _TORCH_DTYPE[dtype])
                configs = tp.configs_for(q_dtype, torch.int8 if kv8 else q_dtype, s.D,
                                         const["G_PAD"])
                where = (f"{c.op} {dtype} {impl} B={s.B} context={s.context} Hq={s.Hq} "
                         f"Hkv={s.Hkv} D={s.D}: NUM_SPLITS={const['NUM_SPLITS']} "
                         f"FUSED={const['FUSED']}")
                for cfg in configs:
                    put(f"{where} {describe(cfg)}", attn, types,
                        {**const, **cfg.kwargs}, cfg.num_warps, cfg.num_stages, ATTN_ALIGNED)
                if plan["reduce"] is not None:  # launched with Triton's defaults
                    rtypes = {"part_ptr": "*fp32", "ml_ptr": "*fp32", "o_ptr": f"*{dtype}",
                              **{n: "i32" for n in ("stride_pb", "stride_ph", "stride_ps",
                                                    "stride_ob", "stride_oh")}}
                    put(f"{where} reduction kernel, warps=4, stages=3",
                        reduction, rtypes, plan["reduce"]["const"], 4, 3,
                        tuple(rtypes))
    return out


def compile_attention(dtypes: tuple[str, ...] = ("bf16", "fp32"),
                      arch: int | str = 90) -> tuple[int, list[str], list[str]]:
    """Compile every attention_variants() kernel for sm_90, or another `arch`: (compiled,
    failures, spilling). On sm_90 a variant that needs more shared memory than a block has is a
    failure: Triton compiles it, and its launch would fail on the GPU (elsewhere the variants
    are sm_90's, and the prune drops at run time what the device's blocks cannot hold)."""
    ok, bad, spills = 0, [], []
    for what, fn, types, const, warps, stages, aligned in attention_variants(dtypes):
        try:
            k = compile_sm(fn, types, const, warps, stages, aligned, arch=arch)
        except Exception as e:
            bad.append(f"{what}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        if arch == 90 and int(k.metadata.shared) > SM90_SMEM_PER_CTA:
            bad.append(f"{what}: needs {int(k.metadata.shared)} B of shared memory, an sm_90 "
                       f"block has {SM90_SMEM_PER_CTA}")
            continue
        ok += 1
        if isinstance(arch, str):  # cuobjdump reads NVIDIA code only
            continue
        st, ld = spill_bytes([i for _, i in disassemble(k)[0]])
        if st or ld:
            spills.append(f"{what}: spill stores {st} B, loads {ld} B")
    return ok, bad, spills


def _kib(n: float) -> str:
    return f"{n / 1024:.1f}"


def report(rows: list[LoopCount], gbps: float, dtype: str, dot: bool,
           latency_ns: float = DRAM_LATENCY_NS) -> list[str]:
    """The table: one line a config, sorted by op and count, and a line on spills."""
    need = bytes_needed_per_sm(gbps, latency_ns)
    out = [
        f"hot-loop warp instructions per code (a kernel without a loop, split-K: its whole "
        f"program), sm_90, {'M = 16, tl.dot' if dot else 'M = 1'}, {dtype}; {toolchain()}",
        f"ceiling = % of {gbps:.0f} GB/s that 4 warp instructions a clock on {SM90_TARGET_SMS} SMs "
        f"at {SM90_TARGET_CLOCK_HZ / 1e9:.2f} GHz allow",
        "regs a thread; spill = ptxas's spill store/load bytes (STL/LDL in the SASS); CTAs/SM and "
        "the limit that binds (regs, smem, warps, ctas), shared = a CTA's shared memory",
        f"in flight = weight bytes an SM has requested when its CTAs first wait: a step's tile x "
        f"depth (p: Triton's pipeliner, else 1 + PREFETCH) x CTAs/SM; need (Little's law) = "
        f"{gbps:.0f} GB/s / {SM90_TARGET_SMS} SMs x {latency_ns:.0f} ns DRAM latency = "
        f"{_kib(need)} KiB an SM (KiB = 1024 B)",
        "bar / smem: barriers and shared-memory ops in one pass of the loop; then its 8 commonest "
        "opcodes",
    ]
    for r in sorted(rows, key=lambda r: (r.op, r.per_code)):
        ctas, limit = r.occupancy()
        spill = f"spill {r.spill_st}/{r.spill_ld}" if not (r.spill_st or r.spill_ld) else \
            f"SPILL {r.spill_st}/{r.spill_ld} B ({r.loop_spills} in loop)"
        have = r.in_flight()
        top = " ".join(f"{o}:{n}" for o, n in r.top)
        out.append(
            f"  {r.op:9s} {r.config:50s} {r.per_code:6.3f}  ceiling "
            f"{r.ceiling_pct(gbps, BYTES_PER_CODE[r.op]):5.1f}%  regs {r.regs}  {spill}  "
            f"CTAs/SM {ctas} {limit:5s} shared {_kib(r.shared):>5s} KiB  in flight "
            f"{_kib(r.step_bytes)} KiB x {r.depth}{'p' if r.pipelined else ''} x {ctas} = "
            f"{_kib(have)} KiB, need {_kib(need)}: {have / need:.2f}x  bar {r.barriers} smem {r.smem}  {top}")
    spilling = [r for r in rows if r.spill_st or r.spill_ld]
    out.append(f"spills: {'none' if not spilling else len(spilling)} of {len(rows)} configs"
               + "".join(f"\n  SPILL {r.op} {r.config}" for r in spilling))
    return out




def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m bench.gpucheck.sass",
                      description=(__doc__ or "").split("\n\n")[0])  # None under -OO
    p.add_argument("--op", default="all", choices=["all", "gemv_w4", "gemv_w8", "gemv_bf16"])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    p.add_argument("--gbps", type=float, default=DEFAULT_GBPS,
                   help=f"bandwidth the ceiling and Little's law are taken against (default "
                        f"{DEFAULT_GBPS:.0f}, H200 datasheet)")
    p.add_argument("--latency-ns", type=float, default=DRAM_LATENCY_NS,
                   help=f"DRAM latency for Little's law (default {DRAM_LATENCY_NS:.0f} ns, an H100's "
                        f"idle latency: docs/kernels.md)")
    p.add_argument("--configs", type=int, metavar="N", help="only the first N configs of each kernel")
    p.add_argument("--dot", action="store_true",
                   help="count the tl.dot path (M = 16) instead of the GEMV path (M = 1)")
    p.add_argument("--out", metavar="PREFIX",
                   help="write both paths' tables, M = 1 to PREFIX.txt and tl.dot to PREFIX-dot.txt "
                        "(results/sass-sm90 for the committed ones)")
    p.add_argument("--compile-all", action="store_true",
                   help="compile every config of every GEMV path and every paged-attention variant "
                        "the suites ask for, for sm_90 (bf16, fp32), and list failures and spills "
                        "(~20 minutes on 2 cores)")
    p.add_argument("--arch", default="90", metavar="SM|gfxN",
                   help="with --compile-all: another GPU to compile for, an NVIDIA compute "
                        "capability (80: A100, 89: L4, 120: RTX 5090) or an AMD target (gfx942: "
                        "MI300X), its tuners' configs (no INT4 PK below 90; PTX-free on AMD)")
    args = p.parse_args(argv)
    arch: int | str = int(args.arch) if args.arch.isdigit() else args.arch
    if not (isinstance(arch, int) and 70 <= arch < 1000
            or re.fullmatch(r"gfx[0-9a-f]{3,4}", args.arch)):
        p.error(f"--arch {args.arch!r}: an NVIDIA compute capability such as 80 or 90, or an AMD "
                f"target such as gfx942")
    if arch != 90 and not args.compile_all:
        p.error("--arch goes with --compile-all (the instruction counts are sm_90's)")
    if not (0 < args.gbps < math.inf and 0 < args.latency_ns < math.inf) \
            or (args.configs is not None and args.configs < 1):  # nan, inf: no figure to print
        p.error("--gbps, --latency-ns and --configs must be positive (and finite)")
    paths = [] if not args.out else [f"{args.out}.txt", f"{args.out}-dot.txt"]
    for path in paths:  # refused before minutes of compiling, not after
        folder = os.path.dirname(path) or "."
        if os.path.isdir(path) or not os.path.isdir(folder):
            p.error(f"--out {args.out!r}: cannot write {path!r} "
                    f"({'a folder' if os.path.isdir(path) else 'no folder ' + repr(folder)})")
    os.environ.pop("TRITON_INTERPRET", None)  # before kernels/ is imported: compile, not interpret
    from kernels import triton_util
    if triton_util.INTERPRET or not triton_util.HAS_TRITON:
        print("bench.gpucheck.sass: needs Triton, with kernels/ imported without TRITON_INTERPRET=1",
              file=sys.stderr)
        return 2
    missing = missing_toolchain()
    if missing:  # no NVIDIA backend, no ptxas: one line, not a traceback
        print(f"bench.gpucheck.sass: cannot compile for sm_90 here: {missing}", file=sys.stderr)
        return 2
    if args.compile_all:
        ok, bad, spills = compile_all(arch=arch)
        a_ok, a_bad, a_spills = compile_attention(arch=arch)
        import triton  # an AMD target is not ptxas's: name Triton alone
        target, tools = (arch, f"triton {triton.__version__}") if isinstance(arch, str) else \
            (f"sm_{arch}", toolchain())
        print(f"compiled {ok} GEMV and {a_ok} paged-attention kernel variants for {target} "
              f"({tools}), {len(bad) + len(a_bad)} failed, {len(spills) + len(a_spills)} spill")
        bad, spills = bad + a_bad, spills + a_spills
        for line in bad:
            print("  FAIL", line)
        for line in spills:
            print("  SPILL", line)
        return 1 if bad else 0
    jobs = [(args.dot, None)] if not args.out else list(zip((False, True), paths))
    tables = []  # every table counted before any file is written: a failure leaves none
    for dot, path in jobs:
        try:
            rows = count(args.op, args.dtype, args.configs, dot)
        except Exception as e:  # the tools are there: a kernel or this counter failed
            print(f"bench.gpucheck.sass: counting failed: {type(e).__name__}: "
                  f"{(str(e).splitlines() or [''])[0]}", file=sys.stderr)
            return 1
        lines = report(rows, args.gbps, args.dtype, dot, args.latency_ns)
        if path is None:
            print("\n".join(lines))
            continue
        tables.append((path, lines, len(rows)))
    if tables:
        cmd = " ".join(["python -m bench.gpucheck.sass", *(argv if argv is not None else sys.argv[1:])])
        head = f"# {cmd}   ({datetime.date.today().isoformat()}, {toolchain()})"
        written: list[str] = []
        try:
            for path, lines, n in tables:
                with open(path, "w") as f:
                    written.append(path)
                    f.write("\n".join([head, *lines]) + "\n")
        except OSError as e:  # a full disk, a folder gone meanwhile: no half-written pair left
            for w in written:
                with contextlib.suppress(OSError):
                    os.unlink(w)
            print(f"bench.gpucheck.sass: cannot write {path!r}: {e.strerror or e}", file=sys.stderr)
            return 2
        for path, _, n in tables:
            print(f"wrote {path} ({n} configs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
