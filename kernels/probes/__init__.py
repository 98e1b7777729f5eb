"""Bandwidth probes `copy` and `read`: the measured memory roof."""
from .ops import ProbeShape
from . import simd  # noqa: F401  (the C read probe)

__all__ = ["ProbeShape"]
