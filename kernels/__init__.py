"""What is measured: decode ops, their formats, references, byte counts and implementations.

`OPS` maps op name → Op; `register_impl` adds an impl (a plugin file uses it). Importing this
package registers every built-in op and impl: one folder per op family (probes/, gemv/,
attention/, collectives/), each read top to bottom from its ops.py. Shared by all: registry.py (the op
contract), common.py (element sizes, tolerances, SM count), quant.py (the INT8/INT4 formats),
cbuild.py (building the C kernels), triton_util.py (autotune plumbing; `tuned()` names the
config each autotuned kernel ran last), triton_split.py (scratch buffers and the last-program
count that lets split Triton kernels merge inside their own launch).
"""
from .common import esize
from .registry import (OPS, Impl, Op, dtype_name, parse_dtype, register_impl, register_op, rel_err,
                       rel_errs)
from .triton_util import forget_tuned, tuned
from . import probes, gemv, attention, collectives  # noqa: F401  (register the ops and impls)

__all__ = ["OPS", "Impl", "Op", "dtype_name", "esize", "forget_tuned", "parse_dtype",
           "register_impl", "register_op", "rel_err", "rel_errs", "tuned"]
