"""bench/gpucheck/sass.py: the static issue ceiling, occupancy, Little's law, spill and pipeline
readings (hand-worked cases), and real sm_90 compiles (no GPU)."""
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from bench.gpucheck.sass import (SM90_TARGET_CLOCK_HZ, SM90_TARGET_SMS, LoopCount,
                                 bytes_needed_per_sm, ctas_per_sm, load_depth, main, spill_bytes)
from tests.helpers import REPO


def test_ceiling_is_four_warp_instructions_a_clock():
    # INT4 at 4800 GB/s: 9.6e12 codes/s over 132 SMs at 1.98 GHz = 36.7 codes a clock an SM,
    # so 4 warp instructions a clock allow 0.109 a code
    budget = 4 / (4800e9 / 0.5 / (SM90_TARGET_SMS * SM90_TARGET_CLOCK_HZ))
    assert budget == pytest.approx(0.109, abs=1e-3)
    row = LoopCount("gemv_w4", "", per_code=2 * budget, loop=0, regs=None, top=[])
    assert row.ceiling_pct(4800, 0.5) == pytest.approx(50.0)
    assert LoopCount("gemv_w4", "", budget / 2, 0, None, []).ceiling_pct(4800, 0.5) == 100.0


@pytest.mark.parametrize("regs, warps, smem, want", [
    # 168 regs: 5376 a warp (21 x 256); 16384 a sub-partition holds 3 warps, 12 an SM: 3 CTAs of 4
    (168, 4, 2048, (3, "regs")),
    # 176 regs: 5632 a warp, 2 a sub-partition, 8 an SM: 4 CTAs of 2 warps (65536 / (5632 x 2)
    # over the whole SM would say 5)
    (176, 2, 0, (4, "regs")),
    # 170 regs: 5440 a warp, rounded up to 5632: 2 warps a sub-partition, 2 CTAs of 4 (unrounded: 3)
    (170, 4, 0, (2, "regs")),
    (255, 4, 0, (2, "regs")),  # 8160 -> 8192 a warp, 2 a sub-partition
    (255, 8, 0, (1, "regs")),
    (256, 1, 0, (0, "regs")),  # over 255 a thread: no launch
    # 45666 B + 1 KiB reserved = 46690, rounded to 46720: 233472 / 46720 = 4 CTAs (5 without the
    # reserve, 5 without the rounding); registers would allow 16
    (32, 4, 45666, (4, "smem")),
    (32, 4, 227 * 1024, (1, "smem")),  # the largest a CTA may have: 227 KiB + 1 KiB = 228 KiB
    (32, 4, 227 * 1024 + 1, (0, "smem")),
    # 24 regs: 768 a warp, 21 a sub-partition, 84 an SM: 5 CTAs of 16 warps, but 64 warps an SM
    (24, 16, 0, (4, "warps")),
    (16, 1, 0, (32, "ctas")),  # 32 CTAs an SM at most, however small
])
def test_ctas_per_sm_follows_the_cuda_occupancy_rules(regs, warps, smem, want):
    assert ctas_per_sm(regs, warps, smem) == want


def test_littles_law_need_and_what_a_config_has_in_flight():
    # 4800 GB/s over 132 SMs = 36.36 GB/s an SM; x 370 ns = 13454.5 bytes outstanding an SM
    assert bytes_needed_per_sm(4800, 370) == pytest.approx(13454.545, rel=1e-6)
    assert bytes_needed_per_sm(3350, 600, sms=132) == pytest.approx(3350 * 600 / 132, rel=1e-9)
    # 16 KiB of words a step, loaded where used (depth 1), 3 CTAs an SM (168 regs, 4 warps)
    row = LoopCount("gemv_w4", "", 0.1, 0, 168, [], warps=4, shared=2048, step_bytes=16384)
    assert row.occupancy() == (3, "regs") and row.in_flight() == 49152
    assert row.in_flight() / bytes_needed_per_sm(4800, 370) == pytest.approx(3.653, abs=1e-3)
    # PREFETCH: two steps in flight; 226 regs x 2 warps: 4 CTAs
    row = LoopCount("gemv_w4", "", 0.1, 0, 226, [], warps=2, shared=1024, step_bytes=8192, depth=2)
    assert row.in_flight() == 8192 * 2 * 4
    assert LoopCount("gemv_w4", "", 0.1, 0, None, [], step_bytes=8192).in_flight() == 0


def test_spill_bytes_are_the_local_memory_accesses_by_width():
    sass = ["STL [R1+0x1c], R7", "@P0 STL.64 [R1+0x8], R2", "STL.U8 [R1], R9",
            "LDL.LU R3, [R1+0x4]", "@!P1 LDL.128 R4, [R1+0x10]",
            "LDG.E.128 R4, desc[UR4][R2.64]", "STS [R5], R6", "LDS.64 R2, [R7]", "LDSM.16.M88.4 R8, [R9]"]
    assert spill_bytes(sass) == (4 + 8 + 1, 4 + 16)
    assert spill_bytes(["LDG.E R2, desc[UR4][R4.64]", "STG.E [R2.64], R5"]) == (0, 0)


# TTGIR as Triton 3.6 and 3.9 print it: the INT4 tl.dot loop, its weight bytes and x in rings of 2
_PIPELINED = """
    %b_49 = ttg.local_alloc : () -> !ttg.memdesc<2x64x64xi8, #shared, #smem, mutable> loc(#loc93)
    %xg_50 = ttg.local_alloc : () -> !ttg.memdesc<2x16x128xbf16, #shared1, #smem, mutable> loc(#loc98)
    %b_59 = ttg.async_copy_global_to_local %b_55, %b_56 mask %m other %c : tensor<64x64x!tt.ptr<i8>, #blocked1> -> <64x64xi8, #shared, #smem, mutable> loc(#loc93)
    %xg_69 = ttg.async_copy_global_to_local %xg_65, %xg_66 mask %m other %c {contiguity = 8 : i32} : tensor<16x128x!tt.ptr<bf16>, #blocked> -> <16x128xbf16, #shared1, #smem, mutable> loc(#loc98)
"""
_PLAIN = """
    %words = tt.load %ptrs, %mask, %other : tensor<16x16x16x!tt.ptr<i32>, #blocked>
    %cvt = ttg.local_alloc %x : (tensor<16x64xbf16, #blocked3>) -> !ttg.memdesc<16x64xbf16, #shared2, #smem>
"""


def test_load_depth_reads_the_pipeliners_ring_or_the_kernels_prefetch():
    assert load_depth(_PIPELINED, 64, ("i8", "i32"), 0) == (2, True)
    assert load_depth(_PIPELINED.replace("2x64x64xi8", "3x64x64xi8"), 64, ("i8", "i32"), 0) == (3, True)
    # only x (bf16, 16 rows) is pipelined for a 64-row weight tile: the weights load where used
    assert load_depth(_PIPELINED, 64, ("bf16",), 0) == (1, False)
    assert load_depth(_PIPELINED, 32, ("i8", "i32"), 1) == (2, False)
    assert load_depth(_PLAIN, 16, ("i8", "i32"), 0) == (1, False)
    assert load_depth(_PLAIN, 16, ("i8", "i32"), 1) == (2, False)


def test_ptxas_is_asked_for_sm90_or_taken_without_an_arch(monkeypatch):
    """Triton 3.6 and later take the arch (`get_ptxas(90)`); 3.5 and 3.4 take none: the tool
    runs on both rather than fail at its toolchain check."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    import triton.backends.nvidia.compiler as nv

    from bench.gpucheck.sass import _ptxas
    asked = []

    def with_arch(arch):
        asked.append(arch)
        return "ptxas for sm_%d" % arch

    monkeypatch.setattr(nv, "get_ptxas", with_arch)
    assert _ptxas() == "ptxas for sm_90" and asked == [90]
    monkeypatch.setattr(nv, "get_ptxas", lambda: "ptxas")
    assert _ptxas() == "ptxas"


def test_bad_arguments_are_one_line_and_exit_2(capsys):
    for argv in (["--gbps", "-1"], ["--latency-ns", "0"], ["--configs", "0"], ["--op", "nope"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("python -m bench.gpucheck.sass: "), err


def need_sm90_tools() -> None:
    """Skip where this machine cannot compile for sm_90 (decided before compiling, so that a
    compile that fails is a failure, not a skip)."""
    pytest.importorskip("triton")
    from bench.gpucheck.sass import missing_toolchain
    missing = missing_toolchain()
    if missing:
        pytest.skip(f"cannot compile for sm_90 here: {missing}")


def _compile_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


# A kernel forced to spill (maxnreg), compiled for sm_90 with a fresh cache so that ptxas runs
# and Triton prints its -v report; the SASS count must give ptxas's spill bytes.
_SPILL_PROBE = r'''
import contextlib, io, json, re
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from bench.gpucheck.sass import disassemble, spill_bytes

@triton.jit
def k(x_ptr, y_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    acc = tl.zeros((BLOCK,), tl.float32)
    for i in range(8):
        acc += x * x + i
        x = tl.sqrt(x + acc)
    tl.store(y_ptr + offs, acc)

triton.knobs.nvidia.dump_ptxas_log = True
out = []
for maxnreg in (None, 32):
    opts = {"num_warps": 4, "num_stages": 1, **({"maxnreg": maxnreg} if maxnreg else {})}
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        kern = triton.compile(ASTSource(k, {"x_ptr": "*fp32", "y_ptr": "*fp32", "BLOCK": "constexpr"},
                                        {"BLOCK": 4096}), target=GPUTarget("cuda", 90, 32), options=opts)
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log.getvalue())
    out.append([[int(m.group(1)), int(m.group(2))], list(spill_bytes([i for _, i in disassemble(kern)[0]]))])
print(json.dumps(out))
'''


def test_spill_count_from_sass_matches_ptxas_on_a_real_sm90_compile(tmp_path):
    need_sm90_tools()
    probe = tmp_path / "spill_probe.py"  # @triton.jit wants its source in a file
    probe.write_text(_SPILL_PROBE)
    r = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, cwd=REPO,
                       env=_compile_env(TRITON_CACHE_DIR=str(tmp_path / "cache")), timeout=300)
    assert r.returncode == 0, r.stderr[-800:]
    import json
    (free_ptxas, free_sass), (capped_ptxas, capped_sass) = json.loads(r.stdout.strip().splitlines()[-1])
    assert free_ptxas == free_sass == [0, 0]
    assert capped_ptxas[0] > 0 and capped_ptxas[1] > 0  # 32 registers a thread: it spills
    assert capped_sass == capped_ptxas


@pytest.mark.slow  # a real sm_90 compile
@pytest.mark.parametrize("dot", [False, True], ids=["gemv", "dot"])
def test_counts_one_config_of_the_int4_kernel_for_sm90(dot):
    need_sm90_tools()
    r = subprocess.run([sys.executable, "-m", "bench.gpucheck.sass", "--op", "gemv_w4",
                        "--configs", "1", *(["--dot"] if dot else [])],
                       capture_output=True, text=True, cwd=REPO, env=_compile_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-800:]
    assert ("M = 16, tl.dot" in r.stdout) == dot
    import triton
    assert f"triton {triton.__version__}, ptxas " in r.stdout
    assert "x 370 ns DRAM latency = 13.1 KiB an SM" in r.stdout
    every = [ln for ln in r.stdout.splitlines() if re.match(r"\s+gemv_w4", ln)]
    rows = [ln for ln in every if ln.split()[0] == "gemv_w4"]
    assert len(rows) == 1  # the first config of each design: the word loop, and split-K at M = 1
    assert [ln.split()[0] for ln in every] == (["gemv_w4"] if dot else ["gemv_w4", "gemv_w4_splitk"])
    per_code = float(re.search(r"stages=\d+\s+([\d.]+)\s+ceiling", rows[0]).group(1))
    assert 0.02 < per_code < 1.0  # a loop was found
    bar, smem = map(int, re.search(r"bar (\d+) smem (\d+)", rows[0]).groups())
    assert 0 <= bar <= 64 and 0 <= smem <= 128  # per pass: a layout conversion costs ~2 and ~2
    assert "spill 0/0" in rows[0] and r.stdout.rstrip().endswith(f"spills: none of {len(every)} configs")
    regs = int(re.search(r"regs (\d+)", rows[0]).group(1))
    warps = int(re.search(r"warps=(\d+)", rows[0]).group(1))
    m = re.search(r"CTAs/SM (\d+) (\w+)\s+shared\s+([\d.]+) KiB  in flight ([\d.]+) KiB x (\d)(p?) "
                  r"x (\d+) = ([\d.]+) KiB, need 13.1: ([\d.]+)x", rows[0])
    assert m, rows[0]
    ctas, shared = int(m.group(1)), float(m.group(3)) * 1024
    assert (ctas, m.group(2)) == ctas_per_sm(regs, warps, int(shared)) and ctas >= 1
    assert int(m.group(7)) == ctas
    # the tl.dot path's loads go through Triton's pipeliner (2 buffers at num_stages=3); the
    # GEMV's are issued where the kernel writes them
    assert (int(m.group(5)), m.group(6)) == ((2, "p") if dot else (1, ""))
    have = float(m.group(4)) * int(m.group(5)) * ctas
    assert float(m.group(8)) == pytest.approx(have, abs=0.06)
    assert float(m.group(9)) == pytest.approx(have * 1024 / 13454.5, abs=0.01)
    if not dot:
        assert "FFMA" in rows[0]  # the GEMV's loop: its FMAs among the 8 commonest


def test_out_writes_both_paths_with_the_command_and_toolchain(monkeypatch, tmp_path):
    """--out: the M = 1 table to PREFIX.txt, tl.dot's to PREFIX-dot.txt, each headed by the
    command and the compiler (counting is stubbed)."""
    pytest.importorskip("triton")
    import bench.gpucheck.sass as sass
    monkeypatch.setattr(sass, "toolchain", lambda: "triton 9.9, ptxas 1.2")
    monkeypatch.setattr(sass, "missing_toolchain", lambda: None)  # counting is stubbed
    monkeypatch.setattr(sass, "count", lambda op, dtype, first, dot: [
        LoopCount("gemv_w8", "cfg-dot" if dot else "cfg-gemv", 0.1, 10, 168, [("FFMA", 4)],
                  warps=4, shared=2048, step_bytes=16384)])
    # main drops TRITON_INTERPRET; monkeypatch puts it back afterwards
    monkeypatch.setenv("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "1"))
    from kernels import triton_util
    monkeypatch.setattr(triton_util, "INTERPRET", False)
    prefix = str(tmp_path / "sass-sm90")
    assert main(["--out", prefix]) == 0
    gemv, dot = (open(prefix + s).read().splitlines() for s in (".txt", "-dot.txt"))
    for text, path in ((gemv, "M = 1,"), (dot, "M = 16, tl.dot")):
        assert text[0].startswith(f"# python -m bench.gpucheck.sass --out {prefix}   (")
        assert text[0].endswith(", triton 9.9, ptxas 1.2)") and path in text[1]
    assert "cfg-gemv" in "\n".join(gemv) and "cfg-dot" in "\n".join(dot)


def test_compile_all_walks_every_config_of_every_path(monkeypatch):
    """The enumeration alone (compiling is stubbed): each kernel's configs on each path, INT4 at
    three group sizes, INT8 GEMV on words and bytes, two dtypes; a failure is listed, not raised,
    and so is a variant whose SASS has spill stores or loads."""
    pytest.importorskip("triton")
    import bench.gpucheck.sass as sass
    from kernels import OPS  # noqa: F401  (registers the kernels)
    import kernels.gemv.triton_bf16 as bf
    import kernels.gemv.triton_w4 as w4
    import kernels.gemv.triton_w8 as w8
    seen = []

    def fake_compile(fn, types, const, num_warps, num_stages, aligned, arch=90):
        seen.append((fn, dict(const)))
        if const.get("G") == 256 and const.get("BLOCK_N") == 128:
            raise RuntimeError("out of resources\nmore")
        return dict(const)

    def fake_disassemble(kernel):
        spills = kernel.get("G") == 32 and kernel.get("BLOCK_M") == 4
        return [(0, "FFMA R1, R2, R3, R4"), *([(16, "STL.64 [R1], R2"), (32, "LDL R3, [R1]")]
                                              if spills else [])], 64

    monkeypatch.setattr(sass, "compile_sm", fake_compile)
    monkeypatch.setattr(sass, "disassemble", fake_disassemble)
    ok, bad, spills = sass.compile_all(("bf16", "fp32"))
    import kernels.gemv.triton_splitk as sk
    k4, k8, kb = w4._w4_kernel, w8._w8_kernel, bf._gemv_kernel
    from kernels.gemv import TRITON_KERNELS
    s4, s8 = TRITON_KERNELS["gemv_w4_splitk"], TRITON_KERNELS["gemv_w8_splitk"]
    sb = TRITON_KERNELS["gemv_bf16_splitk"]
    assert sk  # the split-K kernels: M = 1 and 4, INT4 at three group sizes, no tl.dot path
    def per_dtype(esize: int) -> int:
        return (3 * (2 * len(k4.configs_for(False)) + len(k4.configs_for(True)))
                + 2 * 2 * len(k8.configs_for(False)) + len(k8.configs_for(True))
                + len(kb.configs_for(False, 1)) + len(kb.configs_for(False, 4))
                + len(kb.configs_for(True, 16, esize))
                + 3 * 2 * len(s4.configs_for(False)) + 2 * len(s8.configs_for(False))
                + 2 * len(sb.configs_for(False)))
    # bf16's tl.dot path keeps the 16-row tiles that fp32's 4-byte elements push out of shared
    # memory
    assert len(kb.configs_for(True, 16, 2)) > len(kb.configs_for(True, 16, 4))
    assert ok + len(bad) == len(seen) == per_dtype(2) + per_dtype(4)
    assert bad and all("out of resources" in b and "more" not in b for b in bad)
    assert {c["IEEE"] for _, c in seen if "IEEE" in c} == {True, False}
    assert {c["BLOCK_M"] for _, c in seen if "BLOCK_M" in c} == {1, 4, 16}
    assert {c["M"] for _, c in seen if "M" in c} == {1, 4}
    assert len(spills) == 2 * len(k4.configs_for(False))
    assert all("gemv_w4" in s and "M=4" in s and "spill stores 8 B, loads 4 B" in s for s in spills)


def test_compile_all_compiles_only_what_the_tuner_keeps(monkeypatch):
    """Where a kernel is tuned, each path's configs go through its own prune first, with x of
    the variant's dtype, a K that every BLOCK_K divides and the variant's constexprs: a config
    the tuner drops at that batch or dtype (a PK config off M = 1 and bf16) is not compiled."""
    pytest.importorskip("triton")
    import bench.gpucheck.sass as sass
    from kernels.gemv import TRITON_KERNELS
    calls = []

    def keep_first(configs, nargs, **kw):
        calls.append((str(nargs["x_ptr"].dtype), nargs["K"], kw))
        return configs[:1]
    for kern in TRITON_KERNELS.values():
        monkeypatch.setattr(kern, "early_config_prune", keep_first, raising=False)
    compiled = []
    monkeypatch.setattr(sass, "compile_sm",
                        lambda fn, types, const, *a, **kw: compiled.append(const) or const)
    monkeypatch.setattr(sass, "disassemble", lambda k: ([(0, "FFMA R1, R2, R3, R4")], 64))
    ok, bad, _ = sass.compile_all(("fp32",))
    assert ok == len(compiled) == len(calls) and not bad
    assert {d for d, _, _ in calls} == {"torch.float32"}
    assert all(k % 2048 == 0 for _, k, _ in calls)
    assert {kw.get("BLOCK_M", kw.get("M")) for _, _, kw in calls} == {1, 4, 16}
    assert {kw["G"] for _, _, kw in calls if "G" in kw} == {32, 128, 256}


@pytest.mark.parametrize("arch", [80, 120, "gfx942"])
def test_compile_all_for_another_arch_compiles_what_its_tuners_keep(monkeypatch, arch):
    """--arch: every compile is for that target; below sm_90 no INT4 PK config (the prunes leave
    them out there), for an AMD target only PTX-free twins and no cuobjdump (it reads NVIDIA
    code only); sm_120 keeps every config sm_90 does. Attention's sm_90 shared-memory check is
    sm_90's alone."""
    pytest.importorskip("triton")
    import types as pytypes

    import bench.gpucheck.sass as sass
    from kernels import OPS  # noqa: F401  (registers the kernels)
    got, disassembled = [], []

    def fake_compile(fn, types, const, warps, stages, aligned, arch=90):
        got.append((arch, const))
        return pytypes.SimpleNamespace(metadata=pytypes.SimpleNamespace(shared=1 << 30))
    monkeypatch.setattr(sass, "compile_sm", fake_compile)
    monkeypatch.setattr(sass, "disassemble", lambda k: disassembled.append(k) or ([], 64))
    ok, bad, _ = sass.compile_all(("bf16",), arch=arch)
    assert ok == len(got) and not bad and {a for a, _ in got} == {arch}
    pk = [c for _, c in got if c.get("PK")]
    if arch == 120:
        n90 = len(got)
        got.clear()
        sass.compile_all(("bf16",))
        assert pk and n90 == len(got)
    else:
        assert not pk
    assert bool(disassembled) == (arch != "gfx942")
    import kernels.gemv.triton_w4 as w4  # its raw configs (the interpreter's lists are twins)
    raw = w4._ALL_CONFIGS
    kept = sass.for_arch(raw, arch)
    assert (kept is raw) == (arch == 120)
    assert any(c.kwargs.get("ASM") for c in kept) == (arch != "gfx942")
    assert any(c.kwargs.get("PK") for c in kept) == (arch == 120)
    monkeypatch.setattr(sass, "attention_variants", lambda dtypes: [("a", None, {}, {}, 4, 3, ())])
    assert sass.compile_attention(arch=arch)[:2] == (1, [])  # 1 GiB of shared memory: not sm_90's


def test_arch_goes_with_compile_all_and_names_a_gpu(capsys):
    from bench.gpucheck.sass import main
    for argv, says in ((["--arch", "80"], "--arch goes with --compile-all"),
                       (["--compile-all", "--arch", "sm80"], "an NVIDIA compute capability"),
                       (["--compile-all", "--arch", "8"], "an NVIDIA compute capability")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.splitlines()
        assert e.value.code == 2 and len(err) == 1 and says in err[0], (argv, err)


# The bf16 GEMV's tl.dot prune keeps the tiles whose shared memory by its model fits a block;
# an sm_90 compile must allocate what the model says, or the prune protects nothing.
_SMEM_PROBE = r'''
import json
from bench.gpucheck.sass import compile_sm, _plans
from kernels.gemv import triton_bf16 as bf
out = []
for dtype, bm, tile in (("fp32", 64, (64, 128, 4)), ("bf16", 16, (16, 512, 4)),
                        ("bf16", 64, (16, 512, 4))):
    name, fn, types, const, aligned, _ = _plans("gemv_bf16", dtype)[0]
    cfg = next(c for c in bf._CONFIGS if (c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps)
               == tile and not c.kwargs["ACC3"])
    k = compile_sm(fn, types, {**const, "BLOCK_M": bm, "USE_DOT": True,
                                 "IEEE": dtype == "fp32", **cfg.kwargs},
                     cfg.num_warps, cfg.num_stages, aligned)
    out.append([int(k.metadata.shared), bf._dot_smem(cfg, bm, 4 if dtype == "fp32" else 2)])
print(json.dumps(out))
'''


def _probe(src: str) -> Any:
    """Run a probe script that compiles for sm_90 and prints JSON last; its parsed output
    (skipped where this machine cannot compile for sm_90)."""
    need_sm90_tools()
    r = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True,
                       cwd=REPO, env=_compile_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-800:]
    import json
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # three real sm_90 compiles
def test_bf16_dot_shared_memory_model_matches_an_sm90_compile():
    from kernels.common import SM90_SMEM_BYTES
    got = _probe(_SMEM_PROBE)
    # the compiler allocates at most the model's bytes; the third tile (64 rows) does not fit
    assert all(0 < shared <= model for shared, model in got), got
    assert got[2][0] > SM90_SMEM_BYTES and got[0][1] <= SM90_SMEM_BYTES


# The attention kernel's configs: num_stages 2, 3 and 4 compile to 1, 2 and 3 K/V buffers (the
# table entries loaded a step ahead keep the K/V loads direct for Triton's pipeliner), and
# kv_smem bounds what an sm_90 compile allocates, or its prune protects nothing.
_ATTN_PROBE = r'''
import json
from bench.gpucheck.sass import compile_sm
import kernels.attention.triton_paged as tp
out = []
for q, kv, bn, ns in (("bf16", "bf16", 64, 2), ("bf16", "bf16", 64, 3), ("bf16", "bf16", 64, 4),
                      ("fp32", "fp32", 128, 3), ("bf16", "i8", 64, 4), ("fp32", "i8", 64, 2),
                      ("fp32", "i8", 128, 4)):
    types = {"q_ptr": "*" + q, "k_ptr": "*" + kv, "v_ptr": "*" + kv, "ks_ptr": "*fp32",
             "vs_ptr": "*fp32", "bt_ptr": "*i32", "sl_ptr": "*i32", "o_ptr": "*fp32",
             "ml_ptr": "*fp32", "out_ptr": "*" + q, "lock_ptr": "*i32", "scale_log2": "fp32",
             "split_tokens": "i32"}
    types.update({n: "i32" for n in tp._paged_attn_kernel.jit_fn.arg_names if n.startswith("stride")})
    mm = tp.merge_meta(4, 128, 32)
    const = dict(G=4, G_PAD=16, D=128, BLOCK_SIZE=16, KV8=kv == "i8", NUM_SPLITS=32,
                 IEEE=q == "fp32", BLOCK_N=bn, FUSED=False, G2=mm["G2"], S_PAD=mm["S_PAD"],
                 S_CHUNK=mm["S_CHUNK"])
    # pointers and strides 16-aligned as a Llama-3-8B cache's are (Triton specializes on it)
    k = compile_sm(tp._paged_attn_kernel.jit_fn, types, const, 4, ns,
                     ("q_ptr", "k_ptr", "v_ptr", "bt_ptr", "o_ptr", "stride_qb", "stride_qh",
                      "stride_kb", "stride_ks", "stride_kh", "stride_btb", "stride_ob",
                      "stride_oh", "stride_os", "split_tokens"))
    cfg = next(c for c in tp._CONFIGS if c.kwargs["BLOCK_N"] == bn)
    cfg = type(cfg)(cfg.kwargs, num_warps=4, num_stages=ns)
    es = {"bf16": 2, "fp32": 4, "i8": 1}
    out.append([int(k.metadata.shared), tp.kv_smem(cfg, 128, 16, es[q], es[kv])])
print(json.dumps(out))
'''


@pytest.mark.slow  # seven real sm_90 compiles
def test_attention_stages_and_shared_memory_model_match_an_sm90_compile():
    from kernels.common import SM90_SMEM_BYTES
    got = _probe(_ATTN_PROBE)
    (s2, _), (s3, _), (s4, _), (sf, mf), _, (s8, m8), (sf8, mf8) = got
    tile = 2 * 64 * 128 * 2  # a 64 x 128 bf16 K and V buffer
    assert s2 + tile <= s3 and s3 + tile <= s4
    assert all(0 < shared <= model for shared, model in got), got
    assert sf > SM90_SMEM_BYTES and mf > SM90_SMEM_BYTES  # configs the prune drops
    assert sf8 > SM90_SMEM_BYTES and mf8 > SM90_SMEM_BYTES
    # INT8 KV for fp32 q: the dequantized K and V tiles (2 x 64 x 128 fp32) in shared memory too
    assert s8 > 2 * 64 * 128 * 4


# The fused split-KV merge: each program's partial stores, then a barrier, then one thread's
# acq_rel add to the counter at GPU scope (CUTLASS's semaphore pattern), and the last program's
# merge loads bypass L1; on the compiler of this machine, not the device's alone.
_FUSED_PROBE = r'''
import json
from bench.gpucheck.sass import compile_sm, disassemble, spill_bytes
import kernels.attention.triton_paged as tp
types = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "ks_ptr": "*fp32", "vs_ptr": "*fp32",
         "bt_ptr": "*i32", "sl_ptr": "*i32", "o_ptr": "*fp32", "ml_ptr": "*fp32",
         "out_ptr": "*bf16", "lock_ptr": "*i32", "scale_log2": "fp32", "split_tokens": "i32"}
types.update({n: "i32" for n in tp._paged_attn_kernel.jit_fn.arg_names if n.startswith("stride")})
mm = tp.merge_meta(4, 128, 64)
out = {}
for fused in (False, True):
    const = dict(G=4, G_PAD=16, D=128, BLOCK_SIZE=16, KV8=False, NUM_SPLITS=64, IEEE=False,
                 BLOCK_N=64, FUSED=fused, G2=mm["G2"], S_PAD=mm["S_PAD"], S_CHUNK=mm["S_CHUNK"])
    k = compile_sm(tp._paged_attn_kernel.jit_fn, types, const, 4, 3,
                     ("q_ptr", "k_ptr", "v_ptr", "bt_ptr", "o_ptr", "out_ptr", "stride_qb",
                      "stride_qh", "stride_kb", "stride_ks", "stride_kh", "stride_btb",
                      "stride_ob", "stride_oh", "stride_os", "split_tokens"))
    lines, regs = disassemble(k)
    ptx = [ln.strip() for ln in k.asm["ptx"].splitlines()
           if any(w in ln for w in ("st.global", "ld.global", "bar.sync", "atom."))]
    out[str(fused)] = {"regs": regs, "spill": spill_bytes([i for _, i in lines]), "ptx": ptx}
print(json.dumps(out))
'''


def _counter_add(ptx: list[str]) -> int:
    """Where the one counter update is: an acq_rel add at GPU scope by one thread, after a
    barrier that follows every write of the partials (stores, or atomic adds of fp32)."""
    add = [i for i, ln in enumerate(ptx)
           if "atom." in ln and ".add." in ln and ".f32" not in ln]
    assert len(add) == 1 and ".acq_rel" in ptx[add[0]] and ".gpu" in ptx[add[0]], ptx
    assert ptx[add[0]].startswith("@%p")  # one thread
    last_write = max(i for i, ln in enumerate(ptx[:add[0]])
                     if "st.global" in ln or (("atom." in ln or "red." in ln) and ".f32" in ln))
    assert any("bar.sync" in ln for ln in ptx[last_write:add[0]])
    assert any("atom." in ln and ".exch." in ln for ln in ptx[add[0]:])  # zeroed again
    return add[0]


@pytest.mark.slow  # two real sm_90 compiles
def test_fused_merge_orders_its_memory_accesses_on_an_sm90_compile():
    got = _probe(_FUSED_PROBE)
    ptx = got["True"]["ptx"]
    add = _counter_add(ptx)
    merge_loads = [ln for ln in ptx[add:] if "ld.global" in ln]
    assert merge_loads and all("ld.global.cg" in ln for ln in merge_loads)
    assert not any("atom." in ln for ln in got["False"]["ptx"])
    assert got["True"]["spill"] == got["False"]["spill"] == [0, 0]


# The split GEMVs end the same way: the word loop's split (tl.dot at M = 16, INT4 and INT8)
# and the split-K kernels, whose last program of a row tile reads the workspace's sums (.cg)
# and writes y instead of a second launch.
_SPLIT_PROBE = r'''
import json
from bench.gpucheck.sass import _plans, compile_sm, disassemble, path_configs, spill_bytes
out = {}
for op, name, const in (("gemv_w4", "gemv_w4", dict(BLOCK_M=16, SPLIT_K=2, USE_DOT=True)),
                        ("gemv_w8", "gemv_w8", dict(BLOCK_M=16, SPLIT_K=2, USE_DOT=True)),
                        ("gemv_w4", "gemv_w4_splitk", {}), ("gemv_w8", "gemv_w8_splitk", {}),
                        ("gemv_bf16", "gemv_bf16_splitk", {})):
    plan = next(p for p in _plans(op, "bf16") if p[0] == name)
    _, fn, types, base, aligned, configs = plan
    if const:
        configs = path_configs(name, True, 16, "bf16")
    cfg = configs[0]
    k = compile_sm(fn, types, {**base, **const, **cfg.kwargs}, cfg.num_warps, cfg.num_stages,
                     aligned)
    lines, regs = disassemble(k)
    out[name + ("_dot" if const else "")] = {
        "spill": spill_bytes([i for _, i in lines]),
        "ptx": [ln.strip() for ln in k.asm["ptx"].splitlines()
                if any(w in ln for w in ("st.global", "ld.global", "bar.sync", "atom.", "red."))]}
print(json.dumps(out))
'''


@pytest.mark.slow  # five real sm_90 compiles
def test_split_gemvs_finish_in_the_last_program_on_an_sm90_compile():
    got = _probe(_SPLIT_PROBE)
    assert set(got) == {"gemv_w4_dot", "gemv_w8_dot", "gemv_w4_splitk", "gemv_w8_splitk",
                        "gemv_bf16_splitk"}
    for name, g in got.items():
        add = _counter_add(g["ptx"])
        tail = g["ptx"][add:]
        assert any("ld.global.cg" in ln for ln in tail), name  # the sums, past L1
        assert any("st.global" in ln for ln in tail), name  # zeros and y, by the last program
        assert g["spill"] == [0, 0], name


# The PK configs' PTX and the other INT4 paths compiled for GPUs before Hopper: the PK step's
# for sm_86 (an A10, an RTX 3090; sm_80 lacks even more of it) and sm_90, the word loop's PTX
# (ASM=1) and tl.dot's for sm_80 (an A100), which the tuners fall back on there.
_PK_ARCH_PROBE = r'''
import json
from bench.gpucheck.sass import _plans, compile_sm, path_configs
_, fn, types, base, aligned, _ = next(p for p in _plans("gemv_w4", "bf16") if p[0] == "gemv_w4")
pk = next(c for c in path_configs("gemv_w4", False, 1) if c.kwargs.get("PK"))
word = next(c for c in path_configs("gemv_w4", False, 1)
            if c.kwargs.get("ASM") and not c.kwargs.get("PK"))
dot = next(c for c in path_configs("gemv_w4", True, 16) if c.kwargs.get("ASM"))
out = {}
for what, cfg, const, sm in (("pk", pk, {}, 86), ("pk", pk, {}, 90), ("word", word, {}, 80),
                             ("dot", dot, {"BLOCK_M": 16, "USE_DOT": True}, 80)):
    try:
        compile_sm(fn, types, {**base, **const, **cfg.kwargs}, cfg.num_warps, cfg.num_stages,
                   aligned, arch=sm)
        out[f"{what} sm_{sm}"] = "ok"
    except Exception as e:
        out[f"{what} sm_{sm}"] = str(e)
print(json.dumps(out))
'''


@pytest.mark.slow  # four real compiles, for sm_80, 86 and 90
def test_the_pk_ptx_needs_sm90_and_the_other_int4_paths_compile_for_an_a100():
    """kernels/gemv/triton_w4.py's PK_MIN_CAPABILITY: ptxas refuses the PK step's PTX for sm_86
    naming sm_90 (mul.bf16x2), and takes it for sm_90; what the tuners keep below sm_90 (the
    word loop, tl.dot) compiles for an A100."""
    from kernels.gemv.triton_w4 import PK_MIN_CAPABILITY
    got = _probe(_PK_ARCH_PROBE)
    assert PK_MIN_CAPABILITY == (9, 0)
    assert "requires .target sm_90 or higher" in got.pop("pk sm_86")
    assert got == {"pk sm_90": "ok", "word sm_80": "ok", "dot sm_80": "ok"}


def test_attention_variants_are_what_the_suites_launch():
    """Every Triton attention impl at the CUDA suites' shapes: one pass, split with the
    reduction kernel, split with the merge fused, INT8 KV, fp32 on the IEEE path, and each
    config the prune keeps for an sm_90 block (fp32's largest tiles do not fit)."""
    pytest.importorskip("triton")
    import bench.gpucheck.sass as sass
    import kernels.attention.triton_paged as tp
    v = sass.attention_variants(("bf16", "fp32"))
    keys = [(fn.__name__, tuple(sorted(t.items())), tuple(sorted(c.items())), w, s)
            for _, fn, t, c, w, s, _ in v]
    assert len(keys) == len(set(keys))  # each distinct compile once
    main = [x for x in v if x[1] is tp._paged_attn_kernel.jit_fn]
    reduce = [x for x in v if x[1] is tp._splitkv_reduce_kernel]
    assert len(main) + len(reduce) == len(v)
    assert reduce and all(x[3]["NUM_SPLITS"] > 1 for x in reduce)
    # 1 x 32768 on 132 SMs: triton_splitkv and _fused ask 64 splits; the fused one has no
    # reduction kernel, so every split count with a reduction also has a non-fused main kernel
    at_64 = {(c["FUSED"], c["KV8"], c["IEEE"]) for _, _, _, c, _, _, _ in main
             if c["NUM_SPLITS"] == 64}
    assert {(True, False, False), (False, False, False)} <= at_64
    assert {x[3]["NUM_SPLITS"] for x in reduce} <= {c["NUM_SPLITS"] for _, _, _, c, _, _, _ in main
                                                    if not c["FUSED"]}
    assert {1, 64} <= {c["NUM_SPLITS"] for _, _, _, c, _, _, _ in main}
    kv8 = [x for x in main if x[3]["KV8"]]
    assert kv8 and all(x[2]["k_ptr"] == "*i8" and x[2]["ks_ptr"] == x[2]["q_ptr"] for x in kv8)
    for _, _, types, c, _, _, _ in main:  # split: partials in fp32; one pass writes `out`
        assert types["o_ptr"] == ("*fp32" if c["NUM_SPLITS"] > 1 else types["q_ptr"])
        assert c["IEEE"] == (types["q_ptr"] == "*fp32")
    per = {}
    for _, _, types, c, _, _, _ in main:
        per.setdefault((types["q_ptr"], c["KV8"], c["G"], c["NUM_SPLITS"], c["FUSED"]), []).append(c["BLOCK_N"])
    assert max(len(b) for b in per.values()) == len(tp._CONFIGS)  # bf16: every config
    assert all(max(b) == (32 if kv8_ else 64) for (q, kv8_, *_), b in per.items() if q == "*fp32")


def test_compile_attention_lists_failures_oversized_blocks_and_spills(monkeypatch):
    pytest.importorskip("triton")
    import types as pytypes

    import bench.gpucheck.sass as sass
    v = [("a", None, {}, {"x": 1}, 4, 3, ()), ("b", None, {}, {"x": 2}, 4, 3, ()),
         ("c", None, {}, {"x": 3}, 4, 3, ()), ("d", None, {}, {"x": 4}, 4, 3, ())]
    monkeypatch.setattr(sass, "attention_variants", lambda dtypes: v)

    def fake_compile(fn, types, const, warps, stages, aligned, arch=90):
        if const["x"] == 2:
            raise RuntimeError("PassManager::run failed\nmore")
        shared = sass.SM90_SMEM_PER_CTA + (1 if const["x"] == 3 else 0)
        return pytypes.SimpleNamespace(metadata=pytypes.SimpleNamespace(shared=shared), x=const["x"])

    monkeypatch.setattr(sass, "compile_sm", fake_compile)
    monkeypatch.setattr(sass, "disassemble", lambda k: ([(0, "STL [R1], R2")] if k.x == 4 else [], 64))
    ok, bad, spills = sass.compile_attention()
    assert ok == 2
    assert bad[0] == "b: RuntimeError: PassManager::run failed"
    assert bad[1].startswith("c: needs 232449 B of shared memory") and len(bad) == 2
    assert spills == ["d: spill stores 4 B, loads 0 B"]


# A hand-made SASS listing: a 7-instruction hot loop (0x20-0x80, one STL, one LDS, one BAR), a
# later 2-instruction loop, code before and after. (address, instruction) as disassemble gives.
_SASS = [(0x00, "MOV R1, c[0x0][0x28]"), (0x10, "LDG.E R2, desc[UR4][R2.64]"),
         (0x20, "LDG.E.128 R4, desc[UR4][R2.64]"), (0x30, "STL [R1], R4"), (0x40, "LDS R5, [R6]"),
         (0x50, "BAR.SYNC.DEFER_BLOCKING 0x0"), (0x60, "FFMA R7, R4, R5, R7"),
         (0x70, "ISETP.GE.AND P0, PT, R8, R9, PT"), (0x80, "@!P0 BRA 0x20"),
         (0x90, "IADD3 R8, R8, 0x1, RZ"), (0xa0, "@P1 BRA 0x90"), (0xb0, "NOP"),
         (0xc0, "STG.E [R2.64], R7"), (0xd0, "EXIT"), (0xe0, "BRA 0xe0")]


@pytest.mark.parametrize("dot", [False, True], ids=["gemv", "dot"])
def test_count_takes_the_longest_loop_per_warp_per_code(monkeypatch, dot):
    """count() with the compiler stubbed: the longest backward-branch loop's instructions (not the
    whole program, not the last loop) x warps / codes a pass, where a pass takes BLOCK_N x
    BLOCK_K codes (BLOCK_N x G on INT4's tl.dot path, one group a step); warp instructions, so not
    x 32 threads. The step's weight bytes at half a byte an INT4 code; the loop's spills, barriers
    and shared-memory ops; PREFETCH = 1 puts two steps in flight."""
    import types as _types

    import bench.gpucheck.sass as sass
    from kernels import triton_util
    cfg = _types.SimpleNamespace(kwargs={"BLOCK_N": 16, "BLOCK_K": 64, "PREFETCH": 1},
                                 num_warps=4, num_stages=1)
    monkeypatch.setattr(sass, "_plans", lambda op, dtype: [
        ("gemv_w4", None, {}, dict(G=128, BLOCK_M=1, USE_DOT=False), (), [cfg])])
    monkeypatch.setattr(sass, "tuner_configs", lambda name, use_dot, const, dtype: [cfg])
    monkeypatch.setattr(triton_util, "describe", lambda c: "BN16 BK64")
    monkeypatch.setattr(sass, "compile_sm", lambda *a: _types.SimpleNamespace(
        asm={"ttgir": ""}, metadata=_types.SimpleNamespace(shared=2048)))
    monkeypatch.setattr(sass, "disassemble", lambda k: (_SASS, 168))
    (row,) = sass.count("gemv_w4", dot=dot)
    codes = 16 * (128 if dot else 64)
    assert row.loop == 7 and row.per_code == pytest.approx(7 * 4 / codes)
    assert row.step_bytes == codes // 2 and (row.depth, row.pipelined) == (2, False)
    assert (row.loop_spills, row.barriers, row.smem) == (1, 1, 1)
    assert (row.spill_st, row.spill_ld, row.regs, row.warps, row.shared) == (4, 0, 168, 4, 2048)
    assert row.top[0] == ("LDG", 1) and dict(row.top)["FFMA"] == 1 and "MOV" not in dict(row.top)


def test_a_kernel_without_a_loop_is_counted_whole_without_its_trailing_self_branch():
    """A split-K GEMV has no hot loop (one K chunk a program): the SASS's only branches are a
    forward one and the `BRA` to itself after EXIT, neither a loop, so the count is the whole
    program up to EXIT, its NOP padding left out."""
    from bench.gpucheck.sass import longest_loop, whole_program
    flat = [(0x00, "MOV R1, c[0x0][0x28]"), (0x10, "@P0 BRA 0x40"), (0x20, "LDG.E R2, desc[UR4][R2.64]"),
            (0x30, "NOP"), (0x40, "FFMA R7, R4, R5, R7"), (0x50, "EXIT"), (0x60, "BRA 0x60"),
            (0x70, "NOP")]
    assert longest_loop(flat) == []
    assert whole_program(flat) == ["MOV R1, c[0x0][0x28]", "@P0 BRA 0x40",
                                   "LDG.E R2, desc[UR4][R2.64]", "FFMA R7, R4, R5, R7", "EXIT"]
    assert longest_loop(_SASS) == [ins for a, ins in _SASS if 0x20 <= a <= 0x80]


def test_the_table_takes_littles_law_at_the_latency_asked_for(monkeypatch, capsys):
    """--latency-ns reaches the table: the need line and every row's need and ratio use it, not
    the default 370 ns (the bytes a loaded memory system needs in flight grow with it)."""
    pytest.importorskip("triton")
    import bench.gpucheck.sass as sass
    monkeypatch.setattr(sass, "toolchain", lambda: "triton 9.9, ptxas 1.2")
    monkeypatch.setattr(sass, "missing_toolchain", lambda: None)  # counting is stubbed
    row = LoopCount("gemv_w8", "cfg", 0.1, 10, 168, [("FFMA", 4)], warps=4, shared=2048,
                    step_bytes=16384)
    need = bytes_needed_per_sm(3350, 600)  # 3350e9 / 132 x 600e-9 = 15227 B
    lines = sass.report([row], 3350, "bf16", False, 600)
    assert f"x 600 ns DRAM latency = {need / 1024:.1f} KiB an SM" in "\n".join(lines)
    assert f"need {need / 1024:.1f}: {row.in_flight() / need:.2f}x" in lines[-2]
    monkeypatch.setattr(sass, "count", lambda op, dtype, first, dot: [row])
    monkeypatch.setenv("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "1"))
    from kernels import triton_util
    monkeypatch.setattr(triton_util, "INTERPRET", False)
    assert main(["--gbps", "3350", "--latency-ns", "600"]) == 0
    assert f"x 600 ns DRAM latency = {need / 1024:.1f} KiB an SM" in capsys.readouterr().out


def test_a_failing_compile_is_a_failure_and_a_missing_toolchain_a_skip(monkeypatch, capsys):
    """Exit 2 ("cannot compile here", which the compile tests skip on) only when the tools are
    missing; a compile that fails with them there (ptxas rejecting a kernel) is exit 1."""
    pytest.importorskip("triton")
    import bench.gpucheck.sass as sass

    def ptxas_rejects(*a):
        raise RuntimeError("PTXAS error: Internal Triton PTX codegen error\n`ptxas` stderr: ...")
    # main drops TRITON_INTERPRET; monkeypatch puts it back afterwards
    monkeypatch.setenv("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "1"))
    from kernels import triton_util
    monkeypatch.setattr(triton_util, "INTERPRET", False)
    monkeypatch.setattr(sass, "count", ptxas_rejects)
    monkeypatch.setattr(sass, "missing_toolchain", lambda: None)
    assert main(["--configs", "1"]) == 1
    err = capsys.readouterr().err
    assert "counting failed: RuntimeError: PTXAS error" in err and "cannot compile" not in err
    monkeypatch.setattr(sass, "missing_toolchain", lambda: "RuntimeError: no cuobjdump")
    assert main(["--configs", "1"]) == 2
    assert "cannot compile for sm_90 here: RuntimeError: no cuobjdump" in capsys.readouterr().err
