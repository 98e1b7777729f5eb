"""paged_attention / paged_attention_kv8: reference, every impl, inputs, bytes and bad inputs.

Triton impls run under TRITON_INTERPRET=1 here (set by conftest.py), so they get fp16/fp32 and
small shapes; bf16 Triton runs only in the `cuda` tests.
"""
import math

import pytest
import torch

import kernels.attention.ops as pa
import kernels.attention.pytorch as pt
from kernels import OPS, rel_err
from kernels.triton_util import HAS_TRITON
from kernels.attention.ops import PagedAttentionShape as Shape
from kernels.attention.ops import build_inputs, bytes_moved
from kernels.quant import quantize_kv_int8
from tests import helpers

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
OP_NAMES = ("paged_attention", "paged_attention_kv8")
CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"


def impls_here(op_name, dtype):
    """Every impl this machine can run: CPU ones, and Triton ones (interpreted without a GPU)."""
    out = []
    for name, impl in OPS[op_name].impls.items():
        if impl.kind == "triton":
            if not HAS_TRITON or (not CUDA and dtype == BF16):
                continue  # listed without Triton, but they raise; the interpreter mishandles bf16
            out.append((name, impl, DEV))
        elif "cpu" in impl.backends:
            out.append((name, impl, "cpu"))
    return out


def to(args, device):
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


def run(impl, args, device):
    """Call with a NaN-poisoned output buffer, as the harness's correctness gate does."""
    q = args[0]
    out = torch.full(q.shape, float("nan"), dtype=q.dtype, device=device)
    res = impl(*to(args, device), out=out)
    assert res.data_ptr() == out.data_ptr(), "impl must write into out="
    return out.cpu()


# --- reference --------------------------------------------------------------------------------

def test_reference_matches_hand_computation():
    # One sequence of 3 tokens in blocks [2, 0] (block size 2), one KV head, two query heads.
    k = torch.zeros(3, 2, 1, 2)
    v = torch.zeros(3, 2, 1, 2)
    tok_k = [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)]
    tok_v = [(1.0, 2.0), (3.0, -1.0), (0.5, 0.5)]
    where = [(2, 0), (2, 1), (0, 0)]
    for (blk, slot), kk, vv in zip(where, tok_k, tok_v):
        k[blk, slot, 0] = torch.tensor(kk)
        v[blk, slot, 0] = torch.tensor(vv)
    k[1] = v[1] = 1e6  # unused block: must not matter
    k[0, 1] = v[0, 1] = -1e6  # slot past the sequence's end
    q = torch.tensor([[[2.0, 0.0], [0.0, -1.0]]])
    table = torch.tensor([[2, 0, 77]], dtype=torch.int32)  # 77: garbage past the sequence
    scale = 0.5
    expected = []
    for h in range(2):
        s = [scale * sum(a * b for a, b in zip(q[0, h].tolist(), kk)) for kk in tok_k]
        w = [math.exp(x) for x in s]
        expected.append([sum(wi * vv[d] for wi, vv in zip(w, tok_v)) / sum(w) for d in range(2)])
    out = pa.reference(q, k, v, table, torch.tensor([3], dtype=torch.int32), scale)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torch.tensor([expected], dtype=torch.float64))


@pytest.mark.parametrize("dtype", [F32, F16, BF16])
def test_reference_kv8_is_reference_of_dequantized_cache(dtype):
    """The kv8 reference is the float64 attention over the cache dequantized in float64, k * s
    and v * s, whatever the scales' dtype: int8 codes times fp16 / bf16 scales are mostly not
    fp16 / bf16 numbers, and a reference that rounded them back would pass a kernel that does."""
    shape = Shape(B=2, Hq=4, Hkv=2, D=32, context=40)
    q, k, v, ks, vs, bt, sl, scale = build_inputs(shape, dtype, "cpu", 3, kv8=True)
    assert ks.dtype == vs.dtype == dtype
    kd = k.double() * ks.double()[..., None]
    vd = v.double() * vs.double()[..., None]
    if dtype != F32:  # the case is not moot: the dequantized cache is not in the scales' dtype
        assert not torch.equal(kd.to(dtype).double(), kd)
    torch.testing.assert_close(pa.reference_kv8(q, k, v, ks, vs, bt, sl, scale),
                               pa._reference(q.double(), kd, vd, bt, sl, scale))
    unscaled = pa.reference(q.float(), k.float(), v.float(), bt, sl, scale)
    assert not torch.equal(pa.reference_kv8(q, k, v, ks, vs, bt, sl, scale), unscaled)  # scales matter


# --- every impl against the reference ---------------------------------------------------------

CASES = [  # (Hq, Hkv, D, block_size, dtype, seq_lens): GQA 1/4/8 and MQA, ragged incl. 1
    (4, 4, 64, 16, F32, [1, 17, 40]),
    (8, 2, 128, 32, F16, [33, 64, 5]),
    (16, 2, 64, 16, F32, [100, 1]),
    (8, 1, 128, 16, F16, [70, 16, 3, 1]),
    (8, 2, 64, 32, BF16, [45, 1, 96]),
    (8, 2, 64, 16, F16, [300, 1, 129]),  # > 128 tokens: the split-KV impls split (3 splits)
    (4, 1, 128, 32, F32, [257, 40]),
]


class SplitSpy:
    """Records each Triton attention launch's split count (its grid's third axis). A table of
    128 tokens or fewer gives every split-KV impl one split, the one-pass kernel: a test meant
    for the split path and its merge asserts, through this, that it got there."""

    def __init__(self, monkeypatch):
        import kernels.attention.triton_paged as tp
        self.kernel, self.splits = tp._paged_attn_kernel, []
        monkeypatch.setattr(tp, "_paged_attn_kernel", self)

    def __getitem__(self, grid):
        self.splits.append(grid[2])
        return self.kernel[grid]

    def __getattr__(self, name):  # the launcher reads the kernel's attributes (its fixed config)
        return getattr(self.kernel, name)


def case_inputs(op_name, Hq, Hkv, D, BS, dtype, lens, seed=0):
    shape = Shape(B=len(lens), Hq=Hq, Hkv=Hkv, D=D, context=max(lens) + 5, block_size=BS)
    return build_inputs(shape, dtype, "cpu", seed, seq_lens=lens,
                        kv8=op_name.endswith("kv8"))


@pytest.mark.parametrize("op_name", OP_NAMES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"Hq{c[0]}-Hkv{c[1]}-D{c[2]}-BS{c[3]}-"
                         f"{str(c[4])[6:]}")
def test_impls_match_reference(op_name, case, monkeypatch):
    op = OPS[op_name]
    args = case_inputs(op_name, *case)
    ref = op.reference(*args)
    spy = SplitSpy(monkeypatch) if HAS_TRITON else None
    ran = []
    for name, impl, dev in impls_here(op_name, case[4]):
        out = run(impl, args, dev)
        err = rel_err(out, ref)
        assert err <= op.tol(case[4]), f"{name}: rel err {err:.3g}"
        ran.append(name)
    assert {"gather_sdpa", "torch_chunked"} <= set(ran)
    if "triton_splitkv" in ran and max(case[5]) > 128:
        assert max(spy.splits) > 1


@pytest.mark.parametrize("op_name", OP_NAMES)
@pytest.mark.parametrize("cpu_flash", [True, False])
def test_torch_chunked_many_chunks(op_name, cpu_flash, monkeypatch):
    """Small chunks: sequences drop out at different chunks, ends land mid-chunk, LSE merges."""
    monkeypatch.setattr(pt, "CHUNK_TOKENS", 32)
    monkeypatch.setattr(pt, "CPU_FLASH", cpu_flash and pt.CPU_FLASH)
    op = OPS[op_name]
    impl = op.impls["torch_chunked"]
    for dtype in (F32, BF16):
        args = case_inputs(op_name, 8, 2, 64, 16, dtype, [200, 1, 32, 129, 64, 95])
        out = run(impl, args, "cpu")
        err = rel_err(out, op.reference(*args))
        assert err <= op.tol(dtype), f"{dtype}: {err:.3g}"
        assert_garbage_ignored("torch_chunked", impl, args, op_name.endswith("kv8"), "cpu", out)


@pytest.mark.parametrize("op_name", OP_NAMES)
@pytest.mark.parametrize("impl_name", ["triton_splitkv", "triton_splitkv_fused"])
def test_triton_split_kv_many_splits(op_name, impl_name):
    """Split-KV with more splits than a short sequence fills: empty splits weigh zero."""
    op = OPS[op_name]
    if not HAS_TRITON:
        pytest.skip("no Triton")
    args = case_inputs(op_name, 4, 2, 64, 16, F32, [1100, 3])
    out = run(op.impls[impl_name], args, DEV)
    assert rel_err(out, op.reference(*args)) <= op.tol(F32)
    bad = perturb(args, op_name.endswith("kv8"), float("nan"))
    assert torch.equal(run(op.impls[impl_name], bad, DEV), out)


def test_fused_merge_leaves_its_counters_zero():
    """The fused split-KV's last program of each (sequence, KV head) merges and zeroes its
    counter: the counters read zero after a launch, and launch after launch gives the same
    output; a counter that never reaches the split count leaves its heads unmerged."""
    if not HAS_TRITON:
        pytest.skip("no triton")
    from kernels.triton_split import scratch
    op = OPS["paged_attention"]
    args = case_inputs("paged_attention", 8, 2, 64, 16, F32, [600, 77, 1])
    locks = scratch(torch.device(DEV), 6, torch.int32)
    first = run(op.impls["triton_splitkv_fused"], args, DEV)
    assert rel_err(first, op.reference(*args)) <= op.tol(F32)
    assert scratch(torch.device(DEV), 6, torch.int32).data_ptr() == locks.data_ptr()
    assert not locks.any()
    assert torch.equal(run(op.impls["triton_splitkv_fused"], args, DEV), first)
    locks[1] = 10**6  # (sequence 0, KV head 1): no program of this launch finds itself last
    stuck = run(op.impls["triton_splitkv_fused"], args, DEV)
    assert int(locks[1]) > 10**6
    locks[:6] = 0
    assert torch.isnan(stuck[0, 4:]).all() and torch.equal(stuck[0, :4], first[0, :4])


def test_merge_meta_tiles():
    """The reduction's programs merge REDUCE_OUTPUTS (query head, head dim) outputs each; the
    loads of both merges stay within MERGE_FLOATS whatever G, D and the split count."""
    if not HAS_TRITON:
        pytest.skip("no triton")
    import kernels.attention.triton_paged as tp
    for G, D, S in ((1, 64, 2), (4, 128, 32), (8, 128, 64), (5, 128, 3), (32, 256, 64)):
        m = tp.merge_meta(G, D, S)
        assert m["G2"] >= G and m["S_PAD"] >= S and m["S_PAD"] % m["S_CHUNK"] == 0
        assert m["G2"] * m["BLOCK_D"] == min(tp.REDUCE_OUTPUTS, m["G2"] * D) and D % m["BLOCK_D"] == 0
        assert m["S_CHUNK"] * m["G2"] * D <= max(tp.MERGE_FLOATS, m["G2"] * D)
        assert m["REDUCE_S_CHUNK"] * m["G2"] * m["BLOCK_D"] <= tp.MERGE_FLOATS


def test_auto_split_policy():
    if not HAS_TRITON:
        pytest.skip("no triton")
    from kernels.attention.triton_paged import auto_splits
    h100 = 132  # SMs of an H100 SXM
    assert auto_splits(64, 8, 4096, h100) == 1  # enough (sequence, head) programs
    assert auto_splits(8, 8, 512, h100) == 1  # short context: nothing to split
    assert auto_splits(1, 8, 32768, h100) > 8  # one long sequence: split it
    assert auto_splits(1, 8, 32768, None) == 1  # no GPU to fill


def test_c_kernel_split_policy():
    """The C kernel's token splits: no split under 64 tokens; where the tokens allow, every thread
    has work and the tasks spread evenly over the threads; none at 4 sequences a thread."""
    from kernels.attention.simd import splits_for
    for threads in (1, 2, 3, 8, 16):
        for B in (1, 2, 3, 5, 8, 64):
            for tokens in (16, 64, 128, 512, 1024, 4096, 32768):
                S, case = splits_for(B, tokens, threads), (B, tokens, threads)
                assert S >= 1, case
                assert S == 1 or tokens // S >= 64, case
                if B >= 4 * threads:
                    assert S == 1, case
                elif tokens >= 64 * threads:  # room for a split a thread
                    assert B * S >= threads, case
                    assert (B * S) % threads == 0 or B * S >= 4 * threads, case


def test_configs_that_outgrow_shared_memory_are_pruned():
    """num_stages - 1 K/V buffers; the prune drops what overflows a block (fp32 at BLOCK_N = 128
    with two or three buffers: 256 or 384 KiB of K and V; INT8 KV for fp32 q at 128 with three)
    and fp32's 128-token tiles (64 with INT8 KV), which spill on sm_90, and keeps every 16-bit
    config, and every INT8 one for 16-bit q."""
    if not HAS_TRITON:
        pytest.skip("no triton")
    import kernels.attention.triton_paged as tp
    from kernels.common import SM90_SMEM_BYTES
    assert [tp.kv_buffers(ns) for ns in (1, 2, 3, 4)] == [1, 1, 2, 3]

    def kept(q_dtype, kv_dtype):
        nargs = {"q_ptr": torch.empty(1, dtype=q_dtype), "k_ptr": torch.empty(1, dtype=kv_dtype)}
        return tp._prune(tp._CONFIGS, nargs, D=128, G_PAD=16)
    assert kept(BF16, BF16) == kept(F16, torch.int8) == kept(BF16, torch.int8) == tp._CONFIGS
    for kv, most in ((F32, 64), (torch.int8, 32)):
        assert [c for c in tp._CONFIGS if c not in kept(F32, kv)] == \
            [c for c in tp._CONFIGS if c.kwargs["BLOCK_N"] > most]
    bn128 = {c.num_stages: c for c in tp._CONFIGS if c.kwargs["BLOCK_N"] == 128}
    assert tp.kv_smem(bn128[2], 128, 16, 4, 4) <= SM90_SMEM_BYTES
    assert all(tp.kv_smem(bn128[ns], 128, 16, 4, 4) > SM90_SMEM_BYTES for ns in (3, 4))
    # INT8 K and V dequantized for fp32's dot are staged again in fp32: three 128-token buffers
    # (235 KiB by an sm_90 compile) do not fit, two do
    assert tp.kv_smem(bn128[3], 128, 16, 4, 1) <= SM90_SMEM_BYTES < tp.kv_smem(bn128[4], 128, 16, 4, 1)
    assert tp.kv_smem(bn128[4], 128, 16, 2, 1) < tp.kv_smem(bn128[4], 128, 16, 4, 1) - 2 * 128 * 128 * 4


# --- garbage that must not be read ------------------------------------------------------------

def unused_masks(args, kv8):
    """(table entries past each sequence, blocks no sequence uses, used blocks' slots past the end)."""
    k, bt, sl = args[1], args[-3], args[-2]
    NB, BS = k.shape[:2]
    need = (sl.long() + BS - 1) // BS
    dead_entries = torch.arange(bt.shape[1])[None, :] >= need[:, None]
    live = torch.zeros(NB, BS, dtype=torch.bool)
    for b in range(bt.shape[0]):
        n = int(sl[b])
        t = torch.arange(n)
        live[bt[b, t // BS].long(), t % BS] = True
    used_block = torch.zeros(NB, dtype=torch.bool)
    used_block[bt[~dead_entries].long()] = True
    tail = used_block[:, None] & ~live
    return dead_entries, ~used_block, tail


def table_garbage(n, NB, g):
    """n ids for unused table entries: out of range both ways and far out, and every third one in
    range (a free block, NaN-filled by `perturb`, or another sequence's block)."""
    bad = torch.tensor([-1, NB, 2**31 - 1, -2**31, NB + 1, -NB], dtype=torch.int32)
    i = torch.arange(n)
    some = torch.randint(0, NB, (n,), generator=g, dtype=torch.int32)
    return torch.where(i % 3 == 2, some, bad[(i - i // 3) % len(bad)])


def perturb(args, kv8, value, seed=1):
    """Garbage everywhere nothing may be read: `value` (NaN, +-inf or finite) in every unused
    block and every unused slot of a used block, in K and V or, for INT8 KV, in their scales
    (the int8 caches get random bytes there); bad block ids in every unused table entry."""
    dead_entries, free_blocks, tail_slots = unused_masks(args, kv8)
    spots = free_blocks[:, None] | tail_slots  # [NB, BS]
    args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    g = torch.Generator().manual_seed(seed)
    for t in args[1:5] if kv8 else args[1:3]:  # k, v (and their scales)
        if t.is_floating_point():
            t[spots] = value
        else:
            t[spots] = torch.randint(-128, 128, t[spots].shape, generator=g, dtype=t.dtype)
    bt = args[-3]
    bt[dead_entries] = table_garbage(int(dead_entries.sum()), args[1].shape[0], g)
    return tuple(args)


GARBAGE_VALUES = (float("nan"), float("inf"), float("-inf"), -7.5, 6e4)  # 6e4: finite in fp16


def assert_garbage_ignored(name, impl, args, kv8, dev, base):
    for i, value in enumerate(GARBAGE_VALUES):
        out = run(impl, perturb(args, kv8, value, seed=i), dev)
        assert torch.equal(out, base), f"{name}: output changed with {value} where nothing is read"


@pytest.mark.parametrize("op_name", OP_NAMES)
@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=lambda d: str(d)[6:])
def test_unused_entries_blocks_and_slots_do_not_change_result(op_name, dtype, monkeypatch):
    """Every impl, garbage in every unused slot, block and table entry at once: the output is
    bit-identical to the clean one, finite, and matches the reference."""
    kv8 = op_name.endswith("kv8")
    op = OPS[op_name]
    args = case_inputs(op_name, 8, 2, 64, 16, dtype, [1, 37, 200], seed=5)
    assert all(m.any() for m in unused_masks(args, kv8))  # there is garbage of each kind
    ref = op.reference(*args)
    spy = SplitSpy(monkeypatch) if HAS_TRITON else None
    ran = []
    for name, impl, dev in impls_here(op_name, dtype):
        base = run(impl, args, dev)
        assert torch.isfinite(base).all() and rel_err(base, ref) <= op.tol(dtype), name
        assert_garbage_ignored(name, impl, args, kv8, dev, base)
        ran.append(name)
    assert {"gather_sdpa", "torch_chunked", "simd_c"} <= set(ran)
    if HAS_TRITON and dtype != BF16:
        assert {"triton_onepass", "triton_splitkv", "triton_splitkv_fused", "triton"} <= set(ran)
        assert max(spy.splits) > 1  # the split impls merged partials, garbage around them


@pytest.mark.parametrize("op_name", ["paged_attention", "paged_attention_kv8"])
def test_harness_inputs_fail_a_kernel_that_reads_v_past_the_sequence(op_name):
    """The harness's own inputs hold NaN in unused V slots (INT8: NaN scales), so a kernel that
    reads whole blocks and weights the slots past a sequence by zero fails the check, as the
    contract (unused slots may hold NaN) says it must; unmasked K reads fail on K's GARBAGE."""
    kv8 = op_name.endswith("kv8")
    op = OPS[op_name]
    args = op.make_inputs(Shape(B=2, Hq=4, Hkv=2, D=32, context=21, block_size=8), F32, "cpu", 0)
    q, k, v = args[0], args[1], args[2]
    k_scale, v_scale = (args[3], args[4]) if kv8 else (None, None)
    table, lens, scale = args[-3], args[-2], args[-1]
    if kv8:
        k = k.float() * k_scale[..., None].float()
        v = v.float() * v_scale[..., None].float()
    out = torch.empty_like(q)
    G = q.shape[1] // k.shape[2]
    for b in range(q.shape[0]):  # whole blocks, slots past the sequence masked to weight 0
        n = -(-int(lens[b]) // k.shape[1])
        kb = k[table[b, :n].long()].flatten(0, 1).repeat_interleave(G, dim=1)  # [n*BS, Hq, D]
        vb = v[table[b, :n].long()].flatten(0, 1).repeat_interleave(G, dim=1)
        s = torch.einsum("hd,thd->ht", q[b], kb) * scale
        s[:, int(lens[b]):] = float("-inf")
        out[b] = torch.einsum("ht,thd->hd", torch.softmax(s, dim=-1), vb)
    assert rel_err(out, op.reference(*args)) == math.inf


def test_inputs_are_scattered_and_deterministic():
    shape = Shape(B=4, Hq=8, Hkv=2, D=64, context=300)
    q, k, v, bt, sl, scale = build_inputs(shape, F32, "cpu", 0)
    q2, k2, v2, bt2, sl2, _ = build_inputs(shape, F32, "cpu", 1)
    assert sl.tolist() == sl2.tolist() == shape.seq_lens()  # lengths are the shape's, not the seed's
    assert not torch.equal(bt, bt2) and not torch.equal(k, k2)
    assert sl.tolist()[0] == 300 and len(set(sl.tolist())) > 1 and min(sl.tolist()) >= 150
    dead, free, _ = unused_masks((q, k, v, bt, sl, scale), False)
    used = bt[~dead]
    assert used.unique().numel() == used.numel()  # no block is shared or read twice
    assert k.shape[0] >= 2 * used.numel() and int(free.sum()) >= used.numel()
    steps = torch.cat([(bt[b, 1:int(n)] - bt[b, :int(n) - 1]) for b, n in
                       enumerate(((sl + 15) // 16).tolist())])
    assert (steps == 1).float().mean() < 0.05  # a sequence's blocks are not contiguous
    assert q.abs().sum() > 0 and scale == pytest.approx(1 / 8)
    assert ((bt[dead] < 0) | (bt[dead] >= k.shape[0])).any()  # garbage includes out-of-range


def test_make_inputs_matches_shape_policy():
    shape = Shape(B=3, Hq=4, Hkv=1, D=32, context=50, block_size=32, ragged=0)
    for op_name in OP_NAMES:
        args = OPS[op_name].make_inputs(shape, F16, "cpu", 0)
        assert args[-2].tolist() == [50, 50, 50]
        assert args[0].shape == (3, 4, 32) and args[0].dtype == F16
        assert args[-3].shape == (3, 2) and args[-3].dtype == torch.int32


# --- bytes ------------------------------------------------------------------------------------

def test_bytes_by_hand():
    s = Shape(B=2, Hq=4, Hkv=2, D=64, context=40, block_size=16, ragged=0)
    # q + out: 2*(2*4*64*2); K and V: 80 tokens * 2 * 2 heads * 64 * 2 B; 2*3 table entries; 2 lens
    assert bytes_moved(s, F16) == 2048 + 40960 + 24 + 8
    assert OPS["paged_attention"].bytes_moved(s, F32) == 4096 + 81920 + 24 + 8
    # INT8 KV: 1 byte per element plus a 2-byte scale per (token, head) for K and for V
    assert OPS["paged_attention_kv8"].bytes_moved(s, BF16) == 2048 + 20480 + 640 + 24 + 8


def test_bytes_follow_ragged_lengths():
    s = Shape(B=5, Hq=32, Hkv=8, D=128, context=4096)
    lens = s.seq_lens()
    assert lens[0] == 4096 and all(2048 <= n <= 4096 for n in lens)
    blocks = sum(-(-n // 16) for n in lens)
    expect = 2 * 5 * 32 * 128 * 2 + sum(lens) * 2 * 8 * 128 * 2 + 4 * blocks + 4 * 5
    assert bytes_moved(s, BF16) == expect
    # GQA: query heads sharing a KV head do not multiply the KV bytes
    s70 = Shape(B=5, Hq=64, Hkv=8, D=128, context=4096)
    assert bytes_moved(s70, BF16) - bytes_moved(s, BF16) == 2 * 5 * 32 * 128 * 2


def test_kv8_bytes_follow_ragged_lengths_and_scale_dtype():
    """INT8 KV at ragged lengths in fp32: 1 byte a K/V element, and a K and a V scale a (token,
    KV head) in q's dtype, which is what the inputs hold."""
    s = Shape(B=3, Hq=8, Hkv=2, D=64, context=100, block_size=16)
    lens = s.seq_lens()
    assert len(set(lens)) > 1  # ragged
    blocks = sum(-(-n // 16) for n in lens)
    expect = 2 * 3 * 8 * 64 * 4 + sum(lens) * (2 * 2 * 64 * 1 + 2 * 2 * 4) + 4 * blocks + 4 * 3
    assert OPS["paged_attention_kv8"].bytes_moved(s, F32) == expect
    args = OPS["paged_attention_kv8"].make_inputs(s, F32, "cpu", 0)
    k, k_scale, v_scale = args[1], args[3], args[4]
    assert k.dtype == torch.int8 and k_scale.dtype == v_scale.dtype == F32


# --- bad shapes and inputs --------------------------------------------------------------------

@pytest.mark.parametrize("kw, msg", [
    (dict(Hq=6, Hkv=4), "multiple of Hkv"),
    (dict(block_size=24), "block_size"),
    (dict(D=96), "head dim"),
    (dict(context=0), "context"),
    (dict(ragged=2), "ragged"),
    (dict(B=10**6, context=10**6), "B="),
])
def test_bad_shapes(kw, msg):
    base = dict(B=2, Hq=8, Hkv=2, D=64, context=64)
    with pytest.raises(ValueError, match=msg):
        Shape(**{**base, **kw})


def bad_inputs():
    ok = case_inputs("paged_attention", 8, 2, 64, 16, F32, [20, 33])
    q, k, v, bt, sl, scale = ok
    yield "multiple of Hkv", (q[:, :5], k, v, bt, sl, scale)
    yield ">= 1", (q, k, v, bt, torch.tensor([0, 3], dtype=torch.int32), scale)
    yield "past the block table", (q, k, v, bt, sl + bt.shape[1] * 16, scale)
    yield "does not match", (q, k.half(), v.half(), bt, sl, scale)
    yield "int32", (q, k, v, bt.long(), sl, scale)
    yield "out of range", (q, k, v, torch.where(bt == bt[0, 0], -1, bt), sl, scale)


@pytest.mark.parametrize("msg, args", list(bad_inputs()), ids=lambda x: x if isinstance(x, str) else "")
def test_bad_inputs_raise_clear_errors(msg, args):
    op = OPS["paged_attention"]
    with pytest.raises(ValueError, match=msg):
        op.reference(*args)
    for name, impl, dev in impls_here("paged_attention", F32):
        with pytest.raises(ValueError, match=msg):
            impl(*to(args, dev))


def test_bad_kv8_scales():
    q, k, v, ks, vs, bt, sl, scale = case_inputs("paged_attention_kv8", 4, 2, 64, 16, F16, [9])
    for name, impl, dev in impls_here("paged_attention_kv8", F16):
        with pytest.raises(ValueError, match="k_scale dtype"):
            impl(*to((q, k, v, ks.float(), vs, bt, sl, scale), dev))
        with pytest.raises(ValueError, match="v_scale must be"):
            impl(*to((q, k, v, ks, vs[:, :8], bt, sl, scale), dev))
        with pytest.raises(ValueError, match="INT8 KV"):
            impl(*to((q, k.half(), v.half(), ks, vs, bt, sl, scale), dev))


@pytest.mark.parametrize("op_name", OP_NAMES)
@pytest.mark.parametrize("which", ["block_table", "seq_lens", "caches"])
def test_strided_table_or_lengths_are_read_right_or_refused(op_name, which):
    """A column-major block table, seq_lens taken every other element of a longer tensor, or K
    and V caches stored slot-major: each impl gives the reference's answer or a ValueError, never
    a misread table or another error (the Triton kernels index the table and lengths as
    contiguous)."""
    op = OPS[op_name]
    args = list(case_inputs(op_name, 4, 2, 32, 8, F32, [20, 33, 7]))
    i = 5 if op_name.endswith("kv8") else 3
    if which == "block_table":
        args[i] = args[i].t().contiguous().t()
        assert args[i].stride(1) != 1
    elif which == "seq_lens":
        args[i + 1] = torch.stack([args[i + 1], torch.zeros_like(args[i + 1])], 1)[:, 0]
        assert args[i + 1].stride(0) == 2
    else:
        for j in (1, 2):
            args[j] = args[j].transpose(0, 1).contiguous().transpose(0, 1)
            assert not args[j].is_contiguous()
    ref = op.reference(*args)
    refused = []
    for name, impl, dev in impls_here(op_name, F32):
        try:
            out = run(impl, tuple(args), dev)
        except ValueError:
            refused.append(name)
            continue
        assert rel_err(out, ref) <= op.tol(F32), name
    if HAS_TRITON and which != "caches":
        assert {n for n in OPS[op_name].impls if n.startswith("triton")} <= set(refused)


def test_the_c_kernel_refuses_a_cache_on_another_device():
    """q on the CPU and the KV cache elsewhere: the C would read the cache's device address as
    host memory."""
    q, k, v, bt, sl, scale = case_inputs("paged_attention", 4, 2, 32, 8, F32, [9])
    impl = OPS["paged_attention"].impls["simd_c"]
    with pytest.raises(ValueError, match="on the CPU"):
        impl(q, k.to("meta"), v.to("meta"), bt, sl, scale)


@pytest.mark.parametrize("D", [48, 80])
def test_triton_attention_refuses_a_head_dim_not_a_power_of_two(D):
    """The CLI's shapes hold D to HEAD_DIMS; a direct call with D = 80 gets the reason, not a
    compiler error."""
    if not HAS_TRITON:
        pytest.skip("no Triton")
    B, Hq, Hkv, BS = 1, 2, 1, 8
    q = torch.randn(B, Hq, D)
    k, v = torch.randn(2, BS, Hkv, D), torch.randn(2, BS, Hkv, D)
    bt = torch.tensor([[0, 1]], dtype=torch.int32)
    sl = torch.tensor([12], dtype=torch.int32)
    for name, impl in OPS["paged_attention"].impls.items():
        if impl.kind == "triton":
            with pytest.raises(NotImplementedError, match="power of two"):
                impl(q.to(DEV), k.to(DEV), v.to(DEV), bt.to(DEV), sl.to(DEV), D ** -0.5)


# --- GPU --------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("op_name", OP_NAMES)
@pytest.mark.parametrize("shape", [
    Shape(B=3, Hq=32, Hkv=8, D=128, context=1000),
    Shape(B=1, Hq=64, Hkv=8, D=128, context=5000, block_size=32),
    Shape(B=4, Hq=8, Hkv=1, D=64, context=300),
], ids=str)
def test_cuda_bf16_and_fp16(op_name, shape):
    op = OPS[op_name]
    for dtype in (BF16, F16):
        args = op.make_inputs(shape, dtype, "cuda", 0)
        ref = op.reference(*args)
        for name, impl in op.impls.items():
            # the peers (FlashInfer: test_peers_flashinfer.py) are tested where they can run
            if "cuda" not in impl.backends or impl.fn.__module__.endswith(".peers"):
                continue
            out = torch.full(args[0].shape, float("nan"), dtype=dtype, device="cuda")
            impl(*args, out=out)
            err = rel_err(out, ref)
            assert err <= op.tol(dtype), f"{name} {dtype}: {err:.3g}"


@pytest.mark.parametrize("op_name", OP_NAMES)
def test_simd_c_writes_out_in_its_own_dtype_and_layout(op_name):
    """The C kernel writes its fp32 result in out's dtype (bf16 and fp16 rounded to nearest
    even, as torch rounds), straight into a contiguous out and through a copy into a strided
    one; called without out, in q's dtype."""
    import kernels.attention.simd as attention_simd
    try:
        attention_simd.library()
    except NotImplementedError as e:
        helpers.skip_if_machine_lacks(e)
    impl = OPS[op_name].impls["simd_c"]
    args = case_inputs(op_name, 8, 2, 64, 16, F32, [40, 7], seed=4)
    r32 = run(impl, args, "cpu")
    assert rel_err(r32, OPS[op_name].reference(*args)) <= OPS[op_name].tol(F32)
    for odt in (BF16, F16):
        out = torch.full((2, 8, 64), float("nan"), dtype=odt)
        assert impl(*args, out=out) is out
        assert torch.equal(out, r32.to(odt)), odt
        strided = torch.full((64, 8, 2), float("nan"), dtype=odt).permute(2, 1, 0)
        assert not strided.is_contiguous()
        assert impl(*args, out=strided) is strided
        assert torch.equal(strided, out), odt
    for qdt in (BF16, F16):
        res = impl(*case_inputs(op_name, 8, 2, 64, 16, qdt, [40, 7], seed=4))
        assert res.dtype == qdt and res.shape == (2, 8, 64)


@pytest.mark.parametrize("op_name", OP_NAMES)
@pytest.mark.parametrize("splits", [1, 3])
def test_simd_c_splits_and_odd_group(op_name, splits, monkeypatch):
    """The C kernel: token splits (some empty for short sequences) merged exactly; G = 6 pads
    the 4-head tiles; block size 64; odd block tails."""
    import kernels.attention.simd as attention_simd
    op = OPS[op_name]
    try:
        attention_simd.library()
    except NotImplementedError as e:
        helpers.skip_if_machine_lacks(e)
    monkeypatch.setattr(attention_simd, "splits_for", lambda B, tokens, threads: splits)
    for dtype in (F32, BF16, F16):
        args = case_inputs(op_name, 12, 2, 64, 64, dtype, [300, 1, 65, 127])
        out = run(op.impls["simd_c"], args, "cpu")
        err = rel_err(out, op.reference(*args))
        assert err <= op.tol(dtype), f"{dtype}: {err:.3g}"
        assert_garbage_ignored("simd_c", op.impls["simd_c"], args, op_name.endswith("kv8"), "cpu",
                               out)


@pytest.mark.parametrize("op_name", OP_NAMES)
@pytest.mark.parametrize("impl_name", ["triton_onepass", "triton_splitkv", "triton_splitkv_fused"])
@pytest.mark.parametrize("dtype", [F32, F16], ids=lambda d: str(d)[6:])
def test_triton_every_tile_interpreted(op_name, impl_name, dtype, monkeypatch):
    """Each K/V tile the tuner may pick (the prune's configs for these dtypes; the interpreter
    has no warps or stages, so one run a BLOCK_N) against the reference, with garbage where
    nothing may be read: the tuner checks only its winner, and the other tests run the first
    config. Sequences end mid-block and mid-tile, one holds a single token."""
    if not HAS_TRITON:
        pytest.skip("no triton")
    import kernels.attention.triton_paged as tp
    from tests.helpers import FixedConfig
    kv8 = op_name.endswith("kv8")
    op = OPS[op_name]
    args = case_inputs(op_name, 8, 2, 64, 16, dtype, [300, 77, 1])
    ref = op.reference(*args)
    plan = tp.launch_plan(3, 8, 2, 64, 16, args[3 if not kv8 else 5].shape[1], kv8,
                          dtype == F32, 1, False)
    configs = tp.configs_for(dtype, torch.int8 if kv8 else dtype, 64, plan["const"]["G_PAD"])
    tiles = {c.kwargs["BLOCK_N"]: c for c in configs}
    # 32 and 64 at least (the H200's tuner picked 64); fp32 q with INT8 KV keeps 32 alone
    assert len(tiles) >= (1 if kv8 and dtype == F32 else 2), sorted(tiles)
    kernel = tp._paged_attn_kernel
    for bn, cfg in sorted(tiles.items()):
        monkeypatch.setattr(tp, "_paged_attn_kernel", FixedConfig(kernel, cfg))
        out = run(op.impls[impl_name], args, DEV)
        err = rel_err(out, ref)
        assert err <= op.tol(dtype), f"BLOCK_N={bn}: rel err {err:.3g}"
        bad = run(op.impls[impl_name], perturb(args, kv8, float("nan")), DEV)
        assert torch.equal(bad, out), f"BLOCK_N={bn}: NaN where nothing is read changed the output"
    monkeypatch.setattr(tp, "_paged_attn_kernel", kernel)


def boost_tail_scores(args, kv8, first, factor):
    """The inputs with sequence 0's K from token `first` on times `factor` (INT8 KV: its
    k_scale), so the scores of the last split dwarf the first split's."""
    args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    BS, bt, n = args[1].shape[1], args[-3], int(args[-2][0])
    t = torch.arange(first, n)
    blocks, slots = bt[0, t // BS].long(), t % BS
    target = args[3] if kv8 else args[1]
    target[blocks, slots] *= factor
    return tuple(args)


@pytest.mark.parametrize("op_name", OP_NAMES)
def test_split_merges_take_the_largest_max(op_name, monkeypatch):
    """Splits whose score maxima lie far apart (> 128 in log2 units): each split's partial is
    weighted by exp(m_split - max over the splits), which a merge rescaled by any other split's
    max (the first one's, say) overflows to inf and NaN. On ordinary inputs the maxima sit
    within a few units of each other, where every such merge gives the same answer, so only
    this test can fail it. Sequence 0 (300 tokens) is split 3 ways by the C kernel (112 tokens
    each) and 2 by the Triton split-KV impls (256 + 44); its last 44 tokens score ~60x higher."""
    import kernels.attention.simd as attention_simd
    kv8 = op_name.endswith("kv8")
    op = OPS[op_name]
    args = boost_tail_scores(case_inputs(op_name, 8, 2, 64, 16, F32, [300, 77, 1]), kv8, 256, 60.0)
    q, scale = args[0].double(), args[-1]
    k = args[1].double() * (args[3].double()[..., None] if kv8 else 1)
    BS, bt = k.shape[1], args[-3]
    t = torch.arange(300)
    kb = k[bt[0, t // BS].long(), t % BS].repeat_interleave(4, dim=1)  # [t, Hq, D]
    s = torch.einsum("hd,thd->ht", q[0], kb) * scale * math.log2(math.e)
    assert (s[:, 256:].amax(1) - s[:, :112].amax(1)).min() > 128  # exp2 of the gap overflows fp32
    ref = op.reference(*args)
    monkeypatch.setattr(attention_simd, "splits_for", lambda B, tokens, threads: 3)
    spy = SplitSpy(monkeypatch) if HAS_TRITON else None
    names = ["simd_c"] + ([n for n in ("triton_splitkv", "triton_splitkv_fused") if n in op.impls]
                          if HAS_TRITON else [])
    for name in names:
        dev = "cpu" if name == "simd_c" else DEV
        err = rel_err(run(op.impls[name], args, dev), ref)
        assert err <= op.tol(F32), f"{name}: rel err {err:.3g}"
    if HAS_TRITON:
        assert spy.splits == [2, 2]


@pytest.mark.parametrize("op_name", OP_NAMES)
def test_result_without_out_is_the_callers_own(op_name):
    """Called without out=, as any user may call an impl, the result is a tensor of its own: a
    second call (other inputs) leaves the first result as it was. A kernel that hands back its
    reused fp32 scratch buffer passes every out= check and the reference, and still gives a
    caller an answer that the next call overwrites."""
    op = OPS[op_name]
    first_args = case_inputs(op_name, 8, 2, 64, 16, F32, [40, 7], seed=1)
    second_args = case_inputs(op_name, 8, 2, 64, 16, F32, [40, 7], seed=2)
    for name, impl, dev in impls_here(op_name, F32):
        first = impl(*to(first_args, dev))
        kept = first.clone()
        impl(*to(second_args, dev))
        assert torch.equal(first, kept), f"{name}: a later call changed an earlier result"
        assert rel_err(kept.cpu(), op.reference(*first_args)) <= op.tol(F32), name


def shift_scores(args, kv8, target):
    """The inputs with every live K row of KV head h of sequence b moved by the u that puts
    scale * q.u at `target` for each of its G query heads (the least-norm solution), so every
    score sits near `target` (INT8 KV: the moved cache quantized again)."""
    args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    q, bt, sl, scale = args[0], args[-3], args[-2], args[-1]
    k = args[1].float() * args[3].float()[..., None] if kv8 else args[1].float()
    BS, Hkv, G = k.shape[1], k.shape[2], q.shape[1] // k.shape[2]
    for b in range(q.shape[0]):
        t = torch.arange(int(sl[b]))
        blocks, slots = bt[b, t // BS].long(), t % BS
        for h in range(Hkv):
            Q = q[b, h * G:(h + 1) * G].double()
            u = torch.linalg.pinv(Q) @ torch.full((G,), target / scale, dtype=torch.float64)
            k[blocks, slots, h] += u.float()
    if kv8:
        args[1], args[3] = quantize_kv_int8(k, args[3].dtype)
    else:
        args[1] = k.to(args[1].dtype)
    return tuple(args)


# Triton's interpreter reduces tl.max with numpy's nanmax, which warns on an all-NaN row
@pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning")
@pytest.mark.parametrize("op_name", OP_NAMES)
def test_a_nan_in_a_live_key_reaches_the_output(op_name):
    """A NaN in a K row a sequence reads (INT8 KV: its k_scale) makes that KV head's query heads
    NaN for that sequence, as in the reference, and leaves every other row as it was: a kernel
    that drops a NaN score (a max that skips it, an exp clamp that turns it into ~0) hides the
    corrupt input behind a plausible answer."""
    kv8 = op_name.endswith("kv8")
    op = OPS[op_name]
    args = list(case_inputs(op_name, 8, 2, 64, 16, F32, [40, 7], seed=6))
    blk = int(args[-3][0, 0])  # sequence 0's first block: token 5, KV head 1
    if kv8:
        args[3] = args[3].clone()
        args[3][blk, 5, 1] = float("nan")
    else:
        args[1] = args[1].clone()
        args[1][blk, 5, 1, 3] = float("nan")
    ref = op.reference(*args)
    hit = torch.zeros(2, 8, dtype=torch.bool)
    hit[0, 4:] = True  # KV head 1 serves query heads 4-7
    assert torch.equal(ref.isnan().any(-1), hit)
    for name, impl, dev in impls_here(op_name, F32):
        out = run(impl, args, dev)
        assert torch.equal(out.isnan().any(-1), hit), name
        assert rel_err(out[~hit], ref[~hit]) <= op.tol(F32), name


# Triton's interpreter reduces tl.max with numpy's nanmax, which warns on an all-NaN row, and
# numpy warns on NaN - NaN
@pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("op_name", OP_NAMES)
def test_a_split_of_nan_keys_reaches_the_output(op_name, monkeypatch):
    """Every K row of one KV head NaN over the second of two token splits (INT8 KV: the
    k_scales): that split's scores are all NaN, and a merge that reads its running max as
    'nothing seen' (-inf) and skips it returns the first split's answer, finite and wrong."""
    import kernels.attention.simd as attention_simd
    monkeypatch.setattr(attention_simd, "splits_for", lambda B, tokens, threads: 2)
    kv8 = op_name.endswith("kv8")
    op = OPS[op_name]
    args = list(case_inputs(op_name, 8, 2, 64, 16, F32, [200, 7], seed=7))
    bt = args[-3]
    t = torch.arange(112, 200)  # the C kernel's second split: tokens 112-199
    blocks, slots = bt[0, t // 16].long(), t % 16
    if kv8:
        args[3] = args[3].clone()
        args[3][blocks, slots, 1] = float("nan")
    else:
        args[1] = args[1].clone()
        args[1][blocks, slots, 1] = float("nan")
    ref = op.reference(*args)
    hit = torch.zeros(2, 8, dtype=torch.bool)
    hit[0, 4:] = True
    assert torch.equal(ref.isnan().any(-1), hit)
    for name, impl, dev in impls_here(op_name, F32):
        out = run(impl, args, dev)
        assert torch.equal(out.isnan().any(-1), hit), name
        assert rel_err(out[~hit], ref[~hit]) <= op.tol(F32), name


@pytest.mark.parametrize("op_name", OP_NAMES)
def test_scores_far_below_zero(op_name):
    """Softmax is the same whatever constant the scores share, and an online softmax must start
    its running max at -inf: one that starts at 0 (or any finite value) takes exp(s - 0) of
    scores near -120, which underflow to 0 in fp32, and returns 0 / 0. On ordinary inputs
    (scores within a few units of 0) both starts agree, so only inputs like these can tell.
    fp32: the 16-bit impls of INT8 KV round the dequantized K to q's dtype, 2^-11 of a score
    of 120 (~0.06), past fp16's tolerance at such scores; the fp32 ones stay 7x inside theirs.
    Sequence 0's 150 tokens take both Triton split-KV impls through two splits."""
    kv8 = op_name.endswith("kv8")
    op = OPS[op_name]
    args = shift_scores(case_inputs(op_name, 8, 2, 64, 16, F32, [150, 7], seed=3), kv8, -120.0)
    q, scale = args[0].double(), args[-1]
    k = args[1].double() * (args[3].double()[..., None] if kv8 else 1)
    BS, bt = k.shape[1], args[-3]
    for b, n in enumerate(args[-2].tolist()):
        t = torch.arange(n)
        kb = k[bt[b, t // BS].long(), t % BS].repeat_interleave(4, dim=1)  # [t, Hq, D]
        s = torch.einsum("hd,thd->ht", q[b], kb) * scale
        assert s.max() < -100 and s.amax(1).min() - s.amin(1).max() > -30  # all far below 0
    ref = op.reference(*args)
    for name, impl, dev in impls_here(op_name, F32):
        err = rel_err(run(impl, args, dev), ref)
        assert err <= op.tol(F32), f"{name}: rel err {err:.3g}"
