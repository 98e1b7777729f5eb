"""gemv_w4: byte model, reference by hand, every impl against the float64 reference, bad shapes."""
import pytest
import torch

from kernels import OPS, rel_err
from kernels.gemv import simd as gemv_simd
from tests import helpers
from kernels.gemv import GemvW4Shape
from kernels.quant import INT4_GROUP_SIZES, pack_int4

OP = OPS["gemv_w4"]
F16, F32, BF16 = torch.float16, torch.float32, torch.bfloat16


def check_impl(name, shape, dtype, device="cpu", seed=0, **kw):
    return helpers.check_impl(OP, name, shape, dtype, device, seed, **kw)


def test_byte_count_by_hand():
    s = GemvW4Shape(M=2, N=3, K=64, group_size=32)
    # x 2*64*2 + qweight 3*32 + scales and zeros 2 * 3*2 groups * 2 B + y 2*3*2
    assert OP.bytes_moved(s, BF16) == 256 + 96 + 24 + 12
    assert OP.bytes_moved(s, F32) == 512 + 96 + 48 + 24
    big = GemvW4Shape(M=1, N=8192, K=8192, group_size=128)
    assert OP.bytes_moved(big, BF16) == 8192 * 2 + 8192 * 4096 + 2 * 8192 * 64 * 2 + 8192 * 2


def test_reference_by_hand():
    # One row, K = 32, G = 32: q = k % 16, zero 8, scale 0.5 -> w = (k % 16 - 8) / 2.
    q = (torch.arange(32) % 16)[None, :]
    qw = pack_int4(q)
    s = torch.tensor([[0.5]])
    z = torch.tensor([[8.0]])
    x = torch.zeros(1, 32)
    x[0, 3] = 1.0   # w = (3 - 8) / 2
    x[0, 30] = 2.0  # w = (14 - 8) / 2
    assert OP.reference(x, qw, s, z, 32).tolist() == [[-2.5 + 6.0]]


def test_inputs_are_realistic():
    x, qw, s, z, G = OP.make_inputs(GemvW4Shape(M=2, N=64, K=256, group_size=64), BF16, "cpu", 0)
    assert G == 64 and qw.dtype == torch.uint8 and qw.shape == (64, 128)
    assert s.dtype == z.dtype == x.dtype == BF16 and s.shape == (64, 4)
    assert (z != z.round()).any()  # zero points are floats, as the format allows


SHAPES = [GemvW4Shape(1, 37, 256, 32), GemvW4Shape(3, 50, 192, 64), GemvW4Shape(7, 48, 1024, 128),
          GemvW4Shape(17, 9, 512, 256), GemvW4Shape(64, 33, 160, 32), GemvW4Shape(2, 64, 96, 32)]
_g = torch.Generator().manual_seed(4)
for _ in range(3):
    _G = INT4_GROUP_SIZES[int(torch.randint(0, 4, (), generator=_g))]
    SHAPES.append(GemvW4Shape(int(torch.randint(1, 40, (), generator=_g)), int(torch.randint(1, 90, (), generator=_g)),
                              _G * int(torch.randint(1, 5, (), generator=_g)), _G))


# M = 1 has its own C path (4-row tiles, denormal unpack on AMD): N % 4 != 0 leaves single rows,
# K % 64 != 0 leaves a partial last chunk (and keeps simd_c_tiled on the row layout).
SHAPES_M1 = [GemvW4Shape(1, 37, 256, 32), GemvW4Shape(1, 8, 512, 64), GemvW4Shape(1, 13, 1024, 128),
             GemvW4Shape(1, 6, 768, 256), GemvW4Shape(1, 5, 96, 32), GemvW4Shape(1, 3, 128, 128),
             GemvW4Shape(1, 10, 160, 32)]


@pytest.mark.parametrize("name", ["torch_dequant", "simd_c", "simd_c_tiled"])
@pytest.mark.parametrize("dtype", [BF16, F16, F32])
@pytest.mark.parametrize("shape", SHAPES + SHAPES_M1, ids=str)
def test_cpu_impls_match_reference(name, dtype, shape):
    check_impl(name, shape, dtype)


@pytest.mark.parametrize("dtype", [BF16, F16, F32])
@pytest.mark.parametrize("shape", SHAPES + SHAPES_M1 + [GemvW4Shape(4, 64, 512, G)
                                                         for G in INT4_GROUP_SIZES], ids=str)
def test_cpu_builtin_passes_where_its_packing_takes_the_shape(isolated, dtype, shape):
    """PyTorch's CPU int4 kernel, fed our format converted to its own, in the case worker: its
    packing takes N % 16 == 0 (every group size we allow, any even K) and declines the rest; a
    shape it takes must pass the check (a crash has no known cause, a wrong answer would be our
    conversion's)."""
    rec = isolated("gemv_w4", "torch_int4pack_mm", shape, dtype)
    if shape.N % 16:
        assert rec["status"] == "skipped" and "expect N to be dividable by 16" in rec["error"], rec
    else:
        assert rec["status"] == "ok" and rec["correct"], (rec["status"], rec["error"])


def test_simd_kernel_catches_a_wrong_nibble_order():
    """The check can fail: swapping the nibbles of every byte (high = even k) is caught."""
    s = GemvW4Shape(2, 40, 256, 64)
    x, qw, sc, z, G = OP.make_inputs(s, F32, "cpu", 0)
    ref = OP.reference(x, qw, sc, z, G)
    assert rel_err(OP.impls["simd_c"](x, qw, sc, z, G), ref) < 1e-4  # right in the right order
    swapped = (qw << 4) | (qw >> 4)
    assert rel_err(OP.impls["simd_c"](x, swapped, sc, z, G), ref) > 1e-2


def test_tiled_layout_by_hand():
    """4-row tiles of 32-byte pieces; rows past the last full tile stay as they were."""
    N, K = 6, 128                                   # 16 words per row: two chunks
    words = torch.arange(N * K // 8, dtype=torch.int32).view(N, K // 8)
    tiled = gemv_simd.tile_int4_rows(words.view(torch.uint8).view(N, K // 2)).view(torch.int32).view(-1)
    expect = [words[r, c * 8:(c + 1) * 8] for c in range(2) for r in range(4)] + [words[4], words[5]]
    assert torch.equal(tiled, torch.cat(expect))
    with pytest.raises(ValueError, match="K % 64"):
        gemv_simd.tile_int4_rows(torch.zeros(4, 48, dtype=torch.uint8))


UNPACKS = ["auto", "cvt", "denormal", "dot"]  # gemv_w4's M = 1 unpacks: the CPU's pick, each forced


def gemv_w4_unpack(*args, unpack: str, **kw) -> torch.Tensor:
    """gemv_simd.gemv_w4 with `unpack`; skips where this build has no denormal unpack (without
    AVX2 + F16C), and "dot" where it does not apply (a build without AVX512_BF16, x not bf16,
    K % 64 != 0)."""
    try:
        return gemv_simd.gemv_w4(*args, unpack=unpack, **kw)
    except NotImplementedError as e:
        if unpack not in ("denormal", "dot"):
            raise
        pytest.skip(str(e))


KBW = gemv_simd.W4_KBLOCK_WORDS  # words per row of a K-block
KBK = 8 * KBW                   # its k


def test_tiled_layout_blocks_by_hand():
    """Past KBK k the tiled layout is cut into K-blocks of KBK k, 32 tiles to a block, each block
    K-block by K-block; a short last block and two leftover rows."""
    kw = [gemv_simd.w4_kblock_words(k) for k in (KBK // 2, KBK, KBK + 64, 2 * KBK, 7 * KBK // 2)]
    assert kw == [KBW // 2, KBW, KBW + 8, KBW, 7 * KBW // 2]  # whole K unless a larger multiple
    N, K = 4 * 33 + 2, 2 * KBK                      # blocks of 32 and 1 tiles, 2 K-blocks
    words = torch.arange(N * K // 8, dtype=torch.int32).view(N, K // 8)
    tiled = gemv_simd.tile_int4_rows(words.view(torch.uint8).view(N, K // 2)).view(torch.int32).view(-1)
    expect = []
    for tiles in (range(32), range(32, 33)):
        for kb in range(2):
            for t in tiles:
                for c in range(KBW // 8):
                    for r in range(4):
                        i = kb * KBW + 8 * c
                        expect.append(words[4 * t + r, i:i + 8])
    assert torch.equal(tiled, torch.cat(expect + [words[N - 2], words[N - 1]]))


def _tiles_without_kblocks(qw):
    """The plain 4-row tile order, all of K per tile: what the K-blocked layout must not be read as."""
    N, half_k = qw.shape
    w = qw.view(torch.int32)
    nt = N // 4
    t = w[:4 * nt].reshape(nt, 4, half_k // 32, 8).transpose(1, 2).reshape(-1)
    return torch.cat((t, w[4 * nt:].reshape(-1))).view(torch.uint8).view(N, half_k)


# Shapes that take the K-blocked order: 2 and 3 K-blocks, 2-4 blocks of tiles (a short last one),
# leftover rows, every group size, M = 1 (its own C path) and M > 1. At M = 1 full blocks go in
# pairs (two streams): 262 rows = one pair + a short block; 406 = a pair, an odd full block, a
# short one and 2 leftover rows.
SHAPES_KBLOCK = [GemvW4Shape(1, 134, 2 * KBK, 32), GemvW4Shape(1, 134, 2 * KBK, 64),
                 GemvW4Shape(1, 134, 2 * KBK, 128), GemvW4Shape(1, 262, 3 * KBK, 256),
                 GemvW4Shape(1, 406, 2 * KBK, 128), GemvW4Shape(1, 406, 2 * KBK, 32),
                 GemvW4Shape(3, 134, 2 * KBK, 128), GemvW4Shape(2, 130, 3 * KBK, 32),
                 GemvW4Shape(5, 406, 2 * KBK, 64)]


@pytest.mark.parametrize("unpack", UNPACKS)
@pytest.mark.parametrize("dtype", [BF16, F16, F32])
@pytest.mark.parametrize("shape", SHAPES_KBLOCK, ids=str)
def test_tiled_kblocks(shape, dtype, unpack):
    x, qw, sc, z, G = OP.make_inputs(shape, dtype, "cpu", 6)
    ref = OP.reference(x, qw, sc, z, G)
    out = torch.full((shape.M, shape.N), float("nan"), dtype=dtype)
    gemv_w4_unpack(x, gemv_simd.tile_int4_rows(qw), sc, z, G, out=out, tiled=True, unpack=unpack)
    assert rel_err(out, ref) < OP.tol(dtype)
    if dtype == F32 and unpack == "auto":  # the check can fail: plain tiles read as K-blocked
        bad = gemv_simd.gemv_w4(x, _tiles_without_kblocks(qw), sc, z, G, tiled=True)
        assert rel_err(bad, ref) > 1e-2


@pytest.mark.parametrize("unpack", ["auto", "cvt", "denormal"])
@pytest.mark.parametrize("tiled", [False, True])
@pytest.mark.parametrize("M", range(1, 10))
def test_each_m_writes_its_rows_of_y_and_nothing_past_them(M, tiled, unpack):
    """bf16 x, an fp32 out the C writes in place: rows of x go a few at a time (the dot loops, or
    with "cvt" / "denormal" the FMA loops of w4_tile_m, at M > 1 in either layout), and a pass
    that took more rows than are left would write past y: here into the sentinel after out."""
    shape = GemvW4Shape(M, 9, 512, 128)
    x, qw, sc, z, G = OP.make_inputs(shape, BF16, "cpu", M)
    buf = torch.full((M * 9 + 64,), 12345.0)
    out = buf[:M * 9].view(M, 9).fill_(float("nan"))
    gemv_w4_unpack(x, gemv_simd.tile_int4_rows(qw) if tiled else qw, sc, z, G, out=out,
                   tiled=tiled, unpack=unpack)
    assert rel_err(out, OP.reference(x, qw, sc, z, G)) < OP.tol(BF16)
    assert (buf[M * 9:] == 12345.0).all()


@pytest.mark.parametrize("name", ["simd_c", "simd_c_tiled"])
@pytest.mark.parametrize("dtype", [BF16, F32])
@pytest.mark.parametrize("M", [1, 3])
def test_more_groups_a_row_than_the_fast_loops_take(name, dtype, M):
    """1032 groups a row (K = 33024 at G = 32), past the 1024 that the M = 1 and dot loops keep
    scales for: the general loop takes the call, in either layout and at any M."""
    check_impl(name, GemvW4Shape(M, 6, 32 * 1032, 32), dtype)


def test_tiled_kernel_reads_the_tiled_layout():
    """The check can fail: row-layout weights passed as tiled give a wrong answer."""
    x, qw, sc, z, G = OP.make_inputs(GemvW4Shape(1, 16, 256, 64), F32, "cpu", 0)
    ref = OP.reference(x, qw, sc, z, G)
    assert rel_err(gemv_simd.gemv_w4(x, qw, sc, z, G, tiled=True), ref) > 1e-2
    assert rel_err(gemv_simd.gemv_w4(x, gemv_simd.tile_int4_rows(qw), sc, z, G, tiled=True), ref) < 1e-4


@pytest.mark.parametrize("tiled", [False, True])
@pytest.mark.parametrize("unpack", UNPACKS)
@pytest.mark.parametrize("dtype", [BF16, F32])
@pytest.mark.parametrize("x_scale", [1.0, 3e4, 1e-7])
def test_m1_unpack_paths_and_x_range(tiled, unpack, dtype, x_scale):
    """Both M = 1 unpacks, each forced on any CPU, with activations large and tiny: the denormal
    path scales x by a power of two chosen from max|x|, which must neither overflow nor flush the
    products."""
    shape = GemvW4Shape(1, 22, 512, 128)
    x, qw, sc, z, G = OP.make_inputs(shape, dtype, "cpu", 5)
    x = (x.float() * x_scale).to(dtype)
    x[0, 7] = 0.0
    ref = OP.reference(x, qw, sc, z, G)
    q = gemv_simd.tile_int4_rows(qw) if tiled else qw
    out = torch.full((1, shape.N), float("nan"), dtype=dtype)
    gemv_w4_unpack(x, q, sc, z, G, out=out, tiled=tiled, unpack=unpack)
    assert rel_err(out, ref) < OP.tol(dtype)


@pytest.mark.parametrize("unpack", UNPACKS)
def test_m1_zero_x_and_flush_denormal_mode(unpack):
    """x = 0 gives exactly -(zero-point terms) = 0; with FTZ/DAZ on (torch.set_flush_denormal) the
    denormal unpack still sees its denormals, because the kernel turns DAZ off inside. One thread:
    set_flush_denormal sets the calling thread's mode only, so that thread must run every row."""
    x, qw, sc, z, G = OP.make_inputs(GemvW4Shape(1, 12, 256, 64), F32, "cpu", 2)
    zero = gemv_w4_unpack(torch.zeros_like(x), qw, sc, z, G, unpack=unpack)
    assert torch.count_nonzero(zero) == 0
    ref = OP.reference(x, qw, sc, z, G)
    threads = torch.get_num_threads()
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU has no flush-denormal mode")
    try:
        torch.set_num_threads(1)
        assert rel_err(gemv_w4_unpack(x, qw, sc, z, G, unpack=unpack), ref) < 1e-4
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


@pytest.mark.parametrize("tiled", [False, True])
def test_dot_unpack_is_what_auto_takes_for_bf16(tiled):
    """Where the build has the VDPBF16PS loops, "auto" on bf16 x at M = 1 (K % 64 == 0, either
    layout) is them (the same bits, fp32 out); elsewhere forcing them is refused with the reason,
    and fp16 x or K % 64 != 0 never take them. x spans 24 binades, so the unpacks' sums, exact for
    x of one scale, round differently and their bits tell them apart."""
    shape = GemvW4Shape(1, 134, 2 * KBK, 128)
    x, qw, sc, z, G = OP.make_inputs(shape, BF16, "cpu", 4)
    g = torch.Generator().manual_seed(0)
    x = (x.float() * torch.exp2(torch.randint(-12, 13, x.shape, generator=g).float())).to(BF16)
    q = gemv_simd.tile_int4_rows(qw) if tiled else qw

    def run(**kw):
        out = torch.empty(1, shape.N, dtype=torch.float32)
        return gemv_simd.gemv_w4(x, q, sc, z, G, tiled=tiled, out=out, **kw)
    auto = run()
    with pytest.raises(NotImplementedError, match="unpack='dot' takes bf16 x"):
        gemv_simd.gemv_w4(x.half(), q, sc.half(), z.half(), G, tiled=tiled, unpack="dot")
    x96, q96, s96, z96, g96 = OP.make_inputs(GemvW4Shape(1, 8, 96, 32), BF16, "cpu", 4)
    with pytest.raises(NotImplementedError, match="unpack='dot' takes bf16 x"):
        gemv_simd.gemv_w4(x96, q96, s96, z96, g96, unpack="dot")
    if not gemv_simd.dot_unpack():
        with pytest.raises(NotImplementedError, match="unpack='dot' takes bf16 x"):
            run(unpack="dot")
        return
    assert torch.equal(auto, run(unpack="dot"))
    assert not torch.equal(auto, run(unpack="cvt"))
    assert not torch.equal(auto, run(unpack="denormal"))


@pytest.mark.parametrize("tiled", [False, True])
def test_dot_unpack_reads_each_nibble_with_its_x(tiled):
    """The check can fail: x with k and k + 4 swapped in every 8 (the two values each lane of the
    VDPBF16PS loops pairs) gives a wrong answer."""
    if not gemv_simd.dot_unpack():
        pytest.skip("this build has no VDPBF16PS loop (AVX512_BF16)")
    shape = GemvW4Shape(1, 16, 256, 64)
    x, qw, sc, z, G = OP.make_inputs(shape, BF16, "cpu", 0)
    ref = OP.reference(x, qw, sc, z, G)
    q = gemv_simd.tile_int4_rows(qw) if tiled else qw
    assert rel_err(gemv_simd.gemv_w4(x, q, sc, z, G, tiled=tiled, unpack="dot"), ref) < 1e-2
    xs = x.view(1, -1, 2, 4).flip(2).reshape(1, -1)   # k and k + 4 swapped in every 8
    assert rel_err(gemv_simd.gemv_w4(xs, q, sc, z, G, tiled=tiled, unpack="dot"), ref) > 5e-2


def test_denormal_unpack_is_used_on_amd():
    from kernels import cbuild
    if cbuild.default_march() != "native":  # the CPU's flags say nothing of another target's
        pytest.skip(f"the C kernels are built for {cbuild.default_march()} (DECODEWALL_MARCH)")
    with open("/proc/cpuinfo") as f:
        info = f.read()
    amd = "AuthenticAMD" in info and " avx2" in info and " f16c" in info
    assert gemv_simd.denormal_unpack() == amd


@pytest.mark.slow  # torch.compile: seconds of compiling
@pytest.mark.parametrize("shape, dtype", [(GemvW4Shape(3, 24, 128, 32), F32),
                                          (GemvW4Shape(1, 40, 256, 128), BF16)], ids=str)
def test_compiled_matches_reference(shape, dtype):
    check_impl("torch_compiled", shape, dtype)


@pytest.mark.parametrize("dtype", [F16, F32])
@pytest.mark.parametrize("shape", [GemvW4Shape(1, 37, 128, 32), GemvW4Shape(5, 20, 128, 64),
                                   GemvW4Shape(2, 9, 256, 128)], ids=str)
@pytest.mark.parametrize("split_k", [None, 2])
def test_triton_interpreted(dtype, shape, split_k):
    pytest.importorskip("triton")
    check_impl("triton_w4", shape, dtype, split_k=split_k)
    from kernels.triton_split import scratch_is_zero  # the split's workspace and counters are
    assert scratch_is_zero()  # zero again for the next call


def test_triton_split_k_policy(monkeypatch):
    """On a 132-SM GPU: M = 1 splits only where 16-row programs leave SMs idle (none of the
    Llama shapes); tl.dot toward 2 programs an SM of 64 rows, each split 1024 of K deep or
    more; no GPU, no split."""
    triton_common = pytest.importorskip("kernels.gemv.triton_common")
    cuda = torch.device("cuda")
    assert triton_common.split_for(1, 8192, 8192, 1, False, torch.device("cpu")) == 1
    monkeypatch.setattr(triton_common, "num_sms", lambda device: 132)
    want = {(1, 57344, 8192): 1, (1, 8192, 28672): 1, (1, 8192, 8192): 1, (1, 2048, 8192): 2,
            (4, 1024, 8192): 4, (16, 6144, 4096): 4, (16, 4096, 4096): 4,
            (16, 28672, 4096): 1, (16, 4096, 14336): 8, (64, 4096, 4096): 4}
    for (M, N, K), split in want.items():
        use_dot, block_m = triton_common.batch_path(M)
        assert triton_common.split_for(M, N, K, block_m, use_dot, cuda) == split, (M, N, K)


def test_two_warp_dot_tiles_are_not_tuned_on_fp32():
    """The 2-warp tl.dot tiles hold their codes as fp32 with fp32 x, and spill there."""
    mod = pytest.importorskip("kernels.gemv.triton_w4")

    def warps(dtype):
        x = torch.zeros(16, 64, dtype=dtype)
        return sorted({c.num_warps for c in mod._prune(mod._ALL_CONFIGS, {"x_ptr": x},
                                                       BLOCK_M=16, USE_DOT=True)})
    assert warps(BF16) == warps(F16) == [2, 4, 8]
    assert warps(F32) == [4, 8]


def test_triton_refuses_unaligned_words():
    pytest.importorskip("triton")
    x, qw, s, z, G = OP.make_inputs(GemvW4Shape(1, 8, 64, 32), F16, "cpu", 0)
    shifted = torch.empty(qw.numel() + 1, dtype=torch.uint8)[1:].view(qw.shape)
    shifted.copy_(qw)
    with pytest.raises(ValueError, match="4-byte boundaries"):
        OP.impls["triton_w4"](x, shifted, s, z, G)


@pytest.mark.slow
@pytest.mark.parametrize("M, dtype, G, split_k", [(1, F16, 64, None), (3, F16, 64, None),
                                                  (6, F16, 64, None), (6, F32, 32, None),
                                                  (1, F16, 64, 2), (6, F16, 64, 2)])
def test_triton_every_config_interpreted(M, dtype, G, split_k, monkeypatch):
    """Every config the GPU tuner may pick (GROUPS = BLOCK_K / G per step, both nibble
    conversions, the M = 1 accumulator in the words' layout (X3D); tl.dot (M > 4) in both
    orientations, down to G = 32, whose halves are the smallest K a tl.dot takes), on a shape
    where the steps overrun K and the rows overrun N; with split-K too."""
    pytest.importorskip("triton")
    import kernels.gemv.triton_w4 as mod
    shape = GemvW4Shape(M, 20, 640, G)
    helpers.check_every_config(
        monkeypatch, mod, "_w4_kernel", M > 4,
        lambda: check_impl("triton_w4", shape, dtype, seed=3, split_k=split_k))


@pytest.mark.parametrize("kw, msg", [
    (dict(M=1, N=4, K=100, group_size=32), "K=100 is not a multiple of group_size=32"),
    (dict(M=1, N=4, K=33, group_size=32), "K=33 must be even"),
    (dict(M=1, N=4, K=256, group_size=48), "group_size=48 is not allowed"),
    (dict(M=1, N=4, K=256, group_size=16), "allowed: 32, 64, 128, 256"),
    (dict(M=0, N=4, K=256), "M must be a positive"),
])
def test_bad_shapes(kw, msg):
    with pytest.raises(ValueError, match=msg):
        OP.shape(**kw)


def test_mismatched_arguments():
    x, qw, s, z, G = OP.make_inputs(GemvW4Shape(1, 8, 64, 32), F32, "cpu", 0)
    with pytest.raises(ValueError, match="zeros must have x's dtype"):
        OP.impls["simd_c"](x, qw, s, z.half(), G)
    with pytest.raises(ValueError, match="not a multiple of group_size"):
        OP.impls["simd_c"](x, qw, s, z, 256)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["triton_w4", "torch_int4pack_mm", "torch_dequant"])
@pytest.mark.parametrize("dtype", [BF16, F16])
@pytest.mark.parametrize("shape", [GemvW4Shape(1, 4096, 4096, 128), GemvW4Shape(16, 1000, 2048, 32),
                                   GemvW4Shape(3, 40, 256, 64), GemvW4Shape(64, 512, 512, 256)], ids=str)
def test_cuda_impls(name, dtype, shape):
    try:
        check_impl(name, shape, dtype, device="cuda")
    except NotImplementedError as e:
        if name.startswith("triton"):  # ours takes every case here; a builtin may refuse one
            raise
        pytest.skip(str(e))


def test_scalar_fallback_without_avx2(tmp_path):
    """The C source built for a baseline x86-64 (no AVX2/F16C, as on CPUs without them) still
    computes both layouts correctly: its scalar path must know the tiled layout too. It has no
    denormal unpack: asked for it, it returns 2 (gemv_w4 raises NotImplementedError)."""
    lib = helpers.build_baseline_x86(gemv_simd.library, tmp_path)
    assert lib.w4_denormal_unpack() == 0
    for shape, tiled in ((GemvW4Shape(1, 13, 512, 128), True), (GemvW4Shape(3, 10, 256, 32), True),
                         (GemvW4Shape(1, 5, 96, 32), False), (GemvW4Shape(1, 134, 2 * KBK, 128), True),
                         (GemvW4Shape(2, 130, 3 * KBK, 64), True)):
        x, qw, s, z, G = OP.make_inputs(shape, F32, "cpu", 1)
        q = gemv_simd.tile_int4_rows(qw) if tiled else qw
        y = torch.full((shape.M, shape.N), float("nan"))
        kw8 = (shape.K // 8 + 7) // 8 * 8
        scratch = torch.empty(shape.M * 8 * kw8 + shape.M * (shape.K // G))
        for unpack, rc in ((2, 2), (0, 0)):
            assert lib.gemv_w4(x.data_ptr(), 0, shape.M, shape.K, q.data_ptr(), s.data_ptr(),
                               z.data_ptr(), shape.N, G, y.data_ptr(), scratch.data_ptr(), 1,
                               int(tiled), unpack, y.data_ptr(), 0) == rc
        assert rel_err(y, OP.reference(x, qw, s, z, G)) < 1e-4


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [GemvW4Shape(1, 1000, 4096, 128), GemvW4Shape(3, 40, 2048, 64),
                                   GemvW4Shape(16, 1000, 4096, 32)], ids=str)
def test_cuda_split_k(shape):
    """K split on the GPU on both paths (at these test shapes the policy splits only tl.dot's)."""
    helpers.check_split_k(check_impl, "triton_w4", shape)


@pytest.mark.cuda
@pytest.mark.parametrize("use_dot", [False, True])
def test_cuda_every_config(use_dot, monkeypatch):
    """Every config the tuner may pick, compiled for the GPU, bf16: the tuner checks none (the
    PK configs where their PTX compiles: test_w4_packed.py checks them)."""
    import kernels.gemv.triton_w4 as mod
    shape = GemvW4Shape(16, 1000, 2048, 32) if use_dot else GemvW4Shape(1, 4096, 4096, 128)
    pk = mod.pk_compiles(torch.empty(0, device="cuda"))
    helpers.check_every_config(monkeypatch, mod, "_w4_kernel", use_dot,
                               lambda: check_impl("triton_w4", shape, BF16, device="cuda", seed=4),
                               keep=lambda c: pk or not c.kwargs.get("PK"))


@pytest.mark.cuda
@pytest.mark.slow
def test_cuda_compiled():
    """torch.compile on CUDA, one shape (tens of seconds of compiling: not in the device check)."""
    check_impl("torch_compiled", GemvW4Shape(1, 4096, 4096, 128), BF16, device="cuda")
