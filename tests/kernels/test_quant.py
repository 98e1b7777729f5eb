"""The one quantizer: round-trip error bounds, the packed byte layout by hand, bad shapes."""
import pytest
import torch

from kernels.quant import (INT4_GROUP_SIZES, check_int4_dims, dequant_int4, dequant_int8,
                           pack_int4, quantize_int4, quantize_int8, quantize_kv_int8,
                           to_torch_int4_scales_zeros, unpack_int4)


def test_pack_int4_matches_hand_built_bytes():
    q = torch.tensor([[1, 2, 3, 4], [15, 0, 7, 8]], dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8
    assert packed.tolist() == [[0x21, 0x43], [0x0F, 0x87]]  # low nibble = even k
    assert torch.equal(unpack_int4(packed), q)


def test_quantize_int4_codes_by_hand():
    # One group of 32: values -2.0, -1.5, ..., 5.5 twice -> scale 0.5, zero 4, codes k % 16.
    w = ((torch.arange(32) % 16).float() * 0.5 - 2.0)[None, :]
    qw, s, z = quantize_int4(w, group_size=32, dtype=torch.float32)
    assert s.tolist() == [[0.5]] and z.tolist() == [[4.0]]
    assert qw[0].tolist() == [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE] * 2
    assert torch.equal(dequant_int4(qw, s, z, 32), w)


def test_int4_zero_is_minus_min_over_the_rounded_scale():
    """bf16, one group of 32: min -2.5, max 12.557, so (max - min) / 15 = 1.0038 rounds to the
    bf16 scale 1.0; the zero is then -min / 1.0 = 2.5 (a float, not rounded to 2 or 3, nor
    -min / 1.0038), so the minimum is exact, and codes are w / 1.0 + 2.5 rounded: 10.02 -> 12.52
    -> 13 (10.5, within half the stored step; w / 1.0038 + 2.5 would give 12, 0.52 away)."""
    w = torch.full((1, 32), -2.5)
    w[0, 1], w[0, 2] = 12.557, 10.02
    qw, s, z = quantize_int4(w, group_size=32, dtype=torch.bfloat16)
    assert s.tolist() == [[1.0]] and z.tolist() == [[2.5]]
    assert unpack_int4(qw)[0, :4].tolist() == [0, 15, 13, 0]
    assert dequant_int4(qw, s, z, 32, torch.float64)[0, :3].tolist() == [-2.5, 12.5, 10.5]


def test_int4_groups_wholly_above_or_below_zero_keep_their_own_range():
    """min and max are the group's, not widened to take in 0: 1.0 .. 8.5 -> scale 0.5, zero -2
    (outside the codes' range: zeros are floats of any value); -8.5 .. -1.0 -> scale 0.5,
    zero 17."""
    k = (torch.arange(32) % 16).float()
    w = torch.cat([1.0 + 0.5 * k, -8.5 + 0.5 * k])[None, :]
    qw, s, z = quantize_int4(w, group_size=32, dtype=torch.float32)
    assert s.tolist() == [[0.5, 0.5]] and z.tolist() == [[-2.0, 17.0]]
    assert unpack_int4(qw)[0].tolist() == k.int().tolist() * 2
    assert torch.equal(dequant_int4(qw, s, z, 32), w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_int4_constant_groups_stay_finite_and_exact(dtype):
    """A group with max == min (all 0.75; all zeros) has no span to divide: its scale and zero
    stay finite and it dequantizes to itself."""
    w = torch.cat([torch.full((32,), 0.75), torch.zeros(32)])[None, :]
    qw, s, z = quantize_int4(w, group_size=32, dtype=dtype)
    assert torch.isfinite(s).all() and torch.isfinite(z).all() and (s > 0).all()
    assert torch.equal(dequant_int4(qw, s, z, 32, torch.float64), w.double())


def test_quantizers_default_to_the_weights_dtype():
    w = torch.randn(3, 64, generator=torch.Generator().manual_seed(5))
    _, s, z = quantize_int4(w.bfloat16(), 32)
    assert s.dtype == z.dtype == torch.bfloat16
    assert quantize_int8(w.half())[1].dtype == torch.float16


def test_int8_is_symmetric_under_negation_at_ties():
    """w / scale lands exactly on .5 (scale 15.875 / 127 = 0.125): a symmetric quantizer gives
    -w the codes -q (rounding half up would give 2.5 -> 3 but -2.5 -> -2), each within half a
    step."""
    w = torch.tensor([[15.875, 0.3125, 0.0625, 0.1875, 1.4375, -0.3125, -0.0625, -0.1875]])
    q, s = quantize_int8(w, torch.float32)
    qn, sn = quantize_int8(-w, torch.float32)
    assert s.tolist() == sn.tolist() == [0.125]
    assert torch.equal(qn, -q)
    assert ((q.double() * 0.125 - w.double()).abs() <= 0.0625).all()


def test_int8_never_uses_minus_128_even_where_a_scale_rounds_far_down():
    """fp16 scales of a tiny row are subnormal: 1e-5 / 127 rounds to 2^-24 (5.96e-8), and
    -1e-5 / 2^-24 = -167.8 is clamped; the range stays symmetric, -127 .. 127."""
    q, _ = quantize_int8(torch.tensor([[-1e-5, 5e-6]]), torch.float16)
    assert q.min().item() == -127 and q.max().item() <= 127


def test_quantize_int8_by_hand():
    w = torch.tensor([[1.27, -0.635, 0.0], [0.0, 0.0, 0.0]])
    q, s = quantize_int8(w, torch.float32)
    assert q.dtype == torch.int8
    assert q[0].tolist() == [127, -64, 0] or q[0].tolist() == [127, -63, 0]
    assert q[1].tolist() == [0, 0, 0] and s[1].item() == 1.0  # an all-zero row stays finite
    assert s[0].item() == pytest.approx(0.01)


@pytest.mark.parametrize("seed", range(8))
def test_quantize_kv_int8_round_trip(seed):
    x = torch.randn(5, 16, 2, 64, generator=torch.Generator().manual_seed(seed))
    q, s = quantize_kv_int8(x, torch.float32)
    assert q.dtype == torch.int8 and s.shape == (5, 16, 2) and q.abs().max() <= 127
    # per (token, head): within half of that row's own step, max|row| / 127 (a global bound
    # would let a row with a scale twice too big pass), plus x / step's fp32 rounding (up to
    # 127 * 2^-24 of a step, twice: the division and the step itself)
    err = (q.double() * s[..., None].double() - x.double()).abs().amax(-1)
    assert (err <= x.double().abs().amax(-1) / 127 * (0.5 + 127 * 2**-23)).all()


@pytest.mark.parametrize("dtype, slack", [(torch.float32, 1e-6), (torch.bfloat16, 0.02),
                                          (torch.float16, 0.01)])
def test_int8_round_trip_within_half_a_step(dtype, slack):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(37, 200, generator=g) * torch.rand(37, 1, generator=g)
    q, s = quantize_int8(w, dtype)
    assert s.dtype == dtype and q.abs().max() <= 127
    err = (dequant_int8(q, s, torch.float64) - w.double()).abs()
    bound = s.double()[:, None] * (0.5 + slack) + 1e-7
    assert (err <= bound).all(), (err / bound).max()


@pytest.mark.parametrize("G", INT4_GROUP_SIZES)
@pytest.mark.parametrize("dtype, slack", [(torch.float32, 1e-5), (torch.bfloat16, 0.06),
                                          (torch.float16, 0.01)])
def test_int4_round_trip_within_half_a_step(G, dtype, slack):
    g = torch.Generator().manual_seed(G)
    w = torch.randn(19, 2 * 256, generator=g) + torch.randn(19, 1, generator=g)  # offset rows
    qw, s, z = quantize_int4(w, G, dtype)
    assert qw.shape == (19, 256) and s.shape == z.shape == (19, 512 // G)
    assert s.dtype == z.dtype == dtype
    codes = unpack_int4(qw)
    assert codes.max() <= 15
    err = (dequant_int4(qw, s, z, G, torch.float64) - w.double()).abs()
    # Half a quantization step, plus the rounding of the stored zero point (bf16: 1/32 step).
    bound = s.double().repeat_interleave(G, dim=1) * (0.5 + slack) + 1e-6
    assert (err <= bound).all(), (err / bound).max()
    # The grid is used: both ends of most groups' range are hit.
    assert (codes == 0).any() and (codes == 15).any()


def test_torch_int4_scales_and_zeros_dequantize_the_same():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(16, 128, generator=g)
    qw, s, z = quantize_int4(w, 64, torch.float32)
    sz = to_torch_int4_scales_zeros(s, z)
    assert sz.shape == (2, 16, 2)
    q = unpack_int4(qw).double()
    theirs = (q - 8) * sz[..., 0].T.double().repeat_interleave(64, 1) \
        + sz[..., 1].T.double().repeat_interleave(64, 1)
    assert torch.allclose(theirs, dequant_int4(qw, s, z, 64, torch.float64), atol=1e-5)


def test_torch_int4_scales_and_zeros_by_hand():
    """[K//G, N, 2] of (scale, (8 - zero) * scale) in the scales' dtype: N = 1, two groups."""
    s = torch.tensor([[0.5, 0.25]], dtype=torch.bfloat16)
    z = torch.tensor([[2.5, -1.0]], dtype=torch.bfloat16)
    sz = to_torch_int4_scales_zeros(s, z)
    assert sz.dtype == torch.bfloat16
    assert sz.tolist() == [[[0.5, 2.75]], [[0.25, 2.25]]]


@pytest.mark.parametrize("K, G, msg", [
    (100, 32, "not a multiple of group_size=32"),
    (33, 32, "must be even"),
    (256, 48, "group_size=48 is not allowed"),
    (256, 512, "not allowed"),
])
def test_bad_int4_dims(K, G, msg):
    with pytest.raises(ValueError, match=msg):
        check_int4_dims(K, G)
    with pytest.raises(ValueError, match=msg):
        quantize_int4(torch.randn(4, K), G)


def test_bad_quantizer_inputs():
    with pytest.raises(ValueError, match="2-D"):
        quantize_int8(torch.randn(4))
    for w in (torch.randn(64), torch.randn(2, 2, 64)):
        with pytest.raises(ValueError, match="2-D"):
            quantize_int4(w, 32)
    with pytest.raises(ValueError, match="even"):
        pack_int4(torch.zeros(2, 3, dtype=torch.uint8))


@pytest.mark.parametrize("rows, row_len, chunk", [(10, 64, 192), (7, 64, 64), (9, 100, 350),
                                                  (5, 64, 1), (3, 64, 1 << 22)])
def test_row_slices_cover_every_row_once(rows, row_len, chunk, monkeypatch):
    """The quantizers and the GEMV references work through a matrix a slice of rows at a time;
    the slices must cover rows 0..rows-1 in order, each once, whatever the chunk."""
    import kernels.quant as quant
    monkeypatch.setattr(quant, "CHUNK_ELEMENTS", chunk)
    covered = [r for s in quant.row_slices(rows, row_len) for r in range(rows)[s]]
    assert covered == list(range(rows))


def test_sliced_quantizers_and_references_match_one_slice(monkeypatch):
    """Every test shape fits one slice of CHUNK_ELEMENTS (4M weights), but a 70B layer takes
    hundreds: with slices of 3 rows (a short last one), the quantizers' outputs and the GEMV
    references equal the one-slice results (the quantizers' bit for bit, the float64 products
    to their rounding: BLAS blocks a slice differently), so no row is skipped, repeated or left
    as the uninitialized memory the outputs start as."""
    import kernels.quant as quant
    from kernels import OPS
    from kernels.gemv import GemvShape, GemvW4Shape, GemvW8Shape
    g = torch.Generator().manual_seed(9)
    w = torch.randn(11, 128, generator=g)
    kv = torch.randn(4, 3, 2, 64, generator=g)
    cases = [(OPS["gemv_w4"], GemvW4Shape(3, 11, 128, 32)), (OPS["gemv_w8"], GemvW8Shape(3, 11, 128)),
             (OPS["gemv_bf16"], GemvShape(3, 11, 128))]

    def everything():
        out = [*quantize_int4(w, 32, torch.float32), *quantize_int8(w), *quantize_kv_int8(kv, torch.float32)]
        for op, shape in cases:
            args = op.make_inputs(shape, torch.float32, "cpu", 0)
            out += [a for a in args if isinstance(a, torch.Tensor)] + [op.reference(*args)]
        return out

    whole = everything()
    monkeypatch.setattr(quant, "CHUNK_ELEMENTS", 3 * 128)
    assert len(quant.row_slices(11, 128)) == 4
    sliced = everything()
    for a, b in zip(whole, sliced):
        if a.dtype == torch.float64:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        else:
            assert torch.equal(a, b)
