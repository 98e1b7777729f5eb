"""`decodewall run --model`: a model's decode step as cases, and the step summed from their records.

`run --model M` turns a model's decode step (bench/model/workload.py) into one case per distinct
kernel (qkv, o, gate/up, down, attention, lm_head, and the router for MoE), runs them like any
other cases, then sums the best impl's time per kernel times its calls per step. Ops are found
through the registry only (`kernels.OPS`), and a kernel's dims are the op's own shape fields.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from ..errors import UsageError
from ..model.project import KV_OPS, WEIGHT_OPS
from ..model.workload import (INT4_GROUP, KV_BLOCK, KV_PRECISIONS, MAX_BATCH, MAX_CTX,
                              WEIGHT_PRECISIONS, ConfigError, Step, decode_step, load_model,
                              model_names)


def whole(name: str, most: int, what: str):
    """An argparse type: a whole number in 1..most; anything else is one line naming the option
    (`what` says why the bound)."""
    def parse(text: str) -> int:
        shown = text if len(text) <= 24 else f"{text[:20]}… ({len(text)} characters)"
        try:
            v = int(text)
        except ValueError:  # not a number, or past Python's limit on digits
            raise UsageError(f"{name} must be an integer, got {shown!r}") from None
        if v < 1:
            raise UsageError(f"{name} must be at least 1, got {shown}")
        if v > most:
            raise UsageError(f"{name} must be at most {most} ({what}), got {shown}")
        return v
    return parse


def add_step_args(p, model_required: bool) -> None:
    p.add_argument("--model", required=model_required, metavar="NAME|config.json",
                   help=f"built-in model ({', '.join(model_names())}) or a HF config.json path")
    p.add_argument("--batch", type=whole("--batch", MAX_BATCH, "a decode batch"), default=None,
                   help=f"sequences decoded together (default 1, at most {MAX_BATCH})")
    p.add_argument("--ctx", type=whole("--ctx", MAX_CTX, "tokens in the KV cache"), default=None,
                   help="tokens already in each sequence's KV cache (default 4096, at most 2**24)")
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
        given = [f"--{n}" for n in ("suite", "op", "shape") if getattr(args, n)]
        raise UsageError(f"give --model, or --suite / --op [--shape], not both (got --model and "
                         f"{' '.join(given)}): --model times the step's own shapes")
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
        from kernels import dtype_name
        from .common import resolve_dtypes
        dtypes = list(dict.fromkeys(resolve_dtypes(args.dtype, None)))
        if any(d not in (torch.bfloat16, torch.float16) for d in dtypes):
            raise UsageError("--model takes 16-bit activations (bfloat16 or float16): the step's "
                             "byte model counts 2-byte activations, scales and zeros")
        if len(dtypes) > 1:
            raise UsageError(f"--model times the step at one dtype; give one --dtype, not "
                             f"{' and '.join(dtype_name(d) for d in dtypes)}")
        dtype = dtypes[0]
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


def check_step_runnable(cases: list, backend: str, impl_filter: tuple[str, ...] | None) -> None:
    """UsageError when a kernel of the step has no selected impl that runs on `backend` (for its
    dtype): the step sums every kernel, so without one its time is unknown."""
    from kernels import OPS
    from ..runner import select_impls
    for c in cases:
        impls = select_impls(c, impl_filter)
        whys = [why for ok, why in (i.supports(backend, c.dtype) for i in impls) if not ok]
        if impls and len(whys) < len(impls):
            continue
        kernel = c.group.rsplit(" ", 1)[-1]
        if impls:
            why = "; ".join(whys[:3]) + (f"; and {len(whys) - 3} more" if len(whys) > 3 else "")
        else:
            here = [n for n, i in OPS[c.op].impls.items() if i.supports(backend, c.dtype)[0]]
            why = (f"{'--impl selects' if impl_filter else 'it has'} none of its impls (on "
                   f"{backend}: {', '.join(here) or 'none'})")
        raise UsageError(f"the step's {kernel} kernel ({c.op}) has no impl to run on {backend}: "
                         f"{why}")


def step_summary(step: Step, records: list[dict[str, Any]], roof_gbps: float) -> dict[str, Any]:
    """Best ok impl per kernel, times calls per step, against the timed kernels' bytes/step over
    the measured roof. A kernel without an ok timing is `not run` (no record for its case: the
    run was interrupted first) or `none ok` (each impl that ran failed, errored or was skipped,
    or was timed above the roof or the compute roof: harness suspect, no time to sum)."""
    from kernels import OPS
    from ..results import suspect
    rows, total, missing, not_run, none_ok = [], 0.0, [], [], []
    for k in step.kernels:
        opname = kernel_op(k, step)
        shape = dataclasses.asdict(_shape_for(OPS[opname], k.dims, k.name))
        mine = [r for r in records if r["op"] == opname and r["shape"] == shape
                and not r.get("warm")]
        ok = [r for r in mine if r["status"] == "ok" and r.get("time_s") and not suspect(r)]
        best = min(ok, key=lambda r: r["time_s"]["median"]) if ok else None
        t = best["time_s"]["median"] if best else None
        if t is not None:
            total += t * k.calls
            status = "ok"
        elif mine:
            none_ok.append(k.name)
            missing.append(k.name)
            status = "none ok"
        else:
            not_run.append(k.name)
            missing.append(k.name)
            status = "not run"
        rows.append({"kernel": k.name, "op": opname, "shape": shape, "calls": k.calls,
                     "status": status, "impl": best["impl"] if best else None, "time_s": t,
                     "step_time_s": t * k.calls if t is not None else None,
                     "bytes_per_step": k.bytes * k.calls,
                     "pct_roof": best.get("pct_roof") if best else None})
    bound = step.kernel_bytes / (roof_gbps * 1e9) if roof_gbps else None
    measured = None if missing else total
    return {
        "model": step.model.name, "batch": step.batch, "ctx": step.ctx, "weights": step.weights,
        "kv": step.kv, "bytes_per_step": step.bytes, "kernel_bytes_per_step": step.kernel_bytes,
        "flops_per_step": step.flops, "roof_gbps": roof_gbps, "kernels": rows,
        "missing": missing, "not_run": not_run, "none_ok": none_ok,
        "measured_step_s": measured,
        "measured_tokens_per_s": step.batch / measured if measured else None,
        "bound_step_s": bound, "bound_tokens_per_s": step.batch / bound if bound else None,
        "pct_of_bound": 100 * bound / measured if measured and bound else None,
    }


def print_step(args, records: list[dict[str, Any]], roof, as_json: bool = False,
               interrupted: bool | str = False) -> None:
    """After `run --model`'s table: the step, summed from the best impl of each kernel
    (`interrupted`: the run stopped early, which is why a kernel was not run; a text says why:
    "interrupted" by default)."""
    from rich.table import Table
    from rich.text import Text
    from ..report.plot import pct_bar
    from ..report.table import (console, fmt_bytes, fmt_rate, fmt_time, plain, shape_text,
                                 title_text, word_width)
    step: Step = args.model_step
    s = step_summary(step, records, roof.gbps)
    if as_json:
        print(json.dumps({"step": s}), flush=True)
        return
    t = Table(title=title_text(f"{step.model.name} decode step — batch {step.batch}, ctx "
                               f"{step.ctx}, weights {step.weights}, KV {step.kv}"),
              header_style="bold")
    cols = [("kernel", "left"), ("op", "left"), ("shape", "left"), ("calls/step", "right"),
            ("best impl", "left"), ("time/call", "right"), ("time/step", "right"),
            ("bytes/step", "right"), ("% of roof", "left")]
    why = interrupted if isinstance(interrupted, str) else "interrupted"
    not_run = f"not run ({why})" if interrupted else "not run"
    rows = []
    for r in s["kernels"]:
        if r["impl"]:
            impl = plain(r["impl"])
        else:
            impl = Text("none ok", style="red") if r["status"] == "none ok" else \
                Text(not_run, style="yellow")
        rows.append([plain(r["kernel"]), plain(r["op"]), plain(shape_text(r["shape"])),
                     f"{r['calls']:.4g}", impl, fmt_time(r["time_s"]), fmt_time(r["step_time_s"]),
                     fmt_bytes(r["bytes_per_step"]), pct_bar(r["pct_roof"])])
    out = console()
    # as the results table: cells fold rather than end in "…" (a shape cut after its N reads as
    # any K), and the shape folds between its fields
    shape_w = word_width(cols, rows, list(range(len(cols))), "shape", out.width)
    for col, j in cols:
        t.add_column(col, justify=j, overflow="fold", width=shape_w if col == "shape" else None)
    for cells in rows:
        t.add_row(*cells)
    out.print(t)
    bound = s["bound_step_s"]
    out.print(f"bandwidth bound here: the timed kernels' {fmt_bytes(step.kernel_bytes)}/step ÷ "
              f"measured roof {roof.gbps:.1f} GB/s = {fmt_time(bound)}/step → "
              f"{fmt_rate(s['bound_tokens_per_s'])} tok/s")
    if s["missing"]:
        why = [f"{not_run}: {', '.join(s['not_run'])}"] if s["not_run"] else []
        why += [f"no ok impl: {', '.join(s['none_ok'])}"] if s["none_ok"] else []
        out.print(Text(f"measured step: unknown — {'; '.join(why)}", style="red"))
    else:
        out.print(f"measured kernel-only step: {fmt_time(s['measured_step_s'])} → "
                  f"[bold]{fmt_rate(s['measured_tokens_per_s'])} tok/s[/] (batch {step.batch}; "
                  f"{s['pct_of_bound']:.0f}% of the bandwidth bound)")
    out.print("[dim]kernel-only: each kernel timed cold in isolation, summed over calls/step; "
              "embedding lookup, norms, RoPE, residual adds and sampling are not timed; their "
              f"{fmt_bytes(step.bytes - step.kernel_bytes)}/step are left out of the bound[/]")
