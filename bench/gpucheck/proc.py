"""Child processes of the device check: each in its own process group, its output streamed to the
step log, the whole group killed at its time box; and where Nsight Compute is installed."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent  # every step runs from the checkout


def run_proc(cmd: list[str], box: float, log, env: dict[str, str],
             stdout_path: Path | None = None) -> tuple[int | None, float]:
    """Run cmd in its own process group with output streamed to `log` (stdout to stdout_path if
    given); on the time box, SIGTERM then SIGKILL the group. Returns (rc or None on timeout, s)."""
    log.write(f"$ {' '.join(cmd)}   [time box {box:.0f} s]\n")
    log.flush()
    t0 = time.monotonic()
    out = open(stdout_path, "w", encoding="utf-8") if stdout_path else log
    try:
        proc = subprocess.Popen(cmd, stdout=out, stderr=log, env=env, cwd=REPO,
                                start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=max(1.0, box))
        except subprocess.TimeoutExpired:
            rc = None
            for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            log.write(f"\n[time box of {box:.0f} s reached: process group killed]\n")
    finally:
        if stdout_path:
            out.close()
    dt = time.monotonic() - t0
    log.write(f"[exit {rc if rc is not None else 'timeout'} after {dt:.1f} s]\n\n")
    log.flush()
    return rc, dt


def find_ncu() -> str | None:
    found = shutil.which("ncu")
    if found:
        return found
    for pattern in ("/usr/local/cuda*/bin/ncu", "/opt/nvidia/nsight-compute/*/ncu"):
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[-1]
    return None
