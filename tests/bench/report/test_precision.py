"""bench.report.precision: best impl per weight precision, speedup over bf16 beside the ideal from bytes."""
from bench.report.precision import precision_rows
from bench.suites import SuiteContext, cases_for


def rec(op, impl, t, nbytes, status="ok", M=1, **shape):
    return dict(op=op, impl=impl, shape=dict(M=M, N=8192, K=8192, **shape), dtype="bfloat16",
                status=status, time_s=dict(median=t) if t else None, bytes=nbytes)


def test_speedup_and_ideal_from_the_fastest_passing_impls():
    rows = precision_rows([
        rec("gemv_bf16", "torch_matmul", 4e-3, 134e6),
        rec("gemv_bf16", "triton_gemv", 5e-3, 134e6),
        rec("gemv_w4", "torch_int4pack_mm", 2e-3, 35e6, group_size=128),
        rec("gemv_w4", "simd_c", 1.25e-3, 35e6, group_size=128),
        rec("gemv_w8", "simd_c", 1e-4, 67e6, status="failed-check"),  # fastest, but wrong
        rec("gemv_w8", "torch_int8pack_mm", 2.2e-3, 67e6),
        rec("paged_attention", "x", 1e-3, 1e6),
    ])
    by_op = {r["op"]: r for r in rows}
    assert set(by_op) == {"gemv_bf16", "gemv_w8", "gemv_w4"}
    w4 = by_op["gemv_w4"]
    assert w4["impl"] == "simd_c" and w4["weights"] == "INT4 G=128"
    assert abs(w4["speedup"] - 3.2) < 1e-9 and abs(w4["ideal"] - 134 / 35) < 1e-9
    assert by_op["gemv_w8"]["impl"] == "torch_int8pack_mm"
    assert by_op["gemv_bf16"]["speedup"] == 1.0


def test_no_bf16_baseline_leaves_speedup_empty_and_takes_the_ideal_from_the_byte_count():
    """A run whose bf16 case gave no time (cut by a time box): no speedup, and the ideal from
    the bf16 GEMV's own byte count at the shape; the table shows those rows and says why."""
    from rich.console import Console

    from bench.report.precision import precision_table
    from kernels import OPS
    import torch
    w8 = OPS["gemv_w8"]
    nbytes = w8.bytes_moved(w8.shape(M=1, N=8192, K=8192), torch.bfloat16)
    rows = precision_rows([rec("gemv_w8", "simd_c", 1e-3, nbytes),
                           rec("gemv_bf16", "torch_matmul", None, 134e6, status="timeout")])
    assert rows[0]["speedup"] is None and rows[0]["of_ideal"] is None
    bf16 = OPS["gemv_bf16"]
    want = bf16.bytes_moved(bf16.shape(M=1, N=8192, K=8192), torch.bfloat16) / nbytes
    assert abs(rows[0]["ideal"] - want) < 1e-12 and 1.99 < want < 2.0
    c = Console(width=200, record=True)
    c.print(precision_table([rec("gemv_w8", "simd_c", 1e-3, nbytes)]))
    text = c.export_text()
    assert "│       - │ 2.00x │        - │" in text and "no bf16 time at that shape" in text


def test_the_table_shows_speedup_and_ideal_each_in_its_column():
    from rich.console import Console

    from bench.report.precision import precision_table
    c = Console(width=200, record=True)
    c.print(precision_table([rec("gemv_bf16", "torch_matmul", 2e-3, 200e6),
                             rec("gemv_w4", "simd_c", 1e-3, 50e6, group_size=128)]))
    row = next(line for line in c.export_text().splitlines() if "INT4" in line)
    assert "│   2.00x │ 4.00x │      50% │" in row


def test_a_rate_that_would_round_to_zero_keeps_two_significant_digits():
    """XLA:CPU's INT4 GEMV at 8192 x 8192 moved 0.027 GB/s (1.33 s a call): "0.0" would say it
    moved nothing, beside the results table's 0.027 for the same record."""
    from rich.console import Console

    from bench.report.precision import precision_table
    c = Console(width=200, record=True)
    c.print(precision_table([rec("gemv_bf16", "torch_matmul", 0.422, 134250496),
                             rec("gemv_w4", "torch_dequant", 1.332, 35684352, group_size=128)]))
    row = next(line for line in c.export_text().splitlines() if "INT4" in line)
    assert "│ 0.027 │" in row and "0.0 " not in row


def test_precision_suite_is_one_labelled_shape():
    cases = cases_for("precision", SuiteContext("cpu"))
    assert [c.op for c in cases] == ["gemv_bf16", "gemv_w8", "gemv_w4"]
    assert {c.group for c in cases} == {"precision"} and {c.shape.N for c in cases} == {8192}
    assert cases[2].shape.group_size == 128


def test_activation_dtypes_are_compared_each_with_its_own_bf16_in_weight_order():
    """A run at bf16 and fp32 activations: each dtype's INT4 against its own bf16 time (never
    an fp32 time against a bf16 one), rows in bf16, INT8, INT4 order."""
    def at(dtype, r):
        return {**r, "dtype": dtype}
    rows = precision_rows([
        at("float32", rec("gemv_w4", "simd_c", 2e-3, 40e6, group_size=128)),
        at("float32", rec("gemv_bf16", "torch_matmul", 8e-3, 300e6)),
        rec("gemv_w4", "simd_c", 1e-3, 35e6, group_size=128),
        rec("gemv_w8", "simd_c", 2e-3, 67e6),
        rec("gemv_bf16", "torch_matmul", 4e-3, 134e6),
    ])
    assert [(r["dtype"], r["op"]) for r in rows] == [
        ("bfloat16", "gemv_bf16"), ("bfloat16", "gemv_w8"), ("bfloat16", "gemv_w4"),
        ("float32", "gemv_bf16"), ("float32", "gemv_w4")]
    w4 = {r["dtype"]: r for r in rows if r["op"] == "gemv_w4"}
    assert abs(w4["bfloat16"]["speedup"] - 4.0) < 1e-9
    assert abs(w4["float32"]["speedup"] - 4.0) < 1e-9
    assert abs(w4["float32"]["ideal"] - 300 / 40) < 1e-9


def test_no_precision_table_without_a_quantized_row():
    from bench.report.precision import precision_table
    assert precision_table([rec("gemv_bf16", "torch_matmul", 4e-3, 134e6)]) is None
    assert precision_table([]) is None


def test_a_time_from_the_cache_or_a_suspect_one_is_not_set_beside_the_ideal():
    """`run --suite precision --warm` timed bf16 from DRAM (past 4x the LLC) beside INT4 and
    INT8 the cache held, which the run does not judge; nor is a time above the roof one."""
    from bench.results import IN_CACHE
    warm = dict(warm=True, cold=False, verdict=IN_CACHE)
    rows = precision_rows([
        rec("gemv_bf16", "torch_matmul", 4e-3, 134e6),
        {**rec("gemv_w4", "simd_c", 1e-4, 35e6, group_size=128), **warm},
        rec("gemv_w4", "torch_int4pack_mm", 2e-3, 35e6, group_size=128),
        {**rec("gemv_w8", "simd_c", 1e-4, 67e6), "verdict": "above the roof: harness suspect"},
    ])
    by_op = {r["op"]: r for r in rows}
    assert set(by_op) == {"gemv_bf16", "gemv_w4"}
    assert by_op["gemv_w4"]["impl"] == "torch_int4pack_mm" and by_op["gemv_w4"]["speedup"] == 2.0
