"""Projection of a decode step onto catalog chips: bandwidth, compute, capacity and the split.

One chip: the step's bytes at the datasheet bandwidth times an efficiency (given, or the median %
of datasheet bandwidth the best kernels reached in a results file, % of the measured roof for a
record without a datasheet figure) give the memory-bound step time; its FLOPs at
the dense BF16 datasheet rate give the compute-bound time (weight-only INT8/INT4 dequantize to
bf16, so bf16 is the rate that applies); the larger binds.

Capacity is judged on the fullest chip of a split (tensor-parallel degree tp, pp pipeline stages,
L layers): ceil(L/pp) layers' weights / tp, plus those layers' KV cache / min(tp, KV heads) (a KV
head is not split: past tp = KV heads each is copied to tp / KV heads chips, and so are the K and V
rows of its qkv projection, as vLLM's QKVParallelLinear copies them; norms, the MoE router and an
o bias are whole on every chip), plus the embedding, lm_head and final norm spread over all tp x pp
chips. That last term is an assumption: frameworks place them differently (vLLM shards them over
tp on the first and last stage only, which needs more on those chips). It must fit the chip's
memory (on-chip SRAM for SRAM-only chips). Only tp that serving frameworks accept count (vLLM's rules,
`tp_degrees`): tp divides the query heads and the intermediate size, divides the KV heads or is a
multiple of them, and at INT4 leaves each chip whole groups along K.

Several chips (`project_split`), tensor-parallel degree tp, pipeline degree pp:
- every kernel call costs max(its bytes on one chip / (bandwidth x efficiency), its FLOPs on one
  chip / peak) plus a fixed floor (launch and first-byte latency), however small its slice: weights
  and FLOPs divide by tp (the K and V projections by min(tp, KV heads), the router not at all), the
  KV cache by min(tp, KV heads) (a KV head is not split), activations and an o bias (added on one
  chip, as vLLM's RowParallelLinear does) not at all; the norm weights
  (whole on every chip) and the batch's embedding rows are read at bandwidth, with no floor;
- tp > 1 adds two all-reduces of the activations (batch x hidden x 2 bytes) a layer: latency +
  bytes x 2(tp-1)/tp / link bandwidth (the catalog's per-direction figure, or measured `allreduce`
  records of the same chip);
- pipeline stages run one after another for a token, so their times add (they divide nothing at
  batch 1; a batch is not split into micro-batches here), plus one activation hop a boundary.
Parameters come from datasheets, the catalog and collective measurements, never from end-to-end
tokens/s. A figure the catalog does not have stays unknown; a missing link latency leaves the
collective's bandwidth term only, and the rate is then an upper bound (marked).
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Iterable

from backends import Chip

from ..results import compute_bound, in_cache, suspect
from .workload import INT4_GROUP, Kernel, ModelConfig, Resident, Step

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
    chips_needed: int | None        # tp x pp of the split `smallest_split` picks; None: capacity
    #                                 unknown, or no split holds the model
    tokens_per_s_on_needed: float | None  # per sequence, on that split
    split: dict[str, Any] | None = None     # that split's SplitProjection.as_dict()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_FLOOR_US = 5.0  # a kernel launch on a GPU: 4-6 us of driver and queue time (docs/projection.md)
ACT_BYTES = 2  # bf16 activations between chips
MAX_CHIPS = 65536  # tp and pp each: past the largest training clusters, let alone a decode split
MAX_EFFICIENCY = 1.5  # of datasheet peak: beyond it a % of roof measured nothing from memory
MIN_EFFICIENCY = 1e-4  # 0.01%: a best impl that slow measures a broken kernel, not memory;
#                        a given efficiency below it projects hours a token


@dataclass
class LinkModel:
    """What a collective or a hop costs on one chip's links: latency (s) + bytes / bandwidth."""
    gbps: float | None          # per chip, per direction
    hop_gbps: float | None      # one link, one direction (a pipeline hop); the chip's if unknown
    latency_s: float | None     # a small-message all-reduce; None: not published, not measured
    source: str
    measured: dict[int, list[tuple[int, float]]] | None = None  # world size -> (bytes, time_s)

    def allreduce_s(self, nbytes: float, n: int) -> tuple[float | None, bool]:
        """(seconds, is a lower bound) of one all-reduce of nbytes over n chips."""
        if n <= 1:
            return 0.0, False
        from kernels.collectives.ops import bus_factor
        per_byte = bus_factor(n) / (self.gbps * 1e9) if self.gbps else None
        if self.measured and n in self.measured:
            return _interpolate(self.measured[n], nbytes, per_byte)
        if self.gbps is None:
            return None, False
        bw = nbytes * per_byte
        return (bw + self.latency_s, False) if self.latency_s is not None else (bw, True)

    def hop_s(self, nbytes: float) -> tuple[float | None, bool]:
        gbps = self.hop_gbps or self.gbps
        if gbps is None:
            return None, False
        bw = nbytes / (gbps * 1e9)
        return (bw + self.latency_s, False) if self.latency_s is not None else (bw, True)


def _interpolate(points: list[tuple[int, float]], nbytes: float,
                 per_byte_s: float | None = None) -> tuple[float, bool]:
    """(time, is a lower bound) of a message of nbytes from measured (bytes, time) pairs: linear
    between the two sizes around it, the nearest size's time below the smallest (latency-bound
    there). Above the largest, the largest's time plus the extra bytes at the steeper of the
    last two sizes' slope and the catalog's bandwidth (`per_byte_s`): a time measured at a small,
    latency-bound size scaled by the size ratio would charge a 1 MiB message 1024 latencies.
    Without a catalog bandwidth that is a lower bound (the measured slope may be noise)."""
    by_size: dict[int, list[float]] = defaultdict(list)
    for b, t in points:  # several runs of one size: their median
        by_size[b].append(t)
    pts = sorted((b, statistics.median(ts)) for b, ts in by_size.items())
    if nbytes <= pts[0][0]:
        return pts[0][1], False
    for (b0, t0), (b1, t1) in zip(pts, pts[1:]):
        if nbytes <= b1:
            return t0 + (t1 - t0) * (nbytes - b0) / (b1 - b0), False
    b1, t1 = pts[-1]
    slope = 0.0
    if len(pts) > 1:
        b0, t0 = pts[-2]
        slope = max((t1 - t0) / (b1 - b0), 0.0)
    if per_byte_s is not None:
        return t1 + max(slope, per_byte_s) * (nbytes - b1), False
    return t1 + slope * (nbytes - b1), True


def link_model(chip: Chip, records: Iterable[dict[str, Any]] = ()) -> LinkModel:
    """The chip's link from the catalog, or measured `allreduce` records of this chip (their
    times replace the catalog's figures for the world sizes they cover). A time measured on
    another device (another chip, or a CPU's gloo ranks) says nothing about this chip's link:
    such records are left out, and the source says so."""
    ic = chip.interconnect
    measured: dict[int, list[tuple[int, float]]] = {}
    elsewhere: set[str] = set()
    for r in records:
        if r.get("op") == "allreduce" and r.get("status") == "ok" and r.get("time_s"):
            n, nbytes = r["shape"].get("world_size"), r["shape"].get("bytes")
            if not (isinstance(n, int) and n >= 2 and isinstance(nbytes, int) and nbytes >= 1):
                continue  # not a collective's shape: no link figure in it
            dev = r.get("device") if isinstance(r.get("device"), dict) else {}
            if dev.get("chip") != chip.id:
                elsewhere.add(str(dev.get("chip") or dev.get("name") or "an unnamed device"))
                continue
            measured.setdefault(n, []).append((nbytes, r["time_s"]["median"]))
    lat = ic.allreduce_latency_us * 1e-6 if ic.allreduce_latency_us is not None else None
    src = f"catalog: {ic.fabric}"
    if measured:
        src = f"measured allreduce at world size {', '.join(map(str, sorted(measured)))}; " + src
    if elsewhere:
        src += (f" (allreduce records of {', '.join(sorted(elsewhere))} not used: a time on one "
                "device is not another's)")
    return LinkModel(ic.link_gbps, ic.per_link_gbps, lat, src, measured or None)


@dataclass
class SplitProjection:
    chip: str
    tp: int
    pp: int
    chips: int
    holds: bool | None              # the fullest chip holds its share (None: capacity unknown)
    chip_resident_bytes: float      # what the fullest chip holds (module docstring)
    kernel_time_s: float | None     # every kernel call of the step, bytes/FLOPs on one chip's slice
    floor_s: float                  # the floor charged a kernel call
    floor_time_s: float             # floor x kernel calls (part of kernel_time_s)
    collective_time_s: float | None # 2 all-reduces a layer at tp > 1
    hop_time_s: float | None        # pp - 1 activation hops
    step_time_s: float | None
    tokens_per_s: float | None      # per sequence: 1 / step time
    batch_tokens_per_s: float | None
    upper_bound: bool               # a link latency was unknown: the rate can only be lower
    link_source: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def kernel_calls(step: Step) -> float:
    return sum(k.calls for k in step.kernels)


def tp_degrees(cfg: ModelConfig, weights: str = "bf16") -> list[int]:
    """Tensor-parallel degrees a serving framework accepts for `cfg` (vLLM's rules), ascending: tp
    divides the query heads and the intermediate size, and divides the KV heads or is a multiple
    of them; at INT4 a row-parallel layer's K share (o: heads x head_dim / tp, down: intermediate
    / tp) is whole groups, as the format's scales and zeros need."""
    hq, hkv, inter = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size
    divisors = {d for i in range(1, math.isqrt(hq) + 1) if hq % i == 0 for d in (i, hq // i)}
    ks = (hq * cfg.head_dim, inter) if weights == "int4" else ()
    return sorted(t for t in divisors if (hkv % t == 0 or t % hkv == 0) and inter % t == 0
                  and all(k // t % INT4_GROUP == 0 for k in ks))


def tp_error(cfg: ModelConfig, tp: int, weights: str = "bf16") -> str | None:
    """Why `tp` is no tensor-parallel degree for `cfg` at `weights` (one line), or None when it
    is one."""
    valid = tp_degrees(cfg, weights)
    if tp in valid:
        return None
    shown = ", ".join(map(str, valid[:16])) + (", …" if len(valid) > 16 else "")
    groups = (f", and at int4 leaves each chip whole groups of {INT4_GROUP} along K (o: "
              f"{cfg.num_attention_heads * cfg.head_dim}, down: {cfg.intermediate_size})"
              if weights == "int4" else "")
    return (f"tp {tp} does not fit {cfg.name}'s heads ({cfg.num_attention_heads} query, "
            f"{cfg.num_key_value_heads} KV) and intermediate size {cfg.intermediate_size}: a "
            "degree divides the query heads and the intermediate size and divides or is a "
            f"multiple of the KV heads{groups}; valid: {shown}")


def chip_share(k: Kernel, cfg: ModelConfig, tp: int) -> float:
    """The fraction of kernel k's weights and FLOPs one chip of a tp-way split takes: 1/tp, but
    the MoE router is replicated (every chip routes its tokens), and qkv's K and V rows split over
    min(tp, KV heads) only: a KV head is not split, so past tp = KV heads its projection is copied
    with it (vLLM's QKVParallelLinear). Every format's bytes are linear in the rows."""
    if k.name == "router":
        return 1.0
    if k.name == "qkv":
        hq, hkv = cfg.num_attention_heads, cfg.num_key_value_heads
        q = hq / (hq + 2 * hkv)
        return q / tp + (1 - q) / min(tp, hkv)
    return 1 / tp


def chip_resident_bytes(step: Step, tp: int, pp: int, resident: Resident | None = None) -> float:
    """Bytes the fullest chip of a tp x pp split holds (module docstring): ceil(L/pp) layers'
    weights / tp (K and V projections / min(tp, KV heads), norms, router and o bias whole) and KV
    cache / min(tp, KV heads), plus embedding, lm_head and final norm / (tp x pp)."""
    r = resident or step.resident()
    layers = math.ceil(r.layers / pp)
    kv_split = min(tp, step.model.num_key_value_heads)
    split = r.layer_weight_bytes - r.layer_kv_proj_bytes - r.layer_replicated_bytes
    layer = split / tp + r.layer_kv_proj_bytes / kv_split + r.layer_replicated_bytes
    return (layers * layer + layers * r.layer_kv_bytes / kv_split
            + r.shared_weight_bytes / (tp * pp))


def _fewest_stages(step: Step, tp: int, cap_bytes: float, resident: Resident) -> int | None:
    """The fewest stages (at most one layer a stage, at most MAX_CHIPS) at which tp x stages
    holds, or None."""
    L = min(step.model.num_hidden_layers, MAX_CHIPS)  # project_split takes no more stages
    if chip_resident_bytes(step, tp, L, resident) > cap_bytes:
        return None
    lo, hi = 1, L  # the fullest chip only shrinks as stages are added: the first that holds
    while lo < hi:
        mid = (lo + hi) // 2
        if chip_resident_bytes(step, tp, mid, resident) <= cap_bytes:
            hi = mid
        else:
            lo = mid + 1
    return lo


def project_split(step: Step, chip: Chip, tp: int, pp: int = 1, efficiency: float = 1.0,
                  floor_s: float = DEFAULT_FLOOR_US * 1e-6,
                  link: LinkModel | None = None) -> SplitProjection:
    """One token of `step` on tp x pp chips (see the module docstring)."""
    if not (1 <= tp <= MAX_CHIPS and 1 <= pp <= MAX_CHIPS):
        raise ValueError(f"tp and pp must be 1..{MAX_CHIPS}, got tp={tp}, pp={pp}")
    c = step.model
    if pp > c.num_hidden_layers:
        raise ValueError(f"pp={pp} is more stages than {c.name}'s {c.num_hidden_layers} layers")
    bad_tp = tp_error(c, tp, step.weights)
    if bad_tp:
        raise ValueError(bad_tp)
    link = link or link_model(chip)
    bw, tf = chip.mem_bw_gbps, chip.bf16_tflops
    kv_split = min(tp, c.num_key_value_heads)
    t_kernels: float | None = 0.0
    if bw is None:
        t_kernels = None
    else:
        for k in step.kernels:
            share = chip_share(k, c, tp)
            nbytes = ((k.weight_bytes - k.whole_bytes) * share + k.whole_bytes
                      + k.kv_bytes / kv_split + k.act_bytes)
            t = nbytes / (bw * 1e9 * efficiency)
            if tf:
                t = max(t, k.flops * share / (tf * 1e12))
            t_kernels += k.calls * (t + floor_s)
        # norm weights (whole on every chip) and the batch's embedding rows: no kernel of their own
        t_kernels += sum(step.other_bytes.values()) / (bw * 1e9 * efficiency)
    msg = step.batch * c.hidden_size * ACT_BYTES
    one, low1 = link.allreduce_s(msg, tp)
    group = chip.interconnect.group
    source = link.source
    if group and tp > group and not (link.measured and tp in link.measured):
        # past the fabric's group the all-reduce crosses a slower link the catalog lacks: the
        # group's bandwidth and latency only bound its time from below
        low1 = True
        source += f"; tp {tp} spans more than its group of {group}: the all-reduce costs more"
    coll = None if one is None else 2 * c.num_hidden_layers * one
    hop1, low2 = link.hop_s(msg) if pp > 1 else (0.0, False)
    hops = None if hop1 is None else (pp - 1) * hop1
    step_t = None if None in (t_kernels, coll, hops) else t_kernels + coll + hops
    on_chip = chip_resident_bytes(step, tp, pp)
    holds = None if not chip.mem_gb else on_chip <= chip.mem_gb * 1e9
    return SplitProjection(
        chip=chip.id, tp=tp, pp=pp, chips=tp * pp, holds=holds, chip_resident_bytes=on_chip,
        kernel_time_s=t_kernels, floor_s=floor_s, floor_time_s=kernel_calls(step) * floor_s,
        collective_time_s=coll, hop_time_s=hops, step_time_s=step_t,
        tokens_per_s=1 / step_t if step_t else None,
        batch_tokens_per_s=step.batch / step_t if step_t else None,
        upper_bound=bool((low1 and tp > 1) or (low2 and pp > 1)), link_source=source)


def smallest_split(step: Step, chip: Chip, tp: int | None = None) -> tuple[int, int] | None:
    """(tp, pp) of the fewest chips that hold the model, over valid tp only (`tp_degrees`), at
    most one layer a stage. Among splits of as many chips: with a known fabric group, tensor
    parallel within it first (the larger tp, the fewer stages); with none, stages first. `tp`
    given: its fewest stages that hold, or L stages (at most MAX_CHIPS; which then show as not
    holding). None:
    capacity unknown, or no split holds."""
    if not chip.mem_gb:
        return None
    cap = chip.mem_gb * 1e9
    r = step.resident()
    if tp is not None:
        return tp, _fewest_stages(step, tp, cap, r) or min(step.model.num_hidden_layers,
                                                           MAX_CHIPS)
    group = chip.interconnect.group
    holding = [(t, pp) for t in tp_degrees(step.model, step.weights) if t <= MAX_CHIPS
               for pp in [_fewest_stages(step, t, cap, r)] if pp]
    if not holding:
        return None
    if group:
        return min(holding, key=lambda s: (s[0] * s[1], s[0] > group, -s[0]))
    return min(holding, key=lambda s: (s[0] * s[1], -s[1]))


def project(step: Step, chip: Chip, efficiency: float = 1.0,
            floor_s: float = DEFAULT_FLOOR_US * 1e-6, link: LinkModel | None = None) -> Projection:
    """Project `step` onto one chip at datasheet peak x efficiency (0 < efficiency <= 1.5), and
    onto the split `smallest_split` picks to hold it."""
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
    tp_pp = smallest_split(step, chip)
    need = tp_pp[0] * tp_pp[1] if tp_pp else None
    split = project_split(step, chip, *tp_pp, efficiency, floor_s, link) if tp_pp else None
    on_need = split.tokens_per_s if split else None
    return Projection(
        chip=chip.id, chip_name=chip.name, bytes_per_step=nbytes, flops_per_step=flops,
        mem_bw_gbps=bw, efficiency=efficiency, mem_time_s=t_mem, compute_tflops=tf,
        compute_time_s=t_comp, bound=bound, step_time_s=t,
        tokens_per_s=step.batch / t if t else None, seq_tokens_per_s=1 / t if t else None,
        resident_bytes=resident, capacity_gb=cap, sram_only=chip.sram_only, chips_needed=need,
        tokens_per_s_on_needed=on_need, split=split.as_dict() if split else None)


def efficiency_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records an efficiency can come from: ok, a % of the datasheet or the roof, not a
    probe, not a case the cache held (a size sweep's in-cache % is not a DRAM efficiency), not
    one the run judged harness suspect (above the roof or the compute roof), not one it judged
    compute-bound (past the ridge its % of the bandwidth roof is low by design: the gemv suite's
    batch 4-64 cases, at 1-20% of the roof, pulled a median of ~50% at batch 1 down to 20%)."""
    return [r for r in records
            if r.get("status") == "ok" and r.get("op") not in PROBES and not in_cache(r)
            and not suspect(r) and not compute_bound(r)
            and (r.get("pct_datasheet") is not None or r.get("pct_roof") is not None)]


def efficiency_from_results(records: Iterable[dict[str, Any]], weights: str = "bf16",
                            kv: str = "bf16") -> tuple[float, str]:
    """Median memory efficiency reached by the best ok impl of each case, as a fraction of the
    datasheet bandwidth that `project` multiplies it by: a record's % of its chip's datasheet
    where it has one, else its % of the measured roof (a CPU, or a chip the catalog lacks, whose
    measured roof stands in for a datasheet). A % of the roof alone would be optimistic by the
    measured chip's roof / datasheet gap (89% on the H200).

    Cases of the ops this step uses (the weight GEMV and attention at the chosen precisions) are
    preferred; without any, every non-probe case counts. Returns (efficiency, what it came from).
    """
    best: dict[tuple, tuple[float, str]] = {}
    records = list(records)
    for r in efficiency_records(records):
        pct, of = ((r.get("pct_datasheet"), "datasheet") if r.get("pct_datasheet") is not None
                   else (r.get("pct_roof"), "measured roof"))
        key = (r["op"], tuple(sorted((r.get("shape") or {}).items())), r.get("dtype"))
        if key not in best or float(pct) > best[key][0]:
            best[key] = (float(pct), of)
    if not best:
        left = [f"{n} {why}" for n, why in (
            (sum(r.get("status") == "ok" and in_cache(r) for r in records), "ran in cache"),
            (sum(r.get("status") == "ok" and suspect(r) for r in records), "harness suspect"),
            (sum(r.get("status") == "ok" and compute_bound(r) for r in records),
             "compute-bound"))
            if n]
        raise ValueError("no ok, non-probe results with a % of roof to take an efficiency from" +
                         (f" ({', '.join(left)}: not a memory efficiency)" if left else ""))
    wanted = {WEIGHT_OPS[weights], KV_OPS[kv]}
    chosen = {k: v for k, v in best.items() if k[0] in wanted} or best
    ops = sorted({k[0] for k in chosen})
    eff = statistics.median(v for v, _ in chosen.values()) / 100
    kinds = sorted({of for _, of in chosen.values()})
    of = kinds[0] if len(kinds) == 1 else "datasheet (measured roof where a record has none)"
    if eff < MIN_EFFICIENCY:
        raise ValueError(f"the best impls reached a median {100 * eff:.2g}% of the {of}: too "
                         f"little to project with (at least {100 * MIN_EFFICIENCY:g}%)")
    if eff > MAX_EFFICIENCY:
        raise ValueError(f"a median {100 * eff:.3g}% of the {of} is no memory efficiency (at "
                         f"most {100 * MAX_EFFICIENCY:.0f}%: a roof measured too low, or cases "
                         "the cache held); give --efficiency")
    return eff, (f"median {100 * eff:.3g}% of {of} over {len(chosen)} case(s) of "
                 f"{', '.join(ops)} (best impl each)")


__all__ = ["DEFAULT_FLOOR_US", "MAX_CHIPS", "MAX_EFFICIENCY", "MIN_EFFICIENCY", "LinkModel",
           "Projection", "SplitProjection", "chip_resident_bytes", "chip_share",
           "efficiency_from_results", "efficiency_records", "link_model", "project",
           "project_split", "smallest_split", "tp_degrees", "tp_error"]
