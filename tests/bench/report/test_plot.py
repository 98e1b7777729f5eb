"""Charts and terminal bars from results files: files produced and non-empty, clear errors."""
from __future__ import annotations

import io
import json
import sys

import pytest
import torch

from bench.cli import main
from bench.report.plot import pct_bar, ridge_batch, sweeps
from kernels import OPS

from tests.helpers import one_error_line


def record(op, shape_kw, impl, median, roof=10.0, ridge=5.0):
    o = OPS[op]
    shape = o.shape(**shape_kw)
    b, f = o.bytes_moved(shape, torch.bfloat16), o.flops(shape)
    gbps = b / median / 1e9
    return {"op": op, "impl": impl, "shape": shape_kw, "dtype": "bfloat16", "status": "ok",
            "backend": "cpu", "time_s": {"median": median, "p25": median, "p75": median},
            "bytes": b, "flops": f,
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
    out = tmp_path / "sub" / "run.png"
    assert main(["plot", str(results), "-o", str(out)]) == 0
    for png in (out, tmp_path / "sub" / "run-roofline.png"):  # % of roof first, roofline beside
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert capsys.readouterr().err.count("wrote") == 2


def test_plot_output_names(results, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "charts"
    assert main(["plot", str(results), "-o", f"{folder}/"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["pct-roof.png", "roofline.png"]
    alone = tmp_path / "only" / "r.png"
    assert main(["plot", str(results), "--roofline", str(alone)]) == 0
    assert [p.name for p in alone.parent.iterdir()] == ["r.png"]
    both = tmp_path / "both"
    assert main(["plot", str(results), "-o", str(both / "p.png"), "--roofline",
                 str(both / "roof.png")]) == 0
    assert sorted(p.name for p in both.iterdir()) == ["p.png", "roof.png"]
    # nothing ok: the % of roof chart still shows who failed; the roofline is skipped, said so
    failed = tmp_path / "failed.jsonl"
    recs = [json.loads(line) for line in results.read_text().splitlines()]
    failed.write_text("".join(json.dumps({**r, "status": "crashed", "error": "signal 11"}) + "\n"
                              for r in recs))
    capsys.readouterr()
    assert main(["plot", str(failed), "-o", str(tmp_path / "f.png")]) == 0
    err = capsys.readouterr().err
    assert (tmp_path / "f.png").exists() and not (tmp_path / "f-roofline.png").exists()
    assert "not written" in err and "f-roofline.png" in err


def test_plot_terminal_bars(results, capsys):
    assert main(["plot", "--terminal", str(results)]) == 0
    out = capsys.readouterr().out
    assert "% of measured roof" in out and "█" in out
    broken = next(line for line in out.splitlines() if "broken" in line)
    assert "× failed-check" in broken and "█" not in broken
    assert "records: " in out and "1 failed-check" in out and "file" not in out


def test_plot_terminal_says_how_near_the_compute_roof_a_case_past_the_ridge_is(capsys):
    """The batch sweep's bf16 matmul at M = 128, 97% of the compute roof, was a bare 6% bar of
    the bandwidth roof, as if the kernel were slow; the PNG's bars said compute-bound."""
    from rich.console import Console
    from bench.report.plot import bars_table
    r = {**record("gemv_bf16", {"M": 128, "N": 1024, "K": 1024}, "torch_matmul", 2e-3),
         "verdict": "compute-bound", "pct_compute": 97.0}
    slow = {**r, "impl": "slow", "verdict": "compute-bound: below the compute roof",
            "pct_compute": 19.0}
    c = Console(width=250, record=True, file=io.StringIO())
    c.print(bars_table([r, slow]))
    out = c.export_text()
    assert "compute-bound (97% of the compute roof)" in _lines(out, "torch_matmul")[0]
    assert "below the compute roof (19% of it)" in _lines(out, "slow")[0]


def _lines(out: str, word: str) -> list[str]:
    return [line for line in out.splitlines() if word in line]


def test_plot_terminal_shows_every_record_that_is_not_ok(tmp_path, capsys):
    """A file where every record failed: one row each with its status and error, and a caption
    counting them, not an empty table."""
    base = record("gemv_bf16", {"M": 1, "N": 256, "K": 512}, "x", 1e-5)
    fails = [("f_crash", "crashed", "the worker died: SIGSEGV"), ("f_hang", "timeout", "ran past"),
             ("f_wrong", "failed-check", "rel err 0.999"), ("f_err", "error", "kaput [/]"),
             ("f_skip", "skipped", "no C compiler")]
    p = tmp_path / "bad.jsonl"
    p.write_text("".join(json.dumps({**base, "impl": impl, "status": st, "error": err,
                                     "time_s": None, "achieved_gbps": None, "pct_roof": None})
                         + "\n" for impl, st, err in fails))
    assert main(["plot", "--terminal", str(p)]) == 0
    out = capsys.readouterr().out
    for impl, st, err in fails:
        row = _lines(out, impl)
        assert len(row) == 1 and f"× {st}: {err}" in row[0], (impl, out)
    assert "5 records: 1 crashed, 1 timeout, 1 failed-check, 1 error, 1 skipped" in out


def test_plot_terminal_names_the_file_of_each_row(results, tmp_path, capsys):
    """Two files: a file column tells their rows apart (names, or whole paths when the names are
    alike); one file: no such column."""
    other = tmp_path / "other.jsonl"
    other.write_text(results.read_text())
    assert main(["plot", "--terminal", str(results), str(other)]) == 0
    out = capsys.readouterr().out
    assert "┃ file" in out
    rows = _lines(out, "torch_matmul")
    assert len(rows) == 10
    assert [r.split("│")[1].strip() for r in rows] == ["r.jsonl"] * 5 + ["other.jsonl"] * 5
    twin = tmp_path / "sub" / "r.jsonl"
    twin.parent.mkdir()
    twin.write_text(results.read_text())
    assert main(["plot", "--terminal", str(results), str(twin)]) == 0
    out = capsys.readouterr().out
    from bench.report.plot import file_labels
    assert file_labels([str(results), str(twin)]) == [str(results), str(twin)]
    assert len(_lines(out, "torch_matmul")) == 10 and "┃ file" in out
    assert main(["plot", "--terminal", str(results)]) == 0
    assert "file" not in capsys.readouterr().out


def test_sweeps_and_ridge(results):
    recs = [json.loads(line) for line in results.read_text().splitlines()]
    groups = sweeps([r for r in recs if r["status"] == "ok"])
    assert len([k for k in groups if k[0] == "gemv_bf16"]) == 2
    g = groups[next(k for k in groups if k[3] == "torch_matmul")]
    assert [r["shape"]["M"] for r in g] == [1, 2, 4, 8, 16]
    # bf16 GEMV: intensity ~ M FLOP/B for M << N, K, so a ridge of 5 FLOP/B is crossed near M=5
    assert ridge_batch(g, "M") in (5.0, 6.0)


def test_ridge_batch_is_the_first_batch_at_the_ridge_past_64_too():
    """The H200's ridge (189.58 FLOP/B) at 8192 x 8192: INT8 reaches it at M = 100, bf16 at 199,
    by the ops' byte counts; a search in steps of 8 past 64 said 104 and 200."""
    import torch

    from kernels import OPS
    for op, bf16_dtype in (("gemv_w8", torch.bfloat16), ("gemv_bf16", torch.bfloat16)):
        o = OPS[op]
        rec = {"op": op, "dtype": "bfloat16", "ridge": 189.58, "shape": {"M": 1, "N": 8192,
                                                                          "K": 8192}}
        m = int(ridge_batch([rec], "M"))
        at = [o.flops(o.shape(M=k, N=8192, K=8192))
              / o.bytes_moved(o.shape(M=k, N=8192, K=8192), bf16_dtype) >= 189.58
              for k in (m - 1, m)]
        assert at == [False, True], (op, m)
    assert ridge_batch([{**rec, "ridge": 1e9}], "M") is None  # never within 4096


def test_a_ragged_batch_reads_its_context_as_a_most():
    """The decode suite's 8 x 4096 ragged batch held 3235 tokens a sequence: `ctx=4096` in a
    chart's title would overstate its bytes by a quarter."""
    from bench.report.plot import short_shape
    shape = {"B": 8, "Hq": 32, "Hkv": 8, "D": 128, "context": 4096, "block_size": 16,
             "ragged": 1, "pool": 2}
    assert short_shape(shape) == "B=8 Hq=32 Hkv=8 D=128 ctx≤4096"
    assert short_shape({**shape, "ragged": 0}) == "B=8 Hq=32 Hkv=8 D=128 ctx=4096"


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
    pytest.importorskip("matplotlib")  # without it, the chart's output is refused first
    assert "no ok" in one_error_line(capsys, ["plot", str(only_probe), "-o",
                                              str(tmp_path / "p.png")])


def test_size_sweep_gets_its_own_panel_and_stays_off_the_roofline(tmp_path, capsys):
    """Warm records the cache held are drawn against the working set, not under the DRAM roof."""
    from bench.report.plot import in_cache, size_sweeps
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
    from bench.report.plot import bars_table
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


# --- the figures themselves: matplotlib objects, not pixels --------------------------------------

def _figure_texts(fig, gid=None):
    return [t for ax in fig.axes for t in ax.texts if gid is None or t.get_gid() == gid]


def _bars(ax, gid):
    return [p for p in ax.patches if p.get_gid() == gid]


def test_pct_roof_chart_from_records():
    """One bar per ok (case, impl), an empty slot naming the status of each impl that gave no
    number (any status string), baselines hatched, the 80% line drawn and labelled, probes and
    in-cache records left out, repeated runs drawn as their median."""
    pytest.importorskip("matplotlib")
    from bench.report.plot import AT_THE_WALL, pct_roof_figure
    shape = {"M": 1, "N": 1024, "K": 1024}
    base = record("gemv_bf16", shape, "torch_matmul", 2e-4)
    recs = [{**base, "baseline": True},
            {**record("gemv_bf16", shape, "mine", 1e-4), "baseline": False},
            {**record("gemv_bf16", shape, "mine", 3e-4), "baseline": False},  # a second run
            {**record("gemv_bf16", shape, "mine", 2e-4), "baseline": False},  # and a third
            record("copy", {"N": 4096}, "torch_copy", 1e-5),  # a probe: not a case
            {**record("gemv_bf16", {"M": 1, "N": 64, "K": 64}, "mine", 1e-6), "warm": True,
             "cold": False, "impl": "cached_only"}]  # in cache: not a DRAM number
    statuses = ["failed-check", "error", "skipped", "crashed", "timeout", "a-status-from-later"]
    for st in statuses:
        recs.append({**base, "impl": f"impl_{st}", "status": st, "time_s": None,
                     "pct_roof": None, "achieved_gbps": None, "baseline": False,
                     "error": f"why {st}"})
    fig = pct_roof_figure(recs)
    try:
        assert len(fig.axes) == 1
        ax = fig.axes[0]
        bars = _bars(ax, "pct-bar")
        assert len(bars) == 2  # torch_matmul and mine; the six without a number get no bar
        widths = sorted(b.get_width() for b in bars)
        mine = sorted(r["pct_roof"] for r in recs[1:4])
        assert widths == pytest.approx(sorted([recs[0]["pct_roof"], mine[1]]))  # the median
        hatched = [b for b in bars if b.get_hatch()]
        assert len(hatched) == 1 and hatched[0].get_width() == pytest.approx(recs[0]["pct_roof"])
        assert len(_bars(ax, "empty-slot")) == len(statuses)
        notes = " | ".join(t.get_text() for t in _figure_texts(fig, "status-note"))
        for st in statuses:
            assert f"{st}: why {st}" in notes
        ticks = [t.get_text() for t in ax.get_yticklabels()]
        assert "torch_matmul (baseline)" in ticks and "mine" in ticks
        assert not any("torch_copy" in t or "cached_only" in t for t in ticks)
        walls = [ln for ln in ax.lines if ln.get_gid() == "at-the-wall"]
        assert len(walls) == 1 and list(walls[0].get_xdata()) == [AT_THE_WALL, AT_THE_WALL]
        label = _figure_texts(fig, "at-the-wall-label")
        assert len(label) == 1 and "80%" in label[0].get_text() and "wall" in label[0].get_text()
        assert label[0].get_position()[0] == AT_THE_WALL
        assert len(_figure_texts(fig, "case-title")) == 1  # one case: gemv_bf16 1x1024x1024
        values = [t.get_text() for t in _figure_texts(fig, "value")]
        assert any("3 runs" in v for v in values)
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)


def test_pct_roof_chart_single_case_and_value_texts_inside():
    """One ok record draws; a bar far past 100% keeps its value text inside the axes."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from bench.report.plot import pct_roof_figure
    one = record("gemv_bf16", {"M": 1, "N": 1024, "K": 1024}, "mine", 2e-4)
    fig = pct_roof_figure([one])
    assert len(_bars(fig.axes[0], "pct-bar")) == 1 and not _bars(fig.axes[0], "empty-slot")
    assert len(_figure_texts(fig, "case-title")) == 1
    plt.close(fig)
    fast = {**one, "impl": "fast", "pct_roof": 240.0}
    fig = pct_roof_figure([one, fast])
    fig.canvas.draw()  # annotations take their place when drawn
    r = fig.canvas.get_renderer()
    area = fig.axes[0].get_window_extent(r)
    for t in _figure_texts(fig, "value"):
        assert t.get_window_extent(r).x1 <= area.x1
    plt.close(fig)


def test_pct_roof_chart_needs_a_case():
    from bench.report.plot import PlotError, pct_roof_figure
    with pytest.raises(PlotError, match="no results"):
        pct_roof_figure([record("copy", {"N": 64}, "torch_copy", 1e-6)])


def test_charts_say_what_they_leave_out(results, tmp_path, capsys):
    """The roofline has no point for a record that is not ok, and neither chart one for a probe or
    an in-cache record: each says so under its title and after its path; nothing left out, no
    note."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from bench.report.plot import not_drawn, pct_roof_figure, roofline_figure
    recs = [json.loads(line) for line in results.read_text().splitlines()]
    recs += [{**recs[0], "impl": "dead", "status": "crashed", "time_s": None, "error": "SIGSEGV"},
             {**recs[0], "impl": "dead2", "status": "crashed", "time_s": None, "error": "x"},
             {**record("gemv_bf16", {"M": 1, "N": 64, "K": 64}, "mine", 1e-6), "warm": True,
              "cold": False}]
    fig = roofline_figure(recs)
    assert fig._suptitle.get_text().endswith(
        "\nnot drawn: 1 roof probe, 1 failed-check, 2 crashed, 1 in cache")
    plt.close(fig)
    fig = pct_roof_figure(recs)
    notes = [t.get_text() for t in fig.texts if t.get_gid() == "not-drawn"]
    assert notes == ["not drawn: 1 roof probe, 1 in cache"]
    plt.close(fig)
    ok = [r for r in recs if r["status"] == "ok" and r["op"] != "copy" and not r.get("warm")]
    assert not_drawn(ok, ok) is None
    fig = pct_roof_figure(ok)
    assert not [t for t in fig.texts if t.get_gid() == "not-drawn"]
    plt.close(fig)
    fig = roofline_figure(ok)
    assert "not drawn" not in fig._suptitle.get_text()
    plt.close(fig)
    p = tmp_path / "n.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    capsys.readouterr()
    assert main(["plot", str(p), "-o", str(tmp_path / "c" / "n.png")]) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"wrote {tmp_path / 'c' / 'n.png'} (not drawn: 1 roof probe, 1 in cache)",
        f"wrote {tmp_path / 'c' / 'n-roofline.png'} (not drawn: 1 roof probe, 1 failed-check, "
        "2 crashed, 1 in cache)"]


def test_roofline_draws_no_empty_panel(results, tmp_path):
    """Only the roofline when there is no sweep; a batch-sweep panel only with a batch sweep; a
    size-sweep panel only with a size sweep. Every panel drawn holds data."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from bench.report.plot import roofline_figure
    single = [record("gemv_bf16", {"M": 1, "N": 1024, "K": 1024}, impl, m)
              for impl, m in (("a", 2e-4), ("b", 3e-4))]
    fig = roofline_figure(single)
    assert len(fig.axes) == 1 and "roofline" in fig.axes[0].get_title()
    plt.close(fig)
    sweep = [json.loads(line) for line in results.read_text().splitlines()]
    fig = roofline_figure(sweep)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 3  # roofline, batch sweep and the batch sweep's TFLOP/s axis
    assert sum("roofline" in t for t in titles) == 1
    assert sum("batch sweep" in t for t in titles) == 1
    assert not any("size sweep" in t for t in titles)
    for ax in fig.axes:
        assert ax.lines or ax.collections
    plt.close(fig)
    warm = []
    for n, med in ((256, 1e-5), (4096, 4e-4)):  # both in cache: no roofline point at all
        r = record("gemv_bf16", {"M": 1, "N": n, "K": 1024}, "torch_matmul", med)
        warm.append({**r, "warm": True, "cold": False})
    fig = roofline_figure(warm)
    assert [ax.get_title().split(":")[0] for ax in fig.axes] == ["size sweep"]
    plt.close(fig)
    fig = roofline_figure(single + warm)
    assert len(fig.axes) == 2
    assert {ax.get_title().split(" ")[0] for ax in fig.axes} == {"roofline", "size"}
    plt.close(fig)


def _measured_roofs(recs):
    """The roofline's measured roof lines: label -> the line's top (its compute rate)."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from bench.report.plot import roofline_figure
    fig = roofline_figure(recs)
    ax = next(a for a in fig.axes if "roofline" in a.get_title())
    roofs = {ln.get_label(): max(ln.get_ydata()) for ln in ax.lines
             if ln.get_label().startswith("measured roof")}
    plt.close(fig)
    return roofs


_BF16 = record("gemv_bf16", {"M": 1, "N": 1024, "K": 1024}, "a", 2e-4, ridge=20.0)
_FP32 = {**record("gemv_bf16", {"M": 8, "N": 1024, "K": 1024}, "a", 2e-3, ridge=2.0),
         "dtype": "float32"}


def test_roofline_draws_each_dtypes_compute_roof():
    """A CPU with AVX512-BF16 judged the smoke suite's bf16 cases against 0.206 TFLOP/s and its
    fp32 ones against 0.099 (ridge 3.5): drawn at the best rate alone, an fp32 GEMV at 5.1 FLOP/B
    the run called compute-bound sat under the roof's memory slope."""
    assert _measured_roofs([_BF16, _FP32]) == {
        "measured roof 10.0 GB/s, 0.2 TFLOP/s (bf16)": pytest.approx(0.2),
        "measured roof, fp32: 0.02 TFLOP/s": pytest.approx(0.02)}


def test_dtypes_judged_against_one_rate_share_one_compute_roof():
    """A CPU without native fp16 runs an fp16 matmul in fp32: both dtypes are judged against
    fp32's rate, and their roofs are one dotted line naming both, not two drawn over each
    other with two entries in the key."""
    fp16 = {**record("gemv_bf16", {"M": 4, "N": 1024, "K": 1024}, "a", 2e-3, ridge=2.0),
            "dtype": "float16"}
    assert _measured_roofs([_BF16, _FP32, fp16]) == {
        "measured roof 10.0 GB/s, 0.2 TFLOP/s (bf16)": pytest.approx(0.2),
        "measured roof, fp16, fp32: 0.02 TFLOP/s": pytest.approx(0.02)}


def _overlaps(boxes):
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
            if boxes[i].overlaps(boxes[j])]


def test_roofline_point_labels_do_not_collide():
    """Many crowded points: every drawn number label (measured by the Agg renderer) clears every
    other one, and every point's number is drawn. Naive labels at a fixed offset would collide."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from matplotlib.text import Text
    from bench.report.plot import roofline_figure
    recs = []
    for k in range(60):  # 4 columns (M) of 15 points 8% apart: closer than a label is tall
        m = 1 + k % 4
        recs.append(record("gemv_bf16", {"M": m, "N": 1024, "K": 1024}, f"impl{k % 7}",
                           2e-4 * m * 1.08 ** (k // 4)))
    recs += [{**recs[0], "impl": "twin"}]  # on top of point 1: they share one label, "1,61"
    fig = roofline_figure(recs)
    fig.canvas.draw()  # annotations take their place when drawn
    r = fig.canvas.get_renderer()
    ax = next(a for a in fig.axes if "roofline" in a.get_title())
    labels = [t for t in ax.texts if t.get_gid() == "point-label"]
    boxes = [Text.get_window_extent(t, r) for t in labels]  # the text, not its leader line
    assert labels and _overlaps(boxes) == []
    area = ax.get_window_extent(r)
    assert all(area.x0 <= b.x0 and b.x1 <= area.x1 and area.y0 <= b.y0 and b.y1 <= area.y1
               for b in boxes)
    numbered = sorted(int(n) for t in labels for n in t.get_text().split(","))
    assert numbered == list(range(1, len(recs) + 1))
    assert len(labels) == len(recs) - 1 and "1,61" in [t.get_text() for t in labels]
    # each distinct point's number at one fixed offset from it would collide: the data is
    # crowded enough for the test to fail
    points = [tuple(c.get_offsets()[0]) for c in ax.collections if len(c.get_offsets()) == 1]
    assert len(points) == len(recs)
    naive = [ax.annotate(str(n), xy, xytext=(6, 0), textcoords="offset points", va="center",
                         fontsize=8, fontweight="bold") for n, xy in enumerate(points[:60], 1)]
    fig.canvas.draw()
    assert len(_overlaps([Text.get_window_extent(t, r) for t in naive])) > 20
    plt.close(fig)


def test_roofline_numbers_a_case_repeated_many_times():
    """Forty runs of one case sit on one spot: their label is shortened to fit (the first two,
    the last and the count), not left out with forty points unnumbered."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from bench.report.plot import roofline_figure
    one = record("gemv_bf16", {"M": 1, "N": 1024, "K": 1024}, "torch_matmul", 2e-4)
    recs = [{**one, "run_id": str(k)} for k in range(40)]
    recs.append(record("gemv_bf16", {"M": 4, "N": 1024, "K": 1024}, "torch_matmul", 3e-4))
    fig = roofline_figure(recs)
    ax = next(a for a in fig.axes if "roofline" in a.get_title())
    assert sorted(t.get_text() for t in ax.texts if t.get_gid() == "point-label") == \
        ["1,2,…,40 (40)", "41"]
    assert [t for t in ax.texts if t.get_gid() == "unnumbered"] == []
    plt.close(fig)


def test_roofline_says_how_many_points_it_left_unnumbered(monkeypatch):
    """A label with no room is left out; the chart says how many points have no number."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    import bench.report.plot as P
    real = P.place_labels
    monkeypatch.setattr(P, "place_labels", lambda ax, xy, texts, *a, **k: (
        real(ax, xy[1:], texts[1:], *[v[1:] for v in a], **k) and []) or [0])
    recs = [record("gemv_bf16", {"M": m, "N": 1024, "K": 1024}, "torch_matmul", 2e-4 * m)
            for m in (1, 4, 16)]
    recs.insert(1, {**recs[0], "impl": "twin"})  # on top of point 1: the group left out is "1,2"
    fig = P.roofline_figure(recs)
    ax = next(a for a in fig.axes if "roofline" in a.get_title())
    assert [t.get_text() for t in ax.texts if t.get_gid() == "unnumbered"] == \
        ["2 of 4 points unnumbered: no room beside them"]
    plt.close(fig)


def test_place_labels_keeps_clear_of_points_and_each_other():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from matplotlib.text import Text
    from bench.report.plot import place_labels, _pyplot
    _pyplot()
    fig, ax = plt.subplots(figsize=(4, 3))
    xy = [(1 + 0.01 * k, 1 + 0.015 * (k % 5)) for k in range(25)]
    ax.scatter(*zip(*xy), s=36)
    ax.set_xlim(0, 2)
    ax.set_ylim(0, 2)
    left_out = place_labels(ax, xy, [f"p{k}" for k in range(25)], ["k"] * 25)
    fig.canvas.draw()  # annotations take their place when drawn
    r = fig.canvas.get_renderer()
    labels = [t for t in ax.texts if t.get_gid() == "point-label"]
    assert len(labels) + len(left_out) == 25 and len(labels) >= 15
    boxes = [Text.get_window_extent(t, r) for t in labels]
    assert _overlaps(boxes) == []
    pts = ax.transData.transform(xy)
    for b in boxes:  # no text over a marker's centre
        assert not any(b.contains(x, y) for x, y in pts)
    plt.close(fig)


# --- what the charts must not claim ---------------------------------------------------------------

def test_charts_refuse_records_of_several_devices(results, tmp_path, capsys):
    """One roof a chart, and repeated records of a case drawn as runs of it: records of two
    devices are one line and exit 2, nothing written; the terminal bars take them."""
    pytest.importorskip("matplotlib")
    gpu = tmp_path / "gpu.jsonl"
    gpu.write_text("".join(json.dumps({**json.loads(line), "backend": "cuda",
                                       "device": {"name": "H200", "chip": "h200"}}) + "\n"
                           for line in results.read_text().splitlines()))
    out = tmp_path / "charts"
    for extra in (["-o", f"{out}/"], ["--roofline", str(out / "r.png")]):
        line = one_error_line(capsys, ["plot", str(results), str(gpu), *extra])
        assert "2 devices" in line and "test CPU (cpu)" in line and "H200 (cuda)" in line
        assert not out.exists()
    assert main(["plot", str(results), str(gpu), "--terminal"]) == 0
    assert main(["plot", str(gpu), "-o", f"{out}/"]) == 0


def test_numbers_above_their_own_roof_are_flagged(tmp_path):
    """A cold record past its measured roof is named so in the terminal bars, beside its bar and
    in the roofline's key; an in-cache one (expected past the DRAM roof) is not."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from rich.console import Console
    from bench.report.plot import bars_table, pct_roof_figure, roofline_figure
    shape = {"M": 1, "N": 1024, "K": 1024}
    fine = record("gemv_bf16", shape, "fine", 4e-4)  # 53% of its roof
    suspect = {**record("gemv_bf16", shape, "suspect", 1.2e-4), "pct_roof": 174.0,
               "verdict": "above the roof: harness suspect (cache not defeated or missing sync)"}
    over = {**record("gemv_bf16", shape, "over", 2e-4), "pct_roof": 103.0,
            "verdict": "at the wall"}
    cached = {**record("gemv_bf16", shape, "cached", 2e-5), "pct_roof": 300.0, "warm": True,
              "cold": False}
    recs = [fine, suspect, over, cached]
    con = Console(width=250, record=True, file=io.StringIO())
    con.print(bars_table(recs))
    text = con.export_text()
    rows = {w: _lines(text, w) for w in ("fine", "suspect", "over", "cached")}
    assert "174% above the roof: harness suspect" in rows["suspect"][0]
    assert "103% above the roof" in rows["over"][0]
    assert "above" not in rows["fine"][0] and "above" not in rows["cached"][0]
    fig = pct_roof_figure(recs)
    values = {t.get_text().split("%")[0]: t.get_text() for t in _figure_texts(fig, "value")}
    assert values["174"] == "174%, above the roof: harness suspect"
    assert values["103"] == "103%, above the roof" and "above" not in values[_pct_text(fine)]
    plt.close(fig)
    fig = roofline_figure(recs)
    ax = next(a for a in fig.axes if "roofline" in a.get_title())
    key = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [k.split()[-1] for k in key] == ["53%", "SUSPECT", "ROOF"]
    assert "174%  ABOVE THE ROOF: HARNESS SUSPECT" in key[1]
    plt.close(fig)


def _pct_text(r):
    v = r["pct_roof"]
    return f"{v:.1f}" if v < 9.95 else f"{v:.0f}"


def test_roofline_has_no_point_for_a_case_without_flops(tmp_path, capsys):
    """A collective moves bytes and does no FLOPs: it has no arithmetic intensity, so no place on
    the roofline's log axis (it was drawn at the axis' edge, an intensity it does not have); the
    chart says it left it out."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from bench.report.plot import roofline_figure
    gemv = record("gemv_bf16", {"M": 1, "N": 1024, "K": 1024}, "torch_matmul", 2e-4)
    coll = {**gemv, "op": "allreduce", "impl": "torch_distributed", "flops": 0,
            "shape": {"bytes": 65536, "world_size": 2}, "arithmetic_intensity": None,
            "pct_roof": None, "ridge": None}
    fig = roofline_figure([gemv, coll])
    ax = fig.axes[0]
    points = [c for c in ax.collections if len(c.get_offsets()) == 1]
    assert len(points) == 1
    assert fig._suptitle.get_text().endswith("not drawn: 1 with no FLOPs")
    plt.close(fig)
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps(coll) + "\n")
    line = one_error_line(capsys, ["plot", str(p), "--roofline", str(tmp_path / "r.png")])
    assert "no ok, timed" in line and not (tmp_path / "r.png").exists()


def test_batch_sweep_axis_names_each_batch_field():
    """A sweep over attention's B is not "rows M of the GEMV": the axis names the fields swept,
    and each ridge label its own field."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from bench.report.plot import roofline_figure
    recs = [record("gemv_bf16", {"M": m, "N": 1024, "K": 1024}, "torch_matmul", 2e-4 * m)
            for m in (1, 4, 16)]
    recs += [record("paged_attention", {"B": b, "Hq": 8, "Hkv": 2, "D": 64, "context": 256},
                    "torch_chunked", 1e-4 * b) for b in (1, 2, 4)]
    fig = roofline_figure(recs)
    ax = next(a for a in fig.axes if "batch sweep" in a.get_title())
    assert ax.get_xlabel() == "batch (M: rows of a GEMV, B: sequences of an attention)"
    ridges = [t.get_text() for t in ax.texts if t.get_text().startswith("ridge")]
    assert ridges and all(t.startswith("ridge M≈") for t in ridges)
    plt.close(fig)
    fig = roofline_figure(recs[3:])
    ax = next(a for a in fig.axes if "batch sweep" in a.get_title())
    assert ax.get_xlabel() == "batch (B: sequences of an attention)"
    plt.close(fig)


def test_pct_roof_chart_keeps_flush_modes_and_warm_runs_apart():
    """Two flush modes (or a warm run that streamed from DRAM beside a cold one) are two ways of
    measuring, not two runs of one case: each gets its own block, titled by how it was timed."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from bench.report.plot import pct_roof_cases, pct_roof_figure
    shape = {"M": 1, "N": 1024, "K": 1024}
    recs = [{**record("gemv_bf16", shape, "mine", 2e-4), "flush": "read"},
            {**record("gemv_bf16", shape, "mine", 4e-4), "flush": "memset"},
            {**record("gemv_bf16", shape, "mine", 3e-4), "warm": True, "cold": True,
             "flush": "none"}]
    cases = pct_roof_cases(recs)
    assert [(c["how"], len(c["impls"][0]["pcts"])) for c in cases] == [
        ("flush read", 1), ("flush memset", 1), ("warm, flush none", 1)]
    fig = pct_roof_figure(recs)
    titles = [t.get_text() for t in _figure_texts(fig, "case-title")]
    assert len(titles) == 3 and "[flush memset]" in titles[1]
    assert not any("runs" in t.get_text() for t in _figure_texts(fig, "value"))
    plt.close(fig)
    one_mode = [{**r, "flush": "read"} for r in recs[:2]]  # two runs of one case, one mode
    (case,) = pct_roof_cases(one_mode)
    assert case["how"] == "" and len(case["impls"][0]["pcts"]) == 2


def test_roofline_axes_are_tflops_against_flop_per_byte_and_the_best_roof_is_drawn():
    """The roofline's y is TFLOP/s: GB/s x FLOP/B / 1e3, so a kernel moving its bytes at the
    measured roof sits on the roof line at its intensity (and the datasheet's line at twice the
    bandwidth lies twice as high). The roof drawn is the best of the runs'
    (their spread said); a record without `arithmetic_intensity` is placed at flops / bytes."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    import numpy as np
    from bench.report.plot import intensity, roofline_figure, roofs
    shape = {"M": 1, "N": 1024, "K": 1024}
    slow = {**record("gemv_bf16", shape, "slow", 4e-4, roof=10.0), "run_id": "a"}
    at_roof = record("gemv_bf16", shape, "at_roof", 1.0, roof=12.0)
    at_roof = {**at_roof, "run_id": "b", "achieved_gbps": 12.0, "pct_roof": 100.0,
               "time_s": {"median": at_roof["bytes"] / 12e9}, "datasheet_gbps": 24.0}
    del at_roof["arithmetic_intensity"]
    assert intensity(at_roof) == pytest.approx(at_roof["flops"] / at_roof["bytes"])
    assert intensity({"flops": 100, "bytes": 50}) == 2.0 and intensity({"bytes": 50}) is None
    rf = roofs([slow, at_roof])
    assert rf["roof_gbps"] == 12.0 and rf["roof_range"] == (10.0, 12.0) and rf["runs"] == 2
    fig = roofline_figure([slow, at_roof])
    ax = next(a for a in fig.axes if "roofline" in a.get_title())
    (roof,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("measured roof 12.0 GB/s")]
    assert "best of 2 runs: 10.0-12.0 GB/s" in roof.get_label()
    plt.close(fig)
    # one run whose roof was re-read between its cases: the range is named all the same
    fig = roofline_figure([slow, {**at_roof, "run_id": "a"}])
    ax = next(a for a in fig.axes if "roofline" in a.get_title())
    (one,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("measured roof 12.0 GB/s")]
    assert "best of readings in the run: 10.0-12.0 GB/s" in one.get_label()
    plt.close(fig)
    fig = roofline_figure([slow, at_roof])
    ax = next(a for a in fig.axes if "roofline" in a.get_title())
    ai = at_roof["flops"] / at_roof["bytes"]
    x, y = roof.get_data()
    on_roof = float(np.interp(np.log(ai), np.log(x), np.log(y)))
    point = ax.collections[1].get_offsets()[0]  # the second record's point
    assert point[0] == pytest.approx(ai) and point[1] == pytest.approx(12.0 * ai / 1e3)
    assert np.exp(on_roof) == pytest.approx(point[1], rel=1e-3)
    (ds,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("datasheet 24 GB/s")]
    x, y = ds.get_data()  # twice the roof: twice as high at every intensity
    assert float(np.exp(np.interp(np.log(ai), np.log(x), np.log(y)))) == pytest.approx(2 * point[1], rel=1e-3)
    plt.close(fig)


def test_a_number_at_its_roof_is_not_above_it_and_the_bar_colours_follow_the_wall():
    """roof_flag: exactly 100% of the measured roof is at it, not above; just past it is. The
    terminal bar: green from 80% (at the wall) up to 100%, yellow below, magenta above."""
    from bench.report.plot import roof_flag
    assert roof_flag({"pct_roof": 100.0}) is None
    assert roof_flag({"pct_roof": 100.5}) == "above the roof"
    assert roof_flag({"pct_compute": 100.0}) is None
    assert roof_flag({"pct_compute": 270.0, "verdict": "above the compute roof: harness suspect "
                      "(the matmul rate read low, or a missing sync)"}) == \
        "above the compute roof: harness suspect"
    styles = {p: str(pct_bar(p).style) for p in (79.9, 80.0, 100.0, 100.5)}  # the bar's
    assert styles == {79.9: "yellow", 80.0: "green", 100.0: "green", 100.5: "magenta"}


def test_terminal_bars_show_no_gbps_for_a_record_that_failed_its_check(results, capsys):
    """A record that failed its check was timed, but its GB/s is not a result: the row says the
    status, and the GB/s column shows '-', not the number."""
    from rich.console import Console
    from bench.report.plot import bars_table
    recs = [json.loads(line) for line in results.read_text().splitlines()]
    broken = next(r for r in recs if r["impl"] == "broken")
    assert broken["achieved_gbps"]  # the fixture's failed record still holds a figure
    con = Console(width=250, record=True, file=io.StringIO())
    con.print(bars_table(recs))
    (row,) = [ln for ln in con.export_text().splitlines() if "broken" in ln]
    assert f"{broken['achieved_gbps']:.1f}" not in row and "failed-check" in row


def test_a_batch_sweep_keeps_the_last_record_of_a_batch_size():
    """Records of one case timed twice (a second run in the same files): the sweep keeps the
    later one at that batch size, one point a batch."""
    first = record("gemv_bf16", {"M": 1, "N": 1024, "K": 1024}, "mine", 4e-4)
    second = record("gemv_bf16", {"M": 1, "N": 1024, "K": 1024}, "mine", 2e-4)
    m2 = record("gemv_bf16", {"M": 2, "N": 1024, "K": 1024}, "mine", 4e-4)
    (g,) = sweeps([first, m2, second]).values()
    assert [r["shape"]["M"] for r in g] == [1, 2] and g[0] is second


def test_the_size_sweep_is_drawn_against_mib():
    """The size sweep's x axis is the working set in MiB (2^20 bytes), as its label says, so the
    LLC line (cache_bytes / 2^20) falls where the points leave the cache."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from bench.report.plot import roofline_figure
    recs = []
    for n, med in ((256, 1e-5), (4096, 4e-4), (65536, 8e-3)):
        r = record("gemv_bf16", {"M": 1, "N": n, "K": 1024}, "torch_matmul", med)
        recs.append({**r, "warm": True, "cold": n == 65536,
                     "device": {**r["device"], "cache_bytes": 32 * 2**20}})
    fig = roofline_figure(recs)
    ax = next(a for a in fig.axes if a.get_title().startswith("size sweep"))
    assert "MiB" in ax.get_xlabel()
    (series,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("gemv_bf16")]
    assert list(series.get_xdata()) == pytest.approx([r["bytes"] / 2**20 for r in recs])
    assert any(list(ln.get_xdata()) == [32.0, 32.0] for ln in ax.get_lines())  # the LLC line
    plt.close(fig)


def test_a_file_of_in_cache_records_only_says_that_is_why_nothing_is_drawn(tmp_path, capsys):
    """A run of tiny shapes is ok, timed and has FLOPs, but every record ran in cache: plot and
    project say so, rather than that there is no ok result at all."""
    pytest.importorskip("matplotlib")
    from bench.roofline import IN_CACHE
    recs = [{**record("gemv_bf16", {"M": 1, "N": 64, "K": 64}, impl, 1e-6), "warm": False,
             "cold": True, "verdict": IN_CACHE} for impl in ("a", "b")]
    path = tmp_path / "tiny.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    line = one_error_line(capsys, ["plot", str(path), "-o", str(tmp_path / "charts")])
    assert "only probes or in-cache records" in line and "(2 ran in cache" in line, line
    line = one_error_line(capsys, ["project", "--model", "llama-3-8b", "--from", str(path)])
    assert "(2 ran in cache: not a memory efficiency)" in line, line


def test_a_case_past_the_ridge_says_how_near_the_compute_roof_it_is():
    """Past the ridge a low % of the bandwidth roof is expected, so a bare "compute-bound" beside
    it excused a kernel at 0.3% of the compute roof (a record judged "below the compute roof"),
    and read the same for one at 91%: the text names which, with its % of the compute roof.
    A file of an older verdict ("compute-bound" at 16%) is read by its numbers."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from bench.report.plot import pct_roof_figure
    shape = {"M": 64, "N": 1024, "K": 1024}
    below = {**record("gemv_bf16", shape, "slow", 4e-3), "pct_compute": 0.3,
             "verdict": "compute-bound: below the compute roof"}
    at = {**record("gemv_bf16", shape, "fast", 4e-4), "pct_compute": 91.0,
          "verdict": "compute-bound"}
    old = {**record("gemv_bf16", shape, "old", 2e-3), "pct_compute": 16.0,
           "verdict": "compute-bound"}
    bare = {**record("gemv_bf16", shape, "bare", 3e-3),
            "verdict": "compute-bound: below the compute roof"}
    fig = pct_roof_figure([below, at, old, bare])
    texts = [t.get_text() for t in _figure_texts(fig, "value")]
    plt.close(fig)
    assert [t.split(", ", 1)[1] for t in texts] == [
        "below the compute roof (0.3% of it)", "compute-bound (91% of the compute roof)",
        "below the compute roof (16% of it)", "below the compute roof"]


def test_the_roofline_key_gives_a_small_percentage_its_decimal():
    """A kernel at 0.3% of the roof read "0%" in the key beside a point drawn above zero, while
    the % of roof chart says 0.3%: the key writes percentages as that chart does."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from bench.report.plot import roofline_figure
    shape = {"M": 1, "N": 1024, "K": 1024}
    slow = {**record("gemv_bf16", shape, "slow", 4e-4), "pct_roof": 0.3}
    fine = {**record("gemv_bf16", shape, "fine", 4e-4), "pct_roof": 53.2}
    fig = roofline_figure([slow, fine])
    ax = next(a for a in fig.axes if "roofline" in a.get_title())
    key = [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(fig)
    assert [k.split()[-1] for k in key] == ["0.3%", "53%"]


def test_the_roof_span_under_the_chart_says_whether_runs_or_one_run_made_it():
    """A run that measured its roof again between cases (the Zen 5 default run: 54.1 and 91.2
    GB/s) is one run: its span is not "over the runs"."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from bench.report.plot import pct_roof_figure
    shape = {"M": 1, "N": 1024, "K": 1024}
    a = {**record("gemv_bf16", shape, "a", 4e-4, roof=54.1), "run_id": "r1"}
    b = {**record("gemv_bf16", {**shape, "N": 2048}, "a", 4e-4, roof=91.2), "run_id": "r1"}
    for recs, words in (([a, b], "54.1-91.2 GB/s re-measured in the run"),
                        ([a, {**b, "run_id": "r2"}], "54.1-91.2 GB/s over the runs")):
        fig = pct_roof_figure(recs)
        label = fig.axes[0].get_xlabel()
        plt.close(fig)
        assert words in label, label


def test_ridges_a_few_batches_apart_share_one_label():
    """The H200 check's 70B GEMVs put their ridges at M = 54, 55 and 56: three labels drawn over
    each other. Ridges within RIDGE_NEAR of the one before are one label spanning them."""
    from bench.report.plot import ridge_spans
    ridges = {("M", 54): ["gemv_w4 bf16"], ("M", 55): ["gemv_w4 bf16"],
              ("M", 56): ["gemv_w4 bf16", "gemv_w8 bf16"], ("M", 103): ["gemv_w8 bf16"],
              ("M", 105): ["gemv_w8 bf16"], ("M", 203): ["gemv_bf16 bf16"],
              ("B", 60): ["paged_attention bf16"]}
    assert ridge_spans(ridges) == [
        ("B", 60, 60, ["paged_attention bf16"]),
        ("M", 54, 56, ["gemv_w4 bf16", "gemv_w8 bf16"]), ("M", 103, 105, ["gemv_w8 bf16"]),
        ("M", 203, 203, ["gemv_bf16 bf16"])]


def _many_series(n: int) -> list[dict]:
    """`n` batch-sweep series of one op (two batches each), as the H200 check's 32."""
    return [record("gemv_bf16", {"M": m, "N": 256 * (1 + k // 3), "K": 256}, f"impl{k % 3}",
                   1e-5 * m) for k in range(n) for m in (1, 16)]


def test_a_batch_sweep_of_many_series_tells_each_apart_and_keeps_its_axis_label():
    """With 32 series the nine colours came round again: two series of one op drew alike, and
    the key under the axes, 0.1 of their height below them, covered the batch axis's label once
    a tall key had made the axes short."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from bench.report.plot import roofline_figure
    fig = roofline_figure(_many_series(32))
    fig.canvas.draw()
    ax = next(a for a in fig.axes if a.get_title().startswith("batch sweep"))
    styles = [(ln.get_color(), ln.get_marker(), ln.get_fillstyle()) for ln in ax.lines
              if ln.get_marker() not in (None, "None", "")]  # the series, not roof or ridges
    assert len(styles) == 32 and len(set(styles)) == 32
    r = fig.canvas.get_renderer()
    key, label = ax.get_legend().get_window_extent(r), ax.xaxis.label.get_window_extent(r)
    plt.close(fig)
    assert key.y1 <= label.y0
