"""Runs cases: correctness gate first, then timing of the impls that pass, then one record each.

Per case: build inputs on the device, compute the float64 reference once, and for every selected
impl (1) call it on those inputs with a NaN-poisoned output buffer and compare with the reference,
(2) if it passes, time it on rotated input copies (untimed `prepare` done per copy, outputs
preallocated) and judge the median against the roof. Failures are recorded, never timed, and the
run goes on. `Runner` does this in the calling process; the CLI drives it inside a worker process
(bench/isolation.py) so that an impl that crashes or hangs cannot take the run down.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import torch

from backends import Backend, Chip
from kernels import OPS, Impl, dtype_name, forget_tuned, rel_err, rel_errs, tuned
from kernels.cbuild import default_march

from .case import Case, make_inputs
from .errors import clip, exception_line, exception_text
from .results import ResultWriter
from .roofline import Roof, add_matmul, judge, latency_floor_s
from .timing import Budget, measure

MAX_SETS = 4096
MAX_TRACEBACK = 16000  # characters of an error's traceback a record keeps (its message may be huge)
WARM_CACHE_FACTOR = 4  # a warm set up to this many LLCs may be (partly) cached: not judged
# An impl's stages in order (a crashed or timed-out record's `phase`), as its messages name them.
# After timing the harness checks every timed output and the inputs, calling the impl once more
# where it returns its own output: a fault there is not the timing's.
PHASE_WORDS = {"check": "its check", "warm-up": "its warm-up", "timing": "timing",
               "after-timing": "the check after its timing"}


@dataclass
class RunContext:
    backend: Backend
    roof: Roof
    chip: Chip | None
    device_info: dict[str, Any]
    budget: Budget
    seed: int
    run_id: str
    command: str
    git_commit: str | None
    versions: dict[str, Any]
    impl_filter: tuple[str, ...] | None = None
    check_only: bool = False  # the correctness gate alone, no timing (the builtins' tests)


def select_impls(case: Case, impl_filter: tuple[str, ...] | None) -> list[Impl]:
    op = OPS[case.op]
    names = list(op.impls)
    if case.impls is not None:
        names = [n for n in names if n in case.impls]
    if impl_filter:
        names = [n for n in names if n in impl_filter]
    return [op.impls[n] for n in names]


def reported_impls(case: Case, ctx: RunContext) -> list[Impl]:
    """The impls that get a record for `case`: the selected ones, less those written for another
    backend (unless asked for by name, when the record says why it was skipped)."""
    return [i for i in select_impls(case, ctx.impl_filter)
            if ctx.backend.name in i.backends or ctx.impl_filter]


def _tensors(args: tuple) -> list[torch.Tensor]:
    return [a for a in args if isinstance(a, torch.Tensor)]


def set_bytes(args: tuple, out: torch.Tensor | None) -> int:
    seen, total = set(), 0
    for t in _tensors(args) + ([out] if out is not None else []):
        ptr, size = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
        key = (ptr or id(t), size)  # XLA tensors report no pointer: count each one
        if key not in seen:
            seen.add(key)
            total += key[1]
    return total


def clone_args(args: tuple, clone: Callable[[torch.Tensor], torch.Tensor] = torch.Tensor.clone
               ) -> tuple:
    return tuple(clone(a) if isinstance(a, torch.Tensor) else a for a in args)


def _flag(obj: Any, name: str) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    return (lambda: getattr(obj, name)), (lambda v: setattr(obj, name, v))


def _deterministic(v: tuple[bool, bool]) -> None:
    torch.use_deterministic_algorithms(v[0], warn_only=v[1])


# torch's process-wide settings an impl may change, as (get, set): beside the thread count, the
# default dtype and grad mode, what builds the next case's inputs (the default device: "meta"
# leaves every later case without data) or changes the next impl's arithmetic (TF32 / reduced
# precision matmuls, deterministic algorithms, cuDNN's autotuner)
def _default_device() -> Any:
    """The default device an impl may have set, None where none is (as torch starts): reading
    it with torch.get_default_device and putting that back would leave a device mode on that
    every later torch call passes through."""
    ctx = getattr(getattr(torch, "_GLOBAL_DEVICE_CONTEXT", None), "device_context", None)
    return getattr(ctx, "device", None)


_SETTINGS: tuple[tuple[Callable[[], Any], Callable[[Any], None]], ...] = tuple(
    # torch's newer TF32 API first (2.9 on): set by an impl, it makes every read of the legacy
    # flags below raise ("mix of the legacy and new APIs") until it is put back
    _flag(obj, "fp32_precision") for obj in (
        torch.backends, torch.backends.cuda.matmul, torch.backends.cudnn,
        getattr(torch.backends.cudnn, "conv", None), getattr(torch.backends.cudnn, "rnn", None),
        torch.backends.mkldnn, getattr(torch.backends.mkldnn, "matmul", None),
        getattr(torch.backends.mkldnn, "conv", None), getattr(torch.backends.mkldnn, "rnn", None))
    if obj is not None and hasattr(obj, "fp32_precision")) + (
    (_default_device, torch.set_default_device),
    (torch.get_float32_matmul_precision, torch.set_float32_matmul_precision),
    ((lambda: (torch.are_deterministic_algorithms_enabled(),
               torch.is_deterministic_algorithms_warn_only_enabled())), _deterministic),
    _flag(torch.backends.cuda.matmul, "allow_tf32"),
    _flag(torch.backends.cuda.matmul, "allow_fp16_reduced_precision_reduction"),
    _flag(torch.backends.cuda.matmul, "allow_bf16_reduced_precision_reduction"),
    _flag(torch.backends.cudnn, "allow_tf32"),
    _flag(torch.backends.cudnn, "benchmark"),
)


_UNREAD = object()  # a setting whose getter raised: not put back


def _read(get: Callable[[], Any]) -> Any:
    try:
        return get()
    except Exception:  # e.g. a legacy TF32 flag while the newer API is set
        return _UNREAD


def _torch_state() -> tuple[int, torch.dtype, bool, tuple]:
    return (torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled(),
            tuple(_read(get) for get, _ in _SETTINGS))


def _put_back(state: tuple[int, torch.dtype, bool, tuple]) -> None:
    """Undo what an impl changed of torch's process-wide state: every impl and case of a run
    shares one worker, so a thread count, default dtype or device, matmul precision or denormal
    mode set by one would time, build the inputs of or judge the next. (Flushing denormals has
    no getter; the harness runs with it off.)"""
    threads, dtype, grad, settings = state
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if torch.get_default_dtype() != dtype:
        torch.set_default_dtype(dtype)
    torch.set_grad_enabled(grad)
    torch.set_flush_denormal(False)
    for (get, put), value in zip(_SETTINGS, settings):
        if value is not _UNREAD and _read(get) != value:
            put(value)


def _malformed(out: Any, shape: tuple, dtype: torch.dtype) -> str | None:
    """Why an impl's output is not one the op's reference and byte count describe, or None."""
    if not isinstance(out, torch.Tensor):
        return f"returned {type(out).__name__}, not a tensor"
    # the check's own reading of the values would raise NotImplementedError on these, which
    # reads as the impl's own "skipped": no values to compare is a wrong answer
    if out.layout != torch.strided:
        return f"output layout {str(out.layout).removeprefix('torch.')}, not a dense tensor"
    if out.device.type == "meta":
        return "output on the meta device: it holds no values"
    if tuple(out.shape) != tuple(shape):
        return f"output shape {tuple(out.shape)}, the op's is {tuple(shape)}"
    if out.dtype != dtype:  # the values can pass, but bytes_moved counts the op's dtype
        return (f"output dtype {str(out.dtype).removeprefix('torch.')}, the op's is "
                f"{str(dtype).removeprefix('torch.')}")
    return None


def base_record(ctx: RunContext, case: Case, impl: Impl) -> dict[str, Any]:
    """A case's record before it is checked: the contract's fields, status None."""
    c = ctx
    op = OPS[case.op]
    info = c.device_info
    nbytes = op.bytes_moved(case.shape, case.dtype)
    rec: dict[str, Any] = {
        "op": case.op, "impl": impl.name, "kind": impl.kind, "baseline": impl.baseline,
        "backend": c.backend.name, "shape": dataclasses.asdict(case.shape),
        "dtype": dtype_name(case.dtype), "status": None, "error": None, "correct": None,
        "rel_err": None, "tolerance": op.tol(case.dtype), "time_s": None, "bytes": nbytes,
        "flops": op.flops(case.shape), "achieved_gbps": None, "roof_gbps": c.roof.gbps,
        "pct_roof": None,
        # a collective is judged against the chip's links, a kernel against its memory
        "datasheet_gbps": (c.chip.interconnect.link_gbps if op.collective else c.chip.mem_bw_gbps)
        if c.chip else None, "pct_datasheet": None,
        "arithmetic_intensity": (op.flops(case.shape) / nbytes) if nbytes else None,
        "verdict": None,
        "device": {"name": info.get("name"), "chip": c.chip.id if c.chip else None,
                   "memory_bytes": info.get("memory_bytes"),
                   "cache_bytes": info.get("cache_bytes"),
                   "clocks": c.backend.clocks(), "threads": info.get("threads"),
                   **({"isa": info["isa"], "c_march": default_march(),
                       "numa_nodes": info.get("numa_nodes")}
                      if c.backend.name == "cpu" and "isa" in info else {})},
        "versions": c.versions, "git_commit": c.git_commit, "command": c.command,
        "seed": c.seed, "run_id": c.run_id, "group": case.group, "warm": case.warm,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "roof_contention_pct": c.roof.contention_pct,
    }
    mode = c.backend.flush_mode()
    if mode is not None:  # how the cache was flushed before each sample (a warm case and a
        #                   collective, whose ranks time their calls back to back: not at all)
        rec["flush"] = "none" if case.warm or op.collective else mode
    return rec


def _build_info(impl: Impl) -> dict[str, Any] | None:
    """A compiled impl's build (kernels.cbuild.CLibrary.info), None where it has none yet (it
    was skipped before its library built) or its callable (a plugin's) fails."""
    try:
        info = impl.build_info() if impl.build_info is not None else None
    except Exception:
        return None
    return dict(info) if isinstance(info, dict) else None


def with_known_issue(impl: Impl, error: str) -> str:
    """A failure of an impl whose library is known to be at fault says so."""
    return f"{error} ({impl.known_issue})" if impl.known_issue else error


class ContextLost(Exception):
    """The device context is unusable after an impl's error (a CUDA fault): the process that
    holds it must be replaced before another case runs."""


class Runner:
    def __init__(self, ctx: RunContext, writer: ResultWriter,
                 on_record: Callable[[dict[str, Any]], None] | None = None,
                 on_start: Callable[[str], None] | None = None,
                 on_stage: Callable[[str, Any], None] | None = None) -> None:
        self.ctx = ctx
        self.writer = writer
        self.on_record = on_record or (lambda r: None)
        self.on_start = on_start or (lambda phase: None)  # "inputs", then each impl's name
        # within an impl: ("checked", (rel_err, correct)), ("warm-up", input sets), ("timing",
        # None), ("after-timing", None): where a worker is, for a record its parent writes if it
        # dies or hangs there
        self._report_stage = on_stage or (lambda stage, detail: None)
        self._guard: tuple[Any, list[tuple]] | None = None  # (snapshot, the sets it guards)
        self._pid = os.getpid()  # a process an impl forks returns into this code with another
        self.phase = "check"  # where the impl running is, a PHASE_WORDS key (the record's
        #                       `phase` when a CUDA error loses the context there)

    def on_stage(self, stage: str, detail: Any) -> None:
        self.phase = stage if stage in PHASE_WORDS else self.phase
        self._report_stage(stage, detail)

    def _base(self, case: Case, impl: Impl) -> dict[str, Any]:
        return base_record(self.ctx, case, impl)

    def _emit(self, rec: dict[str, Any]) -> dict[str, Any]:
        self.writer.write(rec)
        self.on_record(rec)
        return rec

    # -- one case ------------------------------------------------------------------------------
    def run_case(self, case: Case) -> list[dict[str, Any]]:
        """Check and time every selected impl of `case`; one record each, emitted as it ends.
        Raises ContextLost (after emitting that impl's record) when an impl's error leaves the
        device unusable."""
        c = self.ctx
        op = OPS[case.op]
        records: list[dict[str, Any]] = []
        runnable = []
        for impl in reported_impls(case, c):
            ok, why = impl.supports(c.backend.name, case.dtype)
            if ok:
                runnable.append(impl)
            else:
                rec = self._base(case, impl)
                rec.update(status="skipped", error=why)
                records.append(self._emit(rec))
        if not runnable:
            return records
        self.on_start("inputs")
        try:
            inputs = make_inputs(c.backend, op, case.shape, case.dtype, c.seed)
            ref = op.reference(*(c.backend.to_host(a) for a in inputs))
        except Exception as e:  # e.g. out of memory building a big case
            for impl in runnable:
                rec = self._base(case, impl)
                rec.update(status="error", error=f"building inputs: {exception_line(e)}")
                records.append(self._emit(rec))
            return records
        if not c.check_only:
            add_matmul(c.roof, c.backend, case.dtype, c.budget)
        sets: list[tuple] | None = None
        for impl in runnable:
            self.on_start(impl.name)
            rec = self._base(case, impl)
            t0 = time.perf_counter()
            lost = None
            state = _torch_state()
            self.phase = "check"
            self._guard = None
            try:
                sets = self._check_and_time(case, impl, inputs, ref, rec, sets)
            except NotImplementedError as e:  # the reason, one line as every record's error
                why = clip((exception_text(e).strip().splitlines() or [""])[0])
                rec.update(status="skipped", error=why or "not implemented for this case")
                self._put_inputs_back(rec)
            except (Exception, SystemExit) as e:  # sys.exit in an impl is its error, not the run's
                if isinstance(e, SystemExit) and os.getpid() != self._pid:
                    # a process the impl forked ends as it asked: the cleanup below runs torch
                    # ops, which an OpenMP pool copied by fork deadlocks in, and its record
                    # would be a second one
                    raise
                rec.update(status="error", error=with_known_issue(impl, exception_line(e)),
                           traceback=clip(traceback.format_exc(limit=4), MAX_TRACEBACK))
                lost = c.backend.context_lost()
                if lost:  # e.g. an illegal address: every later call on this context fails too
                    where = PHASE_WORDS[self.phase]
                    rec.update(status="crashed", phase=self.phase,
                               error=f"{rec['error']} in {where}; the device context is lost "
                                     f"({lost})")
                else:  # a lost context's worker is replaced, the inputs with it
                    self._put_inputs_back(rec)
            self._guard = None  # the snapshot goes with its impl, not into the next case's build
            if torch.get_num_threads() != state[0]:  # the record says what the impl ran with
                rec["device"]["threads"] = torch.get_num_threads()
            built = _build_info(impl)
            if built is not None:  # the compiler and flags behind a compiled impl's numbers
                rec["c_build"] = built
                if built.get("openmp") is False:  # built without OpenMP: it ran on one thread
                    rec["device"]["threads"] = 1
            _put_back(state)
            rec["wall_s"] = round(time.perf_counter() - t0, 3)  # check + timing, compiles included
            records.append(self._emit(rec))
            if lost:
                raise ContextLost(lost)
        return records

    def _put_inputs_back(self, rec: dict[str, Any]) -> None:
        """After an impl raised: the input sets it had (set 0 is the next impl's check input) as
        they were, and its record says which it changed."""
        guard, self._guard = self._guard, None
        if guard is None:
            return
        pristine, sets = guard
        try:
            changed = self.ctx.backend.restore_changed_sets(sets, pristine)
        except Exception:  # a lost device context: its worker is replaced before the next impl
            return
        if changed:
            rec["error"] += (f"; it had changed its input{'s' if len(changed) > 1 else ''} "
                             f"{', '.join(map(str, changed))} (put back for the next impl)")

    def _check_and_time(self, case: Case, impl: Impl, inputs: tuple, ref: torch.Tensor,
                        rec: dict[str, Any], sets: list[tuple] | None) -> list[tuple] | None:
        c = self.ctx
        op = OPS[case.op]
        out_shape, out_dtype = op.out_spec(case.shape, case.dtype)
        dev = c.backend.device()

        # (1) correctness gate on fresh inputs with a poisoned output buffer
        # (no out buffer where arrays are immutable: the returned value is checked)
        use_out = impl.out_arg and c.backend.out_buffers
        fn = c.backend.wrap(impl.fn)
        forget_tuned()  # the record names the configs that the autotuner picks for this case
        # the inputs are the case's, shared by every impl and set 0 of the timing: one that an
        # impl changes, in its call or in its prepare (a weight repacked in place), is put back
        # and the impl fails
        pristine = c.backend.snapshot(inputs)
        self._guard = (pristine, [inputs])  # put back by run_case if the impl raises
        with c.backend.session():
            args = tuple(impl.prepare(*inputs)) if impl.prepare else inputs
        if use_out:
            poisoned = torch.full(out_shape, float("nan"), dtype=out_dtype, device=dev)
            fn(*args, out=poisoned)
            result = poisoned
            del poisoned  # freed with `result` after the check, not held through the timing
        else:
            result = fn(*args)
        c.backend.synchronize()
        changed = c.backend.restore_changed(inputs, pristine)
        host = c.backend.to_host(result)
        wrong = (f"changed its input{'s' if len(changed) > 1 else ''} "
                 f"{', '.join(map(str, changed))} (counted from 0; put back for the next impl)"
                 if changed else _malformed(host, out_shape, out_dtype))
        if wrong:
            rec.update(status="failed-check", correct=False, error=with_known_issue(impl, wrong))
            self.on_stage("checked", (None, False))
            return sets
        err = rel_err(host, ref)
        tol = op.tol(case.dtype)
        rec.update(rel_err=err, correct=bool(err <= tol))
        self.on_stage("checked", (err, rec["correct"]))
        if not err <= tol:
            rec.update(status="failed-check", error=with_known_issue(
                impl, f"rel err {err:.3g} > tolerance {tol:.3g}" if math.isfinite(err)
                else "output has NaN/inf (unwritten or overflowed elements)"))
            return sets
        del result, host
        if c.check_only:
            rec.update(status="ok")
            return sets
        # kept through the timing: a call after the check may change the inputs too, and set 0
        # is the next impl's check input

        # (2) timing on input copies rotated past the cache
        out0 = torch.empty(out_shape, dtype=out_dtype, device=dev) if use_out else None
        per_set = set_bytes(args, out0)
        # What a call touches, not what its set holds: a paged KV pool is allocated whole and read
        # in part, so rotating by allocation would leave the part read in cache.
        touched = max(1, min(per_set, rec["bytes"]))
        need = c.backend.rotate_bytes()
        n_sets = 1 if touched > need or case.warm else min(MAX_SETS, math.ceil((need + 1) / touched))
        mem = (rec.get("device") or {}).get("memory_bytes")
        if mem and n_sets > 1:  # the copies may take a quarter of memory, no more
            n_sets = max(1, min(n_sets, mem // 4 // per_set))
        # A warm case reuses its one set with no flush: within WARM_CACHE_FACTOR x the LLC part or
        # all of it stays cached, so it is timed but not judged against the DRAM roof; past that
        # it streams from DRAM like any cold case and is judged (the size sweep's two sides). A
        # cold case whose rotation cannot pass the target (MAX_SETS tiny sets, or memory) is
        # partly cached the same way and judged as such.
        if case.warm:
            in_cache = touched <= WARM_CACHE_FACTOR * c.backend.cache_bytes()
        else:
            in_cache = need > 0 and n_sets * touched <= need
        self.on_stage("warm-up", n_sets)
        if sets is None or len(sets) != n_sets:
            sets = [inputs] + [clone_args(inputs, c.backend.clone) for _ in range(n_sets - 1)]
        self._guard = (pristine, sets)
        with c.backend.session():
            prepared = [args] + [tuple(impl.prepare(*s)) if impl.prepare else s for s in sets[1:]]
        outs = [out0] + [torch.empty(out_shape, dtype=out_dtype, device=dev) if use_out
                         else None for _ in range(n_sets - 1)]
        for o in outs:  # a finite wrong answer where a call writes nothing: an empty buffer may
            if o is not None:  # hold the last impl's right one (CUDA's allocator reuses blocks)
                o.fill_(-1e4)
        if use_out:
            call = lambda i: fn(*prepared[i], out=outs[i])  # noqa: E731
        else:
            call = lambda i: fn(*prepared[i])  # noqa: E731
        st = measure(c.backend, call, n_sets, c.budget, warm=case.warm,
                     on_sampling=lambda: self.on_stage("timing", None))
        c.backend.synchronize()
        self.on_stage("after-timing", None)

        # (3) what the timed calls left: the input sets as they were (every later impl checks on
        # set 0 and times on the rest), and in each out buffer the answer (an impl right only on
        # its first call, or only into a NaN-poisoned buffer, must not be timed as right)
        changed = c.backend.restore_changed_sets(sets, pristine)
        self._guard = None
        del pristine
        if changed:
            rec.update(status="failed-check", correct=False, rel_err=None, error=with_known_issue(
                impl, f"changed its input{'s' if len(changed) > 1 else ''} "
                      f"{', '.join(map(str, changed))} after its check, in the warm-up or "
                      f"timing (counted from 0; put back for the next impl)"))
            return sets
        if use_out:  # the harness's own buffers, of the op's shape and dtype
            timed = list(enumerate(rel_errs([c.backend.to_host(o) for o in outs], ref)))
            wrong = None
        else:  # the timed results are dropped: one more call, on the last set, stands for them
            last = call(n_sets - 1)
            c.backend.synchronize()
            last = c.backend.to_host(last)
            wrong = _malformed(last, out_shape, out_dtype)
            timed = [(n_sets - 1, math.inf if wrong else rel_err(last, ref))]
        for i, err in timed:
            if not err <= tol:
                wrong = wrong or (f"rel err {err:.3g} > tolerance {tol:.3g}" if math.isfinite(err)
                                  else "output has NaN/inf")
                rec.update(status="failed-check", correct=False, rel_err=err,
                           error=with_known_issue(impl, f"{wrong} on input set {i} after timing "
                                                        f"(its check had passed with rel err "
                                                        f"{rec['rel_err']:.3g})"))
                return sets

        # No rate to derive from a call the timer cannot see (CUDA events around a call that
        # queues no work on the GPU read 0 s).
        if not st.median > 0:
            rec.update(status="error", error=with_known_issue(
                impl, f"its timed calls read a median of 0 s over {st.n} calls, below the "
                      f"timer's resolution: no time or rate to report"))
            return sets
        v = judge(rec["bytes"], rec["flops"], st.median, c.roof, case.dtype,
                  latency_floor_s(c.backend.name), in_cache=in_cache)
        gbps = rec["bytes"] / st.median / 1e9
        rec.update(
            status="ok",
            time_s={"median": st.median, "p25": st.p25, "p75": st.p75, "min": st.min,
                    "n": st.n, "rel_std": st.rel_std, "stop": st.stop},
            achieved_gbps=gbps, pct_roof=v.pct_roof, verdict=v.verdict,
            pct_datasheet=(100 * gbps / c.chip.mem_bw_gbps) if c.chip and c.chip.mem_bw_gbps
            else None,
            achieved_tflops=rec["flops"] / st.median / 1e12, ridge=v.ridge,
            pct_compute=v.pct_compute, n_sets=n_sets, set_bytes=per_set,
            # judged against the DRAM roof <=> cold: a warm set past WARM_CACHE_FACTOR x the LLC
            # is judged even where the rotation target (every cache level) is larger still
            cold=not in_cache,
            **st.sampled,  # CUDA: gpu_util_pct, power_w, energy_j_per_call, ... (NVML)
        )
        rec["device"]["clocks"] = c.backend.clocks()
        if tuned():
            rec["tuned"] = tuned()
        return sets
