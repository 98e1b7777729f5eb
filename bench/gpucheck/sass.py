"""Static cost of the Triton GEMV kernels, with no GPU: compile each config for sm_90 (Triton's own
compiler and ptxas, no driver needed), disassemble the cubin (cuobjdump from Triton's wheel),
and count the warp instructions of the hot loop per weight code.

    python -m bench.gpucheck.sass                 # every GEMV kernel, its M = 1 configs, bf16
    python -m bench.gpucheck.sass --op gemv_w4 --gbps 3350
    python -m bench.gpucheck.sass --dot           # the tl.dot paths at M = 16
    python -m bench.gpucheck.sass --compile-all   # every config of every path compiles for sm_90

Why: a memory-bound kernel must also issue its instructions in time. An SM issues at most 4 warp
instructions a clock; at the roof it must consume R / (SMs x clock) bytes a clock, so a kernel
spending more than 4 x SMs x clock x (bytes a code) / R warp instructions a code cannot reach the
roof however its loads behave. The count is a ceiling, not a prediction (latency, occupancy and
the DRAM itself come on top): on an H200 the first INT4 kernel counted 0.42 (ceiling 30% of
roof) and ran at 14-16% (results/h200/20261128-064357-*).
"""
from __future__ import annotations

import argparse
import collections
import inspect
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

# The sm_90 part the ceiling is computed for, by its datasheet (not read from a device: there is
# none here): H100 SXM and H200, 132 SMs at up to 1980 MHz. The code compiled for sm_90 is the same
# on every sm_90 part; only this ceiling depends on the part's SM count and clock.
SM90_TARGET_SMS, SM90_TARGET_CLOCK_HZ = 132, 1.98e9
DEFAULT_GBPS = 4800.0  # H200 datasheet; pass --gbps for another card or a measured roof


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

    def ceiling_pct(self, gbps: float, bytes_per_code: float) -> float:
        """The % of `gbps` the issue rate allows at this count (4 warp instructions a clock)."""
        codes_per_clock = gbps * 1e9 / bytes_per_code / (SM90_TARGET_SMS * SM90_TARGET_CLOCK_HZ)
        return min(100.0, 100.0 * 4 / codes_per_clock / self.per_code)


def _tools() -> str:
    import triton
    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    if not os.path.exists(os.path.join(bin_dir, "cuobjdump")):
        raise RuntimeError(f"no cuobjdump in Triton's wheel ({bin_dir}): needs Triton's NVIDIA backend")
    return bin_dir


def compile_sm90(fn: Any, types: dict[str, str], const: dict[str, Any], num_warps: int,
                 num_stages: int, div16: tuple[str, ...]) -> Any:
    """Compile a @triton.jit function for sm_90 as a launch with 16-byte aligned pointers and
    strides would (Triton specializes those; the loads' vector width depends on it)."""
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
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def hot_loop(kernel: Any) -> tuple[list[str], int | None]:
    """The instructions of the longest backward-branch loop in the kernel's SASS, and its
    register count."""
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
    best: list[str] = []
    for addr, ins in lines:
        m = re.search(r"BRA\s+(?:`\(\.L_x_\d+\)\s*)?0x([0-9a-f]+)", ins)
        if m and int(m.group(1), 16) < addr:
            body = [x for a, x in lines if int(m.group(1), 16) <= a <= addr]
            best = body if len(body) > len(best) else best
    regs = re.search(r"REG:(\d+)", res)
    return best, int(regs.group(1)) if regs else None


def _opcode(ins: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", ins).split()[0].split(".")[0]


def _plans(op: str, dtype: str) -> list[tuple[str, Any, dict, dict, tuple, list]]:
    """(op, jit fn, runtime arg types, M = 1 constexprs, 16-byte aligned args, configs)."""
    from kernels.gemv import TRITON_KERNELS as tk
    plans = []
    if op in ("all", "gemv_w4"):
        t = dict(x_ptr=f"*{dtype}", q_ptr="*u8", s_ptr=f"*{dtype}", z_ptr=f"*{dtype}",
                 y_ptr=f"*{dtype}", ws_ptr="*fp32", M="i32", N="i32", K="i32", stride_xm="i32",
                 stride_qn="i32", stride_sn="i32", stride_ym="i32")
        plans.append(("gemv_w4", tk["gemv_w4"].jit_fn, t,
                      dict(G=128, BLOCK_M=1, SPLIT_K=1, USE_DOT=False, IEEE=False),
                      tuple(k for k in t if k not in ("M", "N")), tk["gemv_w4"].configs_for(False)))
    if op in ("all", "gemv_w8"):
        t = dict(x_ptr=f"*{dtype}", q_ptr="*i8", s_ptr=f"*{dtype}", y_ptr=f"*{dtype}",
                 ws_ptr="*fp32", M="i32", N="i32", K="i32", stride_xm="i32", stride_qn="i32",
                 stride_ym="i32")
        plans.append(("gemv_w8", tk["gemv_w8"].jit_fn, t,
                      dict(BLOCK_M=1, WORDS=True, SPLIT_K=1, USE_DOT=False, IEEE=False),
                      tuple(k for k in t if k not in ("M", "N")), tk["gemv_w8"].configs_for(False)))
    if op in ("all", "gemv_bf16"):
        t = dict(x_ptr=f"*{dtype}", w_ptr=f"*{dtype}", y_ptr=f"*{dtype}", M="i32", N="i32",
                 K="i32", stride_xm="i32", stride_wn="i32", stride_ym="i32")
        plans.append(("gemv_bf16", tk["gemv_bf16"].jit_fn, t,
                      dict(BLOCK_M=1, USE_DOT=False, IEEE=False),
                      tuple(k for k in t if k not in ("M", "N")), tk["gemv_bf16"].configs_for(False)))
    return plans


def path_configs(name: str, use_dot: bool, block_m: int) -> list:
    """The configs a launch of op `name`'s Triton kernel tunes over on one path (the bf16
    GEMV's also depend on BLOCK_M)."""
    from kernels.gemv import TRITON_KERNELS
    kern = TRITON_KERNELS[name]
    return kern.configs_for(use_dot, block_m) if name == "gemv_bf16" else kern.configs_for(use_dot)


def count(op: str = "all", dtype: str = "bf16", first: int | None = None,
          dot: bool = False) -> list[LoopCount]:
    """Hot-loop warp instructions per code for each M = 1 config (the first `first` of each)
    of the op's Triton kernel; `dot`: its tl.dot path's configs at M = 16 instead."""
    from kernels.triton_util import describe
    out = []
    for name, fn, types, const, aligned, configs in _plans(op, dtype):
        if dot:
            const = {**const, "BLOCK_M": 16, "USE_DOT": True}
            configs = path_configs(name, True, 16)
        for cfg in configs[:first]:
            k = compile_sm90(fn, types, {**const, **cfg.kwargs}, cfg.num_warps, cfg.num_stages,
                             aligned)
            body, regs = hot_loop(k)
            # codes a pass: the INT4 tl.dot path takes one group a step, the others BLOCK_K
            step = const["G"] if dot and name == "gemv_w4" else cfg.kwargs["BLOCK_K"]
            codes = cfg.kwargs["BLOCK_N"] * step
            c = collections.Counter(_opcode(i) for i in body)
            out.append(LoopCount(name, describe(cfg), len(body) * cfg.num_warps / codes,
                                 len(body), regs, c.most_common(8), c["BAR"],
                                 sum(c[o] for o in ("STS", "LDS", "STSM", "LDSM"))))
    return out


BYTES_PER_CODE = {"gemv_w4": 0.5, "gemv_w8": 1.0, "gemv_bf16": 2.0}


def compile_all(dtypes: tuple[str, ...] = ("bf16", "fp32")) -> tuple[int, list[str]]:
    """Compile every config of every path (GEMV at M = 1 and 4, tl.dot at M = 16; INT4 at
    G = 32, 128, 256; INT8 on words and on bytes) for sm_90: (compiled, failures). What the
    tuner may pick on a GPU must at least compile there, and CI has no GPU to find out."""
    from kernels.triton_util import describe
    ok, bad = 0, []
    for dtype in dtypes:
        for name, fn, types, const, aligned, _ in _plans("all", dtype):
            for use_dot, bm in ((False, 1), (False, 4), (True, 16)):
                variants = [{"G": g} for g in (32, 128, 256)] if name == "gemv_w4" else \
                    [{"WORDS": w} for w in (True, False)] if name == "gemv_w8" and not use_dot else [{}]
                configs = path_configs(name, use_dot, bm)
                for var in variants:
                    for cfg in configs:
                        c = {**const, "BLOCK_M": bm, "USE_DOT": use_dot, "IEEE": dtype == "fp32",
                             **var, **cfg.kwargs}
                        try:
                            compile_sm90(fn, types, c, cfg.num_warps, cfg.num_stages, aligned)
                            ok += 1
                        except Exception as e:
                            bad.append(f"{name} {dtype} M={bm} dot={use_dot} {var} {describe(cfg)}: "
                                       f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    return ok, bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpucheck.sass",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--op", default="all", choices=["all", "gemv_w4", "gemv_w8", "gemv_bf16"])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    p.add_argument("--gbps", type=float, default=DEFAULT_GBPS,
                   help=f"bandwidth the ceiling is taken against (default {DEFAULT_GBPS:.0f}, H200 datasheet)")
    p.add_argument("--configs", type=int, metavar="N", help="only the first N configs of each kernel")
    p.add_argument("--dot", action="store_true",
                   help="count the tl.dot path (M = 16) instead of the GEMV path (M = 1)")
    p.add_argument("--compile-all", action="store_true",
                   help="compile every config of every path for sm_90 (bf16, fp32) and list failures "
                        "(~15 minutes on 2 cores)")
    args = p.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # before kernels/ is imported: compile, not interpret
    from kernels import triton_util
    if triton_util.INTERPRET or not triton_util.HAS_TRITON:
        print("bench.gpucheck.sass: needs Triton, with kernels/ imported without TRITON_INTERPRET=1",
              file=sys.stderr)
        return 2
    if args.compile_all:
        ok, bad = compile_all()
        print(f"compiled {ok} kernel variants for sm_90, {len(bad)} failed")
        for line in bad:
            print("  FAIL", line)
        return 1 if bad else 0
    try:
        rows = count(args.op, args.dtype, args.configs, args.dot)
    except Exception as e:  # no NVIDIA backend, no ptxas: one line, not a traceback
        print(f"bench.gpucheck.sass: cannot compile for sm_90 here: {type(e).__name__}: {str(e).splitlines()[0]}",
              file=sys.stderr)
        return 2
    print(f"hot-loop warp instructions per code, sm_90, {'M = 16, tl.dot' if args.dot else 'M = 1'}, "
          f"{args.dtype}; ceiling = % of "
          f"{args.gbps:.0f} GB/s that 4 warp instructions a clock on {SM90_TARGET_SMS} SMs at "
          f"{SM90_TARGET_CLOCK_HZ / 1e9:.2f} GHz allow")
    for r in sorted(rows, key=lambda r: (r.op, r.per_code)):
        top = " ".join(f"{o}:{n}" for o, n in r.top)
        print(f"  {r.op:9s} {r.config:50s} {r.per_code:6.3f}  ceiling {r.ceiling_pct(args.gbps, BYTES_PER_CODE[r.op]):5.1f}%"
              f"  regs {r.regs}  bar {r.barriers} smem {r.smem}  {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
