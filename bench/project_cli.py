"""CLI for model workloads: `decodewall project`, and `decodewall run --model` (via bench.cli hooks).

`run --model M` turns a model's decode step into one case per distinct kernel (qkv, o, gate/up,
down, attention, lm_head, and the router for MoE), runs them like any other cases, then sums the
best impl's time per kernel times its calls per step. Ops are found through the registry only
(`kernels.OPS`), and their shape fields are matched by name, so new ops plug in as they land.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from .cli import EXTENSIONS, UsageError
from .project import KV_OPS, WEIGHT_OPS, efficiency_from_results, project
from .workload import (INT4_GROUP, KV_BLOCK, KV_PRECISIONS, WEIGHT_PRECISIONS, ConfigError, Step,
                       decode_step, load_model, model_names)

# Our dimension names -> names an op's shape type may use for them.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "M": ("M", "batch"), "N": ("N",), "K": ("K",),
    "group_size": ("group_size", "G", "group"),
    "B": ("B", "batch", "M"), "Hq": ("Hq", "num_heads", "H", "num_q_heads"),
    "Hkv": ("Hkv", "num_kv_heads", "kv_heads"), "D": ("D", "head_dim"),
    "context": ("context", "ctx", "seq_len", "context_len", "S", "L"),
    "block_size": ("block_size", "BS"), "ragged": ("ragged",),
}


def _positive(name: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise UsageError(f"{name} must be an integer, got {text!r}") from None
        if v < 1:
            raise UsageError(f"{name} must be at least 1, got {v}")
        return v
    return parse


def add_step_args(p, model_required: bool) -> None:
    p.add_argument("--model", required=model_required, metavar="NAME|config.json",
                   help=f"built-in model ({', '.join(model_names())}) or a HF config.json path")
    p.add_argument("--batch", type=_positive("--batch"), default=None,
                   help="sequences decoded together (default 1)")
    p.add_argument("--ctx", type=_positive("--ctx"), default=None,
                   help="tokens already in each sequence's KV cache (default 4096)")
    p.add_argument("--weights", choices=WEIGHT_PRECISIONS, default=None,
                   help="precision of every linear layer (default bf16; int4: group 128)")
    p.add_argument("--kv", choices=KV_PRECISIONS, default=None,
                   help="KV-cache precision (default bf16)")


def build_step(args) -> Step:
    try:
        cfg = load_model(args.model)
        return decode_step(cfg, args.batch or 1, args.ctx or 4096, args.weights or "bf16",
                           args.kv or "bf16")
    except ConfigError as e:
        raise UsageError(str(e)) from None


# --- run --model --------------------------------------------------------------------------------

def _shape_for(op, dims: dict[str, int], what: str):
    """Build the op's shape from our dims, matching its fields by name."""
    fields = dataclasses.fields(op.shape_type)
    have = {**dims, "group_size": INT4_GROUP, "block_size": KV_BLOCK, "ragged": 0}
    kw: dict[str, int] = {}
    for f in fields:
        for ours, names in SYNONYMS.items():
            if f.name in names and ours in have:
                kw[f.name] = have[ours]
                break
        required = (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        if f.name not in kw and required:
            raise UsageError(f"cannot map {op.name}'s shape field {f.name!r} for the {what} "
                             f"kernel (known dims: {', '.join(dims)})")
    try:
        return op.shape(**kw)
    except ValueError as e:
        raise UsageError(f"{what} kernel is an impossible shape for {op.name}: {e}") from None


def kernel_op(kernel, step: Step) -> str:
    if kernel.kind == "attention":
        return KV_OPS[step.kv]
    return WEIGHT_OPS[kernel.precision]


def model_cases(args, ctx) -> list | None:
    """The cases of `run --model`: one per distinct kernel of the decode step (None: no --model)."""
    import torch
    from kernels import OPS
    from .suites import Case
    if not args.model:
        given = [f"--{n}" for n in ("batch", "ctx", "weights", "kv") if getattr(args, n) is not None]
        if given:
            raise UsageError(f"{', '.join(given)} need(s) --model")
        return None
    if args.op or args.suite or args.shape:
        raise UsageError("give --model, or --suite / --op, not both")
    step = build_step(args)
    args.model_step = step
    need = sorted({kernel_op(k, step) for k in step.kernels})
    missing = [o for o in need if o not in OPS]
    if missing:
        why = {"gemv_w8": "--weights int8", "gemv_w4": "--weights int4",
               "paged_attention": "attention (--kv bf16)", "paged_attention_kv8": "--kv int8"}
        raise UsageError(f"{step.model.name} needs op(s) {', '.join(missing)} "
                         f"({'; '.join(why.get(o, o) for o in missing)}), not registered yet "
                         f"(registered: {', '.join(OPS)})")
    dtype = torch.bfloat16
    if args.dtype:
        from .cli import resolve_dtypes
        dtype = resolve_dtypes(args.dtype, None)[0]
        if dtype not in (torch.bfloat16, torch.float16):
            raise UsageError("--model takes 16-bit activations (bfloat16 or float16): the step's "
                             "byte model counts 2-byte activations, scales and zeros")
    cases, seen = [], set()
    for k in step.kernels:
        op = OPS[kernel_op(k, step)]
        if dtype not in op.dtypes:
            raise UsageError(f"{op.name} does not take dtype {dtype}")
        shape = _shape_for(op, k.dims, k.name)
        if (op.name, shape) in seen:
            continue
        seen.add((op.name, shape))
        cases.append(Case(op.name, shape, dtype, group=f"{step.model.name} {k.name}"))
    return cases


def step_summary(step: Step, records: list[dict[str, Any]], roof_gbps: float) -> dict[str, Any]:
    """Best ok impl per kernel, times calls per step, against bytes/step over the measured roof."""
    from kernels import OPS
    rows, total, missing = [], 0.0, []
    for k in step.kernels:
        opname = kernel_op(k, step)
        shape = dataclasses.asdict(_shape_for(OPS[opname], k.dims, k.name))
        ok = [r for r in records if r["op"] == opname and r["shape"] == shape
              and r["status"] == "ok" and r.get("time_s") and not r.get("warm")]
        best = min(ok, key=lambda r: r["time_s"]["median"]) if ok else None
        t = best["time_s"]["median"] if best else None
        if t is None:
            missing.append(k.name)
        else:
            total += t * k.calls
        rows.append({"kernel": k.name, "op": opname, "shape": shape, "calls": k.calls,
                     "impl": best["impl"] if best else None, "time_s": t,
                     "step_time_s": t * k.calls if t is not None else None,
                     "bytes_per_step": k.bytes * k.calls,
                     "pct_roof": best.get("pct_roof") if best else None})
    bound = step.bytes / (roof_gbps * 1e9) if roof_gbps else None
    measured = None if missing else total
    return {
        "model": step.model.name, "batch": step.batch, "ctx": step.ctx, "weights": step.weights,
        "kv": step.kv, "bytes_per_step": step.bytes, "flops_per_step": step.flops,
        "roof_gbps": roof_gbps, "kernels": rows, "missing": missing,
        "measured_step_s": measured,
        "measured_tokens_per_s": step.batch / measured if measured else None,
        "bound_step_s": bound, "bound_tokens_per_s": step.batch / bound if bound else None,
        "pct_of_bound": 100 * bound / measured if measured and bound else None,
    }


def print_step(args, records: list[dict[str, Any]], roof, as_json: bool = False) -> None:
    """After `run --model`'s table: the step, summed from the best impl of each kernel."""
    from rich.table import Table
    from .plot import pct_bar
    from .report import console, fmt_bytes, fmt_shape, fmt_time
    step: Step = args.model_step
    s = step_summary(step, records, roof.gbps)
    if as_json:
        print(json.dumps({"step": s}), flush=True)
        return
    t = Table(title=f"{step.model.name} decode step — batch {step.batch}, ctx {step.ctx}, "
              f"weights {step.weights}, KV {step.kv}", header_style="bold")
    for col, j in (("kernel", "left"), ("op", "left"), ("shape", "left"), ("calls/step", "right"),
                   ("best impl", "left"), ("time/call", "right"), ("time/step", "right"),
                   ("bytes/step", "right"), ("% of roof", "left")):
        t.add_column(col, justify=j)
    for r in s["kernels"]:
        t.add_row(r["kernel"], r["op"], fmt_shape(r["shape"]), f"{r['calls']:.4g}",
                  r["impl"] or "[red]none ok[/]", fmt_time(r["time_s"]),
                  fmt_time(r["step_time_s"]), fmt_bytes(r["bytes_per_step"]),
                  pct_bar(r["pct_roof"]))
    out = console()
    out.print(t)
    bound = s["bound_step_s"]
    out.print(f"bandwidth bound here: {fmt_bytes(step.bytes)}/step ÷ measured roof "
              f"{roof.gbps:.1f} GB/s = {fmt_time(bound)}/step → {s['bound_tokens_per_s']:.3g} tok/s")
    if s["missing"]:
        out.print(f"[red]measured step: unknown — no ok impl for {', '.join(s['missing'])}[/]")
    else:
        out.print(f"measured kernel-only step: {fmt_time(s['measured_step_s'])} → "
                  f"[bold]{s['measured_tokens_per_s']:.3g} tok/s[/] (batch {step.batch}; "
                  f"{s['pct_of_bound']:.0f}% of the bandwidth bound)")
    out.print("[dim]kernel-only: each kernel timed cold in isolation, summed over calls/step; "
              "embedding lookup, norms, RoPE, residual adds and sampling are not timed[/]")


# --- project ------------------------------------------------------------------------------------

def cmd_project(args) -> int:
    from backends import load_catalog, lookup_chip
    step = build_step(args)
    if args.efficiency is not None and getattr(args, "from_", None):
        raise UsageError("give --efficiency or --from, not both")
    if getattr(args, "from_", None):
        from .results import ResultsError, read_results
        try:
            records = read_results(args.from_)
            eff, source = efficiency_from_results(records, step.weights, step.kv)
        except (ResultsError, ValueError) as e:
            raise UsageError(f"--from {args.from_}: {e}") from None
    elif args.efficiency is not None:
        eff = args.efficiency
        if not 0 < eff <= 1:
            raise UsageError(f"--efficiency is a fraction of datasheet peak in (0, 1], got {eff:g}"
                             + (" (give 0.8, not 80)" if 1 < eff <= 100 else ""))
        source = f"given: {100 * eff:.0f}% of datasheet peak"
    else:
        eff, source = 1.0, "datasheet peak (no efficiency given)"
    if args.chip:
        chips = []
        for name in args.chip:
            try:
                chips.append(lookup_chip(name))
            except KeyError as e:
                raise UsageError(str(e.args[0])) from None
    else:
        chips = list(load_catalog().values())
    projs = [project(step, c, eff) for c in chips]
    head = {"model": step.model.name, "params": step.model.param_count(), "batch": step.batch,
            "ctx": step.ctx, "weights": step.weights, "kv": step.kv,
            "efficiency_source": source}
    if args.json:
        for p in projs:
            print(json.dumps({**head, **p.as_dict()}))
        return 0
    _print_projection(step, projs, source)
    return 0


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _print_projection(step: Step, projs, source: str) -> None:
    from rich.table import Table
    from .report import console, fmt_bytes, fmt_time
    c = step.model
    act = step.bytes - step.weight_bytes - step.kv_bytes
    moe = ""
    if c.is_moe:
        from .workload import expected_experts
        moe = (f"; MoE: {expected_experts(c.num_local_experts, c.num_experts_per_tok, step.batch):.2f}"
               f" of {c.num_local_experts} experts read per layer at batch {step.batch}")
    lines = [
        f"[bold]{c.name}[/] ({c.param_count() / 1e9:.2f}B params), batch {step.batch}, "
        f"ctx {step.ctx}, weights {step.weights}, KV {step.kv}{moe}",
        f"per step: {fmt_bytes(step.bytes)} = weights {fmt_bytes(step.weight_bytes)} + KV "
        f"{fmt_bytes(step.kv_bytes)} + activations/table/embedding rows {fmt_bytes(act)}; "
        f"{step.flops / 1e9:.4g} GFLOP; to hold: {fmt_bytes(step.resident_bytes())} "
        f"(weights + KV for batch x ctx)",
        f"efficiency: {source}",
    ]
    t = Table(header_style="bold")
    for col in ("chip", "mem BW GB/s", "mem-bound step", "compute-bound step", "binds",
                "tok/s (1 chip)", "memory GB", "chips to hold", "tok/s on those (ideal, no interconnect)"):
        t.add_column(col, justify="left" if col in ("chip", "binds") else "right")
    unk = "[dim]unknown[/]"
    for p in projs:
        t.add_row(p.chip, f"{p.mem_bw_gbps:,.0f}" if p.mem_bw_gbps else unk,
                  fmt_time(p.mem_time_s) if p.mem_time_s else unk,
                  fmt_time(p.compute_time_s) if p.compute_time_s else unk,
                  {"memory": "memory", "memory?": "memory?", "compute": "[cyan]compute[/]"}.get(p.bound, unk),
                  _rate(p.tokens_per_s) if p.tokens_per_s else unk,
                  (f"{p.capacity_gb:g}" + (" SRAM" if p.sram_only else "")) if p.capacity_gb
                  else unk,
                  str(p.chips_needed) if p.chips_needed else unk,
                  _rate(p.tokens_per_s_on_needed) if p.tokens_per_s_on_needed else unk)
    t.caption = ("tok/s = batch / step time at one chip's datasheet bandwidth x efficiency (compute: "
                 "dense BF16 peak; memory? = compute rate unknown). Chips to hold: weights + KV over memory (SRAM-only chips: on-chip"
                 " SRAM); ignores activations and runtime overhead. Multi-chip tok/s assumes a "
                 "perfect split and IGNORES INTERCONNECT cost. unknown = not in the catalog, never "
                 "guessed.")
    out = console()
    for line in lines:
        out.print(line)
    out.print(t)


def register(sub) -> None:
    p = sub.add_parser("project", help="project a model's decode step onto catalog chips")
    add_step_args(p, model_required=True)
    p.add_argument("--chip", action="append", metavar="ID", help="only these chips (repeatable)")
    p.add_argument("--efficiency", type=float, metavar="E",
                   help="fraction of datasheet bandwidth reached (default 1.0)")
    p.add_argument("--from", dest="from_", metavar="RESULTS.jsonl",
                   help="take the efficiency from measured %% of roof in a results file")
    p.add_argument("--json", action="store_true", help="one JSON object per chip")
    p.set_defaults(func=cmd_project)
    run = sub.choices.get("run")
    if run is not None:
        g = run.add_argument_group("model decode step (instead of --suite/--op)")
        add_step_args(g, model_required=False)


EXTENSIONS.append(register)
