"""`decodewall project`: a model's decode step projected onto catalog chips, one chip and split
(tensor x pipeline parallel) a row: bandwidth- or compute-bound step time, the chips that hold the
model, and the tokens per second a split reaches (bench/model/project.py).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..model.project import (DEFAULT_FLOOR_US, MAX_CHIPS, MIN_EFFICIENCY, efficiency_from_results,
                             project)
from ..model.workload import Step
from .common import given
from .step import add_step_args, build_step, whole

SCALING_NAME = "scaling.png"  # the chart's name inside a --plot folder
MAX_FLOOR_US = 1e6  # a second a kernel call is no launch cost; past it the times printed are absurd


def floor_us(text: str) -> float:
    """--kernel-floor-us: microseconds, finite, 0..MAX_FLOOR_US."""
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"--kernel-floor-us must be a number of microseconds, got {text[:24]!r}"
                         ) from None
    if not (math.isfinite(v) and 0 <= v <= MAX_FLOOR_US):
        raise UsageError(f"--kernel-floor-us must be a finite number >= 0 and at most "
                         f"{MAX_FLOOR_US:g} (a second), got {text[:24]!r}")
    return v


def command(args) -> int:
    from backends import load_catalog, lookup_chip
    from ..model.project import (efficiency_records, link_model, project_split, smallest_split,
                                 tp_error)
    step = build_step(args)
    plot_path = _plot_path(args.plot) if args.plot else None
    records: list[dict[str, Any]] = []
    if getattr(args, "from_", None):
        from ..results import ResultsError, read_results
        try:
            records = read_results(args.from_)
        except ResultsError as e:  # its message starts with the file's name
            raise UsageError(f"--from {e}") from None
    kernel_records = [r for r in records if r.get("op") != "allreduce"]
    # the kernel records an efficiency is taken from (ok, timed from memory): failed ones and
    # probes beside a file's allreduce records leave --efficiency to set it
    usable = efficiency_records(kernel_records)
    links_ok = any(r.get("op") == "allreduce" and r.get("status") == "ok" for r in records)
    if usable and args.efficiency is not None:
        raise UsageError(f"--from {args.from_} holds kernel results, which set the efficiency: "
                         "give --efficiency or --from, not both")
    if usable or (kernel_records and not links_ok):
        try:
            eff, source = efficiency_from_results(kernel_records, step.weights, step.kv)
        except ValueError as e:
            raise UsageError(f"--from {args.from_}: {e}") from None
    elif args.efficiency is not None:
        eff = args.efficiency
        if not MIN_EFFICIENCY <= eff <= 1:
            raise UsageError(f"--efficiency is a fraction of datasheet peak, at least "
                             f"{MIN_EFFICIENCY:g} and at most 1, got {eff:g}"
                             + (" (give 0.8, not 80)" if 1 < eff <= 100 else ""))
        source = f"given: {100 * eff:.3g}% of datasheet peak"
    else:
        eff, source = 1.0, "datasheet peak (no efficiency given)"
    if records and not kernel_records and not any(r.get("status") == "ok" for r in records):
        raise UsageError(f"--from {args.from_}: no ok record to take an efficiency or a link from")
    if args.pp is not None and not args.tp:
        raise UsageError("--pp needs --tp")
    L = step.model.num_hidden_layers
    if args.pp is not None and args.pp > L:
        raise UsageError(f"--pp {args.pp} is more stages than {step.model.name}'s {L} layers")
    for tp in sorted(set(args.tp or [])):
        bad = tp_error(step.model, tp, step.weights)
        if bad:
            raise UsageError(f"--{bad}")
    if args.chip:
        chips = []
        for name in args.chip:
            try:
                chip = lookup_chip(name)
            except KeyError as e:
                raise UsageError(str(e.args[0])) from None
            if chip not in chips:  # a chip named twice (any case) is one row
                chips.append(chip)
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
            tp_pp = (tp, args.pp) if args.pp is not None else smallest_split(step, c, tp)
            sp = project_split(step, c, *(tp_pp or (tp, 1)), eff, floor, links[c.id])
            rows.append((p, sp))
    if plot_path is not None:
        _plot_scaling(plot_path, step, rows, projs)
    if args.json:
        if rows:
            for p, sp in rows:
                d = {**head, **p.as_dict(), **sp.as_dict()}
                # per sequence, on this split: the one-chip figures would sit beside the
                # split's step time and batch rate in one row
                d["tokens_per_s"] = d["seq_tokens_per_s"] = sp.tokens_per_s
                print(json.dumps(d))
        else:
            for p in projs:
                print(json.dumps({**head, **p.as_dict()}))
        return 0
    _print_projection(step, projs, source, floor)
    if rows:
        _print_splits(step, rows, from_records=any(r.get("op") == "allreduce" for r in records))
    return 0


def _plot_scaling(path: Path, step: Step, rows, projs) -> None:
    from ..report.plot import PlotError, save, scaling_figure
    pts = rows or [(p, None) for p in projs]
    data, short = [], 0
    for p, sp in pts:
        s = sp.as_dict() if sp is not None else p.split
        if s and s.get("tokens_per_s") and s.get("holds") is False:
            short += 1  # a rate on chips that cannot hold the model is no rate to draw
        elif s and s.get("tokens_per_s"):
            data.append({"chip": p.chip, "chips": s["chips"], "tp": s["tp"], "pp": s["pp"],
                         "tokens_per_s": s["tokens_per_s"], "upper_bound": s["upper_bound"]})
    if not data and short:
        raise UsageError(f"nothing to plot: none of the {short} split(s) holds the model "
                         "(the table shows them)")
    try:
        fig = scaling_figure(data, title=f"{step.model.name}, batch {step.batch}, ctx {step.ctx}, "
                             f"weights {step.weights}: tokens/s a sequence against chips")
        written = save(fig, path)
    except PlotError as e:
        raise UsageError(str(e)) from None
    print(f"wrote {written}" + (f" (not drawn: {short} split(s) that do not hold the model)"
                                if short else ""), file=sys.stderr)


def _plot_path(arg: str) -> Path:
    """The --plot file, checked before anything is computed: a folder gets SCALING_NAME in it
    (as `plot -o DIR` does), a name without an extension gets .png."""
    from ..report.plot import PlotError, check_output, output_path
    try:
        return check_output(output_path(arg, SCALING_NAME))
    except PlotError as e:
        raise UsageError(str(e)) from None


def _split_rate(s: dict[str, Any] | None) -> str:
    if not s or not s.get("tokens_per_s"):
        return "[dim]unknown[/]"
    from ..report.table import fmt_rate
    return (("≤ " if s["upper_bound"] else "") +
            f"{fmt_rate(s['tokens_per_s'])} ({s['tp']}×{s['pp']})")


def _print_projection(step: Step, projs, source: str, floor: float) -> None:
    from rich.markup import escape
    from rich.table import Table
    from ..report.table import console, fmt_bytes, fmt_rate, fmt_time, plain
    c = step.model
    act = step.bytes - step.weight_bytes - step.kv_bytes
    res = step.resident()
    moe = ""
    if c.is_moe:
        from ..model.workload import expected_experts
        moe = (f"; MoE: {expected_experts(c.num_local_experts, c.num_experts_per_tok, step.batch):.2f}"
               f" of {c.num_local_experts} experts read per layer at batch {step.batch}")
    lines = [
        f"[bold]{escape(c.name)}[/] ({c.param_count() / 1e9:.2f}B params), batch {step.batch}, "
        f"ctx {step.ctx}, weights {step.weights}, KV {step.kv}{moe}",
        f"per step: {fmt_bytes(step.bytes)} = weights {fmt_bytes(step.weight_bytes)} + KV "
        f"{fmt_bytes(step.kv_bytes)} + activations/table/embedding rows {fmt_bytes(act)}; "
        f"{step.flops / 1e9:.4g} GFLOP; to hold: {fmt_bytes(res.total)} = weights "
        f"{fmt_bytes(res.weight_bytes)} + KV {fmt_bytes(res.kv_bytes)} (batch x ctx)",
        f"efficiency: {escape(source)}; kernel floor {floor * 1e6:g} µs a call",
    ]
    t = Table(header_style="bold")
    for col in ("chip", "mem BW GB/s", "mem-bound step", "compute-bound step", "binds",
                "tok/s (1 chip)", "memory GB", "chips to hold", "tok/s a sequence on those (tp×pp)"):
        # a chip's id folds rather than end in "…" (h100-sxm and h100-pcie: one "h100-…")
        t.add_column(col, justify="left" if col in ("chip", "binds") else "right",
                     overflow="fold" if col == "chip" else "ellipsis")
    unk = "[dim]unknown[/]"
    for p in projs:
        none_holds = p.capacity_gb is not None and p.chips_needed is None
        sram = " SRAM" if p.sram_only else ""
        t.add_row(plain(p.chip), f"{p.mem_bw_gbps:,.0f}{sram}" if p.mem_bw_gbps else unk,
                  fmt_time(p.mem_time_s) if p.mem_time_s else unk,
                  fmt_time(p.compute_time_s) if p.compute_time_s else unk,
                  {"memory": "memory", "memory?": "memory?", "compute": "[cyan]compute[/]"}.get(p.bound, unk),
                  fmt_rate(p.tokens_per_s) if p.tokens_per_s else unk,
                  f"{p.capacity_gb:g}{sram}" if p.capacity_gb else unk,
                  str(p.chips_needed) if p.chips_needed else "[red]none[/]" if none_holds else unk,
                  "[dim]-[/]" if none_holds else _split_rate(p.split))
    t.caption = ("tok/s (1 chip) = batch / step time at one chip's datasheet memory bandwidth "
                 "(mem BW; SRAM: on-chip, for SRAM-only chips) x efficiency (compute: dense BF16 "
                 "peak; memory? = compute rate unknown), as if the model fit. Chips to hold: the "
                 "split of fewest chips (tp the model's shape allows; among as many, tensor "
                 "parallel within the fabric's group first) whose fullest chip holds its layers' "
                 "weights / tp (K and V projections / min(tp, KV heads), norms whole), their KV / "
                 "min(tp, KV heads) and a tp×pp share of embedding and lm_head in memory "
                 "(SRAM-only chips: on-chip SRAM); none = no split holds. The last column runs "
                 "the step on that split and pays a floor a kernel call, two all-reduces a layer "
                 "and a hop a stage: ≤ marks a link latency the catalog does not have. unknown = "
                 "not in the catalog, never guessed.")
    out = console()
    for line in lines:
        out.print(line)
    out.print(t)
    for p in projs:
        gap = missing_figures(p)
        if gap:
            out.print(f"[yellow]{plain(p.chip)}: {gap}[/]")


def missing_figures(p) -> str | None:
    """What a chip's row cannot say for want of a catalog figure, in one line (None: nothing)."""
    figures = (("memory bandwidth", p.mem_bw_gbps), ("memory size", p.capacity_gb),
               ("dense BF16 rate", p.compute_tflops))
    gaps = [what for what, v in figures if not v]
    if not gaps:
        return None
    named = gaps[0] if len(gaps) == 1 else f"{', '.join(gaps[:-1])} or {gaps[-1]}"
    effects = []
    if not p.mem_bw_gbps:
        effects.append("its step time and tok/s are unknown")
    elif not p.compute_tflops:
        effects.append("the step is taken as memory-bound (memory?)")
    if not p.capacity_gb:
        effects.append("the chips to hold the model are unknown")
    return f"no datasheet {named} in the catalog: {'; '.join(effects)}"


# the splits table's columns a narrow terminal loses first, in this order (the step's parts),
# so that the rest keep whole numbers: rich cuts a cell narrower than its number to "4…", and
# gives 13 columns in 40 no width at all (every cell empty)
SPLIT_DROPS = ("hops", "of which floors", "all-reduces", "kernels", "GB a chip", "tok/s (batch)")


def _print_splits(step: Step, rows, from_records: bool = False) -> None:
    from rich.table import Table
    from rich.text import Text
    from ..report.table import console, fit_columns, fmt_rate, fmt_time, plain
    unk = "[dim]unknown[/]"
    cols = [(col, "left" if col == "chip" else "right") for col in (
        "chip", "tp", "pp", "chips", "GB a chip", "holds", "kernels", "of which floors",
        "all-reduces", "hops", "step", "tok/s a sequence", "tok/s (batch)")]
    cells = []
    for p, s in rows:
        ub = "≤ " if s.upper_bound else ""
        cells.append([plain(s.chip), str(s.tp), str(s.pp), str(s.chips),
                      f"{s.chip_resident_bytes / 1e9:.3g}",
                      {True: "yes", False: "[red]no[/]", None: unk}[s.holds],
                      fmt_time(s.kernel_time_s) if s.kernel_time_s is not None else unk,
                      fmt_time(s.floor_time_s),
                      fmt_time(s.collective_time_s) if s.collective_time_s is not None else unk,
                      fmt_time(s.hop_time_s) if s.hop_time_s is not None else unk,
                      fmt_time(s.step_time_s) if s.step_time_s else unk,
                      ub + fmt_rate(s.tokens_per_s) if s.tokens_per_s else unk,
                      ub + fmt_rate(s.batch_tokens_per_s) if s.batch_tokens_per_s else unk])
    out = console()
    shown = [[c if isinstance(c, Text) else Text.from_markup(c).plain for c in r] for r in cells]
    keep, cut = fit_columns(cols, shown, SPLIT_DROPS, out.width)
    t = Table(title="splits: one token's step on tp × pp chips", header_style="bold")
    for k in keep:
        t.add_column(cols[k][0], justify=cols[k][1],
                     overflow="fold" if cols[k][0] == "chip" else "ellipsis")
    for r in cells:
        t.add_row(*[r[k] for k in keep])
    t.caption = ("GB a chip: what the fullest chip holds; pipeline stages add at batch 1; ≤: the "
                 "link latency is unknown, only the collective's bandwidth term is charged, or tp "
                 "spans more chips than the fabric's group, and the all-reduce crosses a slower "
                 "link. Link figures: the catalog, or measured allreduce records of that chip "
                 "given with --from.")
    if cut:
        t.caption += f" {cut}."
    if from_records:  # which link figures each chip's rows took: measured ones, or why not
        sources = dict.fromkeys((s.chip, s.link_source) for _, s in rows)
        t.caption += "".join(f"\n{chip} links: {src}" for chip, src in sources)
    out.print(t)


def add_parser(sub) -> None:
    p = sub.add_parser("project", help="project a model's decode step onto catalog chips")
    add_step_args(p, model_required=True)
    p.add_argument("--chip", action="append", metavar="ID", help="only these chips (repeatable)")
    p.add_argument("--efficiency", type=float, metavar="E",
                   help=f"fraction of datasheet memory bandwidth reached, {MIN_EFFICIENCY:g} to 1 "
                   "(default 1.0)")
    p.add_argument("--from", dest="from_", metavar="RESULTS.jsonl", type=given,
                   help="a results file: the median %% of datasheet bandwidth its best impls "
                        "reached (%% of the measured roof where a record has no datasheet) sets "
                        "the efficiency (then give no --efficiency); measured allreduce records "
                        "set the link cost of the chip they ran on")
    p.add_argument("--tp", type=whole("--tp", MAX_CHIPS, "chips"), action="append", metavar="N",
                   help="tensor-parallel degree (repeatable: one row each); it must divide "
                   "the model's query heads and intermediate size and divide or be a multiple of "
                   "its KV heads (int4: leave each chip whole groups of 128 along K)")
    p.add_argument("--pp", type=whole("--pp", MAX_CHIPS, "chips"), metavar="M",
                   help="pipeline stages (default: the fewest that hold the model at that --tp)")
    p.add_argument("--kernel-floor-us", type=floor_us, default=DEFAULT_FLOOR_US,
                   metavar="US", help="fixed cost of every kernel call, 0 to "
                   f"{MAX_FLOOR_US:g} (default %(default)g µs)")
    p.add_argument("--plot", metavar="PNG|DIR", type=given,
                   help=f"draw tokens/s a sequence against chips (a folder gets {SCALING_NAME}; "
                   "no extension: .png)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per chip (per chip and --tp with --tp)")
    p.set_defaults(func=command)
