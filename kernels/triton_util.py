"""Triton plumbing shared by the kernel files: is Triton here, is it interpreted, autotune or not.

Under TRITON_INTERPRET=1 (CPU tests) there is no driver, so `triton.autotune` cannot run: kernels
decorated with `autotune_or_fixed` then use one fixed config, passed by the launcher through
`kernel.fixed_meta`. On a GPU they autotune, unless DECODEWALL_AUTOTUNE=0 (the device check's
correctness tests: one compile per kernel variant instead of one per config), which runs the
first config of the list.

Public (exported by `kernels`): `tuned()` names the config each autotuned kernel ran last, and
the tuner's timings when it just tuned; `forget_tuned()` clears that, so a harness can record
which config served each case.
"""
from __future__ import annotations

import inspect
import os
from typing import Any, Callable

# Triton fuses a multiply and an add into one FMA (FFMA, HFMA2) by default, and 3.9 warns that
# the default turns to unfused in 3.10. The kernels are written and their instruction budgets
# counted (bench.gpucheck.sass) for fused code, which also rounds once instead of twice: keep it
# on unless the user chose. Read when a kernel compiles, so setting it here is in time.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

try:
    import triton
    import triton.language as tl
    HAS_TRITON = True
    TRITON_MISSING = ""
except Exception as e:  # no triton on this platform (macOS, Windows), or a broken install
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    HAS_TRITON = False
    TRITON_MISSING = (f"Triton does not import here ({type(e).__name__}: {e}); its wheels are "
                      f"for Linux on x86-64 and AArch64: pip install triton")


def _interpret() -> bool:
    """Whether Triton runs kernels in its interpreter, as Triton itself reads TRITON_INTERPRET
    (1, true, yes, on or y, in any case): a kernel Triton interprets must get no autotuner,
    which needs a driver."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None and hasattr(knobs, "runtime"):
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on", "y")


INTERPRET = _interpret()
AUTOTUNE = os.environ.get("DECODEWALL_AUTOTUNE", "1") != "0"

# Backends a Triton impl is timed on. Under the interpreter the CPU tests call the impls directly.
TRITON_BACKENDS = ("cuda",)


def register_without_triton(impls: dict[str, tuple[str, ...]]) -> None:
    """Where Triton does not import, the Triton impls (`{op: names}`) stay registered, each
    raising NotImplementedError with the reason: a run records them skipped and says why, and
    `--impl triton_w4` names the cause, not an unknown impl (as a peer whose package is missing)."""
    from .registry import register_impl
    for op, names in impls.items():
        for name in names:
            def fn(*args: Any, out: Any = None) -> Any:
                raise NotImplementedError(TRITON_MISSING)
            fn.__doc__ = "Triton kernel: not available here (Triton does not import)."
            fn.__name__ = fn.__qualname__ = name
            register_impl(op, name, backends=TRITON_BACKENDS, kind="triton")(fn)

# Autotune timing per config: short (configs differ by whole tens of percent; a GEMV runs
# thousands of times in 25 ms), Triton's own do_bench, which zeroes a 256 MB buffer (the L2
# flushed) before every run.
TUNE_WARMUP_MS, TUNE_REP_MS = 5, 25

TUNED: list[Any] = []  # every autotuned kernel, for tuned()


def config_meta(cfg: Any) -> dict[str, Any]:
    """A triton.Config as launch keyword arguments (its meta-parameters, warps and stages)."""
    return {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


_BENCHED = [0]  # configs the tuner timed since forget_tuned(): none means its picks came cached


def _quick_bench(kernel_call: Callable, quantiles: Any = None) -> Any:
    from triton.testing import do_bench
    _BENCHED[0] += 1
    return do_bench(kernel_call, warmup=TUNE_WARMUP_MS, rep=TUNE_REP_MS, quantiles=quantiles)


def autotune_or_fixed(configs: list, key: list[str], fixed: dict[str, Any], **kw: Any) -> Callable:
    """`triton.autotune(configs, key)` on a GPU; under the interpreter a fixed meta-parameter set
    (`fixed`); on a GPU with DECODEWALL_AUTOTUNE=0 the first of `configs`.

    Either way the decorated kernel has `.fixed_meta` (see launch_meta) and `.jit_fn`, the plain
    @triton.jit function, to compile or launch one config of it directly.
    """
    def deco(jitfn: Any) -> Any:
        _check_names(jitfn, key, configs, fixed, kw)
        if INTERPRET or not AUTOTUNE:
            jitfn.fixed_meta = dict(fixed) if INTERPRET else config_meta(configs[0])
            jitfn.jit_fn = jitfn
            return jitfn
        params = inspect.signature(triton.autotune).parameters
        extra = {k: v for k, v in (("do_bench", _quick_bench), ("cache_results", True))
                 if k in params}  # both since Triton 3.3: older ones tune with their defaults
        tuned = triton.autotune(configs=configs, key=key, **extra, **kw)(jitfn)
        tuned.fixed_meta = {}
        tuned.jit_fn = jitfn
        TUNED.append(tuned)
        return tuned
    return deco


def _check_names(jitfn: Any, key: list[str], configs: list, fixed: dict[str, Any],
                 kw: dict[str, Any]) -> None:
    """Every name the tuner is given must be one of the kernel's parameters. Triton 3.9 refuses
    an unknown key name, but before 3.9 the tuner drops it silently and reuses one config for
    every value of it, and the interpreter never builds the tuner: check here, on any platform."""
    params = set(jitfn.arg_names)
    names = [("key", k) for k in key] + [("fixed", k) for k in fixed]
    names += [(arg, k) for arg in ("reset_to_zero", "restore_value") for k in kw.get(arg) or ()]
    names += [("config", k) for cfg in configs for k in cfg.kwargs]
    unknown = sorted({f"{where} {k!r}" for where, k in names if k not in params})
    if unknown:
        raise ValueError(f"autotune of {jitfn.__name__}: {', '.join(unknown)} not among its "
                         f"parameters")


def launch_meta(kernel: Any, use_dot: bool = False, **path: Any) -> dict[str, Any]:
    """The meta-parameters a launcher passes: the interpreter's fixed set, or with
    DECODEWALL_AUTOTUNE=0 the first config that can run on this path
    (`kernel.configs_for(use_dot, **path)`), else none: the tuner picks."""
    if INTERPRET:
        return kernel.fixed_meta
    if not AUTOTUNE and hasattr(kernel, "configs_for"):
        return config_meta(kernel.configs_for(use_dot, **path)[0])
    return kernel.fixed_meta


def describe(cfg: Any) -> str:
    meta = ", ".join(f"{k}={v}" for k, v in sorted(cfg.kwargs.items()))
    return f"{meta}, warps={cfg.num_warps}, stages={cfg.num_stages}"


def forget_tuned() -> None:
    """Clear each tuned kernel's last-run config, so that tuned() names only what runs next."""
    _BENCHED[0] = 0
    for k in TUNED:
        k.best_config = None
        k.configs_timings = None


def tuned() -> dict[str, Any]:
    """{kernel: {"config": the config it ran last, "timings_us": {config: us}}} for each autotuned
    kernel that ran since forget_tuned(). Triton's disk cache (cache_results) restores an earlier
    tuning's timings with its pick: where no config was timed since forget_tuned(), the entry
    says so (`"timings_cached": true`, the timings of that earlier tuning, maybe another run's)."""
    out: dict[str, Any] = {}
    for k in TUNED:
        cfg = getattr(k, "best_config", None)
        if cfg is None:
            continue
        entry: dict[str, Any] = {"config": describe(cfg)}
        timings = getattr(k, "configs_timings", None) or {}
        if timings:
            if not _BENCHED[0]:
                entry["timings_cached"] = True
            entry["timings_us"] = {describe(c): round(1e3 * (t[0] if isinstance(t, (list, tuple)) else t), 2)
                                   for c, t in sorted(timings.items(), key=lambda ct: _first(ct[1]))}
        out[k.base_fn.__name__ if hasattr(k, "base_fn") else k.fn.__name__] = entry
    return out


def _first(t: Any) -> float:
    return float(t[0] if isinstance(t, (list, tuple)) else t)
