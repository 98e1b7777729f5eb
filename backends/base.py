"""The backend interface: where a kernel runs, how that device is timed, and what cache to defeat."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, ContextManager, Protocol

import torch


class Sampler(Protocol):
    """Device counters sampled over one timing window (CUDA: NVML utilization, power, energy).

    `start()` opens the window; `stop(calls, timed_s)` closes it, given how many calls were
    timed in it and their summed durations, and returns the record keys it measured (null where
    it could not). `stop` never raises: a counter that fails is recorded as null."""

    def start(self) -> None: ...

    def min_window_s(self, cap: float) -> float:
        """Seconds the window must last for the counters to describe it, given that the timing
        stops by `cap` at the latest; 0: no need (the timing's own rules decide)."""
        ...

    def stop(self, calls: int, timed_s: float) -> dict[str, Any]: ...


class Backend:
    """A device family. Subclasses fill in availability, device info, sync and the timer.

    Timing contract: `time_calls(call, idxs, flush)` runs `call(i)` for each i and returns one
    duration in seconds per call, measured so that the work has finished (device events or a sync
    before the clock is read). The runner rotates input sets so that together they exceed
    `rotate_bytes()`; a backend that flushes its cache before each sample returns 0 there.
    flush=False (a warm-cache case of the size sweep) leaves the cache as the last call left it.

    Hooks for backends whose tensors are not plain torch (XLA through torchax); the defaults are
    what CPU and CUDA need: inputs are built on `build_device()` and moved with `to_device` when
    that is not `device()`; eager device work (an impl's `prepare`) runs inside `session()`; the
    callable checked and timed is `wrap(fn)`; `out=` is passed only when `out_buffers`; input
    sets are copied with `clone`, and values are compared as `to_host` returns them.
    """

    name: str = ""
    kind_of_device: str = ""
    # False where arrays are immutable (XLA): impls get no `out=` and their result is checked.
    out_buffers: bool = True

    def available(self) -> tuple[bool, str]:
        raise NotImplementedError

    def device(self) -> str:
        raise NotImplementedError

    def device_info(self) -> dict[str, Any]:
        raise NotImplementedError

    def synchronize(self) -> None:
        pass

    def context_lost(self) -> str | None:
        """After an impl raised: why the device can no longer run anything in this process
        (a CUDA fault poisons the context), or None when it still can."""
        return None

    def block(self, out: Any) -> None:
        """Wait until `out` (a call's result) is computed."""
        self.synchronize()

    def cache_bytes(self) -> int:
        """Size of the last-level cache that timing must defeat."""
        raise NotImplementedError

    def rotate_bytes(self) -> int:
        """Total bytes the rotated input sets must exceed (0 when the cache is flushed instead)."""
        return 4 * self.cache_bytes()

    def probe_sets(self, nbytes: int, writes: bool = True) -> int:
        """Into how many rotated input sets the roof probes split their `nbytes` working set
        (`writes`: the probe writes as much as it reads, as copy does; read writes a scalar)."""
        return 1

    def flush(self) -> None:
        """Evict the cache outside the timed region (CUDA); no-op where sets are rotated."""

    def release(self) -> None:
        """Give back device memory this process holds only for measuring (flush buffers, the
        allocator's cache): the run's parent calls it after its roof probes, so that the
        workers timing the cases have the device's memory to themselves."""

    def flush_mode(self) -> str | None:
        """How `flush` evicts the cache, recorded in each record as `flush`; None where input
        sets are rotated instead (no key recorded)."""
        return None

    def config_error(self) -> str | None:
        """Why this backend's settings (its environment variables) are unusable, or None: the
        CLI reports it as a usage error before anything is measured."""
        return None

    def sampler(self) -> Sampler | None:
        """A sampler of device counters to run around each timing window, or None where the
        device has none worth recording."""
        return None

    def clocks(self) -> dict[str, Any]:
        """Clocks, power and throttle state right now, where the device reports them."""
        return {}

    def time_calls(self, call: Callable[[int], Any], idxs: list[int],
                   flush: bool = True) -> list[float]:
        out = []
        for i in idxs:
            if flush:
                self.flush()
            self.synchronize()
            t0 = time.perf_counter_ns()
            r = call(i)
            self.block(r)
            out.append((time.perf_counter_ns() - t0) * 1e-9)
        return out

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device())

    def build_device(self) -> str:
        """Where data for this backend is built (random inputs): its own device by default."""
        return self.device()

    def session(self) -> ContextManager[Any]:
        """Context for eager work on this backend's tensors (an impl's `prepare`)."""
        return contextlib.nullcontext()

    def wrap(self, fn: Callable) -> Callable:
        """The callable to check and time for an impl's `fn` (XLA: jitted once per shape)."""
        return fn

    def clone(self, t: torch.Tensor) -> torch.Tensor:
        """A copy of `t` in its own memory (a rotated input set must not share buffers)."""
        return t.clone()

    def to_host(self, x: Any) -> Any:
        """A device value as the reference and the check see it (default: the value itself)."""
        return x

    def snapshot(self, args: tuple) -> list[Any] | None:
        """What `restore_changed` needs to find and undo a change an impl made to its inputs: a
        copy of each tensor; None (not checked) when the device cannot hold a second copy."""
        try:
            return [a.clone() if isinstance(a, torch.Tensor) else None for a in args]
        except RuntimeError:  # out of memory (torch.OutOfMemoryError is one)
            return None

    def restore_changed(self, args: tuple, snap: list[Any] | None) -> list[int]:
        """The positions of the inputs that differ from `snapshot`'s copies, byte for byte (a NaN
        in an unused slot equals itself), each put back."""
        return self.restore_changed_sets([args], snap)

    def restore_changed_sets(self, sets: list[tuple], snap: list[Any] | None,
                             batched: bool | None = None) -> list[int]:
        """restore_changed over every timing input set (each a copy of the values `snap` holds):
        the positions changed in any, each put back. A case of tiny inputs has thousands of
        sets: compared as 8-byte words, and `batched` (default: off the CPU) a batch at a time
        (up to 64 MB of sets stacked) with one wait for the device in all, not one each."""
        if snap is None:
            return []
        hits: list[tuple[tuple, int, Any]] = []  # (set, position, changed: bool or a flag)
        for i, p in enumerate(snap):
            if p is None:
                continue
            p_words = _words(p)
            same = []
            for s in sets:
                if s[i].shape != p.shape or s[i].dtype != p.dtype:
                    hits.append((s, i, True))  # resized or retyped: changed whatever it holds
                elif not (p.device.type != "cpu" if batched is None else batched) or \
                        len(sets) == 1 or p_words.numel() > 2**22:
                    # in place, no copy: on the CPU nothing is waited for, and a set of over 32
                    # MB (a GPU case's one set) would be copied whole to be stacked
                    hits.append((s, i, not torch.equal(_words(s[i]), p_words)))
                else:
                    same.append(s)
            step = max(1, 2**23 // max(1, p_words.numel()))
            for k in range(0, len(same), step):
                batch = same[k:k + step]
                flags = torch.stack([_words(s[i]) for s in batch]).ne(p_words).any(dim=1)
                hits += [(s, i, flags[j]) for j, s in enumerate(batch)]
        waited = [h for *_, h in hits if isinstance(h, torch.Tensor)]
        answers = iter(torch.stack(waited).tolist() if waited else [])
        changed = set()
        for s, i, hit in hits:
            if next(answers) if isinstance(hit, torch.Tensor) else hit:
                _put(s[i], snap[i])
                changed.add(i)
        return sorted(changed)


def _put(a: torch.Tensor, p: torch.Tensor) -> None:
    """Put `p`'s values back into `a`, and its shape or dtype where an impl changed them."""
    if a.dtype != p.dtype:
        a.data = p.clone()
        return
    if a.shape != p.shape:
        a.resize_(p.shape)
    a.copy_(p)


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _words(t: torch.Tensor) -> torch.Tensor:
    """`t`'s bytes as the widest integers that tile them: a byte-wise comparison is several
    times slower on the CPU."""
    b = _bytes(t)
    if b.storage_offset() % 8:  # a view into its storage: read as its copies (offset 0) are
        b = b.clone()
    for dt, size in ((torch.int64, 8), (torch.int32, 4), (torch.int16, 2)):
        if b.numel() % size == 0 and b.storage_offset() % size == 0:
            return b.view(dt)
    return b
