"""What is measured: decode ops, their formats, references, byte counts and implementations.

`OPS` maps op name → Op; `register_impl` adds an impl (a plugin file uses it). Importing this
package registers every built-in op and impl.
"""
from .common import esize
from .registry import OPS, Impl, Op, dtype_name, parse_dtype, register_impl, register_op, rel_err
from . import probes, gemv, attention  # noqa: F401  (register the ops and their impls)

__all__ = ["OPS", "Impl", "Op", "dtype_name", "esize", "parse_dtype", "register_impl",
           "register_op", "rel_err"]
