"""`decodewall compare A.jsonl B.jsonl`: two results files case by case, B against A.

The exit status is 0 whatever the verdicts ("slower" and a status regression such as "B crashed"
alike) and 2 on bad input; `--json` prints one object a row, the table's rows.
"""
from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

from ..errors import UsageError, one_line, printable
from .common import given

if TYPE_CHECKING:
    from rich.text import Text

STYLE = {"regression": "red", "improvement": "green"}  # a row's change, when it has one
VERDICT_STYLE = {"same": "", "only in A": "dim", "only in B": "dim"}  # else; any other: yellow


def verdict_text(r: dict[str, Any]) -> Text:
    """The verdict cell: the verdict in its colour, then why it is only "unsure" where a run took
    too few samples to call a difference, the error text of the side that gave no time (B's when
    both have one), as plain text, and any failure beside a timed record: `B crashed: SIGSEGV`,
    `A error, B ok (A: boom)`, `same (B also crashed)`."""
    from rich.text import Text
    from ..report.compare import MIN_SAMPLES
    v = r["verdict"]
    t = Text(v, style=STYLE.get(r.get("change") or "", VERDICT_STYLE.get(v, "yellow")))
    pairs = r.get("run_verdicts")
    if pairs:  # more runs than one of a side: what the pairs of runs said
        runs = f"{r['a_runs']} A × {r['b_runs']} B runs"
        t.append(f" ({runs}: " + ", ".join(f"{n} {v}" for v, n in pairs.items()) + ")"
                 if len(pairs) > 1 else f" ({runs})")
    if r.get("few_samples"):  # why A's and B's files alone do not decide, with reruns too
        few = [f"{side} n={r.get(f'{side.lower()}_n') or '?'}" for side in "AB"
               if (r.get(f"{side.lower()}_n") or 0) < MIN_SAMPLES]
        t.append(f" ({', '.join(few)}: faster/slower needs {MIN_SAMPLES} samples a run)")
    if r.get("b_error") and r.get("b_status") != "ok":
        t.append(f": {printable(str(r['b_error']))}")
    elif r.get("a_error") and r.get("a_status") != "ok":
        a = printable(str(r["a_error"]))
        t.append(f" (A: {a})" if r.get("b_status") else f": {a}")
    for side in "AB":
        also = r.get(f"{side.lower()}_also")
        if also:
            t.append(f" ({side} also {', '.join(also)})", style="red")
    return t


def case_label(r: dict[str, Any], devices: bool, flushes: bool, thread_counts: bool = False
               ) -> str:
    """The impl cell: the impl, and what else sets the case apart from a row like it (warm, the
    flush mode or thread count where rows differ by it, the device where a file holds several)."""
    s = r["impl"] + (" (warm)" if r.get("warm") else "")
    if flushes and r.get("flush"):
        s += f" (flush {r['flush']})"
    if thread_counts and r.get("threads"):
        s += f" ({r['threads']} thread{'s' if r['threads'] != 1 else ''})"
    return s + (f" on {r['device']}" if devices and r.get("device") else "")


def caption(rows: list[dict[str, Any]], left_out: dict[str, int]) -> str | None:
    """What the table does not show: cases with no row, counted by what they were (`2 crashed in
    both; 1 skipped only in A`)."""
    parts = [f"{n} {what}" for what, n in left_out.items()]
    if not parts:
        return None if rows else "no case in either file"
    return ("not in the table (no time on either side, no change): " if rows
            else "nothing to compare: ") + "; ".join(parts)


def _median(r: dict[str, Any], side: str) -> str:
    """A side's median with ± half its interquartile range where it has one: the spread that
    faster / slower / same / unsure rest on."""
    from ..report.table import fmt_spread, fmt_time
    med, p25, p75 = (r.get(f"{side}_{k}") for k in ("median", "p25", "p75"))
    if med is None or p25 is None or p75 is None:
        return fmt_time(med)
    # below a microsecond in ns: a GPU kernel's spread of tens of ns is what its verdict rests on
    return f"{fmt_time(med)} ± {fmt_spread((p75 - p25) / 2)}"


def _same_run(path: str, recs: list[dict[str, Any]], other: str,
              other_recs: list[dict[str, Any]]) -> bool:
    """Whether two results files hold one run: the same file, or records of one run id."""
    try:
        if os.path.samefile(path, other):
            return True
    except OSError:
        pass
    ids = {r.get("run_id") for r in recs} - {None}
    return bool(ids & {r.get("run_id") for r in other_recs})


def command(args) -> int:
    from rich.table import Table
    from ..report.compare import compare, device, devices, keyer, not_compared, threads
    from ..report.table import console, plain, shape_text, title_text, word_width
    from ..results import ResultsError, read_results
    try:
        a, b = read_results(args.a), read_results(args.b)
        more = {side: [read_results(p) for p in paths]
                for side, paths in (("A", args.rerun_a), ("B", args.rerun_b))}
    except ResultsError as e:
        raise UsageError(str(e)) from None
    for side, recs, first, paths in (("A", a, args.a, args.rerun_a),
                                     ("B", b, args.b, args.rerun_b)):
        seen = [(first, recs)]
        for path, rs in zip(paths, more[side]):
            if rs and not {device(r) for r in rs} <= {device(r) for r in recs}:
                # one side, one build, one device (or the devices of a file that holds several)
                raise UsageError(f"{path}: measured on {devices(rs)}, {side}'s file on "
                                 f"{devices(recs)}: --rerun-{side.lower()} takes more runs of "
                                 f"{side} on its device")
            # a run given twice would count as two that agree
            same = next((p for p, ps in seen if _same_run(path, rs, p, ps)), None)
            if same is not None:
                raise UsageError(f"{path}: the same run as {same}: --rerun-{side.lower()} takes "
                                 f"other runs of {side}")
            # one that times none of the side's cases would add nothing to any verdict
            key = keyer(a, b)
            if not {key(r) for r in rs} & {key(r) for r in recs}:
                raise UsageError(f"{path}: none of its cases is in {side}'s file {first}: "
                                 f"--rerun-{side.lower()} takes more runs of {side}'s cases")
            seen.append((path, rs))
    rows = compare(a, b, more["A"], more["B"])
    if args.json:
        for r in rows:
            print(json.dumps(r))
        _one_run_note(args, a, b)
        _unfinished_notes(args, a, b)
        _machine_notes(a, b, more)
        return 0
    da, db = devices(a), devices(b)
    by_device = any(r.get("device") for r in rows)
    flushes = len({r.get("flush") for r in rows}) > 1
    thread_counts = len({r.get("threads") for r in rows}) > 1
    con = console()
    con.print("\n".join(f"{side}: {path}" + "".join(f" + {p}" for p in reruns)
                        for side, path, reruns in (("A", args.a, args.rerun_a),
                                                   ("B", args.b, args.rerun_b))),
              soft_wrap=True, markup=False)
    if by_device:
        con.print(f"A on {da}; B on {db}; each record is compared with the same device's",
                  soft_wrap=True, markup=False)
    else:
        con.print(f"both on {da}" if da == db else f"different devices: A on {da}, B on {db}; "
                  "each impl is compared with itself", soft_wrap=True, markup=False)
    ta, tb = ({threads(r) for r in recs} - {None} for recs in (a, b))
    if ta and tb and ta != tb:
        con.print(f"torch threads: A {', '.join(map(str, sorted(ta)))}, B "
                  f"{', '.join(map(str, sorted(tb)))}; records pair only at the same count "
                  "(a case at another count is only in A or only in B)",
                  soft_wrap=True, markup=False)
    t = Table(title="compare: B against A", header_style="bold")
    cols = ("op", "shape", "dtype", "impl", "A median", "B median", "B/A", "verdict")
    cells = [[plain(r["op"]), plain(shape_text(r["shape"])), plain(r["dtype"] or "-"),
              plain(case_label(r, by_device, flushes, thread_counts)),
              _median(r, "a"), _median(r, "b"),
              f"{r['ratio']:.3f}" if "ratio" in r else "-", verdict_text(r)] for r in rows]
    # the shape wraps between its fields, never inside one ("K=4096" over "96" reads K=40)
    numbers = ("A median", "B median", "B/A")  # what the shape's fixed width must not starve
    shape_w = word_width([(c, "right" if c in numbers else "left") for c in cols], cells,
                         list(range(len(cols))), "shape", con.width)
    for col in cols:
        # what names a row folds over lines rather than end in "…": cut, two shapes that differ
        # only in K would both read "M=1, N=14336…" on a 100-column terminal
        t.add_column(col, overflow="ellipsis" if col in numbers else "fold",
                     width=shape_w if col == "shape" else None)
    for row in cells:
        t.add_row(*row)
    cap = caption(rows, not_compared(a, b))
    if cap:
        t.caption = title_text(cap)
    con.print(t)
    _one_run_note(args, a, b)
    _unfinished_notes(args, a, b)
    _machine_notes(a, b, more)
    return 0


def _one_run_note(args, a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    """A note where A and B hold one run (the same file, or a run id in both): each of its cases
    is then compared with itself and reads same, which says nothing about a change."""
    if _same_run(args.a, a, args.b, b):
        print(one_line(f"decodewall: note: A ({args.a}) and B ({args.b}) hold the same run: its "
                       "cases read same against themselves; give B a run of the changed build"),
              file=sys.stderr)


def _unfinished_notes(args, a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    """A note for each side whose run stopped short of the cases it planned (results.unfinished):
    a case only in the other file may be one it never reached, not one it left out."""
    from ..results import unfinished
    for side, other, path, recs in (("A", "B", args.a, a), ("B", "A", args.b, b)):
        for _, last, of in unfinished(recs):
            print(one_line(f"decodewall: note: {side} ({path}): its run reached case {last} of "
                           f"{of} (it stopped, or is still going): a case only in "
                           f"{other} may be one it did not reach"), file=sys.stderr)


def _machine_notes(a: list[dict[str, Any]], b: list[dict[str, Any]],
                      more: dict[str, list[list[dict[str, Any]]]]) -> None:
    """run's notes on the machine (bench.notes: a shared CPU or GPU, a throttled GPU, several
    NUMA nodes, C kernels on one thread), for each side whose runs have one: a case timed so can
    read faster or slower for that alone."""
    from ..notes import notes
    for side, runs in (("A", [a, *more["A"]]), ("B", [b, *more["B"]])):
        recs = [r for rs in runs for r in rs]
        for note in notes(recs):
            print(one_line(f"decodewall: note: {side}: {note}"), file=sys.stderr)


def add_parser(sub) -> None:
    from ..report.compare import MIN_SAMPLES
    cp = sub.add_parser("compare", help="compare two results files case by case",
                        description="Compare two results files case by case, B against A: "
                        "faster / slower / same / unsure from both runs' spread, or the status "
                        "that changed (B crashed, A timeout, B ok, ...). Records pair only with "
                        "the same case: op, impl, shape, dtype, warm, the flush mode and the "
                        "torch thread count where both files record one, the device where a "
                        "file holds several. Faster / "
                        "slower need the interquartile ranges apart and at least "
                        f"{MIN_SAMPLES} samples in each run; with more runs of a side "
                        "(--rerun-a, --rerun-b), every pair of an A run and a B run to agree. "
                        "Exit 0 whatever the verdicts, 2 on bad input.")
    cp.add_argument("a", metavar="A.jsonl", type=given)  # "" would read as the current folder
    cp.add_argument("b", metavar="B.jsonl", type=given)
    for side in "ab":
        cp.add_argument(f"--rerun-{side}", metavar=f"{side.upper()}2.jsonl", type=given,
                        action="append", default=[],
                        help=f"another run of {side.upper()}'s build and cases (repeatable): a "
                        "shared machine's bandwidth drifts between runs, which one run's spread "
                        "does not show")
    cp.add_argument("--json", action="store_true", help="one JSON object a row")
    cp.set_defaults(func=command)
