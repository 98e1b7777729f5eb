"""Where it runs: the cpu, cuda and xla backends, device identity and the chip catalog.

Only the catalog loads with the package. The backends import torch, which takes a second or more
to start: `Backend`, the backend classes and `BACKENDS` are imported on first use, so the
commands that only read results files or the catalog (show, compare, plot, chips) never wait for
it, and work where torch cannot start.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from .catalog import Chip, detect, load as load_catalog, lookup as lookup_chip

if TYPE_CHECKING:
    from .base import Backend
    from .cpu import CPUBackend
    from .cuda import CUDABackend
    from .xla import XLABackend

    BACKENDS: dict[str, type[Backend]]

_INSTANCES: dict[str, Backend] = {}


def __getattr__(name: str) -> Any:
    """Backend, CPUBackend, CUDABackend, XLABackend and BACKENDS, imported when first asked for
    (PEP 562) and kept as the package's own names from then on."""
    if name == "Backend":
        from .base import Backend
        globals()["Backend"] = Backend
    elif name in ("CPUBackend", "CUDABackend", "XLABackend", "BACKENDS"):
        from .cpu import CPUBackend
        from .cuda import CUDABackend
        from .xla import XLABackend  # imports nothing of jax/torchax until first used
        globals().update(CPUBackend=CPUBackend, CUDABackend=CUDABackend, XLABackend=XLABackend,
                         BACKENDS={"cpu": CPUBackend, "cuda": CUDABackend, "xla": XLABackend})
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return globals()[name]


def get_backend(name: str) -> Backend:
    """The backend instance for a name; KeyError on unknown names (availability is separate)."""
    classes = sys.modules[__name__].BACKENDS  # through __getattr__ until first imported
    key = name.lower()
    if key not in classes:
        raise KeyError(f"unknown backend {name!r} (known: {', '.join(classes)})")
    if key not in _INSTANCES:
        _INSTANCES[key] = classes[key]()
    return _INSTANCES[key]


def best_backend() -> Backend:
    """CUDA when a GPU is usable, else the CPU (XLA only when asked for by name)."""
    cuda = get_backend("cuda")
    return cuda if cuda.available()[0] else get_backend("cpu")


__all__ = ["Backend", "BACKENDS", "CPUBackend", "CUDABackend", "XLABackend", "Chip",
           "best_backend", "detect", "get_backend", "load_catalog", "lookup_chip"]
