"""What is measured: decode ops, their formats, references, byte counts and implementations.

`OPS` maps op name → Op; `register_impl` adds an impl (a plugin file uses it). Importing this
package registers every built-in op and impl.
"""
from .registry import OPS, Impl, Op, dtype_name, parse_dtype, register_impl, register_op, rel_err
from . import probes, gemv_bf16  # noqa: F401  (registers ops)
from . import probes_cpu  # noqa: F401  (the C read probe: the CPU roof)
from . import quant, gemv_w8, gemv_w4  # noqa: F401  (registers the quantized GEMV ops)
from . import paged_attention  # noqa: F401  (registers paged_attention, paged_attention_kv8)

__all__ = ["OPS", "Impl", "Op", "dtype_name", "parse_dtype", "register_impl", "register_op",
           "rel_err"]
