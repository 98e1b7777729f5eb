"""`decodewall roof`: the rates it prints are the ones `run` judges cases against."""
import json

import pytest

from bench.cli import main


@pytest.mark.parametrize("flags, rates", [({"avx2", "avx512_bf16"}, {"bfloat16", "float32"}),
                                          ({"avx2"}, {"float32"})])
def test_a_cpu_roof_shows_the_bf16_rate_where_it_is_the_compute_roof(capsys, monkeypatch,
                                                                     flags, rates):
    """A CPU with AVX512-BF16 judges every bf16 case against bf16's own matmul rate (5x fp32's
    on a Zen 5 guest), so `roof` shows that rate beside fp32's; without it, fp32's alone."""
    import backends.cpu
    import bench.roofline as rl
    monkeypatch.setattr(backends.cpu, "cpu_flags", lambda cpuinfo=None: flags)
    monkeypatch.setattr(rl, "remeasure_bandwidth", lambda b, roof, budget=None: roof)
    monkeypatch.setattr(rl, "matmul_tflops", lambda b, dt, budget: 0.1)
    assert main(["roof", "--backend", "cpu", "--json"]) == 0
    roof = json.loads(capsys.readouterr().out)
    assert set(roof["matmul_tflops"]) == rates
    assert roof["compute_dtype"]["bfloat16"] == ("bfloat16" if "bfloat16" in rates else "float32")
