"""`decodewall show [RESULTS.jsonl|DIR]... [--op OP] [--impl NAME] [--status S] [--json]`.

A results file is what a run leaves (no file named: the newest in results/runs, `run`'s default;
a folder: every results file in it); this prints it again as `run` printed it: the results
table of each run the files hold (its run id, device, backend and the roof its cases were
judged against), with the commit, versions, time and command line of the run under it, and the
precision comparison where the run holds one (of the records kept, each speedup over the
run's fastest bf16 impl). The filters pick records (several of one flag: any of them; different
flags: all of them). An --op or --impl that no record in the files has is bad input (a misspelt
name), named with what the files hold; filters that each match but together pick nothing print
that on stderr and exit 0. `--json` prints the records picked, one a line, as they are in the
file.
"""
from __future__ import annotations

import sys
from typing import Any

from ..errors import UsageError, one_line
from .common import given, read_files, suggest


def runs(records: list[dict[str, Any]], files: list[str]
         ) -> list[tuple[str, str | None, list[int]]]:
    """(file, run id, the indices of its records) in the order the files hold them: a file
    holds one run, or several where runs were written into one file."""
    out: dict[tuple[str, str | None], list[int]] = {}
    for i, (r, f) in enumerate(zip(records, files)):
        out.setdefault((f, r.get("run_id")), []).append(i)
    return [(f, rid, idx) for (f, rid), idx in out.items()]


def run_caption(path: str, recs: list[dict[str, Any]], shown: int) -> str:
    """Where the numbers came from: the file, the commit, versions, when and the command; how
    many of the run's records the filters left out; and how far a run that stopped got."""
    from ..report.plot import status_counts
    first = recs[0]
    parts = [path]
    if isinstance(first.get("git_commit"), str):
        parts.append(f"commit {first['git_commit'][:12]}")
    v = first.get("versions")
    if isinstance(v, dict):
        parts.append(", ".join(f"{k} {v[k]}" for k in ("torch", "triton", "cuda", "hip", "jax")
                               if isinstance(v.get(k), str)))
    built = next((r["c_build"] for r in recs if isinstance(r.get("c_build"), dict)), None)
    if built is not None and isinstance(built.get("compiler"), str):  # the C kernels' compiler
        parts.append(f"C {built['compiler']}" + (", no OpenMP" if built.get("openmp") is False
                                                  else ""))
    if isinstance(first.get("timestamp"), str):
        parts.append(first["timestamp"])
    lines = [" · ".join(p for p in parts if p)]
    if isinstance(first.get("command"), str):
        lines.append(f"$ {first['command']}")
    from ..results import unfinished
    cut = "".join(f"; the run reached case {last} of {of} (it stopped, or is still going)"
                  for _, last, of in unfinished(recs))
    lines.append(status_counts(recs) + (f"; {len(recs) - shown} left out by the filters"
                                        if shown < len(recs) else "") + cut)
    return "\n".join(lines)


def pick(records: list[dict[str, Any]], ops: list[str] | None, impls: list[str] | None,
         statuses: list[str] | None) -> list[bool]:
    """Which records the filters keep; UsageError for an --op or --impl no record has."""
    for flag, key, wanted in (("--op", "op", ops), ("--impl", "impl", impls)):
        held = sorted({r[key] for r in records})
        for w in wanted or []:
            if w not in held:
                raise UsageError(f"{flag} {w!r} matches no record{suggest(w, held, False)} "
                                 f"({key}s in the files: {', '.join(held)})")
    return [(not ops or r["op"] in ops) and (not impls or r["impl"] in impls)
            and (not statuses or r["status"] in statuses) for r in records]


def result_files(paths: list[str]) -> list[str]:
    """The files to read: each path given, a folder standing for its *.jsonl in name order (run
    ids start with their time); none given, the newest run in `run`'s default folder."""
    from pathlib import Path
    from .run import DEFAULT_OUT
    if not paths:
        found = sorted(DEFAULT_OUT.glob("*.jsonl")) if DEFAULT_OUT.is_dir() else []
        if not found:
            raise UsageError(f"no results file given, and none in {DEFAULT_OUT}/ (where "
                             "`decodewall run` saves; give a file or a folder)")
        return [str(found[-1])]
    out: list[str] = []
    for p in paths:
        try:
            folder = Path(p).is_dir()
        except OSError:  # a name past the file system's limit: read_results names the error
            folder = False
        if folder:
            found = sorted(str(f) for f in Path(p).glob("*.jsonl") if f.is_file())
            if not found:
                raise UsageError(f"{p}: a folder without results files (*.jsonl)")
            out += found
        else:
            out.append(p)
    return out


def command(args) -> int:
    from ..notes import notes
    from ..report.precision import precision_table
    from ..report.table import console, plain, printable_record, results_table, run_title
    from ..results import dumps
    records, files = read_files(result_files(args.results))
    keep = pick(records, args.op, args.impl, args.status)
    if not any(keep):  # names the files hold, no record with all of them: an answer, not an error
        from ..report.plot import status_counts
        asked = " ".join(f"--{flag} {v}" for flag in ("op", "impl", "status")
                         for v in getattr(args, flag) or [])
        print(one_line(f"decodewall: no record matches {asked} (the files hold "
                       f"{status_counts(records)})"), file=sys.stderr)
        return 0
    if args.json:
        for r, k in zip(records, keep):
            if k:
                print(dumps(r))
        return 0
    out = console()
    for path, run_id, idx in runs(records, files):
        recs = [records[i] for i in idx]
        kept = [printable_record(records[i]) for i in idx if keep[i]]
        if not kept:
            continue
        device = (recs[0].get("device") or {}).get("name")
        table = results_table(kept, title=run_title(run_id, device, recs[0].get("backend"),
                                                    (r.get("roof_gbps") for r in recs)),
                              width=out.width)
        left_out = f"; {table.caption}" if table.caption else ""  # columns a narrow terminal lost
        table.caption = plain(run_caption(path, recs, len(kept)) + left_out)
        out.print(table)
        # the speedups are over the run's fastest bf16 impl, whichever records the filters kept
        precision = precision_table(kept, recs) if any(r.get("group") == "precision"
                                                       for r in kept) else None
        if precision is not None:
            out.print(precision)
        # what `run` said at its end about the machine, said again of the records shown
        for note in notes(kept):
            print(one_line(f"decodewall: note: {note}"), file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    from ..results import STATUSES
    p = sub.add_parser("show", help="print results files as run printed them",
                       description="Print each run a results file holds as `decodewall run` "
                       "printed it: its table (run id, device, roof), then the commit, versions, "
                       "time and command line, the precision comparison where the run has one, "
                       "and run's notes on the machine (on stderr). Filters pick records: "
                       "several of one flag, any of them; different flags, all of them.")
    p.add_argument("results", nargs="*", metavar="RESULTS.jsonl", type=given,
                   help="results files, or folders of them; none: the newest run in "
                   "results/runs")
    p.add_argument("--op", action="append", metavar="OP", help="only this op (repeatable)")
    p.add_argument("--impl", action="append", metavar="NAME", help="only this impl (repeatable)")
    p.add_argument("--status", action="append", choices=STATUSES,
                   help="only records of this status (repeatable)")
    p.add_argument("--json", action="store_true",
                   help="print the records picked, one JSON object a line, as the file holds "
                   "them")
    p.set_defaults(func=command)
