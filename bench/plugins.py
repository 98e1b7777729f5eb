"""Plugin files: Python files whose @register_impl decorators add impls to existing ops.

The CLI loads them before validating a run, and every case worker loads the same files again
under the same module names, so an impl a plugin registers exists wherever its cases run. Before
that, the CLI imports them in a child process (`preflight_main`, started by
bench.isolation.preflight_plugins): a plugin that ends its process at import (a crash in a library
it loads, os._exit) is then reported in one line, not fatal.
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

from .errors import UsageError, exception_line, printable


def load_plugins(paths: Sequence[str], before_each: Callable[[int], None] | None = None) -> None:
    """Import each plugin file; a missing, repeated or broken file is the user's input:
    UsageError. `before_each(i)` is called before the i-th file is imported."""
    seen: dict[Path, str] = {}
    for i, p in enumerate(paths):
        if before_each is not None:
            before_each(i)
        if not p.strip():
            raise UsageError("--plugin is empty: give a Python file")
        path = Path(p)
        if path.is_dir():
            raise UsageError(f"plugin {p}: is a directory, not a Python file")
        if not path.is_file():
            raise UsageError(f"plugin {p}: " + ("not a regular file" if path.exists() else
                                                "no such file"))
        # A second import would register its impls again and blame the plugin for the clash.
        if path.resolve() in seen:
            first = seen[path.resolve()]
            also = f" (also as {first})" if first != p else ""
            raise UsageError(f"plugin {p} is given twice{also}")
        seen[path.resolve()] = p
        # a module name of identifier characters (a file stem may hold spaces or dots), in
        # sys.modules while it runs: dataclasses and pickling look a class's module up there
        name = f"decodewall_plugin_{i}_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise UsageError(f"plugin {p}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except KeyboardInterrupt:
            sys.modules.pop(name, None)
            raise
        # BaseException: a plugin's sys.exit() (SystemExit) must not end the run silently, and a
        # SyntaxError is the plugin's, not our crash.
        except BaseException as e:
            sys.modules.pop(name, None)
            raise UsageError(f"plugin {p} failed to load: {printable(_why(e))}") from None


def _why(e: BaseException) -> str:
    """'ValueError: first line', 'ValueError' when the message is empty, or what sys.exit got."""
    if isinstance(e, SystemExit):
        return f"it called sys.exit({e.code!r})" if e.code is not None else "it called sys.exit()"
    return exception_line(e)


DONE = "done"  # preflight_main's last line: every plugin imported and the process still alive


def preflight_main() -> None:
    """The child of bench.isolation.preflight_plugins (started through bench/boot.py):
    PROGRESS_FILE PLUGIN... It writes each plugin's index before importing it, then DONE."""
    progress, *paths = sys.argv[1:]
    with open(progress, "w") as f:
        def before_each(i: int) -> None:
            f.write(f"{i}\n")
            f.flush()
        try:
            load_plugins(paths, before_each)
        except BaseException:  # SystemExit and KeyboardInterrupt too: load_plugins names them
            pass
        f.write(f"{DONE}\n")
        f.flush()
    os._exit(0)  # not waiting for threads a plugin started, nor running its exit handlers
