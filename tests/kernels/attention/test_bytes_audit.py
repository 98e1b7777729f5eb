"""Paged attention's byte and FLOP counts pinned by hand from the layout (docs/kernels.md).

Per case: q read + out written (B*Hq*D each, q's dtype), K and V of each sequence's real length
(every KV head once, whatever Hq), an int32 table entry per block a sequence touches, an int32
seq_len per sequence; INT8 KV: 1 byte an element plus a K and a V scale per (token, KV head) in
q's dtype. The numbers below are worked out by hand in the comments, not by the op's formula.
"""
from __future__ import annotations

import pytest
import torch

from kernels import OPS
from kernels.attention.ops import PagedAttentionShape as Shape

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
PA, KV8 = OPS["paged_attention"], OPS["paged_attention_kv8"]

# Ragged, with sequences ending mid-block: lens [33, 33, 17, 23] (106 tokens).
RAGGED = dict(B=4, Hq=8, Hkv=2, D=64, context=33)
# Ragged with a one-token sequence, all in one block, MQA: lens [3, 2, 3, 1] (9 tokens).
TINY = dict(B=4, Hq=4, Hkv=1, D=32, context=3)


def test_the_lengths_these_numbers_assume():
    assert Shape(**RAGGED).seq_lens() == [33, 33, 17, 23]
    assert Shape(**TINY).seq_lens() == [3, 2, 3, 1]


@pytest.mark.parametrize("op, bs, dtype, expect", [
    # q+out 2*4*8*64*2 = 8192; KV 106 * 2*2*64*2 = 54272; table 3+3+2+2 = 10 entries = 40; lens 16
    (PA, 16, BF16, 8192 + 54272 + 40 + 16),
    (PA, 16, F16, 8192 + 54272 + 40 + 16),
    # block_size 32: 2+2+1+1 = 6 entries = 24
    (PA, 32, BF16, 8192 + 54272 + 24 + 16),
    # fp32: q+out 16384; KV 106 * 2*2*64*4 = 108544
    (PA, 16, F32, 16384 + 108544 + 40 + 16),
    # INT8 KV, bf16: KV 106 * (2*2*64*1 + 2*2*2 scales) = 106 * 264 = 27984
    (KV8, 16, BF16, 8192 + 27984 + 40 + 16),
    # INT8 KV, fp32 scales, block 32: KV 106 * (256 + 2*2*4) = 28832
    (KV8, 32, F32, 16384 + 28832 + 24 + 16),
])
def test_ragged_mid_block_by_hand(op, bs, dtype, expect):
    assert op.bytes_moved(Shape(**RAGGED, block_size=bs), dtype) == expect


def test_one_token_sequence_mqa_by_hand():
    s = Shape(**TINY, block_size=16)
    # q+out 2*4*4*32*2 = 2048; KV 9 * 2*1*32*2 = 1152; 4 table entries = 16; lens 16
    assert PA.bytes_moved(s, F16) == 2048 + 1152 + 16 + 16
    # INT8 KV: 9 * (2*32 + 2*2) = 612
    assert KV8.bytes_moved(s, F16) == 2048 + 612 + 16 + 16
    # 8 query heads on the same KV head: only q and out grow (2*4*4*32*2 = 2048 more)
    assert PA.bytes_moved(Shape(**{**TINY, "Hq": 8}, block_size=16), F16) == 5280


def test_sequences_that_fill_whole_blocks_by_hand():
    """seq_len a multiple of block_size: ceil(n / BS) table entries, no entry for a next block."""
    s = Shape(B=2, Hq=2, Hkv=1, D=32, context=32, block_size=16, ragged=0)
    assert s.seq_lens() == [32, 32] and s.blocks_read == 4
    # q+out 2*2*2*32*2 = 512; KV 64 * 2*1*32*2 = 8192; 2+2 entries = 16; lens 8
    assert PA.bytes_moved(s, BF16) == 512 + 8192 + 16 + 8
    # block_size 32: one entry a sequence
    assert PA.bytes_moved(Shape(B=2, Hq=2, Hkv=1, D=32, context=32, block_size=32, ragged=0),
                          BF16) == 512 + 8192 + 8 + 8


def test_single_token_single_sequence_by_hand():
    s = Shape(B=1, Hq=32, Hkv=8, D=128, context=1, block_size=32)
    # q+out 2*32*128*2 = 16384; K and V of one token 2*8*128*2 = 4096; 1 entry; 1 len
    assert PA.bytes_moved(s, BF16) == 16384 + 4096 + 4 + 4


def test_pool_size_is_not_counted():
    """The pool holds `pool` x the blocks read; only the blocks read count."""
    for pool in (1, 2, 7):
        assert PA.bytes_moved(Shape(**RAGGED, pool=pool), BF16) == 62520


def test_flops_by_hand():
    # 4 flops per (token, query head, d): q.k and p.v; 4 * 106 * 8 * 64
    assert PA.flops(Shape(**RAGGED)) == KV8.flops(Shape(**RAGGED)) == 217088
    assert PA.flops(Shape(**TINY)) == 4 * 9 * 4 * 32


def _touched_bytes(args: tuple, kv8: bool) -> int:
    """Bytes of the tensors make_inputs built that a kernel must touch: q, an output like q, the
    K/V rows (and scales) at positions < seq_len, the table entries of those blocks, seq_lens."""
    q, k, v = args[:3]
    table, lens = args[-3], args[-2]
    BS = k.shape[1]
    row = lambda t: t[0, 0].numel() * t.element_size()  # one token, every KV head
    total = 2 * q.numel() * q.element_size() + lens.numel() * lens.element_size()
    per_token = row(k) + row(v) + (row(args[3]) + row(args[4]) if kv8 else 0)
    for n in lens.tolist():
        total += n * per_token + -(-n // BS) * table.element_size()
    return total


@pytest.mark.parametrize("kw", [RAGGED, TINY, dict(B=2, Hq=8, Hkv=1, D=256, context=17),
                                dict(B=3, Hq=2, Hkv=2, D=32, context=64, ragged=0),
                                dict(B=5, Hq=4, Hkv=4, D=64, context=100, ragged=0)])
@pytest.mark.parametrize("bs", [16, 32])
@pytest.mark.parametrize("dtype", [F32, F16, BF16])
def test_bytes_match_the_tensors_built(kw, bs, dtype):
    """The count agrees with the element sizes and shapes of the inputs the op actually builds."""
    s = Shape(**kw, block_size=bs)
    for op, kv8 in ((PA, False), (KV8, True)):
        assert op.bytes_moved(s, dtype) == _touched_bytes(op.make_inputs(s, dtype, "cpu", 0), kv8)
