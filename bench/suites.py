"""Named suites: lists of cases (op, shape, dtype), sized for the backend they run on.

A suite is a function of a `SuiteContext` (backend name, device memory, cache size) returning
cases, registered with `@suite(name, doc)`. Ops know their own tiny shapes (`Op.smoke`), so the
smoke suite covers every registered op without listing them here.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from kernels import OPS

from .case import Case, host_need
from .model.workload import attention_heads, layer_gemv_shapes


# A suite on the CPU keeps a case whose host need is at most this share of the memory; the rest
# is the OS's and the harness's own, and `run` still checks what is available when it starts.
HOST_FRACTION = 0.9
FIT_FRACTION = 0.4  # of the device's memory a suite case's working set may take


@dataclass(frozen=True)
class SuiteContext:
    backend: str
    memory_bytes: int | None = None  # device memory (host RAM on CPU)
    cache_bytes: int | None = None   # last-level cache
    extra: dict = field(default_factory=dict)
    world_size: int | None = None  # ranks asked for (--world-size, torchrun's WORLD_SIZE)
    # the cases a suite left out because their working set does not fit the device (`fits`),
    # for the caller to say so
    too_big: list = field(default_factory=list, compare=False, hash=False)

    def fits(self, nbytes: int, fraction: float = FIT_FRACTION) -> bool:
        """Whether a working set of nbytes (plus copies and outputs) fits comfortably."""
        return self.memory_bytes is None or nbytes <= fraction * self.memory_bytes

    def keep(self, nbytes: int, cases: list[Case]) -> list[Case]:
        """`cases` where a working set of nbytes fits, else none, noted in `too_big`."""
        if self.fits(nbytes):
            return cases
        self.too_big.extend(c for c in cases if c not in self.too_big)
        return []

    def fits_host(self, case: Case) -> bool:
        """Whether the host memory a case needs (its inputs, float64 reference and check:
        `bench.case.host_need`) is at most HOST_FRACTION of the CPU's memory. Off the CPU the
        device's memory says nothing about the host's, and every case is kept."""
        if self.backend != "cpu" or self.memory_bytes is None:
            return True
        op = OPS[case.op]
        ranks = case.shape.world_size if op.collective else 1
        return ranks * host_need(op, case.shape, case.dtype, self.backend) <= \
            HOST_FRACTION * self.memory_bytes


SuiteFn = Callable[[SuiteContext], list[Case]]
SUITES: dict[str, tuple[SuiteFn, str]] = {}


def suite(name: str, doc: str) -> Callable[[SuiteFn], SuiteFn]:
    def deco(fn: SuiteFn) -> SuiteFn:
        if name in SUITES:
            raise ValueError(f"suite {name!r} is registered twice")
        SUITES[name] = (fn, doc)
        return fn
    return deco


def cases_for(name: str, ctx: SuiteContext, left_out: list[Case] | None = None) -> list[Case]:
    """The suite's cases on this machine, without those whose host memory need the CPU cannot
    hold (the float64 reference of a large INT4 GEMV takes ~40 bytes a weight): `run` refuses
    a case past the host's available memory, and a suite leaves it out instead, adding it to
    `left_out` for the caller to say so."""
    if name not in SUITES:
        raise KeyError(name)
    kept, seen = [], set()
    for c in SUITES[name][0](ctx):
        key = (c.op, c.shape, c.dtype, c.warm)
        if key in seen:  # a case planned twice (small caches round sizes together): timed once
            continue
        seen.add(key)
        (kept if ctx.fits_host(c) else left_out if left_out is not None else []).append(c)
    return kept


# --- suites -----------------------------------------------------------------------------------

@suite("smoke", "tiny shapes of every op and every impl the backend has (CI; under a minute on CPU)")
def smoke(ctx: SuiteContext) -> list[Case]:
    return [Case(name, shape, dtype, group="smoke")
            for name, op in OPS.items() for shape, dtype in op.smoke]


@suite("decode", "the default: one Llama-3-8B decode layer at batch 1 -- qkv/o/gate_up/down GEMVs "
       "with bf16, INT8 and INT4 (G=128) weights -- and its paged attention (batch 8 x 4096 on "
       "CPU, 64 x 4096 on a GPU)")
def decode(ctx: SuiteContext) -> list[Case]:
    cases = [_gemv_case(op, 1, n, k, torch.bfloat16, f"llama-3-8b {part}", _gemv_impls(ctx, op, 1))
             for part, (n, k) in layer_gemv_shapes("llama-3-8b").items()
             for op in ("gemv_bf16", "gemv_w8", "gemv_w4")]
    from kernels.attention import PagedAttentionShape
    B = 64 if ctx.backend == "cuda" else 8
    Hq, Hkv, D = attention_heads("llama-3-8b")
    cases.append(Case("paged_attention", PagedAttentionShape(B=B, Hq=Hq, Hkv=Hkv, D=D, context=4096),
                      torch.bfloat16, group=f"llama-3-8b b{B}x4096"))
    return cases


@suite("gpu-check", "the one-call device check's cases (bench/device_check.sh): GEMV at 8B/70B "
       "shapes, M=1/16; attention 64x4096, 1x32768; precision; INT8-KV attention 64x4096; most "
       "important first")
def gpu_check(ctx: SuiteContext) -> list[Case]:
    return gpu_check_cases(ctx)


ATTENTION_MODELS = ("llama-3-8b", "llama-3-70b")  # bench/model/models/*.json


@suite("attention", "paged decode attention: Llama-3-8B/70B heads, batch 1-64 x context 512/4096, "
       "1 x 32768; ragged lengths, scattered blocks; sized for the backend")
def attention(ctx: SuiteContext) -> list[Case]:
    from kernels import esize
    from kernels.attention import PagedAttentionShape

    def kv_pool_bytes(s: PagedAttentionShape, dtype: torch.dtype) -> int:
        return s.pool_blocks * s.block_size * s.Hkv * s.D * 2 * esize(dtype)

    cases: list[Case] = []

    def add(op: str, model: str, B: int, context: int, dtype: torch.dtype) -> None:
        Hq, Hkv, D = attention_heads(model)
        s = PagedAttentionShape(B=B, Hq=Hq, Hkv=Hkv, D=D, context=context)
        kv_dtype = torch.int8 if op.endswith("kv8") else dtype
        cases.extend(ctx.keep(kv_pool_bytes(s, kv_dtype),
                              [Case(op, s, dtype, group=f"{model} b{B}x{context}")]))

    if ctx.backend == "cuda":
        grid = [(B, c) for B in (1, 8, 32, 64) for c in (512, 4096)] + [(1, 32768)]
        for model in ATTENTION_MODELS:
            for B, c in grid:
                add("paged_attention", model, B, c, torch.bfloat16)
        for B, c in grid:
            add("paged_attention_kv8", "llama-3-8b", B, c, torch.bfloat16)
        return cases
    # CPU (and anything else): llama-3-8b at batch 1 and 8, context 512 and 4096, bf16 and fp32;
    # every impl here costs ~0.1-1 s a call at 8 x 4096, so the grid stays small.
    for B, c in ((1, 512), (8, 512), (1, 4096), (8, 4096)):
        for dtype in (torch.bfloat16, torch.float32):
            add("paged_attention", "llama-3-8b", B, c, dtype)
    add("paged_attention", "llama-3-8b", 1, 32768, torch.bfloat16)
    add("paged_attention", "llama-3-70b", 8, 4096, torch.bfloat16)
    add("paged_attention_kv8", "llama-3-8b", 8, 4096, torch.bfloat16)
    return cases


# --- quantized GEMV -----------------------------------------------------------------------------

GEMV_BATCHES = (1, 4, 16, 64)
INT4_GROUP = 128


def _gemv_case(op: str, M: int, N: int, K: int, dtype: torch.dtype, group: str,
               impls: tuple[str, ...] | None = None) -> Case:
    from kernels.gemv import GemvShape, GemvW4Shape, GemvW8Shape
    shape = {"gemv_bf16": lambda: GemvShape(M=M, N=N, K=K),
             "gemv_w8": lambda: GemvW8Shape(M=M, N=N, K=K),
             "gemv_w4": lambda: GemvW4Shape(M=M, N=N, K=K, group_size=INT4_GROUP)}[op]()
    return Case(op, shape, dtype, impls=impls, group=group)


def _cpu_fast_impls(op: str) -> tuple[str, ...]:
    """The op's CPU impls without torch.compile's (the hand-written C ones are kind "compiled" too)."""
    return tuple(n for n, i in OPS[op].impls.items() if "cpu" in i.backends and n != "torch_compiled")


def _gemv_impls(ctx: SuiteContext, op: str, M: int, big: bool = False) -> tuple[str, ...] | None:
    """On the CPU: the fast impls only (torch.compile's CPU code runs ~10x under the roof and
    compiles for seconds per shape; the naive dequant allocates the whole matrix per call), the
    naive baseline kept at M = 1 on the smaller shapes. On a GPU: everything, torch.compile's at
    M = 1 only (it compiles per shape)."""
    impls = OPS[op].impls
    if ctx.backend == "cpu":
        return tuple(n for n in _cpu_fast_impls(op) if not (n == "torch_dequant" and (M > 1 or big)))
    if M == 1:
        return None
    return tuple(n for n, i in impls.items() if ctx.backend in i.backends and n != "torch_compiled")


@suite("gemv", "INT4 (G=128) / INT8 / bf16 weight GEMV at the Llama-3-8B and -70B decode shapes, "
       "batch 1/4/16/64 (70B where memory allows; on CPU 70B at batch 1 only)")
def gemv(ctx: SuiteContext) -> list[Case]:
    cases: list[Case] = []
    cpu = ctx.backend == "cpu"
    for model in ("llama-3-8b", "llama-3-70b"):
        shapes, big = layer_gemv_shapes(model), model == "llama-3-70b"
        for M in (1,) if cpu and big else GEMV_BATCHES:
            for part, (n, k) in shapes.items():
                # the bf16 weights decide; the quantized ones are smaller
                cases += ctx.keep(2 * n * k, [_gemv_case(op, M, n, k, torch.bfloat16,
                                                         f"{model} {part}",
                                                         _gemv_impls(ctx, op, M, big))
                                              for op in ("gemv_w4", "gemv_w8", "gemv_bf16")])
    return cases


@suite("sweep-batch", "INT4 / INT8 / bf16 GEMV at batch M = 1..256 on one shape (4096x4096 on CPU, "
       "8192x8192 on a GPU): where dequant GEMV stops being memory-bound")
def sweep_batch(ctx: SuiteContext) -> list[Case]:
    n, k = (4096, 4096) if ctx.backend == "cpu" else (8192, 8192)
    cases = []
    for M in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        for op in ("gemv_w4", "gemv_w8", "gemv_bf16"):
            impls = _cpu_fast_impls(op) if ctx.backend == "cpu" else tuple(
                name for name, i in OPS[op].impls.items()
                if ctx.backend in i.backends and name != "torch_compiled")
            cases.append(_gemv_case(op, M, n, k, torch.bfloat16, f"sweep {n}x{k}", impls))
    return cases


@suite("precision", "bf16 vs INT8 vs INT4 (G=128) GEMV on 8192x8192 at batch 1: the speedup over "
       "bf16 beside the ideal speedup from bytes alone")
def precision(ctx: SuiteContext) -> list[Case]:
    return [_gemv_case(op, 1, 8192, 8192, torch.bfloat16, "precision",
                       _gemv_impls(ctx, op, 1, big=False))
            for op in ("gemv_bf16", "gemv_w8", "gemv_w4")]


# --- the cache-to-DRAM cliff ------------------------------------------------------------------

SIZE_SWEEP_LLC = (1 / 32, 1 / 8, 1 / 2, 1, 2, 8)  # working sets, as multiples of the LLC
SIZE_SWEEP_K = 4096


def _size_label(nbytes: int, llc: int) -> str:
    f = nbytes / llc
    return f"size {nbytes / 2**20:.3g} MiB = {f:.2g}x LLC"


@suite("sweep-size", "read and INT4 / INT8 / bf16 GEMV (M=1, K=4096) at working sets from 1/32 to 8x "
       "the last-level cache, warm (one input set, no flush): the cache-to-DRAM cliff, and "
       "whether a kernel is limited by memory or by its own loop (its in-cache speed)")
def sweep_size(ctx: SuiteContext) -> list[Case]:
    from kernels.probes import ProbeShape
    llc = ctx.cache_bytes or 32 * 2**20
    cases = []
    for frac in SIZE_SWEEP_LLC:
        target = int(frac * llc)
        n = max(1024, target // 4 // 1024 * 1024)
        at = [Case("read", ProbeShape(N=n), torch.float32,
                   group=_size_label(OPS["read"].bytes_moved(ProbeShape(N=n), torch.float32), llc),
                   warm=True)]
        for op in ("gemv_w4", "gemv_w8", "gemv_bf16"):
            per_row = _gemv_bytes(op, 64, SIZE_SWEEP_K) / 64
            n = max(64, round(target / per_row / 64) * 64)
            c = _gemv_case(op, 1, n, SIZE_SWEEP_K, torch.bfloat16, "", _sweep_impls(ctx, op))
            nbytes = OPS[op].bytes_moved(c.shape, c.dtype)
            at.append(Case(c.op, c.shape, c.dtype, c.impls, _size_label(nbytes, llc), warm=True))
        cases += ctx.keep(3 * target, at)
    return cases


def _sweep_impls(ctx: SuiteContext, op: str) -> tuple[str, ...]:
    """The impls that stream the weights once: not the naive dequantize-then-matmul (its time is
    writing the whole dequantized matrix), not torch.compile's (a compile per size). On XLA the
    dequantize-then-matmul is the op's one impl, compiled whole by XLA, and stays."""
    if ctx.backend == "cpu":
        return _gemv_impls(ctx, op, 1, big=True)
    names = [n for n, i in OPS[op].impls.items()
             if ctx.backend in i.backends and n != "torch_compiled"]
    return tuple([n for n in names if n != "torch_dequant"] or names)


def _gemv_bytes(op: str, N: int, K: int) -> int:
    c = _gemv_case(op, 1, N, K, torch.bfloat16, "")
    return OPS[op].bytes_moved(c.shape, c.dtype)


@suite("collectives", "all-reduce of decode-sized messages (hidden x batch x bf16: 8 KiB to 16 MiB) "
       "at every world size this machine runs (powers of two; one rank a GPU on CUDA), or at "
       "the one --world-size (torchrun's WORLD_SIZE) gives")
def collectives(ctx: SuiteContext) -> list[Case]:
    from kernels.collectives.ops import AllreduceShape
    from .collectives import max_world_size
    most = max_world_size(ctx.backend)
    sizes = [ctx.world_size] if ctx.world_size else [n for n in (2, 4, 8, 16, 32, 64) if n <= most]
    return [Case("allreduce", AllreduceShape(bytes=8192 << k, world_size=n), torch.bfloat16,
                 group=f"allreduce x{n}")
            for n in sizes for k in range(12)]  # 8 KiB ... 16 MiB


# --- the one-call device check (bench/device_check.sh) ------------------------------------------

# Fields given to every op of a family: an op whose shape has no such field keeps its default.
OPTIONAL_FIELDS = {"group_size", "ragged"}

GEMV_OPS = ("gemv_w4", "gemv_w8", "gemv_bf16")
ATTN_OPS = ("paged_attention", "paged_attention_kv8")
TINY_HEADS = {"Hq": 4, "Hkv": 2, "D": 32, "ragged": 0}  # dry run: GQA still, little interpreter work
# Dry run: N, K. Large enough that a few dozen input sets defeat the CPU cache (the runner
# rotates copies past 4x the caches, each with its own untimed prepare), small for the interpreter.
TINY_GEMV = (1024, 2048)


def llama3_8b_heads() -> dict[str, int]:
    """Llama-3-8B's attention heads, every sequence exactly `context` tokens long (ragged 0):
    "batch 64 x 4096" as the goals state it."""
    Hq, Hkv, D = attention_heads("llama-3-8b")
    return {"Hq": Hq, "Hkv": Hkv, "D": D, "ragged": 0}


def shape_for(op_name: str, **want: int) -> tuple[Any | None, str]:
    """`op_name`'s shape with these fields (M, N, K, group_size, B, context, Hq, Hkv, D, ...):
    (shape, "") or (None, why). Fields not given keep the op's smoke-shape values (block size,
    say)."""
    if op_name not in OPS:
        return None, f"op {op_name} is not registered"
    op = OPS[op_name]
    fields = [f.name for f in dataclasses.fields(op.shape_type)]
    kw: dict[str, int] = {}
    for key, value in want.items():
        if key not in fields:
            if key in OPTIONAL_FIELDS:
                continue
            return None, f"{op_name}'s shape has no field for {key} (fields: {', '.join(fields)})"
        kw[key] = value
    try:
        base = op.smoke[0][0] if op.smoke else None
        if base is not None and isinstance(base, op.shape_type):
            return dataclasses.replace(base, **kw), ""
        return op.shape(**kw), ""
    except (ValueError, TypeError) as e:
        return None, f"{op_name} shape {kw}: {e}"


SPLIT_KV_IMPLS = ("triton_splitkv", "triton_splitkv_fused")


def _uncompiled(op_name: str) -> tuple[str, ...]:
    # torch.compile impls are left out: each compiles for seconds per shape, which the time box
    # cannot afford; the CPU suites and `decodewall run --suite gemv` cover them. Other
    # "compiled" impls (FlashInfer's CUDA kernels, the CPU's C) stay: nothing compiles per shape.
    return tuple(n for n in OPS[op_name].impls if n != "torch_compiled")


def _triton_peer(op_name: str, impl_name: str) -> bool:
    """Another project's Triton kernel run beside ours (GemLite: kernels/gemv/peers.py)."""
    impl = OPS[op_name].impls[impl_name]
    return impl.baseline and impl.kind == "triton"


def gpu_check_cases(ctx: Any, notes: list[str] | None = None) -> list:
    """The `gpu-check` suite, most important first (a time box cuts the tail): the goal cases
    (INT4/INT8 GEMV at M=1 on the two largest Llama-3-70B shapes, INT4 at M=16 on the same two,
    attention at batch 64 x 4096 and 1 x 32768, INT4/INT8 at M=1 on the two smaller 70B shapes,
    INT4 at M=16 on the Llama-3-8B shapes), then the precision comparison (its INT4/INT8 cases
    are the 70B o shape's, 8192 x 8192, already planned), bf16 on the 70B shapes, INT8-KV
    attention at 64 x 4096, and every GEMV on the Llama-3-8B shapes at batch 1 and 16. The
    large M=16 shapes go before attention: the attention cases tune four Triton kernels (~10 s
    of compiles each on the H200: one pass at 64 x 4096; at 1 x 32768 split-KV with the
    reduction kernel, with the fused merge, and `triton`'s own split count), so a time box that
    cuts the suite after attention keeps the M=16 cases. The 8B ones go after it: at 2-15 us at
    the roof, the ~5.5 us a launch costs beyond its bytes (docs/gpu-results.md) is a large share
    of each, so they say less about the kernel's loop.
    On a CPU (the dry run) the same ops at tiny shapes. `notes` collects what could not be
    planned and why."""
    notes = notes if notes is not None else []
    cases: list = []
    seen: dict[tuple, int] = {}

    def key(c: Any) -> tuple:
        return (c.op, json.dumps(dataclasses.asdict(c.shape), sort_keys=True, default=str), c.dtype)

    def put(c: Any) -> None:
        k = key(c)
        if k in seen:  # the precision suite repeats a GEMV case: keep one, labelled "precision"
            if c.group == "precision":
                cases[seen[k]] = dataclasses.replace(cases[seen[k]], group="precision")
            return
        seen[k] = len(cases)
        cases.append(c)

    def add(op: str, group: str, peers: bool = True, drop: tuple[str, ...] = (),
            **want: int) -> None:
        # CPU: bf16 GEMVs (the int8pack/int4pack kernels' fast path), fp32 attention (bf16
        # matmuls are slow on CPUs without AVX512-BF16)
        dtype = torch.float32 if ctx.backend != "cuda" and op in ATTN_OPS else torch.bfloat16
        if op not in OPS:
            msg = f"{op}: not registered, its cases are skipped"
            if msg not in notes:
                notes.append(msg)
            return
        shape, why = shape_for(op, **want)
        if shape is None:
            notes.append(f"{group}: {why}")
            return
        impls = tuple(n for n in _uncompiled(op) if (peers or not _triton_peer(op, n))
                      and n not in drop)
        put(Case(op, shape, dtype, impls=impls, group=group))

    def gemv(ops: tuple, shapes: dict, model: str, M: int, peers: bool = True) -> None:
        for op in ops:
            for part, (n, k) in shapes.items():
                add(op, f"{model} {part}", peers, M=M, N=n, K=k, group_size=128)

    if ctx.backend != "cuda":  # dry run: the same ops, one tiny case each (dtypes: `add`)
        gemv(GEMV_OPS, {"tiny": TINY_GEMV}, "tiny", 1)
        add("paged_attention", "attn b2x64", B=2, context=64, **TINY_HEADS)
        add("paged_attention_kv8", "attn b2x64", B=2, context=64, **TINY_HEADS)
        return cases

    heads = llama3_8b_heads()
    big_first = dict(sorted(layer_gemv_shapes("llama-3-70b").items(),
                            key=lambda kv: -kv[1][0] * kv[1][1]))
    big2, small2 = dict(list(big_first.items())[:2]), dict(list(big_first.items())[2:])
    # The goals in the order the device check's time box can afford them. Peers only where a
    # goal compares them (the two large shapes at M = 1): GemLite's own tuning took 5-22 s a
    # case on the H200, and at the two small 70B shapes it cost ~33 s ahead of attention.
    gemv(("gemv_w4", "gemv_w8"), big2, "llama-3-70b", 1)
    gemv(("gemv_w4",), big2, "llama-3-70b", 16, peers=False)
    # 512 (sequence, KV head) programs fill the GPU at 64 x 4096 and `triton` does not split
    # there: the split-KV impls, each tuning a kernel of its own, are timed at 1 x 32768 only
    add("paged_attention", "attn b64x4096", B=64, context=4096, drop=SPLIT_KV_IMPLS, **heads)
    add("paged_attention", "attn b1x32768", B=1, context=32768, **heads)
    gemv(("gemv_w4", "gemv_w8"), small2, "llama-3-70b", 1, peers=False)  # the all-four goal
    gemv(("gemv_w4",), layer_gemv_shapes("llama-3-8b"), "llama-3-8b", 16, peers=False)
    try:
        for c in precision(ctx):
            impls = c.impls if c.impls is not None else _uncompiled(c.op)
            put(dataclasses.replace(c, impls=tuple(i for i in impls if i in _uncompiled(c.op))))
    except Exception as e:  # a failing suite is a note for the summary, not the check's crash
        notes.append(f"suite precision: {type(e).__name__}: {e}")
    gemv(("gemv_bf16",), big_first, "llama-3-70b", 1)
    add("paged_attention_kv8", "attn b64x4096", B=64, context=4096, **heads)
    gemv(GEMV_OPS, layer_gemv_shapes("llama-3-8b"), "llama-3-8b", 1)
    gemv(GEMV_OPS, layer_gemv_shapes("llama-3-8b"), "llama-3-8b", 16)
    return cases  # batch 16 at every 70B shape: `--suite gemv`
