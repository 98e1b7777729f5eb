"""The CLI through its real entry point: bad input is one stderr line + exit 2 and no file."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import OutputError, RunError, UsageError
from bench.report.compare import classify
from tests.helpers import REPO, default_sigint, run_cli

GEMV = ["--op", "gemv_bf16", "--shape", "M=1,N=64,K=128"]


@pytest.fixture
def out(tmp_path):
    d = tmp_path / "runs"
    return d


@pytest.fixture
def in_process(monkeypatch):
    """`run` without worker processes, ranks or roof probes, for what the command does around
    its cases: each kernel case runs in this process (bench.runner.Runner, as its worker would
    run it), a collective case not at all, against a fixed 10 GB/s roof. What the run handed its
    runners and the roof probe is kept in the dict returned."""
    import bench.collectives as coll
    import bench.isolation as iso
    import bench.roofline as rl
    from bench.runner import Runner
    from kernels import OPS
    seen: dict = {"roof_dtypes": [], "cases": [], "runners": []}

    def roof(backend, dtypes, budget):
        seen["roof_dtypes"].append(dtypes)
        return rl.Roof("cpu", 10.0, 10.0, 1 << 28)
    monkeypatch.setattr(rl, "measure_roof", roof)
    monkeypatch.setattr(rl, "measure_bandwidth", lambda *a, **k: 10.0)

    class InProcess:
        def __init__(self, ctx, writer, on_record=None, case_timeout=None, plugins=()):
            self.runner = Runner(ctx, writer, on_record)
            seen["ctx"] = ctx
            seen["runners"].append((type(self).__name__, case_timeout, list(plugins)))

        def run_case(self, case):
            seen["cases"].append(case)
            return [] if OPS[case.op].collective else self.runner.run_case(case)

        def close(self, now=False):
            pass
    monkeypatch.setattr(iso, "IsolatedRunner", type("IsolatedRunner", (InProcess,), {}))
    monkeypatch.setattr(coll, "CollectiveRunner", type("CollectiveRunner", (InProcess,), {}))
    return seen


def said(err: str) -> list[str]:
    """stderr's lines but the contention note a busy machine adds to a run."""
    return [x for x in err.splitlines() if x.strip() and "waited for the CPU" not in x]


def bad(capsys, out, *argv):
    rc = main(list(argv))
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("decodewall: error:"), err
    assert "Traceback" not in err
    assert not out.exists() or not list(out.iterdir()), "a results file was left behind"
    return lines[0]


@pytest.mark.parametrize("argv, expect", [
    (["run", "--op", "gemv_bf17"], "did you mean 'gemv_bf16'"),
    (["run", *GEMV, "--impl", "nope"], "unknown impl 'nope'"),
    (["run", "--backend", "tpu"], "unknown backend 'tpu'; tpu devices run on the xla backend"),
    (["run", "--suite", "smok"], "did you mean 'smoke'"),
    (["run", *GEMV, "--chip", "h100-sx"], "did you mean 'h100-sxm'"),
    (["run", "--op", "gemv_bf16", "--shape", "M=1,N=abc,K=4"], "not an integer"),
    (["run", "--op", "gemv_bf16", "--shape", "M1"], "malformed --shape"),
    (["run", "--op", "gemv_bf16", "--shape", "M=+1,N=8,K=8"], "M='+1' is not an integer"),
    (["run", "--op", "gemv_bf16", "--shape", "M=1,N=1_0,K=8"], "N='1_0' is not an integer"),
    (["run", "--op", "gemv_bf16", "--shape", "M=1,N=\u0663,K=8"], "is not an integer"),
    (["run", "--list", "--suite", "smok"], "did you mean 'smoke'"),
    (["run", "--list", "--op", "gemv_bf17"], "did you mean 'gemv_bf16'"),
    (["run", "--list", "--op", "gemv_w4", "--impl", "triton_w8"], "unknown impl 'triton_w8'"),
    (["run", "--list", "--backend", "gpu"], "unknown backend 'gpu'; gpu devices run on the cuda"),
    (["run", "--list", "--backend", "cpuu"], "did you mean 'cpu'"),
    (["run", "--list", "--chip", "h100-sx"], "did you mean 'h100-sxm'"),
    (["run", "--list", "--dtype", "float64"], "unknown dtype 'float64'"),
    (["run", "--list", "--model", "nosuch"], "unknown model 'nosuch'"),
    (["run", "--list", "--model", " "], "--model is empty"),
    (["run", "--list", "--shape", "garbage"], "--shape needs --op"),
    (["run", "--list", "--op", "gemv_w4", "--shape", "M=1,N=64,K=64"], "impossible shape"),
    (["run", "--list", "--op", "copy", "--world-size", "3"], "collective ops"),
    (["run", "--op", "gemv_bf16", "--shape", "M=1,M=2,K=4,N=4"], "given twice"),
    (["run", "--op", "gemv_bf16", "--shape", "M=1,N=8,K=0"], "K must be a positive"),
    (["run", "--op", "gemv_bf16", "--shape", "M=5000,N=8,K=8"], "not a decode batch"),
    (["run", "--op", "gemv_bf16", "--shape", "M=1,N=8"], "needs K"),
    (["run", *GEMV, "--dtype", "float7"], "unknown dtype"),
    (["run", *GEMV, "--no-save"], "--no-save and --out "),  # bad() adds --out
    (["run", *GEMV, "--plugin", "/nonexistent/plugin.py"], "no such file"),
    (["run", "--shape", "M=1,N=8,K=8"], "--shape needs --op"),
    (["run", "--bogus-flag"], "unrecognized arguments"),
    (["chips", "--chip", "h10"], "did you mean 'h100"),
    (["nonsense"], "invalid choice"),
])
def test_bad_input(capsys, out, argv, expect):
    line = bad(capsys, out, *argv, *(["--out", str(out)] if argv[0] == "run" and "--bogus-flag" not in argv else []))
    assert expect in line


def test_unavailable_backend(capsys, out):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert "backend cuda is not available" in bad(capsys, out, "run", "--backend", "cuda", "--out", str(out))


def test_broken_plugin(capsys, out, tmp_path):
    p = tmp_path / "broken.py"
    p.write_text("import torch\nraise RuntimeError('plugin exploded')\n")
    assert "plugin exploded" in bad(capsys, out, "run", *GEMV, "--plugin", str(p), "--out", str(out))
    p.write_text("def (:\n")
    assert "SyntaxError" in bad(capsys, out, "run", *GEMV, "--plugin", str(p), "--out", str(out))


def test_unwritable_out(capsys, tmp_path):
    f = tmp_path / "a_file"
    f.write_text("not a directory")
    rc = main(["run", *GEMV, "--out", str(f / "sub")])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot create results directory" in err and len(err.splitlines()) == 1
    rc = main(["run", *GEMV, "--out", str(f)])  # not "cannot create ...: File exists"
    assert rc == 2 and capsys.readouterr().err == (
        f"decodewall: error: results directory {f} is a file, not a folder\n")


def test_an_out_path_with_control_characters_cannot_drive_the_terminal(capsys, tmp_path):
    """The results line names the path the user gave as repr shows it: a newline in it cannot
    split the line, an escape sequence cannot retitle the window or recolor the screen."""
    out = tmp_path / "a\nb\x1b]0;retitled\x07c"
    rc = main(["run", *GEMV, "--impl", "torch_matmul", "--budget", "quick", "--no-progress",
               "--out", str(out)])
    err = capsys.readouterr().err
    (f,) = out.iterdir()
    assert rc == 0 and "\x1b" not in err and "\x07" not in err
    assert f"results: {tmp_path}/a\\nb\\x1b]0;retitled\\x07c/{f.name}\n" in err


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError(
    "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried "
    "to allocate 268435456 bytes.\nmore")])
def test_a_roof_the_memory_limit_will_not_hold_is_one_line(capsys, tmp_path, monkeypatch, error):
    """Under `ulimit -v` the roof's probe buffers (4x the caches) cannot be allocated: a bad
    environment, said in one line with exit 2, not an internal error; any other
    failure of the probe is not dressed up as one."""
    from bench import roofline

    def refuse(*args, **kwargs):
        raise error
    monkeypatch.setattr(roofline, "measure_roof", refuse)
    for argv in (["run", *GEMV, "--impl", "torch_matmul", "--out", str(tmp_path / "o")],
                 ["roof"]):
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and len(err.splitlines()) == 1, err
        assert err.startswith("decodewall: error: not enough memory to measure the roof (an "
                              "address-space or memory limit?): ")
    assert not list((tmp_path / "o").glob("*.jsonl"))
    monkeypatch.setattr(roofline, "measure_roof", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # not a memory limit: not said to be one
        from bench.cli.common import measured_roof
        measured_roof(None, None, None)


def test_compare_corrupt_and_missing(capsys, out, tmp_path):
    bad_file = tmp_path / "bad.jsonl"
    bad_file.write_text('{"op": "copy", "impl": "x", "shape": {}, "status": "ok"}\n{not json\n')
    assert "bad.jsonl:2: not valid JSON" in bad(capsys, out, "compare", str(bad_file), str(bad_file))
    assert "no such file" in bad(capsys, out, "compare", str(tmp_path / "none.jsonl"), str(bad_file))
    other = tmp_path / "other.jsonl"
    other.write_text('{"hello": 1}\n')
    assert "not a decodewall result" in bad(capsys, out, "compare", str(other), str(other))


def test_compare_classification():
    a = {"median": 1.0, "p25": 0.99, "p75": 1.01, "n": 50}
    assert classify(a, {"median": 0.9, "p25": 0.89, "p75": 0.91, "n": 50}) == "faster"
    assert classify(a, {"median": 1.1, "p25": 1.09, "p75": 1.11, "n": 50}) == "slower"
    assert classify(a, {"median": 1.005, "p25": 0.995, "p75": 1.015, "n": 50}) == "same"
    # overlapping spreads but a shift larger than either run's noise: not decidable
    noisy = {"median": 1.0, "p25": 0.98, "p75": 1.02, "n": 50}
    assert classify(noisy, {"median": 1.03, "p25": 1.015, "p75": 1.045, "n": 50}) == "unsure"


def test_compare_never_pairs_a_warm_record_with_a_cold_one():
    from bench.report.compare import compare
    base = {"op": "gemv_bf16", "impl": "x", "shape": {"M": 1}, "dtype": "bfloat16", "backend": "cpu",
            "status": "ok", "time_s": {"median": 1.0, "p25": 1.0, "p75": 1.0}}
    rows = compare([base], [{**base, "warm": True}])
    assert sorted(r["verdict"] for r in rows) == ["only in A", "only in B"]
    assert [r["verdict"] for r in compare([base], [{**base, "warm": False}])] == ["same"]


def test_run_json_and_results_file_through_real_entry_point(tmp_path):
    out = tmp_path / "runs"
    p = run_cli("run", *GEMV, "--dtype", "float32", "--json", "--budget", "quick", "--out", str(out))
    assert p.returncode == 0, p.stderr
    printed = [json.loads(x) for x in p.stdout.splitlines()]
    (f,) = out.iterdir()
    saved = [json.loads(x) for x in f.read_text().splitlines()]
    assert printed == saved
    rec = next(r for r in saved if r["impl"] == "torch_matmul")
    assert rec["status"] == "ok" and rec["shape"] == {"M": 1, "N": 64, "K": 128}
    assert rec["dtype"] == "float32" and rec["backend"] == "cpu"
    assert rec["command"].startswith("decodewall run --op gemv_bf16")
    assert rec["versions"]["torch"] and rec["run_id"] == f.stem


def test_plugin_impl_is_checked_and_timed(tmp_path):
    plugin = tmp_path / "my_kernels.py"
    plugin.write_text(
        "import torch\n"
        "from kernels import register_impl\n\n"
        "@register_impl('gemv_bf16', 'my_gemv', backends=['cpu'])\n"
        "def my_gemv(x, w):\n"
        "    return (x.float() @ w.float().T).to(x.dtype)\n\n"
        "@register_impl('gemv_bf16', 'my_broken', backends=['cpu'])\n"
        "def my_broken(x, w):\n"
        "    return x @ w.T + 1\n")
    p = run_cli("run", *GEMV, "--plugin", str(plugin), "--json", "--budget", "quick", "--no-save")
    assert p.returncode == 0, p.stderr
    recs = {r["impl"]: r for r in map(json.loads, p.stdout.splitlines())}
    assert recs["my_gemv"]["status"] == "ok" and recs["my_gemv"]["time_s"]["n"] > 0
    assert recs["my_broken"]["status"] == "failed-check"
    assert recs["my_broken"]["time_s"] is None


def test_table_output_shows_verdicts_and_fail(tmp_path):
    plugin = tmp_path / "p.py"
    plugin.write_text("from kernels import register_impl\n"
                      "@register_impl('gemv_bf16', 'off_by_one', backends=['cpu'])\n"
                      "def f(x, w):\n    return x @ w.T + 1\n"
                      "@register_impl('gemv_bf16', 'loud', backends=['cpu'])\n"
                      "def g(x, w):\n"
                      "    raise RuntimeError('\\x1b[2J\\x1b]0;pwned\\x07\\x1b[31mboom\\x1b[0m')\n")
    p = run_cli("run", *GEMV, "--plugin", str(plugin), "--budget", "quick", "--no-save")
    assert p.returncode == 0, p.stderr
    assert "FAIL: rel err" in p.stdout and "torch_matmul" in p.stdout
    # an impl's message cannot clear the screen, retitle the window or recolor the table
    assert "ERROR: RuntimeError: boom" in p.stdout and "pwned" not in p.stdout
    assert "\x1b" not in p.stdout and "\x07" not in p.stdout
    # a tiny case: "in cache" where its MAX_SETS copies cannot pass 4x this host's LLC
    assert any(v in p.stdout for v in ("at the wall", "below the wall", "compute-bound", "in cache"))


CUT_CASES = 64


@pytest.mark.slow  # a run of 64 cases, cut after its first: ~15 s
def test_ctrl_c_keeps_finished_cases(tmp_path):
    out = tmp_path / "runs"
    shapes = [a for n in range(CUT_CASES) for a in ("--shape", f"N={4_000_000 + n}")]
    cmd = [sys.executable, "-m", "bench.cli", "run", "--op", "copy", *shapes, "--budget",
           "quick", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    try:
        # The first record comes after torch's import, the roof and a case: seconds on a quiet
        # 2-core machine, the other cases a second or so each. The wait polls, so a generous
        # bound costs nothing when the case comes on time.
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            files = list(out.glob("*.jsonl")) if out.exists() else []
            if files and files[0].read_text().count("\n") >= 1:
                break
            assert proc.poll() is None, proc.communicate()[1][-2000:]  # it ended early: why
            time.sleep(0.2)
        else:
            pytest.fail("no case finished in 600 s")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    lines = files[0].read_text().splitlines()
    assert 1 <= len(lines) < CUT_CASES
    assert all(json.loads(x)["status"] == "ok" for x in lines)
    # each record says its case's place in the run, so the file says how far the run got
    assert [json.loads(x)["run_case"] for x in lines] == \
        [{"index": i, "of": CUT_CASES} for i in range(1, len(lines) + 1)]
    from bench.results import read_results, unfinished
    assert [u[1:] for u in unfinished(read_results(files[0]))] == [(len(lines), CUT_CASES)]


def test_records_number_the_cases_that_get_records(capsys, in_process):
    """run_case counts the cases that write records: with --impl naming one op's impl, the
    other ops' cases write none and are not in the plan, so a whole run never reads as cut."""
    argv = ["run", "--suite", "smoke", "--impl", "torch_int4pack_mm", "--no-save", "--no-progress",
            "--json", "--budget", "quick"]
    assert main(argv) == 0
    recs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(recs) >= 2 and {r["op"] for r in recs} == {"gemv_w4"}
    assert [r["run_case"] for r in recs] == [{"index": i, "of": len(recs)}
                                             for i in range(1, len(recs) + 1)]


def test_drift_note_thresholds():
    from bench.roofline import DRIFT, drift_note
    assert drift_note(20.0, 20.0 * (1 + DRIFT * 0.9)) is None
    assert drift_note(20.0, 20.0 * (1 - DRIFT * 0.9)) is None
    assert "from 20.0 to 12.0 GB/s" in drift_note(20.0, 12.0)
    assert drift_note(0.0, 5.0) is None


@pytest.mark.parametrize("budget, factor, noted", [("normal", 1.0, False), ("normal", 0.5, True),
                                                    ("quick", 0.5, False)])
def test_run_notes_a_roof_that_moved(capsys, monkeypatch, budget, factor, noted):
    """The roof is measured again after the cases (not under the quick budget, whose probes are
    too rough to compare); a big move is reported on stderr."""
    import bench.roofline as rl
    monkeypatch.setattr(rl, "measure_roof", lambda *a, **k: rl.Roof("cpu", 10.0, 10.0, 1 << 28))
    calls = []
    monkeypatch.setattr(rl, "measure_bandwidth", lambda *a, **k: calls.append(1) or 10.0 * factor)
    argv = ["run", *GEMV, "--impl", "torch_matmul", "--no-save", "--budget", budget, "--no-progress"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert ("roof moved from 10.0 to 5.0 GB/s" in err) == noted, err
    assert len(calls) == (budget != "quick")


@pytest.mark.parametrize("busy, noted", [(45.0, True), (10.0, False), (None, False)])
def test_a_roof_measured_on_a_busy_cpu_is_noted(capsys, monkeypatch, in_process, busy, noted):
    """A roof whose probes shared the CPU (another run beside this one) reads low, and every
    case's % of roof high: the run says so, and each record keeps the figure; so does `roof`."""
    import bench.roofline as rl
    rates = {"float32": 1.0, "bfloat16": 1.0}  # no matmul timed here, on this busy machine
    monkeypatch.setattr(rl, "measure_roof", lambda *a, **k: rl.Roof(
        "cpu", 10.0, 10.0, 1 << 28, matmul_tflops=dict(rates), contention_pct=busy))
    argv = ["run", *GEMV, "--impl", "torch_matmul", "--no-save", "--no-progress", "--json"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    (rec,) = [json.loads(line) for line in out.splitlines()]
    assert rec["status"] == "ok" and rec["roof_contention_pct"] == busy
    assert ("the roof was measured while other tasks waited for the CPU" in err) == noted, err
    assert main(["roof", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["contention_pct"] == busy
    assert ("the roof was measured while other tasks waited" in err) == noted, err


def test_a_roof_on_cpus_of_several_numa_nodes_is_noted(capsys, monkeypatch, in_process):
    """Where the process's CPUs span NUMA nodes the probes read partly across the sockets' link:
    `roof` and `run` say so, and the records keep the count."""
    import bench.roofline as rl
    monkeypatch.setattr(rl, "measure_roof", lambda *a, **k: rl.Roof(
        "cpu", 10.0, 10.0, 1 << 28, matmul_tflops={"float32": 1.0, "bfloat16": 1.0}))
    monkeypatch.setattr("backends.cpu.numa_nodes", lambda: 2)
    assert main(["roof", "--json"]) == 0
    assert "this run's CPUs are on 2 NUMA nodes" in capsys.readouterr().err
    argv = ["run", *GEMV, "--impl", "torch_matmul", "--no-save", "--no-progress", "--json"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    (rec,) = [json.loads(line) for line in out.splitlines()]
    assert rec["device"]["numa_nodes"] == 2 and "2 NUMA nodes" in err
    monkeypatch.setattr("backends.cpu.numa_nodes", lambda: 1)
    assert main(["roof", "--json"]) == 0
    assert "NUMA" not in capsys.readouterr().err


def test_roof_tracker_remeasures_only_when_due(monkeypatch):
    import bench.roofline as rl
    from bench.timing import BUDGETS
    now = [0.0]
    seen = []

    def fake(backend, roof, budget=None):
        seen.append(roof.gbps)
        return rl.Roof("cpu", roof.copy_gbps, roof.read_gbps + 5.0, roof.working_set_bytes)

    monkeypatch.setattr(rl, "remeasure_bandwidth", fake)
    t = rl.RoofTracker(None, rl.Roof("cpu", 10.0, 20.0, 1 << 28), BUDGETS["normal"], every_s=60,
                       clock=lambda: now[0])
    assert t.current().gbps == 20.0 and not seen
    now[0] = 59.0
    assert t.current().gbps == 20.0 and not seen
    now[0] = 61.0
    assert t.current().gbps == 25.0 and seen == [20.0]
    now[0] = 100.0  # 39 s after the last reading: not due
    assert t.current().gbps == 25.0 and t.readings == [20.0, 25.0]
    never = rl.RoofTracker(None, rl.Roof("cpu", 10.0, 20.0, 1 << 28), BUDGETS["quick"], every_s=None,
                           clock=lambda: 1e9)
    assert not never.due() and never.current().gbps == 20.0 and len(seen) == 1


def test_a_case_above_its_reading_makes_the_next_reading_due(monkeypatch):
    """A cold case timed above the roof reading says the reading is low: the next case gets a fresh
    one however young the reading is; a warm (in-cache) case, an error or a quick budget do not."""
    import bench.roofline as rl
    from bench.timing import BUDGETS
    monkeypatch.setattr(rl, "remeasure_bandwidth",
                        lambda b, roof, budget=None: rl.Roof("cpu", 30.0, 30.0, 1 << 28))
    t = rl.RoofTracker(None, rl.Roof("cpu", 10.0, 20.0, 1 << 28), BUDGETS["normal"], every_s=60,
                       clock=lambda: 5.0)
    for rec in ({"status": "ok", "cold": True, "pct_roof": 99.0},
                {"status": "ok", "cold": False, "pct_roof": 300.0},
                {"status": "error", "cold": True, "pct_roof": None},
                {"status": "ok", "cold": True, "pct_roof": None}):
        t.saw(rec)
        assert not t.due() and t.current().gbps == 20.0
    t.saw({"status": "ok", "cold": True, "pct_roof": 110.4})
    assert t.due() and t.current().gbps == 30.0 and t.readings == [20.0, 30.0] and not t.due()
    quick = rl.RoofTracker(None, rl.Roof("cpu", 10.0, 20.0, 1 << 28), BUDGETS["quick"],
                           every_s=None, clock=lambda: 5.0)
    quick.saw({"status": "ok", "cold": True, "pct_roof": 300.0})
    assert not quick.due()


def test_drift_note_over_mid_run_readings():
    from bench.roofline import drift_note
    assert drift_note(20.0, 21.0, [19.0, 20.5]) is None
    note = drift_note(20.0, 21.0, [29.0, 20.5])
    assert "ranged 20.0-29.0 GB/s" in note and "4 readings" in note and "reading before it" in note


def test_run_judges_each_case_against_the_latest_roof(capsys, monkeypatch, tmp_path):
    """With a refresh due before every case, each record keeps the roof it was judged against and
    the run notes the range."""
    import bench.roofline as rl
    monkeypatch.setattr(rl, "measure_roof", lambda *a, **k: rl.Roof("cpu", 10.0, 10.0, 1 << 28))
    monkeypatch.setattr(rl, "measure_bandwidth", lambda *a, **k: 10.0)
    monkeypatch.setattr(rl, "ROOF_REFRESH_S", 0.0)
    gbps = iter([20.0, 30.0, 40.0])
    monkeypatch.setattr(rl, "remeasure_bandwidth",
                        lambda backend, roof, budget=None: rl.Roof("cpu", 1.0, next(gbps), 1 << 28))
    out = tmp_path / "runs"
    argv = ["run", "--op", "gemv_bf16", "--shape", "M=1,N=64,K=128", "--shape", "M=2,N=64,K=128",
            "--impl", "torch_matmul", "--out", str(out), "--budget", "normal", "--no-progress"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    recs = [json.loads(x) for f in out.iterdir() for x in f.read_text().splitlines()]
    assert sorted(r["roof_gbps"] for r in recs) == [20.0, 30.0]
    for r in recs:
        assert r["pct_roof"] == pytest.approx(100 * r["achieved_gbps"] / r["roof_gbps"])
    assert "ranged 10.0-30.0 GB/s" in err, err


def test_run_warm_times_op_cases_from_the_cache(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["run", *GEMV, "--impl", "torch_matmul", "--warm", "--json", "--budget", "quick",
                 "--out", str(out), "--no-progress"]) == 0
    rec, = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rec["warm"] and not rec["cold"] and rec["n_sets"] == 1
    assert rec["verdict"].startswith("in cache")


@pytest.mark.parametrize("save, kept", [
    (True, "no case finished, nothing saved"),
    (False, "0 finished case(s) shown, none saved (--no-save)")])
def test_ctrl_c_before_any_case_finished_says_nothing_was_kept(in_process, monkeypatch, capsys,
                                                              tmp_path, save, kept):
    from bench.runner import Runner
    monkeypatch.setattr(Runner, "run_case", lambda self, case: signal.raise_signal(signal.SIGINT))
    out = tmp_path / "runs"
    assert main(["run", *GEMV, "--no-progress", *(["--out", str(out)] if save else ["--no-save"])
                 ]) == 130
    assert said(capsys.readouterr().err) == [f"decodewall: interrupted; {kept}"]
    assert not out.exists() or not list(out.iterdir())


def test_a_run_records_and_hands_its_runners_what_was_asked_for(in_process, capsys, monkeypatch,
                                                                tmp_path):
    """--seed and the command line (quoted as a shell takes it) in each record; --impl, --dtype
    in what runs and in the roof probe; --case-timeout and --plugin to both runners; and the
    defaults where none is given."""
    import torch

    from bench import isolation
    from bench.case import DEFAULT_CASE_TIMEOUT_S
    monkeypatch.setattr(isolation, "preflight_plugins", lambda paths: None)
    plugin = tmp_path / "nothing_new.py"
    plugin.write_text("")
    out = tmp_path / "my runs"
    argv = ["run", *GEMV, "--dtype", "float32", "--impl", "torch_matmul", "--seed", "7",
            "--case-timeout", "9", "--plugin", str(plugin), "--budget", "quick", "--no-progress",
            "--out", str(out)]
    assert main(argv) == 0
    (f,) = out.iterdir()
    (rec,) = [json.loads(x) for x in f.read_text().splitlines()]
    assert (rec["impl"], rec["dtype"], rec["seed"]) == ("torch_matmul", "float32", 7)
    assert rec["command"] == (f"decodewall run --op gemv_bf16 --shape M=1,N=64,K=128 --dtype "
                              f"float32 --impl torch_matmul --seed 7 --case-timeout 9 --plugin "
                              f"{plugin} --budget quick --no-progress --out '{out}'")
    assert in_process["runners"] == [("IsolatedRunner", 9.0, [str(plugin)]),
                                     ("CollectiveRunner", 9.0, [str(plugin)])]
    assert in_process["roof_dtypes"] == [[torch.float32]]
    capsys.readouterr()
    in_process["runners"].clear()
    assert main(["run", *GEMV, "--impl", "torch_matmul", "--budget", "quick", "--json",
                 "--no-save"]) == 0
    (rec,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert (rec["dtype"], rec["seed"]) == ("bfloat16", 0)
    assert in_process["runners"] == [("IsolatedRunner", DEFAULT_CASE_TIMEOUT_S, []),
                                     ("CollectiveRunner", DEFAULT_CASE_TIMEOUT_S, [])]


def emitting(**fields):
    """A Runner.run_case that times nothing: one torch_matmul record of the case, judged against
    the run's roof of the moment, with `fields`."""
    from bench.runner import base_record
    from kernels import OPS

    def run_case(self, case):
        rec = {**base_record(self.ctx, case, OPS[case.op].impls["torch_matmul"]), **fields}
        return [self._emit(rec)]
    return run_case


def test_a_case_timed_above_the_roof_gets_the_next_case_a_fresh_reading(in_process, monkeypatch,
                                                                       capsys):
    """RoofTracker.saw: a cold case above its reading makes the next reading due, however young;
    each record keeps the roof it was judged against."""
    import bench.roofline as rl
    from bench.runner import Runner
    monkeypatch.setattr(rl, "remeasure_bandwidth",
                        lambda backend, roof, budget=None: rl.Roof("cpu", 1.0, 20.0, 1 << 28))
    monkeypatch.setattr(Runner, "run_case", emitting(status="ok", cold=True, pct_roof=150.0))
    assert main(["run", *GEMV, "--shape", "M=2,N=64,K=128", "--impl", "torch_matmul", "--budget",
                 "normal", "--json", "--no-save"]) == 0
    recs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["roof_gbps"] for r in recs] == [10.0, 20.0]


def test_under_the_progress_bar_too_each_case_gets_the_latest_roof(in_process, monkeypatch,
                                                                   capsys, tmp_path):
    """Drawing the bar, the run still takes a fresh reading when one is due (here before every
    case) and judges the case against it."""
    import bench.roofline as rl
    from bench.runner import Runner
    monkeypatch.setattr(rl, "ROOF_REFRESH_S", 0.0)
    gbps = iter([20.0, 30.0])
    monkeypatch.setattr(rl, "remeasure_bandwidth",
                        lambda backend, roof, budget=None: rl.Roof("cpu", 1.0, next(gbps), 1 << 28))
    monkeypatch.setattr(Runner, "run_case", emitting(status="ok", cold=False, pct_roof=None))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    out = tmp_path / "runs"
    assert main(["run", *GEMV, "--shape", "M=2,N=64,K=128", "--impl", "torch_matmul", "--budget",
                 "normal", "--out", str(out)]) == 0
    (f,) = out.iterdir()
    assert [json.loads(x)["roof_gbps"] for x in f.read_text().splitlines()] == [20.0, 30.0]


TINY_MODEL = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 3,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
              "model_type": "llama"}


def test_run_model_says_why_its_kernels_were_not_run_and_prints_the_step_as_json(
        in_process, monkeypatch, capsys, tmp_path):
    """A run cut short (a worker that cannot start) says so in the step's table; --json ends
    with the step as {"step": ...}."""
    from bench.runner import Runner
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY_MODEL))

    def cannot_start(self, case):
        raise RunError("the case worker ended at start (exit code 3)")
    monkeypatch.setattr(Runner, "run_case", cannot_start)
    assert main(["run", "--model", str(cfg), "--no-save", "--budget", "quick"]) == 1
    cap = capsys.readouterr()
    assert "measured step: unknown — not run (the run stopped): qkv, o, gate_up, down, " \
        "attention, lm_head\n" in cap.out, cap.out
    assert said(cap.err) == ["decodewall: error: the case worker ended at start (exit code 3); "
                             "0 finished case(s) shown, none saved (--no-save)"]
    monkeypatch.setattr(Runner, "run_case", lambda self, case: [])
    assert main(["run", "--model", str(cfg), "--no-save", "--budget", "quick", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    step = json.loads(line)["step"]
    assert (step["batch"], step["ctx"], step["weights"], step["kv"]) == (1, 4096, "bf16", "bf16")
    assert step["not_run"] == ["qkv", "o", "gate_up", "down", "attention", "lm_head"]


@pytest.mark.parametrize("argv, budget", [
    (["--suite", "smoke"], "quick"), (["--suite", "smoke", "--budget", "thorough"], "thorough"),
    (GEMV, "normal")])
def test_the_smoke_suite_is_timed_quick_and_anything_else_normal_by_default(
        in_process, monkeypatch, capsys, argv, budget):
    from bench.runner import Runner
    from bench.timing import BUDGETS
    monkeypatch.setattr(Runner, "run_case", lambda self, case: [])  # the budget alone matters
    assert main(["run", *argv, "--no-save", "--no-progress"]) == 0
    assert in_process["ctx"].budget == BUDGETS[budget]


@pytest.mark.parametrize("flag, stdout_tty, shown", [
    ([], False, True), ([], True, True), (["--no-progress"], False, False),
    (["--json"], False, True), (["--json"], True, False)])
def test_progress_is_shown_on_a_terminal_unless_no_progress(in_process, monkeypatch, capsys,
                                                            flag, stdout_tty, shown):
    """The bar is drawn on a terminal's stderr, but not over --json's records on the terminal:
    their lines are the progress there."""
    import rich.progress
    from bench.runner import Runner
    bars, add_task = [], rich.progress.Progress.add_task
    monkeypatch.setattr(rich.progress.Progress, "add_task", lambda self, what, total: bars.append(
        (what, total)) or add_task(self, what, total=total))
    monkeypatch.setattr(Runner, "run_case", lambda self, case: [])
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: stdout_tty)
    monkeypatch.setenv("TERM", "xterm")  # a terminal that redraws, whatever runs the tests
    monkeypatch.delenv("TTY_INTERACTIVE", raising=False)
    assert main(["run", *GEMV, "--shape", "M=2,N=64,K=128", "--no-save", *flag]) == 0
    assert bars == ([("cases", 2)] if shown else [])


def test_a_dumb_terminal_gets_no_bar_and_no_blank_line(in_process, monkeypatch, capsys):
    """TERM=dumb (Emacs' shell, some CI logs) cannot redraw a line, and TTY_INTERACTIVE=0 asks
    rich not to: rich draws no bar there, and a bar started all the same leaves an empty line on
    stderr where it ends."""
    import rich.progress
    from bench.runner import Runner
    bars, add_task = [], rich.progress.Progress.add_task
    monkeypatch.setattr(rich.progress.Progress, "add_task", lambda self, what, total: bars.append(
        (what, total)) or add_task(self, what, total=total))
    monkeypatch.setattr(Runner, "run_case", lambda self, case: [])
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.delenv("TTY_INTERACTIVE", raising=False)
    for env in ({"TERM": "dumb"}, {"TERM": "xterm", "TTY_INTERACTIVE": "0"}):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        assert main(["run", *GEMV, "--shape", "M=2,N=64,K=128", "--no-save"]) == 0
        assert bars == [], env
        assert "" not in capsys.readouterr().err.splitlines(), env


def test_the_bar_keeps_its_count_on_an_80_column_terminal(in_process, monkeypatch, capsys):
    """A case's description is as long as its shape: the decode suite's attention case on the
    CPU fills an 80-column line, which would leave the bar "0/…" and "0:00…". The description
    is cut with "…" instead; the count and the time stay whole."""
    from bench.runner import Runner
    monkeypatch.setattr(Runner, "run_case", lambda self, case: [])
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("TTY_INTERACTIVE", raising=False)
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["run", "--op", "paged_attention", "--shape",
                 "B=8,Hq=32,Hkv=8,D=128,context=4096,block_size=16", "--no-save"]) == 0
    err = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", capsys.readouterr().err)
    drawn = [x for x in re.split(r"[\r\n]", err) if x.startswith("paged_attention B=8")]
    assert drawn and all(re.search(r" [01]/1 0:00:\d\d\s*$", x) for x in drawn), drawn
    assert all(len(x.rstrip()) <= 80 for x in drawn), drawn


def test_the_roof_is_not_measured_for_collectives_alone(in_process, monkeypatch, capsys):
    """Collectives are judged against the chip's links: a run of them alone probes no memory."""
    monkeypatch.setattr("bench.collectives.max_world_size", lambda backend: 8)
    assert main(["run", "--op", "allreduce", "--shape", "bytes=4096", "--no-save",
                 "--no-progress"]) == 0
    assert [c.op for c in in_process["cases"]] == ["allreduce"]
    assert in_process["roof_dtypes"] == [] and in_process["ctx"].roof.gbps == 0.0


def test_run_warm_refuses_a_model_step(capsys, tmp_path):
    out = tmp_path / "runs"
    assert "timed cold" in bad(capsys, out, "run", "--model", "llama-3-8b", "--warm", "--out", str(out))


def _write(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return str(path)


def _rec(impl, median, device, backend="cpu", **kw):
    return {"op": "gemv_bf16", "impl": impl, "shape": {"M": 1, "N": 64, "K": 128},
            "dtype": "float32", "backend": backend, "status": "ok", "device": {"name": device},
            "time_s": {"median": median, "p25": median * 0.99, "p75": median * 1.01, "n": 100},
            **kw}


def test_compare_a_file_with_itself_is_same_everywhere(tmp_path, capsys):
    f = _write(tmp_path / "a.jsonl", [_rec("x", 1e-5, "box"), _rec("y", 2e-5, "box"),
                                      {**_rec("z", 1e-5, "box"), "status": "crashed",
                                       "time_s": None, "error": "SIGSEGV"}])
    assert main(["compare", f, f]) == 0
    out = capsys.readouterr().out
    assert "same" in out and "both on box (cpu)" in out and "different devices" not in out
    assert main(["compare", f, f, "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["verdict"] for r in rows] == ["same", "same"]


def test_compare_drops_escape_sequences_from_device_names(tmp_path, capsys):
    """A device name read from a file cannot retitle or recolor the terminal, as in show."""
    a = _write(tmp_path / "a.jsonl", [_rec("x", 1e-3, "EPYC\x1b]0;pwned\x07\x1b[31mRED")])
    b = _write(tmp_path / "b.jsonl", [_rec("x", 1e-3, "other")])
    assert main(["compare", a, b]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "EPYCRED (cpu)" in out


def test_compare_two_devices_says_so_and_compares_what_matches(tmp_path, capsys):
    a = _write(tmp_path / "a.jsonl", [_rec("x", 1e-3, "cpu box"), _rec("only_a", 1e-3, "cpu box")])
    b = _write(tmp_path / "b.jsonl", [_rec("x", 1e-5, "H200", backend="cuda")])
    assert main(["compare", a, b]) == 0
    out = capsys.readouterr().out
    assert "different devices" in out and "cpu box (cpu)" in out and "H200 (cuda)" in out
    assert main(["compare", a, b, "--json"]) == 0
    rows = {r["impl"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["x"]["verdict"] == "faster" and rows["x"]["ratio"] == pytest.approx(0.01)
    assert rows["only_a"]["verdict"] == "only in A"


@pytest.mark.parametrize("save", [True, False])
def test_ctrl_c_during_the_roof_measured_after_the_cases_is_an_interrupt(capsys, monkeypatch,
                                                                        tmp_path, save):
    """Exit 130, the finished case kept and said so (--no-save: shown, not saved), the table
    printed: as any other interrupt."""
    import signal

    import bench.roofline as rl
    monkeypatch.setattr(rl, "measure_roof", lambda *a, **k: rl.Roof("cpu", 10.0, 10.0, 1 << 28))
    monkeypatch.setattr(rl, "measure_bandwidth",
                        lambda *a, **k: signal.raise_signal(signal.SIGINT) or 10.0)
    out = tmp_path / "runs"
    argv = ["run", *GEMV, "--impl", "torch_matmul", "--budget", "normal", "--no-progress",
            *(["--out", str(out)] if save else ["--no-save"])]
    assert main(argv) == 130
    captured = capsys.readouterr()
    assert "torch_matmul" in captured.out  # the table
    if save:
        (f,) = out.iterdir()
        kept = f"1 finished case(s) kept in {f}"
    else:
        kept = "1 finished case(s) shown, none saved (--no-save)"
    assert said(captured.err) == [f"decodewall: interrupted; {kept}"]


def test_the_cases_said_kept_are_the_files_lines(capsys, monkeypatch, tmp_path):
    """Ctrl-C right after a record's line is on disk (after its fsync): the line says one case
    was kept, as the file holds one."""
    import os
    import signal
    fsync = os.fsync

    def fsync_then_ctrl_c(fd):
        fsync(fd)
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".jsonl"):  # not --out's check
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(os, "fsync", fsync_then_ctrl_c)
    out = tmp_path / "runs"
    argv = ["run", *GEMV, "--impl", "torch_matmul", "--budget", "quick", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 130
    (f,) = out.iterdir()
    assert len(f.read_text().splitlines()) == 1
    assert said(capsys.readouterr().err) == [
        f"decodewall: interrupted; 1 finished case(s) kept in {f}"]


def test_a_full_disk_keeps_the_whole_records_and_says_so(monkeypatch, tmp_path):
    """The disk takes half of the third line: the file is cut back to the two whole records,
    the writer raises one line naming the file, and closing it raises nothing."""
    import errno
    import os

    import bench.results as res
    write, calls = os.write, []

    def half_then_full(fd, data):
        calls.append(len(data))
        if len(calls) < 3:
            return write(fd, data)
        write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(res.os, "write", half_then_full)
    w = res.ResultWriter(tmp_path, "full")
    for k in range(2):
        w.write({"n": k})
    with pytest.raises(res.ResultsWriteError, match=r"cannot write .*full.jsonl: No space left"):
        w.write({"n": 2})
    w.close()
    assert [json.loads(x)["n"] for x in (tmp_path / "full.jsonl").read_text().splitlines()] == \
        [0, 1]
    assert w.count == 2


def test_a_full_disk_at_the_first_record_leaves_no_file(capsys, monkeypatch, tmp_path):
    """`run` on a disk that takes no record (once the check before measuring passed): one
    line, exit 1, no empty results file."""
    import errno

    import bench.results as res
    real = res.os.write

    def full(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)
    monkeypatch.setattr(res.os, "write", full)
    out = tmp_path / "runs"
    argv = ["run", *GEMV, "--impl", "torch_matmul", "--budget", "quick", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 1
    (line,) = said(capsys.readouterr().err)
    assert line.startswith("decodewall: error: cannot write ") and \
        line.endswith(": No space left on device; nothing saved")
    assert list(out.iterdir()) == []


def test_a_full_disk_is_found_before_measuring(capsys, monkeypatch, tmp_path):
    """An empty file can be made on a full disk: the check before measuring writes a few
    records' worth too, so the run ends at once (exit 2) rather than after its cases."""
    import errno
    from bench import roofline

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "write", full)
    monkeypatch.setattr(roofline, "measure_roof", lambda *a: pytest.fail("measured"))
    out = tmp_path / "runs"
    rc = main(["run", *GEMV, "--impl", "torch_matmul", "--out", str(out), "--no-progress"])
    assert rc == 2
    assert capsys.readouterr().err == (f"decodewall: error: cannot write results in {out}: "
                                       f"No space left on device\n")
    assert list(out.iterdir()) == []


def test_no_writable_temporary_folder_is_one_line_before_measuring(capsys, monkeypatch,
                                                                   tmp_path):
    """A read-only root file system without a tmpfs leaves the case workers' logs nowhere:
    exit 2 with one line before the roof is measured, not an internal error after it."""
    import tempfile
    from bench import roofline
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir looks again
    monkeypatch.setattr(tempfile, "_candidate_tempdir_list", lambda: [str(tmp_path / "none")])
    monkeypatch.setattr(roofline, "measure_roof", lambda *a: pytest.fail("measured"))
    out = tmp_path / "runs"
    rc = main(["run", *GEMV, "--impl", "torch_matmul", "--out", str(out), "--no-progress"])
    assert rc == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("decodewall: error: no writable temporary folder: No usable ") and \
        line.endswith("; set TMPDIR to one")
    assert not out.exists()


def test_a_results_file_the_disk_will_not_create_is_one_line(capsys, monkeypatch, tmp_path):
    """A quota that refuses the new file itself: the run's line names it, not an internal
    error, and no (empty) table is printed: no record was kept."""
    import errno
    import os

    import bench.results as res
    real_open = res.os.open

    def no_new_file(path, flags, *a, **k):
        if str(path).endswith(".jsonl") and flags & os.O_CREAT:
            raise OSError(errno.EDQUOT, "Disk quota exceeded", str(path))
        return real_open(path, flags, *a, **k)
    monkeypatch.setattr(res.os, "open", no_new_file)
    out = tmp_path / "runs"
    argv = ["run", *GEMV, "--impl", "torch_matmul", "--budget", "quick", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    (line,) = said(captured.err)
    assert line.startswith(f"decodewall: error: cannot create {out}/") and \
        line.endswith(": Disk quota exceeded; nothing saved")
    assert captured.out == "" and list(out.iterdir()) == []


def test_run_json_whose_reader_goes_away_stops_and_says_what_it_kept(tmp_path):
    """`run --json` whose reader is gone before the first record (`| head -0`): that record is
    on disk before its line meets the closed pipe; the run stops there, says so on stderr with
    the case kept, and exits 141 as a shell reports SIGPIPE."""
    out = tmp_path / "runs"
    cli = "from bench.cli import main; raise SystemExit(main())"
    p = subprocess.Popen([sys.executable, "-c", cli, "run", *GEMV, "--impl", "torch_matmul",
                          "--budget", "quick", "--out", str(out), "--no-progress", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    p.stdout.close()  # the child takes seconds to start: nothing has been written yet
    err = p.stderr.read()
    assert p.wait(timeout=300) == 141, err
    (f,) = out.iterdir()
    assert err.splitlines()[-1] == ("decodewall: stopped: its output was closed (broken pipe); "
                                    f"1 finished case(s) kept in {f}")
    assert len(f.read_text().splitlines()) == 1


def test_closed_standard_streams(tmp_path):
    """A closed stdin or stderr does not take a worker's pipe (the run works, its results
    saved); a closed stdout is one line and exit 2."""
    out = tmp_path / "runs"

    def closing(redirect: str) -> list[str]:  # the shell closes it, then runs the CLI
        return ["sh", "-c", f'exec "$0" "$@" {redirect}', sys.executable, "-c",
                "from bench.cli import main; raise SystemExit(main())"]
    run = ["run", *GEMV, "--impl", "torch_matmul", "--budget", "quick", "--out", str(out),
           "--no-progress"]
    for redirect in ("<&-", "2>&-"):
        r = subprocess.run(closing(redirect) + run, capture_output=redirect == "<&-", text=True,
                           timeout=300, cwd=REPO)
        assert r.returncode == 0, (redirect, r.stderr)
    assert len(list(out.iterdir())) == 2
    r = subprocess.run(closing(">&-") + ["chips"], stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert (r.returncode, r.stderr) == (2, "decodewall: error: standard output is closed: "
                                           "nowhere to write the output\n")


def test_an_oserror_not_of_stdout_is_not_called_an_output_error(capsys, monkeypatch):
    """Only stdout's own write errors read "cannot write the output": an ENOSPC or a bad
    descriptor from anywhere else is a bug of ours, said with where it happened."""
    import errno

    from bench.cli import chips

    def broken(args):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(chips, "command", broken)
    assert main(["chips"]) == 1
    assert capsys.readouterr().err.startswith("decodewall: internal error at test_cli.py:")


@pytest.mark.parametrize("raised, status, line", [
    (UsageError("no such thing"), 2, "decodewall: error: no such thing"),
    (RunError("the case worker ended at start"), 1,
     "decodewall: error: the case worker ended at start"),
    (OutputError("No space left on device"), 1,
     "decodewall: error: cannot write the output: No space left on device"),
    (BrokenPipeError(), 0, ""),  # the reader went away (`| head`): quietly
    (KeyboardInterrupt(), 130, "decodewall: interrupted"),
    (ValueError("first line\nsecond line"), 1,
     "decodewall: internal error at test_cli.py:{line}: ValueError: first line"),
], ids=["usage", "run", "output", "pipe", "ctrl-c", "bug"])
def test_each_way_a_command_ends_has_its_exit_status_and_one_line(capsys, monkeypatch, raised,
                                                                  status, line):
    """bench/errors.py: bad input 2, a run that could not go on 1, stdout refused 1, a closed
    pipe 0 and nothing said, Ctrl-C 130; a bug of ours 1, saying where it was raised and the
    first line of its message."""
    from bench.cli import chips

    def ends(args):
        raise raised
    monkeypatch.setattr(chips, "command", ends)
    assert main(["chips"]) == status
    line = line.format(line=ends.__code__.co_firstlineno + 1)
    assert capsys.readouterr().err == (line + "\n" if line else "")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_output_that_cannot_be_written(tmp_path):
    """A table to a closed pipe (`| head`) ends quietly with 0, as --json does, not with rich's
    silent exit 1; to a full device it is one line naming the cause, not an internal error."""
    cmd = [sys.executable, "-c", "from bench.cli import main; raise SystemExit(main())", "chips"]
    for extra in ([], ["--json"]):
        p = subprocess.Popen(cmd + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             cwd=REPO)
        p.stdout.close()
        assert (p.wait(timeout=120), p.stderr.read()) == (0, b"")
        with open("/dev/full", "w") as full:
            r = subprocess.run(cmd + extra, stdout=full, stderr=subprocess.PIPE, text=True,
                               cwd=REPO)
        assert (r.returncode, r.stderr) == (1, "decodewall: error: cannot write the output: "
                                               "No space left on device\n")
    out = tmp_path / "runs"  # run's table refused: its line also says what the file kept
    with open("/dev/full", "w") as full:
        r = subprocess.run(cmd[:-1] + ["run", *GEMV, "--impl", "torch_matmul", "--budget",
                                       "quick", "--out", str(out), "--no-progress"],
                           stdout=full, stderr=subprocess.PIPE, text=True, cwd=REPO)
    (f,) = out.iterdir()
    assert (r.returncode, r.stderr.splitlines()[-1]) == (
        1, "decodewall: error: cannot write the output: No space left on device; 1 finished "
           f"case(s) kept in {f}")


def test_a_stderr_that_cannot_be_written_keeps_the_exit_status(tmp_path):
    """stderr to a full device or a pipe whose reader left loses the messages, not the exit
    status: bad input is still 2 (a script's only signal then), a good run still 0 with its
    records kept and its table on stdout."""
    cmd = [sys.executable, "-c", "from bench.cli import main; raise SystemExit(main())"]
    for argv in (["run", "--op", "nope"], ["show", str(tmp_path / "missing.jsonl")]):
        with open("/dev/full", "w") as full:
            r = subprocess.run(cmd + argv, stdout=subprocess.PIPE, stderr=full, text=True,
                               cwd=REPO, timeout=120)
        assert (r.returncode, r.stdout) == (2, ""), argv
        p = subprocess.Popen(cmd + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             cwd=REPO)
        p.stderr.close()
        assert (p.wait(timeout=120), p.stdout.read()) == (2, b""), argv
    out = tmp_path / "runs"  # the run says where its results went, and a note, on stderr
    with open("/dev/full", "w") as full:
        r = subprocess.run(cmd + ["run", *GEMV, "--impl", "torch_matmul", "--budget", "quick",
                                  "--out", str(out), "--no-progress"],
                           stdout=subprocess.PIPE, stderr=full, text=True, cwd=REPO, timeout=240)
    (f,) = out.iterdir()
    assert r.returncode == 0 and f"decodewall run {f.stem}" in r.stdout  # the table's title
    assert json.loads(f.read_text())["status"] == "ok"


def test_json_stdout_holds_records_only_when_a_plugin_prints_as_it_loads(capfd, tmp_path):
    plugin = tmp_path / "chatty_plugin.py"
    plugin.write_text("import os, sys\n"
                      "print('hello from print')\n"
                      "sys.stdout.write('hello from sys.stdout\\n')\n"
                      "os.write(1, b'hello from fd 1\\n')\n")
    argv = ["run", *GEMV, "--impl", "torch_matmul", "--plugin", str(plugin), "--json",
            "--no-save", "--budget", "quick", "--no-progress"]
    assert main(argv) == 0
    out, err = capfd.readouterr()
    assert [json.loads(x)["impl"] for x in out.splitlines()] == ["torch_matmul"]
    for where in ("print", "sys.stdout", "fd 1"):
        assert f"hello from {where}" in err


def test_list_names_every_suite_and_op_with_its_impls(capsys):
    from bench.suites import SUITES
    from kernels import OPS
    # the list is every backend's: a known backend lists whether it is available here or not
    assert main(["run", "--list", "--op", "gemv_w4", "--impl", "torch_dequant", "--backend", "cuda",
                 "--chip", "h200"]) == 0
    out = capsys.readouterr().out
    for name in SUITES:
        assert f"\n  {name} " in out
    for name, op in OPS.items():
        assert f"  {name} " in out and ", ".join(op.impls) in out


@pytest.mark.parametrize("where", ["table", "close"])
def test_a_signal_after_the_cases_while_the_run_closes_or_prints_keeps_them(capsys, monkeypatch,
                                                                           tmp_path, where):
    """The first Ctrl-C landing in the workers' close after a normal end, or in the table's
    print: exit 130 and the line saying what was kept, not a bare 'interrupted'."""
    import bench.report.table as table
    import bench.roofline as rl
    from bench.isolation import IsolatedRunner
    monkeypatch.setattr(rl, "measure_roof", lambda *a, **k: rl.Roof("cpu", 10.0, 10.0, 1 << 28))
    if where == "table":
        monkeypatch.setattr(table, "results_table",
                            lambda *a, **k: signal.raise_signal(signal.SIGINT))
    else:
        close, calls = IsolatedRunner.close, []

        def close_then_ctrl_c(self, now=False):
            calls.append(now)
            if calls == [False, True]:  # the close after a normal end's, in the finally
                signal.raise_signal(signal.SIGINT)
            close(self, now)
        monkeypatch.setattr(IsolatedRunner, "close", close_then_ctrl_c)
    out = tmp_path / "runs"
    argv = ["run", *GEMV, "--impl", "torch_matmul", "--budget", "quick", "--no-progress",
            "--out", str(out)]
    assert main(argv) == 130
    (f,) = out.iterdir()
    assert len(f.read_text().splitlines()) == 1
    assert said(capsys.readouterr().err) == [
        f"decodewall: interrupted; 1 finished case(s) kept in {f}"]


def test_a_worker_that_cannot_start_mid_run_keeps_the_finished_cases(tmp_path):
    """The first shape's `dies` kills its worker; the worker started for the second shape dies
    as it loads the plugin (as one killed while importing torch would): the run stops there
    with exit 1, the table, and the line naming why and what was kept."""
    marker = tmp_path / "died"
    plugin = tmp_path / "dies.py"
    plugin.write_text(
        "import os, sys\n"
        f"if os.path.exists({str(marker)!r}) and sys.argv[0].endswith('boot.py'):\n"
        "    raise RuntimeError('no second start')\n"
        "from kernels import register_impl\n"
        "@register_impl('gemv_bf16', 'dies', backends=['cpu'])\n"
        "def dies(x, w):\n"
        f"    open({str(marker)!r}, 'w').close()\n"
        "    os._exit(3)\n")
    out = tmp_path / "runs"
    r = run_cli("run", *GEMV, "--shape", "M=1,N=64,K=256", "--impl", "dies", "--impl",
                "torch_matmul", "--plugin", str(plugin), "--budget", "quick", "--no-progress",
                "--out", str(out), timeout=300)
    (f,) = out.iterdir()
    records = [json.loads(x) for x in f.read_text().splitlines()]
    assert sorted((x["impl"], x["status"]) for x in records) == [("dies", "crashed"),
                                                                 ("torch_matmul", "ok")]
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "dies" in r.stdout
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("decodewall: error: the case worker ended at start") and \
        "no second start" in last and last.endswith(f"; 2 finished case(s) kept in {f}"), last


def test_ctrl_c_while_the_command_imports_torch_is_one_line():
    """Before main() installs its handlers (torch imports for seconds): 'interrupted', 130."""
    code = ("import sys\n"
            "class Stop:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'bench.cli.run':\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Stop())\n"
            "from bench.cli import main\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert (r.returncode, r.stderr) == (130, "decodewall: interrupted\n")


@pytest.mark.parametrize("sig, status, said", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                               (signal.SIGHUP, 129, "terminated (SIGHUP)")])
def test_sigterm_and_sighup_end_a_run_as_ctrl_c_does(capsys, monkeypatch, tmp_path, sig, status,
                                                     said):
    import bench.roofline as rl
    monkeypatch.setattr(rl, "measure_roof", lambda *a, **k: rl.Roof("cpu", 10.0, 10.0, 1 << 28))
    monkeypatch.setattr(rl, "measure_bandwidth", lambda *a, **k: signal.raise_signal(sig) or 10.0)
    argv = ["run", *GEMV, "--impl", "torch_matmul", "--budget", "normal", "--no-progress",
            "--no-save"]
    # as a terminal's shell starts a command: under nohup SIGHUP is ignored, and a command keeps
    # an ignored signal ignored
    before = signal.signal(sig, signal.SIG_DFL)
    try:
        assert main(argv) == status
    finally:
        signal.signal(sig, before)
    lines = [x for x in capsys.readouterr().err.splitlines() if "waited for the CPU" not in x]
    assert lines == [f"decodewall: {said}; 1 finished case(s) shown, none saved (--no-save)"]


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stopped_run_still_says_its_kept_cases_shared_the_cpu(capsys, monkeypatch, in_process,
                                                                sig, status):
    """The cases a stopped run keeps and shows were timed like any others: the notes about a
    shared CPU come with them, before the line that says what was kept."""
    import backends.cpu
    import bench.roofline as rl
    monkeypatch.setattr(backends.cpu.ContentionSampler, "stop", lambda self, calls, timed_s: {
        "cpu_pressure_pct": 45.0, "cpu_steal_pct": 0.0})
    monkeypatch.setattr(rl, "measure_bandwidth", lambda *a, **k: signal.raise_signal(sig) or 10.0)
    argv = ["run", *GEMV, "--impl", "torch_matmul", "--budget", "normal", "--no-progress",
            "--no-save"]
    assert main(argv) == status
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(
        "decodewall: note: 1 of 1 timed case(s) ran while other tasks waited for the CPU"), lines
    assert all(x.startswith("decodewall: note: ") for x in lines[:-1])  # the roof's note too
    assert lines[-1].endswith("; 1 finished case(s) shown, none saved (--no-save)")


def test_json_records_go_to_stdout_while_the_progress_bar_is_on_a_terminal(capsys, monkeypatch):
    """`decodewall run --json > records.jsonl` typed at a terminal: the progress bar is drawn on
    stderr, and the records still go to stdout, one JSON object a line (rich's Progress would
    send what is printed meanwhile to its own console, stderr, folded at the terminal's width)."""
    import bench.roofline as rl
    monkeypatch.setattr(rl, "measure_roof", lambda *a, **k: rl.Roof("cpu", 10.0, 10.0, 1 << 28))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["run", *GEMV, "--impl", "torch_matmul", "--budget", "quick", "--json",
                 "--no-save"]) == 0
    cap = capsys.readouterr()
    assert [json.loads(x)["impl"] for x in cap.out.splitlines()] == ["torch_matmul"]
    assert '"impl"' not in cap.err
