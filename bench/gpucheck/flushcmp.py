"""What the L2 flush leaves behind costs the next kernel: each flush mode timed on two read-bound
GEMVs, on a CUDA device.

    python -m bench.gpucheck.flushcmp [--json] [--rounds N] [--dry-run]

A `memset` flush leaves the L2 full of dirty lines, whose write-back the timed kernel then pays;
`read` and `memset+read` leave clean lines (backends/cuda.py; docs/measurement.md, "The L2
flush").
Each mode times the same calls through the runner's path (bench.timing.measure on the CUDA
backend: spin hold, flush, CUDA events), in `--rounds` interleaved rounds so that drift hits
every mode alike, on
- gemv_bf16 `torch_matmul` at M=1, N=K=4096: 32 MiB of weights, less than the L2 holds, so an
  L2's worth of write-back is more bytes than the kernel reads;
- gemv_w4 `triton_w4` at M=1, N=57344, K=8192, G=128 (235 MB of codes), where Triton is present.
Every case is checked against its op's float64 reference before it is timed; a case that fails
is reported, not timed. The INT4 inputs are random codes, scales and zeros drawn on the GPU (the
op's make_inputs quantizes 470M weights on the host, seconds this check does not have). Triton
runs its first config (DECODEWALL_AUTOTUNE=0 unless set): one compile, not a tuning sweep; the
comparison is between flushes, not configs. Budgeted to finish within 20 s on an H200: 12
timings of at most 0.9 s each, plus inputs, one Triton compile and the two checks.

Without a CUDA device it prints one line saying so and exits 0 with an empty result (`--json`:
{"cases": [], ...}); `--dry-run` prints the plan and times nothing, anywhere.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
from typing import Any

import torch

from ..timing import Budget, measure
from bench.errors import OneLineParser, exception_line

BASE_MODE = "memset"  # the flush the others are compared with
# Per mode and round: ~0.1 s of warm-up, then 0.3-0.8 s of samples (each one flush + one call)
BUDGET = Budget(warmup_s=0.1, min_samples=20, max_samples=3000, min_time_s=0.3, max_time_s=0.8)
CASES = (  # (op, impl, shape)
    ("gemv_bf16", "torch_matmul", dict(M=1, N=4096, K=4096)),
    ("gemv_w4", "triton_w4", dict(M=1, N=57344, K=8192, group_size=128)),
)


def _inputs(op: Any, shape: Any, seed: int, dev: str) -> tuple:
    """The op's inputs on the device; INT4 codes, scales and zeros drawn there directly."""
    if op.name != "gemv_w4":
        return op.make_inputs(shape, torch.bfloat16, dev, seed)
    g = torch.Generator(device=dev).manual_seed(seed)
    M, N, K, G = shape.M, shape.N, shape.K, shape.group_size
    x = torch.randn(M, K, generator=g, device=dev).to(torch.bfloat16)
    qweight = torch.randint(0, 256, (N, K // 2), generator=g, device=dev, dtype=torch.uint8)
    scales = (0.005 + 0.01 * torch.rand(N, K // G, generator=g, device=dev)).to(torch.bfloat16)
    zeros = (15 * torch.rand(N, K // G, generator=g, device=dev)).to(torch.bfloat16)
    return x, qweight, scales, zeros, G


def modes() -> list[str]:
    """The flush modes in the order they are timed: BASE_MODE first."""
    from backends.cuda import FLUSH_MODES
    return [BASE_MODE] + [m for m in FLUSH_MODES if m != BASE_MODE]


def _checked_call(op: Any, impl: Any, shape: Any, seed: int, dev: str,
                  entry: dict[str, Any]) -> Any:
    """The timed call on fresh inputs with a preallocated output, once the impl's answer, written
    over a NaN-filled buffer, matches the op's float64 reference; None (entry["error"] says
    why) when it does not."""
    inputs = _inputs(op, shape, seed, dev)
    args = tuple(impl.prepare(*inputs)) if impl.prepare else inputs
    out_shape, out_dtype = op.out_spec(shape, torch.bfloat16)
    out = torch.full(out_shape, float("nan"), dtype=out_dtype, device=dev)
    if impl.out_arg:
        impl.fn(*args, out=out)
    else:
        out.copy_(impl.fn(*args))
    from kernels import rel_err
    err = entry["rel_err"] = rel_err(out, op.reference(*inputs))
    tol = op.tol(torch.bfloat16)
    if not err <= tol:
        entry["error"] = f"rel err {err:.3g} > tolerance {tol:.3g}: not timed"
        return None
    if impl.out_arg:
        return lambda i: impl.fn(*args, out=out)
    return lambda i: impl.fn(*args)


def plan(cases: tuple = CASES) -> list[dict[str, Any]]:
    """The cases this machine can run: (op, impl, shape) whose op and impl are registered."""
    from kernels import OPS
    out = []
    for op_name, impl_name, shape in cases:
        op = OPS.get(op_name)
        if op is None or impl_name not in op.impls:
            continue
        if op.impls[impl_name].kind == "triton":
            from kernels.triton_util import HAS_TRITON
            if not HAS_TRITON:
                continue
        out.append({"op": op_name, "impl": impl_name, "shape": shape})
    return out


def compare(rounds: int = 2, seed: int = 0, backend: Any = None,
            cases: tuple = CASES) -> dict[str, Any]:
    """Time every planned case under each flush mode on `backend` (the CUDA backend; the tests
    pass one that flushes on the CPU) and compare each mode's median with BASE_MODE's."""
    from backends import get_backend
    from backends.cuda import DEFAULT_FLUSH
    from kernels import OPS
    backend = backend or get_backend("cuda")
    dev, order = backend.device(), modes()
    result: dict[str, Any] = {
        "device": backend.device_info().get("name"), "cache_bytes": backend.cache_bytes(),
        "flush_bytes": 2 * backend.cache_bytes(), "default_flush": DEFAULT_FLUSH,
        "modes": order, "rounds": rounds, "base": BASE_MODE, "cases": []}
    for c in plan(cases):
        op, impl = OPS[c["op"]], OPS[c["op"]].impls[c["impl"]]
        shape = op.shape(**c["shape"])
        entry: dict[str, Any] = {**c, "bytes": op.bytes_moved(shape, torch.bfloat16)}
        result["cases"].append(entry)
        try:
            call = _checked_call(op, impl, shape, seed, dev, entry)
        except Exception as e:  # a kernel that cannot run here is reported, the others go on
            entry["error"] = exception_line(e)
            continue
        if call is None:
            continue
        medians: dict[str, list[float]] = {m: [] for m in order}
        try:
            for _ in range(rounds):
                for m in order:
                    backend.set_flush_mode(m)
                    medians[m].append(measure(backend, call, 1, BUDGET).median)
        except Exception as e:
            entry["error"] = exception_line(e)
            continue
        finally:
            backend.set_flush_mode(None)
        entry["modes"] = {}
        for m in order:
            med = statistics.median(medians[m])
            entry["modes"][m] = {"median_s": med, "round_medians_s": medians[m],
                                 "gbps": entry["bytes"] / med / 1e9}
        base = entry["modes"][BASE_MODE]["median_s"]
        entry["diff_pct"] = {m: 100 * (entry["modes"][m]["median_s"] / base - 1)
                             for m in order if m != BASE_MODE}
    return result


def render(result: dict[str, Any]) -> str:
    lines = [f"flush modes on {result['device']} (L2 {result['cache_bytes'] / 2**20:.0f} MiB, "
             f"flush buffers {result['flush_bytes'] / 2**20:.0f} MiB; default "
             f"{result['default_flush']}; median of {result['rounds']} rounds)"]
    for e in result["cases"]:
        head = f"  {e['op']} {e['impl']} " + ",".join(f"{k}={v}" for k, v in e["shape"].items())
        if "error" in e:
            lines.append(f"{head}: {e['error']}")
            continue
        lines.append(f"{head} ({e['bytes'] / 1e6:.1f} MB):")
        for m, v in e["modes"].items():
            d = e["diff_pct"].get(m)
            vs = f"  {d:+.1f}% vs {result['base']}" if d is not None else ""
            lines.append(f"    {m:<12} {v['median_s'] * 1e6:9.2f} µs  {v['gbps']:7.1f} GB/s{vs}")
    return "\n".join(lines)




def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m bench.gpucheck.flushcmp",
                description="Time read-bound GEMVs under each L2 flush mode.")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds per mode (default 2)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, time nothing")
    a = p.parse_args(argv)
    if a.rounds < 1:
        p.error("--rounds must be at least 1")
    # One config a Triton kernel (see above). kernels/ reads the setting when first imported, so
    # it is set here, before that, and not at this module's import: a process that imports this
    # module (pytest, the device check) and the processes it starts keep tuning.
    if "kernels.triton_util" not in sys.modules:
        os.environ.setdefault("DECODEWALL_AUTOTUNE", "0")
    if a.dry_run:
        res = {"dry_run": True, "modes": modes(), "rounds": a.rounds, "cases": [], "plan": plan()}
        print(json.dumps(res) if a.json else "flushcmp dry run: would time " + "; ".join(
            f"{c['op']} {c['impl']}" for c in res["plan"]) + f" under {', '.join(modes())}")
        return 0
    from backends import get_backend
    ok, why = get_backend("cuda").available()
    if not ok:
        note = f"no CUDA device ({why}): flush modes not compared"
        print(json.dumps({"device": None, "note": note, "cases": []}) if a.json
              else f"flushcmp: {note}")
        return 0
    res = compare(a.rounds)
    print(json.dumps(res) if a.json else render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
