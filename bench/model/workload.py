"""Model workloads: what one decode step of a real model reads and computes.

A model is its Hugging Face config.json fields (bench/model/models/*.json, or a user's file in
the same form). A decode step at batch B and context C is, per layer, the qkv, o, gate/up and down
GEMVs and paged attention over each sequence's C cached tokens, then the lm_head GEMV. Its bytes
are the exact formats of kernels/ (docs/kernels.md, Formats): weights at the chosen precision with
their scales (and zeros for INT4, group 128), the KV cache at its precision (+ per-token scales
for INT8), and the small activation, block-table and norm traffic. Decimal units: 1 GB = 1e9 B.

What is counted and why:
- Every linear layer (lm_head included) is stored at `--weights`; the MoE router, the norms and
  the embedding table stay bf16 (they are tiny or, for the embedding, barely read).
- The embedding lookup reads only the B rows of this step's tokens, not the table.
- MoE (Mixtral): each token runs top-k of E experts, so at batch 1 only k experts' weights are
  read per layer. A batch touches more: with uniform routing a given expert is missed by one token
  with probability 1 - k/E, so a batch of B tokens reads E * (1 - (1 - k/E)^B) distinct experts on
  average (Mixtral 8x7B: 2 at B=1, 5.47 at B=4, 7.2 at B=8, ~8 from B=16). Weight bytes grow with
  that count; FLOPs grow with B * k. Each touched expert runs a GEMV over its B*k/touched tokens
  on average; `run --model` times it at the nearest whole M (at least 1), which keeps the tokens
  its timed calls model (M * touched a layer) as close to B*k as a whole M can.
- Nothing is read twice: the counts are the floor any correct implementation must move.
- A field the config leaves out takes transformers' default for its model_type (ARCHS,
  ARCH_DEFAULTS): an untied lm_head for every type here (PretrainedConfig's own default, tied, is
  overridden by each), the attention biases its Attention module builds, and its KV heads, experts
  and sliding window. Without a model_type ARCHS knows, a missing
  tie_word_embeddings is refused, since nothing says which it is.
- A config field that changes the traffic in a way not modelled here (experts under other names,
  latent KV, sliding-window attention: UNMODELLED) is refused, never projected with wrong bytes.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import printable

MODELS_DIR = Path(__file__).with_name("models")
WEIGHT_PRECISIONS = ("bf16", "int8", "int4")
KV_PRECISIONS = ("bf16", "int8")
INT4_GROUP = 128
HALF = 2         # bytes of a bf16 activation, scale, zero, bias, norm weight
INDEX = 4        # bytes of an int32 block-table entry or sequence length
KV_BLOCK = 16    # paged KV block size (tokens per block), as in kernels/attention/ops.py
MAX_BATCH = 4096  # a decode batch: the ops' own limit (GEMV M, paged attention B), so that
#                   `project` and `run --model` take the same batches
MAX_CTX = 2**24   # 16M tokens: past every released model's context window, and the step's byte
#                   and FLOP counts stay far inside a float's range

REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "vocab_size")
INT_FIELDS = REQUIRED + ("num_key_value_heads", "head_dim", "num_local_experts",
                         "num_experts_per_tok")
# Fields of real configs that change decode traffic in ways the step does not model: a config
# with one of them set is refused rather than projected with the wrong bytes.
UNMODELLED = {
    "num_experts": "experts under another name than num_local_experts, as Qwen-MoE and OLMoE",
    "n_routed_experts": "routed and shared experts, as DeepSeek",
    "moe_intermediate_size": "expert MLPs narrower than intermediate_size",
    "kv_lora_rank": "a compressed latent KV cache (multi-head latent attention)",
    "sliding_window": "attention over the last tokens only",
    "mlp_bias": "biases on the MLP's gate, up and down projections",
}
# What transformers builds for each model_type whose layers the step models: tie_word_embeddings
# when the config leaves it out (its <Type>Config's default), and which attention projections carry
# a bias. "attention_bias": q, k, v and o, as the field says (LlamaAttention: every projection's
# bias=config.attention_bias, default false); "qkv": q, k and v always, o never (Qwen2Attention;
# Qwen2Config has no such field); "": none (MistralAttention, which Mixtral's is).
ARCHS: dict[str, tuple[bool, str]] = {
    "llama": (False, "attention_bias"),
    "mistral": (False, ""),
    "mixtral": (False, ""),
    "qwen2": (False, "qkv"),
}
# The traffic fields a config may leave out, as its <Type>Config fills them in (an explicit null
# stays null): MistralConfig and MixtralConfig take 8 KV heads, Qwen2Config 32 (LlamaConfig: as
# many as query heads), MistralConfig a 4096-token sliding window, MixtralConfig 8 experts of which
# 2 run a token.
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "mistral": {"num_key_value_heads": 8, "sliding_window": 4096},
    "mixtral": {"num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2},
    "qwen2": {"num_key_value_heads": 32},
}
# Where use_sliding_window switches the window (Qwen2Config; read so where model_type is unknown):
# MistralAttention and MixtralAttention apply sliding_window whatever that field says.
WINDOW_ALWAYS = ("mistral", "mixtral")
# Types whose model has no experts: transformers ignores num_local_experts there, so a config
# setting it is not one transformers would build as a mixture
DENSE = ("llama", "mistral", "qwen2")
MAX_DIM = 2**24  # a config field past 16M (the largest real ones: vocabularies of ~256K) is not
#                  a model, and the step's counts stay far inside a float's range


class ConfigError(ValueError):
    """A model name or config file that cannot be used; the message is one line for the user."""


@dataclass(frozen=True)
class ModelConfig:
    """The fields of a HF config.json that decide decode traffic."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool = False
    num_local_experts: int = 1      # 1: dense MLP
    num_experts_per_tok: int = 1
    qkv_bias: bool = False          # q, k and v biases (Qwen2; Llama's attention_bias)
    o_bias: bool = False            # an o_proj bias (Llama's attention_bias)
    source: str = ""

    @property
    def is_moe(self) -> bool:
        return self.num_local_experts > 1

    @property
    def qkv_out(self) -> int:
        return (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim

    def param_count(self) -> int:
        """Every parameter once (a tied lm_head shares the embedding's)."""
        H, I, E = self.hidden_size, self.intermediate_size, self.num_local_experts
        attn = self.qkv_out * H + H * self.num_attention_heads * self.head_dim
        attn += (self.qkv_out if self.qkv_bias else 0) + (H if self.o_bias else 0)
        mlp = E * 3 * H * I + (E * H if self.is_moe else 0)
        per_layer = attn + mlp + 2 * H  # + input and post-attention RMSNorm weights
        embed = self.vocab_size * H
        return (self.num_hidden_layers * per_layer + embed + H
                + (0 if self.tie_word_embeddings else embed))


def model_names() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.json"))


def load_model(name_or_path: str) -> ModelConfig:
    """A built-in model by name (case-insensitive) or a user's config.json by path."""
    p = Path(name_or_path)
    if name_or_path.endswith(".json") or p.is_file():
        if p.is_dir():
            raise ConfigError(f"model config {name_or_path}: is a folder, not a config file")
        if not p.is_file():
            raise ConfigError(f"model config {name_or_path}: no such file")
        return _load_file(p, p.stem)
    key = name_or_path.strip().lower()
    known = model_names()
    if key not in known:
        import difflib
        near = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"unknown model {name_or_path!r}{hint} (known: {', '.join(known)}; "
                          "or give a config.json path)")
    return _load_file(MODELS_DIR / f"{key}.json", key)


def _load_file(path: Path, default_name: str) -> ModelConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"model config {path}: cannot read ({e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"model config {path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except ValueError:  # a whole number past Python's limit on digits
        raise ConfigError(f"model config {path}: not valid JSON (a number of more than "
                          f"{sys.get_int_max_str_digits()} digits)") from None
    except RecursionError:
        raise ConfigError(f"model config {path}: not valid JSON (arrays or objects nested "
                          "too deeply)") from None
    return parse_config(data, default_name, where=str(path))


def parse_config(data: Any, name: str, where: str = "model config") -> ModelConfig:
    """Validate HF config.json fields; ConfigError names the first problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object of config.json fields")
    missing = [f for f in REQUIRED if f not in data]
    if missing:
        raise ConfigError(f"{where}: missing field(s) {', '.join(missing)}")
    mtype = data.get("model_type")
    mtype = mtype if isinstance(mtype, str) else None
    data = {**ARCH_DEFAULTS.get(mtype, {}), **data}
    for f, what in UNMODELLED.items():
        if data.get(f) in (None, False, 0) or (f == "sliding_window"
                                               and mtype not in WINDOW_ALWAYS
                                               and data.get("use_sliding_window") is False):
            continue
        raise ConfigError(f"{where}: {f} {_short(data[f])} ({what}) is not modelled: the step "
                          "would count the wrong bytes")
    for f in INT_FIELDS:
        v = data.get(f)
        if v is None and f not in REQUIRED:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{where}: {f} must be a positive integer, got {_short(v)}")
        if v > MAX_DIM:
            raise ConfigError(f"{where}: {f} must be at most {MAX_DIM}, got {_short(v)}")
    for f in ("tie_word_embeddings", "attention_bias"):
        if f in data and not isinstance(data[f], bool):
            raise ConfigError(f"{where}: {f} must be true or false, got {data[f]!r}")
    H, Hq = data["hidden_size"], data["num_attention_heads"]
    Hkv = data.get("num_key_value_heads") or Hq
    if data.get("head_dim") is None and H % Hq:
        raise ConfigError(f"{where}: hidden_size {H} is not a multiple of num_attention_heads "
                          f"{Hq}; give head_dim")
    D = data.get("head_dim") or H // Hq
    if Hq % Hkv:
        raise ConfigError(f"{where}: num_attention_heads {Hq} is not a multiple of "
                          f"num_key_value_heads {Hkv}")
    E = data.get("num_local_experts") or 1
    if E > 1 and mtype in DENSE:
        raise ConfigError(f"{where}: num_local_experts {E} with model_type {mtype}, whose model "
                          "has no experts (transformers ignores the field): give model_type "
                          "mixtral for a mixture of experts, or drop the field")
    k = data.get("num_experts_per_tok") or (2 if E > 1 else 1)
    if k > E:
        raise ConfigError(f"{where}: num_experts_per_tok {k} > num_local_experts {E}")
    tied, qkv_bias, o_bias = _arch_fields(data, where)
    return ModelConfig(
        name=printable(str(data.get("_name") or name)), hidden_size=H,
        intermediate_size=data["intermediate_size"], num_hidden_layers=data["num_hidden_layers"],
        num_attention_heads=Hq, num_key_value_heads=Hkv, head_dim=D,
        vocab_size=data["vocab_size"], tie_word_embeddings=tied,
        num_local_experts=E, num_experts_per_tok=k if E > 1 else 1, qkv_bias=qkv_bias,
        o_bias=o_bias,
        source=printable(str(data.get("_source") or where)))


def _arch_fields(data: dict[str, Any], where: str) -> tuple[bool, bool, bool]:
    """(tie_word_embeddings, q/k/v biases, o bias) as transformers builds the config's model_type
    (ARCHS). A model_type outside ARCHS reads attention_bias as LlamaConfig defines it (q, k, v
    and o), the meaning of the field in transformers' configs that have it."""
    mtype = data.get("model_type")
    arch = ARCHS.get(mtype) if isinstance(mtype, str) else None
    if "tie_word_embeddings" in data:
        tied = data["tie_word_embeddings"]
    elif arch is not None:
        tied = arch[0]
    else:
        which = ("no model_type to take its default from" if mtype is None else
                 f"model_type {_short(mtype)} has no default known here")
        raise ConfigError(f"{where}: no tie_word_embeddings, and {which} (transformers: false "
                          f"for {', '.join(ARCHS)}; true for PretrainedConfig and Gemma): give "
                          "tie_word_embeddings true or false")
    given = data.get("attention_bias")
    if arch is None or arch[1] == "attention_bias":
        return tied, bool(given), bool(given)
    qkv = arch[1] == "qkv"
    if given is not None and given != qkv:
        has = "q, k and v biases" if qkv else "no attention biases"
        raise ConfigError(f"{where}: attention_bias {str(given).lower()} does not fit model_type "
                          f"{mtype}: transformers builds it with {has} whatever the field says")
    return tied, qkv, False


# --- byte formulas (the formats of kernels/, docs/kernels.md) -----------------------------------

def weight_bytes(N: int, K: int, precision: str, group: int = INT4_GROUP) -> int:
    """Bytes of one [N, K] weight, by the op's own formula (kernels/gemv/ops.py), bf16 activations."""
    import torch

    from kernels.gemv import weight_bytes_bf16, weight_bytes_w4, weight_bytes_w8
    if precision == "bf16":
        return weight_bytes_bf16(N, K, torch.bfloat16)
    if precision == "int8":
        return weight_bytes_w8(N, K, torch.bfloat16)
    if precision == "int4":
        if K % group:
            raise ConfigError(f"K={K} is not a multiple of the INT4 group size {group}")
        return weight_bytes_w4(N, K, group, torch.bfloat16)
    raise ConfigError(f"unknown weight precision {precision!r} (known: {', '.join(WEIGHT_PRECISIONS)})")


def kv_bytes_per_token(cfg: ModelConfig, kv: str) -> int:
    """K and V of one token in one layer, by the op's own formula (kernels/attention/ops.py)."""
    import torch

    from kernels.attention import kv_bytes_per_token as per_token
    if kv not in KV_PRECISIONS:
        raise ConfigError(f"unknown KV precision {kv!r} (known: {', '.join(KV_PRECISIONS)})")
    return per_token(cfg.num_key_value_heads, cfg.head_dim, torch.bfloat16, kv8=kv == "int8")


def expected_experts(E: int, k: int, batch: int) -> float:
    """Distinct experts a batch touches per layer under uniform routing: E * (1 - (1 - k/E)^B)."""
    if E <= 1:
        return 1.0
    return E * (1.0 - (1.0 - k / E) ** batch)


# --- the decode step ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Kernel:
    """One distinct kernel of the step: its shape, how often it runs, what each call moves."""

    name: str              # qkv, o, gate_up, down, router, lm_head, attention
    kind: str              # "gemv" or "attention"
    dims: dict[str, int]   # gemv: M, N, K; attention: B, Hq, Hkv, D, context
    calls: float           # per step (expected count for MoE experts)
    precision: str         # weights (gemv) or KV (attention)
    weight_bytes: int      # per call
    kv_bytes: int          # per call
    act_bytes: float       # per call: activations in/out, table entries
    flops: float           # per call
    whole_bytes: int = 0   # of weight_bytes: read whole by one chip of a tensor-parallel split
    #                        (o's bias: vLLM's RowParallelLinear adds it on one rank)

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.kv_bytes + self.act_bytes


@dataclass(frozen=True)
class Step:
    model: ModelConfig
    batch: int
    ctx: int
    weights: str
    kv: str
    kernels: tuple[Kernel, ...]
    other_bytes: dict[str, int] = field(default_factory=dict)  # not timed: embedding rows, norms

    def total(self, attr: str) -> float:
        return sum(k.calls * getattr(k, attr) for k in self.kernels)

    @property
    def weight_bytes(self) -> float:
        return self.total("weight_bytes") + self.other_bytes.get("norm weights", 0)

    @property
    def kv_bytes(self) -> float:
        return self.total("kv_bytes")

    @property
    def bytes(self) -> float:
        """Bytes per step: weights + KV read + activations, embedding rows and norms."""
        return self.total("bytes") + sum(self.other_bytes.values())

    @property
    def flops(self) -> float:
        return self.total("flops")

    @property
    def kernel_bytes(self) -> float:
        """The bytes of the timed kernels only (what `run --model` measures)."""
        return self.total("bytes")

    def resident(self) -> Resident:
        """Memory to hold, by where it sits in a split: every weight (all experts, the whole
        embedding) and the KV cache allocated for batch x ctx. Activations, workspace and runtime
        overhead are not counted."""
        c = self.model
        H, I, L, E = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_local_experts
        w = self.weights
        kv_rows = 2 * c.num_key_value_heads * c.head_dim
        # router, two norms, o's bias (a row-parallel layer's bias is whole on every chip, as in
        # vLLM's RowParallelLinear)
        replicated = ((E * H * HALF if c.is_moe else 0) + 2 * H * HALF
                      + (H * HALF if c.o_bias else 0))
        per_layer = (weight_bytes(c.qkv_out, H, w) + weight_bytes(H, c.num_attention_heads * c.head_dim, w)
                     + E * (weight_bytes(2 * I, H, w) + weight_bytes(H, I, w))
                     + (c.qkv_out * HALF if c.qkv_bias else 0) + replicated)
        kv_proj = weight_bytes(kv_rows, H, w) + (kv_rows * HALF if c.qkv_bias else 0)
        embed = c.vocab_size * H * HALF
        head = 0 if c.tie_word_embeddings and w == "bf16" else weight_bytes(c.vocab_size, H, w)
        kv = self.batch * self.ctx * kv_bytes_per_token(c, self.kv)
        return Resident(L, per_layer, embed + head + H * HALF, kv, kv_proj, replicated)

    def resident_bytes(self) -> int:
        """Memory to hold the model and its KV cache: resident weights + resident KV."""
        return self.resident().total


@dataclass(frozen=True)
class Resident:
    """What a model holds in memory for a step, split the way a chip split divides it."""

    layers: int
    layer_weight_bytes: int   # one decoder layer: its linears (every expert), router, biases, norms
    shared_weight_bytes: int  # embedding table, lm_head (none when tied at bf16), final norm
    layer_kv_bytes: int       # one layer's KV cache for batch x ctx
    layer_kv_proj_bytes: int     # of layer_weight_bytes: the K and V rows of qkv (+ bias),
    #                              split by KV head as the KV cache is
    layer_replicated_bytes: int  # of layer_weight_bytes: norms, MoE router and o's bias, whole
    #                              on every tensor-parallel chip

    @property
    def weight_bytes(self) -> int:
        return self.layers * self.layer_weight_bytes + self.shared_weight_bytes

    @property
    def kv_bytes(self) -> int:
        return self.layers * self.layer_kv_bytes

    @property
    def total(self) -> int:
        return self.weight_bytes + self.kv_bytes


def _gemv(name: str, M: float, N: int, K: int, calls: float, precision: str,
          bias: bool = False, whole_bias: bool = False) -> Kernel:
    """A GEMV over M tokens (an average for MoE experts), run `calls` times a step. Bytes and
    FLOPs count M as it is; the shape to time takes the nearest whole M (a tie rounds up), at
    least 1, so that its calls model as close to M * calls tokens as a whole M can. whole_bias:
    the bias is read whole by a chip of a split (a row-parallel layer's), not split with rows."""
    m = max(1, math.floor(M + 0.5))
    b = N * HALF if bias else 0
    return Kernel(name, "gemv", {"M": m, "N": N, "K": K}, calls, precision,
                  weight_bytes(N, K, precision) + b, 0, M * (K + N) * HALF, 2.0 * M * N * K,
                  b if whole_bias else 0)


def decode_step(cfg: ModelConfig, batch: int, ctx: int, weights: str = "bf16",
                kv: str = "bf16") -> Step:
    """The kernels of one decode step of `cfg` for `batch` sequences at context `ctx`."""
    if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= MAX_BATCH:
        raise ConfigError(f"batch must be a whole number in 1..{MAX_BATCH} (a decode batch), "
                          f"got {_short(batch)}")
    if not isinstance(ctx, int) or isinstance(ctx, bool) or not 1 <= ctx <= MAX_CTX:
        raise ConfigError(f"ctx must be a whole number in 1..{MAX_CTX} (tokens in the KV cache), "
                          f"got {_short(ctx)}")
    if weights not in WEIGHT_PRECISIONS:
        raise ConfigError(f"unknown weight precision {weights!r} (known: {', '.join(WEIGHT_PRECISIONS)})")
    if kv not in KV_PRECISIONS:
        raise ConfigError(f"unknown KV precision {kv!r} (known: {', '.join(KV_PRECISIONS)})")
    c, B = cfg, batch
    H, I, L = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    Hq, Hkv, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    ks: list[Kernel] = [
        _gemv("qkv", B, c.qkv_out, H, L, weights, bias=c.qkv_bias),
        _gemv("o", B, H, Hq * D, L, weights, bias=c.o_bias, whole_bias=True),
    ]
    if c.is_moe:
        E, k = c.num_local_experts, c.num_experts_per_tok
        touched = expected_experts(E, k, B)
        per_expert = B * k / touched  # tokens each touched expert serves, on average
        ks.append(_gemv("router", B, E, H, L, "bf16"))
        ks.append(_gemv("gate_up", per_expert, 2 * I, H, L * touched, weights))
        ks.append(_gemv("down", per_expert, H, I, L * touched, weights))
    else:
        ks.append(_gemv("gate_up", B, 2 * I, H, L, weights))
        ks.append(_gemv("down", B, H, I, L, weights))
    blocks = -(-ctx // KV_BLOCK)
    ks.append(Kernel("attention", "attention",
                     {"B": B, "Hq": Hq, "Hkv": Hkv, "D": D, "context": ctx}, L, kv, 0,
                     B * ctx * kv_bytes_per_token(c, kv),
                     2 * B * Hq * D * HALF + B * (blocks + 1) * INDEX,
                     4.0 * B * Hq * D * ctx))
    ks.append(_gemv("lm_head", B, c.vocab_size, H, 1, weights))
    other = {"embedding rows": B * H * HALF, "norm weights": (2 * L + 1) * H * HALF}
    return Step(cfg, batch, ctx, weights, kv, tuple(ks), other)


def _short(v: Any) -> str:
    """A value for a one-line message: a huge whole number by its size, not its 400 digits."""
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10**18:
        return f"a {int(v.bit_length() * math.log10(2)) + 1}-digit number"
    s = repr(v)
    return s if len(s) <= 40 else s[:39] + "…"


# --- one layer's shapes, for the model-shaped suites --------------------------------------------

LAYER_GEMVS = ("qkv", "o", "gate_up", "down")


def layer_gemv_shapes(name: str) -> dict[str, tuple[int, int]]:
    """(N, K) of each weight GEMV of one layer of a built-in model, in LAYER_GEMVS order."""
    step = decode_step(load_model(name), 1, 1)
    return {k.name: (k.dims["N"], k.dims["K"]) for k in step.kernels if k.name in LAYER_GEMVS}


def attention_heads(name: str) -> tuple[int, int, int]:
    """(Hq, Hkv, D) of a built-in model's attention."""
    c = load_model(name)
    return c.num_attention_heads, c.num_key_value_heads, c.head_dim


__all__ = ["ARCHS", "MAX_BATCH", "MAX_CTX", "ConfigError", "Kernel", "ModelConfig", "Resident",
           "Step", "attention_heads", "decode_step", "expected_experts", "kv_bytes_per_token",
           "layer_gemv_shapes", "load_model", "model_names", "parse_config", "weight_bytes"]
