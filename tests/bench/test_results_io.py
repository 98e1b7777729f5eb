"""What the writer puts on disk must be JSON any reader parses (jq, pandas, another language), and
what the input-building path hands the impls must be on the device they run on."""
import json
import math

import pytest
import torch

from bench.case import make_inputs
from bench.results import ResultsError, ResultWriter, read_results


def _strict(line: str) -> dict:
    """JSON as RFC 8259 has it: NaN and Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(line, parse_constant=refuse)


def test_a_non_finite_number_is_written_as_null(tmp_path):
    """A failed check's rel_err can be NaN or inf (an output of NaN): Python's json would write
    `NaN`, which strict readers refuse; the record says null instead, nested values included."""
    w = ResultWriter(tmp_path, "run")
    w.write({"op": "gemv_bf16", "impl": "x", "shape": {"M": 1}, "status": "failed-check",
             "rel_err": math.nan, "pct_roof": math.inf, "time_s": None,
             "device": {"clocks": {"mhz": -math.inf}}, "extra": [1.0, math.nan]})
    w.close()
    (line,) = (tmp_path / "run.jsonl").read_text().splitlines()
    rec = _strict(line)
    assert rec["rel_err"] is None and rec["pct_roof"] is None
    assert rec["device"]["clocks"]["mhz"] is None and rec["extra"] == [1.0, None]
    assert read_results(tmp_path / "run.jsonl")[0]["rel_err"] is None


@pytest.mark.parametrize("n", [0, -3, 1.5, True, "10"])
def test_a_time_summary_of_no_samples_is_refused(tmp_path, n):
    """time_s.n counts the samples a median came from: 0 (or no whole number) is no timing, and
    compare would weigh it as a measurement."""
    rec = {"op": "gemv_bf16", "impl": "x", "shape": {"M": 1}, "status": "ok",
           "time_s": {"median": 1e-5, "p25": 1e-5, "p75": 1e-5, "n": n}}
    f = tmp_path / "r.jsonl"
    f.write_text(json.dumps(rec) + "\n")
    with pytest.raises(ResultsError, match="time_s.n must be a whole number"):
        read_results(f)
    f.write_text(json.dumps({**rec, "time_s": {**rec["time_s"], "n": 1}}) + "\n")
    assert read_results(f)[0]["time_s"]["n"] == 1


class _HostBuilt:
    """A backend that builds data on the host and moves it to its device (as XLA does)."""
    def __init__(self):
        self.moved = []

    def build_device(self):
        return "cpu"

    def device(self):
        return "accel"

    def to_device(self, t):
        self.moved.append(t)
        return ("on accel", t)


class _Op:
    def make_inputs(self, shape, dtype, device, seed):
        assert device == "cpu"
        return torch.ones(2, dtype=dtype), 128  # a tensor and a plain argument (a group size)


def test_inputs_built_on_the_host_are_moved_to_the_device():
    b = _HostBuilt()
    x, g = make_inputs(b, _Op(), None, torch.float32, 0)
    assert x[0] == "on accel" and len(b.moved) == 1 and g == 128
