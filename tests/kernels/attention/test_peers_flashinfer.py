"""FlashInfer as a peer of paged_attention: registered whether or not it is installed, skipped with
the reason when it cannot run, our block table converted to its CSR page table and checked.

FlashInfer's page-table semantics as its source (flashinfer-python 0.7.2.post1) states them,
restated here so the tests do not need FlashInfer: sequence b owns pages
`kv_indices[kv_indptr[b]:kv_indptr[b + 1]]` in order, `1 <= kv_last_page_len[b] <= page_size`,
and its length is `max(pages - 1, 0) * page_size + kv_last_page_len[b]` (flashinfer/page.py,
get_seq_lens); with the "NHD" layout token t is `cache[pages[t // page_size], t % page_size]`.
"""
import math
import subprocess
import sys
import types

import pytest
import torch

from kernels import OPS
from kernels.attention import PagedAttentionShape, build_inputs
from kernels.attention import peers
from tests import helpers

OP, OP8 = OPS["paged_attention"], OPS["paged_attention_kv8"]
BF16, F16, F32, I32 = torch.bfloat16, torch.float16, torch.float32, torch.int32
SMALL = PagedAttentionShape(B=3, Hq=8, Hkv=2, D=64, context=100)


def tokens_from_csr(indptr, indices, last, page_size):
    """Each sequence's [(page, slot), ...] as FlashInfer reads them from its CSR page table."""
    out = []
    for b in range(last.numel()):
        pages = indices[int(indptr[b]):int(indptr[b + 1])].tolist()
        n = max(len(pages) - 1, 0) * page_size + int(last[b])
        out.append([(pages[t // page_size], t % page_size) for t in range(n)])
    return out


def tokens_from_table(block_table, seq_lens, block_size):
    """Each sequence's [(block, slot), ...] as our layout defines them."""
    return [[(int(block_table[b, t // block_size]), t % block_size) for t in range(int(n))]
            for b, n in enumerate(seq_lens.tolist())]


# --- registration and the import contract -----------------------------------------------------

def test_registered_as_cuda_only_baselines():
    impl = OP.impls["flashinfer_decode"]
    assert impl.baseline and impl.backends == ("cuda",) and impl.kind == "compiled"
    assert impl.dtypes == (BF16, F16) and impl.prepare is not None and impl.out_arg
    kv8 = OP8.impls["flashinfer_decode"]
    assert kv8.baseline and kv8.backends == ("cuda",) and kv8.dtypes == OP8.dtypes


def test_without_flashinfer_a_call_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "flashinfer", None)  # `import flashinfer` fails, installed or not
    args = OP.make_inputs(SMALL, BF16, "cpu", 0)
    with pytest.raises(NotImplementedError) as e:
        OP.impls["flashinfer_decode"](*args)
    assert str(e.value) == "flashinfer is not installed (pip install 'decodewall[peers]')"


def test_a_flashinfer_missing_a_dependency_is_named(monkeypatch):
    real = __import__

    def fake_import(name, *a, **kw):
        if name == "flashinfer":
            raise ModuleNotFoundError("No module named 'tvm_ffi'", name="tvm_ffi")
        return real(name, *a, **kw)

    monkeypatch.delitem(sys.modules, "flashinfer", raising=False)
    monkeypatch.setattr("builtins.__import__", fake_import)
    with pytest.raises(NotImplementedError, match="^flashinfer cannot be imported: No module named 'tvm_ffi'$"):
        peers.import_flashinfer()


@pytest.mark.parametrize("installed", [False, True])
def test_int8_kv_is_always_skipped_with_the_reason(monkeypatch, installed):
    monkeypatch.setitem(sys.modules, "flashinfer", types.SimpleNamespace() if installed else None)
    for dtype in (BF16, F32):
        args = OP8.make_inputs(SMALL, dtype, "cpu", 0)
        with pytest.raises(NotImplementedError) as e:
            OP8.impls["flashinfer_decode"](*args)
        assert str(e.value) == peers.NO_INT8_KV and "no INT8 KV cache" in str(e.value)


def test_importing_kernels_does_not_import_flashinfer():
    r = subprocess.run([sys.executable, "-c", "import sys, kernels; print('flashinfer' in sys.modules, "
                        "'flashinfer_decode' in kernels.OPS['paged_attention'].impls)"],
                       capture_output=True, text=True, cwd=helpers.REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-500:]
    assert r.stdout.split() == ["False", "True"]


# --- the CSR page table -----------------------------------------------------------------------

def test_csr_page_table_by_hand():
    # seq 0: 33 tokens of 16 → pages 5, 2, 9 (1 token in the last); seq 1: exactly one full page;
    # seq 2: 1 token. Entries past each sequence are garbage (out of range, negative).
    table = torch.tensor([[5, 2, 9, -1], [7, 100, -3, 4], [0, 55, 55, -7]], dtype=I32)
    lens = torch.tensor([33, 16, 1], dtype=I32)
    indptr, indices, last = peers.csr_page_table(table, lens, 16)
    assert indptr.dtype == indices.dtype == last.dtype == I32
    assert indptr.tolist() == [0, 3, 4, 5]
    assert indices.tolist() == [5, 2, 9, 7, 0]
    assert last.tolist() == [1, 16, 1]


@pytest.mark.parametrize("shape,lens", [
    (PagedAttentionShape(B=5, Hq=8, Hkv=2, D=64, context=100), None),
    (PagedAttentionShape(B=4, Hq=4, Hkv=4, D=32, context=64, block_size=32), [64, 1, 33, 32]),
    (PagedAttentionShape(B=3, Hq=2, Hkv=1, D=32, context=129, block_size=8), [129, 8, 9]),
    (PagedAttentionShape(B=1, Hq=4, Hkv=1, D=32, context=16, block_size=16), None),
], ids=str)
def test_csr_rebuilds_every_sequence_and_nothing_past_it(shape, lens):
    """FlashInfer's reading of the CSR table visits exactly the (block, slot) pairs our layout
    defines, in order, on tables whose entries past each sequence are garbage."""
    q, k, v, table, seq_lens, scale = build_inputs(shape, BF16, "cpu", 7, seq_lens=lens)
    NB, BS = k.shape[:2]
    garbage = torch.tensor([[-1, NB, 2 * NB + 5]], dtype=I32).expand(shape.B, 3)
    table = torch.cat((table, garbage), dim=1)  # out-of-range entries past every sequence
    indptr, indices, last = peers.csr_page_table(table, seq_lens, BS)
    assert ((last >= 1) & (last <= BS)).all()
    assert ((indices >= 0) & (indices < NB)).all()
    assert tokens_from_csr(indptr, indices, last, BS) == tokens_from_table(table, seq_lens, BS)


def test_a_dropped_last_page_would_be_caught():
    table = torch.tensor([[3, 1, 2]], dtype=I32)
    lens = torch.tensor([33], dtype=I32)
    indptr, indices, last = peers.csr_page_table(table, lens, 16)
    bad = tokens_from_csr(torch.tensor([0, 2]), indices[:2], torch.tensor([16]), 16)
    assert bad != tokens_from_table(table, lens, 16)
    assert tokens_from_csr(indptr, indices, last, 16) == tokens_from_table(table, lens, 16)


# --- cases FlashInfer cannot take --------------------------------------------------------------

@pytest.fixture
def fake_flashinfer(monkeypatch):
    """A stand-in `flashinfer` on the CPU: its wrapper records plan() and run() computes decode
    attention from the CSR page table and NHD caches as FlashInfer defines them (module docstring)."""
    made = []

    class Wrapper:
        def __init__(self, workspace, kv_layout="NHD", backend="auto"):
            assert workspace.dtype == torch.uint8 and workspace.numel() >= 128 << 20
            self.layout, self.backend, self.plans = kv_layout, backend, []
            made.append(self)

        def plan(self, indptr, indices, last, Hq, Hkv, D, page_size, **kw):
            self.plans.append(dict(indptr=indptr, indices=indices, last=last, Hq=Hq, Hkv=Hkv, D=D,
                                   page_size=page_size, **kw))

        def run(self, q, paged_kv_cache, out=None):
            (p,) = self.plans
            k, v = paged_kv_cache
            assert self.layout == "NHD" and q.dtype == p["q_data_type"] and k.dtype == p["kv_data_type"]
            o = torch.empty(q.shape, dtype=torch.float32)
            group = p["Hq"] // p["Hkv"]
            for b, toks in enumerate(tokens_from_csr(p["indptr"], p["indices"], p["last"], p["page_size"])):
                pages, slots = torch.tensor([t[0] for t in toks]), torch.tensor([t[1] for t in toks])
                kb, vb = k[pages, slots].float(), v[pages, slots].float()  # [n, Hkv, D]
                for h in range(p["Hq"]):
                    s = kb[:, h // group] @ q[b, h].float() * p["sm_scale"]
                    o[b, h] = torch.softmax(s, 0) @ vb[:, h // group]
            return o.to(q.dtype) if out is None else out.copy_(o)

    fake = types.SimpleNamespace(BatchDecodeWithPagedKVCacheWrapper=Wrapper)
    monkeypatch.setitem(sys.modules, "flashinfer", fake)
    monkeypatch.setattr(peers, "_WRAPPERS", {})
    monkeypatch.setattr(peers, "_WORKSPACES", {})
    return made


def test_cpu_tensors_are_refused_with_the_reason(fake_flashinfer):
    with pytest.raises(NotImplementedError, match="FlashInfer runs on CUDA devices, not cpu"):
        OP.impls["flashinfer_decode"](*OP.make_inputs(SMALL, BF16, "cpu", 0))
    assert not fake_flashinfer


@pytest.mark.parametrize("shape,dtype,reason", [
    (SMALL, F32, "bfloat16 and float16, not torch.float32"),
    (PagedAttentionShape(B=2, Hq=10, Hkv=2, D=64, context=40), BF16,
     "1, 2, 3, 4, 6, 8, 16 query heads per KV head, not 5"),
], ids=str)
def test_cases_flashinfer_cannot_take_are_refused_with_the_reason(fake_flashinfer, shape, dtype, reason):
    with pytest.raises(NotImplementedError, match=reason):
        OP.impls["flashinfer_decode"](*OP.make_inputs(shape, dtype, "cpu", 0))


def test_bad_inputs_are_still_value_errors(fake_flashinfer):
    q, k, v, table, lens, scale = OP.make_inputs(SMALL, BF16, "cpu", 0)
    with pytest.raises(ValueError, match="past the block table"):
        OP.impls["flashinfer_decode"](q, k, v, table, lens + 1000, scale)


# --- the whole impl on the CPU, FlashInfer replaced by its semantics ---------------------------

@pytest.mark.parametrize("dtype", [BF16, F16])
@pytest.mark.parametrize("shape", [
    PagedAttentionShape(B=3, Hq=8, Hkv=2, D=64, context=100),
    PagedAttentionShape(B=2, Hq=4, Hkv=4, D=128, context=70, block_size=32),
    PagedAttentionShape(B=4, Hq=6, Hkv=1, D=64, context=40, block_size=8),
], ids=str)
def test_impl_wiring_matches_reference(monkeypatch, fake_flashinfer, shape, dtype):
    """prepare → CSR table → plan (NHD, our heads, dims, page size, dtypes and scale) → run into
    the harness's poisoned output, checked against the float64 reference."""
    monkeypatch.setattr(peers, "_require_cuda", lambda q: None)
    helpers.check_impl(OP, "flashinfer_decode", shape, dtype)
    (w,) = fake_flashinfer
    (p,) = w.plans
    assert w.layout == "NHD" and w.backend == "fa2"
    assert (p["Hq"], p["Hkv"], p["D"], p["page_size"]) == (shape.Hq, shape.Hkv, shape.D, shape.block_size)
    assert p["sm_scale"] == pytest.approx(1 / math.sqrt(shape.D)) and p["pos_encoding_mode"] == "NONE"
    assert p["q_data_type"] == p["kv_data_type"] == dtype


def test_input_sets_with_equal_tables_share_one_plan(monkeypatch, fake_flashinfer):
    """The harness rotates copies of one input set past the cache; they share one planned
    wrapper (each holds 16 MB of buffers); a new table gets a new one."""
    monkeypatch.setattr(peers, "_require_cuda", lambda q: None)
    impl = OP.impls["flashinfer_decode"]
    args = OP.make_inputs(SMALL, BF16, "cpu", 0)
    copy = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
    first, second = impl.prepare(*args), impl.prepare(*copy)
    assert first[3] is second[3] and len(fake_flashinfer) == 1
    assert second[0] is copy[0] and second[1] is copy[1]  # each set runs on its own tensors
    other = impl.prepare(*OP.make_inputs(SMALL, BF16, "cpu", 1))
    assert other[3] is not first[3] and len(fake_flashinfer) == 2


# --- on a GPU, the real FlashInfer -------------------------------------------------------------

def _need_flashinfer():
    try:
        peers.import_flashinfer()
    except NotImplementedError as e:
        pytest.skip(str(e))


# One head dim and the decode shapes of the suites (ragged lengths, scattered blocks, garbage past
# each sequence): every (dtype, head_dim) pair costs FlashInfer one nvcc compile on first use.
CUDA_SHAPES = [PagedAttentionShape(B=3, Hq=32, Hkv=8, D=128, context=1000),
               PagedAttentionShape(B=1, Hq=64, Hkv=8, D=128, context=5000, block_size=32),
               PagedAttentionShape(B=16, Hq=32, Hkv=8, D=128, context=2048),
               PagedAttentionShape(B=4, Hq=8, Hkv=8, D=128, context=300, block_size=8)]


@pytest.mark.cuda
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=str)
def test_flashinfer_matches_reference_on_cuda(shape):
    _need_flashinfer()
    helpers.check_impl(OP, "flashinfer_decode", shape, BF16, device="cuda")


@pytest.mark.cuda
def test_flashinfer_fp16_matches_reference_on_cuda():
    _need_flashinfer()
    shape = PagedAttentionShape(B=4, Hq=32, Hkv=8, D=128, context=2000)
    helpers.check_impl(OP, "flashinfer_decode", shape, F16, device="cuda")
