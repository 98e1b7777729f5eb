"""Triton plumbing shared by the kernel files: is Triton here, is it interpreted, autotune or not.

Under TRITON_INTERPRET=1 (CPU tests) there is no driver, so `triton.autotune` cannot run: kernels
decorated with `autotune_or_fixed` then use one fixed config, passed by the launcher through
`kernel.fixed_meta`.
"""
from __future__ import annotations

import os
from typing import Any, Callable

try:
    import triton
    import triton.language as tl
    HAS_TRITON = True
except Exception:  # no triton on this platform (e.g. macOS): triton impls are simply not registered
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    HAS_TRITON = False

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Backends a Triton impl is timed on. Under the interpreter the CPU tests call the impls directly.
TRITON_BACKENDS = ("cuda",)


def autotune_or_fixed(configs: list, key: list[str], fixed: dict[str, Any], **kw: Any) -> Callable:
    """`triton.autotune(configs, key)` on a GPU; under the interpreter a fixed meta-parameter set.

    Either way the decorated kernel has `.fixed_meta`, which the launcher splats into the call.
    """
    def deco(jitfn: Any) -> Any:
        if INTERPRET:
            jitfn.fixed_meta = dict(fixed)
            return jitfn
        tuned = triton.autotune(configs=configs, key=key, **kw)(jitfn)
        tuned.fixed_meta = {}
        return tuned
    return deco

