"""compare's edges: the choice of record where a file holds a case more than once (a rerun
appended to the same suite's results: the last timed record stands for the case, the failures
beside it named), what makes two records one case, and what the table's cells say of it."""
from bench.report.compare import compare
from tests.bench.report.test_compare import ok


def test_the_last_timed_record_of_a_case_is_the_one_compared():
    """A case timed twice in A (a first, slow reading, then a rerun): B is judged against the
    rerun, as the last word on the case."""
    a = [ok("x", 2e-5), ok("x", 1e-5)]
    (row,) = compare(a, [ok("x", 1e-5)])
    assert row["verdict"] == "same" and row["a_median"] == 1e-5
    (row,) = compare([ok("x", 1e-5)], a[::-1])
    assert row["verdict"] == "slower" and row["b_median"] == 2e-5


def test_spreads_that_just_miss_each_other_are_a_difference():
    """Apart means the interquartile ranges do not overlap, by however little: no extra margin
    is asked for (nvbench-compare's rule, from both runs' noise)."""
    from bench.report.compare import classify
    a = {"median": 1.0, "p25": 0.99, "p75": 1.01, "n": 50}
    assert classify(a, {"median": 0.97, "p25": 0.965, "p75": 0.975, "n": 50}) == "faster"
    assert classify(a, {"median": 1.03, "p25": 1.025, "p75": 1.035, "n": 50}) == "slower"


def test_one_impl_at_two_dtypes_is_two_cases():
    """A bfloat16 and a float32 run of one impl are different kernels: each meets only its own
    dtype, and the dtype B lacks is "only in A", never judged against B's other dtype."""
    a = [ok("x", 1e-5), ok("x", 4e-5, dtype="float32")]
    rows = compare(a, [ok("x", 1e-5)])
    assert [(r["dtype"], r["verdict"], r["change"]) for r in rows] == [
        ("bfloat16", "same", None), ("float32", "only in A", None)]
    assert rows[0]["ratio"] == 1.0 and rows[1]["a_median"] == 4e-5


def test_an_ok_record_without_a_time_is_named_so_not_taken_for_timed():
    """An ok record with no time_s has nothing to compare a time with: the row says so, as a
    status row, rather than the case vanishing as "ok in both"."""
    from bench.report.compare import not_compared
    untimed = ok("x", time_s=None)
    (row,) = compare([untimed], [ok("x", 1e-5)])
    assert (row["verdict"], row["change"]) == ("A ok (no time), B ok", None)
    assert row["b_median"] == 1e-5 and "ratio" not in row and "a_median" not in row
    assert not not_compared([untimed], [ok("x", 1e-5)])
    # untimed on both sides: no row, counted under the name the verdict uses
    assert compare([untimed], [untimed]) == []
    assert dict(not_compared([untimed], [untimed])) == {"ok (no time) in both": 1}


def test_the_same_failure_beside_the_time_in_both_runs_is_no_regression():
    """A case that crashed once and was then timed, in A as in B: the crash is no news, so the
    row names it on both sides but is not a regression."""
    from tests.bench.report.test_compare import failed
    runs = [failed("x", "crashed", "SIGSEGV"), ok("x", 1e-5)]
    (row,) = compare(runs, list(runs))
    assert (row["verdict"], row["change"]) == ("same", None)
    assert (row["a_also"], row["b_also"]) == (["crashed"], ["crashed"])


def test_every_failure_beside_the_time_is_named():
    """B crashed, then timed out, then was timed: the row names both failures, in order, not
    just the first."""
    from bench.cli.compare import verdict_text
    from tests.bench.report.test_compare import failed
    b = [failed("x", "crashed", "SIGSEGV"), failed("x", "timeout", "past 4 s"), ok("x", 1e-5)]
    (row,) = compare([ok("x", 1e-5)], b)
    assert row["b_also"] == ["crashed", "timeout"] and row["change"] == "regression"
    assert str(verdict_text(row)) == "same (B also crashed, timeout)"


def test_the_table_names_the_flush_mode_where_rows_differ_by_it(tmp_path, capsys):
    """Two flush modes of one case are two rows with the same impl: the impl cell says which
    mode each is, and says nothing of it where every row has one mode."""
    from bench.cli import main
    from tests.bench.report.test_compare import write
    a = write(tmp_path / "a.jsonl", [ok("x", 1e-5, flush="read"), ok("x", 2e-5, flush="memset")])
    b = write(tmp_path / "b.jsonl", [ok("x", 1e-5, flush="read"), ok("x", 2e-5, flush="memset")])
    assert main(["compare", a, b]) == 0
    out = capsys.readouterr().out
    assert "x (flush read)" in out and "x (flush memset)" in out
    one = write(tmp_path / "one.jsonl", [ok("x", 1e-5, flush="read")])
    assert main(["compare", one, one]) == 0
    assert "(flush" not in capsys.readouterr().out


def test_the_few_samples_note_names_only_the_short_run():
    """Apart spreads with 10 samples in A and 3 in B: only B is short of MIN_SAMPLES (10 is
    enough), so the note names B alone."""
    from bench.cli.compare import verdict_text
    from tests.bench.report.test_compare import timing
    (row,) = compare([ok("x", time_s=timing(1e-5, 10))], [ok("x", time_s=timing(2e-5, 3))])
    assert (row["verdict"], row["few_samples"]) == ("unsure", True)
    assert str(verdict_text(row)) == "unsure (B n=3: faster/slower needs 10 samples a run)"
