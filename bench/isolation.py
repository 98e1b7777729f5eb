"""Every impl-case runs in a worker process, so a crash or a hang ends that case, not the run.

The parent (the CLI) measures the roof and writes the results; a worker, a fresh interpreter
(started with subprocess, never a fork of a process that may hold a CUDA context), imports the
kernels, loads the run's plugins and runs cases with `bench.runner.Runner`, so checking and timing
(device events, flush, rotation) happen exactly as they would in one process. Per case the parent
sends the impls still to run; the worker names each phase as it begins (building the inputs, then
each impl), and within an impl each stage (its check, with the check's result once it is known;
the warm-up; timing; the check after timing), and sends each record as soon as it is made.

Each phase gets `case_timeout` seconds: for an impl that covers its check, its warm-up (making
the rotated input sets and at least one call on each: thousands of calls at tiny shapes) and its
timing, compiling and autotuning included. When the worker dies (a signal such as SIGSEGV or
SIGABRT, the OOM killer's SIGKILL, an abort in a runtime, a CUDA fault that poisons its context)
the impl it was running is recorded `crashed`, with the signal or exit code, the stage and the
last line the worker wrote (stdout and stderr share its log); past the limit the worker is killed
and the impl recorded `timeout`, naming the stage it was in. Either record keeps the check's
result when the check had passed. A new worker takes the case's remaining impls. A worker's
malloc keeps the memory an impl's calls free for its next call, and hands it back before the
next impl (`keep_freed_memory`), so a per-call temporary costs the same whatever ran before it.
Workers run in their own session: Ctrl-C reaches only the parent, which kills the worker's whole
process group at once (as it does on SIGTERM) and keeps every finished case.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Sequence

from kernels import OPS

from .errors import RunError, UsageError, describe_exit, printable
from .heap import keep_freed_memory, release_freed_memory
from .interrupts import deferred
from .plugins import DONE as PLUGINS_DONE
from .results import ResultWriter
from .roofline import add_matmul
from .runner import PHASE_WORDS, RunContext, Runner, base_record, reported_impls
from .case import DEFAULT_CASE_TIMEOUT_S, Case

START_TIMEOUT_S = 120.0  # importing torch, triton and the plugins in a new worker
EXIT_WAIT_S = 5.0  # a worker asked to exit at the end of a run gets this long before it is killed
TAIL_BYTES = 65536  # of a worker's log, read for its last line
GONE_WAIT_S = 10.0  # a worker whose pipe closed gets this long to exit before it is killed

# The worker starts here and takes the parent's sys.path, so it imports the same kernels and bench.
BOOT = Path(__file__).with_name("boot.py")


class WorkerDied(Exception):
    """The worker process ended (or its pipe broke) before it answered."""


class _Timeout:
    pass


TIMEOUT = _Timeout()


def preflight_plugins(paths: Sequence[str]) -> None:
    """Import the plugin files in a child process first, so that one that ends its process at
    import (a segfault in a library it loads, os._exit) is a UsageError naming it, not the CLI
    dying silently. What a plugin raises is left to load_plugins, which names it; what the child
    prints is dropped (the CLI's own import prints it again). No time limit: an import that
    builds an extension may take minutes (Ctrl-C ends the wait, as it would the CLI's own
    import), and what the plugin started is killed with the child when it ends."""
    if not paths:
        return
    fd, progress = tempfile.mkstemp(prefix="decodewall-plugins-", suffix=".txt")
    os.close(fd)
    env = dict(os.environ, DECODEWALL_WORKER_PATH=json.dumps(sys.path),
               DECODEWALL_PARENT=str(os.getpid()))
    proc = None
    try:
        with deferred():  # an interrupt cannot leave a started child that nothing holds
            proc = subprocess.Popen([sys.executable, str(BOOT), "bench.plugins:preflight_main",
                                     progress, *paths], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        rc = proc.wait()
        with open(progress) as f:
            lines = f.read().split()
    finally:
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # it, or what the plugin started in its group
            except OSError:
                pass
            proc.wait()
        os.unlink(progress)
    if lines[-1:] == [PLUGINS_DONE]:
        return
    if not lines:  # it ended before the first plugin: the CLI's own import finds out why
        return
    why = f"importing it ended its process ({describe_exit(rc)})"
    raise UsageError(f"plugin {paths[int(lines[-1])]} failed to load: {printable(why)}")


class Worker:
    """One worker process, from the parent's side: start it, send it jobs, read its messages
    with a deadline, and kill it with everything it started."""

    killed = False  # wait() killed it: its SIGKILL came from here, not from the OOM killer

    def __init__(self, backend: str, plugins: Sequence[str], log_dir: Path,
                 entry: str = "bench.isolation:worker_main", env: dict[str, str] | None = None,
                 init: tuple = (), wait: bool = True) -> None:
        """Start `entry` (module:function) in a fresh interpreter and send it ("init", backend,
        plugins, *init). wait=False: return at once; `wait_ready()` later (ranks of one process
        group must all start before any of them can answer)."""
        env = dict(os.environ, **(env or {}), DECODEWALL_WORKER_PATH=json.dumps(sys.path),
                   DECODEWALL_PARENT=str(os.getpid()))
        fds: list[int] = []
        try:
            fd, log_path = tempfile.mkstemp(prefix="worker-", suffix=".log", dir=log_dir)
            os.close(fd)  # the worker opens it; held here, a deleted log's space stays taken
            self.log_path = Path(log_path)
            fds += os.pipe()  # parent -> worker: r_job, w_job
            fds += os.pipe()  # worker -> parent: r_msg, w_msg
            r_job, w_job, r_msg, w_msg = fds
            # deferred: an interrupt cannot leave a started process this object does not hold
            with deferred(), open(self.log_path, "ab") as log:  # append: its stdout and stderr
                self.proc = subprocess.Popen(
                    [sys.executable, str(BOOT), entry, str(r_job), str(w_msg)],
                    pass_fds=(r_job, w_msg),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                    start_new_session=True)  # its own group: the terminal's Ctrl-C skips it
        except OSError as e:  # too many open files or processes, no temporary folder left
            for fd in fds:
                os.close(fd)
            raise RunError(f"cannot start a worker process: {e.strerror or e}") from None
        os.close(r_job)
        os.close(w_msg)
        self.tx = Connection(w_job, readable=False)
        self.rx = Connection(r_msg, writable=False)
        try:
            self.tx.send(("init", backend, list(plugins), *init))
        except OSError:
            pass  # it died at once: wait_ready says why
        if wait:
            self.wait_ready()

    def wait_ready(self, what: str = "the case worker") -> None:
        """Block until the worker says it is ready; RunError (with its last output line) if it
        ends or stays silent."""
        try:
            msg = self.recv(START_TIMEOUT_S)
        except WorkerDied:
            msg = None
        if msg is TIMEOUT or msg != ("ready",):
            why = "did not start in time" if msg is TIMEOUT else \
                f"ended at start ({self.describe_end(self.wait())})"
            last = self.last_output_line(0)
            self.kill()
            raise RunError(f"{what} {why}" + (f": {last}" if last else ""))

    def send(self, msg: Any) -> None:
        try:
            self.tx.send(msg)
        except OSError as e:
            raise WorkerDied(str(e)) from None

    def recv(self, timeout: float) -> Any:
        """The next message, TIMEOUT after `timeout` seconds, or WorkerDied. A message already
        waiting is taken even at or past the deadline: it was sent in time."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            try:
                if self.rx.poll(min(max(left, 0.0), 0.5)):
                    return self.rx.recv()
            except (EOFError, OSError, ValueError) as e:  # closed, broken, or a torn message
                raise WorkerDied(str(e)) from None
            except Exception as e:  # a message that cannot be unpickled
                raise WorkerDied(f"unreadable message: {e}") from None
            if left <= 0:
                return TIMEOUT
            if self.proc.poll() is not None and not self.rx.poll(0):
                raise WorkerDied("exited")

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def last_output_line(self, since: int) -> str:
        """The last non-empty line the worker wrote (to stdout or stderr: both go to its log)
        after byte `since` of the log, without terminal control characters. Only the log's last
        TAIL_BYTES are read: a kernel may have written gigabytes before it died."""
        try:
            with open(self.log_path, "rb") as f:
                end = f.seek(0, os.SEEK_END)
                f.seek(max(since, end - TAIL_BYTES))
                text = f.read(TAIL_BYTES).decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        lines = [x.strip() for x in printable(text).splitlines() if x.strip()]
        return lines[-1][:300] if lines else ""

    def wait(self, timeout: float = GONE_WAIT_S) -> int:
        """Its return code; one that has not exited after `timeout` (its pipe closed while it
        runs on) is killed, and `killed` says so."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.killed = True
            self.kill()
            return self.proc.wait()

    def describe_end(self, rc: int) -> str:
        """How it ended (describe_exit), or that it was killed here for not exiting."""
        if self.killed:
            return (f"it closed its pipe to decodewall and did not exit within {GONE_WAIT_S:g} s, "
                    f"so decodewall killed it")
        return describe_exit(rc)

    def kill(self) -> None:
        """SIGKILL the worker's whole process group (compile workers it started included)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for c in (self.tx, self.rx):
            try:
                c.close()
            except OSError:
                pass

    def close(self, now: bool = False) -> None:
        """End the worker with everything it started and remove its log. At the end of a run it
        is asked to exit first (EXIT_WAIT_S); now=True (an interrupt, whose case is discarded
        anyway) kills its process group at once, so a busy kernel does not hold up the exit."""
        if not now and self.proc.poll() is None:
            try:
                self.tx.send(("exit",))
                self.proc.wait(EXIT_WAIT_S)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()
        try:
            self.log_path.unlink()
        except OSError:
            pass


class IsolatedRunner:
    """`Runner.run_case` with every impl-case in a worker process (see the module docstring)."""

    def __init__(self, ctx: RunContext, writer: ResultWriter,
                 on_record: Callable[[dict[str, Any]], None] | None = None,
                 case_timeout: float = DEFAULT_CASE_TIMEOUT_S,
                 plugins: Sequence[str] = ()) -> None:
        self.ctx = ctx
        self.writer = writer
        self.on_record = on_record or (lambda r: None)
        self.case_timeout = case_timeout
        self.plugins = [str(Path(p).resolve()) for p in plugins]
        self._tmp = tempfile.TemporaryDirectory(prefix="decodewall-",
                                                ignore_cleanup_errors=True)
        self._worker: Worker | None = None

    def __enter__(self) -> IsolatedRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self, now: bool = False) -> None:
        """Stop the worker and remove the temporary files. now=True (an interrupt): kill its
        process group at once rather than ask it to exit (Worker.close)."""
        if not now and self._worker is not None:
            self._worker.close()  # an interrupt meanwhile leaves it to close(now=True)
            self._worker = None
        with deferred():  # the interrupt that asked for this cannot leave half of it undone
            self._drop_worker()
            self._tmp.cleanup()

    def _emit(self, rec: dict[str, Any]) -> dict[str, Any]:
        with deferred():  # the file, the count and what the CLI shows agree on every record
            self.writer.write(rec)
            self.on_record(rec)
        return rec

    def _fresh_worker(self) -> Worker:
        if self._worker is None:
            # held as soon as it exists, before it is ready: an interrupt while it starts
            # (raised after the assignment) still finds it and kills its group
            with deferred():
                self._worker = Worker(self.ctx.backend.name, self.plugins,
                                      Path(self._tmp.name), wait=False)
            try:
                self._worker.wait_ready()
            except RunError:
                self._drop_worker()
                raise
        return self._worker

    def _drop_worker(self) -> None:
        if self._worker is not None:
            self._worker.close(now=True)
            self._worker = None

    def _lost(self, case: Case, name: str, status: str, error: str,
              wall_s: float | None = None, **known: Any) -> dict[str, Any]:
        impl = OPS[case.op].impls[name]
        rec = base_record(self.ctx, case, impl)
        issue = f" ({impl.known_issue})" if impl.known_issue and status == "crashed" else ""
        rec.update(status=status, error=error + issue, wall_s=wall_s, **known)
        return self._emit(rec)

    def run_case(self, case: Case) -> list[dict[str, Any]]:
        c = self.ctx
        todo = [i.name for i in reported_impls(case, c)]
        if not c.check_only and todo:  # the compute roof, once per dtype, in this process
            add_matmul(c.roof, c.backend, case.dtype, c.budget)
        fields = {f.name: getattr(c, f.name) for f in dataclasses.fields(c) if f.name != "backend"}
        records: list[dict[str, Any]] = []
        fruitless = 0  # worker deaths in a row that finished nothing
        while todo:
            w = self._fresh_worker()
            phase: str | None = None  # "inputs" or the impl running
            where = _Stage()
            since, t_phase, progressed = w.log_size(), time.monotonic(), False
            try:
                w.send(("case", fields, dataclasses.replace(case, impls=tuple(todo))))
                while True:
                    msg = w.recv(self.case_timeout - (time.monotonic() - t_phase))
                    if msg is TIMEOUT:
                        break
                    kind = msg[0]
                    if kind == "phase":  # (name, where its output begins in the log)
                        phase, since, t_phase = msg[1], msg[2], time.monotonic()
                        where = _Stage("check" if phase != "inputs" else None)
                    elif kind == "checked":  # (rel_err, correct): the check is done
                        where.checked(msg[1], msg[2])
                    elif kind == "stage":  # ("warm-up", input sets), ("timing", None), ...
                        where.enter(msg[1], msg[2])
                    elif kind == "record":
                        if msg[1]["impl"] not in todo:  # one record an impl, whatever is sent
                            continue
                        records.append(self._emit(msg[1]))
                        todo.remove(msg[1]["impl"])
                        # between impls: what comes next (a phase, "done") gets its own limit
                        phase, progressed, where = None, True, _Stage()
                        t_phase = time.monotonic()
                    elif kind == "done":
                        break
            except WorkerDied:
                msg = None
            if msg is not TIMEOUT and msg is not None:  # "done": every impl has its record
                for name in todo:  # a worker bug, not the impl's: say so rather than lose it
                    records.append(self._lost(case, name, "error", "the worker sent no record"))
                return records
            if msg is TIMEOUT:
                self._drop_worker()
                status = "timeout"
                why = f"ran past --case-timeout {self.case_timeout:g} s" + \
                    (f" in {where.words()}" if where.name else "") + " and was killed" + \
                    where.check_words()
            else:
                rc = w.wait()
                last = w.last_output_line(since)
                self._drop_worker()
                status = "crashed"
                why = "the worker died" + (f" in {where.words(brief=True)}" if where.name
                                           else "") + f": {w.describe_end(rc)}" + \
                    (f"; its last output line: {last}" if last else "") + where.check_words()
            if phase is not None and phase != "inputs" and phase in todo:
                records.append(self._lost(case, phase, status, why,
                                          round(time.monotonic() - t_phase, 3), **where.known()))
                todo.remove(phase)
                fruitless = 0
            elif phase == "inputs":
                for name in todo:
                    records.append(self._lost(case, name, status, f"building the inputs {why}"
                                              if status == "timeout" else
                                              f"while building the inputs, {why}",
                                              phase="inputs"))
                return records
            else:  # between impls (a lost CUDA context ends its worker after the record), or
                # in a phase of an impl that has its record already (a worker bug): none lost
                fruitless = 0 if progressed else fruitless + 1
                if fruitless >= 2:
                    for name in todo:
                        records.append(self._lost(case, name, status, why))
                    return records
        return records


class _Stage:
    """Where in an impl the worker is, as it said: its check, the warm-up, timing or the check
    after timing; and the check's result once it is known. A record that ends there (timeout,
    crashed) keeps both."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        self.n_sets: int | None = None
        self.rel_err: float | None = None
        self.correct: bool | None = None

    def checked(self, rel_err: float, correct: bool) -> None:
        self.rel_err, self.correct = rel_err, correct
        if correct:
            self.name = "warm-up"  # making the timed input sets is its first part

    def enter(self, name: str, n_sets: int | None) -> None:
        self.name = name
        if n_sets is not None:
            self.n_sets = n_sets

    def words(self, brief: bool = False) -> str:
        """The stage as a message names it. The warm-up says what it is: a call on every
        rotated input set (thousands at tiny shapes) counts against --case-timeout too."""
        if self.name != "warm-up":
            return PHASE_WORDS.get(self.name or "", self.name or "")
        if brief:
            return "its warm-up"
        what = ("making its input sets, then calls on each" if self.n_sets is None else
                "calls on its one input set" if self.n_sets == 1 else
                f"making its {self.n_sets} rotated input sets and calls on each")
        return f"its warm-up ({what}; the limit counts the warm-up with the check and timing)"

    def check_words(self) -> str:
        if not self.correct:
            return ""
        err = f" (rel err {self.rel_err:.3g})" if isinstance(self.rel_err, float) else ""
        return f"; its check had passed{err}"

    def known(self) -> dict[str, Any]:
        """Record keys: the stage, and the check's result where the check ended."""
        out: dict[str, Any] = {"phase": self.name}
        if self.correct is not None:
            out.update(rel_err=self.rel_err, correct=self.correct)
        return out


# --- the worker's side --------------------------------------------------------------------------

def _die_with_parent() -> None:
    """End this worker when the parent ends. On Linux boot.py has asked the kernel for that on
    the worker's first line (it holds even in C code holding the GIL); elsewhere this thread
    watches for it."""
    parent = int(os.environ.get("DECODEWALL_PARENT") or os.getppid())
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:  # portable fallback
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _log_offset() -> int:
    """Bytes in this worker's log so far (stderr is the log, opened for appending)."""
    sys.stderr.flush()
    try:
        return os.fstat(2).st_size
    except OSError:
        return 0


class _Reporter:
    """Tells the parent where this worker is, as it gets there: each phase (the inputs, an impl)
    with where its output begins in the log, then within an impl the check's result, the
    warm-up's input sets and the start of timing (Runner.on_stage); then the record."""

    def __init__(self, tx: Connection) -> None:
        self.tx = tx
        self.pid = os.getpid()

    def _mine(self) -> None:
        """A child an impl forked, back in the harness's code, ends here: it must not report a
        second time, nor read the next case from the worker's pipe."""
        if os.getpid() != self.pid:
            os._exit(0)

    def phase(self, name: str) -> None:
        self._mine()
        self.tx.send(("phase", name, _log_offset()))

    def stage(self, name: str, detail: Any) -> None:
        self._mine()
        if name == "checked":
            rel_err, correct = detail
            self.tx.send(("checked", None if rel_err is None else float(rel_err), bool(correct)))
        else:  # ("warm-up", input sets), ("timing", None) or ("after-timing", None)
            self.tx.send(("stage", name, detail))

    def record(self, rec: dict[str, Any]) -> None:
        self._mine()
        self.tx.send(("record", dict(rec)))


def _begin(reporter: _Reporter, phase: str) -> None:
    """A phase begins (the inputs, an impl): what the one before freed goes back first, so each
    impl starts from the same heap and a case's peak is one impl's temporaries, not those of
    every impl run so far; then the parent is told."""
    release_freed_memory()
    reporter.phase(phase)


def worker_main() -> None:
    """Entry of a worker process: `python bench/boot.py bench.isolation:worker_main <job fd>
    <message fd>`."""
    from backends import get_backend

    from .plugins import load_plugins
    from .runner import ContextLost

    rx = Connection(int(sys.argv[1]), writable=False)
    tx = Connection(int(sys.argv[2]), readable=False)
    for fd in (rx.fileno(), tx.fileno()):
        os.set_inheritable(fd, False)  # a child of a kernel must not keep the pipes open
    _die_with_parent()
    keep_freed_memory()
    msg = rx.recv()
    try:
        _, backend_name, plugins = msg
        load_plugins(plugins)  # a plugin's own failure (sys.exit included) is a UsageError
        backend = get_backend(backend_name)
    except BaseException as e:  # the parent reports this line (a RunError: the run cannot go on)
        print(str(e) if isinstance(e, UsageError) else f"{type(e).__name__}: {e}",
              file=sys.stderr, flush=True)
        sys.exit(3)
    tx.send(("ready",))
    while True:
        try:
            msg = rx.recv()
        except (EOFError, OSError):
            return
        if msg[0] != "case":
            return
        _, fields, case = msg
        ctx = RunContext(backend=backend, **fields)
        reporter = _Reporter(tx)
        runner = Runner(ctx, ResultWriter(None, ctx.run_id), on_record=reporter.record,
                        on_start=lambda name: _begin(reporter, name), on_stage=reporter.stage)
        try:
            runner.run_case(case)
        except ContextLost:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(4)  # its record is sent; the parent starts a new worker for the rest
        del runner  # and the case's inputs it may hold, before their memory is handed back
        release_freed_memory()
        tx.send(("done",))
