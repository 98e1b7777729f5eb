"""Timing rules, rotation, sysfs cache reading and the roofline verdict (no real timings)."""
import pytest
import torch

from backends.cpu import read_caches
from bench.roofline import Roof, judge
from bench.runner import set_bytes
from bench.timing import Budget, stop_rule, summarize


def test_summary_statistics():
    st = summarize([1.0, 2.0, 3.0, 4.0, 100.0], "max_samples")
    assert st.median == 3.0 and st.min == 1.0 and st.n == 5
    assert st.p25 == 2.0 and st.p75 == 4.0


def test_stop_rule():
    b = Budget(min_samples=10, max_samples=100, min_time_s=0.0, max_time_s=10.0, target_rel=0.005)
    assert stop_rule([1.0] * 5, 0.1, b) is None  # too few samples
    assert stop_rule([1.0] * 10, 0.1, b) == "stdrel"
    noisy = [1.0, 1.2] * 10
    assert stop_rule(noisy, 0.1, b) is None  # 10% spread, median not yet pinned down
    assert stop_rule(noisy, 11.0, b) == "max_time"
    assert stop_rule([1.0, 1.2] * 50, 0.1, b) == "max_samples"
    many = [1.0, 1.05] * 2000
    b2 = Budget(min_samples=10, max_samples=10**6, min_time_s=0.0, max_time_s=10.0)
    assert stop_rule(many, 0.1, b2) == "median_precise"


def test_set_bytes_counts_shared_storage_once():
    a = torch.empty(100, dtype=torch.float32)
    view = a[10:20]
    out = torch.empty(5, dtype=torch.float16)
    assert set_bytes((a, view, 3), out) == 400 + 10


def test_read_caches_from_fake_sysfs(tmp_path):
    def cache(cpu, idx, level, ctype, size, shared):
        d = tmp_path / f"cpu{cpu}" / "cache" / f"index{idx}"
        d.mkdir(parents=True)
        for k, v in dict(level=level, type=ctype, size=size, shared_cpu_list=shared).items():
            (d / k).write_text(f"{v}\n")
    for cpu in (0, 1):
        cache(cpu, 0, 1, "Data", "32K", str(cpu))
        cache(cpu, 1, 1, "Instruction", "32K", str(cpu))
        cache(cpu, 2, 2, "Unified", "512K", str(cpu))
        cache(cpu, 3, 3, "Unified", "32768K", "0-1")
    c = read_caches(tmp_path)
    assert c == {"L1d": 65536, "L2": 1024 * 1024, "L3": 32 * 1024 * 1024}


ROOF = Roof("cpu", copy_gbps=20.0, read_gbps=25.0, working_set_bytes=1 << 28,
            matmul_tflops={"float32": 0.1})


@pytest.mark.parametrize("bytes_, flops, t, verdict", [
    (25e9 * 0.9, 1e6, 1.0, "at the wall"),                     # 90% of 25 GB/s
    (25e9 * 0.5, 1e6, 1.0, "below the wall: kernel"),           # slow, long kernel
    (25e3 * 0.5, 1e3, 1e-6, "below the wall: launch/latency bound"),
    (1e9, 1e12, 10.0, "compute-bound"),                          # AI 1000 > ridge 4
    (25e9 * 1.5, 1e6, 1.0, "above the roof: harness suspect"),   # impossible: flag the harness
])
def test_verdicts(bytes_, flops, t, verdict):
    v = judge(int(bytes_), int(flops), t, ROOF, torch.float32, latency_floor_s=20e-6)
    assert v.verdict.startswith(verdict)
    assert v.ridge == pytest.approx(0.1e12 / 25e9)


def test_roof_is_best_probe_and_maps_compute_dtype():
    r = Roof("cpu", 20.0, 25.0, 1, matmul_tflops={"float32": 0.2},
             compute_dtype={"bfloat16": "float32"})
    assert r.gbps == 25.0
    assert r.tflops(torch.bfloat16) == 0.2 and r.tflops(torch.float16) is None
