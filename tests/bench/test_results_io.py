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


def test_the_device_check_reads_on_past_a_bad_line(tmp_path):
    """With a `skipped` list (the device check's suite step), a bad line is named there and the
    records before and after it are kept: one torn line must not cost a device window's records.
    Without the list the first bad line is the error, named by its line number."""
    good = {"op": "gemv_bf16", "impl": "x", "shape": {"M": 1}, "status": "ok"}
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps(good) + "\n" + '{"op": "gemv_bf16", "impl": \n'
                 + json.dumps({**good, "impl": "y"}) + "\n" + json.dumps({**good, "status": "nope"}) + "\n")
    skipped = []
    assert [r["impl"] for r in read_results(p, skipped)] == ["x", "y"]
    assert len(skipped) == 2 and skipped[0] == f"{p}:2: not valid JSON (Expecting value, character 30)"
    assert skipped[1].startswith(f"{p}:4: malformed record (unknown status")
    with pytest.raises(ResultsError, match=":2: not valid JSON"):
        read_results(p)


def test_a_shape_field_of_true_is_not_a_size(tmp_path):
    """JSON true is an int to Python (True == 1): a shape field must be a whole number, not a
    truth value, or a chart would label a case M=True."""
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({"op": "gemv_bf16", "impl": "x", "shape": {"M": True}, "status": "ok"}) + "\n")
    with pytest.raises(ResultsError, match="shape field 'M' must be a whole number"):
        read_results(p)


def test_a_cold_record_whose_rotation_stayed_in_cache_is_in_cache():
    """in_cache: a warm record (the size sweep) unless marked cold, and a cold one whose verdict
    says the cache held it (its rotation could not pass the cache): neither is a DRAM figure."""
    from bench.results import in_cache
    from bench.roofline import IN_CACHE
    assert in_cache({"warm": True}) and not in_cache({"warm": True, "cold": True})
    assert in_cache({"verdict": IN_CACHE}) and in_cache({"warm": True, "cold": True, "verdict": IN_CACHE})
    assert not in_cache({"verdict": "at the wall"}) and not in_cache({})


def test_an_over_long_line_is_skipped_whole_and_the_next_record_read(tmp_path):
    """Reading on past a line over MAX_LINE (a torn or hostile file) skips the rest of that line
    too: its tail is not read as a line of its own, and the record after it is kept."""
    from bench.results import MAX_LINE
    good = {"op": "gemv_bf16", "impl": "x", "shape": {"M": 1}, "status": "ok"}
    p = tmp_path / "r.jsonl"
    p.write_text('{"op": "' + "a" * (2 * MAX_LINE + 10) + '"}\n' + json.dumps(good) + "\n")
    skipped = []
    assert [r["impl"] for r in read_results(p, skipped)] == ["x"]
    assert len(skipped) == 1 and f"over {MAX_LINE} characters" in skipped[0]


def test_git_commit_is_this_checkouts_and_none_from_an_install(tmp_path, monkeypatch):
    """Installed, REPO is site-packages: git there answers with the commit of whatever repository
    holds the environment (a project with its .venv inside), which is not decodewall's."""
    import shutil
    import subprocess
    import bench.results as results
    if not shutil.which("git"):
        pytest.skip("no git")
    proj = tmp_path / "proj"
    site = proj / ".venv" / "lib" / "site-packages"
    site.mkdir(parents=True)
    git = ["git", "-C", str(proj), "-c", "user.name=t", "-c", "user.email=t@t", "-c",
           "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    (proj / "pyproject.toml").write_text('[project]\nname = "someone-else"\n')
    subprocess.run([*git, "add", "pyproject.toml"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    monkeypatch.setattr(results, "REPO", site)
    assert results.git_commit() is None
    monkeypatch.setattr(results, "REPO", proj)  # a repository, but not a decodewall checkout
    assert results.git_commit() is None
    (proj / "pyproject.toml").write_text('[project]\nname = "decodewall"\n')
    subprocess.run([*git, "commit", "-qam", "y"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert results.git_commit() == head
    (proj / "pyproject.toml").write_text('[project]\nname = "decodewall"\n# edited\n')
    assert results.git_commit() == head + "-dirty"


@pytest.mark.parametrize("removed", ["file", "folder"])
def test_a_results_file_removed_during_the_run_is_written_again_whole(tmp_path, removed):
    """Deleting the output (a cleaner, a user tidying up) while the run holds the file open
    leaves every later record in an unlinked file and `results: PATH` naming a path that does
    not exist: the records already written are written again under the same path."""
    import shutil
    out = tmp_path / "runs"
    out.mkdir()
    w = ResultWriter(out, "20261206-000000-cpu-abcd")
    w.write(_record(impl="first"))
    if removed == "file":
        w.path.unlink()
    else:
        shutil.rmtree(out)
    w.write(_record(impl="second"))
    w.write(_record(impl="third"))
    w.close()
    assert [r["impl"] for r in read_results(w.path)] == ["first", "second", "third"]
    assert w.count == 3 and list(out.iterdir()) == [w.path]


def test_a_results_file_removed_after_its_last_record_is_written_again_at_close(tmp_path):
    out = tmp_path / "runs"
    w = ResultWriter(out, "20261206-000000-cpu-abcd")
    w.write(_record(impl="first"))
    w.path.unlink()  # while the run measures its roof again or prints its table
    w.close()
    assert [r["impl"] for r in read_results(w.path)] == ["first"]


def test_a_removed_results_file_keeps_its_name_or_says_it_cannot(tmp_path):
    """Another file of the same name made meanwhile: the records are not written under a new
    run id, which they would not carry, and the other file is left alone."""
    from bench.results import ResultsWriteError
    out = tmp_path / "runs"
    w = ResultWriter(out, "20261206-000000-cpu-abcd")
    w.write(_record(impl="first"))
    w.path.unlink()
    w.path.write_text("someone else's\n")
    with pytest.raises(ResultsWriteError, match=r"cannot be written again \(File exists\): "
                                                r"its 2 record\(s\) are lost"):
        w.write(_record(impl="second"))
    assert w.path.read_text() == "someone else's\n" and list(out.iterdir()) == [w.path]


def test_a_results_folder_removed_before_the_first_record_is_made_again(tmp_path):
    out = tmp_path / "runs"
    w = ResultWriter(out, "20261206-000000-cpu-abcd")
    w.write(_record(impl="first"))
    w.close()
    assert [r["impl"] for r in read_results(w.path)] == ["first"]


def test_a_results_file_that_cannot_be_written_again_says_its_records_are_lost(tmp_path):
    import shutil
    from bench.results import ResultsWriteError
    out = tmp_path / "runs"
    w = ResultWriter(out, "20261206-000000-cpu-abcd")
    w.write(_record(impl="first"))
    shutil.rmtree(out)
    out.write_text("")  # a file where the folder was: it cannot be made again
    with pytest.raises(ResultsWriteError) as e:
        w.write(_record(impl="second"))
    assert str(e.value) == (f"{w.path} was removed during the run and cannot be written again "
                            f"(File exists): its 2 record(s) are lost")
    assert w.count == 0


def _record(impl: str) -> dict:
    return {"op": "gemv_bf16", "impl": impl, "shape": {"M": 1}, "status": "skipped",
            "time_s": None}
