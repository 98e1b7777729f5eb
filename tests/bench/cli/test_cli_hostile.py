"""Hostile input across every subcommand: one stderr line, exit 2, no traceback, no results file;
and every --help exits cleanly."""
import json

import pytest

from bench.cli import build_parser, main
from tests.helpers import run_cli

GEMV = ["--op", "gemv_bf16", "--shape", "M=1,N=64,K=128"]
W4 = "gemv_w4"
PA = "paged_attention"
GOOD_RECORD = {"op": "gemv_bf16", "impl": "x", "shape": {"M": 1}, "dtype": "float32",
               "status": "ok", "time_s": {"median": 1e-5, "p25": 1e-5, "p75": 1e-5}}


@pytest.fixture
def files(tmp_path):
    """Hostile files, by name."""
    f = {}
    f["empty"] = tmp_path / "empty.jsonl"
    f["empty"].write_text("")
    f["blank"] = tmp_path / "blank.jsonl"
    f["blank"].write_text("\n\n  \n")
    good = json.dumps(GOOD_RECORD)
    f["truncated"] = tmp_path / "truncated.jsonl"
    f["truncated"].write_text(good + "\n" + good[: len(good) // 2])
    f["binary"] = tmp_path / "binary.jsonl"
    f["binary"].write_bytes(bytes(range(256)) * 4)
    f["array"] = tmp_path / "array.jsonl"
    f["array"].write_text("[1, 2, 3]\n")
    f["bad_time"] = tmp_path / "bad_time.jsonl"
    f["bad_time"].write_text(json.dumps({**GOOD_RECORD, "time_s": {"median": "fast"}}) + "\n")
    f["bad_status"] = tmp_path / "bad_status.jsonl"
    f["bad_status"].write_text(json.dumps({**GOOD_RECORD, "status": "great"}) + "\n")
    f["dir"] = tmp_path / "a_dir"
    f["dir"].mkdir()
    f["garbage_py"] = tmp_path / "garbage.py"
    f["garbage_py"].write_bytes(b"\x00\x01 not python \xff\n")
    f["bad_config"] = tmp_path / "config.json"
    f["bad_config"].write_text('{"hidden_size": ')
    f["a_file"] = tmp_path / "a_file"
    f["a_file"].write_text("not a directory")
    return f


HOSTILE = [
    # top level
    ([], "required: COMMAND"),
    (["nonsense"], "invalid choice"),
    (["--bogus"], "COMMAND"),
    # run
    (["run", *GEMV, "--case-timeout", "0"], "positive number of seconds"),
    (["run", *GEMV, "--case-timeout", "-3"], "positive number of seconds"),
    (["run", *GEMV, "--case-timeout", "abc"], "not a number of seconds"),
    (["run", *GEMV, "--case-timeout", "nan"], "positive number of seconds"),
    (["run", *GEMV, "--case-timeout", "inf"], "positive number of seconds"),
    # past what the collective ranks' process group timer takes (half of it): a week at most
    (["run", *GEMV, "--case-timeout", "1e300"], "at most"),
    (["run", *GEMV, "--seed", "x"], "--seed: not an integer"),
    (["run", *GEMV, "--budget", "fast"], "invalid choice"),
    (["run", "--op", W4, "--shape", "M=1,N=64,K=100,group_size=64"], "impossible shape"),
    (["run", "--op", W4, "--shape", "M=1,N=64,K=128,group_size=48"], "impossible shape"),
    (["run", "--op", PA, "--shape", "B=0,Hq=8,Hkv=2,D=64,context=100"], "impossible shape"),
    (["run", "--op", PA, "--shape", "B=1,Hq=6,Hkv=4,D=64,context=100"], "impossible shape"),
    (["run", "--op", "gemv_bf16", "--shape", ""], "malformed --shape"),
    (["run", "--op", "gemv_bf16", "--shape", "M=1,N=64,K=128,Z=3"], "no shape field Z"),
    (["run", "--op", "gemv_bf16", "--shape", "M=-1,N=64,K=128"], "impossible shape"),
    (["run", *GEMV, "--dtype", "int8"], "does not take dtype"),
    (["run", "--suite", "smoke", "--op", "copy"], "not both"),
    (["run", "--suite", "nosuch"], "unknown suite 'nosuch'"),
    (["run", "--suite", "Smoke"], "did you mean 'smoke'"),
    (["run", "--op", W4, "--impl", "triton_gemv"], "unknown impl 'triton_gemv' for gemv_w4"),
    (["run", "--suite", "attention", "--impl", "simd_c_tiled"], "unknown impl 'simd_c_tiled'"),
    (["run", "--op", "gemv_bf16", "--shape", "M=1,N=64,K=128,group_size=64"], "no shape field"),
    (["run", "--op", W4, "--shape", "B=1,N=64,K=128"], "no shape field B"),
    (["run", "--suite", "smoke", "--dtype", "int8"], "suite smoke has no int8 cases"),
    (["run", "--suite", "smoke", "--dtype", "float64"], "unknown dtype 'float64'"),
    (["run", "--suite", "decode", "--world-size", "2"], "collective ops"),
    (["run", *GEMV, "--out", "{a_file}/sub"], "results directory"),
    (["run", *GEMV, "--out", "/dev/null"], "results directory"),
    (["run", *GEMV, "--plugin", "{dir}"], "is a directory"),
    (["run", *GEMV, "--plugin", "{garbage_py}"], "failed to load"),
    (["run", *GEMV, "--out", "{a_file}"], "results directory"),
    (["run", "--model", "no-such-model"], "no-such-model"),
    # roof, chips, backends
    (["roof", "--backend", "nope"], "unknown backend"),
    (["roof", "--chip", "nope"], "unknown chip"),
    (["roof", "--budget", "x"], "invalid choice"),
    (["chips", "--chip", "nope"], "unknown chip"),
    (["backends", "--bogus"], "unrecognized arguments"),
    # compare
    (["compare", "{empty}", "{empty}"], "no result records"),
    (["compare", "{blank}", "{blank}"], "no result records"),
    (["compare", "{truncated}", "{truncated}"], ":2: not valid JSON"),
    (["compare", "{binary}", "{binary}"], "binary.jsonl"),
    (["compare", "{array}", "{array}"], "not a decodewall result record"),
    (["compare", "{bad_time}", "{bad_time}"], "time_s"),
    (["compare", "{bad_status}", "{bad_status}"], "unknown status"),
    (["compare", "{dir}", "{dir}"], "a_dir"),
    (["compare", "{empty}"], "required"),
    (["compare", "missing.jsonl", "{empty}"], "no such file"),
    # project
    (["project", "--model", "no-such-model"], "no-such-model"),
    (["project", "--model", "llama-3-8b", "--batch", "0"], "at least 1"),
    (["project", "--model", "llama-3-8b", "--weights", "int3"], "invalid choice"),
    (["project", "--model", "llama-3-8b", "--efficiency", "2"], "--efficiency"),
    (["project", "--model", "llama-3-8b", "--from", "missing.jsonl"], "no such file"),
    (["project", "--model", "{bad_config}"], "config.json"),
    (["project", "--model", "llama-3-8b", "--from", ""], "--from: is empty"),  # not "not given"
    (["project", "--model", "llama-3-8b", "--plot", " "], "--plot: is empty"),
    # plot
    (["plot", "missing.jsonl"], "no such file"),
    (["plot", "{empty}"], "no result records"),
    (["plot", "{truncated}"], "not valid JSON"),
    (["plot", "{truncated}", "-o", ""], "--out: is empty"),
    (["plot", "{truncated}", "--roofline", ""], "--roofline: is empty"),
    # show
    (["show"], "no results file given, and none in results/runs/"),
    (["show", "missing.jsonl"], "no such file"),
    (["show", "{binary}"], "binary.jsonl"),
    (["show", "{bad_status}", "--json"], "unknown status"),
    (["show", "{dir}"], "a folder without results files"),
    (["show", "{truncated}", "--status", "fine"], "invalid choice: 'fine'"),
    (["show", ""], "is empty"),
    (["show", "a" * 300], "File name too long"),
]


@pytest.mark.parametrize("argv, expect", HOSTILE, ids=[" ".join(a) or "(none)" for a, _ in HOSTILE])
def test_hostile_invocation(argv, expect, files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default --out (results/runs) would land here
    out = tmp_path / "runs"
    argv = [a.format(**files) for a in argv]
    if argv and argv[0] == "run" and "--out" not in argv:
        argv += ["--out", str(out)]
    rc = main(argv)
    cap = capsys.readouterr()
    lines = [x for x in cap.err.splitlines() if x.strip()]
    assert rc == 2, cap.err
    assert len(lines) == 1 and lines[0].startswith("decodewall: error:"), cap.err
    assert expect in lines[0], lines[0]
    assert "Traceback" not in cap.err + cap.out
    assert not out.exists() or not list(out.iterdir()), "a results file was left behind"
    assert not (tmp_path / "results").exists()


def test_at_least_25_hostile_invocations_across_every_subcommand():
    commands = {a[0] for a, _ in HOSTILE if a and not a[0].startswith("-")} - {"nonsense"}
    assert len(HOSTILE) >= 25
    assert commands == set(subcommands())


def subcommands() -> list[str]:
    p = build_parser()
    (sub,) = [a for a in p._actions if a.dest == "command"]
    return list(sub.choices)


def test_help_through_the_real_entry_point():
    for argv in (["--help"], ["-h"]):
        p = run_cli(*argv, timeout=120)
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
        for cmd in subcommands():
            assert cmd in p.stdout


@pytest.mark.parametrize("cmd", subcommands())
def test_every_subcommand_help_exits_cleanly(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    cap = capsys.readouterr()
    assert e.value.code == 0 and "Traceback" not in cap.err
    assert cap.out.startswith(f"usage: decodewall {cmd}")


def test_no_arguments_says_what_to_do(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "COMMAND" in err and "--help" in err


@pytest.mark.parametrize("env", [{"PYTHONIOENCODING": "ascii"},
                                 {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0",
                                  "PYTHONIOENCODING": ""}])
def test_an_output_encoding_without_unicode_does_not_crash(env, tmp_path):
    """Tables hold µs, — and box lines, and records names in any script: where stdout cannot
    encode them, they print as '?' instead of ending the command with an internal error."""
    rec = {**GOOD_RECORD, "impl": "\u00e9\u2603\U0001F600", "backend": "cpu",
           "device": {"name": "\u00c9PYC"}}
    path, other = tmp_path / "uni.jsonl", tmp_path / "uni2.jsonl"  # two runs: no one-run note
    for f in (path, other):
        f.write_text(json.dumps(rec) + "\n")
    for argv in (["chips", "--chip", "h100-sxm"], ["compare", str(path), str(other)],
                 ["project", "--help"]):
        p = run_cli(*argv, timeout=60, env=env)
        assert p.returncode == 0 and not p.stderr, (argv, p.stderr[-500:])


def test_columns_that_is_not_a_number_is_ignored(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "abc")
    assert main(["chips", "--chip", "h100-sxm"]) == 0
    assert "h100-sxm" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["backends"], ["run", "--list"]])
def test_torch_refusing_its_environment_is_one_line(argv):
    """torch raises as it imports when TORCH_LOGS names no log: a command that needs torch ends
    with one line and exit 2 before it begins, instead of torch's traceback and its list of
    valid settings."""
    p = run_cli(*argv, timeout=60, env={"TORCH_LOGS": "junk"})
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1, p.stderr[-2000:]
    assert err[0].startswith("decodewall: error: cannot start: ValueError: Invalid log settings")
    assert "Traceback" not in p.stderr and not p.stdout


def test_torchs_refusal_is_joined_into_one_line_and_cut_at_240_characters(monkeypatch):
    """torch wraps its message over lines and lists every valid setting after it: the line
    keeps its start, joined, and cuts the rest."""
    import builtins

    from bench.cli import _import_torch
    from bench.errors import UsageError
    real_import = builtins.__import__
    long = "Invalid log settings:\n  junk,\nvalid settings: " + "x" * 500
    for said, shown in (("short\n  one", "short one"),
                        (long, " ".join(long.split())[:240] + "...")):
        def refuse(name, *args, **kwargs):
            if name == "torch":
                raise ValueError(said)
            return real_import(name, *args, **kwargs)
        monkeypatch.setattr(builtins, "__import__", refuse)
        with pytest.raises(UsageError) as e:
            _import_torch()
        assert str(e.value) == f"cannot start: ValueError: {shown}"


def test_readers_work_where_torch_cannot_start(tmp_path):
    """chips, show, compare and plot --terminal do not import torch, so the environment that
    stops torch does not stop them; a figure only the kernels' byte count gives (the ideal of a
    precision row without its bf16 case) is left out there."""
    path, other = tmp_path / "r.jsonl", tmp_path / "r2.jsonl"  # two runs: no one-run note
    for f in (path, other):
        f.write_text(json.dumps({**GOOD_RECORD, "impl": "kept_run"}) + "\n")
    w8 = tmp_path / "w8.jsonl"
    w8.write_text(json.dumps({**GOOD_RECORD, "op": "gemv_w8", "impl": "lone_w8", "bytes": 1000,
                              "shape": {"M": 1, "N": 8, "K": 128}, "group": "precision"}) + "\n")
    env = {"TORCH_LOGS": "junk"}
    for argv, shown in ((["chips", "--chip", "h100-sxm"], "h100-sxm"),
                        (["show", str(path)], "kept_run"),
                        (["show", str(w8)], "precision: speedup over bf16"),
                        (["compare", str(path), str(other)], "kept_run"),
                        (["plot", "--terminal", str(path)], "kept_run")):
        p = run_cli(*argv, timeout=60, env=env)
        assert p.returncode == 0 and shown in p.stdout and not p.stderr, (argv, p.stderr[-500:])


@pytest.mark.parametrize("argv, starts, ends", [
    (["run", "--op", "gemv_bf1" + "x" * 100_000], "unknown op 'gemv_bf1x",
     "(known: allreduce, copy, gemv_bf16, gemv_w4, gemv_w8, paged_attention, "
     "paged_attention_kv8, read)"),
    (["run", "--op", "gemv_bf16", "--shape", "M=" + "9" * 50_000 + ",N=8,K=8"],
     "malformed --shape 'M=999", "999' is not an integer"),  # names the field's text twice
    (["chips", "--chip", "h" * 100_000], "unknown chip 'hhh", "hhh' (see `decodewall chips`)"),
])
def test_a_name_of_any_length_is_echoed_in_part(capsys, argv, starts, ends):
    """A 100 kB name gives one error line of at most ~1000 characters, not 100 kB (or twice
    that where the message names it twice): its start and its closing hint are kept."""
    from bench.errors import MAX_LINE
    assert main(argv) == 2
    cap = capsys.readouterr()
    lines = cap.err.splitlines()
    assert len(lines) == 1 and not cap.out, cap
    line = lines[0]
    assert line.startswith("decodewall: error: " + starts) and line.endswith(ends), line
    assert len(line) <= len("decodewall: error: ") + MAX_LINE and " characters]… " in line


@pytest.mark.parametrize("how", ["shadowed", "overwritten"])
def test_a_foreign_package_of_the_same_name_is_one_line_before_anything_runs(how, tmp_path):
    """PyPI has other `kernels` (Hugging Face's), `bench` and `backends` distributions: one found
    ahead of ours on the path, or pip's overwrite of our kernels/__init__.py in an install, is one
    line naming it and exit 2, not an internal error deep in an import."""
    import os
    import shutil
    import subprocess
    import sys
    from tests.helpers import REPO
    if how == "shadowed":  # another `kernels` ahead of this checkout on the path
        (tmp_path / "kernels").mkdir()
        (tmp_path / "kernels" / "__init__.py").write_text("from .deps import x\n")
        path = f"{tmp_path}{os.pathsep}{REPO}"
    else:  # an install (the packages side by side) whose kernels/__init__.py is another's
        for d in ("kernels", "bench", "backends"):
            shutil.copytree(REPO / d, tmp_path / d,
                            ignore=shutil.ignore_patterns("__pycache__"))
        (tmp_path / "kernels" / "__init__.py").write_text('"""Download compute kernels."""\n')
        path = str(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-m", "bench.cli", "backends"], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path, env={**env, "PYTHONPATH": path})
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    (line,) = r.stderr.splitlines()
    assert "kernels (" in line and str(tmp_path / "kernels") in line and "backends (" not in line
    assert "virtual environment" in line and "Traceback" not in r.stderr


def test_windows_is_one_line_before_anything_runs(tmp_path):
    """On Windows (no fcntl, no SIGHUP or process groups) the command says so in one line and
    exits 2, where the import of fcntl would otherwise end it in a traceback."""
    import subprocess
    import sys
    code = ("import runpy, sys; sys.platform = 'win32'; "
            "runpy.run_module('bench.cli', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code, "chips"], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    (line,) = r.stderr.splitlines()
    assert line.startswith("decodewall: error: cannot start: Windows is not supported")
    assert "WSL2" in line
