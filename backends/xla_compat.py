"""Import torchax on a torch that dropped the named-tensor (Dimname) op overloads.

torchax 0.0.13 names overloads such as `aten.prod.dim_Dimname` and `aten.unbind.Dimname` in
module-level tables (its autocast policy, its decomposition list). torch 2.13 removed the
named-tensor overloads, so `torch.ops.aten.prod.dim_Dimname` raises AttributeError and
`import torchax` fails before any of its real code runs.

`load()` imports torchax and builds its default environment (whose first use imports the op
tables lazily) with one narrow patch in place: while that runs, looking up a *missing*
named-tensor overload (a name with "Dimname" or "names") yields an inert placeholder instead of
raising. Nothing can dispatch to an overload torch no longer has, so an entry keyed by a
placeholder is dead, exactly as if torchax had not listed it. Every other lookup, and every lookup
after the import, behaves as before (the original `__getattr__` is restored in `finally`). No
installed file is changed. On a torch that still has the overloads the patch is never consulted.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import re
import threading
from types import ModuleType
from typing import Any, Iterator

_LOCK = threading.Lock()
# Overload names of the named-tensor API: "dim_Dimname", "Dimname_Scalar", "names_dim",
# "correction_names_out", ... (torchax 0.0.13 names 22 of them; torch 2.13 has none).
_NAMED_TENSOR = re.compile(r"dimname|(^|_)names(_|$)", re.IGNORECASE)


class MissingOverload:
    """Stands in for an overload that this torch no longer has; hashable, never called."""

    def __init__(self, packet: str, name: str) -> None:
        self.qualname = f"{packet}.{name}"

    def __repr__(self) -> str:
        return f"<missing overload {self.qualname} (removed from this torch)>"

    def name(self) -> str:
        return self.qualname

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.qualname} does not exist in this torch")


# Placeholders handed out during the last import, for tests and for `decodewall backends`.
PATCHED: list[str] = []


@contextlib.contextmanager
def _tolerate_missing_dimname_overloads() -> Iterator[None]:
    import torch._ops as ops

    cls = ops.OpOverloadPacket
    with _LOCK:  # read the original under the lock: an overlapping load must not save our patch
        original = cls.__getattr__

        def __getattr__(self, key: str):
            try:
                return original(self, key)
            except AttributeError:
                if not _NAMED_TENSOR.search(key):
                    raise
                stub = MissingOverload(str(self), key)
                PATCHED.append(stub.qualname)
                return stub

        cls.__getattr__ = __getattr__
        try:
            yield
        finally:
            cls.__getattr__ = original


class JaxStartError(RuntimeError):
    """JAX imported but could not start a device platform (e.g. JAX_PLATFORMS names one this
    host lacks); torchax's environment would otherwise fail on it with an unrelated error."""


FLAGS_PROBE_S = 120  # a child importing jax and starting its platform
GLOG = re.compile(r"^[FE]\d{4} [\d:.]+\s+\d+ \S+\] ")  # an error or fatal line's prefix
_FLAGS_OK = "DECODEWALL_XLA_FLAGS_STARTED"  # the XLA_FLAGS a probe started with: children skip it


def _probe_xla_flags() -> None:
    """JaxStartError when JAX cannot start under this XLA_FLAGS. XLA parses the variable in C++
    and ends the process on a flag it does not know (a fatal log line, exit 1), which no handler
    here could catch; so a child starts JAX first, wherever XLA_FLAGS is set."""
    flags = os.environ.get("XLA_FLAGS", "")
    if not flags.strip() or os.environ.get(_FLAGS_OK) == flags:
        return
    import subprocess
    import sys

    # not from the working directory, which `-c` puts first on the path (a jax/ folder there),
    # unless safe_path (-P, PYTHONSAFEPATH) left it out
    code = "import jax; jax.devices()" if getattr(sys.flags, "safe_path", False) else \
        "import sys; del sys.path[0]; import jax; jax.devices()"

    def start(env: dict[str, str], with_flags: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  timeout=FLAGS_PROBE_S, env=env)
        except subprocess.TimeoutExpired:
            raise JaxStartError(f"JAX did not start within {FLAGS_PROBE_S} s{with_flags}"
                                ) from None

    def why(r: subprocess.CompletedProcess) -> str:
        lines = r.stderr.strip().splitlines()
        logged = [ln for ln in lines if GLOG.match(ln)]  # XLA's own error lines: the cause first
        if logged:
            return GLOG.sub("", logged[0])
        return lines[-1] if lines else f"exit status {r.returncode}"

    r = start(dict(os.environ), f" with XLA_FLAGS={flags!r}")
    if r.returncode != 0:
        bare = start({k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "")
        if bare.returncode != 0:  # not the flags: JAX does not start without them either
            raise JaxStartError(f"JAX could not start: {why(bare)}")
        raise JaxStartError(f"JAX could not start with XLA_FLAGS={flags!r}: {why(r)}")
    os.environ[_FLAGS_OK] = flags


def load() -> tuple[ModuleType, Any]:
    """(torchax, its default Environment), tolerating Dimname overloads this torch lacks.

    Raises ImportError when jax or torchax does not import, JaxStartError when JAX has no
    platform to run on; any other failure (a torchax that does not fit this torch) propagates.
    """
    import jax
    _probe_xla_flags()
    try:
        jax.devices()  # torchax's environment makes a key on the default device first thing
    except Exception as e:
        wanted = os.environ.get("JAX_PLATFORMS") or "its default platform"
        msg = (str(e).strip().splitlines() or [""])[0]
        raise JaxStartError(f"JAX could not start {wanted}: {type(e).__name__}"
                            + (f": {msg}" if msg else "")) from e
    with _tolerate_missing_dimname_overloads():
        torchax = importlib.import_module("torchax")
        env = torchax.default_env()  # imports torchax.ops.* and torchax.decompositions
    return torchax, env


__all__ = ["JaxStartError", "MissingOverload", "PATCHED", "load"]
