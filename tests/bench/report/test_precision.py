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
        rec("gemv_w8", "simd_c", None, 67e6, status="failed-check"),
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


def test_no_bf16_baseline_leaves_speedup_empty():
    rows = precision_rows([rec("gemv_w8", "simd_c", 1e-3, 67e6)])
    assert rows[0]["speedup"] is None and rows[0]["of_ideal"] is None


def test_precision_suite_is_one_labelled_shape():
    cases = cases_for("precision", SuiteContext("cpu"))
    assert [c.op for c in cases] == ["gemv_bf16", "gemv_w8", "gemv_w4"]
    assert {c.group for c in cases} == {"precision"} and {c.shape.N for c in cases} == {8192}
    assert cases[2].shape.group_size == 128
