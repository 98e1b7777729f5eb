"""Result records: one JSON object per case, appended and flushed as soon as the case finishes.

The file is created on the first record only, so a run that fails validation leaves nothing
behind, and an interrupted run keeps every finished case, each on a complete line.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parent.parent

# The public record contract (README, "Result records"). Extra keys may follow these.
FIELDS = ("op", "impl", "kind", "baseline", "backend", "shape", "dtype", "status", "error",
          "correct", "rel_err", "time_s", "bytes", "flops", "achieved_gbps", "roof_gbps",
          "pct_roof", "datasheet_gbps", "pct_datasheet", "arithmetic_intensity", "verdict",
          "device", "versions", "git_commit", "command", "seed", "run_id", "timestamp")
STATUSES = ("ok", "failed-check", "error", "skipped", "crashed", "timeout")
FAILED = ("failed-check", "error", "crashed", "timeout")  # an impl that gave no honest number


class ResultsError(ValueError):
    """A results file that cannot be read back (corrupt line, missing fields)."""


def new_run_id(backend: str) -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{backend}-{secrets.token_hex(2)}"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    """Versions of what shapes the numbers, read from package metadata (nothing heavy imported)."""
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for pkg in ("torch", "triton", "numpy", "jax", "jaxlib", "torchax", "libtpu", "decodewall"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    try:
        import torch
        out["torch"] = torch.__version__
        out["cuda"] = torch.version.cuda
    except Exception:
        pass
    return out


def check_writable(directory: Path) -> None:
    """Fail early (before any measuring) when results could not be saved."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"cannot create results directory {directory}: {e.strerror}") from None
    if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(f"results directory {directory} is not writable")


def _clean(v: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(_clean(record), separators=(",", ":"), default=str)


class ResultWriter:
    """Appends records to DIR/<run_id>.jsonl, flushing and fsyncing each line."""

    def __init__(self, directory: Path | None, run_id: str) -> None:
        self.path = None if directory is None else Path(directory) / f"{run_id}.jsonl"
        self._f = None
        self.count = 0

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        if self._f is None:
            self._f = open(self.path, "a", encoding="utf-8")
        self._f.write(dumps(record) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.count += 1

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL results file; ResultsError names the first bad line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path}: cannot read ({e})") from None
    records = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ResultsError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not {"op", "impl", "shape", "status"} <= rec.keys():
            raise ResultsError(f"{path}:{i}: not a decodewall result record")
        why = _malformed(rec)
        if why:
            raise ResultsError(f"{path}:{i}: malformed record ({why})")
        records.append(rec)
    if not records:
        raise ResultsError(f"{path}: no result records")
    return records


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _malformed(rec: dict[str, Any]) -> str | None:
    """Why a record's fields cannot be read as the contract says, or None."""
    if not isinstance(rec["op"], str) or not isinstance(rec["impl"], str):
        return "op and impl must be strings"
    if not isinstance(rec["shape"], dict):
        return "shape must be an object"
    if rec["status"] not in STATUSES:
        return f"unknown status {rec['status']!r}"
    ts = rec.get("time_s")
    if ts is not None and not (isinstance(ts, dict) and all(
            _num(ts.get(k)) and ts[k] > 0 for k in ("median", "p25", "p75"))):
        return "time_s must hold positive median, p25 and p75"
    for k in ("achieved_gbps", "pct_roof", "roof_gbps", "bytes", "flops"):
        if rec.get(k) is not None and not _num(rec[k]):
            return f"{k} must be a number"
    return None


def iter_ok(records: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (r for r in records if r.get("status") == "ok" and r.get("time_s"))


def in_cache(r: dict[str, Any]) -> bool:
    """A warm record (the size sweep) timed (partly) from the cache: its % of roof is not a DRAM
    efficiency, so it is kept out of projections and rooflines."""
    return bool(r.get("warm")) and not r.get("cold")
