"""compare's choice of record where a file holds a case more than once (a rerun appended to the
same suite's results): the last timed record stands for the case."""
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
