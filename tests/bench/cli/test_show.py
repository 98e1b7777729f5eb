"""`decodewall show`: a kept results file printed as `run` printed it, filtered, or as JSON."""
from __future__ import annotations

import json

import pytest

from bench.cli import main
from tests.bench.cli.test_cli_readers import G, error_line, write

RUN = {**G, "run_id": "20261204-153935-cuda-4ae8", "backend": "cuda",
       "device": {"name": "NVIDIA H200"}, "git_commit": "da687ce6545b8fb25995a3b149e428fe1d2ed56a",
       "versions": {"torch": "2.11.0+cu130", "triton": "3.6.0", "jax": None},
       "timestamp": "2026-12-04T15:39:48+0000", "verdict": "below the wall: kernel",
       "command": "decodewall run --suite gpu-check", "roof_gbps": 4282.3}


def records() -> list[dict]:
    return [{**RUN, "op": "gemv_w4", "impl": "triton_w4", "achieved_gbps": 3356.1},
            {**RUN, "op": "gemv_w4", "impl": "gemlite_w4", "achieved_gbps": 1629.0,
             "roof_gbps": 4284.3},
            {**RUN, "op": "gemv_w8", "impl": "triton_w8", "achieved_gbps": 4038.0},
            {**RUN, "op": "gemv_w8", "impl": "gemlite_w8", "status": "crashed", "time_s": None,
             "error": "SIGSEGV in timing", "achieved_gbps": None}]


def test_show_prints_each_record_under_the_runs_title_and_provenance(tmp_path, capsys):
    path = write(tmp_path / "r.jsonl", *records())
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "decodewall run 20261204-153935-cuda-4ae8 — NVIDIA H200 (cuda)" in out
    assert "roof 4282.3-4284.3 GB/s (re-measured)" in out  # the span its cases were judged by
    for impl in ("triton_w4", "gemlite_w4", "triton_w8", "gemlite_w8"):
        assert impl in out, impl
    assert "3356.1" in out and "CRASHED: SIGSEGV in timing" in out
    # the provenance lines wrap at the table's width, which a longer tmp_path moves
    words = " ".join(out.split())
    assert "commit da687ce6545b" in words and "torch 2.11.0+cu130, triton 3.6.0" in words
    assert "$ decodewall run --suite gpu-check" in words and "2026-12-04T15:39:48+0000" in words
    assert "4 records: 3 ok, 1 crashed" in out and "left out" not in out


@pytest.mark.parametrize("argv, impls", [
    (["--op", "gemv_w8"], {"triton_w8", "gemlite_w8"}),
    (["--impl", "triton_w4", "--impl", "triton_w8"], {"triton_w4", "triton_w8"}),
    (["--op", "gemv_w8", "--status", "ok"], {"triton_w8"}),
    (["--status", "crashed", "--status", "ok", "--op", "gemv_w4"], {"triton_w4", "gemlite_w4"}),
])
def test_show_filters_any_of_one_flag_all_of_several(argv, impls, tmp_path, capsys):
    path = write(tmp_path / "r.jsonl", *records())
    assert main(["show", str(path), *argv, "--json"]) == 0
    shown = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert {r["impl"] for r in shown} == impls and len(shown) == len(impls)
    by_impl = {r["impl"]: r for r in records()}
    assert all(r == json.loads(json.dumps(by_impl[r["impl"]])) for r in shown)  # as in the file
    assert main(["show", str(path), *argv]) == 0
    out = capsys.readouterr().out
    assert f"{4 - len(impls)} left out by the filters" in out
    assert all(i in out for i in impls) and not any(i in out for i in set(by_impl) - impls)


def test_show_prints_every_run_of_every_file_in_order(tmp_path, capsys):
    a = write(tmp_path / "a.jsonl", *records()[:2],
              {**RUN, "run_id": "second-run", "impl": "k2", "device": {"name": "CPU X"},
               "backend": "cpu", "roof_gbps": 30.0})
    b = write(tmp_path / "b.jsonl", {**RUN, "run_id": "third-run", "impl": "k3"})
    assert main(["show", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    titles = ["decodewall run 20261204-153935-cuda-4ae8", "decodewall run second-run — CPU X "
              "(cpu), roof 30.0 GB/s", "decodewall run third-run"]
    at = [out.index(t) for t in titles]
    assert at == sorted(at), out
    assert out.index("k2") > at[1] and out.index("k3") > at[2]
    assert str(a) in out and str(b) in out


def _precision_run(tmp_path):
    """A precision run's file: the best bf16 and INT8 GEMV of one shape."""
    shape = {"M": 1, "N": 8, "K": 128}
    recs = [{**RUN, "op": op, "impl": f"best_{op}", "shape": shape, "group": "precision",
             "bytes": b, "time_s": {"median": t, "p25": t, "p75": t}}
            for op, b, t in (("gemv_bf16", 2000, 2e-5), ("gemv_w8", 1000, 1e-5))]
    return write(tmp_path / "p.jsonl", *recs)


def test_show_prints_the_precision_comparison_of_a_precision_run(tmp_path, capsys):
    path = _precision_run(tmp_path)
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "precision: speedup over bf16" in out and "2.00x" in out
    assert main(["show", str(path), "--op", "gemv_w8"]) == 0  # a comparison needs its bf16 row
    assert "best_gemv_w8" in capsys.readouterr().out


@pytest.mark.parametrize("argv, expect", [
    (["--op", "gemv_q4"], "--op 'gemv_q4' matches no record; did you mean 'gemv_w4'?"),
    (["--impl", "tritn_w4"], "--impl 'tritn_w4' matches no record; did you mean 'triton_w4'?"),
    (["--op", "gemv_w4", "--impl", "nothing_like_it"], "impls in the files: gemlite_w4, "),
    (["--status", "broken"], "argument --status: invalid choice: 'broken'"),
])
def test_show_names_that_no_record_has_are_bad_input(argv, expect, tmp_path, capsys):
    path = write(tmp_path / "r.jsonl", *records())
    assert expect in error_line(capsys, ["show", str(path), *argv])


def test_show_filters_that_together_pick_nothing_say_so_and_exit_0(tmp_path, capsys):
    path = write(tmp_path / "r.jsonl", *records())
    for extra in ([], ["--json"]):
        assert main(["show", str(path), "--impl", "triton_w4", "--status", "crashed",
                     *extra]) == 0
        cap = capsys.readouterr()
        assert cap.out == ""
        assert cap.err == ("decodewall: no record matches --impl triton_w4 --status crashed "
                           "(the files hold 4 records: 3 ok, 1 crashed)\n")


def test_show_a_record_without_the_optional_fields(tmp_path, capsys):
    """Only op, impl, shape and status are required of a record: the rest show as '-'."""
    path = write(tmp_path / "m.jsonl", {"op": "copy", "impl": "x", "shape": {}, "status": "ok"})
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "decodewall run (no run id) — unknown device (?)" in out and "│ x " in out


def test_show_of_a_real_run_matches_its_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # no cell folded: a long verdict stays on one line
    out = tmp_path / "runs"
    assert main(["run", "--op", "read", "--shape", "N=65536", "--impl", "torch_sum",
                 "--budget", "quick", "--out", str(out), "--no-progress", "--json"]) == 0
    rec, = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    path, = out.glob("*.jsonl")
    assert main(["show", str(path)]) == 0
    shown = capsys.readouterr().out
    assert f"decodewall run {rec['run_id']}" in shown and "torch_sum" in shown
    assert f"{rec['achieved_gbps']:.1f}" in shown and rec["verdict"] in shown


def test_show_without_a_file_prints_the_newest_run_where_run_saves(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "none in results/runs/" in error_line(capsys, ["show"])
    runs = tmp_path / "results" / "runs"
    write(runs / "20261204-153935-cuda-4ae8.jsonl", {**RUN, "impl": "older_impl"})
    write(runs / "20261205-101010-cpu-0001.jsonl", {**RUN, "run_id": "20261205-101010-cpu-0001",
                                                     "impl": "newest_impl"})
    assert main(["show"]) == 0
    out = capsys.readouterr().out
    assert "newest_impl" in out and "older_impl" not in out
    assert "results/runs/20261205-101010-cpu-0001.jsonl" in out


def test_show_a_folder_prints_every_results_file_in_it_in_name_order(tmp_path, capsys):
    folder = tmp_path / "kept"
    write(folder / "b.jsonl", {**RUN, "run_id": "run-b", "impl": "impl_b"})
    write(folder / "a.jsonl", {**RUN, "run_id": "run-a", "impl": "impl_a"})
    (folder / "notes.txt").write_text("not a results file")
    assert main(["show", str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.index("decodewall run run-a") < out.index("decodewall run run-b")
    (tmp_path / "empty").mkdir()
    line = error_line(capsys, ["show", str(tmp_path / "empty")])
    assert "empty: a folder without results files (*.jsonl)" in line


def test_a_file_named_twice_is_shown_once(tmp_path, capsys):
    """The same file twice, a folder and a file in it, or a link to it: each record once,
    counted once, in show and plot alike."""
    path = write(tmp_path / "r.jsonl", *records())
    for argv in ([str(path), str(path)], [str(tmp_path), str(path)]):
        assert main(["show", *argv]) == 0
        out = capsys.readouterr().out
        assert out.count("triton_w4") == 1 and "4 records: 3 ok, 1 crashed" in out
        assert main(["show", *argv, "--json"]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 4
    link = tmp_path / "link.jsonl"
    link.symlink_to(path)
    assert main(["plot", str(path), str(link), "--terminal"]) == 0  # one run of each case
    assert capsys.readouterr().out.count("triton_w4") == 1


def test_a_failure_without_an_error_shows_its_status_alone(tmp_path, capsys):
    path = write(tmp_path / "r.jsonl", {**records()[3], "error": None})
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "CRASHED" in out and "None" not in out


@pytest.mark.parametrize("columns", [80, 100, 120, 200])
def test_numbers_are_whole_on_a_narrow_terminal(columns, tmp_path, capsys, monkeypatch):
    """rich folds a cell narrower than its text: at 80 columns 3356.1 GB/s showed as "335"
    over "6.1". Columns of NARROW_DROPS go instead, and the caption says which."""
    monkeypatch.setenv("COLUMNS", str(columns))
    path = write(tmp_path / "r.jsonl", *records())
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert all(len(line) <= columns for line in out.splitlines())
    for number in ("3356.1", "1629.0", "4038.0"):
        assert number in out, (columns, number)
    if columns == 80:
        assert "left out to fit 80 columns" in " ".join(out.split())
    if columns == 200:
        assert "left out to fit" not in out and "± IQR/2" in out


def test_a_terminal_too_narrow_even_then_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    assert main(["show", str(write(tmp_path / "r.jsonl", *records()))]) == 0
    assert "60 columns are still too few: numbers may be cut" in " ".join(
        capsys.readouterr().out.split())


def test_show_names_the_cuda_hip_and_jax_versions_a_run_recorded(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a short path: the caption is as wide as the table
    v = {"torch": "2.11.0+cu130", "triton": "3.6.0", "cuda": "13.0", "jax": "0.8.1"}
    write(tmp_path / "r.jsonl", *({**r, "versions": v} for r in records()))
    assert main(["show", "r.jsonl"]) == 0
    assert "torch 2.11.0+cu130, triton 3.6.0, cuda 13.0, jax 0.8.1" in capsys.readouterr().out
    rocm = {"torch": "2.9.1+rocm6.4", "triton": "3.5.1", "cuda": None, "hip": "6.4.43482"}
    write(tmp_path / "h.jsonl", *({**r, "versions": rocm} for r in records()))
    assert main(["show", "h.jsonl"]) == 0
    assert "torch 2.9.1+rocm6.4, triton 3.5.1, hip 6.4.43482 " in capsys.readouterr().out


def test_show_names_the_c_compiler_and_says_again_what_ran_on_one_thread(tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    build = {"compiler": "Apple LLVM 15.0.0 (clang-1500.3.9.4)", "flags": "-O3 -march=native "
             "-fPIC -shared", "openmp": False}
    write(tmp_path / "r.jsonl", *({**r, "c_build": build} for r in records()))
    assert main(["show", "r.jsonl"]) == 0
    cap = capsys.readouterr()
    assert "C Apple LLVM 15.0.0 (clang-1500.3.9.4), no OpenMP" in " ".join(cap.out.split())
    assert "ran on one thread: Apple LLVM 15.0.0 (clang-1500.3.9.4) could not build with " \
           "-fopenmp" in cap.err


def test_a_run_the_filters_leave_nothing_of_is_not_printed(tmp_path, capsys):
    """Two files, a filter that keeps records of one: the other run has no table, not an empty
    one under its title."""
    a = write(tmp_path / "a.jsonl", *records())
    b = write(tmp_path / "b.jsonl", {**RUN, "run_id": "other-run", "impl": "k2"})
    assert main(["show", str(a), str(b), "--impl", "k2"]) == 0
    out = capsys.readouterr().out
    assert "decodewall run other-run" in out and "20261204-153935-cuda-4ae8" not in out


def test_a_filtered_run_keeps_its_title(tmp_path, capsys):
    """The title is the run's (its roof readings, all of them), whichever records the filters
    keep: the caption says how many they left out."""
    path = write(tmp_path / "r.jsonl", *records())
    assert main(["show", str(path), "--impl", "triton_w4"]) == 0
    out = capsys.readouterr().out
    assert "roof 4282.3-4284.3 GB/s (re-measured)" in out and "3 left out by the filters" in out


def test_a_folder_named_like_a_results_file_is_passed_over(tmp_path, capsys):
    folder = tmp_path / "kept"
    write(folder / "a.jsonl", {**RUN, "impl": "impl_a"})
    (folder / "old.jsonl").mkdir()
    assert main(["show", str(folder)]) == 0
    assert "impl_a" in capsys.readouterr().out


def test_a_name_no_record_has_is_answered_with_every_name_in_order(tmp_path, capsys):
    ops = ["gemv_a", "gemv_b", "gemv_c", "gemv_d", "gemv_e", "gemv_f"]
    path = write(tmp_path / "r.jsonl", *({**RUN, "op": op} for op in reversed(ops)))
    line = error_line(capsys, ["show", str(path), "--op", "zzz"])
    assert line.endswith(f"--op 'zzz' matches no record (ops in the files: {', '.join(ops)})")


def test_show_without_a_file_picks_the_newest_whatever_the_order_they_were_made(
        tmp_path, capsys, monkeypatch):
    """The newest is the last run id in name order (ids start with their time), not the last
    the folder lists."""
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "results" / "runs"
    for rid in ("20261204-100000-cpu-0002", "20261204-090000-cpu-0001",
                "20261205-101010-cpu-0005", "20261204-110000-cpu-0003",
                "20261204-120000-cpu-0004"):
        write(runs / f"{rid}.jsonl", {**RUN, "run_id": rid, "impl": f"impl_{rid[-1]}"})
    assert main(["show", "--json"]) == 0
    assert [json.loads(x)["impl"] for x in capsys.readouterr().out.splitlines()] == ["impl_5"]


def test_the_precision_comparison_holds_only_the_records_the_filters_keep(tmp_path, capsys):
    path = _precision_run(tmp_path)
    assert main(["show", str(path), "--op", "gemv_w8"]) == 0
    out = capsys.readouterr().out
    assert "best_gemv_w8" in out and "best_gemv_bf16" not in out


def test_show_says_again_what_the_run_said_of_a_shared_cpu(tmp_path, capsys):
    """A kept run timed on a busy CPU is shown with the notes `run` ended with: its times include
    the wait, and a roof probed beside other work reads low; a quiet run's show says neither."""
    cpu = {**RUN, "backend": "cpu", "device": {"name": "EPYC"}, "cpu_steal_pct": 0.0,
           "roof_contention_pct": 2.0}
    quiet = [{**cpu, "impl": n, "cpu_pressure_pct": 0.5} for n in ("a", "b")]
    path = write(tmp_path / "q.jsonl", *quiet)
    assert main(["show", str(path)]) == 0
    assert "note" not in capsys.readouterr().err
    busy = [quiet[0], {**quiet[1], "cpu_pressure_pct": 45.0, "roof_contention_pct": 60.0}]
    path = write(tmp_path / "b.jsonl", *busy)
    assert main(["show", str(path)]) == 0
    err = capsys.readouterr().err
    assert "1 of 2 timed case(s) ran while other tasks waited for the CPU" in err, err
    assert "the roof was measured while other tasks waited for the CPU" in err, err
    assert main(["show", str(path), "--impl", "a"]) == 0  # of the records shown
    assert "note" not in capsys.readouterr().err


def test_a_filtered_precision_row_keeps_its_speedup_over_the_runs_bf16(tmp_path, capsys):
    """`--op gemv_w8` leaves the bf16 row out, not the run's bf16 time: the INT8 row still has
    its 2x speedup, and no caption says the run had no bf16 time."""
    path = _precision_run(tmp_path)
    assert main(["show", str(path), "--op", "gemv_w8"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "best_gemv_w8" in line and "INT8" in line)
    assert "2.00x" in row and "100%" in row
    assert "no bf16 time" not in out


def test_show_and_compare_say_a_run_stopped_short_of_its_plan(tmp_path, capsys):
    """A file whose records' run_case stops before the plan (Ctrl-C, a full disk, a killed run)
    says so under its table; compare says a case only in the other file may be one it did not
    reach, where the cases alone would read as left out on purpose."""
    recs = records()
    whole = write(tmp_path / "a.jsonl", *[{**r, "run_case": {"index": i // 2 + 1, "of": 2}}
                                           for i, r in enumerate(recs)])
    cut = write(tmp_path / "b.jsonl", *[{**r, "run_id": "20261204-160330-cuda-0001",
                                         "run_case": {"index": 1, "of": 2}} for r in recs[:2]])
    assert main(["show", str(whole)]) == 0
    assert "reached case" not in capsys.readouterr().out
    assert main(["show", str(cut)]) == 0
    words = " ".join(capsys.readouterr().out.split())
    assert "2 records: 2 ok; the run reached case 1 of 2 (it stopped, or is still going)" in words
    assert main(["compare", str(whole), str(cut)]) == 0
    out, err = capsys.readouterr()
    assert "only in A" in out
    assert f"note: B ({cut}): its run reached case 1 of 2 (it stopped, or is still going): " \
           "a case only in A may be one it did not reach" in err
    assert "note: A" not in err
