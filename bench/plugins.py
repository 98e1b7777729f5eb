"""Plugin files: Python files whose @register_impl decorators add impls to existing ops.

The CLI loads them before validating a run, and every case worker loads the same files again
under the same module names, so an impl a plugin registers exists wherever its cases run.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

from .errors import UsageError


def load_plugins(paths: Sequence[str]) -> None:
    """Import each plugin file; a missing or broken file is the user's input: UsageError."""
    for i, p in enumerate(paths):
        path = Path(p)
        if not path.is_file():
            raise UsageError(f"plugin {p}: no such file")
        spec = importlib.util.spec_from_file_location(f"decodewall_plugin_{i}_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise UsageError(f"plugin {p}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # SyntaxError included: a broken plugin is not our crash
            msg = str(e).splitlines()[0] if str(e) else ""
            raise UsageError(f"plugin {p} failed to load: {type(e).__name__}: {msg}") from None
