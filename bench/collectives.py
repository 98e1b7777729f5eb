"""Collectives measured through torch.distributed: one process per rank, the slowest rank's time.

`decodewall run --op allreduce --shape bytes=65536 --world-size 2` starts the ranks itself: fresh
interpreters (bench/isolation.py's Worker) that meet through a torch.distributed FileStore in the
run's temporary folder, gloo on the CPU (on the loopback interface), NCCL on CUDA with one GPU a
rank. Launched by `torchrun` (RANK, WORLD_SIZE, MASTER_ADDR set) each process is one rank instead
(env:// rendezvous), and rank 0 keeps the results.

Per impl-case, on every rank: the impl's `prepare` (untimed, once per input set), the check (each
rank contributes known values; the sum is compared with the float64 expectation; the worst rank
decides), then timing; a case whose sum the dtype cannot hold exactly is skipped. A sample is a
barrier, then one collective timed to its completion (a device sync on CUDA); the sample's time is
the slowest rank's, gathered after each batch so every rank applies the same stopping rule
(bench/timing.py's) to the same numbers. The timed buffer holds zeros (their sum stays zero over
thousands of calls; values do not change a collective's speed). Records: `bytes` is the message,
`algbw_gbps` and `busbw_gbps` as nccl-tests defines them, `achieved_gbps` = busbw, judged against
the chip's datasheet link bandwidth (per direction) where the catalog has one, which every
allreduce record names as `datasheet_gbps`.

The group starts (every rank imports torch and the plugins, then joins) within START_TIMEOUT_S,
apart from --case-timeout, which starts once every rank is ready; the record's `start_s` says how
long the start took for the impl-case that needed one. A rank that exits while the group starts
fails it at once, naming the rank (signal or exit code, its last output line).

A rank that dies ends the case `crashed` naming it (signal or exit code, its last output line),
even where its peers' collectives fail on its loss and say so first; a rank that raises ends it
`error` naming it; past --case-timeout the ranks that had not finished are named and the case is
`timeout`. Every rank process is then killed (process groups included) and a
new group takes the next case: nothing is left running.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from kernels import OPS, Impl, rel_err
from kernels.collectives.ops import inexact

from .errors import RunError, UsageError, exception_line, exception_text, printable
from .interrupts import deferred
from .isolation import START_TIMEOUT_S, Worker, WorkerDied
from .results import ResultWriter
from .runner import RunContext, base_record, reported_impls
from .case import Case
from .timing import Budget, stop_rule, summarize

AT_LINK = 0.80  # busbw at or above this share of the datasheet link bandwidth: "at the link"
# A rank that dies without a word makes its peers' collectives fail ("connection closed by
# peer"): their errors and its end reach the parent in either order, or in one wait() together.
# A silent death seen within this many seconds of the first error is taken as the cause.
DEATH_GRACE_S = 2.0
WARMUP_CALLS = 5
STORE_ENV = "DECODEWALL_RANK_STORE"  # the file the ranks a run starts meet through


def loopback() -> str | None:
    """This host's loopback interface (lo on Linux, lo0 on macOS), or None. Gloo's ranks meet
    on the address the hostname resolves to unless told an interface, and resolving it is a
    DNS query where /etc/hosts does not name the host."""
    import socket
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    return next((n for n in ("lo", "lo0") if n in names), None)


def pg_backend(backend: str) -> str:
    return "nccl" if backend == "cuda" else "gloo"


def max_world_size(backend: str) -> int:
    """Ranks this machine can run: one a GPU on CUDA; on the CPU one a core this process may use
    (its affinity and CPU quota; at least 2)."""
    if backend == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    from backends.cpu import usable_cpus
    return max(2, usable_cpus())


def world_size_error(backend: str, n: int) -> str | None:
    """Why this machine cannot start `n` ranks on `backend`, or None when it can."""
    most = max_world_size(backend)
    if n <= most:
        return None
    if backend == "cuda":
        return f"world size {n} needs {n} GPUs; this machine has {most}"
    return f"world size {n} is more ranks than this machine runs ({most})"


def _why(e: BaseException) -> str:
    if isinstance(e, UsageError):  # e.g. a plugin that failed to load: its message says so
        return str(e)
    return exception_line(e)


# --- one rank: check, time, and (rank 0) the record ------------------------------------------------

def rank_case(ctx: RunContext, case: Case, impl: Impl, device: str) -> dict[str, Any] | None:
    """Check and time `impl` on this rank; every rank of the group calls it together. Returns the
    record on rank 0, None elsewhere. Raises what the impl raises."""
    from kernels.collectives.ops import busbw_gbps, algbw_gbps, contribution, expected
    dist = torch.distributed
    rank, n = dist.get_rank(), dist.get_world_size()
    s, dtype, backend = case.shape, case.dtype, ctx.backend
    op = OPS[case.op]

    def prepared(t: torch.Tensor) -> tuple:  # untimed, once per input set
        with backend.session():
            return tuple(impl.prepare(t)) if impl.prepare else (t,)

    t = contribution(s, dtype, rank, device)
    out = impl.fn(*prepared(t))
    backend.synchronize()
    err = torch.tensor([rel_err(out.to("cpu"), expected(s, dtype))], dtype=torch.float64,
                       device=device)
    dist.all_reduce(err, op=dist.ReduceOp.MAX)  # the worst rank decides
    err_v, tol = float(err.item()), op.tol(dtype)
    rec = base_record(ctx, case, impl) if rank == 0 else None

    def done(**kw: Any) -> dict[str, Any] | None:
        if rec is not None:
            rec.update(roof_gbps=None, arithmetic_intensity=None, world_size=n, **kw)
        return rec

    if not err_v <= tol:
        return done(status="failed-check", rel_err=err_v, correct=False,
                    error=f"rel err {err_v:.3g} > tolerance {tol:.3g} (worst rank)"
                    if err_v != float("inf") else "output has NaN/inf")
    if ctx.check_only:
        return done(status="ok", rel_err=err_v, correct=True)

    timed = prepared(t.zero_())  # the timed set: zeros, prepared as the check's set was
    st = _time(lambda: impl.fn(*timed), backend, ctx.budget, device)
    algbw, busbw = algbw_gbps(s, st.median), busbw_gbps(s, st.median)
    pct, verdict = judge(busbw, ctx.chip.interconnect.link_gbps if ctx.chip else None,
                         s.world_size)
    return done(status="ok", rel_err=err_v, correct=True,
                time_s={"median": st.median, "p25": st.p25, "p75": st.p75, "min": st.min,
                        "n": st.n, "rel_std": st.rel_std, "stop": st.stop},
                achieved_gbps=busbw, algbw_gbps=algbw, busbw_gbps=busbw, pct_datasheet=pct,
                verdict=verdict)


def judge(busbw: float, link_gbps: float | None, world_size: int) -> tuple[float | None, str]:
    """(% of the datasheet link bandwidth, verdict) of a measured bus bandwidth: no % for one
    rank (no link is used) or a chip without a link figure; "at the link" from AT_LINK of it."""
    if world_size == 1:
        return None, "not judged: one rank moves nothing over a link"
    if not link_gbps:
        return None, "not judged: no datasheet link bandwidth for this device"
    pct = 100 * busbw / link_gbps
    return pct, "at the link" if pct >= 100 * AT_LINK else "below the link"


def _time(call: Callable[[], Any], backend: Any, budget: Budget, device: str):
    """Samples of the slowest rank (barrier, call, sync), batch by batch until bench.timing's
    rule stops them; rank 0's clock decides the elapsed time for every rank."""
    dist = torch.distributed
    n = dist.get_world_size()
    for _ in range(WARMUP_CALLS):
        call()
    backend.synchronize()
    samples: list[float] = []
    t0 = time.perf_counter()
    while True:
        local = []
        for _ in range(budget.batch):
            dist.barrier()
            backend.synchronize()
            a = time.perf_counter_ns()
            call()
            backend.synchronize()
            local.append((time.perf_counter_ns() - a) * 1e-9)
        mine = torch.tensor(local + [time.perf_counter() - t0], dtype=torch.float64, device=device)
        every = [torch.empty_like(mine) for _ in range(n)]
        dist.all_gather(every, mine)
        table = torch.stack(every).cpu()
        samples.extend(table[:, :-1].max(dim=0).values.tolist())
        stop = stop_rule(samples, float(table[0, -1]), budget)
        if stop:
            return summarize(samples, stop)


def rank_main() -> None:
    """Entry of a rank process started by `CollectiveRunner` (RANK, WORLD_SIZE, MASTER_* set)."""
    import sys
    from multiprocessing.connection import Connection

    from backends import get_backend

    from .isolation import _die_with_parent
    from .plugins import load_plugins
    rx = Connection(int(sys.argv[1]), writable=False)
    tx = Connection(int(sys.argv[2]), readable=False)
    for fd in (rx.fileno(), tx.fileno()):
        os.set_inheritable(fd, False)
    _die_with_parent()
    _, backend_name, plugins, pg_timeout_s, start_timeout_s = rx.recv()
    rank, pid = int(os.environ["RANK"]), os.getpid()
    try:
        load_plugins(plugins)
        backend = get_backend(backend_name)
        tx.send(("joining",))  # loaded: the parent now waits on the group's rendezvous
        device = init_rank(backend_name, pg_timeout_s, start_timeout_s)
    except BaseException as e:
        print(f"rank {rank}: {_why(e)}", file=sys.stderr, flush=True)
        sys.exit(3)
    tx.send(("ready",))
    while True:
        try:
            msg = rx.recv()
        except (EOFError, OSError):
            return
        if msg[0] != "case":
            return
        _, fields, case, impl_name = msg
        ctx = RunContext(backend=backend, **fields)
        try:
            rec = rank_case(ctx, case, OPS[case.op].impls[impl_name], device)
        except NotImplementedError as e:
            # stamped (the machine-wide monotonic clock): a peer's own error at its loss of this
            # rank comes later, yet may reach the parent first
            tx.send(("skipped", rank, exception_text(e) or "not implemented for this case",
                     time.monotonic()))
            os._exit(5)  # the others may wait in a collective: the group is replaced
        except (Exception, SystemExit) as e:  # sys.exit in an impl is its error, as in Runner
            if isinstance(e, SystemExit) and os.getpid() != pid:
                raise  # a process the impl forked ends as it asked
            tx.send(("error", rank, _why(e), time.monotonic()))
            os._exit(5)
        if rec is not None:
            tx.send(("record", rec))
        tx.send(("done", rank))


def init_rank(backend: str, pg_timeout_s: float, start_timeout_s: float | None = None) -> str:
    """Join the process group from the environment; the device this rank uses. Collectives time
    out after pg_timeout_s; the rendezvous after start_timeout_s where given (the ranks a run
    starts wait for each other as long as the run waits for them), else pg_timeout_s."""
    dist = torch.distributed
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    if backend == "cuda":
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    else:
        from backends.cpu import usable_cpus
        n = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ["WORLD_SIZE"])  # ranks here
        torch.set_num_threads(max(1, usable_cpus() // n))  # the ranks share this node's cores
        device = "cpu"
    if dist.is_initialized():
        return device
    if start_timeout_s is None:
        dist.init_process_group(pg_backend(backend), init_method="env://",
                                timeout=timedelta(seconds=pg_timeout_s))
        return device
    rank, n = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    # a file, not a TCPStore: the store's server looks up each peer's address for its logs, a
    # DNS query on hosts whose resolver is asked before (or beside) /etc/hosts
    store = dist.FileStore(os.environ[STORE_ENV], n)
    store.set_timeout(timedelta(seconds=start_timeout_s))
    dist.init_process_group(pg_backend(backend), store=store, rank=rank, world_size=n,
                            timeout=timedelta(seconds=pg_timeout_s))
    return device


# --- the parent: a group of rank processes per world size -----------------------------------------

class CollectiveRunner:
    """`run_case` for collective ops: every impl-case on a group of rank processes (see the
    module docstring). The group is started on first use and replaced after any fault."""

    def __init__(self, ctx: RunContext, writer: ResultWriter,
                 on_record: Callable[[dict[str, Any]], None] | None = None,
                 case_timeout: float = 300.0, plugins: Sequence[str] = ()) -> None:
        self.ctx, self.writer = ctx, writer
        self.on_record = on_record or (lambda r: None)
        self.case_timeout = case_timeout
        self.plugins = [str(Path(p).resolve()) for p in plugins]
        self._tmp = tempfile.TemporaryDirectory(prefix="decodewall-ranks-",
                                                ignore_cleanup_errors=True)
        self._ranks: list[Worker] = []
        self._groups = 0  # groups started: each names its store file

    def close(self, now: bool = False) -> None:
        """Stop every rank and remove the temporary files; now=True (an interrupt): kill their
        process groups at once rather than ask them to exit."""
        if not now:
            self._stop()  # an interrupt meanwhile leaves the rest to close(now=True)
        with deferred():  # the interrupt that asked for this cannot leave half of it undone
            self._stop(now=True)
            self._tmp.cleanup()

    def __enter__(self) -> CollectiveRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _stop(self, now: bool = False) -> None:
        while self._ranks:  # each rank is dropped once closed: an interrupt leaves the rest
            self._ranks[0].close(now=now)
            self._ranks.pop(0)

    def _emit(self, rec: dict[str, Any]) -> dict[str, Any]:
        with deferred():  # the file, the count and what the CLI shows agree on every record
            self.writer.write(rec)
            self.on_record(rec)
        return rec

    def _running(self, n: int) -> bool:
        return len(self._ranks) == n and all(w.proc.poll() is None for w in self._ranks)

    def _start(self, n: int) -> str | None:
        """A new group of n ranks; None, or why it could not start (its ranks are then killed).
        Each group meets through a store file of its own in the run's temporary folder."""
        self._stop()
        self._groups += 1
        store = Path(self._tmp.name) / f"store-{self._groups}"
        loop = loopback() if self.ctx.backend.name != "cuda" else None
        for r in range(n):
            env = {STORE_ENV: str(store), "RANK": str(r), "WORLD_SIZE": str(n),
                   "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": str(n)}
            if loop and "GLOO_SOCKET_IFNAME" not in os.environ:
                env["GLOO_SOCKET_IFNAME"] = loop  # gloo on loopback: no lookup of the hostname
            with deferred():  # held as soon as it exists: an interrupt still finds it
                self._ranks.append(Worker(
                    self.ctx.backend.name, self.plugins, Path(self._tmp.name),
                    entry="bench.collectives:rank_main", env=env, wait=False,
                    init=(max(5.0, self.case_timeout / 2), START_TIMEOUT_S)))
        why = self._wait_ready(time.monotonic() + START_TIMEOUT_S)
        if why:
            self._stop(now=True)
        return why

    def _wait_ready(self, deadline: float) -> str | None:
        """Wait on every rank at once until each says it is ready. None, or why not: the first
        rank to exit (its signal or exit code, its last output line), or at the deadline the ranks
        still loading (or, when every rank had loaded, those that had not joined the group)."""
        from multiprocessing.connection import wait
        stage = ["loading"] * len(self._ranks)  # then "joining", then "ready"
        live = {w.rx: r for r, w in enumerate(self._ranks)}
        while live:
            left = deadline - time.monotonic()
            if left <= 0:
                late = [r for r in live.values() if stage[r] == "loading"] or list(live.values())
                what = "did not load" if stage[late[0]] == "loading" else "did not join the group"
                return (f"rank(s) {', '.join(map(str, sorted(late)))} {what} within "
                        f"{START_TIMEOUT_S:g} s")
            ready = wait(list(live), timeout=min(left, 0.5))
            for conn, r in list(live.items()):
                w = self._ranks[r]
                msg = None  # EOF, or an exit whose pipe a child of the rank holds open
                if conn in ready:
                    try:
                        msg = conn.recv()
                    except Exception:
                        pass
                elif w.proc.poll() is None:
                    continue
                if msg in (("joining",), ("ready",)):
                    stage[r] = msg[0]
                    if msg[0] == "ready":
                        del live[conn]
                    continue
                last = w.last_output_line(0)
                return f"rank {r} ended at start ({w.describe_end(w.wait())})" + \
                    (f": {last}" if last else "")
        return None

    def run_case(self, case: Case) -> list[dict[str, Any]]:
        c = self.ctx
        n = case.shape.world_size
        records = []
        for impl in reported_impls(case, c):
            rec = base_record(c, case, impl)
            rec.update(roof_gbps=None, arithmetic_intensity=None, world_size=n)
            ok, why = impl.supports(c.backend.name, case.dtype)
            # a suite's case only: the CLI refuses a world size asked for that cannot start
            other = world_size_error(c.backend.name, n) or inexact(case.shape, case.dtype)
            if ok and other:
                ok, why = False, other
            if not ok:
                rec.update(status="skipped", error=why)
            else:
                rec = self._run_impl(case, impl, rec)
            records.append(self._emit(rec))
        return records

    def _run_impl(self, case: Case, impl: Impl, rec: dict[str, Any]) -> dict[str, Any]:
        c, n = self.ctx, case.shape.world_size
        start_s = None  # seconds the group took to start, where this impl-case started one
        if not self._running(n):
            t_start = time.monotonic()
            failed = self._start(n)
            start_s = round(time.monotonic() - t_start, 3)
            if failed:
                rec.update(status="crashed", start_s=start_s,
                           error=f"the process group did not start: {failed}")
                return rec
        t0 = time.monotonic()  # --case-timeout and wall_s: from every rank ready
        fields = {f.name: getattr(c, f.name) for f in dataclasses.fields(c) if f.name != "backend"}
        since = [w.log_size() for w in self._ranks]
        for w in self._ranks:
            try:
                w.send(("case", fields, case, impl.name))
            except WorkerDied:
                pass  # found dead below
        events, seen = self._collect(n, t0 + self.case_timeout)
        wall = round(time.monotonic() - t0, 3)
        done = {r for kind, r, _ in events if kind == "done"}
        result = next((x for kind, _, x in events if kind == "record"), None)
        if len(done) == n and result is not None:
            result.update(wall_s=wall, start_s=start_s)
            return result
        rec.update(wall_s=wall, start_s=start_s, **self._blame(events, seen, n, since, impl))
        # a fault leaves the group unusable: kill every rank, start afresh (after _blame, which
        # reads the ranks' logs that _stop removes)
        self._stop(now=True)
        return rec

    def _collect(self, n: int, deadline: float) -> tuple[list[tuple[str, int, Any]], list[float]]:
        """Every rank's messages and deaths, in the order they arrive, until each rank is done,
        has failed or has died, or the deadline passes; and when each happened (monotonic): when
        a rank raised, by its own stamp, as messages read in one wakeup arrive in no set order;
        when anything else was seen."""
        from multiprocessing.connection import wait
        events: list[tuple[str, int, Any]] = []
        seen: list[float] = []
        live = {w.rx: r for r, w in enumerate(self._ranks)}
        while live and time.monotonic() < deadline:
            for conn in wait(list(live), timeout=max(0.0, min(1.0, deadline - time.monotonic()))):
                r, at = live[conn], None
                try:
                    msg = conn.recv()
                except Exception:  # EOF: the process is gone
                    msg = ("died", r, self._ranks[r].wait())
                    del live[conn]
                else:
                    if msg[0] == "record":
                        msg = ("record", r, msg[1])
                    else:  # done, error or skipped: nothing more comes from this rank
                        at = msg[3] if len(msg) > 3 else None
                        msg = (msg[0], r, msg[2] if len(msg) > 2 else None)
                        del live[conn]
                events.append(msg)
                seen.append(at if at is not None else time.monotonic())
        return events, seen

    def _blame(self, events: list[tuple[str, int, Any]], seen: list[float], n: int,
               since: list[int], impl: Impl) -> dict[str, Any]:
        """Which rank ended the case, and how. A rank that dies first without a word crashed, as
        does one seen dying without a word within DEATH_GRACE_S of another rank's error (that
        error is the peer's loss); else ranks still silent at the deadline hung (the others gave
        up waiting for them); else the first rank to raise is named."""
        said = {r for kind, r, _ in events if kind in ("done", "error", "skipped")}
        ends = [(t, e) for e, t in zip(events, seen) if e[0] in ("died", "error", "skipped")]
        t_err, first = min(ends, key=lambda x: x[0]) if ends else (0.0, None)
        if first is not None and first[0] == "error":  # a peer's silent death is the cause
            first = next((e for e, t in zip(events, seen) if e[0] == "died" and e[1] not in said
                          and t - t_err <= DEATH_GRACE_S), first)
        known = f" ({impl.known_issue})" if impl.known_issue else ""
        if first is not None and first[0] == "died" and first[1] not in said:
            r = first[1]
            last = self._ranks[r].last_output_line(since[r])
            how = self._ranks[r].describe_end(first[2])
            return {"status": "crashed", "error": f"rank {r} died: {how}"
                    + (f"; its last output line: {last}" if last else "") + known}
        ended = said | {r for kind, r, _ in events if kind == "died"}
        silent = [r for r in range(n) if r not in ended]
        if silent:
            other = next((x for kind, _, x in events if kind == "error"), None)
            return {"status": "timeout", "error": f"rank(s) {', '.join(map(str, silent))} did not "
                    f"finish within --case-timeout {self.case_timeout:g} s"
                    + (f" (another rank gave up waiting: {other})" if other else "")
                    + "; all ranks killed"}
        if first is not None and first[0] in ("error", "skipped"):
            status = "skipped" if first[0] == "skipped" else "error"
            return {"status": status, "error": f"rank {first[1]}: {first[2]}"
                    + (known if status == "error" else "")}
        return {"status": "error", "error": "the ranks ended without a record"}


# --- launched by torchrun: this process is one rank -------------------------------------------------

def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")) \
        and "DECODEWALL_WORKER_PATH" not in os.environ


def torchrun_env() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) of a torchrun launch; ValueError naming the variable that is not a
    valid number (RANK, WORLD_SIZE, MASTER_PORT, and LOCAL_RANK where set), or an empty
    MASTER_ADDR."""
    def number(name: str, lo: int, hi: int) -> int:
        text = os.environ[name]
        try:
            v = int(text)
        except ValueError:
            raise ValueError(f"{name}={text!r} is not a whole number (torchrun sets RANK, "
                             "WORLD_SIZE, MASTER_ADDR and MASTER_PORT)") from None
        if not lo <= v <= hi:
            raise ValueError(f"{name}={v} is out of range {lo}..{hi}")
        return v
    world = number("WORLD_SIZE", 1, 4096)
    rank = number("RANK", 0, world - 1)
    number("MASTER_PORT", 1, 65535)
    if not os.environ["MASTER_ADDR"].strip():  # torch's env:// rendezvous fails on it, later
        raise ValueError("MASTER_ADDR is empty (torchrun sets it to rank 0's host)")
    if "LOCAL_RANK" in os.environ:
        number("LOCAL_RANK", 0, world - 1)
    return rank, world


def _rendezvous(backend: str, pg_timeout_s: float) -> str:
    """`init_rank` for a torchrun rank, with a failed rendezvous (an unreachable or unresolvable
    MASTER_ADDR, a port taken) as one RunError line: torch's C++ side writes a warning and a
    stack of C++ frames to fd 2 for every try, which go to a file read only for the error."""
    import sys
    with tempfile.TemporaryFile() as log:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            return init_rank(backend, pg_timeout_s)
        except torch.distributed.DistError as e:
            first = (exception_text(e).strip().splitlines() or [type(e).__name__])[0]
            where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
            raise RunError(f"rank {os.environ.get('RANK')}: the torchrun rendezvous at {where} "
                           f"failed: {printable(first)}") from None
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def run_as_rank(ctx: RunContext, cases: list[Case], writer: ResultWriter,
                on_record: Callable[[dict[str, Any]], None], pg_timeout_s: float) -> int:
    """Run collective cases as this torchrun rank; rank 0 writes and reports the records. The
    launcher owns the processes, so a fault ends the run (torchrun reports which rank)."""
    device = _rendezvous(ctx.backend.name, pg_timeout_s)
    rank = torch.distributed.get_rank()
    for case in cases:
        for impl in reported_impls(case, ctx):
            ok, why = impl.supports(ctx.backend.name, case.dtype)
            other = inexact(case.shape, case.dtype)
            if ok and other:
                ok, why = False, other
            if not ok:
                if rank == 0:
                    rec = base_record(ctx, case, impl)
                    rec.update(status="skipped", error=why, roof_gbps=None,
                               arithmetic_intensity=None, world_size=case.shape.world_size)
                    writer.write(rec)
                    on_record(rec)
                continue
            rec = rank_case(ctx, case, impl, device)
            if rec is not None:
                writer.write(rec)
                on_record(rec)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return rank
