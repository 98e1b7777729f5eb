"""Bad input to the device check's `python -m` tools (sass, warm, check, ncu, peers, env_probe,
the pytest_shard plugin): one line on stderr and exit 2, no traceback, no partial output file."""
from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.helpers import REPO


def _one_line_exit_2(capsys, call, *expect: str) -> str:
    with pytest.raises(SystemExit) as e:
        call()
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert all(x in err[0] for x in expect), err
    return err[0]


def _stub_sass(monkeypatch):
    """sass.main with counting stubbed (no compile) and Triton taken as present."""
    pytest.importorskip("triton")
    import bench.gpucheck.sass as sass
    from bench.gpucheck.sass import LoopCount
    monkeypatch.setattr(sass, "toolchain", lambda: "triton 9.9, ptxas 1.2")
    monkeypatch.setattr(sass, "count", lambda op, dtype, first, dot: [
        LoopCount("gemv_w8", "cfg", 0.1, 10, 168, [("FFMA", 4)], warps=4, shared=2048,
                  step_bytes=16384)])
    monkeypatch.setenv("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "1"))
    from kernels import triton_util
    monkeypatch.setattr(triton_util, "INTERPRET", False)
    return sass


@pytest.mark.parametrize("argv", [["--gbps", "nan"], ["--gbps", "inf"], ["--latency-ns", "nan"],
                                  ["--latency-ns", "inf"]])
def test_sass_refuses_a_figure_that_is_not_finite(argv, monkeypatch, capsys):
    sass = _stub_sass(monkeypatch)
    _one_line_exit_2(capsys, lambda: sass.main(argv), "finite")


def test_sass_out_it_cannot_write_is_refused_before_compiling_and_leaves_no_file(
        monkeypatch, capsys, tmp_path):
    sass = _stub_sass(monkeypatch)
    (tmp_path / "q-dot.txt").mkdir()  # the second file's path is a folder
    _one_line_exit_2(capsys, lambda: sass.main(["--out", str(tmp_path / "q")]), "a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q-dot.txt"]  # no q.txt left behind
    _one_line_exit_2(capsys, lambda: sass.main(["--out", str(tmp_path / "no" / "q")]), "no folder")
    assert sass.main(["--out", str(tmp_path / "ok")]) == 0
    assert (tmp_path / "ok.txt").is_file() and (tmp_path / "ok-dot.txt").is_file()


@pytest.mark.parametrize("module", ["sass", "warm", "flushcmp", "check"])
def test_an_unrecognized_argument_with_a_newline_stays_one_line(module, capsys):
    import importlib
    mod = importlib.import_module(f"bench.gpucheck.{module}")
    err = _one_line_exit_2(capsys, lambda: mod.main(["--bogus", "a\nb"]), "unrecognized")
    assert "a\\nb" in err


def test_warm_with_more_processes_than_cases_and_past_the_bound(monkeypatch, capsys):
    """More processes than cases: each of the first takes one case, the rest none. An N past
    MAX_SHARDS (shares() keeps a list a process) is refused in one line."""
    import torch

    import backends
    from bench.gpucheck import warm
    from kernels import triton_util
    monkeypatch.setattr(warm.os, "nice", lambda n: 0)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(triton_util, "HAS_TRITON", True)
    monkeypatch.setattr(triton_util, "INTERPRET", True)
    monkeypatch.setenv("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "1"))
    monkeypatch.setattr(backends, "get_backend",
                        lambda name: SimpleNamespace(available=lambda: (True, "")))
    cases = [SimpleNamespace(name=f"case{i}") for i in range(3)]
    monkeypatch.setattr(warm, "plan", lambda backend, suite: cases)
    monkeypatch.setattr(warm, "triton_impls", lambda case, backend: [SimpleNamespace(name="k")])
    monkeypatch.setattr(warm, "label", lambda case: case.name)
    done = []
    monkeypatch.setattr(warm, "warm_case", lambda backend, case, impls: (
        done.append(case.name), [("k", "ran under the interpreter in 0.1 s")])[1])
    assert warm.main(["--shard", "0/8", "--backend", "cpu"]) == 0
    assert warm.main(["--shard", "2/8", "--backend", "cpu"]) == 0
    assert warm.main(["--shard", "7/8", "--backend", "cpu"]) == 0  # past the cases: none
    assert done == ["case0", "case2"]
    assert "warm 7/8 done: 0 of 0 pairs" in capsys.readouterr().out
    _one_line_exit_2(capsys, lambda: warm.main(["--shard", f"0/{10 ** 19}", "--backend", "cpu"]),
                     "N <= 1024")


def test_check_out_that_is_a_file_is_one_line(capsys, tmp_path, monkeypatch):
    from bench.gpucheck.check import main
    f = tmp_path / "file"
    f.write_text("x")
    _one_line_exit_2(capsys, lambda: main(["--dry-run", "--out", str(f)]), "File exists")
    monkeypatch.setenv("OUT", str(f))
    _one_line_exit_2(capsys, lambda: main(["--dry-run"]), "File exists")


@pytest.mark.parametrize("argv, expect", [
    (["--limit", "suite=\u00b2"], "expected STEP=SECONDS"),  # a digit to isdigit, not to float
    (["--time-limit", "nan"], "finite"), (["--time-limit", "inf"], "finite")])
def test_check_bad_numbers_are_one_line_and_leave_no_folder(argv, expect, capsys, tmp_path):
    from bench.gpucheck.check import main
    out = tmp_path / "out"
    _one_line_exit_2(capsys, lambda: main(["--dry-run", "--out", str(out), *argv]), expect)
    assert not out.exists()


def test_ncu_parse_of_a_file_it_cannot_read_is_one_line(capsys, tmp_path):
    from bench.gpucheck.ncu import main
    binary = tmp_path / "bin"
    binary.write_bytes(b"\x00\xff\xfe")
    empty = tmp_path / "empty"
    empty.write_text("")
    for path, expect in ((tmp_path / "missing", "No such file"), (tmp_path, "Is a directory"),
                         (binary, "no ncu CSV table"), (empty, "no ncu CSV table")):
        _one_line_exit_2(capsys, lambda: main(["parse", str(path)]), expect)
    _one_line_exit_2(capsys, lambda: main([]), "required")  # argparse's own: one line too


def test_ncu_details_table_without_a_value_column_has_no_reading():
    from bench.gpucheck.ncu import parse_ncu_csv
    assert parse_ncu_csv('"ID","Metric Name"\n"0","dram__bytes_read.sum"\n') == []


@pytest.mark.parametrize("case, expect", [("notjson", "not JSON"), ("[]", "JSON object"),
                                          ("7", "JSON object")])
def test_ncu_target_case_that_is_no_json_object_is_one_line(case, expect, capsys):
    from bench.gpucheck.ncu import main
    _one_line_exit_2(capsys, lambda: main(["target", "--backend", "cpu", "--case", case]), expect)
    assert capsys.readouterr().out == ""


def test_peers_extract_into_a_file_is_one_line(capsys, tmp_path):
    from bench.gpucheck.peers import main
    f = tmp_path / "file"
    f.write_text("x")
    _one_line_exit_2(capsys, lambda: main(["extract", "--into", str(f), str(f)]), "File exists")


def test_peers_extract_of_a_corrupt_archive_says_so_on_one_line(capsys, tmp_path):
    from bench.gpucheck.peers import main
    bad = tmp_path / "bad.tar.xz"
    bad.write_bytes(b"\x00\xff\xfe")
    assert main(["extract", "--into", str(tmp_path / "into"), str(bad)]) == 1  # the check's protocol
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bad.tar.xz: cannot extract: ReadError"), err


@pytest.mark.parametrize("argv", [[], ["nope"], ["cpu", "cuda"]])
def test_env_probe_without_one_backend_is_one_line(argv):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "bench.gpucheck.env_probe", *argv], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=120)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "expected one backend" in err[0], r.stderr


def test_pytest_shard_with_a_superscript_digit_names_the_shard():
    from bench.gpucheck.pytest_shard import parse_shard
    with pytest.raises(ValueError, match="expected I/N"):
        parse_shard("\u00b9/\u00b3")
    with pytest.raises(ValueError, match="expected I/N"):
        parse_shard("0/1025")  # past MAX_SHARDS


def test_warm_with_an_unknown_suite_is_one_line_and_exit_2(monkeypatch, capsys):
    """Its docstring: exit 2 on bad arguments (it said `done: planning suite nope` and exit 0)."""
    import torch

    from bench.gpucheck import warm
    monkeypatch.setattr(warm.os, "nice", lambda n: 0)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setenv("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "1"))
    _one_line_exit_2(capsys, lambda: warm.main(["--backend", "cpu", "--suite", "nope"]),
                     "no such suite", "gpu-check")
    assert capsys.readouterr().out == ""


def test_env_probe_names_the_backends_there_are():
    """env_probe names them without importing torch; the list must stay the registry's."""
    from backends import BACKENDS
    from bench.gpucheck.env_probe import BACKEND_NAMES
    assert tuple(BACKEND_NAMES) == tuple(BACKENDS)


@pytest.mark.parametrize("module", ["sass", "warm", "flushcmp", "check", "ncu", "peers"])
def test_help_under_python_oo_has_no_traceback(module):
    """`python -OO` (PYTHONOPTIMIZE=2) strips docstrings: a tool whose help is its module's
    docstring gets None for it, and must still print its help."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-OO", "-m", f"bench.gpucheck.{module}", "--help"],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-500:]
    assert "usage:" in r.stdout
