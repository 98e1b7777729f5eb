"""The GEMV ops: `gemv_bf16`, `gemv_w8` and `gemv_w4`, their formats, references, byte counts and impls."""
from .ops import GemvShape
from . import simd  # noqa: F401
from .triton_w8 import GemvW8Shape
from .triton_w4 import GemvW4Shape

__all__ = ["GemvShape", "GemvW8Shape", "GemvW4Shape"]
