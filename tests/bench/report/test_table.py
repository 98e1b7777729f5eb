"""The run table's numbers: the median time, half the interquartile range beside it, n, GB/s and
the percentages, each in its unit, from the record's fields."""
import io

from rich.console import Console

from bench.report.table import fmt_time, results_table

REC = {"op": "gemv_bf16", "impl": "k", "shape": {"M": 1, "N": 8}, "dtype": "float32",
       "status": "ok", "baseline": False, "achieved_gbps": 12.345, "pct_roof": 61.7,
       "pct_datasheet": None, "arithmetic_intensity": 0.5, "verdict": "below the wall: kernel",
       "time_s": {"median": 2.5e-3, "p25": 2.0e-3, "p75": 3.0e-3, "min": 1.0e-3, "n": 42}}


def _row(rec) -> list[str]:
    con = Console(width=250, record=True, file=io.StringIO())
    con.print(results_table([rec]))
    line = [x for x in con.export_text().splitlines() if "gemv_bf16" in x][0]
    return [c.strip() for c in line.split("│") if c.strip()]


def test_the_row_shows_the_median_and_half_the_iqr():
    row = _row(REC)
    assert row[4:9] == ["2.50 ms", "500.0 µs", "42", "12.3", "62%"]
    assert row[-1] == "below the wall: kernel"


def test_a_spread_under_a_microsecond_is_in_ns_not_zero():
    """A 2 µs copy whose IQR/2 was 45 ns read "± 0.0 µs", as if it had no spread at all."""
    t = {"median": 1.983e-6, "p25": 1.943e-6, "p75": 2.033e-6, "n": 200}
    row = _row({**REC, "time_s": t})
    assert row[4:6] == ["2.0 µs", "45 ns"]


def test_a_rate_under_0_05_gb_s_is_not_shown_as_nothing():
    """A CPU all-reduce of 8 KiB took 468.3 µs: 0.017 GB/s, which read "0.0"."""
    row = _row({**REC, "achieved_gbps": 8192 / 468.3e-6 / 1e9})
    assert row[7] == "0.017"
    assert _row({**REC, "achieved_gbps": 0.06})[7] == "0.1"


def test_a_rate_under_1e_4_gb_s_is_written_in_decimals():
    """8 bytes all-reduced in 500 µs: 1.6e-05 GB/s, which `:.2g` writes in exponent form."""
    assert _row({**REC, "achieved_gbps": 8 / 500e-6 / 1e9})[7] == "0.000016"
    assert _row({**REC, "achieved_gbps": 0.0496})[7] == "0.05"


def test_times_in_their_units():
    assert fmt_time(2.5e-6) == "2.5 µs"
    assert fmt_time(2.5e-4) == "250.0 µs"
    assert fmt_time(2.5e-3) == "2.50 ms"
    assert fmt_time(2.5) == "2.50 s"
    assert fmt_time(None) == "-"


def test_bytes_in_decimal_units():
    """Sizes sit beside GB/s, which is 1e9 bytes a second: GB is 1e9 bytes, kB 1e3, not 2**30
    and 2**10."""
    from bench.report.table import fmt_bytes
    assert fmt_bytes(1.5e9) == "1.5 GB"
    assert fmt_bytes(2.5e6) == "2.5 MB"
    assert fmt_bytes(1000) == "1 kB"
    assert fmt_bytes(999) == "999 B"
    assert fmt_bytes(None) == "-"
    # rounded to 1000 of a unit: the unit above, never "1e+03 MB"
    assert (fmt_bytes(999.7e6), fmt_bytes(999.8e3), fmt_bytes(1e12), fmt_bytes(12345e9)) == (
        "1 GB", "1 MB", "1000 GB", "12345 GB")


def test_a_baseline_record_is_marked_in_the_impl_cell():
    """The baseline impl is what the others are read against: its row says it is the one."""
    assert _row({**REC, "baseline": True})[3] == "k (baseline)"
    assert _row(REC)[3] == "k"


def test_the_spread_column_goes_first_on_a_narrow_terminal():
    """One column short of fitting: ± IQR/2 goes first (the median beside it still stands), not
    n, and the caption names it alone."""
    width = next(w for w in range(250, 0, -1) if results_table([REC], width=w).caption)
    caption = results_table([REC], width=width).caption
    assert caption == f"± IQR/2 left out to fit {width} columns (--json has every field)"


def test_a_unit_starts_at_its_own_boundary():
    from bench.report.table import fmt_time
    assert fmt_time(1e-3) == "1.00 ms" and fmt_time(1.0) == "1.00 s"


def test_a_time_that_rounds_to_a_thousand_reads_in_the_unit_above():
    """999.96 µs printed as "1000.0 µs", 999.6 ns as "1000 ns": the unit above says it in
    fewer digits, as the column's other rows do."""
    from bench.report.table import fmt_spread, fmt_time
    assert fmt_time(999.96e-6) == "1.00 ms" and fmt_time(999.94e-6) == "999.9 µs"
    assert fmt_time(0.999996) == "1.00 s" and fmt_time(0.99994) == "999.94 ms"
    assert fmt_spread(999.6e-9) == "1.0 µs" and fmt_spread(999.4e-9) == "999 ns"


def test_a_shape_reads_in_its_fields_order():
    """M, N, K as the op names them, not sorted."""
    from bench.report.table import shape_text
    assert shape_text({"M": 1, "N": 8, "K": 128}) == "M=1, N=8, K=128"


def test_the_title_spans_the_roof_readings_a_run_judged_its_cases_by():
    """Readings within 0.05 GB/s are one roof; a record without one (a crashed case: null, or 0)
    does not widen the span."""
    from bench.report.table import run_title
    assert run_title("r", "H200", "cuda", [20.0, 20.04, None, 0.0]) == \
        "decodewall run r — H200 (cuda), roof 20.0 GB/s"
    assert run_title("r", "H200", "cuda", [20.0, 20.1]) == \
        "decodewall run r — H200 (cuda), roof 20.0-20.1 GB/s (re-measured)"


def test_a_failure_names_its_status_and_error():
    for status, label in (("failed-check", "FAIL"), ("error", "ERROR"), ("crashed", "CRASHED"),
                          ("timeout", "TIMEOUT")):
        rec = {**REC, "status": status, "error": "why", "time_s": None}
        assert _row(rec)[-1] == f"{label}: why", status


def _rendered(records: list[dict]) -> tuple[str, list[list[str]]]:
    """The table of `records` on a wide console: its text, and the cells of each record's row."""
    con = Console(width=250, record=True, file=io.StringIO())
    con.print(results_table(records))
    text = con.export_text()
    return text, [[c.strip() for c in x.split("│") if c.strip()]
                  for x in text.splitlines() if "gemv_bf16" in x]


def test_a_gpu_util_column_where_any_record_has_one():
    """NVML's utilization beside % roof where some record has it (a window without one of NVML's
    samples is null): those without show '-'."""
    text, rows = _rendered([{**REC, "gpu_util_pct": 97.4}, {**REC, "impl": "j"}])
    assert "GPU util" in text
    assert [r[9] for r in rows] == ["97%", "-"]


def test_the_datasheet_share_is_a_whole_percentage():
    assert _row({**REC, "pct_datasheet": 41.26})[9] == "41%"


def test_a_size_under_a_kilobyte_is_whole_bytes():
    """JSON may hold a byte count as a float (512.0): it reads as 512 B, not 512.0 B."""
    from bench.report.table import fmt_bytes
    assert fmt_bytes(512.0) == "512 B"


def _column_lines(text: str, column: int) -> list[str]:
    """Column `column`'s text on each body line of a printed table, stripped."""
    body = text[text.index("┡"):].splitlines()[1:]
    return [x.split("│")[column + 1].strip() for x in body[:next(
        i for i, x in enumerate(body) if x.startswith("└"))]]


W4 = {"M": 1, "N": 6144, "K": 4096, "group_size": 128}
ATTN = {"B": 8, "Hq": 32, "Hkv": 8, "D": 128, "context": 4096, "block_size": 16, "ragged": 1,
        "pool": 2}


def test_a_narrow_table_wraps_a_shape_between_its_fields_never_inside_one():
    """Folded inside a field, N=6144 read "N=61" over "44" and group_size=128 "group_size=1" over
    "28" at 120 and 200 columns: each line of a shape cell holds whole fields."""
    recs = [{**REC, "op": "gemv_w4", "shape": W4, "impl": "torch_int4pack_mm"},
            {**REC, "op": "paged_attention", "shape": ATTN, "impl": "gather_sdpa"}]
    whole = [f"{k}={v}" for shape in (W4, ATTN) for k, v in shape.items()]
    for width in (80, 100, 120, 160, 200):
        con = Console(width=width, record=True, file=io.StringIO())
        con.print(results_table(recs, width=width))
        lines = _column_lines(con.export_text(), 1)
        fields = [f.rstrip(",") for line in lines for f in line.split(", ") if f]
        assert fields == whole, (width, lines)


def test_a_verdict_within_the_margin_but_past_the_roof_says_so():
    """The verdict allows a margin past the roof (the probe's own spread), so the Zen 3 run's
    simd_c at 124% of its roof read "at the wall" in green, where the charts flag it: the cell
    says it is above the roof. In cache, past the DRAM roof is expected and not flagged."""
    wall = {**REC, "verdict": "at the wall"}
    assert _row({**wall, "pct_roof": 123.5})[-1] == "at the wall (above the roof)"
    assert _row({**wall, "pct_roof": 99.0})[-1] == "at the wall"
    bound = {**REC, "verdict": "compute-bound", "pct_roof": 20.0}
    assert _row({**bound, "pct_compute": 112.0})[-1] == "compute-bound (above the compute roof)"
    cached = {**REC, "verdict": "in cache", "pct_roof": 300.0, "warm": True, "cold": False}
    assert _row(cached)[-1] == "in cache"


def test_a_table_with_no_datasheet_figure_has_no_datasheet_column():
    """A CPU has no datasheet entry: its column held a dash in every row and took room a narrow
    terminal's verdicts needed. With one record of a known chip the column is there."""
    assert "datasheet" not in _rendered([REC])[0]
    text, rows = _rendered([REC, {**REC, "impl": "j", "pct_datasheet": 41.26}])
    assert "% datasheet" in text
    assert [r[9] for r in rows] == ["-", "41%"]


def test_a_shape_held_whole_does_not_starve_the_other_columns():
    """A shape held at its widest field ("group_size=128") leaves the other columns what rich
    levels them down to: at 40 columns nothing (op, impl, time and GB/s cells empty), at 56 a
    time cut inside its number. Where both do not fit, the numbers come first."""
    rec = {**REC, "op": "gemv_w4", "shape": W4, "impl": "torch_int4pack_mm", "baseline": True}
    for width in (40, 48, 56, 60):
        con = Console(width=width, record=True, file=io.StringIO())
        con.print(results_table([rec], width=width))
        text = con.export_text()
        columns = text[text.index("┡"):].splitlines()[1].count("│") - 1
        for k in range(columns):
            assert "".join(_column_lines(text, k)), (width, k, text)
        if width >= 56:
            assert "2.50" in "".join(_column_lines(text, 4)), (width, text)
