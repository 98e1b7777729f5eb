"""Pins on reading a results file back: a record whose fields a reader would divide by, index
or hash wrongly is refused with a ResultsError naming its line and field, never read."""
from __future__ import annotations

import json

import pytest

from bench.results import ResultsError, read_results

GOOD = {"op": "gemv_bf16", "impl": "a", "shape": {"M": 1, "N": 8, "K": 8}, "status": "ok",
        "time_s": {"median": 1e-3, "p25": 1e-3, "p75": 1e-3, "n": 5}}


@pytest.mark.parametrize("change, why", [
    ({"time_s": {"median": 0, "p25": 0, "p75": 0}}, "time_s.median must be seconds"),
    ({"time_s": {"median": 0.0, "p25": 0.0, "p75": 1e-3}}, "time_s.median must be seconds"),
    ({"time_s": [1e-3, 1e-3, 1e-3]}, "time_s must be an object, got an array"),
    ({"shape": {"M": -1, "N": 8, "K": 8}}, "shape field 'M' must be a whole number"),
    ({"op": 5}, "op and impl must be strings"),
    ({"impl": ["a"]}, "op and impl must be strings"),
])
def test_a_field_no_reader_can_use_is_refused_with_its_line(tmp_path, change, why):
    """A time of 0 s (a rate would divide by it), a time summary that is an array (readers take
    its median by key), a negative size, an op or impl that is not text (a case's key must
    hash and sort): each names the file's line and the field, after a good first line."""
    f = tmp_path / "r.jsonl"
    f.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, **change}) + "\n")
    with pytest.raises(ResultsError, match=f"r.jsonl:2: malformed record \\({why}") as e:
        read_results(f)
    assert "\n" not in str(e.value)
    assert read_results(f, skipped := []) == [GOOD] and len(skipped) == 1
