"""The op contract: what an op owns, what an impl is, and the registries `OPS` and `register_impl`.

An op bundles everything needed to measure one decode operation honestly: its shape type, fresh
random inputs, a float64 reference, the exact bytes it must move and its flops. Impls are plain
functions over the op's tensors; bench/ checks them against the reference and times them.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

KINDS = ("torch", "compiled", "triton", "builtin")
BACKENDS = ("cpu", "cuda", "xla")

DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "int8": torch.int8, "uint8": torch.uint8,
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r} (known: bfloat16, float16, float32)") from None


@dataclass
class Impl:
    """One named implementation of an op.

    `fn` takes the op's arguments positionally (in the order of the Op's `make_inputs`) and
    returns the output. When `out_arg` is true it also accepts `out=` (a preallocated buffer it
    must fill), so the harness can poison the buffer for the correctness gate and keep
    allocation out of timing. `prepare` is untimed per-input-set work (repacking, compiling,
    device moves): the timed call is `fn(*prepare(*args))`. Calling the Impl does both.
    """

    name: str
    op: str
    fn: Callable[..., Any]
    backends: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    kind: str
    baseline: bool = False
    prepare: Callable[..., tuple] | None = None
    out_arg: bool = False
    doc: str = ""
    # A library fault known to hit this impl on some machines (a builtin that crashes or answers
    # wrongly there): the harness still runs it and adds this note to a failure's record.
    known_issue: str = ""
    # Registered from decodewall's kernels/, not by a plugin or a test: only these set the roof.
    builtin: bool = False
    # How a compiled impl's code was built (a CLibrary's `info`: compiler, flags, OpenMP), or
    # None before it is: the record carries it once the impl has run.
    build_info: Callable[[], dict[str, Any] | None] | None = None

    def __call__(self, *args: Any, out: torch.Tensor | None = None) -> Any:
        if self.prepare is not None:
            args = tuple(self.prepare(*args))
        if out is not None and self.out_arg:
            return self.fn(*args, out=out)
        return self.fn(*args)

    def supports(self, backend: str, dtype: torch.dtype) -> tuple[bool, str]:
        if backend not in self.backends:
            return False, f"{self.name} runs on {', '.join(self.backends)}, not {backend}"
        if dtype not in self.dtypes:
            names = ", ".join(dtype_name(d) for d in self.dtypes)
            return False, f"{self.name} takes {names}, not {dtype_name(dtype)}"
        return True, ""


# An op's `host_footprint` counts the tensors its make_inputs and reference hold at their peak;
# BLAS scratch and the allocator add a little (the peak resident sets measured for every built-in
# op, 40 MB to 4.6 GB, were at most 4.4% above the count, and that at 42 MB).
HOST_MARGIN = 1.1
# For an op that states no host footprint: inputs drawn in fp32 beside a scaled copy (4x a 16-bit
# footprint), or the inputs and a float64 copy of each (5x), with room to spare. An op that
# quantizes, or packs values below a byte, holds more and states its own.
HOST_FACTOR = 8


@dataclass
class Op:
    """One decode operation with a shape space: its inputs, float64 reference, byte and FLOP
    counts and tolerance (README.md, "Bring your own kernel", shows the contract in use)."""

    name: str
    shape_type: type
    make_inputs: Callable[[Any, torch.dtype, str | torch.device, int], tuple]
    reference: Callable[..., torch.Tensor]
    bytes_moved: Callable[[Any, torch.dtype], int]
    flops: Callable[[Any], int]
    out_spec: Callable[[Any, torch.dtype], tuple[tuple[int, ...], torch.dtype]]
    tolerance: dict[torch.dtype, float]
    dtypes: tuple[torch.dtype, ...]
    doc: str = ""
    # Tiny (shape, dtype) cases for the smoke suite; the op knows its own shape space.
    smoke: tuple[tuple[Any, torch.dtype], ...] = ()
    impls: dict[str, Impl] = field(default_factory=dict)
    # A collective runs in every rank of a process group at once (bench/collectives.py), not in
    # the single-process runner; its shape carries the world size.
    collective: bool = False
    # Bytes of one input set plus the output, as the op's tensors hold them: what must fit in the
    # device's memory for a case to run at all (the CLI refuses a case that cannot). None:
    # `bytes_moved`, which is exactly that for an op reading each input once and writing its output.
    footprint: Callable[[Any, torch.dtype], int] | None = None
    # Peak bytes of host memory that building one input set and computing its float64 reference
    # hold at once, for a case on the backend named by the third argument ("cpu", "cuda", "xla"):
    # fp32 staging, quantizer temporaries, float64 copies (the CLI refuses a case past the host's
    # available memory). None: HOST_FACTOR x the footprint (`host_footprint_bytes`).
    host_footprint: Callable[[Any, torch.dtype, str], int] | None = None

    def shape(self, **kw: int) -> Any:
        """Build and validate a shape from keyword values; ValueError says what is wrong."""
        names = [f.name for f in dataclasses.fields(self.shape_type)]
        unknown = sorted(set(kw) - set(names))
        if unknown:
            raise ValueError(f"{self.name} has no shape field {', '.join(unknown)} "
                             f"(fields: {', '.join(names)})")
        try:
            return self.shape_type(**kw)
        except TypeError as e:  # missing required fields
            missing = [n for n in names if n not in kw and _required(self.shape_type, n)]
            raise ValueError(f"{self.name} shape needs {', '.join(missing)}") from e

    def tol(self, dtype: torch.dtype) -> float:
        return self.tolerance[dtype]

    def footprint_bytes(self, shape: Any, dtype: torch.dtype) -> int:
        """Bytes one input set and its output take on the device (per rank for a collective)."""
        return int((self.footprint or self.bytes_moved)(shape, dtype))

    def host_footprint_bytes(self, shape: Any, dtype: torch.dtype, backend: str = "cpu") -> int:
        """Host bytes that building one input set and its float64 reference need at their peak
        (per rank for a collective): the op's own count plus HOST_MARGIN, or, for an op that
        states none, HOST_FACTOR x its footprint."""
        if self.host_footprint is None:
            return HOST_FACTOR * self.footprint_bytes(shape, dtype)
        return math.ceil(HOST_MARGIN * self.host_footprint(shape, dtype, backend))


def _required(cls: type, name: str) -> bool:
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


OPS: dict[str, Op] = {}


def register_op(op: Op) -> Op:
    if op.name in OPS:
        raise ValueError(f"op {op.name!r} is registered twice")
    OPS[op.name] = op
    return op


RESERVED_NAMES = ("inputs",)  # bench/isolation.py's phase names besides the impls'


def register_impl(
    op: str,
    name: str | None = None,
    *,
    backends: Iterable[str] = ("cpu", "cuda"),
    dtypes: Iterable[torch.dtype | str] | None = None,
    kind: str = "torch",
    baseline: bool = False,
    prepare: Callable[..., tuple] | None = None,
    known_issue: str = "",
    build_info: Callable[[], dict[str, Any] | None] | None = None,
) -> Callable[[Callable], Callable]:
    """Decorator adding `fn` as an impl of `op`; a plugin file uses it to add its own kernels.

        @register_impl("gemv_bf16", "my_gemv", backends=["cuda"], kind="triton")
        def my_gemv(x, w): ...
    """
    if op not in OPS:
        raise ValueError(f"unknown op {op!r} (known: {', '.join(sorted(OPS))})")
    if kind not in KINDS:
        raise ValueError(f"unknown impl kind {kind!r} (known: {', '.join(KINDS)})")
    # one name given alone is that name, not its letters ('unknown backend 'c'')
    backends = (backends,) if isinstance(backends, str) else tuple(backends)
    if not backends:
        raise ValueError(f"an impl runs on at least one backend (known: {', '.join(BACKENDS)})")
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        raise ValueError(f"unknown backend {bad[0]!r} (known: {', '.join(BACKENDS)})")
    the_op = OPS[op]
    if isinstance(dtypes, (str, torch.dtype)):
        dtypes = (dtypes,)
    dts = the_op.dtypes if dtypes is None else tuple(parse_dtype(d) for d in dtypes)
    if not dts:
        raise ValueError(f"an impl takes at least one dtype ({op} takes "
                         f"{', '.join(dtype_name(d) for d in the_op.dtypes)})")
    foreign = [dtype_name(d) for d in dts if d not in the_op.dtypes]
    if foreign:
        raise ValueError(f"{op} does not take dtype {', '.join(foreign)} (it takes "
                         f"{', '.join(dtype_name(d) for d in the_op.dtypes)})")

    def deco(fn: Callable) -> Callable:
        impl_name = name or fn.__name__
        if not isinstance(impl_name, str) or not impl_name.strip():
            raise ValueError(f"an impl's name is a non-empty string, not {impl_name!r}")
        if impl_name in RESERVED_NAMES:
            raise ValueError(f"{impl_name!r} cannot name an impl: the case worker names its phase "
                             "of building the inputs so")
        if impl_name in the_op.impls:
            raise ValueError(f"{op} already has an impl named {impl_name!r}")
        try:
            out_arg = "out" in inspect.signature(fn).parameters
        except (ValueError, TypeError):  # a C function (torch.nn.functional.linear): no out=
            out_arg = False
        the_op.impls[impl_name] = Impl(
            name=impl_name, op=op, fn=fn, backends=backends, dtypes=dts, kind=kind,
            baseline=bool(baseline), prepare=prepare, out_arg=out_arg, known_issue=known_issue,
            doc=(inspect.getdoc(fn) or "").split("\n")[0],
            builtin=getattr(fn, "__module__", "").partition(".")[0] == "kernels",
            build_info=build_info)
        return fn

    return deco


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 on the CPU; NaN anywhere gives inf."""
    return rel_errs([out], ref)[0]


def rel_errs(outs: list[torch.Tensor], ref: torch.Tensor) -> list[float]:
    """rel_err of each of `outs` (all of the reference's shape) against `ref`, a batch at a
    time: the timing's thousands of output buffers of a tiny case, one by one, cost seconds."""
    r = ref.detach().to("cpu", torch.float64)
    denom = torch.linalg.vector_norm(r).item()
    errs: list[float] = []
    step = max(1, 2**22 // max(1, r.numel()))  # a batch of at most ~32 MB of float64
    for k in range(0, len(outs), step):
        o = torch.stack([x.detach() for x in outs[k:k + step]]).to("cpu", torch.float64)
        if o.shape[1:] != r.shape:
            raise ValueError(f"output shape {tuple(o.shape[1:])} != reference shape "
                             f"{tuple(r.shape)}")
        o = o.reshape(len(o), -1)
        num = torch.linalg.vector_norm(o - r.reshape(1, -1), dim=1)
        err = num / denom if denom > 0 else num
        errs += torch.where(torch.isfinite(o).all(dim=1), err, math.inf).tolist()
    return errs

