"""A case: one op at one shape and dtype, the unit every part of the harness passes around.

Suites produce cases; the runner, its worker processes and the collective ranks measure them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Case:
    op: str
    shape: Any
    dtype: torch.dtype
    impls: tuple[str, ...] | None = None  # None: every impl that supports backend and dtype
    group: str = ""  # free label for reports, e.g. "llama-3-8b qkv" or "precision"
    # True: one input set reused call after call, no cache flush (the size sweep): a working set
    # the cache holds is timed from the cache, and not judged against the DRAM roof.
    warm: bool = False
