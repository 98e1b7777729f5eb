"""What the writer puts on disk must be JSON any reader parses (jq, pandas, another language), and
what the input-building path hands the impls must be on the device they run on."""
import json
import math
import sys

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


@pytest.mark.parametrize("rc", [{"index": 0, "of": 2}, {"index": 3, "of": 2}, {"index": 1},
                                {"index": True, "of": 2}, {"index": 1.0, "of": 2}, "1/2", [1, 2]])
def test_a_run_case_that_is_no_place_in_a_plan_is_refused(tmp_path, rc):
    """run_case says how far a run got ({index, of}, 1 <= index <= of): show and compare read it
    to say that a run stopped, so a value that is no place in a plan is a corrupt record."""
    rec = {"op": "gemv_bf16", "impl": "x", "shape": {"M": 1}, "status": "ok"}
    f = tmp_path / "r.jsonl"
    f.write_text(json.dumps({**rec, "run_case": rc}) + "\n")
    with pytest.raises(ResultsError, match="run_case must be"):
        read_results(f)
    f.write_text(json.dumps({**rec, "run_case": {"index": 2, "of": 2}}) + "\n")
    assert read_results(f)[0]["run_case"] == {"index": 2, "of": 2}


def test_the_writer_numbers_records_by_the_case_it_was_told():
    """The run sets writer.case before each case; every record written then carries it, with no
    file too (--no-save --json prints the record the writer saw)."""
    w = ResultWriter(None, "run")
    rec = {"op": "gemv_bf16", "impl": "x"}
    w.write(rec)
    assert "run_case" not in rec
    w.case = (2, 5)
    w.write(rec)
    assert rec["run_case"] == {"index": 2, "of": 5}


def test_unfinished_names_the_runs_that_stopped_short_of_their_plan():
    from bench.results import unfinished
    def r(run, i, n):
        return {"run_id": run, "run_case": {"index": i, "of": n}}
    assert unfinished([r("a", 1, 3), r("a", 2, 3), r("b", 1, 1)]) == [("a", 2, 3)]
    assert unfinished([r("a", 1, 2), r("a", 2, 2)]) == []
    assert unfinished([{"run_id": "old"}]) == []  # a file written before run_case says nothing


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
    assert len(skipped) == 1 and f"over {MAX_LINE} bytes" in skipped[0]


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


@pytest.mark.parametrize("tz", ["UTC", "JST-9", "EST+5"])
def test_a_run_id_starts_with_its_time_then_its_backend(monkeypatch, tz):
    """`show` with no file picks the last name in results/runs: the run id (the file's name) must
    start with the time, to the second, in UTC, so that name order is time order on machines in
    any time zone and across a change of the local clock."""
    import datetime
    import re
    import time

    from bench.results import new_run_id
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        rid = new_run_id("cuda")
    finally:
        monkeypatch.undo()
        time.tzset()
    assert re.fullmatch(r"\d{8}-\d{6}-cuda-[0-9a-f]{4}", rid), rid
    started = datetime.datetime.strptime(rid[:15], "%Y%m%d-%H%M%S")
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    assert abs((now - started).total_seconds()) < 60


def test_versions_name_the_python_release_and_cuda():
    """`show` prints the versions a run recorded: Python as its release number, and CUDA's key
    present (null with a CPU build of torch) for `show` to read."""
    import platform

    from bench.results import versions
    v = versions()
    assert v["python"] == platform.python_version()
    assert "cuda" in v and v["torch"] == torch.__version__


def test_versions_name_the_triton_that_is_imported(monkeypatch):
    """ROCm's torch ships Triton as pytorch-triton-rocm and nightlies as pytorch-triton, which
    package metadata does not find under "triton": the imported module's version is recorded."""
    import types

    from bench import results
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__="3.6.0+rocm"))
    assert results.versions()["triton"] == "3.6.0+rocm"


def test_versions_name_hip_on_a_rocm_build(monkeypatch):
    """A ROCm build of torch has no CUDA version but a HIP one: recorded as "hip"."""
    from bench import results
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", "7.0.51831", raising=False)
    v = results.versions()
    assert v["cuda"] is None and v["hip"] == "7.0.51831"


def test_a_short_write_is_continued_to_the_whole_record(tmp_path, monkeypatch):
    """os.write may take part of the data (a signal, a pipe, a network file system): the rest
    is written, so the line on disk is whole."""
    import bench.results as res
    real = res.os.write
    monkeypatch.setattr(res.os, "write", lambda fd, data: real(fd, bytes(data[:7])))
    w = ResultWriter(tmp_path, "run")
    w.write(_record(impl="a" * 100))
    w.close()
    assert [r["impl"] for r in read_results(tmp_path / "run.jsonl")] == ["a" * 100]


def test_a_non_finite_number_in_a_tuple_is_written_as_null(tmp_path):
    w = ResultWriter(tmp_path, "run")
    w.write({**_record(impl="x"), "extra": (1.0, math.inf)})
    w.close()
    assert _strict((tmp_path / "run.jsonl").read_text())["extra"] == [1.0, None]


def test_a_value_json_has_no_type_for_is_written_as_its_text(tmp_path):
    """A value a record may carry that json cannot write (a torch dtype, a path) is written as
    its str, not a TypeError that loses the case."""
    from pathlib import Path
    w = ResultWriter(tmp_path, "run")
    w.write({**_record(impl="x"), "dtype": torch.bfloat16, "plugin": Path("/k/my.py")})
    w.close()
    (rec,) = read_results(tmp_path / "run.jsonl")
    assert (rec["dtype"], rec["plugin"]) == ("torch.bfloat16", "/k/my.py")


def test_a_results_file_takes_the_umasks_permissions(tmp_path):
    """As open(..., "x") makes a file: readable by others where the umask says so (a shared
    results folder), not owner-only."""
    import os
    import stat
    old = os.umask(0o022)
    try:
        w = ResultWriter(tmp_path, "run")
        w.write(_record(impl="x"))
        w.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(w.path.stat().st_mode) == 0o644


def test_a_removed_results_file_the_disk_will_not_take_again_leaves_no_part(tmp_path, monkeypatch):
    """The file removed during the run, then the disk full while its records are written again
    under its name: no partial file is left, and the error says the records are lost."""
    import errno

    import bench.results as res
    from bench.results import ResultsWriteError
    real, calls = res.os.write, []

    def full_on_the_rewrite(fd, data):
        calls.append(len(data))
        if len(calls) < 2:  # the second record, into the removed file
            return real(fd, data)
        real(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")
    out = tmp_path / "runs"
    w = ResultWriter(out, "20261206-000000-cpu-abcd")
    w.write(_record(impl="first"))
    w.path.unlink()
    monkeypatch.setattr(res.os, "write", full_on_the_rewrite)
    with pytest.raises(ResultsWriteError, match=r"cannot be written again \(No space left on "
                                                r"device\): its 2 record\(s\) are lost"):
        w.write(_record(impl="second"))
    assert list(out.iterdir()) == [] and w.count == 0


@pytest.mark.parametrize("end", ["\n", ""])
def test_a_line_of_max_line_bytes_is_a_record(tmp_path, monkeypatch, end):
    """MAX_LINE is the longest line read, its newline not counted, the file's last line (no
    newline) included: one byte more is refused."""
    import bench.results as res
    line = json.dumps(_record(impl="x"))
    monkeypatch.setattr(res, "MAX_LINE", len(line))
    p = tmp_path / "r.jsonl"
    p.write_text(line + end)
    assert [r["impl"] for r in read_results(p)] == ["x"]
    monkeypatch.setattr(res, "MAX_LINE", len(line) - 1)
    with pytest.raises(ResultsError, match=f"r.jsonl:1: a line of over {len(line) - 1} bytes"):
        read_results(p)


def test_a_file_that_is_not_utf8_names_its_line(tmp_path):
    """Not UTF-8 on its first line: the error names the file and line 1."""
    p = tmp_path / "r.jsonl"
    p.write_bytes(b'{"op": "\xff"}\n')
    with pytest.raises(ResultsError, match=f"^{p}:1: "):
        read_results(p)


def test_a_folder_is_named_a_folder(tmp_path):
    with pytest.raises(ResultsError) as e:
        read_results(tmp_path)
    assert str(e.value) == f"{tmp_path}: is a folder, not a results file"


def _nested(depth: int) -> dict:
    """A valid record nesting `depth` levels (the record itself is one)."""
    extra: list = []
    for _ in range(depth - 2):
        extra = [extra]
    return {**_record(impl="x"), "extra": extra}


def test_a_record_nested_32_levels_is_read_and_33_is_not(tmp_path, capsys):
    """Extra keys may nest (a record's own fields take 3 levels) up to 32, which `show --json`
    writes back well inside Python's recursion limit; one level more is no record."""
    from bench.cli import main
    from bench.results import _depth
    assert _depth(_nested(32)) == 32
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps(_nested(32)) + "\n")
    assert main(["show", str(p), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == _nested(32)
    p.write_text(json.dumps(_nested(33)) + "\n")
    with pytest.raises(ResultsError, match="r.jsonl:1: not a decodewall result record "
                                           r"\(nested too deeply\)"):
        read_results(p)


@pytest.mark.parametrize("missing", ["op", "impl", "shape", "status"])
def test_a_record_without_a_required_field_is_no_record(tmp_path, missing):
    p = tmp_path / "r.jsonl"
    rec = {k: v for k, v in _record(impl="x").items() if k != missing}
    p.write_text(json.dumps(rec) + "\n")
    with pytest.raises(ResultsError) as e:
        read_results(p)
    assert str(e.value) == f"{p}:1: not a decodewall result record"


@pytest.mark.parametrize("field, good, bad, said", [
    *[(f, None, 5, "must be a string, got a number")
      for f in ("dtype", "backend", "verdict", "error", "group", "run_id", "flush")],
    # 1 or "false" would be read for its truth value (a string "false" is true)
    *[(f, False, 1, "must be true or false, got 1") for f in ("baseline", "warm", "cold",
                                                              "correct")]])
def test_each_text_or_truth_field_holds_its_type_or_null(tmp_path, field, good, bad, said):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({**_record(impl="x"), field: good}) + "\n"
                 + json.dumps({**_record(impl="x"), field: bad}) + "\n")
    with pytest.raises(ResultsError) as e:
        read_results(p)
    assert str(e.value) == f"{p}:2: malformed record ({field} {said})"


@pytest.mark.parametrize("field, highest", [
    ("achieved_gbps", 1e9), ("roof_gbps", 1e9), ("datasheet_gbps", 1e9), ("pct_roof", 1e6),
    ("pct_datasheet", 1e6), ("gpu_util_pct", 1e6), ("pct_compute", 1e6),
    ("arithmetic_intensity", 1e9), ("ridge", 1e9), ("bytes", 1e18), ("flops", 1e18)])
def test_each_number_field_is_zero_or_in_its_range(tmp_path, field, highest):
    """The numbers the readers compute with: 0 and the range's ends are read; past the highest,
    a string, or an integer no float holds is corrupt, named by its field."""
    p = tmp_path / "r.jsonl"
    ok = [0, 0.0, 1e-12, highest]
    p.write_text("".join(json.dumps({**_record(impl="x"), field: v}) + "\n" for v in ok))
    assert [r[field] for r in read_results(p)] == ok
    for bad in (highest * 10, "5", 10**400):
        p.write_text(json.dumps({**_record(impl="x"), field: bad}) + "\n")
        with pytest.raises(ResultsError, match=f"r.jsonl:1: malformed record \\({field} must be"):
            read_results(p)


@pytest.mark.parametrize("time_s, why", [
    ({"median": 1e-5, "p25": 1e-5}, "time_s.p75 must be seconds"),
    ({"median": 1e-5, "p75": 1e-5}, "time_s.p25 must be seconds"),
    ({"median": 1e-5, "p25": 1e-5, "p75": 1e-5, "n": 10**19}, "time_s.n must be a whole number"),
])
def test_a_time_summary_missing_a_quartile_or_past_any_count_is_refused(tmp_path, time_s, why):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({**_record(impl="x"), "status": "ok", "time_s": time_s}) + "\n")
    with pytest.raises(ResultsError, match=f"r.jsonl:1: malformed record \\({why}"):
        read_results(p)


@pytest.mark.parametrize("change, why", [
    ({"shape": [1, 64]}, "shape must be an object, got an array"),
    ({"shape": "M=1"}, "shape must be an object, got a string"),
    ({"device": {"name": "x", "chip": 5}}, "device.chip must be a string, got a number"),
    ({"device": {"name": "x", "cache_bytes": 0.5}}, "device.cache_bytes must be a count"),
    ({"device": {"name": "x", "cache_bytes": 1e19}}, "device.cache_bytes must be a count"),
])
def test_a_shape_or_device_of_the_wrong_form_is_named(tmp_path, change, why):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({**_record(impl="x"), **change}) + "\n")
    with pytest.raises(ResultsError) as e:
        read_results(p)
    assert str(e.value).startswith(f"{p}:1: malformed record ({why}")


def test_a_results_folder_that_cannot_be_written_is_refused_before_measuring(tmp_path, monkeypatch):
    """A folder without write permission (read-only to its user) is refused up front, not after
    the cases are measured. Permissions are read as for a user other than root (who may write
    anywhere), so the test holds under any user."""
    import os
    import stat

    import bench.results as res
    from bench.results import check_writable

    def as_a_user(path, mode):
        bits = stat.S_IMODE(os.stat(path).st_mode) >> 6  # the owner's
        return bits & mode == mode
    monkeypatch.setattr(res.os, "access", as_a_user)
    out = tmp_path / "runs"
    out.mkdir()
    check_writable(out)
    out.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match=f"results directory {out} is not writable"):
            check_writable(out)
    finally:
        out.chmod(0o755)


_GOOD = {"op": "gemv_bf16", "impl": "x", "shape": {"M": 1}, "status": "ok", "error": None}


def test_a_line_that_is_not_utf8_is_named_by_its_own_number(tmp_path):
    """Each line is decoded alone: a bad byte on line 4 is line 4's error (decoded a chunk at a
    time, the file failed at line 1)."""
    p = tmp_path / "r.jsonl"
    p.write_bytes((json.dumps(_GOOD) + "\n").encode() * 3 + b'{"op": "\xff"}\n')
    with pytest.raises(ResultsError, match=r"r.jsonl:4: "):
        read_results(p)


def test_the_device_check_reads_on_past_a_line_that_is_not_utf8(tmp_path):
    """A record torn inside a two-byte character (µ), then a later record: with a `skipped`
    list, the torn line is skipped and named like any bad line, and the records around it kept,
    not the whole window's records lost."""
    whole = json.dumps({**_GOOD, "error": "2.5 µs"}, ensure_ascii=False).encode()
    torn = whole[: whole.index("µ".encode()) + 1]
    p = tmp_path / "r.jsonl"
    after = json.dumps({**_GOOD, "impl": "y"}).encode()
    p.write_bytes(whole + b"\n" + torn + b"\n" + after + b"\n")
    skipped = []
    assert [r["impl"] for r in read_results(p, skipped)] == ["x", "y"]
    assert len(skipped) == 1 and skipped[0].startswith(f"{p}:2: ")


def test_compare_shows_a_record_without_a_dtype_as_show_does(tmp_path, capsys):
    """dtype is a string or null: `show` prints null as '-', `compare` printed Python's 'None'."""
    from bench.cli import main
    rec = {**_GOOD, "time_s": {"median": 1e-5, "p25": 1e-5, "p75": 1e-5}}
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps(rec) + "\n")
    assert main(["compare", str(p), str(p)]) == 0
    (row,) = [x for x in capsys.readouterr().out.splitlines() if "│ gemv_bf16" in x]
    assert [c.strip() for c in row.split("│")][3] == "-"


def test_a_record_met_part_way_through_its_write_is_read_whole(tmp_path, monkeypatch):
    """`show` beside a running run can read the file while a record is being appended: the cut
    last line is read again a moment later, when the write has finished. A last line still cut
    then (a run killed mid-write) is the file's error, named as before."""
    import bench.results as res
    first, second = (json.dumps(_record(impl=n)) for n in ("x", "y"))
    p = tmp_path / "r.jsonl"
    p.write_text(first + "\n" + second[:40])
    waits = []

    def the_write_finishes(s):
        waits.append(s)
        with open(p, "a") as f:
            f.write(second[40:] + "\n")
    monkeypatch.setattr(res.time, "sleep", the_write_finishes)
    assert [r["impl"] for r in read_results(p)] == ["x", "y"] and len(waits) == 1
    p.write_text(first + "\n" + second[:40])
    monkeypatch.setattr(res.time, "sleep", lambda s: None)
    with pytest.raises(ResultsError, match=":2: not valid JSON"):
        read_results(p)
    p.write_text(first)  # a whole last line without its newline is read at once
    monkeypatch.setattr(res.time, "sleep", lambda s: pytest.fail("waited for a whole line"))
    assert [r["impl"] for r in read_results(p)] == ["x"]
