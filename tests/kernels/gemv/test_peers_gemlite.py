"""GemLite as a peer of gemv_w4 / gemv_w8: registered whether or not it is installed, skipped with
the reason when it cannot run, our formats converted to its own checked against our reference.

GemLite's semantics as its source (gemlite 0.6.0.post2) writes them, restated here so the tests
do not need GemLite:
- `GemLiteLinearTriton.pack(W_q uint8 [N, K], scales, zeros)` (core.py) keeps
  `scales.view(N, -1).t()` → [K/G, N] and, for float zeros with its default fma_mode,
  `zeros' = (-zeros.float() * scales.float()).to(zeros.dtype)`, viewed the same way;
- its kernels dequantize `fma(q.to(meta_dtype), scales, zeros')` (triton_kernels/utils.py,
  `dequantize`, W_group_mode 4), the result in meta_dtype (the scales' dtype), then accumulate;
- for INT8, `pack(W_q int8 [N, K], scales [N], zeros=None)` keeps `W_q.t()` and `scales.view(N,
  -1).t()` → [1, N]; with W_group_mode 2 the kernels dequantize `q.to(meta_dtype) * scales`.
"""
import subprocess
import sys
import types

import pytest
import torch

from kernels import OPS, rel_err
from kernels.gemv import GemvW4Shape, GemvW8Shape
from kernels.gemv import peers
from kernels.quant import dequant_int4, pack_int4
from tests import helpers

W4, W8 = OPS["gemv_w4"], OPS["gemv_w8"]
BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32
IMPLS = [("gemv_w4", "gemlite_w4"), ("gemv_w8", "gemlite_w8")]
SMALL = {"gemv_w4": GemvW4Shape(2, 48, 256, 64), "gemv_w8": GemvW8Shape(2, 48, 256)}


def gemlite_w4_dense(W_q, scales, zeros, group_size, round_zero=True):
    """W [N, K] in float64 as GemLite computes it from what its pack() is given (fma_mode)."""
    N, K = W_q.shape
    zp = -zeros.double() * scales.double()
    if round_zero:
        zp = (-zeros.float() * scales.float()).to(zeros.dtype).double()
    s_t, z_t = scales.view(N, -1).t(), zp.view(N, -1).t()  # [K/G, N], as pack() keeps them
    g = torch.arange(K) // group_size
    return W_q.double() * s_t[g].double().t() + z_t[g].t()


# --- registration and the import contract -----------------------------------------------------

@pytest.mark.parametrize("op,name", IMPLS)
def test_registered_as_cuda_only_baselines(op, name):
    impl = OPS[op].impls[name]
    assert impl.baseline and impl.backends == ("cuda",) and impl.kind == "triton"
    assert impl.dtypes == (BF16, F16)  # no fp32: GemLite's tl.dot paths would run it in TF32
    assert impl.prepare is not None and impl.out_arg
    assert impl.supports("cpu", BF16) == (False, f"{name} runs on cuda, not cpu")


@pytest.mark.parametrize("op,name", IMPLS)
def test_without_gemlite_a_call_says_how_to_install_it(monkeypatch, op, name):
    monkeypatch.setitem(sys.modules, "gemlite", None)  # `import gemlite` fails, installed or not
    args = OPS[op].make_inputs(SMALL[op], BF16, "cpu", 0)
    with pytest.raises(NotImplementedError) as e:
        OPS[op].impls[name](*args)
    assert str(e.value) == "gemlite is not installed (pip install 'decodewall[peers]')"


@pytest.mark.parametrize("exc,expect", [
    (ModuleNotFoundError("No module named 'tqdm'", name="tqdm"),
     "gemlite cannot be imported: No module named 'tqdm'"),
    (RuntimeError("Found no NVIDIA driver on your system.\nmore"),
     "gemlite cannot be imported here (RuntimeError: Found no NVIDIA driver on your system.)"),
])
def test_a_gemlite_that_fails_to_import_is_named_with_the_cause(monkeypatch, exc, expect):
    real = __import__

    def fake_import(name, *a, **kw):
        if name == "gemlite":
            raise exc
        return real(name, *a, **kw)

    monkeypatch.delitem(sys.modules, "gemlite", raising=False)
    monkeypatch.setattr("builtins.__import__", fake_import)
    with pytest.raises(NotImplementedError) as e:
        peers.import_gemlite()
    assert str(e.value) == expect


def test_importing_kernels_does_not_import_gemlite():
    r = subprocess.run([sys.executable, "-c", "import sys, kernels; print('gemlite' in sys.modules, "
                        "'gemlite_w4' in kernels.OPS['gemv_w4'].impls)"],
                       capture_output=True, text=True, cwd=helpers.REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-500:]
    assert r.stdout.split() == ["False", "True"]


# --- cases GemLite cannot take, found before anything is built ---------------------------------

@pytest.fixture
def fake_gemlite(monkeypatch):
    """A stand-in `gemlite` module on the CPU: its layer records what the impl hands it and its
    forward computes with GemLite's dequantization (module docstring), in fp32 like its kernels."""
    calls = []

    class DType:
        FP32, FP16, BF16 = "FP32", "FP16", "BF16"

    class Layer:
        def __init__(self, W_nbits=4, group_size=64, in_features=None, out_features=None,
                     input_dtype=DType.FP16, output_dtype=DType.FP16):
            self.init = dict(W_nbits=W_nbits, group_size=group_size, in_features=in_features,
                             out_features=out_features, input_dtype=input_dtype,
                             output_dtype=output_dtype)
            self.W_group_mode = self.channel_scale_mode = -1
            calls.append(self)

        def pack(self, W_q, scales, zeros, bias=None):
            N, K, G = self.init["out_features"], self.init["in_features"], self.init["group_size"]
            self.packed = (W_q, scales, zeros)
            if W_q.dtype == torch.uint8:  # codes to pack: GemLite's INT4 path, fma_mode
                assert self.init["W_nbits"] == 4 and tuple(W_q.shape) == (N, K)
                assert int(W_q.max()) <= 15 and zeros is not None
                w = gemlite_w4_dense(W_q, scales, zeros, G).to(scales.dtype)  # fma in meta dtype
                self.W_group_mode, self.channel_scale_mode = 4, 0
            else:  # int8 as it is
                assert self.init["W_nbits"] == 8 and W_q.dtype == torch.int8 and zeros is None
                assert G == K and scales.numel() == N
                w = W_q.to(scales.dtype) * scales.view(N, -1).t()[0][:, None]  # pre-scaling
                self.W_group_mode, self.channel_scale_mode = 0, 1  # pack()'s own; A16W8 resets
            self.dense = w.float().t().contiguous()  # [K, N], as GemLite stores W_q

        def get_tensor_args(self):
            return [self.dense, self.packed[1], torch.empty(0), torch.tensor(0.0)]

        def get_meta_args(self):
            return [self.init["W_nbits"], self.init["group_size"], self.init["output_dtype"],
                    self.W_group_mode, self.channel_scale_mode]

    def forward_functional(x, bias, tensor_args, meta_args):
        W_nbits, G, out_dtype, group_mode, channel_mode = meta_args
        assert bias is None and out_dtype == DType.FP32
        assert (group_mode, channel_mode) == ((4, 0) if W_nbits == 4 else (2, 0))
        return x.float() @ tensor_args[0]

    fake = types.SimpleNamespace(DType=DType, GemLiteLinearTriton=Layer,
                                 forward_functional=forward_functional)
    monkeypatch.setitem(sys.modules, "gemlite", fake)
    return calls


@pytest.mark.parametrize("op,name", IMPLS)
def test_cpu_tensors_are_refused_with_the_reason(fake_gemlite, op, name):
    args = OPS[op].make_inputs(SMALL[op], BF16, "cpu", 0)
    with pytest.raises(NotImplementedError, match="GemLite runs on CUDA devices, not cpu"):
        OPS[op].impls[name](*args)
    assert not fake_gemlite


@pytest.mark.parametrize("op,name", IMPLS)
def test_float32_is_refused_with_the_reason(fake_gemlite, op, name):
    args = OPS[op].make_inputs(SMALL[op], F32, "cpu", 0)
    with pytest.raises(NotImplementedError, match="bfloat16 and float16 only.*TF32"):
        OPS[op].impls[name](*args)


def test_int8_k_off_gemlites_grain_is_refused(fake_gemlite):
    args = W8.make_inputs(GemvW8Shape(1, 16, 48), BF16, "cpu", 0)
    with pytest.raises(NotImplementedError, match=r"K % 32 == 0 \(K=48\)"):
        W8.impls["gemlite_w8"](*args)


# --- the conversion, against hand-computed values and our reference ---------------------------

def test_codes_unpacked_in_k_order_by_hand():
    qweight = torch.tensor([[0x21, 0xF0], [0x0E, 0x7A]], dtype=torch.uint8)
    s = torch.ones(2, 1)
    W_q, scales, zeros = peers.to_gemlite_w4(qweight, s, s * 3)
    assert W_q.dtype == torch.uint8 and W_q.tolist() == [[1, 2, 0, 15], [14, 0, 10, 7]]
    assert scales is s and torch.equal(zeros, s * 3)  # passed on as they are


def test_gemlite_dequant_of_one_group_by_hand():
    # q = 0..15, zero 7.5, scale 0.25: w = (q - 7.5) / 4; GemLite: q * 0.25 + (-1.875)
    q = torch.arange(16, dtype=torch.uint8)[None, :].repeat(1, 2)  # K = 32, G = 32
    s, z = torch.tensor([[0.25]]), torch.tensor([[7.5]])
    W_q, scales, zeros = peers.to_gemlite_w4(pack_int4(q), s, z)
    w = gemlite_w4_dense(W_q, scales, zeros, 32)
    assert w[0, :16].tolist() == [(k - 7.5) / 4 for k in range(16)]


@pytest.mark.parametrize("G", [32, 64, 128, 256])
@pytest.mark.parametrize("dtype", [BF16, F16])
def test_gemlite_rebuilds_our_int4_weights(G, dtype):
    """GemLite's dequantization of what we pack equals our format's exactly when its zero term
    z' = -z * s is not rounded; rounded to x's dtype (what it stores) it is within half an ulp of
    z * s per group. That rounding alone costs a GEMV about half of the bf16 tolerance and a third
    of fp16's (rel err ~5e-3 / ~6e-4): under 60% leaves the kernel's own rounding the rest."""
    shape = GemvW4Shape(M=4, N=96, K=4 * 256, group_size=G)
    x, qweight, scales, zeros, _ = W4.make_inputs(shape, dtype, "cpu", 3)
    ours = dequant_int4(qweight, scales, zeros, G, torch.float64)
    W_q, s, z = peers.to_gemlite_w4(qweight, scales, zeros)
    exact = gemlite_w4_dense(W_q, s, z, G, round_zero=False)
    torch.testing.assert_close(exact, ours, rtol=0, atol=1e-12)
    theirs = gemlite_w4_dense(W_q, s, z, G)
    zs = (zeros.double() * scales.double()).abs().repeat_interleave(G, dim=1)
    eps = torch.finfo(dtype).eps
    assert ((theirs - ours).abs() <= zs * (eps / 2 + 2**-23)).all()  # + its fp32 product's rounding
    y = x.double() @ theirs.T
    assert rel_err(y, W4.reference(x, qweight, scales, zeros, G)) < 0.6 * W4.tol(dtype)


def test_a_swapped_nibble_order_would_be_caught():
    shape = GemvW4Shape(M=1, N=8, K=64, group_size=32)
    _, qweight, scales, zeros, _ = W4.make_inputs(shape, BF16, "cpu", 0)
    ours = dequant_int4(qweight, scales, zeros, 32, torch.float64)
    swapped = ((qweight << 4) | (qweight >> 4)).to(torch.uint8)
    W_q, s, z = peers.to_gemlite_w4(swapped, scales, zeros)
    assert not torch.allclose(gemlite_w4_dense(W_q, s, z, 32, round_zero=False), ours)


def test_gemlite_reads_our_int8_weights_as_they_are(monkeypatch, fake_gemlite):
    """INT8 needs no conversion: pack() gets our int8 [N, K] codes and [N] scales themselves (no
    copy, no zeros) and the layer scales after the product, as GemLite's A16W8 sets it."""
    monkeypatch.setattr(peers, "_require_cuda", lambda x: None)
    x, qweight, scales = W8.make_inputs(GemvW8Shape(3, 40, 96), F16, "cpu", 1)
    peers._prepare_w8(x, qweight, scales)
    (layer,) = fake_gemlite
    W_q, s, zeros = layer.packed
    assert W_q is qweight and s is scales and zeros is None
    assert (layer.W_group_mode, layer.channel_scale_mode) == (2, 0)


# --- the whole impl on the CPU, GemLite replaced by its semantics ------------------------------

W4_CASES = [GemvW4Shape(1, 64, 512, 128), GemvW4Shape(5, 48, 256, 32), GemvW4Shape(64, 24, 512, 256)]
W8_CASES = [GemvW8Shape(1, 64, 512), GemvW8Shape(3, 40, 96), GemvW8Shape(64, 24, 256)]


@pytest.mark.parametrize("dtype", [BF16, F16])
@pytest.mark.parametrize("op,shape", [("gemv_w4", s) for s in W4_CASES] + [("gemv_w8", s) for s in W8_CASES],
                         ids=str)
def test_impl_wiring_matches_reference(monkeypatch, fake_gemlite, op, shape, dtype):
    """prepare → GemLite's layer (right bits, group, features, fp32 output) → its forward → our
    dtype, checked like the harness checks (poisoned output buffer, float64 reference)."""
    monkeypatch.setattr(peers, "_require_cuda", lambda x: None)
    name = "gemlite_w4" if op == "gemv_w4" else "gemlite_w8"
    helpers.check_impl(OPS[op], name, shape, dtype)
    (layer,) = fake_gemlite
    G = shape.group_size if op == "gemv_w4" else shape.K
    assert layer.init == dict(W_nbits=4 if op == "gemv_w4" else 8, group_size=G,
                              in_features=shape.K, out_features=shape.N,
                              input_dtype="BF16" if dtype == BF16 else "FP16", output_dtype="FP32")
    y = OPS[op].impls[name](*OPS[op].make_inputs(shape, dtype, "cpu", 1))  # no out buffer: cast
    assert y.dtype == dtype and tuple(y.shape) == (shape.M, shape.N)


# --- on a GPU, the real GemLite ---------------------------------------------------------------

def _need_gemlite():
    try:
        peers.import_gemlite()
    except NotImplementedError as e:
        pytest.skip(str(e))


# Its three kernel families: GEMV_REVSPLITK / GEMV_SPLITK (M <= 4 / 2), GEMM_SPLITK, GEMM (M >= 64);
# K = 28672 is Llama-3-70B's down projection, where 16-bit split-K atomics would fail the gate.
CUDA_W4 = [GemvW4Shape(1, 4096, 4096, 128), GemvW4Shape(1, 1024, 28672, 128),
           GemvW4Shape(3, 4096, 4096, 64), GemvW4Shape(16, 2048, 8192, 128),
           GemvW4Shape(64, 1024, 4096, 128)]
CUDA_W8 = [GemvW8Shape(1, 4096, 4096), GemvW8Shape(1, 1024, 28672), GemvW8Shape(16, 2048, 8192),
           GemvW8Shape(64, 1024, 4096)]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [BF16, F16])
@pytest.mark.parametrize("shape", CUDA_W4, ids=str)
def test_gemlite_w4_matches_reference_on_cuda(shape, dtype):
    _need_gemlite()
    helpers.check_impl(W4, "gemlite_w4", shape, dtype, device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [BF16, F16])
@pytest.mark.parametrize("shape", CUDA_W8, ids=str)
def test_gemlite_w8_matches_reference_on_cuda(shape, dtype):
    _need_gemlite()
    helpers.check_impl(W8, "gemlite_w8", shape, dtype, device="cuda")
