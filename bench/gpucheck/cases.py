"""What the ncu step profiles: one launch of each Triton impl of the GEMV and attention ops, at a
shape whose working set is far past the GPU's L2 (on the CPU dry run, tiny shapes)."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from kernels import OPS

from ..suites import TINY_HEADS, llama3_8b_heads, shape_for

TINY_GEMV_NCU = (96, 256)  # the dry ncu step calls the Triton kernels interpreted: keep it small


def ncu_targets(backend: str, notes: list[str]) -> list[dict[str, Any]]:
    """One profiled launch per Triton impl of ours, at a shape the size of the L2 or larger (ncu
    flushes the caches before the profiled launch, so it reads from DRAM; peers are left out:
    the check is of our kernels, and the ncu box is short): GEMVs at
    Llama-3-8B gate_up 28672 x 4096 (INT4 62 MB, INT8 118 MB, bf16 235 MB), attention at batch
    16 x 4096 (268 MB of KV) and the split-KV path at 1 x 32768 (134 MB); on the GPU also INT4
    at M = 16, 57344 x 8192 (252 MB), on the one impl that runs M = 16, for its why pass."""
    dry = backend != "cuda"
    n, k = TINY_GEMV_NCU if dry else (28672, 4096)
    heads = TINY_HEADS if dry else llama3_8b_heads()
    plan: list[tuple] = [
        ("gemv_w4", dict(M=1, N=n, K=k, group_size=128)), ("gemv_w8", dict(M=1, N=n, K=k)),
        ("paged_attention", dict(B=2, context=64, **heads) if dry else
         dict(B=16, context=4096, **heads)),
        ("gemv_bf16", dict(M=1, N=n, K=k))]
    if not dry:
        plan += [("paged_attention", dict(B=1, context=32768, **heads)),
                 ("paged_attention_kv8", dict(B=16, context=4096, **heads)),
                 ("gemv_w4", dict(M=16, N=57344, K=8192, group_size=128), ("triton_w4",))]
    per_entry: list[list[dict[str, Any]]] = []
    for op_name, want, *only in plan:
        if op_name not in OPS:
            notes.append(f"ncu: {op_name} not registered, not profiled")
            continue
        triton_impls = [i for i in OPS[op_name].impls.values()
                        if i.kind == "triton" and "cuda" in i.backends and not i.baseline
                        and (not only or i.name in only[0])]
        if not triton_impls:
            notes.append(f"ncu: {op_name} has no Triton impl")
            continue
        shape, why = shape_for(op_name, **want)
        if shape is None:
            notes.append(f"ncu: {why}")
            continue
        if want.get("context", 0) >= 32768:  # the long-context entry is there for the split-KV path
            triton_impls.sort(key=lambda i: "split" not in i.name)
        entry = []
        for impl in triton_impls:
            if dry:  # the interpreter gets bf16 wrong (kernels/triton_util.py): fp32 or fp16
                dts = [d for d in (torch.float32, torch.float16) if d in impl.dtypes]
            else:
                dts = [torch.bfloat16] if torch.bfloat16 in impl.dtypes else []
            if not dts:
                notes.append(f"ncu: {op_name}/{impl.name} takes none of the dtypes checked")
                continue
            entry.append({"op": op_name, "impl": impl.name, "dtype": str(dts[0]).removeprefix("torch."),
                          "shape": dataclasses.asdict(shape)})
        per_entry.append(entry)
    # Round robin: every op's first Triton impl before any op's second, so that a spent time box
    # drops the least informative launches.
    depth = max((len(e) for e in per_entry), default=0)
    return [e[i] for i in range(depth) for e in per_entry if i < len(e)]
