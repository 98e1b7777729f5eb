"""Child processes of the device check: each in its own process group, its output streamed to the
step log as it comes (a check cut short still has it), the whole group killed at its time box or
when the check itself is interrupted; and where Nsight Compute is installed."""
from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent  # every step runs from the checkout
KILL_GRACE_S = 5.0  # after SIGTERM, then again after SIGKILL: a killed step ends within 2x this
# What bench.gpucheck.pytest_shard prints before each failure's reason. Here, not in that
# plugin, so that the check imports without pytest (the peers step can install it from a wheel).
FAIL_LINE = "DWFAIL "
MAX_SHARDS = 1024  # processes a step splits into: more than any machine's cores


def parse_shard(spec: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N <= MAX_SHARDS, or ValueError."""
    i, sep, n = spec.partition("/")
    # isdecimal, not isdigit: int() takes no superscript digit ('¹' is a digit)
    if not (sep and i.isdecimal() and n.isdecimal() and 0 <= int(i) < int(n) <= MAX_SHARDS):
        raise ValueError(f"--shard {spec!r}: expected I/N with 0 <= I < N <= {MAX_SHARDS}")
    return int(i), int(n)


def kill_group(proc: subprocess.Popen, grace: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_proc(cmd: list[str], box: float, log, env: dict[str, str],
             stdout_path: Path | None = None,
             tee: list[str] | None = None) -> tuple[int | None, float]:
    """Run cmd in its own process group, its stderr streamed to `log` and its stdout to
    `stdout_path` if given, else to `log` too; given a `tee` list, stdout and stderr go line by
    line to `log`, to this process's stdout and into the list. On the time box, SIGTERM then SIGKILL the group; on an
    exception here (the check interrupted), the same before it propagates. Returns (rc, None on
    timeout, 127 where cmd cannot start; seconds)."""
    log.write(f"$ {' '.join(cmd)}   [time box {box:.0f} s]\n")
    log.flush()
    t0 = time.monotonic()
    out = open(stdout_path, "w", encoding="utf-8") if stdout_path else log
    reader: threading.Thread | None = None
    try:
        try:
            if tee is not None:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        env=env, cwd=REPO, start_new_session=True)
                reader = threading.Thread(target=_tee, args=(proc.stdout, log, tee), daemon=True)
                reader.start()
            else:
                proc = subprocess.Popen(cmd, stdout=out, stderr=log, env=env, cwd=REPO,
                                        start_new_session=True)
        except OSError as e:  # not there, not executable: the shell's "cannot run" status
            log.write(f"[cannot start {cmd[0]}: {e}]\n")
            log.flush()
            return 127, time.monotonic() - t0
        try:
            rc: int | None = proc.wait(timeout=max(1.0, box))
        except subprocess.TimeoutExpired:
            rc = None
            kill_group(proc, KILL_GRACE_S)
        except BaseException:  # the check is interrupted: leave nothing running behind it
            kill_group(proc, 1.0)
            raise
        if reader is not None:  # a grandchild that escaped the group may hold the pipe open
            reader.join(timeout=KILL_GRACE_S)
        if rc is None:
            log.write(f"\n[time box of {box:.0f} s reached: process group killed]\n")
    finally:
        if stdout_path:
            out.close()
    dt = time.monotonic() - t0
    log.write(f"[exit {rc if rc is not None else 'timeout'} after {dt:.1f} s]\n\n")
    log.flush()
    return rc, dt


def run_procs(cmds: list[list[str]], box: float, log, env: dict[str, str],
              tags: list[str]) -> tuple[list[int | None], float, list[list[str]]]:
    """Run the commands at once, each in its own process group, each line of their stdout and
    stderr streamed to `log` and this process's stdout under its command's tag and kept, untagged,
    in that command's list. One time box for them all: at it, SIGTERM then SIGKILL every group
    still running; on an exception here (the check interrupted), the same before it propagates.
    Returns (each command's rc, None where cut; seconds; each command's lines)."""
    for cmd, tag in zip(cmds, tags):
        log.write(f"$ [{tag}] {' '.join(cmd)}   [time box {box:.0f} s, {len(cmds)} at once]\n")
    log.flush()
    t0 = time.monotonic()
    lines: list[list[str]] = [[] for _ in cmds]
    procs: list[subprocess.Popen] = []
    readers: list[threading.Thread] = []
    lock = threading.Lock()
    rcs: list[int | None] = [None] * len(cmds)
    try:
        for cmd, tag, kept in zip(cmds, tags, lines):
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                    cwd=REPO, start_new_session=True)
            procs.append(proc)
            readers.append(threading.Thread(target=_tee, args=(proc.stdout, log, kept),
                                            kwargs={"tag": f"[{tag}] ", "lock": lock}, daemon=True))
            readers[-1].start()
        for i, proc in enumerate(procs):
            try:
                rcs[i] = proc.wait(timeout=max(0.1, t0 + box - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
    except BaseException:  # the check is interrupted: leave nothing running behind it
        for proc in procs:
            kill_group(proc, 1.0)
        raise
    rcs = [rc if rc is not None else proc.poll() for proc, rc in zip(procs, rcs)]
    cut = [proc for proc, rc in zip(procs, rcs) if rc is None]
    for proc in cut:
        kill_group(proc, KILL_GRACE_S)
    for reader in readers:
        reader.join(timeout=KILL_GRACE_S)
    dt = time.monotonic() - t0
    with lock:
        if cut:
            log.write(f"\n[time box of {box:.0f} s reached: {len(cut)} of {len(cmds)} process "
                      "groups killed]\n")
        log.write(f"[exit {', '.join(str(rc) if rc is not None else 'timeout' for rc in rcs)} "
                  f"after {dt:.1f} s]\n\n")
        log.flush()
    return rcs, dt, lines


def _tee(pipe, log, lines: list[str], tag: str = "", lock: threading.Lock | None = None) -> None:
    for raw in iter(pipe.readline, b""):
        line = raw.decode("utf-8", errors="replace")
        lines.append(line)
        with lock or contextlib.nullcontext():
            log.write(tag + line)
            log.flush()
            sys.stdout.write(tag + line)
            sys.stdout.flush()
    pipe.close()


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, which a container or taskset
    narrows; os.cpu_count() counts the whole machine's)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _version_key(path: str) -> list[int]:
    """The numbers in `path`, in order: cuda-13.0 after cuda-9.2, which a string sort reverses."""
    return [int(n) for n in re.findall(r"\d+", path)]


def find_ncu() -> str | None:
    """ncu on PATH, else the default CUDA's (/usr/local/cuda: the link a CUDA install points
    at the toolkit the machine is set up to use), else the newest under CUDA's versioned and
    Nsight Compute's install folders."""
    found = shutil.which("ncu")
    if found:
        return found
    for pattern in ("/usr/local/cuda/bin/ncu", "/usr/local/cuda-*/bin/ncu",
                    "/opt/nvidia/nsight-compute/*/ncu"):
        hits = sorted(glob.glob(pattern), key=_version_key)
        if hits:
            return hits[-1]
    return None
