"""What the commands print as a terminal, a pipe or a file of a given width and encoding takes
it: figures whole (or cut with "…", never folded into another number), units kept in ASCII, and
--json's stdout JSON whatever else is asked for."""
from __future__ import annotations

import json
import re

import pytest

from bench.cli import main
from tests.bench.cli.test_show import records
from tests.bench.cli.test_cli_readers import write
from tests.helpers import run_cli

# the catalog columns that hold figures, and each one's cells in `chips` order
FIGURES = {"mem BW GB/s": ("mem_bw_gbps", 0), "BF16 TFLOP/s": ("bf16_tflops", 1),
           "FP8 TFLOP/s": ("fp8_tflops", 1), "INT8 TOP/s": ("int8_tops", 1),
           "TDP W": ("tdp_w", 0)}


def body_cells(out: str, column: int) -> list[str]:
    """Column `column`'s cell on each body line of the (first) table in `out`, stripped; each
    line of a row that wraps is its own cell."""
    lines = out.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("┡"))
    cells = []
    for x in lines[start + 1:]:
        if x.startswith("└"):
            break
        cells.append(x.split("│")[column + 1].strip())
    return cells


@pytest.mark.parametrize("columns", [60, 70, 80])
def test_chip_figures_are_whole_or_cut_with_an_ellipsis_never_folded(columns, capsys,
                                                                     monkeypatch):
    """Folded, a catalog figure reads as two numbers: at 70 columns H100's 3350 GB/s would be
    "335" over "0", its 1979.0 INT8 TOP/s "197" over "9.0". A figure too wide for its column
    ends in "…"."""
    from backends import load_catalog
    from bench.report.table import fmt_num
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(["chips"]) == 0
    out = capsys.readouterr().out
    header = ("id", "name", "mem BW GB/s", "memory GB", "on-chip SRAM", "BF16 TFLOP/s",
              "FP8 TFLOP/s", "INT8 TOP/s", "TDP W", "chip-to-chip", "source")
    for col, (field, nd) in FIGURES.items():
        whole = {fmt_num(getattr(c, field), nd) for c in load_catalog().values()}
        for cell in body_cells(out, header.index(col)):
            assert not cell or cell in whole or cell.endswith("…"), (columns, col, cell)


def splits(out: str) -> str:
    return out[out.index("splits: one token's step"):]


def test_project_splits_keep_their_figures_whole_on_an_80_column_terminal(capsys, monkeypatch):
    """At 80 columns all thirteen columns would cut every figure ("74…" tok/s, "13…" ms) and
    both chip ids to "h1…": the step's parts (hops, floors, all-reduces, kernels) go first, and
    the caption says so."""
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["project", "--model", "llama-3-70b", "--weights", "int4", "--chip", "h100-sxm",
                 "--tp", "1", "--tp", "8"]) == 0
    out = splits(capsys.readouterr().out)
    assert all(len(x) <= 80 for x in out.splitlines())
    for figure in ("h100-sxm", "40.4", "5.05", "13.44", "74.4", "227"):
        assert figure in out, figure
    assert "left out to fit 80 columns (--json has every field)" in " ".join(out.split())


def test_project_splits_at_40_columns_are_not_an_empty_grid(capsys, monkeypatch):
    """13 columns in 40: rich gives each a width of 0, borders around empty cells with no sign
    that anything is cut. Columns go, figures show, and the caption says numbers may be cut."""
    monkeypatch.setenv("COLUMNS", "40")
    assert main(["project", "--model", "llama-3-70b", "--weights", "int4", "--chip", "h100-sxm",
                 "--tp", "1", "--tp", "8"]) == 0
    out = splits(capsys.readouterr().out)
    shown = [c for k in range(3) for c in body_cells(out, k) if c]
    assert shown, out
    assert "numbers may be cut" in " ".join(out.split())


def test_project_tells_chips_apart_on_an_80_column_terminal(capsys, monkeypatch):
    """Cut, h100-sxm and h100-pcie would both read "h100-…": a chip's id folds instead."""
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["project", "--model", "llama-3-70b", "--weights", "int4"]) == 0
    out = capsys.readouterr().out
    ids = [c for c in body_cells(out, 0) if c]
    assert not any(c.endswith("…") for c in ids), ids
    assert "h100-sxm" in "".join(ids) and "h100-pcie" in "".join(ids), ids


def test_an_ascii_output_keeps_the_time_unit(tmp_path):
    """PYTHONIOENCODING=ascii (or a terminal that says it is ASCII): what the encoding cannot
    hold prints as '?', which would make 58.9 µs "58.9 ?s": µs, ms or s? µ prints as u, one
    character for one, so the columns stay aligned."""
    path = write(tmp_path / "r.jsonl", {**records()[0], "time_s": {
        "median": 58.9e-6, "p25": 50e-6, "p75": 70e-6, "min": 40e-6, "n": 200}})
    p = run_cli("show", str(path), timeout=60, env={"PYTHONIOENCODING": "ascii"})
    assert p.returncode == 0 and not p.stderr, p.stderr[-2000:]
    assert "58.9 us" in p.stdout and "?s" not in p.stdout, p.stdout
    widths = {len(x) for x in p.stdout.splitlines() if x.startswith(("|", "+"))}
    assert len(widths) == 1, widths


def test_an_ascii_output_spells_out_what_one_character_cannot_say(tmp_path):
    """Where the output cannot encode ±, ≤ or →, the texts the console lays out spell them
    out ("+/- IQR/2", "<= marks"), with the columns still aligned; a '?' would say nothing."""
    path = write(tmp_path / "r.jsonl", records()[0])
    env = {"PYTHONIOENCODING": "ascii"}
    p = run_cli("show", str(path), timeout=60, env=env)
    assert p.returncode == 0 and not p.stderr, p.stderr[-2000:]
    header = next(x for x in p.stdout.splitlines() if "IQR/2" in x)
    assert "+/- IQR/2" in header, header
    assert len({len(x) for x in p.stdout.splitlines() if x.startswith(("|", "+"))}) == 1
    p = run_cli("project", "--model", "llama-3-70b", "--weights", "int4", "--chip", "h100-sxm",
                "--tp", "8", timeout=60, env=env)
    assert p.returncode == 0 and not p.stderr, p.stderr[-2000:]
    assert "<= marks a link latency" in " ".join(p.stdout.split()), p.stdout
    assert "? marks" not in p.stdout and "tp x pp" in p.stdout, p.stdout


def test_run_list_json_prints_json(capsys):
    """`run --list --json | jq` reads JSON: each suite and op one object a line, as everything
    --json prints."""
    from kernels import OPS
    from bench.suites import SUITES
    assert main(["run", "--list", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["suite"] for r in rows if "suite" in r] == list(SUITES)
    assert {r["op"]: r["impls"] for r in rows if "op" in r} == {
        name: list(op.impls) for name, op in OPS.items()}
    assert not [r for r in rows if not re.fullmatch(r"suite|op", next(iter(r)))]


def test_compare_tells_apart_cases_that_differ_late_in_their_shape(tmp_path, capsys,
                                                                  monkeypatch):
    """Cut on a 100-column terminal, both rows would read "M=1,N=14336…", K=4096 and K=8192
    alike, and the impl "torch_int4p…": the cells that name a case fold over lines instead, a
    shape between its fields (inside one, "K=4096" over "96" reads K=40)."""
    shape = {"M": 1, "N": 14336, "K": 4096, "group_size": 128}
    rec = {**records()[0], "op": "gemv_w4", "impl": "torch_int4pack_mm", "device": None}
    path = write(tmp_path / "r.jsonl", {**rec, "shape": shape}, {**rec, "shape": {**shape,
                                                                                 "K": 8192}})
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["compare", str(path), str(path)]) == 0
    out = capsys.readouterr().out
    shapes, impls = ("".join(body_cells(out, k)) for k in (1, 3))
    assert "M=1,N=14336,K=4096,group_size=128" in shapes.replace(" ", ""), out
    assert "M=1,N=14336,K=8192,group_size=128" in shapes.replace(" ", ""), out
    fields = [f.rstrip(",") for line in body_cells(out, 1) for f in line.split(", ") if f]
    assert fields == [f"{k}={v}" for s in (shape, {**shape, "K": 8192}) for k, v in s.items()]
    assert impls == "torch_int4pack_mm" * 2, out


def test_compare_on_a_narrow_terminal_keeps_every_column(tmp_path, capsys, monkeypatch):
    """Held at its widest field at 40 columns, the shape would leave the op, impl and medians
    empty cells: where both do not fit, rich shares the room."""
    shape = {"M": 1, "N": 14336, "K": 4096, "group_size": 128}
    rec = {**records()[0], "op": "gemv_w4", "impl": "torch_int4pack_mm", "device": None,
           "shape": shape}
    path = write(tmp_path / "r.jsonl", rec)
    monkeypatch.setenv("COLUMNS", "40")
    assert main(["compare", str(path), str(path)]) == 0
    out = capsys.readouterr().out
    for k in range(8):
        assert "".join(body_cells(out, k)), (k, out)


@pytest.mark.parametrize("columns", [100, 140])
def test_a_model_steps_shapes_fold_between_fields_never_cut(columns, capsys, monkeypatch):
    """`run --model`'s step table names each kernel's shape: cut to "M=1,N=10240,K=8192,group_s…"
    or folded inside a field ("K=81" over "92"), one kernel's shape reads as another's."""
    from types import SimpleNamespace
    from bench.cli.step import build_step, print_step
    monkeypatch.setenv("COLUMNS", str(columns))
    args = SimpleNamespace(model="llama-3-70b", batch=None, ctx=4096, weights="int4", kv=None)
    args.model_step = build_step(args)
    print_step(args, [], SimpleNamespace(gbps=20.0))
    cells = [c for c in body_cells(capsys.readouterr().out, 2) if c]
    assert cells and not [c for c in cells if "…" in c], cells
    fields = [f for c in cells for f in c.replace(",", " ").split()]
    assert all(re.fullmatch(r"[A-Za-z_]+=\d+", f) for f in fields), cells
    assert "group_size=128" in fields and "N=128256" in fields, cells


def test_a_model_steps_rate_past_a_thousand_reads_whole(capsys, monkeypatch):
    """A small model's bandwidth bound on a fast roof passes 1000 tok/s: "1.23e+03 tok/s" is no
    way to print it; project's tables print "1,234", and so does the step."""
    from types import SimpleNamespace
    from bench.cli.step import build_step, print_step
    monkeypatch.setenv("COLUMNS", "200")
    args = SimpleNamespace(model="llama-3-8b", batch=None, ctx=256, weights="int4", kv=None)
    args.model_step = build_step(args)
    print_step(args, [], SimpleNamespace(gbps=20000.0))
    line = next(x for x in capsys.readouterr().out.splitlines() if "bandwidth bound here" in x)
    assert "e+" not in line and re.search(r"→ \d{1,3}(,\d{3})+ tok/s", line), line
