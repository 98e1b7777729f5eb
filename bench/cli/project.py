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

from . import EXTENSIONS, UsageError
from ..model.project import (DEFAULT_FLOOR_US, KV_OPS, WEIGHT_OPS, efficiency_from_results,
                             project)
from ..model.workload import (INT4_GROUP, KV_BLOCK, KV_PRECISIONS, WEIGHT_PRECISIONS,
                              ConfigError, Step, decode_step, load_model, model_names)


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


def _nonneg_float(text: str) -> float:
    import math
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"not a number: {text!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise UsageError(f"must be a finite number >= 0, got {text!r}")
    return v


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
    """Build the op's shape from a kernel's dims (the ops' own field names: M, N, K; B, Hq, Hkv,
    D, context) and the step's formats (INT4 group, KV block, every sequence full length)."""
    fields = dataclasses.fields(op.shape_type)
    have = {**dims, "group_size": INT4_GROUP, "block_size": KV_BLOCK, "ragged": 0}
    kw: dict[str, int] = {}
    for f in fields:
        if f.name in have:
            kw[f.name] = have[f.name]
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
    from ..case import Case
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
        from . import resolve_dtypes
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
    from ..report.plot import pct_bar
    from ..report.table import console, fmt_bytes, fmt_shape, fmt_time
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
    from ..model.project import link_model, project_split, smallest_split
    step = build_step(args)
    if args.efficiency is not None and getattr(args, "from_", None):
        raise UsageError("give --efficiency or --from, not both")
    records: list[dict[str, Any]] = []
    if getattr(args, "from_", None):
        from ..results import ResultsError, read_results
        try:
            records = read_results(args.from_)
        except ResultsError as e:
            raise UsageError(f"--from {args.from_}: {e}") from None
    kernel_records = [r for r in records if r.get("op") != "allreduce"]
    if kernel_records:
        try:
            eff, source = efficiency_from_results(kernel_records, step.weights, step.kv)
        except ValueError as e:
            raise UsageError(f"--from {args.from_}: {e}") from None
    elif args.efficiency is not None:
        eff = args.efficiency
        if not 0 < eff <= 1:
            raise UsageError(f"--efficiency is a fraction of datasheet peak in (0, 1], got {eff:g}"
                             + (" (give 0.8, not 80)" if 1 < eff <= 100 else ""))
        source = f"given: {100 * eff:.0f}% of datasheet peak"
    else:
        eff, source = 1.0, "datasheet peak (no efficiency given)"
    if records and not kernel_records and not any(r.get("status") == "ok" for r in records):
        raise UsageError(f"--from {args.from_}: no ok record to take an efficiency or a link from")
    if args.pp is not None and not args.tp:
        raise UsageError("--pp needs --tp")
    L = step.model.num_hidden_layers
    if args.pp is not None and args.pp > L:
        raise UsageError(f"--pp {args.pp} is more stages than {step.model.name}'s {L} layers")
    if args.chip:
        chips = []
        for name in args.chip:
            try:
                chips.append(lookup_chip(name))
            except KeyError as e:
                raise UsageError(str(e.args[0])) from None
    else:
        chips = list(load_catalog().values())
    floor = args.kernel_floor_us * 1e-6
    links = {c.id: link_model(c, records) for c in chips}
    projs = [project(step, c, eff, floor, links[c.id]) for c in chips]
    head = {"model": step.model.name, "params": step.model.param_count(), "batch": step.batch,
            "ctx": step.ctx, "weights": step.weights, "kv": step.kv,
            "efficiency_source": source}
    rows = []
    for c, p in zip(chips, projs):
        for tp in sorted(set(args.tp or [])):
            tp_pp = (tp, args.pp) if args.pp is not None else smallest_split(step, c, p.chips_needed, tp)
            sp = project_split(step, c, *(tp_pp or (tp, 1)), eff, floor, links[c.id])
            rows.append((p, sp))
    if args.plot:
        _plot_scaling(args.plot, step, rows, projs)
    if args.json:
        if rows:
            for p, sp in rows:
                d = {**head, **p.as_dict(), **sp.as_dict()}
                d["tokens_per_s"] = sp.tokens_per_s  # per sequence, on this split
                print(json.dumps(d))
        else:
            for p in projs:
                print(json.dumps({**head, **p.as_dict()}))
        return 0
    _print_projection(step, projs, source, floor)
    if rows:
        _print_splits(step, rows)
    return 0


def _plot_scaling(path: str, step: Step, rows, projs) -> None:
    from pathlib import Path
    from ..report.plot import PlotError, save, scaling_figure
    pts = rows or [(p, None) for p in projs]
    data = []
    for p, sp in pts:
        s = sp.as_dict() if sp is not None else p.split
        if s and s.get("tokens_per_s") and s.get("holds") is not False:
            data.append({"chip": p.chip, "chips": s["chips"], "tp": s["tp"], "pp": s["pp"],
                         "tokens_per_s": s["tokens_per_s"], "upper_bound": s["upper_bound"]})
    try:
        fig = scaling_figure(data, title=f"{step.model.name}, batch {step.batch}, ctx {step.ctx}, "
                             f"weights {step.weights}: tokens/s a sequence against chips")
        save(fig, Path(path))
    except PlotError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}") from None


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _split_rate(s: dict[str, Any] | None) -> str:
    if not s or not s.get("tokens_per_s"):
        return "[dim]unknown[/]"
    return ("≤ " if s["upper_bound"] else "") + f"{_rate(s['tokens_per_s'])} ({s['tp']}×{s['pp']})"


def _print_projection(step: Step, projs, source: str, floor: float) -> None:
    from rich.table import Table
    from ..report.table import console, fmt_bytes, fmt_time
    c = step.model
    act = step.bytes - step.weight_bytes - step.kv_bytes
    moe = ""
    if c.is_moe:
        from ..model.workload import expected_experts
        moe = (f"; MoE: {expected_experts(c.num_local_experts, c.num_experts_per_tok, step.batch):.2f}"
               f" of {c.num_local_experts} experts read per layer at batch {step.batch}")
    lines = [
        f"[bold]{c.name}[/] ({c.param_count() / 1e9:.2f}B params), batch {step.batch}, "
        f"ctx {step.ctx}, weights {step.weights}, KV {step.kv}{moe}",
        f"per step: {fmt_bytes(step.bytes)} = weights {fmt_bytes(step.weight_bytes)} + KV "
        f"{fmt_bytes(step.kv_bytes)} + activations/table/embedding rows {fmt_bytes(act)}; "
        f"{step.flops / 1e9:.4g} GFLOP; to hold: {fmt_bytes(step.resident_bytes())} "
        f"(weights + KV for batch x ctx)",
        f"efficiency: {source}; kernel floor {floor * 1e6:g} µs a call",
    ]
    t = Table(header_style="bold")
    for col in ("chip", "mem BW GB/s", "mem-bound step", "compute-bound step", "binds",
                "tok/s (1 chip)", "memory GB", "chips to hold", "tok/s a sequence on those (tp×pp)"):
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
                  _split_rate(p.split))
    t.caption = ("tok/s (1 chip) = batch / step time at one chip's datasheet bandwidth x efficiency "
                 "(compute: dense BF16 peak; memory? = compute rate unknown), as if the model fit. "
                 "Chips to hold: weights + KV over memory (SRAM-only chips: on-chip SRAM). The last "
                 "column splits the step over those chips (tensor parallel within the fabric's group,"
                 " then pipeline stages) and pays a floor a kernel call, two all-reduces a layer and"
                 " a hop a stage: ≤ marks a link latency the catalog does not have. unknown = not in"
                 " the catalog, never guessed.")
    out = console()
    for line in lines:
        out.print(line)
    out.print(t)


def _print_splits(step: Step, rows) -> None:
    from rich.table import Table
    from ..report.table import console, fmt_time
    unk = "[dim]unknown[/]"
    t = Table(title="splits: one token's step on tp × pp chips", header_style="bold")
    for col in ("chip", "tp", "pp", "chips", "holds", "kernels", "of which floors", "all-reduces",
                "hops", "step", "tok/s a sequence", "tok/s (batch)"):
        t.add_column(col, justify="left" if col == "chip" else "right")
    for p, s in rows:
        ub = "≤ " if s.upper_bound else ""
        t.add_row(s.chip, str(s.tp), str(s.pp), str(s.chips),
                  {True: "yes", False: "[red]no[/]", None: unk}[s.holds],
                  fmt_time(s.kernel_time_s) if s.kernel_time_s is not None else unk,
                  fmt_time(s.floor_time_s),
                  fmt_time(s.collective_time_s) if s.collective_time_s is not None else unk,
                  fmt_time(s.hop_time_s) if s.hop_time_s is not None else unk,
                  fmt_time(s.step_time_s) if s.step_time_s else unk,
                  ub + _rate(s.tokens_per_s) if s.tokens_per_s else unk,
                  ub + _rate(s.batch_tokens_per_s) if s.batch_tokens_per_s else unk)
    t.caption = ("pipeline stages add at batch 1; ≤: the link latency is unknown, only the "
                 "collective's bandwidth term is charged. Link figures: the catalog, or measured "
                 "allreduce records given with --from.")
    console().print(t)


def register(sub) -> None:
    p = sub.add_parser("project", help="project a model's decode step onto catalog chips")
    add_step_args(p, model_required=True)
    p.add_argument("--chip", action="append", metavar="ID", help="only these chips (repeatable)")
    p.add_argument("--efficiency", type=float, metavar="E",
                   help="fraction of datasheet bandwidth reached (default 1.0)")
    p.add_argument("--from", dest="from_", metavar="RESULTS.jsonl",
                   help="a results file: measured %% of roof sets the efficiency; measured "
                        "allreduce records set the link cost")
    p.add_argument("--tp", type=_positive("--tp"), action="append", metavar="N",
                   help="tensor-parallel degree (repeatable: one row each)")
    p.add_argument("--pp", type=_positive("--pp"), metavar="M",
                   help="pipeline stages (default: the fewest that hold the model at that --tp)")
    p.add_argument("--kernel-floor-us", type=_nonneg_float, default=DEFAULT_FLOOR_US,
                   metavar="US", help="fixed cost of every kernel call (default %(default)g µs)")
    p.add_argument("--plot", metavar="PNG", help="draw tokens/s a sequence against chips")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per chip (per chip and --tp with --tp)")
    p.set_defaults(func=cmd_project)
    run = sub.choices.get("run")
    if run is not None:
        g = run.add_argument_group("model decode step (instead of --suite/--op)")
        add_step_args(g, model_required=False)


EXTENSIONS.append(register)
