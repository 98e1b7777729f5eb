"""Result records: one JSON object per case, appended and flushed as soon as the case finishes.

The file is created on the first record only (exclusively: one file a run), so a run that fails
validation leaves nothing behind, and an interrupted run keeps every finished case, each on a
complete line.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import stat
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from .errors import RunError
from .interrupts import deferred

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


class ResultsWriteError(RunError):
    """A record the results file could not take (a full disk): the run stops there."""


def new_run_id(backend: str) -> str:
    """The start time in UTC, the backend, 16 random bits: name order is time order (what `show`
    with no file relies on) whatever the machine's time zone, and across a clock change."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{backend}-{secrets.token_hex(2)}"


def git_commit() -> str | None:
    """This checkout's commit (`-dirty` with uncommitted changes to tracked files); None where
    decodewall runs from an install: REPO is then site-packages, and git would answer with the
    commit of whatever repository holds the environment."""
    try:
        if not (REPO / ".git").exists() or \
                'name = "decodewall"' not in (REPO / "pyproject.toml").read_text(errors="replace"):
            return None
    except OSError:
        return None
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
    """Versions of what shapes the numbers: package metadata, then torch's own version and CUDA
    version from an import of torch (its __version__ names the build, e.g. 2.13.0+cpu)."""
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for pkg in ("torch", "triton", "numpy", "jax", "jaxlib", "torchax", "libtpu", "decodewall"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    # the Triton that runs: ROCm's torch ships it as pytorch-triton-rocm, nightlies as
    # pytorch-triton, neither of which metadata finds under "triton"
    triton = sys.modules.get("triton")
    if getattr(triton, "__version__", None):
        out["triton"] = triton.__version__  # type: ignore[union-attr]
    try:
        import torch
        out["torch"] = torch.__version__
        out["cuda"] = torch.version.cuda
        if getattr(torch.version, "hip", None):  # a ROCm build: its HIP, where "cuda" is null
            out["hip"] = torch.version.hip
    except Exception:
        pass
    return out


def check_writable(directory: Path) -> None:
    """Fail early (before any measuring) when results could not be saved."""
    if directory.exists() and not directory.is_dir():
        raise PermissionError(f"results directory {directory} is a file, not a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"cannot create results directory {directory}: "
                              f"{e.strerror}") from None
    if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(f"results directory {directory} is not writable")


def write_all(fd: int, data: bytes) -> None:
    """Write `data` whole to `fd` and fsync it: unbuffered, so a short write is continued, and
    a failed one (a full disk, a quota, a file size limit) raises OSError, not retried."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


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
    """Writes records to DIR/<run_id>.jsonl, flushing and fsyncing each line.

    The file is created exclusively: when a file of that name exists (another run given the
    same id in the same second), `new_id()` names another, so two runs never share a file.
    Each record written carries the id its file is named by, and `run_case` where the run set
    `case` (its case's place in the run and how many cases the run planned): a file whose last
    record's case is short of the plan is a run that stopped (or one still going), which a
    reader can then say instead of treating the cases it lacks as never asked for."""

    def __init__(self, directory: Path | None, run_id: str,
                 new_id: Callable[[], str] | None = None) -> None:
        self.directory = None if directory is None else Path(directory)
        self.run_id = run_id
        self.case: tuple[int, int] | None = None  # (1-based case index, cases planned)
        self._new_id = new_id or (lambda: f"{run_id}-{secrets.token_hex(4)}")
        self._fd: int | None = None
        self._size = 0  # bytes of whole records in the file: a failed write is cut back to it
        self.count = 0  # records in the file: counted with their write, never apart from it

    @property
    def path(self) -> Path | None:
        """The results file (None: nothing is written); it exists once `count` > 0."""
        return None if self.directory is None else self.directory / f"{self.run_id}.jsonl"

    def _create(self) -> int:
        assert self.directory is not None
        self.directory.mkdir(parents=True, exist_ok=True)  # made at the start, maybe removed since
        for _ in range(100):
            try:  # the umask's permissions, as open(..., "x") gives; read too: _recreate
                return os.open(self.directory / f"{self.run_id}.jsonl",
                               os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            except FileExistsError:
                self.run_id = self._new_id()
        raise FileExistsError(f"no free results file name in {self.directory} "
                              f"(last tried {self.run_id}.jsonl)")

    def write(self, record: dict[str, Any]) -> None:
        """Append `record` (its run_id set to the file's). A SIGINT or SIGTERM that lands
        meanwhile is raised after the line is on disk and counted (bench/interrupts.py). A
        write the disk refuses (full, over a quota or a file size limit) is cut back to the
        last whole record, the file removed if it holds none, and raised as ResultsWriteError:
        the finished cases stay readable, and nothing half written is left."""
        if self.case is not None:  # also with no file: --json prints the record after this
            record["run_case"] = {"index": self.case[0], "of": self.case[1]}
        if self.directory is None:
            return
        with deferred():
            if self._fd is None:
                try:
                    self._fd = self._create()
                except OSError as e:  # a full disk or a quota refuses the new file itself
                    raise ResultsWriteError(f"cannot create {self.path}: {e.strerror or e}"
                                            ) from None
            record["run_id"] = self.run_id
            try:
                write_all(self._fd, (dumps(record) + "\n").encode("utf-8"))
            except OSError as e:
                self._undo()
                raise ResultsWriteError(f"cannot write {self.path}: {e.strerror or e}") from None
            self._size = os.lseek(self._fd, 0, os.SEEK_CUR)
            self.count += 1
            if os.fstat(self._fd).st_nlink == 0:
                self._recreate()

    def _recreate(self) -> None:
        """The file (or its folder) was removed while the run held it open: its records are
        still in the open file, so they are written again under the same path, and nothing
        measured is lost with the name."""
        assert self.directory is not None and self._fd is not None
        kept = os.pread(self._fd, self._size, 0)
        old, self._fd = self._fd, None
        os.close(old)
        try:  # the same name, or none: a new run id would not be the one its records carry
            self.directory.mkdir(parents=True, exist_ok=True)
            assert self.path is not None
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                               0o666)
            write_all(self._fd, kept)
        except OSError as e:
            n, self.count = self.count, 0
            if self._fd is not None:
                self.close()
                self.path.unlink(missing_ok=True)
            raise ResultsWriteError(f"{self.path} was removed during the run and cannot be "
                                    f"written again ({e.strerror or e}): its {n} record(s) are "
                                    f"lost") from None

    def _undo(self) -> None:
        """After a failed write: the file back to its whole records, or gone if it has none."""
        try:
            os.ftruncate(self._fd, self._size)
            os.lseek(self._fd, self._size, os.SEEK_SET)
        except OSError:
            pass
        if not self.count:
            self.close()
            assert self.path is not None
            self.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Close the file; one removed since its last record is written again first (or a
        ResultsWriteError says its records are lost)."""
        if self._fd is not None:
            if self.count and os.fstat(self._fd).st_nlink == 0:
                self._recreate()
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:  # every line was fsynced: close has nothing left to write
                pass


MAX_LINE = 2**20  # bytes: a record is 1-4 KB (its command line, an error's first line); a
#                   longer line is no record, and reading on to its end could take all memory
TORN_WAIT_S = 0.05  # how long a reader gives a record being appended before it reads it again


def _finished(f: Any, raw: bytes) -> bytes:
    """The file's last line (no newline yet), read again after TORN_WAIT_S when it is not whole
    JSON: a run appends each record with one write, and a reader beside it (`show` in another
    terminal) can meet that write part-way. A line still cut then is what the file holds."""
    try:
        json.loads(raw)
        return raw
    except ValueError:
        pass
    time.sleep(TORN_WAIT_S)
    f.seek(-len(raw), os.SEEK_CUR)
    return f.readline(MAX_LINE + 1)


def read_results(path: str | Path, skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """Read a JSONL results file; ResultsError names the first bad line (and its bad field).
    skipped: a list to collect those messages in while reading on past the bad lines (the device
    check, which must not lose a window's records to one line). Only a regular file is read (a
    device such as /dev/zero or a FIFO never ends, or blocks), a line at most MAX_LINE long."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such file") from None
    except OSError as e:
        raise ResultsError(f"{path}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        raise ResultsError(f"{path}: is {_file_kind(mode)}, not a results file")
    records = []
    i = 0
    try:
        with p.open("rb") as f:  # decoded a line at a time: a bad byte is its own line's error
            while raw := f.readline(MAX_LINE + 1):
                i += 1
                if len(raw) <= MAX_LINE and not raw.endswith(b"\n"):
                    raw = _finished(f, raw)
                try:
                    if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
                        raise ResultsError(f"{path}:{i}: a line of over {MAX_LINE} bytes is "
                                           "not a decodewall result record")
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise ResultsError(f"{path}:{i}: not UTF-8 text ({e.reason} at byte "
                                           f"{e.start + 1} of the line)") from None
                    if line.strip():
                        records.append(_record(path, i, line))
                except ResultsError as e:
                    if skipped is None:
                        raise
                    skipped.append(str(e))
                    while raw and not raw.endswith(b"\n"):  # past it, a bounded read at a time
                        raw = f.readline(MAX_LINE)
    except OSError as e:
        raise ResultsError(f"{path}:{i + 1}: cannot read ({e})") from None
    if not records:
        raise ResultsError(f"{path}: no result records")
    return records


def _file_kind(mode: int) -> str:
    """What a path that is not a regular file is, as a message names it."""
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a special file"


MAX_DEPTH = 32  # levels of nesting a record may have (its own: 3); a deeper one is no record, and
#                writing it back (dumps, `show --json`) recurses past Python's limit


def _depth(v: Any, limit: int = MAX_DEPTH + 1) -> int:
    """How deep `v` nests (a scalar: 0), counted no further than `limit`."""
    if limit <= 0 or not isinstance(v, (dict, list)):
        return 0
    items = v.values() if isinstance(v, dict) else v
    return 1 + max((_depth(x, limit - 1) for x in items), default=0)


def _record(path: str | Path, i: int, line: str) -> dict[str, Any]:
    """Line i of a results file as a record; ResultsError says why it is not one."""
    try:
        rec = json.loads(line)  # NaN and Infinity parse; the field checks reject them
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}:{i}: not valid JSON ({e.msg}, character {e.pos + 1})") from None
    except RecursionError:
        raise ResultsError(f"{path}:{i}: not a decodewall result record (nested too deeply)"
                           ) from None
    except ValueError as e:  # an integer past Python's limit on digits
        msg = (str(e).splitlines() or [""])[0]
        raise ResultsError(f"{path}:{i}: not valid JSON ({msg})") from None
    if not isinstance(rec, dict) or not {"op", "impl", "shape", "status"} <= rec.keys():
        raise ResultsError(f"{path}:{i}: not a decodewall result record")
    if _depth(rec) > MAX_DEPTH:
        raise ResultsError(f"{path}:{i}: not a decodewall result record (nested too deeply)")
    why = _malformed(rec)
    if why:
        raise ResultsError(f"{path}:{i}: malformed record ({why})")
    return rec


# Sane ranges of the numbers the readers (show, compare, plot, project --from) compute with: beyond
# them a value is corrupt, not measured, and would overflow or divide by zero downstream.
MIN_TIME_S = 1e-12      # no kernel call takes less than a picosecond
MAX_TIME_S = 1e6        # nor over 11 days a call
MIN_NONZERO = 1e-12     # a rate or ratio is 0 or at least this (smaller ones underflow to 0)
MAX_GBPS = 1e9          # an exabyte a second: no memory, cache included, comes near
MAX_PCT = 1e6           # % of a roof: in-cache cases reach several times the DRAM roof, not 10^4x
MAX_RATIO = 1e9         # FLOP/B (arithmetic intensity, ridge)
MAX_COUNT = 1e18        # bytes or FLOPs a call, bytes of a cache: an exa-unit is past any device
MAX_SHAPE = 2**53       # shape fields are whole numbers, exact as floats up to here


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _in_range(v: Any, lo: float, hi: float, zero: bool = False) -> bool:
    """A finite JSON number in [lo, hi], or 0 where `zero` (an integer too large for a float
    is out of range)."""
    if not _num(v):
        return False
    try:
        return math.isfinite(v) and (lo <= v <= hi or (zero and v == 0))
    except OverflowError:
        return False


NUMBERS = {  # field: (highest, what it is); each is 0 or in [MIN_NONZERO, highest]
    "achieved_gbps": (MAX_GBPS, "GB/s"), "roof_gbps": (MAX_GBPS, "GB/s"),
    "datasheet_gbps": (MAX_GBPS, "GB/s"), "pct_roof": (MAX_PCT, "a percentage"),
    "pct_datasheet": (MAX_PCT, "a percentage"), "gpu_util_pct": (MAX_PCT, "a percentage"),
    "pct_compute": (MAX_PCT, "a percentage"),
    "arithmetic_intensity": (MAX_RATIO, "FLOP/B"), "ridge": (MAX_RATIO, "FLOP/B"),
    "bytes": (MAX_COUNT, "a count"), "flops": (MAX_COUNT, "a count"),
}
# each a string or null (flush: part of a case's key in compare and plot, so it must hash)
TEXTS = ("dtype", "backend", "verdict", "error", "group", "run_id", "flush")
# each true, false or null: read for their truth value, in which a string "false" is true
BOOLS = ("baseline", "warm", "cold", "correct")


def _malformed(rec: dict[str, Any]) -> str | None:
    """Why a record's fields cannot be read as the contract says, or None. Every field a reader
    uses is checked for its type and a sane range, so no reader meets a value it cannot handle."""
    if not isinstance(rec["op"], str) or not isinstance(rec["impl"], str):
        return "op and impl must be strings"
    for k in TEXTS:
        if rec.get(k) is not None and not isinstance(rec[k], str):
            return f"{k} must be a string, got {_kind(rec[k])}"
    for k in BOOLS:
        if rec.get(k) is not None and not isinstance(rec[k], bool):
            return f"{k} must be true or false, got {_show(rec[k])}"
    shape = rec["shape"]
    if not isinstance(shape, dict):
        return f"shape must be an object, got {_kind(shape)}"
    for k, v in shape.items():
        if not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_SHAPE):
            return f"shape field {k!r} must be a whole number in 0..2**53, got {_show(v)}"
    if rec["status"] not in STATUSES:
        return f"unknown status {_show(rec['status'])}"
    ts = rec.get("time_s")
    if ts is not None:
        if not isinstance(ts, dict):
            return f"time_s must be an object, got {_kind(ts)}"
        for k in ("median", "p25", "p75"):
            if not _in_range(ts.get(k), MIN_TIME_S, MAX_TIME_S):
                return (f"time_s.{k} must be seconds in [{MIN_TIME_S:g}, {MAX_TIME_S:g}], "
                        f"got {_show(ts.get(k))}")
        if not ts["p25"] <= ts["median"] <= ts["p75"]:  # quartiles of one sample set
            return (f"time_s must have p25 <= median <= p75, got {_show(ts['p25'])}, "
                    f"{_show(ts['median'])}, {_show(ts['p75'])}")
        n = ts.get("n")
        if n is not None and not (isinstance(n, int) and not isinstance(n, bool)
                                  and 1 <= n <= MAX_COUNT):
            return f"time_s.n must be a whole number of samples >= 1, got {_show(n)}"
    for k, (hi, what) in NUMBERS.items():
        if rec.get(k) is not None and not _in_range(rec[k], MIN_NONZERO, hi, zero=True):
            return f"{k} must be {what}: 0 or in [{MIN_NONZERO:g}, {hi:g}], got {_show(rec[k])}"
    rc = rec.get("run_case")
    if rc is not None and not (isinstance(rc, dict) and all(
            isinstance(rc.get(k), int) and not isinstance(rc.get(k), bool) for k in ("index", "of"))
            and 1 <= rc["index"] <= rc["of"] <= MAX_COUNT):
        return f"run_case must be {{index, of}} with 1 <= index <= of, got {_show(rc)}"
    dev = rec.get("device")
    if dev is not None:
        if not isinstance(dev, dict):
            return f"device must be an object, got {_kind(dev)}"
        for k in ("name", "chip"):
            if dev.get(k) is not None and not isinstance(dev[k], str):
                return f"device.{k} must be a string, got {_kind(dev[k])}"
        if dev.get("cache_bytes") is not None and not _in_range(dev["cache_bytes"], 1,
                                                                 MAX_COUNT, zero=True):
            return f"device.cache_bytes must be a count: 0 or in [1, {MAX_COUNT:g}]"
    return None


def _kind(v: Any) -> str:
    """A JSON value's type, as a message names it."""
    if isinstance(v, bool):
        return "true/false"
    return {dict: "an object", list: "an array", str: "a string", type(None): "null"}.get(
        type(v), "a number")


def _show(v: Any) -> str:
    """A value for a one-line message: its repr cut short, or its JSON type."""
    if isinstance(v, (dict, list)):
        return _kind(v)
    try:
        s = repr(v)
    except ValueError:  # an int past Python's digit limit for str()
        return "an integer too long to show"
    return s if len(s) <= 40 else s[:39] + "…"


# The verdict bench/roofline.py gives a case timed from the cache. Defined here, with the other
# record vocabulary, so that readers of records (show, plot, project) need no measuring module.
IN_CACHE = "in cache: not judged against the DRAM roof"


def unfinished(records: list[dict[str, Any]]) -> list[tuple[str | None, int, int]]:
    """(run id, last case reached, cases planned) for each run among `records` whose records
    stop short of the cases it planned (`run_case`): it was stopped, cut, or is still going.
    Runs whose records carry no `run_case` (older files, torchrun ranks) say nothing."""
    reached: dict[str | None, tuple[int, int]] = {}
    for r in records:
        rc = r.get("run_case")
        if isinstance(rc, dict):
            last, of = reached.get(r.get("run_id"), (0, rc["of"]))
            reached[r.get("run_id")] = (max(last, rc["index"]), max(of, rc["of"]))
    return [(rid, last, of) for rid, (last, of) in reached.items() if last < of]


def in_cache(r: dict[str, Any]) -> bool:
    """A record timed (partly) from the cache: a warm one (the size sweep), or a cold one whose
    rotation could not pass the cache (its verdict says so). Its % of roof is not a DRAM
    efficiency, so it is kept out of projections and rooflines."""
    return (bool(r.get("warm")) and not r.get("cold")) or r.get("verdict") == IN_CACHE


def compute_bound(r: dict[str, Any]) -> bool:
    """A record its run judged past the ridge (`compute-bound`, at the compute roof or below):
    there a low % of the bandwidth roof is by design, no memory efficiency."""
    return str(r.get("verdict") or "").startswith("compute-bound")


def suspect(r: dict[str, Any]) -> bool:
    """A record the run judged "harness suspect": above the bandwidth roof or the compute roof by
    more than the margin (a cache not defeated, a probe read low, a missing sync). Its time is
    not a kernel's to sum or compare with a goal."""
    return str(r.get("verdict") or "").startswith(("above the roof", "above the compute roof"))
