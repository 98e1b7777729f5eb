"""Projection arithmetic, capacity counts, efficiency from results, and `run --model` plumbing."""
from __future__ import annotations

import argparse
import json
import math

import pytest

from backends import lookup_chip
from bench.cli import main
from bench.project import efficiency_from_results, project
from bench.project_cli import model_cases, step_summary
from bench.suites import SuiteContext
from bench.workload import decode_step, load_model

from test_models import one_error_line


def step70(batch=1, ctx=4096, w="bf16", kv="bf16"):
    return decode_step(load_model("llama-3-70b"), batch, ctx, w, kv)


def test_sanity_point_h100_70b_bf16():
    p = project(step70(), lookup_chip("h100-sxm"))
    assert p.bytes_per_step / 1e9 == pytest.approx(141, rel=0.01)
    assert p.tokens_per_s == pytest.approx(24, rel=0.02)
    assert p.bound == "memory"
    assert p.mem_time_s == pytest.approx(p.bytes_per_step / 3350e9)
    assert p.compute_time_s == pytest.approx(p.flops_per_step / 989e12)


def test_efficiency_and_batch_arithmetic():
    h100 = lookup_chip("h100-sxm")
    full, half = project(step70(), h100, 1.0), project(step70(), h100, 0.5)
    assert half.tokens_per_s == pytest.approx(full.tokens_per_s / 2)
    b8 = project(step70(batch=8), h100)
    assert b8.tokens_per_s == pytest.approx(8 / b8.step_time_s)
    assert b8.seq_tokens_per_s == pytest.approx(1 / b8.step_time_s)


def test_large_batch_turns_compute_bound():
    p = project(decode_step(load_model("llama-3-8b"), 512, 1), lookup_chip("h100-sxm"))
    assert p.bound == "compute" and p.step_time_s == p.compute_time_s


def test_capacity_counts():
    s = step70()
    assert s.resident_bytes() / 1e9 == pytest.approx(142.45, rel=1e-3)
    assert project(s, lookup_chip("h100-sxm")).chips_needed == 2
    assert project(s, lookup_chip("b200")).chips_needed == 1
    groq = project(s, lookup_chip("groq-lpu"))
    assert groq.sram_only and groq.chips_needed == math.ceil(s.resident_bytes() / 0.23e9) == 620
    assert project(step70(w="int4"), lookup_chip("h100-sxm")).chips_needed == 1
    # MoE capacity holds every expert even though batch 1 reads two
    mix = decode_step(load_model("mixtral-8x7b"), 1, 1)
    assert mix.resident_bytes() > 3 * mix.weight_bytes


def test_unknown_figures_stay_unknown():
    p = project(step70(), lookup_chip("mtia-v1"))  # bandwidth not published
    assert p.mem_bw_gbps is None and p.tokens_per_s is None and p.bound == "unknown"
    assert p.chips_needed == 3  # memory size is known
    o = project(step70(), lookup_chip("openai-broadcom"))
    assert o.tokens_per_s is None and o.chips_needed is None and o.compute_time_s is None
    a = project(step70(), lookup_chip("apple-m2-ultra"))  # no compute rate: bandwidth bound only
    assert a.bound == "memory?" and a.tokens_per_s is not None


def rec(op, shape, impl, pct, status="ok"):
    return {"op": op, "shape": shape, "impl": impl, "status": status, "pct_roof": pct,
            "dtype": "bfloat16"}


def test_efficiency_from_results_best_impl_median():
    recs = [rec("gemv_bf16", {"M": 1, "N": 8, "K": 8}, "a", 50),
            rec("gemv_bf16", {"M": 1, "N": 8, "K": 8}, "b", 70),     # best of case 1
            rec("gemv_bf16", {"M": 2, "N": 8, "K": 8}, "a", 90),
            rec("gemv_bf16", {"M": 4, "N": 8, "K": 8}, "a", 60),
            rec("copy", {"N": 8}, "torch_copy", 99),                 # probes never count
            rec("gemv_w4", {"M": 1, "N": 8, "K": 8}, "a", 10, "failed-check")]
    eff, why = efficiency_from_results(recs)
    assert eff == pytest.approx(0.70) and "3 case(s)" in why
    with pytest.raises(ValueError):
        efficiency_from_results([rec("copy", {"N": 8}, "x", 90)])


def test_efficiency_leaves_out_in_cache_records():
    """A size sweep's warm in-cache cases can read several times the DRAM roof: not an efficiency."""
    hot = {**rec("gemv_bf16", {"M": 1, "N": 8, "K": 8}, "a", 400), "warm": True, "cold": False}
    streamed = {**rec("gemv_bf16", {"M": 1, "N": 64, "K": 8}, "a", 60), "warm": True, "cold": True}
    eff, why = efficiency_from_results([hot, streamed, rec("gemv_bf16", {"M": 2, "N": 8, "K": 8}, "a", 80)])
    assert eff == pytest.approx(0.70) and "2 case(s)" in why


def test_project_cli_json_and_from(tmp_path, capsys):
    assert main(["project", "--model", "llama-3-70b", "--chip", "h100-sxm", "--chip", "groq-lpu",
                 "--json", "--efficiency", "0.5"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["chip"] for r in rows] == ["h100-sxm", "groq-lpu"]
    assert rows[0]["tokens_per_s"] == pytest.approx(12, rel=0.02)
    assert rows[1]["chips_needed"] == 620
    f = tmp_path / "r.jsonl"
    f.write_text("\n".join(json.dumps(rec("gemv_bf16", {"M": m, "N": 8, "K": 8}, "a", 80))
                           for m in (1, 2)) + "\n")
    assert main(["project", "--model", "llama-3-8b", "--chip", "h100-sxm", "--json",
                 "--from", str(f)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["efficiency"] == pytest.approx(0.8) and "measured roof" in r["efficiency_source"]
    assert main(["project", "--model", "mixtral-8x7b", "--batch", "8"]) == 0  # table renders
    out = capsys.readouterr().out
    assert "groq-lpu" in out and "INTERCONNECT" in out and "unknown" in out


@pytest.mark.parametrize("argv, msg", [
    (["project", "--model", "llama-3-8b", "--chip", "h100-sxx"], "did you mean 'h100-sxm'"),
    (["project", "--model", "nope"], "unknown model"),
    (["project", "--model", "llama-3-8b", "--ctx", "-3"], "--ctx"),
    (["project", "--model", "llama-3-8b", "--batch", "x"], "--batch"),
    (["project", "--model", "llama-3-8b", "--efficiency", "80"], "0.8, not 80"),
    (["project", "--model", "llama-3-8b", "--efficiency", "0.5", "--from", "x.jsonl"], "not both"),
    (["project", "--model", "llama-3-8b", "--from", "/nonexistent.jsonl"], "no such file"),
    (["project", "--model", "llama-3-8b", "--weights", "fp8"], "invalid choice"),
    (["run", "--batch", "2", "--no-save"], "need(s) --model"),
    (["run", "--model", "llama-3-8b", "--op", "gemv_bf16", "--no-save"], "not both"),
    (["run", "--model", "llama-3-8b", "--ctx", "0", "--no-save"], "--ctx"),
    (["run", "--model", "llama-3-8b", "--dtype", "float32", "--no-save"], "16-bit"),
])
def test_cli_bad_inputs(capsys, argv, msg):
    assert msg in one_error_line(capsys, argv)


def test_run_model_missing_op_is_one_line(capsys, monkeypatch):
    import kernels
    monkeypatch.delitem(kernels.OPS, "gemv_w4", raising=False)
    line = one_error_line(capsys, ["run", "--model", "llama-3-8b", "--weights", "int4",
                                   "--backend", "cpu", "--no-save"])
    assert "gemv_w4" in line and "not registered" in line


def ns(**kw):
    base = dict(model=None, batch=None, ctx=None, weights=None, kv=None, op=None, suite=None,
                shape=None, dtype=None)
    return argparse.Namespace(**{**base, **kw})


def test_model_cases_and_step_sum(tmp_path):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"hidden_size": 256, "intermediate_size": 512,
                               "num_hidden_layers": 3, "num_attention_heads": 4,
                               "num_key_value_heads": 2, "vocab_size": 1000}))
    args = ns(model=str(cfg), batch=2, ctx=40)
    cases = model_cases(args, SuiteContext("cpu"))
    got = {c.group.split()[-1]: (c.op, c.shape) for c in cases}
    assert got["qkv"][1].N == (4 + 2 * 2) * 64 and got["qkv"][1].K == 256
    assert got["down"][1].K == 512 and got["lm_head"][1].N == 1000
    assert got["attention"][0] == "paged_attention" and got["attention"][1].context == 40
    # synthetic records: the sum takes the faster ok impl of each kernel, x calls per step
    import dataclasses
    records = []
    for c in cases:
        shape = dataclasses.asdict(c.shape)
        records.append({"op": c.op, "shape": shape, "impl": "slow", "status": "ok",
                        "time_s": {"median": 2e-3}, "pct_roof": 40})
        records.append({"op": c.op, "shape": shape, "impl": "fast", "status": "ok",
                        "time_s": {"median": 1e-3}, "pct_roof": 80})
    s = step_summary(args.model_step, records, roof_gbps=10.0)
    assert s["measured_step_s"] == pytest.approx(1e-3 * (5 * 3 + 1))  # 5 per layer + lm_head
    assert s["bound_step_s"] == pytest.approx(args.model_step.bytes / 10e9)
    assert all(r["impl"] == "fast" for r in s["kernels"])
    s2 = step_summary(args.model_step, records[2:], roof_gbps=10.0)  # qkv never ran ok
    assert s2["measured_step_s"] is None and s2["missing"] == ["qkv"]
    hot = [{**r, "impl": "hot", "warm": True, "time_s": {"median": 1e-6}} for r in records]
    s3 = step_summary(args.model_step, records + hot, roof_gbps=10.0)  # warm timings never count
    assert s3["measured_step_s"] == pytest.approx(s["measured_step_s"])
