"""Pins on the decode-step byte model and the projection that the broader tests leave loose:
each test holds one number or one refusal by hand-computed values, so a slip in the formula
(a dropped factor, a wrong term, a boundary off by one) fails it."""
from __future__ import annotations

import dataclasses

import pytest

from backends import lookup_chip
from bench.model.project import (_interpolate, chip_resident_bytes, efficiency_from_results,
                                 link_model, project_split, smallest_split)
from bench.model.workload import (MAX_CTX, MAX_DIM, ConfigError, decode_step, load_model,
                                  parse_config)

BASE = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 1000, "tie_word_embeddings": False}


def test_a_head_dim_apart_from_hidden_over_heads_sizes_o_by_heads_times_head_dim():
    """head_dim 128 with 4 query heads and hidden 256 (as Qwen3 and Gemma configs give): o maps
    Hq*D = 512 inputs to 256 outputs. One layer at bf16 holds qkv (4+2*2)*128 x 256 x 2 =
    524,288 B, o 256 x 512 x 2 = 262,144 B, gate/up 1024 x 256 x 2 = 524,288 B, down 256 x 512
    x 2 = 262,144 B and two norms 2 x 256 x 2 = 1,024 B: 1,573,888 B. Taking o as H x H would
    count 131,072 B too few a layer."""
    c = parse_config({**BASE, "head_dim": 128}, "wide")
    o = {k.name: k for k in decode_step(c, 1, 1).kernels}["o"]
    assert (o.dims["N"], o.dims["K"], o.weight_bytes) == (256, 512, 262_144)
    r = decode_step(c, 1, 1).resident()
    assert r.layer_weight_bytes == 1_573_888
    assert r.weight_bytes == 2 * c.param_count()  # bf16, untied: every parameter twice


def test_kv_projection_biases_are_copied_with_their_kv_heads():
    """attention_bias, 4 query heads and 2 KV heads of 64 on tp 4: q's bias (256 values) splits
    4 ways, the K and V biases (2 x 2 x 64 = 256 values) only 2 ways (a KV head is not split,
    its projection rows and bias are copied), o's bias (256 values) is whole. A chip holds
    2 x (256/4 + 256/2 + 256) = 896 B more a layer, 1,792 B over 2 layers."""
    plain = decode_step(parse_config(BASE, "p"), 1, 1)
    biased = decode_step(parse_config({**BASE, "attention_bias": True}, "b"), 1, 1)
    assert chip_resident_bytes(biased, 4, 1) - chip_resident_bytes(plain, 4, 1) == 1_792
    # the K and V rows of qkv, with their bias: 256 rows x 256 x 2 B + 256 x 2 B
    assert biased.resident().layer_kv_proj_bytes == 131_584


@pytest.mark.parametrize("field, bad", [("tie_word_embeddings", "false"),
                                        ("attention_bias", "true"), ("tie_word_embeddings", 0)])
def test_a_truth_field_that_is_not_true_or_false_is_refused(field, bad):
    """A string "false" is truthy: read as given it would tie (or bias) a model its config says
    is not, and count the wrong bytes. Refused in one line instead."""
    with pytest.raises(ConfigError, match=f"{field} must be true or false"):
        parse_config({**BASE, field: bad}, "x")


def test_a_built_in_model_name_is_case_insensitive():
    """`--model Llama-3-8B` is the built-in llama-3-8b, as its own _name spells it."""
    assert load_model("Llama-3-8B") == load_model("llama-3-8b")


def test_the_largest_context_and_field_are_accepted_and_one_more_is_not():
    """MAX_CTX tokens and a field of MAX_DIM are the documented limits, inclusive."""
    c = load_model("llama-3-8b")
    assert decode_step(c, 1, MAX_CTX).ctx == MAX_CTX
    with pytest.raises(ConfigError, match="ctx"):
        decode_step(c, 1, MAX_CTX + 1)
    assert parse_config({**BASE, "vocab_size": MAX_DIM}, "x").vocab_size == MAX_DIM
    with pytest.raises(ConfigError, match="vocab_size must be at most"):
        parse_config({**BASE, "vocab_size": MAX_DIM + 1}, "x")


def test_every_expert_a_token_is_a_valid_mixture():
    """num_experts_per_tok may equal num_local_experts (each token runs every expert): the
    config is accepted, and a batch reads all E experts' weights (E x (1 - 0^B) = E)."""
    c = parse_config({**BASE, "model_type": "mixtral", "num_local_experts": 2,
                      "num_experts_per_tok": 2, "sliding_window": None}, "all")
    gate = {k.name: k for k in decode_step(c, 1, 1).kernels}["gate_up"]
    assert gate.calls == 2 * 2  # 2 layers x 2 experts


def test_a_batchs_all_reduce_carries_every_sequences_activations():
    """Llama-3-70B bf16 at batch 8 on 8 H100 SXMs: each all-reduce carries 8 x 8192 x 2 =
    131,072 B; the ring moves 2 x 7/8 of it, 229,376 B at 450 GB/s = 0.50972 us, plus the
    catalog's 6 us latency; two a layer over 80 layers: 160 x 6.50972 us = 1.04156 ms."""
    s = decode_step(load_model("llama-3-70b"), 8, 4096)
    sp = project_split(s, lookup_chip("h100-sxm"), 8, 1)
    assert sp.collective_time_s == pytest.approx(160 * (6e-6 + 229_376 / 450e9), rel=1e-12)


def _ar(b, t, p25=None):
    return {"op": "allreduce", "status": "ok", "shape": {"bytes": b, "world_size": 2},
            "time_s": {"median": t, "p25": t if p25 is None else p25, "p75": t},
            "device": {"chip": "h200"}}


def test_several_runs_of_one_message_size_take_their_median():
    """Three runs of 8 KiB at 10, 11 and 30 us (each record's median; p25 9 us) set the link at
    11 us: the median of the runs' medians, not their mean (17 us) nor a quartile."""
    recs = [_ar(8192, 10e-6, 9e-6), _ar(8192, 11e-6, 9e-6), _ar(8192, 30e-6, 9e-6)]
    assert link_model(lookup_chip("h200"), recs).allreduce_s(8192, 2) == (
        pytest.approx(11e-6), False)


def test_times_that_fall_with_size_do_not_make_a_larger_message_cheaper():
    """Measured 30 us at 8 B and 20 us at 1 KiB (noise): past 1 KiB without a catalog bandwidth
    a message costs the 1 KiB time (slope clamped at 0), never less, and is a lower bound."""
    assert _interpolate([(8, 30e-6), (1024, 20e-6)], 4096) == (pytest.approx(20e-6), True)


def _rec(shape, pct, dtype="bfloat16"):
    return {"op": "gemv_bf16", "impl": "a", "status": "ok", "shape": shape, "pct_roof": pct,
            "dtype": dtype}


def test_one_shape_in_two_dtypes_is_two_cases():
    """bfloat16 at 80% and float16 at 40% of one shape are two cases, beside a third at 60%:
    the median of 80, 40 and 60 is 60%. Folding the dtypes into one case (its best, 80) would
    give the median of 80 and 60, 70%."""
    s = {"M": 1, "N": 8, "K": 8}
    eff, why = efficiency_from_results([_rec(s, 80), _rec(s, 40, "float16"),
                                        _rec({"M": 2, "N": 8, "K": 8}, 60)])
    assert eff == pytest.approx(0.60) and "3 case(s)" in why


@pytest.mark.parametrize("pct, msg", [(0.005, "too little to project with"),
                                      (200, "is no memory efficiency")])
def test_an_efficiency_from_results_outside_its_bounds_is_refused(pct, msg):
    """A median of 0.005% (below MIN_EFFICIENCY, 0.01%) projects hours a token; 200% (above
    MAX_EFFICIENCY, 150%) measured no memory: both are refused, not projected."""
    recs = [_rec({"M": m, "N": 8, "K": 8}, pct) for m in (1, 2, 3)]
    with pytest.raises(ValueError, match=msg):
        efficiency_from_results(recs)


def test_splits_of_as_many_chips_keep_tensor_parallel_within_the_fabric_group():
    """Llama-3-70B bf16, batch 1, ctx 4096, on 10 GB chips: 16 chips is the fewest that hold it,
    as 1x16, 2x8, 4x4, 8x2 (8.90 GB a chip) or 16x1 (9.16 GB: the K and V projections copied
    past 8 KV heads); 1x15 puts 6 layers, 10.67 GB, on a chip. With the H100's 8-GPU NVSwitch
    group the pick is tp 8 x 2 stages (the largest tp inside the group), not 16 x 1 across
    groups; with no known group it is stages first, 1 x 16."""
    s, h100 = decode_step(load_model("llama-3-70b"), 1, 4096), lookup_chip("h100-sxm")
    chip = dataclasses.replace(h100, mem_gb=10.0)
    assert chip.interconnect.group == 8
    assert smallest_split(s, chip) == (8, 2)
    assert project_split(s, chip, 16, 1).holds  # 16 x 1 holds too: the group decides
    flat = dataclasses.replace(chip, interconnect=dataclasses.replace(chip.interconnect,
                                                                      group=None))
    assert smallest_split(s, flat) == (1, 16)


def test_an_expert_gemv_of_half_a_token_over_a_whole_m_is_timed_at_the_next_m():
    """Top-1 of 2 experts at batch 57: 2 x (1 - 2^-57) experts are touched, 2.0 as a float, so
    each serves 57 / 2 = 28.5 tokens. The documented tie rule rounds up to M 29 (2 x 29 = 58
    tokens timed cover the 57); round-half-to-even would time M 28 (56 tokens, one short)."""
    c = parse_config({**BASE, "model_type": "mixtral", "num_local_experts": 2,
                      "num_experts_per_tok": 1, "sliding_window": None}, "two")
    ks = {k.name: k for k in decode_step(c, 57, 1).kernels}
    assert ks["gate_up"].dims["M"] == ks["down"].dims["M"] == 29
    assert ks["gate_up"].calls == pytest.approx(2 * 2.0)  # 2 layers x 2 touched experts
