"""Model configs and the decode-step byte model, against hand-computed parameter and byte counts."""
from __future__ import annotations

import json

import pytest
import torch

from bench.model.workload import (ConfigError, decode_step, expected_experts, kv_bytes_per_token,
                            load_model, model_names, parse_config, weight_bytes)
from kernels import OPS
from tests.helpers import one_error_line


def dense_params(H, I, L, Hq, Hkv, D, V, tied=False, bias=False, o_bias=False):
    """Written out once more by hand: q, k, v, o, gate, up, down, two norms per layer."""
    q, k, v, o = H * Hq * D, H * Hkv * D, H * Hkv * D, Hq * D * H
    b = ((Hq + 2 * Hkv) * D if bias else 0) + (H if o_bias else 0)
    mlp = 3 * H * I
    return L * (q + k + v + o + b + mlp + 2 * H) + V * H * (1 if tied else 2) + H


@pytest.mark.parametrize("name, expected, published", [
    ("llama-3-8b", dense_params(4096, 14336, 32, 32, 8, 128, 128256), 8.03e9),
    ("llama-3-70b", dense_params(8192, 28672, 80, 64, 8, 128, 128256), 70.55e9),
    ("llama-3.1-405b", dense_params(16384, 53248, 126, 128, 8, 128, 128256), 405.85e9),
    ("qwen2.5-7b", dense_params(3584, 18944, 28, 28, 4, 128, 152064, bias=True), 7.62e9),
])
def test_dense_param_counts(name, expected, published):
    n = load_model(name).param_count()
    assert n == expected
    assert n == pytest.approx(published, rel=2e-3)


def test_llama3_8b_is_8_03b():
    assert load_model("llama-3-8b").param_count() == 8_030_261_248  # the HF model card's count


def test_mixtral_params_and_active_bytes():
    c = load_model("mixtral-8x7b")
    H, I, L, E = 4096, 14336, 32, 8
    attn = H * (32 + 16) * 128 + 32 * 128 * H
    total = L * (attn + E * 3 * H * I + E * H + 2 * H) + 2 * 32000 * H + H
    assert c.param_count() == total == 46_702_792_704
    # batch 1: top-2 of 8 experts read per layer (~12.9B active params, bf16 = 2 bytes each)
    s = decode_step(c, 1, 1, "bf16")
    active = L * (attn + 2 * 3 * H * I + E * H + 2 * H) + 32000 * H + H  # lm_head, no table
    assert s.weight_bytes == pytest.approx(2 * active, rel=1e-9)


def test_moe_batch_touches_more_experts():
    assert expected_experts(8, 2, 1) == pytest.approx(2.0)
    assert expected_experts(8, 2, 8) == pytest.approx(8 * (1 - 0.75**8))
    assert expected_experts(8, 2, 64) == pytest.approx(8.0, abs=1e-6)
    c = load_model("mixtral-8x7b")
    w = [decode_step(c, b, 1).weight_bytes for b in (1, 2, 8, 64)]
    assert w == sorted(w) and w[-1] / w[0] > 3
    # tokens per touched expert: B*k/touched
    gate = {k.name: k for k in decode_step(c, 8, 1).kernels}["gate_up"]
    assert gate.calls == pytest.approx(32 * expected_experts(8, 2, 8))
    assert gate.flops * gate.calls == pytest.approx(32 * 8 * 2 * 2 * (2 * 14336) * 4096)


@pytest.mark.parametrize("batch, m", [(1, 1), (4, 1), (5, 2), (6, 2), (8, 2), (16, 4), (32, 8),
                                      (64, 16)])
def test_moe_expert_gemv_is_timed_at_the_nearest_whole_m(batch, m):
    """Each touched expert serves B*k/touched tokens (4.04 at batch 16, 8.0008 at 32, 16.0000002
    at 64): the whole M timed keeps M * touched as close to B*k as a whole M can, and the byte
    and FLOP counts keep the expectation."""
    c = load_model("mixtral-8x7b")
    touched = expected_experts(8, 2, batch)
    ks = {k.name: k for k in decode_step(c, batch, 1).kernels}
    for name in ("gate_up", "down"):
        k = ks[name]
        assert k.dims["M"] == m, (name, batch)
        assert all(abs(m * touched - 2 * batch) <= abs(other * touched - 2 * batch)
                   for other in range(1, 4 * batch))
        assert k.calls * k.flops == pytest.approx(32 * 2 * batch * 2.0 * k.dims["N"] * k.dims["K"])


def test_bf16_weight_bytes_are_two_per_param_minus_table():
    c = load_model("llama-3-8b")
    s = decode_step(c, 1, 1, "bf16")
    # every parameter but the embedding table (only B rows of it are read) at 2 bytes
    assert s.weight_bytes == 2 * (c.param_count() - c.vocab_size * c.hidden_size)
    assert s.other_bytes["embedding rows"] == 1 * 4096 * 2


def test_the_embedding_lookup_reads_one_row_a_sequence():
    """A step reads the embedding rows of the batch's B tokens (B x hidden x 2 bytes), not the
    table, and no more at a longer context."""
    c = load_model("llama-3-8b")
    for batch in (1, 8, 64):
        assert decode_step(c, batch, 4096).other_bytes["embedding rows"] == batch * 4096 * 2


def test_llama3_70b_bf16_batch1_is_about_141_gb():
    s = decode_step(load_model("llama-3-70b"), 1, 4096, "bf16", "bf16")
    assert s.bytes / 1e9 == pytest.approx(141, rel=0.01)
    assert s.kv_bytes == 80 * 4096 * 2 * 8 * 128 * 2


def test_quantized_formats_exact():
    assert weight_bytes(4096, 4096, "bf16") == 4096 * 4096 * 2
    assert weight_bytes(4096, 4096, "int8") == 4096 * 4096 + 4096 * 2
    # packed nibbles + bf16 scale and zero per group of 128 along K
    assert weight_bytes(4096, 4096, "int4") == 4096 * 2048 + 2 * 4096 * 32 * 2
    c = load_model("llama-3-8b")
    assert kv_bytes_per_token(c, "bf16") == 2 * 8 * 128 * 2
    assert kv_bytes_per_token(c, "int8") == 2 * 8 * 128 + 2 * 8 * 2
    b16, b8, b4 = (decode_step(c, 1, 1024, w).weight_bytes for w in ("bf16", "int8", "int4"))
    assert b16 / b8 == pytest.approx(2, rel=0.01) and b16 / b4 == pytest.approx(3.76, rel=0.01)


def test_kernel_bytes_match_the_ops():
    """The step model and the ops' own bytes_moved/flops agree wherever the op is registered."""
    c = load_model("llama-3-8b")
    for kv, opname in (("bf16", "paged_attention"), ("int8", "paged_attention_kv8")):
        for w, gemv in (("bf16", "gemv_bf16"), ("int8", "gemv_w8"), ("int4", "gemv_w4")):
            s = decode_step(c, 4, 300, w, kv)
            for k in s.kernels:
                name = opname if k.kind == "attention" else gemv
                if name not in OPS:
                    continue
                op = OPS[name]
                from bench.cli.step import _shape_for
                shape = _shape_for(op, k.dims, k.name)
                assert op.bytes_moved(shape, torch.bfloat16) == k.bytes, (name, k.name)
                assert op.flops(shape) == k.flops, (name, k.name)


def test_user_config(tmp_path):
    p = tmp_path / "tiny.json"
    p.write_text(json.dumps({"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
                             "num_attention_heads": 4, "vocab_size": 1000,
                             "tie_word_embeddings": True}))
    c = load_model(str(p))
    assert (c.num_key_value_heads, c.head_dim) == (4, 64)  # MHA and H / heads by default
    assert c.param_count() == dense_params(256, 512, 2, 4, 4, 64, 1000, tied=True)
    assert set(model_names()) >= {"llama-3-8b", "llama-3-70b", "llama-3.1-405b", "mixtral-8x7b",
                                  "qwen2.5-7b"}


@pytest.mark.parametrize("data, msg", [
    ([1, 2], "JSON object"),
    ({"hidden_size": 8}, "missing field"),
    ({"hidden_size": 64, "intermediate_size": 0, "num_hidden_layers": 1,
      "num_attention_heads": 4, "vocab_size": 10}, "intermediate_size must be a positive"),
    ({"hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 1,
      "num_attention_heads": 4, "num_key_value_heads": 3, "vocab_size": 10}, "multiple"),
    ({"hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 4,
      "vocab_size": 10, "num_local_experts": 2, "num_experts_per_tok": 3}, "num_experts_per_tok"),
])
def test_bad_config_fields(data, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_config(data, "x")


def test_bad_step_args():
    c = load_model("llama-3-8b")
    with pytest.raises(ConfigError, match="ctx"):
        decode_step(c, 1, 0)
    with pytest.raises(ConfigError, match="batch"):
        decode_step(c, 0, 1)
    with pytest.raises(ConfigError, match="precision"):
        decode_step(c, 1, 1, "fp8")


def test_cli_malformed_and_unknown_configs(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hidden_size": 4096,')
    assert "not valid JSON" in one_error_line(capsys, ["project", "--model", str(bad)])
    missing = tmp_path / "missing.json"
    missing.write_text('{"hidden_size": 4096}')
    assert "missing field" in one_error_line(capsys, ["project", "--model", str(missing)])
    assert "no such file" in one_error_line(capsys, ["project", "--model", "nope/none.json"])
    assert "did you mean 'llama-3-8b'" in one_error_line(capsys, ["project", "--model", "llama3-8b"])
    assert "--ctx" in one_error_line(capsys, ["project", "--model", "llama-3-8b", "--ctx", "0"])


def test_config_past_what_python_json_reads_is_not_valid_json(tmp_path, capsys):
    """A number past Python's limit on digits and nesting past its recursion limit are refused
    as any malformed config is: one line, exit 2."""
    huge = tmp_path / "huge.json"
    huge.write_text('{"hidden_size": ' + "9" * 5000 + "}")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    for path, why in ((huge, "a number of more than"), (deep, "nested too deeply")):
        with pytest.raises(ConfigError, match=f"not valid JSON \\(.*{why}"):
            load_model(str(path))
        assert why in one_error_line(capsys, ["project", "--model", str(path)])
        out = tmp_path / f"out-{path.stem}"
        out.mkdir()
        assert why in one_error_line(capsys, ["run", "--model", str(path), "--out", str(out)])
        assert not any(out.iterdir())


def test_config_name_reaches_the_terminal_without_control_characters(tmp_path, capsys):
    """A config's `_name` is shown in table titles and error lines: its escape sequences are
    removed as an impl's texts are (bench.errors.printable)."""
    fields = {"_name": "evil\x1b[31mRED\x1b]0;pwned\x07\x9b2J!", "_source": "s\x1b[2Jrc",
              "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 2, "vocab_size": 100, "model_type": "llama"}
    c = parse_config(fields, "x")
    assert (c.name, c.source) == ("evilRED!", "src")
    from types import SimpleNamespace
    from bench.cli.step import build_step, print_step
    cfg = tmp_path / "esc.json"
    cfg.write_text(json.dumps(fields))
    args = SimpleNamespace(model=str(cfg), batch=None, ctx=64, weights=None, kv=None)
    args.model_step = build_step(args)
    print_step(args, [], SimpleNamespace(gbps=20.0))
    out = capsys.readouterr().out
    assert "evilRED! decode step" in out and "\x1b" not in out and "\x9b" not in out


TINY = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": 1000, "model_type": "llama"}


@pytest.mark.parametrize("extra, msg", [
    # Qwen2-MoE / Qwen3-MoE / OLMoE name their experts num_experts: read as dense, the step
    # would count one MLP of intermediate_size instead of k experts of moe_intermediate_size
    ({"num_experts": 60, "num_experts_per_tok": 4, "moe_intermediate_size": 1408}, "num_experts"),
    ({"num_experts": 128}, "num_experts 128"),
    ({"n_routed_experts": 256, "num_experts_per_tok": 8}, "n_routed_experts"),   # DeepSeek
    ({"kv_lora_rank": 512, "q_lora_rank": 1536}, "kv_lora_rank"),               # MLA: a latent KV
    ({"sliding_window": 4096}, "sliding_window 4096"),                           # Mistral-7B v0.1
    ({"sliding_window": 4096, "use_sliding_window": True}, "sliding_window"),
    ({"mlp_bias": True}, "mlp_bias True"),                                      # LlamaMLP biases
])
def test_config_fields_the_step_does_not_model_are_refused(extra, msg):
    """A config whose decode traffic depends on a field the step does not model is refused in
    one line naming it, never projected with wrong bytes."""
    with pytest.raises(ConfigError, match=msg) as e:
        parse_config({**TINY, **extra}, "x")
    assert "\n" not in str(e.value) and "not modelled" in str(e.value)


@pytest.mark.parametrize("extra", [
    {"sliding_window": None},                                  # Mixtral, Mistral-7B v0.2+
    {"sliding_window": 131072, "use_sliding_window": False},   # Qwen2.5: present, switched off
    {"num_experts_per_tok": None, "kv_lora_rank": None},
    {"mlp_bias": False},                                       # Llama-3's configs
])
def test_config_fields_that_are_off_are_accepted(extra):
    assert parse_config({**TINY, **extra}, "x").hidden_size == 256


@pytest.mark.parametrize("model_type", ["llama", "mistral", "mixtral", "qwen2"])
def test_missing_tie_word_embeddings_takes_the_model_types_default(model_type):
    """LlamaConfig, MistralConfig, MixtralConfig and Qwen2Config all default tie_word_embeddings
    to False (PretrainedConfig's own default, True, is overridden): an lm_head of its own."""
    fields = {k: v for k, v in TINY.items() if k != "model_type"}
    fields.update(num_key_value_heads=4, sliding_window=None)  # TINY's 4 heads; no window
    c = parse_config({**fields, "model_type": model_type}, "x")
    assert not c.tie_word_embeddings
    assert parse_config({**fields, "model_type": model_type, "tie_word_embeddings": True},
                        "x").tie_word_embeddings


@pytest.mark.parametrize("model_type, shown", [(None, "no model_type"),
                                               ("gemma", "model_type 'gemma'")])
def test_missing_tie_word_embeddings_without_a_known_default_is_refused(model_type, shown):
    """Without a model_type whose default is known, an lm_head tied or not is a guess
    (PretrainedConfig and Gemma tie it, Llama does not): refused in one line, never guessed."""
    fields = {k: v for k, v in TINY.items() if k != "model_type"}
    if model_type:
        fields["model_type"] = model_type
    with pytest.raises(ConfigError, match="no tie_word_embeddings") as e:
        parse_config(fields, "x")
    assert shown in str(e.value) and "\n" not in str(e.value)
    assert parse_config({**fields, "tie_word_embeddings": False}, "x").vocab_size == 1000


def test_llama_attention_bias_gives_o_a_bias_too():
    """LlamaAttention builds q, k, v and o with bias=config.attention_bias: o's bias (hidden_size
    bf16 values a layer) is read by the o GEMV and held whole on every tensor-parallel chip."""
    from bench.model.project import chip_resident_bytes
    H, I, L, Hq, Hkv, D, V = 256, 512, 2, 4, 4, 64, 1000
    plain = parse_config(TINY, "x")
    c = parse_config({**TINY, "attention_bias": True}, "x")
    assert c.param_count() == dense_params(H, I, L, Hq, Hkv, D, V, bias=True, o_bias=True)
    assert (c.qkv_bias, c.o_bias) == (True, True)
    ks = {k.name: k for k in decode_step(c, 1, 1).kernels}
    ks0 = {k.name: k for k in decode_step(plain, 1, 1).kernels}
    assert ks["o"].weight_bytes - ks0["o"].weight_bytes == ks["o"].whole_bytes == H * 2
    assert ks["qkv"].weight_bytes - ks0["qkv"].weight_bytes == (Hq + 2 * Hkv) * D * 2
    assert ks["qkv"].whole_bytes == 0
    s, s0 = decode_step(c, 1, 1), decode_step(plain, 1, 1)
    biases = L * ((Hq + 2 * Hkv) * D + H) * 2
    assert s.resident().weight_bytes - s0.resident().weight_bytes == biases
    # at tp 2: the q/k/v biases split with their rows, o's bias whole on the chip
    assert chip_resident_bytes(s, 2, 1) - chip_resident_bytes(s0, 2, 1) == pytest.approx(
        L * ((Hq + 2 * Hkv) * D / 2 + H) * 2)


@pytest.mark.parametrize("model_type, Hkv, E, k", [
    ("llama", 32, 1, 1), ("mistral", 8, 1, 1), ("mixtral", 8, 8, 2), ("qwen2", 32, 1, 1)])
def test_fields_left_out_take_the_model_types_defaults(model_type, Hkv, E, k):
    """A config that leaves out its KV heads or experts gets what its <Type>Config fills in:
    MistralConfig's and MixtralConfig's 8 KV heads (not one per query head, 4x the KV bytes),
    MixtralConfig's 8 experts, 2 a token (not a dense model of one)."""
    fields = {**TINY, "num_attention_heads": 32, "hidden_size": 4096, "model_type": model_type,
              "sliding_window": None}
    c = parse_config(fields, "x")
    assert (c.num_key_value_heads, c.num_local_experts, c.num_experts_per_tok) == (Hkv, E, k)
    assert parse_config({**fields, "num_key_value_heads": None}, "x").num_key_value_heads == 32


def test_mistral_without_sliding_window_is_refused():
    """MistralConfig's sliding_window defaults to 4096 and MistralAttention applies it whatever
    use_sliding_window says: a Mistral config leaving it out is a windowed model."""
    fields = {**TINY, "model_type": "mistral", "num_key_value_heads": 4}
    for extra in ({}, {"sliding_window": 4096, "use_sliding_window": False}):
        with pytest.raises(ConfigError, match="sliding_window 4096"):
            parse_config({**fields, **extra}, "x")
    assert parse_config({**fields, "sliding_window": None}, "x").num_key_value_heads == 4


def test_experts_in_a_dense_model_type_are_refused():
    """LlamaConfig has no experts: transformers would build a dense model from a llama config
    with num_local_experts, where the step would count a mixture."""
    with pytest.raises(ConfigError, match="num_local_experts 8 with model_type llama"):
        parse_config({**TINY, "num_local_experts": 8, "num_experts_per_tok": 2}, "x")
    no_type = {k: v for k, v in TINY.items() if k != "model_type"}
    assert parse_config({**no_type, "tie_word_embeddings": False, "num_local_experts": 8},
                        "x").num_local_experts == 8


def test_qwen2_biases_are_q_k_v_only():
    """Qwen2Attention: q, k and v with bias=True, o with bias=False, whatever the config says
    (Qwen2Config has no attention_bias); a config saying otherwise is refused."""
    fields = {**TINY, "model_type": "qwen2", "num_key_value_heads": 4}
    with pytest.raises(ConfigError, match="attention_bias false does not fit model_type qwen2"):
        parse_config({**fields, "attention_bias": False}, "x")
    c = parse_config(fields, "x")
    assert c.param_count() == dense_params(256, 512, 2, 4, 4, 64, 1000, bias=True)
    assert (c.qkv_bias, c.o_bias) == (True, False)
    assert parse_config({**fields, "attention_bias": True}, "x") == c
    assert load_model("qwen2.5-7b").o_bias is False
    with pytest.raises(ConfigError, match="model_type mistral: .* no attention biases"):
        parse_config({**TINY, "model_type": "mistral", "attention_bias": True,
                      "num_key_value_heads": 4, "sliding_window": None}, "x")
    m = parse_config({**TINY, "model_type": "mixtral", "num_key_value_heads": 4}, "x")
    assert (m.qkv_bias, m.o_bias) == (False, False)


def test_config_path_that_is_a_folder(tmp_path, capsys):
    d = tmp_path / "cfg.json"
    d.mkdir()
    assert "is a folder, not a config file" in one_error_line(capsys, ["project", "--model", str(d)])


def test_llama3_70b_int4_step_by_hand():
    """Llama-3-70B (meta-llama/Meta-Llama-3-70B config.json: H 8192, I 28672, 80 layers, 64 query
    and 8 KV heads of 128, vocab 128256, untied), INT4 G=128, batch 1, 4096 tokens, bf16 KV."""
    H, I, L, V, G = 8192, 28672, 80, 128256, 128

    def w4(N, K):  # half a byte a code, a bf16 scale and zero a group of 128 along K
        return N * K // 2 + 2 * N * (K // G) * 2

    layer = w4(10240, H) + w4(H, H) + w4(2 * I, H) + w4(H, I)  # qkv, o, gate/up, down
    assert layer == 454_557_696
    weights = L * layer + w4(V, H) + (2 * L + 1) * H * 2        # + lm_head + norms
    kv = L * 4096 * 2 * 8 * 128 * 2
    acts = (L * 2 * ((H + 10240) + (H + H) + (H + 2 * I) + (I + H))  # GEMV x in, y out
            + L * (2 * 64 * 128 * 2 + (4096 // 16 + 1) * 4)          # q, out, table, seq_len
            + 2 * (H + V) + H * 2)                                   # lm_head, embedding row
    s = decode_step(load_model("llama-3-70b"), 1, 4096, "int4", "bf16")
    assert (s.weight_bytes, s.kv_bytes, s.bytes) == (36_925_423_616, 1_342_177_280,
                                                     38_292_548_416)
    assert s.weight_bytes == weights and s.bytes == weights + kv + acts
    from backends import lookup_chip
    from bench.model.project import project
    p = project(s, lookup_chip("h100-sxm"))  # the catalog's 3,350 GB/s
    assert p.tokens_per_s == pytest.approx(3350e9 / 38_292_548_416, rel=1e-12)  # 87.5


def test_a_tied_lm_head_is_held_apart_once_quantized():
    """A tied lm_head shares the bf16 embedding table only at bf16: quantized to int8 or int4 it
    is a weight of its own (the embedding lookup still reads the bf16 table), so holding the model
    takes both; at bf16 the table is held once."""
    from bench.model.workload import parse_config, weight_bytes
    fields = {"model_type": "llama", "hidden_size": 1024, "intermediate_size": 4096,
              "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 8,
              "vocab_size": 32768}
    V, H = 32768, 1024
    for w in ("bf16", "int8", "int4"):
        tied = decode_step(parse_config({**fields, "tie_word_embeddings": True}, "t"), 1, 1, w)
        untied = decode_step(parse_config({**fields, "tie_word_embeddings": False}, "u"), 1, 1, w)
        table = V * H * 2
        head = 0 if w == "bf16" else weight_bytes(V, H, w)
        assert tied.resident().shared_weight_bytes == table + head + H * 2, w
        assert untied.resident().shared_weight_bytes == table + weight_bytes(V, H, w) + H * 2, w


def test_moe_router_stays_bf16_and_top_k_defaults_to_two():
    """The router is no linear layer `--weights` quantizes: at int8 or int4 it still reads E x H
    bf16 weights. A MoE config without num_experts_per_tok routes each token to 2 experts
    (MixtralConfig's default)."""
    c = load_model("mixtral-8x7b")
    for w in ("int8", "int4"):
        router = {k.name: k for k in decode_step(c, 1, 1, w).kernels}["router"]
        assert router.precision == "bf16" and router.weight_bytes == 8 * 4096 * 2, w
    from bench.model.workload import parse_config
    from bench.model.workload import MODELS_DIR
    data = json.loads((MODELS_DIR / "mixtral-8x7b.json").read_text())
    del data["num_experts_per_tok"]
    assert parse_config(data, "m").num_experts_per_tok == 2  # mixtral's own default
    del data["model_type"]  # no type whose defaults say: experts alone imply the same 2
    assert parse_config(data, "m").num_experts_per_tok == 2


def test_head_size_not_given_and_not_whole_is_refused():
    """Without head_dim the head size is hidden_size / heads; where that is not whole (1000 / 3)
    the config is refused, never projected with a truncated 333."""
    from bench.model.workload import parse_config
    cfg = {"hidden_size": 1000, "intermediate_size": 2048, "num_hidden_layers": 1,
           "num_attention_heads": 3, "vocab_size": 512, "tie_word_embeddings": False}
    with pytest.raises(ConfigError, match="not a multiple of num_attention_heads 3; give head_dim"):
        parse_config(cfg, "odd")
    assert parse_config({**cfg, "head_dim": 320}, "odd").head_dim == 320


def test_int4_needs_whole_groups_along_k():
    """INT4 keeps a scale and a zero a group of 128 along K: a hidden size that is not a multiple
    of 128 has no INT4 format here and is refused, never counted with a partial group."""
    from bench.model.workload import parse_config
    cfg = parse_config({"model_type": "llama", "hidden_size": 1000, "intermediate_size": 2048,
                        "num_hidden_layers": 1, "num_attention_heads": 8,
                        "num_key_value_heads": 8, "vocab_size": 512,
                        "tie_word_embeddings": False}, "odd")
    decode_step(cfg, 1, 1, "int8")  # fine at int8
    with pytest.raises(ConfigError, match="not a multiple of the INT4 group size 128"):
        decode_step(cfg, 1, 1, "int4")
