"""The XLA backend: the same PyTorch impls on JAX devices (TPU, GPU, XLA:CPU) through torchax.

torch_xla is tied to torch 2.9; torchax runs torch ops as JAX ops on tensors of the `jax` device.
How an impl runs here (the hooks of backends/base.py):
- data is built on the CPU (`build_device`) and moved to the `jax` device: an op's inputs are
  the same values as on the CPU backend, and plain torch code never runs under torchax's modes
  (which mishandle some CPU ops, e.g. `cpu_tensor[i, :n] = ...`).
- `wrap(fn)` is `jax.jit` of the whole impl, traced once per shape, dtype and non-tensor argument
  (group_size, scale are static) and cached; the correctness gate's call compiles it, so no
  compile is ever timed. It is traced at JAX matmul precision 'highest', so checks and timings
  see the same program: a TPU otherwise computes float32 matmuls in one bf16 pass, which an impl
  must never do behind the caller's back (bf16 inputs are unaffected). An impl that does not
  lower (an op torchax lacks, a data-dependent shape) raises NotImplementedError saying so, and
  the runner records it as skipped.
- `session()` turns torchax's torch modes on for eager work on jax tensors (an impl's
  `prepare`); outside it and the traces nothing of torchax is active.
- XLA arrays are immutable, so there are no output buffers (`out_buffers = False`): the runner
  calls `fn(*args)` and checks the returned value. The output's allocation is part of what is
  timed, as it is for any jitted JAX function that does not donate its inputs.
- timing reads the clock after `block_until_ready` on the result (dispatch is asynchronous:
  without it a TPU "moves" more bytes per second than its HBM can).
- input sets are rotated past `rotate_bytes()` (XLA:CPU: the CPU backend's), copied with
  `jnp.copy` (torchax's `clone` of an immutable array is the same buffer, which would defeat the
  rotation).
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import sys
import warnings
from typing import Any, Callable, Iterator

import torch

from .base import Backend
from .catalog import detect
from .cpu import CPUBackend, _cpu_name, _mem_total, read_caches

# Accelerators: the largest on-chip memory among catalog TPUs (v5e/v6e VMEM, v4 CMEM: 128 MiB).
# VMEM is a scratchpad XLA fills per kernel, not a cache that keeps data between calls, and JAX
# reports no L2 size for GPUs; rotating past 4x this (512 MiB) defeats any of them at little cost.
ACCEL_CACHE_BYTES = 128 * 1024**2

MATMUL_PRECISION = "highest"

_NOT_LOWERING: tuple[type[BaseException], ...] = ()


def _not_lowering() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "this impl does not lower to XLA" (not a bug in the harness)."""
    global _NOT_LOWERING
    if not _NOT_LOWERING:
        import jax
        from torchax.tensor import OperatorNotFound
        _NOT_LOWERING = (OperatorNotFound, jax.errors.ConcretizationTypeError,
                         jax.errors.NonConcreteBooleanIndexError,
                         jax.errors.TracerArrayConversionError,
                         jax.errors.TracerIntegerConversionError)
    return _NOT_LOWERING


def _skip(e: BaseException) -> NotImplementedError:
    first = (str(e).strip().splitlines() or [""])[0]
    return NotImplementedError(f"does not lower to XLA: {type(e).__name__}: {first}")


class Jitted:
    """`fn` jitted once per shape: tensors are traced, every other argument is static."""

    def __init__(self, fn: Callable, env: Any) -> None:
        import jax
        from torchax.tensor import Tensor
        self.fn, self.env, self._tensor_type = fn, env, Tensor

        def run(static: tuple, *arrays: Any) -> Any:
            args, it = [], iter(arrays)
            for kind, value in static:
                args.append(env.j2t_iso(next(it)) if kind == "t" else value)
            with env, jax.default_matmul_precision(MATMUL_PRECISION):
                res = fn(*args)
            return env.t2j_iso(res)

        self._jit = jax.jit(run, static_argnums=0)

    def __call__(self, *args: Any) -> Any:
        static, arrays = [], []
        for a in args:
            if isinstance(a, self._tensor_type):
                static.append(("t", None))
                arrays.append(a.jax())
            elif isinstance(a, torch.Tensor):
                raise TypeError(f"{getattr(self.fn, '__name__', self.fn)} got a {a.device} "
                                "tensor on the xla backend; move inputs with .to('jax')")
            else:
                static.append(("v", a))
        try:
            res = self._jit(tuple(static), *arrays)
        except _not_lowering() as e:
            raise _skip(e) from e
        return self.env.j2t_iso(res)


def _version(module: str) -> str:
    """The version of `module` as imported (its `__version__`), else as installed, else "?"."""
    v = getattr(sys.modules.get(module), "__version__", None)
    if v is None:
        try:
            v = importlib.metadata.version(module)
        except importlib.metadata.PackageNotFoundError:
            v = "?"
    return str(v)


def _misfit(e: BaseException, doing: str) -> str:
    """One line: which torchax/jax failed at what, and the versions the `xla` extra pins."""
    msg = (str(e).strip().splitlines() or [""])[0]
    return (f"torchax {_version('torchax')} (jax {_version('jax')}, torch {torch.__version__}) "
            f"{doing}: {type(e).__name__}: {msg}; decodewall[xla] is tested with {_xla_pins()}")


def _to_host(env: Any, x: torch.Tensor) -> torch.Tensor:
    with env, warnings.catch_warnings():
        # torchax wraps the read-only host copy with from_numpy; we never write to it
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return x.to("cpu")


def _self_test(env: Any) -> None:
    """Run one tiny impl through every torchax entry point this backend uses (the `jax` device,
    `Tensor`, `OperatorNotFound`, `t2j_iso`/`j2t_iso`, the host copy). A torchax other than the
    one tested can import and still lack one, which would otherwise end a run mid-way with an
    internal error instead of making the backend unavailable with the reason."""
    _not_lowering()
    with env:
        x = torch.arange(4.0).to("jax")
    y = Jitted(lambda t: t * 2, env)(x)
    y.jax().block_until_ready()
    host = _to_host(env, y)
    if not torch.equal(host, torch.arange(0.0, 8.0, 2.0)):
        raise RuntimeError(f"2 * [0, 1, 2, 3] came back as {host.tolist()}")


def _import_error(e: ImportError) -> str:
    """Why jax/torchax did not import: not installed, or installed but not importable here."""
    missing = [m for m in ("jax", "torchax") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{' and '.join(missing)} not installed; pip install 'decodewall[xla]'"
    msg = (str(e).strip().splitlines() or [""])[0]
    return (f"jax and torchax are installed but do not import ({type(e).__name__}: {msg}); "
            f"decodewall[xla] is tested with {_xla_pins()}")


def _xla_pins() -> str:
    """The versions the `xla` extra pins, from this package's metadata (pyproject.toml)."""
    try:
        reqs = importlib.metadata.requires("decodewall") or []
    except importlib.metadata.PackageNotFoundError:
        reqs = []
    pins = [r.split(";")[0].strip() for r in reqs if "extra == \"xla\"" in r]
    return ", ".join(pins) or "the versions pyproject.toml's xla extra pins"


class XLABackend(Backend):
    # No contention sampler (the CPU backend's cpu_pressure_pct): XLA:CPU's own thread pools
    # outnumber the cores, and PSI counted 4-33% of a window waiting on a quiet host, which the
    # run's note would have blamed on other tasks.
    name = "xla"
    out_buffers = False

    def __init__(self) -> None:
        self._loaded: tuple[Any, Any] | None = None
        self._error: str | None = None
        self._jits: dict[Callable, Jitted] = {}

    # -- availability --------------------------------------------------------------------------
    def _load(self) -> tuple[Any, Any] | None:
        if self._loaded is None and self._error is None:
            from .xla_compat import JaxStartError, load
            try:
                loaded = load()
            except ImportError as e:
                self._error = _import_error(e)
            except JaxStartError as e:
                self._error = str(e)
            except Exception as e:  # a torchax that does not fit this torch
                self._error = _misfit(e, "failed to import")
            else:
                try:
                    _self_test(loaded[1])
                except Exception as e:  # imported, but not the API this backend drives
                    self._error = _misfit(e, "imported but does not run a jitted op")
                else:
                    self._loaded = loaded
        return self._loaded

    @property
    def env(self) -> Any:
        loaded = self._load()
        if loaded is None:
            raise RuntimeError(f"xla backend is not available: {self._error}")
        return loaded[1]

    def available(self) -> tuple[bool, str]:
        if self._load() is None:
            return False, self._error or "torchax failed to load"
        # load() started JAX's platform. The processes this one starts (the case workers) take
        # the same one: a worker left to choose could start JAX on its CPU while this process
        # holds the TPU (libtpu lets one process hold it), and its numbers would be recorded as
        # the TPU's; pinned, such a worker fails and says why. (A GPU's platform name is not
        # one JAX_PLATFORMS takes on every JAX version: not pinned.)
        platform = self._devices()[0].platform
        if platform in ("tpu", "cpu"):
            os.environ.setdefault("JAX_PLATFORMS", platform)
        return True, ""

    def _devices(self) -> list[Any]:
        import jax
        self._load()
        return jax.devices()

    @property
    def kind_of_device(self) -> str:  # type: ignore[override]
        """The JAX platform: "cpu", "tpu" or "gpu"."""
        return self._devices()[0].platform

    # -- running -------------------------------------------------------------------------------
    def device(self) -> str:
        return "jax"

    def build_device(self) -> str:
        return "cpu"

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        import jax
        with self.env, jax.default_matmul_precision(MATMUL_PRECISION):
            try:
                yield
            except _not_lowering() as e:  # e.g. a prepare() calling an op torchax lacks
                raise _skip(e) from e

    def wrap(self, fn: Callable) -> Callable:
        j = self._jits.get(fn)
        if j is None:
            j = self._jits[fn] = Jitted(fn, self.env)
        return j

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        with self.env:
            return t.to("jax")

    def to_host(self, x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.device.type == "jax":
            return _to_host(self.env, x)
        return x

    def clone(self, t: torch.Tensor) -> torch.Tensor:
        import jax.numpy as jnp
        from torchax.tensor import Tensor
        if isinstance(t, Tensor):
            c = Tensor(jnp.copy(t.jax()), self.env)
            c._decodewall_born = c.jax()  # its own array: restore_changed_sets' fast path
            return c
        return t.clone()

    def snapshot(self, args: tuple) -> list[Any] | None:
        """Each input's JAX array, no copy: an XLA array cannot change, so an in-place op on a
        torchax tensor (an impl's `prepare` scaling its weight in place) swaps a new array in,
        and the one kept here is the input as it was."""
        from torchax.tensor import Tensor
        return [a.jax() if isinstance(a, Tensor) else None for a in args]

    def restore_changed(self, args: tuple, snap: list[Any] | None) -> list[int]:
        """The inputs whose array was swapped for one of other values (NaN equal to NaN, as in
        the unused slots of a paged KV pool), each given a copy of the snapshot's array: `args`
        may be a timing set other than the one snapped, and two sets sharing one array would
        be read from the cache."""
        import jax.numpy as jnp
        from torchax.tensor import Tensor
        if snap is None:
            return []
        changed = []
        for i, (a, p) in enumerate(zip(args, snap)):
            if p is None or a.jax() is p:
                continue
            now = a.jax()
            if now.shape != p.shape or now.dtype != p.dtype or \
                    not bool(jnp.array_equal(now, p, equal_nan=True)):
                changed.append(i)
                a.data = Tensor(jnp.array(p, copy=True), self.env)
        return changed

    def restore_changed_sets(self, sets: list[tuple], snap: list[Any] | None) -> list[int]:
        """restore_changed for every timing set, each against the array it was cloned with
        (equal in value to the snapshot's): a set still holding it is unchanged without a look
        at its values, which would cost a blocking comparison a set (seconds an impl at the
        thousands of sets of a tiny case)."""
        if snap is None:
            return []
        changed: set[int] = set()
        for s in sets:
            own = [getattr(a, "_decodewall_born", None) for a in s]
            changed.update(self.restore_changed(s, [o if o is not None else p
                                                    for o, p in zip(own, snap)]))
        return sorted(changed)

    def block(self, out: Any) -> None:
        from torchax.tensor import Tensor
        leaves = out if isinstance(out, (tuple, list)) else (out,)
        for leaf in leaves:
            if isinstance(leaf, Tensor):
                leaf.jax().block_until_ready()
            elif hasattr(leaf, "block_until_ready"):
                leaf.block_until_ready()

    def synchronize(self) -> None:
        import jax
        jax.effects_barrier()

    # -- identity ------------------------------------------------------------------------------
    def probe_sets(self, nbytes: int, writes: bool = True) -> int:
        """XLA:CPU: 16 MiB sets for copy: each call allocates its output (no out= here), and a
        probe-sized output is a fresh mmap whose page faults, not DRAM, would set the copy roof;
        16 MiB outputs are recycled by the allocator, as every case's are. 64 MiB sets for read,
        whose output is a scalar: XLA:CPU streams a 64 MiB array 5-10% faster than a 16 MiB one
        (2-core EPYC, interleaved), as a case streams its large weights. Accelerators: one set."""
        if self.kind_of_device == "cpu":
            return max(1, nbytes // ((16 if writes else 64) * 1024**2))
        return 1

    def cache_bytes(self) -> int:
        if self.kind_of_device == "cpu":
            return CPUBackend().cache_bytes()
        return ACCEL_CACHE_BYTES

    def rotate_bytes(self) -> int:
        """XLA:CPU runs on the host's caches, so it rotates past what the CPU backend does (4x
        every level together: a non-inclusive L3 holds lines the L2s do not); accelerators 4x
        `ACCEL_CACHE_BYTES`."""
        if self.kind_of_device == "cpu":
            return CPUBackend().rotate_bytes()
        return 4 * ACCEL_CACHE_BYTES

    def device_info(self) -> dict[str, Any]:
        devs = self._devices()
        d0 = devs[0]
        platform, kind = d0.platform, d0.device_kind
        try:
            stats = d0.memory_stats() or {}
        except Exception:  # not every PJRT plugin implements it
            stats = {}
        info: dict[str, Any] = {
            "backend": self.name, "platform": platform, "device_kind": kind,
            "devices": [str(d) for d in devs], "device_count": len(devs),
            "matmul_precision": MATMUL_PRECISION,
        }
        if platform == "cpu":
            host = _cpu_name()
            info.update(
                name=f"XLA:CPU ({host})", chip=None,
                chip_note=f"XLA:CPU on the host (devices: {', '.join(info['devices'][:4])}"
                          f"{' ...' if len(devs) > 4 else ''}): judged against the measured roof "
                          "only",
                memory_bytes=_mem_total(), memory_source="host /proc/meminfo",
                cache_bytes=self.cache_bytes(), caches=read_caches(),
                cache_note="host LLC from sysfs")
        else:
            mem = stats.get("bytes_limit")
            chip, note = detect(kind, mem)
            info.update(
                name=f"{kind} (XLA:{platform.upper()})", chip=chip,
                chip_note=note or f"{len(devs)} {platform} device(s): "
                          f"{', '.join(info['devices'][:4])}{' ...' if len(devs) > 4 else ''}",
                memory_bytes=int(mem) if mem else None,
                memory_source="jax memory_stats bytes_limit" if mem else "not reported by JAX",
                cache_bytes=self.cache_bytes(),
                cache_note="no DRAM cache reported by JAX: inputs rotated past 4x 128 MiB "
                           "(the largest TPU VMEM/CMEM)")
        info["clocks"] = self.clocks()
        return info
