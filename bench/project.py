"""Projection of a decode step onto catalog chips: the bandwidth bound, the compute bound, capacity.

Per chip: the step's bytes at the datasheet bandwidth times an efficiency (given, or the median %
of roof the best kernels reached in a results file) give the memory-bound step time; its FLOPs at
the dense BF16 datasheet rate give the compute-bound time (weight-only INT8/INT4 dequantize to
bf16, so bf16 is the rate that applies); the larger binds. Capacity: weights + KV cache over the
chip's memory (on-chip SRAM for SRAM-only chips) gives the chips needed. The multi-chip figure
assumes a perfect split of bytes and FLOPs and ignores interconnect cost entirely. A figure the
catalog does not have stays unknown: nothing is invented.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Iterable

from backends import Chip

from .results import in_cache
from .workload import Step

PROBES = ("copy", "read")
WEIGHT_OPS = {"bf16": "gemv_bf16", "int8": "gemv_w8", "int4": "gemv_w4"}
KV_OPS = {"bf16": "paged_attention", "int8": "paged_attention_kv8"}


@dataclass
class Projection:
    chip: str
    chip_name: str
    bytes_per_step: float
    flops_per_step: float
    mem_bw_gbps: float | None
    efficiency: float
    mem_time_s: float | None        # one chip's bandwidth, as if the model fit
    compute_tflops: float | None
    compute_time_s: float | None
    bound: str                      # "memory", "compute", "memory?" (no compute rate), "unknown"
    step_time_s: float | None
    tokens_per_s: float | None      # batch / step time (all sequences together)
    seq_tokens_per_s: float | None  # per sequence
    resident_bytes: int
    capacity_gb: float | None
    sram_only: bool
    chips_needed: int | None
    tokens_per_s_on_needed: float | None  # on chips_needed chips, ideal split, no interconnect

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def project(step: Step, chip: Chip, efficiency: float = 1.0) -> Projection:
    """Project `step` onto one chip at datasheet peak x efficiency (0 < efficiency <= 1.5)."""
    nbytes, flops = step.bytes, step.flops
    bw = chip.mem_bw_gbps
    t_mem = nbytes / (bw * 1e9 * efficiency) if bw else None
    tf = chip.bf16_tflops
    t_comp = flops / (tf * 1e12) if tf else None
    if t_mem is None:
        bound, t = "unknown", None  # a compute time alone is no bound on a memory-bound step
    elif t_comp is None:
        bound, t = "memory?", t_mem  # compute rate unknown: only the bandwidth bound is known
    else:
        bound, t = ("memory", t_mem) if t_mem >= t_comp else ("compute", t_comp)
    resident = step.resident_bytes()
    cap = chip.mem_gb
    need = math.ceil(resident / (cap * 1e9)) if cap else None
    on_need = step.batch * need / t if t and need else None
    return Projection(
        chip=chip.id, chip_name=chip.name, bytes_per_step=nbytes, flops_per_step=flops,
        mem_bw_gbps=bw, efficiency=efficiency, mem_time_s=t_mem, compute_tflops=tf,
        compute_time_s=t_comp, bound=bound, step_time_s=t,
        tokens_per_s=step.batch / t if t else None, seq_tokens_per_s=1 / t if t else None,
        resident_bytes=resident, capacity_gb=cap, sram_only=chip.sram_only, chips_needed=need,
        tokens_per_s_on_needed=on_need)


def efficiency_from_results(records: Iterable[dict[str, Any]], weights: str = "bf16",
                            kv: str = "bf16") -> tuple[float, str]:
    """Median % of the measured roof reached by the best ok impl of each case, as a fraction.

    Cases of the ops this step uses (the weight GEMV and attention at the chosen precisions) are
    preferred; without any, every non-probe case counts. Returns (efficiency, what it came from).
    """
    best: dict[tuple, float] = {}
    for r in records:
        if r.get("status") != "ok" or r.get("pct_roof") is None or r.get("op") in PROBES \
                or in_cache(r):  # a size sweep's in-cache % is not a DRAM efficiency
            continue
        key = (r["op"], tuple(sorted((r.get("shape") or {}).items())), r.get("dtype"))
        best[key] = max(best.get(key, 0.0), float(r["pct_roof"]))
    if not best:
        raise ValueError("no ok, non-probe results with a % of roof to take an efficiency from")
    wanted = {WEIGHT_OPS[weights], KV_OPS[kv]}
    chosen = {k: v for k, v in best.items() if k[0] in wanted} or best
    ops = sorted({k[0] for k in chosen})
    eff = statistics.median(chosen.values()) / 100
    return eff, (f"median {100 * eff:.0f}% of measured roof over {len(chosen)} case(s) of "
                 f"{', '.join(ops)} (best impl each)")


__all__ = ["Projection", "efficiency_from_results", "project"]
