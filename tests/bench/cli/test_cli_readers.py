"""The readers of results (compare, plot, project --from) and the model commands (project, run
--model) on hostile input: a corrupt record, a name that looks like rich markup or mathtext, an
output path matplotlib cannot write, a number past any sane bound. Each ends with one line on
stderr and exit 2, leaves no file behind, or prints the name as it is written."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from bench.cli import main
from tests.helpers import one_error_line

G = {"op": "gemv_bf16", "impl": "x", "shape": {"M": 1}, "dtype": "bfloat16", "status": "ok",
     "time_s": {"median": 1e-5, "p25": 0.9e-5, "p75": 1.1e-5}, "achieved_gbps": 1.0,
     "pct_roof": 5.0, "roof_gbps": 20.0, "backend": "cpu", "device": {"name": "AMD EPYC"}}
HUGE = "1" + "0" * 400  # a whole number no float holds


def write(path: Path, *records: dict | str) -> Path:
    """A results file, one record (or raw line) a line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def error_line(capsys, argv: list[str]) -> str:
    """`one_error_line`, and no traceback or internal error anywhere in the output."""
    line = one_error_line(capsys, argv)
    assert "internal error" not in line and "Traceback" not in line
    return line


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# --- corrupt records: the reader names file:line and the field ----------------------------------

def _time(v):
    return {"median": v, "p25": v, "p75": v}


CORRUPT = [  # (the record's changed fields or a raw line, what the message names)
    ({"dtype": ["bfloat16"]}, "dtype"),
    ({"dtype": {"name": "bfloat16"}}, "dtype"),
    ({"shape": {"M": [1, 2], "N": {"x": 1}}}, "shape field 'M'"),
    ({"shape": {"M": "1"}}, "shape field 'M'"),
    ({"shape": {"M": -1}}, "shape field 'M'"),
    ({"op": 3}, "op and impl"),
    ({"impl": ["a"]}, "op and impl"),
    ({"pct_roof": -5.0}, "pct_roof"),
    ({"pct_roof": 1e308, "achieved_gbps": 1e308}, "achieved_gbps"),
    ({"pct_roof": 1e308}, "pct_roof"),
    ({"achieved_gbps": 1e-300}, "achieved_gbps"),
    ({"arithmetic_intensity": "y"}, "arithmetic_intensity"),
    ({"roof_gbps": True}, "roof_gbps"),
    ({"device": "gpu"}, "device"),
    ({"device": {"name": ["x"]}}, "device.name"),
    ({"device": {"name": "x", "cache_bytes": "big"}}, "device.cache_bytes"),
    ({"time_s": _time(1e-320)}, "time_s.median"),
    ({"time_s": _time(1e9)}, "time_s.median"),
    ({"time_s": [1e-5]}, "time_s"),
    ({"verdict": 7}, "verdict"),
    ({"run_id": {"a": 1}}, "run_id"),
    (json.dumps(G).replace('"pct_roof": 5.0', '"pct_roof": NaN'), "pct_roof"),
    (json.dumps(G).replace('"median": 1e-05', '"median": Infinity'), "time_s.median"),
    (json.dumps(G).replace('"median": 1e-05', '"median": -Infinity'), "time_s.median"),
    (json.dumps(G).replace('"M": 1', f'"M": {HUGE}'), "shape field 'M'"),
    (json.dumps(G).replace('"M": 1', '"M": 1' + "0" * 5000), "not valid JSON"),
    ({"flush": ["read"]}, "flush"),  # part of compare's and plot's case key: unhashable
    ({"flush": {"mode": "read"}}, "flush"),
    ({"pct_compute": "x"}, "pct_compute"),  # compared with 100 by plot's roof_flag
    ({"baseline": "false"}, "baseline"),  # a string "false" would label the impl a baseline
    ({"warm": 0}, "warm"),
    ({"correct": "no"}, "correct"),
    ("[" * 100_000, "nested too deeply"),
    ('{"a":' * 100_000, "nested too deeply"),
    # a record json reads but writing it back (show --json) would recurse past Python's limit
    (json.dumps(G)[:-1] + ', "x": ' + "[" * 500 + "]" * 500 + "}", "nested too deeply"),
]


def _commands(path: Path, tmp_path: Path) -> list[list[str]]:
    good = write(tmp_path / "good.jsonl", G)
    return [["compare", str(good), str(path)], ["compare", str(path), str(good), "--json"],
            ["plot", str(path), "-o", str(tmp_path / "out" / "p.png")],
            ["plot", str(path), "--terminal"], ["show", str(good), str(path)],
            ["show", str(path), "--json"],
            ["project", "--model", "llama-3-8b", "--chip", "h100-sxm", "--from", str(path)]]


@pytest.mark.parametrize("change, field", CORRUPT, ids=[f for _, f in CORRUPT])
def test_corrupt_record_is_one_line_naming_file_line_and_field(change, field, tmp_path, capsys):
    record = change if isinstance(change, str) else {**G, **change}
    path = write(tmp_path / "bad.jsonl", G, record)
    for argv in _commands(path, tmp_path):
        line = error_line(capsys, argv)
        assert "bad.jsonl:2:" in line and field in line, (argv, line)
        assert len(line) < 400, line
    assert not (tmp_path / "out").exists()


def test_results_file_that_never_ends_is_one_line_and_exit_2(tmp_path):
    """/dev/zero (a device: reading it never ends) and a FIFO (reading it blocks until a writer
    comes) given as results: one line on stderr and exit 2, promptly, not a hang or all memory."""
    import os
    from tests.helpers import run_cli
    good = write(tmp_path / "good.jsonl", G)
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    for path, kind in (("/dev/zero", "is a character device"), (str(fifo), "is a FIFO")):
        for argv in (["compare", str(good), path], ["plot", path, "--terminal"], ["show", path],
                     ["project", "--model", "llama-3-8b", "--chip", "h100-sxm", "--from", path]):
            r = run_cli(*argv, timeout=60)
            err = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(err) == 1, (argv, r.stderr[-2000:])
            assert err[0].startswith("decodewall: error:") and f"{path}: {kind}" in err[0]
            assert "Traceback" not in r.stderr


def test_results_line_past_the_bound_is_one_line(tmp_path, capsys, monkeypatch):
    """A regular file whose line has no end in sight (a huge file without newlines) is refused
    at MAX_LINE bytes, naming the line, not read whole into memory."""
    from bench import results
    monkeypatch.setattr(results, "MAX_LINE", 4096)
    path = write(tmp_path / "long.jsonl", G, "\0" * 100_000)
    for argv in _commands(path, tmp_path):
        line = error_line(capsys, argv)
        assert "long.jsonl:2: a line of over 4096 bytes" in line, (argv, line)


def test_extreme_but_valid_records_plot_and_compare_cleanly(tmp_path, capsys):
    """The bounds' own edges are readable: no warning, overflow or Infinity downstream."""
    lo = {**G, "achieved_gbps": 1e-12, "arithmetic_intensity": 1e-12, "pct_roof": 1e-12,
          "roof_gbps": 1e-12, "ridge": 1e-12, "flops": 1e-12, "bytes": 1e-12}
    hi = {**G, "impl": "y", "achieved_gbps": 1e9, "arithmetic_intensity": 1e9, "pct_roof": 1e6,
          "roof_gbps": 1e9, "ridge": 1e9, "flops": 1e18, "bytes": 1e18, "time_s": _time(1e6)}
    fast = {**G, "impl": "z", "time_s": _time(1e-12), "shape": {"M": 2**53}}
    path = write(tmp_path / "edge.jsonl", lo, hi, fast)
    assert main(["compare", str(path), str(path), "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and all(isinstance(r.get("ratio"), float) for r in rows)
    assert main(["plot", str(path), "--terminal"]) == 0
    pytest.importorskip("matplotlib")
    import warnings
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["plot", str(path), "-o", str(tmp_path / "c" / "e.png")]) == 0
    # overflow, a log axis with no positive value, a NaN limit: each would warn
    assert not [w for w in seen if issubclass(w.category, (UserWarning, RuntimeWarning))], \
        [str(w.message) for w in seen]
    assert files_in(tmp_path / "c") == ["e-roofline.png", "e.png"]


# --- names that look like rich markup: printed as written ---------------------------------------

MARKUP = ["gemv[/]", "gemv[v2]", "[bold]x[/", "[/]", "a[red]b", ":fire:"]


def _render(table) -> str:
    con = Console(width=250, record=True, file=io.StringIO())
    con.print(table)
    return con.export_text()


def test_results_table_shows_impl_names_and_title_as_written():
    from bench.report.table import results_table
    recs = [{**G, "impl": name, "verdict": "at the wall", "error": None} for name in MARKUP]
    recs.append({**G, "impl": "e", "status": "error", "error": "boom [/] here", "time_s": None})
    text = _render(results_table(recs, title="decodewall run [/b] — dev[old]"))
    for name in MARKUP + ["boom [/] here", "decodewall run [/b] — dev[old]"]:
        assert name in text, name


def test_precision_table_shows_impl_names_as_written():
    from bench.report.precision import precision_table
    recs = [{**G, "op": op, "impl": f"{op}[/]", "shape": {"M": 1, "N": 8, "K": 128},
             "bytes": b, "time_s": _time(t)}
            for op, b, t in (("gemv_bf16", 2000, 2e-5), ("gemv_w8", 1000, 1e-5))]
    assert "gemv_w8[/]" in _render(precision_table(recs))


def test_run_model_step_table_shows_names_as_written(tmp_path, capsys):
    import dataclasses
    from types import SimpleNamespace

    from kernels import OPS
    from bench.cli.step import _shape_for, build_step, kernel_op, print_step
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"_name": "[/]m[v2]", "hidden_size": 64, "intermediate_size": 128,
                               "num_hidden_layers": 2, "num_attention_heads": 2,
                               "vocab_size": 100, "model_type": "llama"}))
    args = SimpleNamespace(model=str(cfg), batch=None, ctx=64, weights=None, kv=None)
    args.model_step = step = build_step(args)
    k = step.kernels[0]
    shape = dataclasses.asdict(_shape_for(OPS[kernel_op(k, step)], k.dims, k.name))
    recs = [{**G, "op": kernel_op(k, step), "impl": "mine[/]", "shape": shape}]
    print_step(args, recs, SimpleNamespace(gbps=20.0))
    out = capsys.readouterr().out
    assert "[/]m[v2] decode step" in out and "mine[/]" in out


@pytest.mark.parametrize("name", MARKUP)
def test_readers_print_names_as_written(name, tmp_path, capsys):
    path = write(tmp_path / "m.jsonl", {**G, "op": name, "impl": name})
    other = write(tmp_path / "m2.jsonl", {**G, "op": name, "impl": name})  # no one-run note
    assert main(["compare", str(path), str(other)]) == 0
    assert main(["plot", str(path), "--terminal"]) == 0
    assert main(["show", str(path)]) == 0
    cap = capsys.readouterr()
    assert cap.out.count(name) >= 6 and not cap.err, cap


@pytest.mark.parametrize("text", MARKUP)
def test_readers_print_error_text_as_written(text, tmp_path, capsys):
    """The error of a record that is not ok (a plugin's exception text) is plain text in
    compare's status verdict, in plot's terminal rows and in show's table."""
    a = write(tmp_path / "a.jsonl", G)
    b = write(tmp_path / "b.jsonl", {**G, "status": "error", "error": f"boom {text}",
                                     "time_s": None})
    assert main(["compare", str(a), str(b)]) == 0
    assert f"B error: boom {text}" in capsys.readouterr().out
    assert main(["plot", str(a), str(b), "--terminal"]) == 0
    cap = capsys.readouterr()
    assert f"× error: boom {text}" in cap.out and not cap.err, cap
    assert main(["show", str(b)]) == 0
    cap = capsys.readouterr()
    assert f"ERROR: boom {text}" in cap.out and not cap.err, cap


ESCAPES = ["\x1b[2J\x1b[H", "\x1b]0;owned\x07", "\x9b31m", "\x1bc"]  # clear, title, C1 CSI, reset


@pytest.mark.parametrize("esc", ESCAPES)
def test_readers_drop_terminal_escapes_from_a_file(esc, tmp_path, capsys):
    """A results file is input: an escape sequence in a name or an error cannot clear, retitle
    or recolor the terminal of whoever compares, plots or shows it (run drops them before
    recording)."""
    a = write(tmp_path / "a.jsonl", {**G, "impl": f"k{esc}x"},
              {**G, "impl": "e", "status": "error", "error": f"boom{esc}!", "time_s": None})
    b = write(tmp_path / "b.jsonl", {**G, "impl": f"k{esc}x"},
              {**G, "impl": "e", "status": "crashed", "error": f"bang{esc}!", "time_s": None})
    for argv in (["compare", str(a), str(b)], ["plot", str(a), str(b), "--terminal"],
                 ["show", str(a), str(b)]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "kx" in out and not any(c in out for c in "\x1b\x07\x9b"), (argv, out)
    assert main(["compare", str(a), str(b)]) == 0
    assert "B crashed: bang!" in capsys.readouterr().out
    assert main(["plot", str(a), "--terminal"]) == 0
    assert "× error: boom!" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["d[/b]/r.jsonl", "run[old].jsonl", "x[bold].jsonl"])
def test_plot_terminal_title_shows_the_path_as_written(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / name, G)
    assert main(["plot", name]) == 0
    assert f"% of measured roof — {name}" in capsys.readouterr().out


def test_project_model_name_printed_as_written(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"_name": "[/]bad[v2]", "hidden_size": 64, "intermediate_size": 128,
                               "num_hidden_layers": 2, "num_attention_heads": 2,
                               "vocab_size": 100, "model_type": "llama"}))
    assert main(["project", "--model", str(cfg), "--chip", "h100-sxm"]) == 0
    assert "[/]bad[v2]" in capsys.readouterr().out


def test_markup_in_source_ops_of_from(tmp_path, capsys):
    """--from names the ops it took the efficiency from: an op name from a file, as written."""
    path = write(tmp_path / "r.jsonl", {**G, "op": "my[/]op", "pct_roof": 60.0})
    assert main(["project", "--model", "llama-3-8b", "--chip", "h100-sxm", "--from",
                 str(path)]) == 0
    assert "my[/]op" in capsys.readouterr().out


# --- plot and project output paths --------------------------------------------------------------

@pytest.fixture
def real(tmp_path) -> Path:
    """A small results file plot draws both charts from."""
    recs = [{**G, "impl": impl, "shape": {"M": m, "N": 64, "K": 128}, "flops": 2 * m * 64 * 128,
             "bytes": 2 * 64 * 128, "arithmetic_intensity": m / 1.0, "ridge": 4.0}
            for impl in ("a", "b") for m in (1, 2)]
    return write(tmp_path / "real.jsonl", *recs)


@pytest.fixture
def mpl():
    pytest.importorskip("matplotlib")


@pytest.mark.parametrize("args, expect", [
    (["-o", "{o}/out.xyz"], ".xyz is not an image format"),
    (["-o", "{o}/copy.jsonl"], ".jsonl is not an image format"),
    (["-o", "{o}/a.png", "--roofline", "{o}/r.xyz"], ".xyz is not an image format"),
    (["--roofline", "{o}/r.JSONL"], ".jsonl is not an image format"),
    (["-o", "{o}/a.png", "--roofline", "{f}/r.png"], "is not a folder"),
    (["-o", "{o}/same.png", "--roofline", "{o}/same.png"], "give two files"),
])
def test_plot_bad_output_path_writes_nothing(args, expect, real, tmp_path, capsys, mpl):
    o = tmp_path / "o"
    o.mkdir()
    f = tmp_path / "a_file"
    f.write_text("x")
    argv = ["plot", str(real), *[a.format(o=o, f=f) for a in args]]
    assert expect in error_line(capsys, argv)
    assert files_in(o) == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_plot_writes_all_charts_or_none(real, tmp_path, capsys, mpl):
    """A roofline that cannot be written (a folder /proc refuses) leaves no % of roof chart."""
    o = tmp_path / "o"
    line = error_line(capsys, ["plot", str(real), "-o", str(o / "a.png"), "--roofline",
                               "/proc/nope/r.png"])
    assert "/proc/nope/r.png" in line
    assert not o.exists() or files_in(o) == []


def test_save_all_removes_what_it_staged_on_a_failure(tmp_path, monkeypatch, mpl):
    from bench.report import plot as rp
    figs = [rp.scaling_figure([{"chip": "c", "chips": 1, "tp": 1, "pp": 1, "tokens_per_s": 5.0,
                                "upper_bound": False}]) for _ in range(2)]
    real_replace = rp.os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(rp.os, "replace", replace)
    with pytest.raises(rp.PlotError, match="No space left"):
        rp.save_all([(figs[0], tmp_path / "new" / "a.png"), (figs[1], tmp_path / "b.png")])
    monkeypatch.setattr(rp.os, "replace", real_replace)
    assert calls and files_in(tmp_path) == [] and not (tmp_path / "new").exists()


def test_save_all_into_a_folder_another_plot_makes_meanwhile(tmp_path, monkeypatch, mpl):
    """Two plots into one new folder at once: the one whose mkdir comes second finds it made
    (File exists) and writes its chart there; a failure after that leaves the folder, which
    the other plot's chart is going into."""
    from bench.report import plot as rp

    def fig():
        return rp.scaling_figure([{"chip": "c", "chips": 1, "tp": 1, "pp": 1,
                                   "tokens_per_s": 5.0, "upper_bound": False}])
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **k):  # the other plot gets there between the check and this mkdir
        os.mkdir(self)
        return real_mkdir(self, *a, **k)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert rp.save_all([(fig(), tmp_path / "new" / "a.png")]) == [tmp_path / "new" / "a.png"]

    def replace(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(rp.os, "replace", replace)
    with pytest.raises(rp.PlotError, match="No space left"):
        rp.save_all([(fig(), tmp_path / "other" / "b.png")])
    assert files_in(tmp_path) == ["new/a.png"] and (tmp_path / "other").is_dir()


def test_save_all_undoes_the_moves_before_a_failed_one(tmp_path, monkeypatch, mpl):
    """The second chart's move fails after the first chart went into place: the first goes, the
    chart it replaced comes back, the folder made for it is removed."""
    from bench.report import plot as rp
    figs = [rp.scaling_figure([{"chip": "c", "chips": 1, "tp": 1, "pp": 1, "tokens_per_s": 5.0,
                                "upper_bound": False}]) for _ in range(3)]
    (tmp_path / "old.png").write_bytes(b"the chart before")
    real_replace = rp.os.replace

    def replace(src, dst):
        if Path(dst).name == "b.png":
            raise OSError(1, "Operation not permitted")
        return real_replace(src, dst)
    monkeypatch.setattr(rp.os, "replace", replace)
    with pytest.raises(rp.PlotError, match="b.png: Operation not permitted"):
        rp.save_all([(figs[0], tmp_path / "new" / "a.png"), (figs[1], tmp_path / "old.png"),
                     (figs[2], tmp_path / "b.png")])
    monkeypatch.setattr(rp.os, "replace", real_replace)
    assert files_in(tmp_path) == ["old.png"] and not (tmp_path / "new").exists()
    assert (tmp_path / "old.png").read_bytes() == b"the chart before"
    assert rp.save_all([(figs[1], tmp_path / "old.png")]) == [tmp_path / "old.png"]
    assert (tmp_path / "old.png").read_bytes()[:4] == b"\x89PNG"
    assert files_in(tmp_path) == ["old.png"]


def test_save_all_a_backup_that_fails_half_way_leaves_nothing(tmp_path, monkeypatch, mpl):
    """No hard links there, and the copy of the chart being replaced meets a full disk: the
    half copy goes with the rest, the old chart stays."""
    from bench.report import plot as rp
    fig = rp.scaling_figure([{"chip": "c", "chips": 1, "tp": 1, "pp": 1, "tokens_per_s": 5.0,
                              "upper_bound": False}])
    (tmp_path / "old.png").write_bytes(b"the chart before")

    def no_link(*a, **k):
        raise OSError(1, "Operation not permitted")

    def half_copy(src, dst):
        Path(dst).write_bytes(b"half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(rp.os, "link", no_link)
    monkeypatch.setattr(rp.shutil, "copyfile", half_copy)
    with pytest.raises(rp.PlotError, match="No space left"):
        rp.save_all([(fig, tmp_path / "old.png")])
    assert files_in(tmp_path) == ["old.png"]
    assert (tmp_path / "old.png").read_bytes() == b"the chart before"


def test_save_all_interrupted_just_after_a_move_puts_the_old_chart_back(tmp_path, monkeypatch,
                                                                         mpl):
    from bench.report import plot as rp
    fig = rp.scaling_figure([{"chip": "c", "chips": 1, "tp": 1, "pp": 1, "tokens_per_s": 5.0,
                              "upper_bound": False}])
    (tmp_path / "old.png").write_bytes(b"the chart before")
    real_replace = rp.os.replace

    def move_then_ctrl_c(src, dst):
        real_replace(src, dst)
        if Path(src).suffix == ".tmp":  # the chart's move, not the rollback's
            raise KeyboardInterrupt
    monkeypatch.setattr(rp.os, "replace", move_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        rp.save_all([(fig, tmp_path / "old.png")])
    assert files_in(tmp_path) == ["old.png"]
    assert (tmp_path / "old.png").read_bytes() == b"the chart before"


def test_save_all_interrupted_leaves_nothing(tmp_path, monkeypatch, mpl):
    """Ctrl-C while the charts are moved into place: no chart, no temporary file, no folder made
    for them, and the interrupt goes on up."""
    from bench.report import plot as rp
    figs = [rp.scaling_figure([{"chip": "c", "chips": 1, "tp": 1, "pp": 1, "tokens_per_s": 5.0,
                                "upper_bound": False}]) for _ in range(2)]
    real_replace, moves = rp.os.replace, []

    def replace(src, dst):
        moves.append(dst)
        if len(moves) == 2:
            raise KeyboardInterrupt
        return real_replace(src, dst)
    monkeypatch.setattr(rp.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        rp.save_all([(figs[0], tmp_path / "c" / "a.png"), (figs[1], tmp_path / "c" / "b.png")])
    assert not (tmp_path / "c").exists() and list(tmp_path.iterdir()) == []


def test_plot_title_is_plain_text_not_mathtext(real, tmp_path, capsys, mpl):
    o = tmp_path / "o"
    dollar = write(tmp_path / "d.jsonl", *[{**json.loads(x), "impl": r"$\frac$ x$"}
                                          for x in real.read_text().splitlines()])
    assert main(["plot", str(dollar), "-o", str(o / "t.png"), "--title",
                 r"cost in $\frac per token$"]) == 0
    assert files_in(o) == ["t-roofline.png", "t.png"]
    assert "wrote" in capsys.readouterr().err


def test_plot_draws_text_that_is_not_utf8(real, tmp_path, capsys, mpl):
    """A lone surrogate (a record's `\\ud800` escape; a --title of bytes that are not UTF-8,
    as Python decodes argv) is drawn as '?', not an internal error from matplotlib's renderer."""
    o = tmp_path / "o"
    lone = write(tmp_path / "s.jsonl", *[{**json.loads(x), "impl": "a\ud800"}
                                         for x in real.read_text().splitlines()])
    assert main(["plot", str(lone), "-o", str(o / "t.png"), "--title", "run \udcff"]) == 0
    assert files_in(o) == ["t-roofline.png", "t.png"]
    assert "internal error" not in capsys.readouterr().err


def test_plot_prints_the_paths_it_writes(real, tmp_path, capsys, mpl):
    o = tmp_path / "o"
    assert main(["plot", str(real), "-o", str(o / "noext")]) == 0
    assert capsys.readouterr().err.split() == ["wrote", str(o / "noext.png"), "wrote",
                                               str(o / "noext-roofline.png")]
    assert files_in(o) == ["noext-roofline.png", "noext.png"]
    folder = tmp_path / "exists"
    folder.mkdir()
    assert main(["plot", str(real), "--roofline", str(folder)]) == 0
    assert capsys.readouterr().err.strip() == f"wrote {folder / 'roofline.png'}"
    assert files_in(folder) == ["roofline.png"] and not (tmp_path / "exists.png").exists()
    assert main(["plot", str(real), "-o", str(o / "s.svg")]) == 0
    assert (o / "s.svg").read_text().lstrip().startswith("<?xml")
    assert capsys.readouterr().err.split()[1] == str(o / "s.svg")


@pytest.mark.parametrize("arg", ["{d}", "{d}/", "{n}/"])
def test_project_plot_folder_means_a_file_inside(arg, tmp_path, capsys, mpl):
    d, n = tmp_path / "exists", tmp_path / "new"
    d.mkdir()
    folder = Path(arg.format(d=d, n=n).rstrip("/"))
    assert main(["project", "--model", "llama-3-8b", "--chip", "h100-sxm", "--tp", "1", "--tp", "2",
                 "--plot", arg.format(d=d, n=n)]) == 0
    assert capsys.readouterr().err.strip() == f"wrote {folder / 'scaling.png'}"
    assert files_in(folder) == ["scaling.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"exists", folder.name})


def test_project_plot_bad_extension(tmp_path, capsys, mpl):
    line = error_line(capsys, ["project", "--model", "llama-3-8b", "--plot",
                               str(tmp_path / "p.xyz")])
    assert ".xyz is not an image format" in line and list(tmp_path.iterdir()) == []


def test_project_plot_without_extension_gets_png(tmp_path, capsys, mpl):
    assert main(["project", "--model", "llama-3-8b", "--chip", "h100-sxm",
                 "--plot", str(tmp_path / "chart")]) == 0
    assert capsys.readouterr().err.strip() == f"wrote {tmp_path / 'chart.png'}"
    assert files_in(tmp_path) == ["chart.png"]


# --- project and run --model: numbers past sane bounds ------------------------------------------

@pytest.mark.parametrize("argv, expect", [
    (["project", "--model", "llama-3-8b", "--chip", "h100-sxm", "--ctx", HUGE],
     "--ctx must be at most 16777216"),
    (["project", "--model", "llama-3-8b", "--ctx", str(2**24 + 1)], "--ctx must be at most"),
    (["project", "--model", "llama-3-8b", "--chip", "h100-sxm", "--batch", HUGE],
     "--batch must be at most 4096"),
    (["project", "--model", "llama-3-8b", "--batch", "100000000000000000000"],
     "--batch must be at most 4096"),
    (["project", "--model", "llama-3-8b", "--batch", "4097"], "--batch must be at most 4096"),
    (["project", "--model", "llama-3-8b", "--batch", "1e20"], "--batch must be an integer"),
    (["project", "--model", "llama-3-8b", "--chip", "h100-sxm", "--tp", HUGE],
     "--tp must be at most 65536"),
    (["project", "--model", "llama-3-8b", "--tp", "65537"], "--tp must be at most 65536"),
    (["project", "--model", "llama-3-8b", "--tp", "2", "--pp", HUGE], "--pp must be at most"),
    (["project", "--model", "llama-3-8b", "--tp", "1" + "0" * 5000], "--tp must be an integer"),
    (["run", "--model", "llama-3-8b", "--ctx", HUGE, "--no-save"], "--ctx must be at most"),
    (["run", "--model", "llama-3-8b", "--batch", "4097", "--no-save"], "--batch must be at most 4096"),
    (["run", "--model", "llama-3-8b", "--batch", "1e20", "--no-save"],
     "--batch must be an integer, got '1e20'"),
    # messages
    (["project", "--model", "llama-3-8b", "--kernel-floor-us", "-1"],
     "--kernel-floor-us must be a finite number >= 0"),
    (["project", "--model", "llama-3-8b", "--kernel-floor-us", "inf"], "--kernel-floor-us"),
    (["project", "--model", "llama-3-8b", "--kernel-floor-us", "x"], "--kernel-floor-us"),
])
def test_model_numbers_out_of_bounds(argv, expect, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = error_line(capsys, argv)
    assert expect in line and len(line) < 200, line
    assert list(tmp_path.iterdir()) == []


def test_project_batch_bound_agrees_with_run_model(capsys):
    assert main(["project", "--model", "llama-3-8b", "--chip", "h100-sxm", "--batch", "4096",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["batch"] == 4096


@pytest.mark.parametrize("field", ["hidden_size", "vocab_size", "num_local_experts"])
def test_model_config_field_past_bound(field, tmp_path, capsys):
    cfg = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 2, "vocab_size": 100, "num_experts_per_tok": 1,
           "model_type": "llama"}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg)[:-1] + f', "{field}": {"1" + "0" * 30}}}')
    line = error_line(capsys, ["project", "--model", str(path), "--chip", "h100-sxm"])
    assert f"{field} must be at most" in line and "31-digit" in line


DEEP = {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32,
        "num_key_value_heads": 8, "vocab_size": 128256}


@pytest.mark.parametrize("cfg, tp", [
    # no split of at most 65536 stages holds it: the --tp row shows 65536 stages, not holding
    ({**DEEP, "num_hidden_layers": 70_000, "intermediate_size": 2**24}, ["--tp", "1"]),
    # at tp 8 it holds only past 65536 stages (at tp 32 within them)
    ({**DEEP, "hidden_size": 16384, "num_attention_heads": 128, "intermediate_size": 65536,
      "num_hidden_layers": 2**24}, []),
    ({**DEEP, "hidden_size": 16384, "num_attention_heads": 128, "intermediate_size": 65536,
      "num_hidden_layers": 2**24}, ["--tp", "8"]),
])
def test_project_model_of_more_layers_than_stages_a_split_takes(cfg, tp, tmp_path, capsys):
    """A config of more layers than MAX_CHIPS (65536) stages: the split is bounded there, not
    an internal error from project_split."""
    path = tmp_path / "deep.json"
    path.write_text(json.dumps(cfg))
    assert main(["project", "--model", str(path), "--chip", "h100-sxm", "--json", *tp]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    if tp:
        assert row["pp"] <= 65536 and row["holds"] is False
    else:
        assert row["split"]["pp"] <= 65536 and row["split"]["holds"] is True


@pytest.mark.parametrize("argv", [["compare", "{g}", ""], ["compare", "", "{g}"],
                                  ["plot", "", "--terminal"], ["plot", "{g}", " ", "--terminal"],
                                  ["show", "{g}", ""]])
def test_an_empty_results_path_is_named_empty(argv, tmp_path, capsys):
    """"" is no results file (Path("") is the current folder: ": is a folder" named nothing)."""
    good = write(tmp_path / "good.jsonl", G)
    line = error_line(capsys, [a.format(g=good) for a in argv])
    assert "is empty: give a path" in line, line


def test_from_missing_file_names_it_once(capsys, tmp_path):
    missing = str(tmp_path / "missing.jsonl")
    line = error_line(capsys, ["project", "--model", "llama-3-8b", "--from", missing])
    assert line == f"decodewall: error: --from {missing}: no such file"


@pytest.mark.parametrize("pct, expect", [(0.0, "too little"), (1e-3, "too little"),
                                         (1e6, "no memory efficiency"),
                                         (151.0, "no memory efficiency")])
def test_from_efficiency_out_of_range(pct, expect, tmp_path, capsys):
    path = write(tmp_path / "r.jsonl", {**G, "pct_roof": pct})
    line = error_line(capsys, ["project", "--model", "llama-3-8b", "--from", str(path)])
    assert line.startswith(f"decodewall: error: --from {path}: ") and expect in line


def test_from_allreduce_record_without_a_collective_shape(tmp_path, capsys):
    path = write(tmp_path / "r.jsonl", {**G, "op": "allreduce", "shape": {"M": 1}},
                 {**G, "pct_roof": 60.0})
    assert main(["project", "--model", "llama-3-8b", "--chip", "h100-sxm", "--tp", "2",
                 "--from", str(path)]) == 0
    assert "splits" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["-o", "--roofline", "--plot"])
@pytest.mark.parametrize("where", ["long", "loop", "dangling"])
def test_output_path_the_file_system_refuses_is_one_line(flag, where, real, tmp_path, capsys, mpl):
    """A name past the file system's limit (ENAMETOOLONG), or a folder that is a symlink loop
    or a dangling link: one line and exit 2, not an internal error."""
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    out = {"long": tmp_path / ("a" * 300 + ".png"), "loop": tmp_path / "loop1" / "x.png",
           "dangling": tmp_path / "dangling" / "x.png"}[where]
    argv = (["project", "--model", "llama-3-8b", "--chip", "h100-sxm", "--plot", str(out)]
            if flag == "--plot" else ["plot", str(real), flag, str(out)])
    line = error_line(capsys, argv)
    assert f"cannot write {out}" in line, line
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("argv", [
    ["compare", "{good}", "{bad}"],
    ["plot", "{bad}", "--terminal"],
    ["show", "{bad}"],
    ["project", "--model", "llama-3-8b", "--from", "{bad}"],
    ["project", "--model", "{bad}"],
    ["run", "--op", "copy", "--shape", "N=1024", "--no-save", "--plugin", "{bad}"],
])
def test_control_characters_in_a_path_keep_the_error_one_line(argv, tmp_path, capsys):
    """A path holding a newline or a terminal escape is named with them escaped: still one line,
    and nothing that clears the screen or recolors it."""
    good = write(tmp_path / "good.jsonl", G)
    bad = str(tmp_path / "a\nb\x1b[2J\r.json")
    line = error_line(capsys, [a.format(good=good, bad=bad) for a in argv])
    assert "a\\nb\\x1b[2J\\r.json" in line, line
    assert not any(c in line for c in "\n\r\x1b")


def test_valid_records_without_optional_fields_show_and_plot_cleanly(tmp_path, capsys, mpl):
    """Records the checker accepts but that leave out what a chart or table could use: a
    precision record without M, N, K; a batch sweep without flops; a sweep holding M = 0 (no
    point on a log axis) with a ridge below 1. No error, no warning."""
    import warnings
    t = _time(1e-6)
    prec = write(tmp_path / "p.jsonl",
                 {"op": "gemv_bf16", "impl": "a", "shape": {}, "status": "ok",
                  "group": "precision", "bytes": 100, "time_s": t},
                 {"op": "gemv_bf16", "impl": "a", "shape": {"M": 1, "N": 2, "K": 2},
                  "status": "ok", "group": "precision", "bytes": 100, "time_s": t})
    sweep = write(tmp_path / "s.jsonl", *({"op": "x", "impl": "a", "shape": {"M": m},
                                           "status": "ok", "achieved_gbps": 1,
                                           "arithmetic_intensity": 0.5, "time_s": t}
                                          for m in (1, 2)))
    zero = write(tmp_path / "z.jsonl", *({"op": "x", "impl": "a", "shape": {"M": m}, "status": "ok",
                                          "achieved_gbps": 1, "arithmetic_intensity": a,
                                          "ridge": 1.5, "flops": 10, "time_s": t}
                                         for m, a in ((0, 1), (1, 3), (2, 5))))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["show", str(prec)]) == 0
        for f in (sweep, zero):
            assert main(["plot", str(f), "-o", str(tmp_path / "c" / f"{f.stem}.png")]) == 0
    assert not [w for w in seen if issubclass(w.category, (UserWarning, RuntimeWarning))], \
        [str(w.message) for w in seen]
    assert "error" not in capsys.readouterr().err


def test_readers_and_help_import_neither_torch_nor_the_kernels(tmp_path):
    """show (a precision comparison included), compare, plot --terminal, chips and every
    --help run without importing torch, Triton or kernels/: those take a second or more to
    import, the readers' own work a fraction of that."""
    from tests.helpers import REPO
    shape = {"M": 1, "N": 8, "K": 128}
    recs = [{**G, "op": op, "impl": f"best_{op}", "shape": shape, "bytes": b, "baseline": False,
             "group": "precision", "time_s": {"median": t, "p25": t, "p75": t}}
            for op, b, t in (("gemv_bf16", 2000, 2e-5), ("gemv_w8", 1000, 1e-5))]
    path = str(write(tmp_path / "p.jsonl", *recs))
    commands = [["show", path], ["compare", path, path], ["plot", "--terminal", path],
                ["chips"], ["chips", "--chip", "h200"], ["--help"]]
    commands += [[c, "--help"] for c in ("run", "show", "roof", "chips", "backends", "compare",
                                         "project", "plot")]
    code = f"""
import contextlib, io, sys
from bench.cli import main
for argv in {commands!r}:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            status = main(argv)
        except SystemExit as e:  # --help
            status = e.code
    assert status == 0 and out.getvalue(), (argv, status)
    if argv == ["show", {path!r}]:
        assert "precision: speedup over bf16" in out.getvalue()
print(sorted(m for m in ("torch", "triton", "numpy", "kernels", "bench.runner") if m in sys.modules))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.splitlines()[-1] == "[]", p.stdout[-500:]
