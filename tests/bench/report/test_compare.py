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
            "time_s": {"median": median, "p25": median * 0.99, "p75": median * 1.01, "n": 100},
            **kw}


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
                             "dtype": "bfloat16", "warm": False, "flush": None, "device": None,
                             "threads": None, "a_median": 5e-5, "a_gbps": 5.0,
                             "verdict": "B error", "b_error": "RuntimeError: kaput",
                             "change": "regression", "a_status": "ok", "b_status": "error"}


def test_cli_caption_when_nothing_compares(tmp_path, capsys):
    f = write(tmp_path / "f.jsonl", [failed("x", "crashed", "SIGSEGV"),
                                     failed("y", "crashed", "SIGSEGV")])
    assert main(["compare", f, f]) == 0
    assert "nothing to compare: 2 crashed in both" in capsys.readouterr().out


def timing(median: float, n: int | None, spread: float = 0.001) -> dict:
    t = {"median": median, "p25": median * (1 - spread), "p75": median * (1 + spread)}
    return t if n is None else {**t, "n": n}


def test_too_few_samples_never_make_a_difference_significant(tmp_path, capsys):
    """Quartiles of a handful of samples miss each other by chance (at n = 1 the IQR is a point,
    so any two medians would be "apart"): below 10 samples a run, or with n unknown, apart
    spreads are "unsure", said why; at 10 they decide."""
    for n_a, n_b in ((1, 1), (5, 5), (5, 1000), (None, 1000)):
        (row,) = compare([ok("x", time_s=timing(1e-5, n_a))],
                         [ok("x", time_s=timing(1.01e-5, n_b))])
        assert (row["verdict"], row["change"], row["few_samples"]) == ("unsure", None, True)
    (row,) = compare([ok("x", time_s=timing(1e-5, 10))], [ok("x", time_s=timing(1.01e-5, 10))])
    assert (row["verdict"], row["change"], "few_samples" in row) == ("slower", "regression", False)
    assert (row["a_n"], row["b_n"]) == (10, 10)
    same = compare([ok("x", time_s=timing(1e-5, 1, 0.0))], [ok("x", time_s=timing(1e-5, 1, 0.0))])
    assert same[0]["verdict"] == "same"
    a = write(tmp_path / "a.jsonl", [ok("x", time_s=timing(1e-5, 3))])
    b = write(tmp_path / "b.jsonl", [ok("x", time_s=timing(2e-5, 400))])
    assert main(["compare", a, b]) == 0
    assert "unsure (A n=3: faster/slower needs 10 samples a run)" in capsys.readouterr().out


def test_time_summary_out_of_order_is_bad_input(tmp_path, capsys):
    """A record whose quartiles are not in order, or whose sample count is not a count, is
    corrupt: one line naming file:line, exit 2, not a verdict."""
    from tests.helpers import one_error_line
    good = write(tmp_path / "good.jsonl", [ok("x", time_s=timing(1e-5, 100))])
    for t, field in (({"median": 1e-5, "p25": 2e-5, "p75": 0.5e-5, "n": 100}, "p25 <= median"),
                     ({"median": 1e-5, "p25": 0.9e-5, "p75": 0.95e-5, "n": 100}, "p25 <= median"),
                     ({**timing(1e-5, None), "n": "many"}, "time_s.n"),
                     ({**timing(1e-5, None), "n": 0}, "time_s.n"),
                     ({**timing(1e-5, None), "n": 2.5}, "time_s.n")):
        bad = write(tmp_path / "bad.jsonl", [ok("x", time_s=timing(1e-5, 100)), ok("x", time_s=t)])
        for argv in (["compare", good, bad], ["compare", bad, good, "--json"]):
            line = one_error_line(capsys, argv)
            assert "bad.jsonl:2: malformed record" in line and field in line, line


def test_records_pair_only_with_the_same_flush_mode():
    """On CUDA each record says how the L2 was flushed; two modes of one case are two cases,
    never one record compared with the other's."""
    a = [ok("x", 1e-5, flush="read"), ok("x", 2e-5, flush="memset")]
    rows = compare(a, [ok("x", 1e-5, flush="read")])
    assert [(r["flush"], r["verdict"]) for r in rows] == [("read", "same"),
                                                          ("memset", "only in A")]
    assert [r["verdict"] for r in compare(a, a)] == ["same", "same"]
    # a file without flush modes (the CPU rotates inputs instead) pairs as before
    assert [r["verdict"] for r in compare([ok("x")], [ok("x", flush="read")])] == ["same"]


def cpu(impl: str, median: float = 5e-5, threads: int | None = 2) -> dict:
    return ok(impl, median, device={"name": "box", "threads": threads})


def test_records_pair_only_with_the_same_thread_count(tmp_path, capsys):
    """A CPU record says how many torch threads timed it: a case on 2 threads and on 8 is two
    cases, as two flush modes are, never one record judged against the other's."""
    rows = compare([cpu("x", 1e-5, 2), cpu("y", 1e-5, 2)], [cpu("x", 4e-6, 8), cpu("y", 1e-5, 2)])
    assert [(r["impl"], r["threads"], r["verdict"]) for r in rows] == [
        ("y", 2, "same"), ("x", 2, "only in A"), ("x", 8, "only in B")]
    assert all(r["change"] is None for r in rows)
    # a file that does not record its thread count (CUDA) pairs as before
    assert [r["verdict"] for r in compare([cpu("x")], [ok("x")])] == ["same"]
    fa = write(tmp_path / "a.jsonl", [cpu("x", 1e-5, 2)])
    fb = write(tmp_path / "b.jsonl", [cpu("x", 4e-6, 8)])
    assert main(["compare", fa, fb]) == 0
    out = capsys.readouterr().out
    assert "torch threads: A 2, B 8; records pair only at the same count" in out
    assert "x (2 threads)" in out and "x (8 threads)" in out and "faster" not in out


def test_a_file_holding_several_devices_pairs_records_by_device(tmp_path, capsys):
    """Two devices in one file: each record meets the same device's record of the case, not
    whichever came last; the table names the device of each row."""
    gpu = {"backend": "cuda", "device": {"name": "H200"}}
    a = [ok("x", 1e-3), ok("x", 1e-5, **gpu)]
    rows = compare(a, [ok("x", 1e-3), ok("x", 2e-5, **gpu)])
    assert [(r["device"], r["verdict"], r["ratio"]) for r in rows] == [
        ("box (cpu)", "same", 1.0), ("H200 (cuda)", "slower", 2.0)]
    rows = compare(a, [ok("x", 1e-5, **gpu)])
    assert [(r["device"], r["verdict"]) for r in rows] == [("H200 (cuda)", "same"),
                                                           ("box (cpu)", "only in A")]
    fa, fb = write(tmp_path / "a.jsonl", a), write(tmp_path / "b.jsonl", a[::-1])
    assert main(["compare", fa, fb]) == 0
    out = capsys.readouterr().out
    assert "x on box (cpu)" in out and "x on H200 (cuda)" in out
    assert "compared with the same device's" in out


def test_cpus_of_one_name_and_another_isa_are_different_devices(tmp_path, capsys):
    """A VM names a Zen 3 and a Zen 5 alike: the records' isa tells them apart, so the files are
    compared across devices (each impl with itself) and said to be."""
    zen3 = ok("x", 2e-5, device={"name": "AMD EPYC", "isa": "avx2"})
    zen5 = ok("x", 1e-5, device={"name": "AMD EPYC", "isa": "avx512f"})
    from bench.report.compare import device
    assert device(zen3) == "AMD EPYC avx2 (cpu)" and device(zen5) == "AMD EPYC avx512f (cpu)"
    assert device(ok("x")) == "box (cpu)"  # a record without isa (older files, GPUs)
    assert main(["compare", write(tmp_path / "a.jsonl", [zen3]), write(tmp_path / "b.jsonl", [zen5])]) == 0
    assert ("different devices: A on AMD EPYC avx2 (cpu), B on AMD EPYC avx512f (cpu)"
            in capsys.readouterr().out)


def test_a_failure_beside_a_timed_record_of_the_case_is_shown():
    """A file holding a case twice, timed once and crashed once: the time is compared and the
    crash named on the row, a regression when only B failed."""
    (row,) = compare([ok("x")], [ok("x"), failed("x", "crashed", "SIGSEGV")])
    assert (row["verdict"], row["b_also"], row["change"]) == ("same", ["crashed"], "regression")
    (row,) = compare([failed("x", "timeout", "t"), ok("x")], [ok("x")])
    assert (row["verdict"], row["a_also"], row["change"]) == ("same", ["timeout"], None)
    from bench.cli.compare import verdict_text
    (row,) = compare([ok("x")], [failed("x", "error", "e"), ok("x", 9e-5)])
    assert str(verdict_text(row)) == "slower (B also error)"
    # a failure behind a skip is the one shown
    (row,) = compare([ok("x")], [failed("x", "crashed", "SIGBUS"), failed("x", "skipped", "no")])
    assert (row["verdict"], row["b_error"]) == ("B crashed", "SIGBUS")


def test_the_table_and_json_show_the_spread_each_verdict_rests_on(tmp_path, capsys):
    """faster / slower / same / unsure rest on both runs' interquartile ranges: each median is
    shown with ± half its IQR, and --json carries the quartiles."""
    a = write(tmp_path / "a.jsonl", [ok("k", 1e-3)])
    b = write(tmp_path / "b.jsonl", [{**ok("k", 0.9e-3), "time_s": {"median": 0.9e-3, "p25": 0.8e-3,
                                                                     "p75": 1.0e-3, "n": 100}}])
    assert main(["compare", a, b]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "│ k" in line or " k " in line)
    assert "1.00 ms ± 10.0 µs" in row and "900.0 µs ± 100.0 µs" in row, row
    assert main(["compare", a, b, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    gpu = write(tmp_path / "g.jsonl", [{**ok("k", 12e-6), "time_s": {"median": 12e-6, "p25": 11.98e-6,
                                                                      "p75": 12.02e-6, "n": 500}}])
    assert main(["compare", gpu, gpu]) == 0  # a spread of tens of ns, not "± 0.0 µs"
    assert "12.0 µs ± 20 ns" in capsys.readouterr().out
    assert (r["a_p25"], r["a_p75"], r["b_p25"], r["b_p75"]) == (0.99e-3, 1.01e-3, 0.8e-3, 1.0e-3)


def test_reruns_make_the_verdict_rest_on_every_pair_of_runs(tmp_path, capsys):
    """A shared machine's bandwidth drifts between runs, which one run's spread does not show:
    two runs of A 7% apart with tight spreads, B inside that drift. With A's second run the
    verdict rests on every pair of runs: "unsure" where they disagree, a change past the drift
    still decides, and a second run's failure of the case is named as a failure beside it is."""
    a1, a2 = (ok("x", time_s=timing(m, 200, 0.01)) for m in (1e-3, 0.93e-3))
    b = ok("x", time_s=timing(0.925e-3, 200, 0.01))
    (row,) = compare([a1], [b])
    assert (row["verdict"], row["a_runs"], row["b_runs"], "run_verdicts" in row) == (
        "faster", 1, 1, False)
    (row,) = compare([a1], [b], [[a2]])
    assert (row["verdict"], row["change"], row["a_runs"]) == ("unsure", None, 2)
    assert row["run_verdicts"] == {"faster": 1, "same": 1}
    assert row["a_median"] == 1e-3  # the row is A's file's; the rerun adds to the verdict
    fast = ok("x", time_s=timing(0.7e-3, 200, 0.01))
    (row,) = compare([a1], [fast], [[a2]], [[{**fast, "time_s": timing(0.71e-3, 200, 0.01)}]])
    assert (row["verdict"], row["change"], row["run_verdicts"]) == (
        "faster", "improvement", {"faster": 4})
    (row,) = compare([a1], [b], [[]], [[failed("x", "crashed", "SIGSEGV")]])
    assert (row["b_also"], row["change"], row["b_runs"]) == (["crashed"], "regression", 1)
    (row,) = compare([a1], [b], [[ok("y")]])  # a rerun without the case adds nothing
    assert (row["verdict"], row["a_runs"]) == ("faster", 1)

    fa, fa2, fb = (write(tmp_path / f"{n}.jsonl", [r]) for n, r in (("a", a1), ("a2", a2),
                                                                      ("b", b)))
    assert main(["compare", fa, fb, "--rerun-a", fa2]) == 0
    out = capsys.readouterr().out
    assert f"A: {fa} + {fa2}" in out and "unsure (2 A × 1 B runs: 1 faster, 1 same)" in out
    assert main(["compare", fa, fb, "--rerun-a", fa2, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_verdicts"] == {"faster": 1, "same": 1}
    from tests.helpers import one_error_line
    other = write(tmp_path / "gpu.jsonl", [{**a2, "backend": "cuda", "device": {"name": "H200"}}])
    line = one_error_line(capsys, ["compare", fa, fb, "--rerun-b", other])
    assert "gpu.jsonl: measured on H200 (cuda), B's file on box (cpu)" in line, line
    line = one_error_line(capsys, ["compare", fa, fb, "--rerun-a", str(tmp_path / "none.jsonl")])
    assert "none.jsonl: no such file" in line, line
    # a file of other cases (the wrong run picked) would add nothing and say so nowhere
    elsewhere = write(tmp_path / "y.jsonl", [ok("y")])
    line = one_error_line(capsys, ["compare", fa, fb, "--rerun-b", elsewhere])
    assert "y.jsonl: none of its cases is in B's file" in line, line


def test_a_run_given_twice_is_not_two_runs(tmp_path, capsys):
    """A's file again as --rerun-a (or a copy of it, one run id) would read "faster (2 A × 1 B
    runs)", one run counted as two that agree: it is refused. A rerun of a file holding two
    devices' records may list them in another order."""
    from tests.helpers import one_error_line
    a1, a2 = ({**ok("x", time_s=timing(m, 200, 0.01)), "run_id": rid}
              for m, rid in ((1e-3, "r1"), (0.93e-3, "r2")))
    b = {**ok("x", time_s=timing(0.7e-3, 200, 0.01)), "run_id": "r3"}
    fa, fb = write(tmp_path / "a.jsonl", [a1]), write(tmp_path / "b.jsonl", [b])
    copy = write(tmp_path / "copy.jsonl", [a1])
    fa2 = write(tmp_path / "a2.jsonl", [a2])
    for argv in (["--rerun-a", fa], ["--rerun-a", copy], ["--rerun-a", fa2, "--rerun-a", fa2]):
        line = one_error_line(capsys, ["compare", fa, fb, *argv])
        assert "the same run as" in line and "--rerun-a takes other runs of A" in line, line
    line = one_error_line(capsys, ["compare", fa, fb, "--rerun-b", fb])
    assert "--rerun-b takes other runs of B" in line, line
    assert main(["compare", fa, fb, "--rerun-a", fa2]) == 0
    assert "faster (2 A × 1 B runs)" in capsys.readouterr().out
    gpu = {"backend": "cuda", "device": {"name": "H200"}}
    two = write(tmp_path / "two.jsonl", [a1, {**a1, **gpu}])
    again = write(tmp_path / "two2.jsonl", [{**a2, **gpu}, a2])
    assert main(["compare", two, two, "--rerun-a", again]) == 0
    capsys.readouterr()


def test_with_reruns_an_unsure_row_still_says_its_runs_took_too_few_samples(tmp_path, capsys,
                                                                            monkeypatch):
    """Every pair of runs is "unsure" because each took 5 samples: "unsure (2 A × 1 B runs)"
    alone reads as runs that disagree, so the sample count that decides it is named, as it is
    without a rerun."""
    a1, a2 = (ok("x", time_s=timing(m, 5, 0.01)) for m in (1e-3, 0.99e-3))
    b = ok("x", time_s=timing(0.7e-3, 5, 0.01))
    fa, fa2, fb = (write(tmp_path / f"{n}.jsonl", [r]) for n, r in (("a", a1), ("a2", a2),
                                                                      ("b", b)))
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["compare", fa, fb, "--rerun-a", fa2]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "unsure (2 A × 1 B runs)" in out and "needs 10 samples a run" in out, out


def test_compare_names_a_side_timed_on_a_busy_cpu(tmp_path, capsys):
    """A case timed while other work waited for the CPU can read slower for that alone: compare
    says which side's runs (a rerun's too) run noted so, in --json as well; quiet runs, none."""
    a = ok("x", time_s=timing(1e-3, 200, 0.01))
    b = ok("x", time_s=timing(1.2e-3, 200, 0.01))
    fa, fb = write(tmp_path / "a.jsonl", [a]), write(tmp_path / "b.jsonl", [b])
    assert main(["compare", fa, fb]) == 0
    assert "note" not in capsys.readouterr().err
    busy = write(tmp_path / "b2.jsonl", [{**b, "cpu_pressure_pct": 40.0, "run_id": "r9"}])
    for extra in ([], ["--json"]):
        assert main(["compare", fa, fb, "--rerun-b", busy, *extra]) == 0
        err = capsys.readouterr().err
        assert "note: B: 1 of 2 timed case(s) ran while other tasks waited" in err, err
        assert "note: A:" not in err, err


def test_a_and_b_of_one_run_say_so(tmp_path, capsys):
    """A run given as both A and B (the same file, or a copy: one run id) reads "same" on every
    row, as a change that made no difference would: a note says the two are one run."""
    a = {**ok("x", time_s=timing(1e-3, 200, 0.01)), "run_id": "r1"}
    b = {**ok("x", time_s=timing(0.7e-3, 200, 0.01)), "run_id": "r2"}
    fa, fb = write(tmp_path / "a.jsonl", [a]), write(tmp_path / "b.jsonl", [b])
    copy = write(tmp_path / "copy.jsonl", [a])
    for argv in ([fa, fa], [fa, copy], [fa, copy, "--json"]):
        assert main(["compare", *argv]) == 0
        assert "hold the same run" in capsys.readouterr().err
    assert main(["compare", fa, fb]) == 0
    assert "same run" not in capsys.readouterr().err
