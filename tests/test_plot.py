"""Charts and terminal bars from results files: files produced and non-empty, clear errors."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from bench.cli import main
from bench.plot import pct_bar, ridge_batch, sweeps
from kernels import OPS

from test_models import one_error_line


def record(op, shape_kw, impl, median, roof=10.0, ridge=5.0):
    o = OPS[op]
    shape = o.shape(**shape_kw)
    b, f = o.bytes_moved(shape, torch.bfloat16), o.flops(shape)
    gbps = b / median / 1e9
    return {"op": op, "impl": impl, "shape": shape_kw, "dtype": "bfloat16", "status": "ok",
            "backend": "cpu", "time_s": {"median": median}, "bytes": b, "flops": f,
            "achieved_gbps": gbps, "roof_gbps": roof, "pct_roof": 100 * gbps / roof,
            "datasheet_gbps": None, "arithmetic_intensity": f / b, "ridge": ridge,
            "device": {"name": "test CPU", "chip": None}}


@pytest.fixture
def results(tmp_path):
    recs = [record("gemv_bf16", {"M": m, "N": 1024, "K": 1024}, impl, 2e-4 * (1 + m / 16) * k)
            for m in (1, 2, 4, 8, 16) for impl, k in (("torch_matmul", 1.0), ("mine", 1.5))]
    recs.append(record("copy", {"N": 4096}, "torch_copy", 1e-5))  # probes are not plotted
    recs.append({**recs[0], "status": "failed-check", "impl": "broken", "time_s": None})
    if "paged_attention" in OPS:
        recs.append(record("paged_attention", {"B": 2, "Hq": 8, "Hkv": 2, "D": 64,
                                               "context": 256}, "torch_chunked", 1e-4))
    p = tmp_path / "r.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return p


def test_plot_png_written(results, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "sub" / "roofline.png"
    assert main(["plot", str(results), "-o", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert "wrote" in capsys.readouterr().err


def test_plot_terminal_bars(results, capsys):
    assert main(["plot", "--terminal", str(results)]) == 0
    out = capsys.readouterr().out
    assert "% of measured roof" in out and "█" in out and "broken" not in out


def test_sweeps_and_ridge(results):
    recs = [json.loads(line) for line in results.read_text().splitlines()]
    groups = sweeps([r for r in recs if r["status"] == "ok"])
    assert len([k for k in groups if k[0] == "gemv_bf16"]) == 2
    g = groups[next(k for k in groups if k[3] == "torch_matmul")]
    assert [r["shape"]["M"] for r in g] == [1, 2, 4, 8, 16]
    # bf16 GEMV: intensity ~ M FLOP/B for M << N, K, so a ridge of 5 FLOP/B is crossed near M=5
    assert ridge_batch(g, "M") in (5.0, 6.0)


def test_pct_bar():
    assert str(pct_bar(50, width=10)).startswith("█" * 5 + "░" * 5)
    assert str(pct_bar(None)) == "-"


def test_plot_without_matplotlib_is_one_line(results, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    line = one_error_line(capsys, ["plot", str(results), "-o", str(tmp_path / "x.png")])
    assert "matplotlib" in line
    assert not (tmp_path / "x.png").exists()


def test_plot_bad_inputs(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert "not valid JSON" in one_error_line(capsys, ["plot", str(bad), "-o", "x.png"])
    assert "no such file" in one_error_line(capsys, ["plot", str(tmp_path / "none.jsonl")])
    only_probe = tmp_path / "probe.jsonl"
    only_probe.write_text(json.dumps(record("copy", {"N": 64}, "torch_copy", 1e-6)) + "\n")
    assert "no ok" in one_error_line(capsys, ["plot", str(only_probe), "-o",
                                              str(tmp_path / "p.png")])


def test_size_sweep_gets_its_own_panel_and_stays_off_the_roofline(tmp_path, capsys):
    """Warm records the cache held are drawn against the working set, not under the DRAM roof."""
    from bench.plot import in_cache, size_sweeps
    recs = []
    for n, med, cold in ((256, 1e-5, False), (4096, 4e-4, False), (65536, 8e-3, True)):
        for op, shape, impl in (("gemv_bf16", {"M": 1, "N": n, "K": 1024}, "torch_matmul"),
                                ("read", {"N": 512 * n}, "torch_sum")):
            r = record(op, shape, impl, med)
            recs.append({**r, "warm": True, "cold": cold,
                         "device": {**r["device"], "cache_bytes": 32 * 2**20}})
    groups = size_sweeps(recs)
    assert set(groups) == {("gemv_bf16", "bfloat16", "torch_matmul"), ("read", "bfloat16", "torch_sum")}
    assert [r["shape"]["N"] for r in groups[("gemv_bf16", "bfloat16", "torch_matmul")]] == [256, 4096, 65536]
    assert [in_cache(r) for r in recs[::2]] == [True, True, False]
    from bench.plot import bars_table
    from rich.console import Console
    con = Console(width=200, record=True)
    con.print(bars_table(recs))
    text = con.export_text()
    assert text.count("(in cache)") == 4  # the two smaller sizes of both series, not the DRAM one
    p = tmp_path / "s.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    pytest.importorskip("matplotlib")
    out = tmp_path / "s.png"
    assert main(["plot", str(p), "-o", str(out)]) == 0
    assert out.stat().st_size > 10_000
