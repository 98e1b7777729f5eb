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


def _table_row(capsys, a: list[dict], b: list[dict], tmp_path, impl: str = "x") -> list[str]:
    """`compare A B`'s table row of `impl`, its cells stripped."""
    from bench.cli import main
    from tests.bench.report.test_compare import write
    fa, fb = write(tmp_path / "a.jsonl", a), write(tmp_path / "b.jsonl", b)
    assert main(["compare", fa, fb]) == 0
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if f"│ {impl}" in x]
    return [c.strip() for c in line.split("│")[1:-1]]


def test_the_table_shows_a_under_a_and_b_under_b_with_the_ratio(tmp_path, capsys):
    """A's median in the A column, B's in the B column, and B/A to three places."""
    from tests.bench.report.test_compare import timing
    row = _table_row(capsys, [ok("x", time_s=timing(1e-3, 100, 0.01))],
                     [ok("x", time_s=timing(0.9e-3, 100, 0.01))], tmp_path)
    assert row[4:7] == ["1.00 ms ± 10.0 µs", "900.0 µs ± 9.0 µs", "0.900"], row


def test_a_spread_under_a_microsecond_is_in_nanoseconds(tmp_path, capsys):
    from tests.bench.report.test_compare import timing
    row = _table_row(capsys, [ok("x", time_s=timing(1e-4, 100, 0.005))],
                     [ok("x", time_s=timing(1e-4, 100, 0.005))], tmp_path)
    assert row[4] == "100.0 µs ± 500 ns", row


def test_the_impl_cell_says_warm_and_the_thread_count(tmp_path, capsys):
    """A warm case (the size sweep) says so; one torch thread is "1 thread"."""
    from bench.cli import main
    from tests.bench.report.test_compare import cpu, write
    row = _table_row(capsys, [ok("x", warm=True)], [ok("x", warm=True)], tmp_path)
    assert row[3] == "x (warm)", row
    one, two = cpu("x", 1e-5, 1), cpu("x", 1e-5, 2)
    fa, fb = write(tmp_path / "a.jsonl", [one]), write(tmp_path / "b.jsonl", [two])
    assert main(["compare", fa, fb]) == 0
    out = capsys.readouterr().out
    assert "x (1 thread) " in out and "x (2 threads)" in out


def test_no_thread_line_where_one_file_does_not_record_its_count(tmp_path, capsys):
    """CUDA records carry no thread count: a CPU file against one is no thread mismatch."""
    from bench.cli import main
    from tests.bench.report.test_compare import cpu, write
    assert main(["compare", write(tmp_path / "a.jsonl", [cpu("x", 1e-5, 4)]),
                 write(tmp_path / "b.jsonl", [ok("x", 1e-5)])]) == 0
    assert "torch threads" not in capsys.readouterr().out


def test_the_verdict_cell_of_a_case_in_one_file_only():
    """The failure of a case only in A is named after the verdict; n unknown reads as '?'."""
    from bench.cli.compare import verdict_text
    from tests.bench.report.test_compare import failed, timing
    row = compare([failed("x", "crashed", "SIGSEGV")], [ok("y")])[0]
    assert str(verdict_text(row)) == "only in A (crashed): SIGSEGV"
    (row,) = compare([ok("x", time_s=timing(1e-5, None))], [ok("x", time_s=timing(2e-5, 100))])
    assert str(verdict_text(row)) == "unsure (A n=?: faster/slower needs 10 samples a run)"


def test_the_caption_says_what_has_no_row_beside_the_rows(tmp_path, capsys):
    from bench.cli import main
    from tests.bench.report.test_compare import failed, write
    f = write(tmp_path / "f.jsonl", [ok("x"), failed("y", "crashed", "SIGSEGV")])
    assert main(["compare", f, f]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "not in the table (no time on either side, no change): 1 crashed in both" in out


def test_same_is_within_the_larger_half_spread():
    """Overlapping spreads: a shift within the noisier run's half-IQR is "same", even where the
    quieter run's alone would not explain it."""
    from bench.report.compare import classify
    quiet = {"median": 1.0, "p25": 0.99, "p75": 1.01, "n": 50}
    noisy = {"median": 1.05, "p25": 0.9, "p75": 1.2, "n": 50}
    assert classify(quiet, noisy) == "same" and classify(noisy, quiet) == "same"


def test_the_order_of_a_shapes_fields_does_not_make_another_case():
    """A shape is its fields: {M, N, K} and {K, N, M} are one case (a record written by another
    version, a hand-edited file)."""
    a = ok("x", 1e-5, shape={"M": 1, "N": 256, "K": 512})
    b = ok("x", 1e-5, shape={"K": 512, "N": 256, "M": 1})
    (row,) = compare([a], [b])
    assert row["verdict"] == "same" and list(row["shape"]) == ["M", "N", "K"]


def test_a_timed_row_carries_each_sides_bandwidth():
    (row,) = compare([ok("x", 1e-5, achieved_gbps=10.0)], [ok("x", 2e-5, achieved_gbps=5.0)])
    assert (row["a_gbps"], row["b_gbps"]) == (10.0, 5.0)


def test_a_cold_record_pairs_with_a_failure_that_has_no_cold_field():
    """Every timed record of a run says `cold` (true), a crashed one does not: they are one case,
    and a cold record is not a warm one."""
    from tests.bench.report.test_compare import failed
    (row,) = compare([ok("x", cold=True, warm=False)], [failed("x", "crashed", "SIGSEGV")])
    assert (row["verdict"], row["warm"], row["change"]) == ("B crashed", False, "regression")


def test_a_record_without_a_device_name_is_an_unknown_device():
    from bench.report.compare import device, devices, threads
    assert device({"backend": "cpu"}) == "unknown device (cpu)"
    assert devices([{}, {"device": {"name": ""}}]) == "unknown device (?)"
    assert threads({"device": {"threads": True}}) is None  # true is no thread count
