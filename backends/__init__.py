"""Where it runs: the cpu, cuda and xla backends, device identity and the chip catalog."""
from __future__ import annotations

from .base import Backend
from .catalog import Chip, detect, load as load_catalog, lookup as lookup_chip
from .cpu import CPUBackend
from .cuda import CUDABackend
from .xla import XLABackend  # imports nothing of jax/torchax until first used

BACKENDS: dict[str, type[Backend]] = {"cpu": CPUBackend, "cuda": CUDABackend, "xla": XLABackend}
_INSTANCES: dict[str, Backend] = {}


def get_backend(name: str) -> Backend:
    """The backend instance for a name; KeyError on unknown names (availability is separate)."""
    key = name.lower()
    if key not in BACKENDS:
        raise KeyError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})")
    if key not in _INSTANCES:
        _INSTANCES[key] = BACKENDS[key]()
    return _INSTANCES[key]


def best_backend() -> Backend:
    """CUDA when a GPU is usable, else the CPU (XLA only when asked for by name)."""
    cuda = get_backend("cuda")
    return cuda if cuda.available()[0] else get_backend("cpu")


__all__ = ["Backend", "BACKENDS", "Chip", "best_backend", "detect", "get_backend",
           "load_catalog", "lookup_chip"]
