"""Paged decode attention: `paged_attention` and `paged_attention_kv8`."""
from .ops import PagedAttentionShape, build_inputs, kv_bytes_per_token

__all__ = ["PagedAttentionShape", "build_inputs", "kv_bytes_per_token"]
