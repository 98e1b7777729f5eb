"""How the measuring processes' malloc treats what a call frees: kept for the next call.

The case workers (bench/isolation.py) and the roof's probes in the run's parent
(bench/roofline.py) time under the same policy, so an output or temporary allocated each call
(every impl on XLA returns a fresh output) costs the same in a probe as in a case.
"""
from __future__ import annotations

from typing import Any


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def _libc_malloc() -> Any:
    """glibc's C library, or None where malloc is another's (musl, macOS)."""
    import ctypes
    import platform
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Let this process's malloc reuse what it freed rather than hand it back: glibc maps a
    block of 32 MiB or more afresh (unless the heap has room for it, left by earlier
    allocations) and unmaps it on free, so an impl that allocates a temporary each call would
    pay for the kernel zeroing new pages, an amount that varies with the cases run before it.
    Reused, its time is its bytes and arithmetic, as PyTorch's caching allocator makes it on a
    GPU. False where the C library is not glibc (left as it is)."""
    libc = _libc_malloc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def release_freed_memory() -> None:
    """Hand back what the last case or impl freed (`keep_freed_memory` keeps it): each starts
    from the same heap, and a large one's memory does not stay taken through the rest of the
    run."""
    libc = _libc_malloc()
    if libc is not None:
        libc.malloc_trim(0)
