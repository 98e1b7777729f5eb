"""`compare`: a case whose status changed between the runs is a row with both statuses and the
error text, a regression where B fails as where B is slower; what has no row is counted."""
from __future__ import annotations

import json
from pathlib import Path

from bench.cli import main
from bench.report.compare import compare, not_compared

SHAPE = {"M": 1, "N": 256, "K": 512}


def ok(impl: str, median: float = 5e-5, **kw) -> dict:
    return {"op": "gemv_bf16", "impl": impl, "shape": SHAPE, "dtype": "bfloat16", "status": "ok",
            "backend": "cpu", "device": {"name": "box"}, "error": None, "achieved_gbps": 5.0,
            "time_s": {"median": median, "p25": median * 0.99, "p75": median * 1.01}, **kw}


def failed(impl: str, status: str, error: str | None) -> dict:
    return {**ok(impl), "status": status, "error": error, "time_s": None, "achieved_gbps": None}


def write(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


# what the flaky plugin gave: every impl ok in A; in B each fails a different way
A = [ok("torch_matmul", 4.5e-5), ok("f_crash"), ok("f_hang"), ok("f_wrong"), ok("f_err"),
     ok("f_skip")]
B = [failed("torch_matmul", "timeout", "ran past --case-timeout 4 s and was killed"),
     failed("f_crash", "crashed", "the worker died: SIGSEGV (Segmentation fault)"),
     failed("f_hang", "timeout", "ran past --case-timeout 4 s and was killed"),
     failed("f_wrong", "failed-check", "rel err 0.999 > tolerance 0.01"),
     failed("f_err", "error", "RuntimeError: kaput"),
     failed("f_skip", "skipped", "no C compiler")]


def test_a_case_ok_in_a_that_fails_in_b_is_a_regression_with_bs_error():
    rows = {r["impl"]: r for r in compare(A, B)}
    assert {i: r["verdict"] for i, r in rows.items()} == {
        "torch_matmul": "B timeout", "f_crash": "B crashed", "f_hang": "B timeout",
        "f_wrong": "B failed-check", "f_err": "B error", "f_skip": "B skipped"}
    assert rows["f_crash"]["b_error"] == "the worker died: SIGSEGV (Segmentation fault)"
    assert rows["f_crash"]["a_median"] == 5e-5 and "b_median" not in rows["f_crash"]
    assert (rows["f_crash"]["a_status"], rows["f_crash"]["b_status"]) == ("ok", "crashed")
    assert {i: r["change"] for i, r in rows.items()} == {
        **{i: "regression" for i in rows}, "f_skip": None}  # skipped is not a failure
    assert not any(r["verdict"].startswith("only in") for r in rows.values())


def test_a_case_failing_in_a_and_ok_in_b_is_an_improvement():
    rows = {r["impl"]: r for r in compare(B, A)}
    assert rows["f_crash"]["verdict"] == "A crashed, B ok"
    assert rows["f_crash"]["change"] == "improvement"
    assert rows["f_crash"]["a_error"].startswith("the worker died")
    assert rows["f_crash"]["b_median"] == 5e-5 and "a_median" not in rows["f_crash"]
    assert rows["f_skip"]["verdict"] == "A skipped, B ok" and rows["f_skip"]["change"] is None


def test_timed_rows_say_regression_for_slower_and_improvement_for_faster():
    rows = {r["impl"]: r for r in compare([ok("x", 1e-5), ok("y", 1e-5), ok("z", 1e-5)],
                                          [ok("x", 2e-5), ok("y", 0.5e-5), ok("z", 1e-5)])}
    assert [(r["verdict"], r["change"]) for r in rows.values()] == [
        ("slower", "regression"), ("faster", "improvement"), ("same", None)]
    assert all((r["a_status"], r["b_status"]) == ("ok", "ok") for r in rows.values())


def test_status_rows_between_failures_and_cases_in_one_file():
    a = [failed("both_crash", "crashed", "x"), failed("changed", "error", "boom"),
         failed("skip_a", "skipped", "no cc"), failed("gone", "crashed", "SIGSEGV"),
         ok("ok_a")]
    b = [failed("both_crash", "crashed", "y"), failed("changed", "crashed", "SIGBUS"),
         failed("new", "timeout", "past 300 s"), ok("ok_b"), failed("skip_b", "skipped", "no lib")]
    rows = {r["impl"]: r for r in compare(a, b)}
    assert {i: r["verdict"] for i, r in rows.items()} == {
        "changed": "A error, B crashed", "gone": "only in A (crashed)", "ok_a": "only in A",
        "new": "only in B (timeout)", "ok_b": "only in B"}
    assert rows["changed"]["change"] is None  # one failure for another
    assert rows["changed"]["b_error"] == "SIGBUS" and rows["changed"]["a_error"] == "boom"
    assert [r["impl"] for r in compare(a, b)] == ["changed", "gone", "ok_a", "new", "ok_b"]
    # no row: nothing to compare, but counted
    assert dict(not_compared(a, b)) == {"crashed in both": 1, "skipped only in A": 1,
                                        "skipped only in B": 1}


def test_a_file_holding_a_case_twice_compares_its_timed_record():
    a = [ok("x", 1e-5), failed("x", "crashed", "later")]
    assert [r["verdict"] for r in compare(a, [ok("x", 1e-5)])] == ["same"]
    assert [r["verdict"] for r in compare([failed("y", "error", "e"), failed("y", "crashed", "c")],
                                          [ok("y")])] == ["A crashed, B ok"]


def test_cli_shows_status_changes_with_error_text_and_exits_0(tmp_path, capsys):
    """Every case ok in A and failing in B is shown with B's status and error, not as "only in
    A"."""
    a = write(tmp_path / "a.jsonl", A + [failed("dead", "crashed", "x")])
    b = write(tmp_path / "b.jsonl", B + [failed("dead", "crashed", "y")])
    assert main(["compare", a, b]) == 0  # exit 0 whatever the verdicts, as for "slower"
    out = capsys.readouterr().out
    for text in ("B crashed: the worker died: SIGSEGV (Segmentation fault)",
                 "B timeout: ran past --case-timeout 4 s and was killed",
                 "B failed-check: rel err 0.999 > tolerance 0.01", "B error: RuntimeError: kaput",
                 "B skipped: no C compiler", "1 crashed in both"):
        assert text in out, text
    assert "only in" not in out
    assert main(["compare", b, a]) == 0
    out = capsys.readouterr().out
    assert "A crashed, B ok (A: the worker died: SIGSEGV (Segmentation fault))" in out
    assert main(["compare", a, b, "--json"]) == 0
    rows = {r["impl"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(rows) == {r["impl"] for r in A}
    assert rows["f_err"] == {"op": "gemv_bf16", "impl": "f_err", "shape": SHAPE,
                             "dtype": "bfloat16", "a_median": 5e-5, "a_gbps": 5.0,
                             "verdict": "B error", "b_error": "RuntimeError: kaput",
                             "change": "regression", "a_status": "ok", "b_status": "error"}


def test_cli_caption_when_nothing_compares(tmp_path, capsys):
    f = write(tmp_path / "f.jsonl", [failed("x", "crashed", "SIGSEGV"),
                                     failed("y", "crashed", "SIGSEGV")])
    assert main(["compare", f, f]) == 0
    assert "nothing to compare: 2 crashed in both" in capsys.readouterr().out
