"""gemv_w4's PK path (kernels/gemv/triton_w4.py, PK=1: fp16x2 arithmetic on the codes, M = 1,
bf16 x). Its PTX runs in the emulator against a numpy model of its roundings (w4_pk_model), bit
for bit, on every code value and on random segments; the model runs whole realistic GEMVs
against the float64 reference; the kernel's Triton twin (the interpreter's) runs every PK config
on shapes whose steps overrun K and whose tiles overrun N, with split-K."""
from fractions import Fraction

import numpy as np
import pytest
import torch

from kernels import OPS, rel_err
from kernels.gemv import GemvW4Shape
from tests import helpers, ptx_emu
from tests.kernels.gemv import w4_pk_model as model

pytest.importorskip("triton")
import triton  # noqa: E402
import triton.language as tl  # noqa: E402,F401  (visible to the jit function below)

import kernels.gemv.triton_w4 as w4mod  # noqa: E402

OP = OPS["gemv_w4"]
BF16 = torch.bfloat16


def x_segments(n: int, seed: int) -> np.ndarray:
    """[n, 16] x words (32 bf16 a segment): scales from bf16 subnormals to 2^110, zeros of
    both signs, a segment of zeros, one with an outlier 2^20 times its neighbours."""
    rng = np.random.default_rng(seed)
    segs = []
    for i in range(n):
        x = torch.from_numpy(rng.standard_normal(32) * 2.0 ** rng.integers(-135, 100)).to(BF16)
        if i % 5 == 0:
            x[torch.from_numpy(rng.integers(0, 32, 6))] = 0.0
        if i % 7 == 0:
            x[3] = -0.0
        if i % 11 == 0:
            x[5] = x[5] * 2.0 ** 20
        segs.append(x)
    segs[0] = torch.zeros(32, dtype=BF16)
    return torch.stack(segs).view(torch.int32).numpy().view(np.uint32)


def values(words: np.ndarray) -> np.ndarray:
    """x words [..., 16] -> their 32 bf16 values (float64), in order."""
    return torch.from_numpy(np.ascontiguousarray(words).view(np.int32)).view(BF16).double().numpy()


def emulate_x(asm: str, seg: np.ndarray, load: bool) -> list[int]:
    if load:
        mem = {0x4000 + 4 * i: int(v) for i, v in enumerate(seg)}
        return ptx_emu.run(asm, [0x4000], 18, load32=mem.__getitem__)
    return ptx_emu.run(asm, [int(v) for v in seg], 18)


def x_mismatches(asm: str, segs: np.ndarray, load: bool) -> int:
    pairs, X, u = model.x_side(segs)
    bad = 0
    for s, seg in enumerate(segs):
        out = emulate_x(asm, seg, load)
        bad += (out[:16] != [int(p) for p in pairs[s]]
                or ptx_emu.as_f32(out[16]) != -np.float32(X[s])
                or ptx_emu.as_f32(out[17]) != np.float32(u[s]))
    return bad


@pytest.mark.parametrize("load", [False, True], ids=["registers", "load"])
def test_pk_x_ptx_matches_the_model(load):
    """The x side, bit for bit, and what its outputs mean: the pairs hold x 2^k (the odd codes'
    x 2^(k-4)) with the largest |x| 2^k in [2^10, 2^11), -X the sum of the x negated,
    u = 2^(24-k)."""
    import kernels.gemv.triton_w4 as w4
    segs = x_segments(80, 0)
    assert x_mismatches(w4._pk_x_ptx(load), segs, load) == 0
    pairs, X, u = model.x_side(segs)
    for s in range(len(segs)):
        x = values(segs[s])
        if np.abs(x).max() >= 2.0 ** 113:  # k clamped: x 2^k may pass fp16's range
            continue
        k = 24 - int(np.log2(u[s]))
        halves = [(int(p) >> (16 * h)) & 0xFFFF for p in pairs[s] for h in (0, 1)]
        got = model.f16(np.array(halves, np.uint16)).reshape(4, 4, 2)  # [word, pair, half]
        for j in range(4):
            for i in range(8):
                want = x[8 * j + i] * 2.0 ** (k - 4 if i % 2 else k)
                if abs(want) >= 2.0 ** -14:  # fp16 normals hold bf16's 8 bits exactly
                    assert got[j, i % 4, i // 4] == want, (s, j, i)
        if np.abs(x).max() >= 2.0 ** -116:  # k not clamped
            assert 2 ** 10 <= np.abs(x).max() * 2.0 ** k < 2 ** 11, s
        assert abs(X[s] - x.sum()) <= 1e-6 * np.abs(x).sum() + 1e-45


S_AT, Z_AT = 0x10000, 0x20000  # where the emulated dot finds its scales and zeros


def emulate_dot(asm: str, words, pairs, nX, u, acc, e, s_elems, z_elems) -> float:
    """One row's segment through the dot PTX: scale and zero are element e of the bf16 arrays
    s_elems, z_elems."""
    mem = {}
    for at, elems in ((S_AT, s_elems), (Z_AT, z_elems)):
        bits = np.ascontiguousarray(elems.view(torch.int16).numpy()).view(np.uint16)
        bits = np.concatenate([bits, [0]]) if len(bits) % 2 else bits
        for i, word in enumerate(bits.view(np.uint32)):
            mem[at + 4 * i] = int(word)
    f32 = [int(np.array([v], np.float32).view(np.uint32)[0]) for v in (nX, u, acc)]
    out = ptx_emu.run(asm, [int(v) for v in words] + [int(p) for p in pairs] + f32
                      + [e, S_AT, Z_AT], 1, load32=mem.__getitem__)
    return ptx_emu.as_f32(out[0])


def dot_expected(t: float, nX: float, u: float, acc: float, s: float, z: float) -> float:
    """The dot's fp32 tail, exactly: acc + s (t u - z X), each step rounded once."""
    F32 = ptx_emu.F32
    r = lambda v: F32.decode(F32.encode(v))  # noqa: E731
    fr = lambda v: Fraction(float(v))  # noqa: E731
    tu = r(fr(t) * fr(u))
    v = r(fr(z) * fr(nX) + tu)
    return float(r(fr(s) * v + fr(acc)))


def dot_mismatches(asm: str, words: np.ndarray, pairs: np.ndarray, X: np.ndarray,
                   u: np.ndarray, seed: int = 7) -> int:
    """Emulated segments (word s against pairs s, with a random accumulator, scale and zero)
    that differ from the model's chain and the exact tail."""
    t = model.dot(words[:, None, :].swapaxes(0, 1), pairs)[0]
    g = torch.Generator().manual_seed(seed)
    sc = (torch.rand(64, generator=g) * 0.02 + 1e-3).to(BF16)
    zc = (torch.rand(64, generator=g) * 15).to(BF16)
    bad = 0
    for s in range(len(words)):
        acc = float(np.float32(np.sin(s) * 3))
        e = (7 * s) % 63
        got = emulate_dot(asm, words[s], pairs[s], -X[s], u[s], acc, e, sc, zc)
        want = dot_expected(t[s], -X[s], u[s], acc, sc[e].item(), zc[e].item())
        bad += got != want
    return bad


def code_words(n: int, seed: int) -> np.ndarray:
    """[n, 4] words: each code value in every nibble of every word, then random words."""
    every = [[q * 0x11111111] * 4 for q in range(16)]
    rng = np.random.default_rng(seed)
    rand = rng.integers(0, 2 ** 32, size=(n - 16, 4), dtype=np.uint64)
    return np.concatenate([np.array(every, np.uint64), rand]).astype(np.uint32)


def test_pk_dot_ptx_matches_the_model():
    """A row's segment, bit for bit: the fp16 chain as the model has it, then
    acc + s (u t - z X) with the scale and zero it loads; and what t means: the sum of
    x q 2^(k-24) over the 32 codes, to the fp16 chain's accuracy."""
    import kernels.gemv.triton_w4 as w4
    segs = x_segments(80, 1)
    pairs, X, u = model.x_side(segs)
    words = code_words(80, 2)
    assert dot_mismatches(w4._pk_dot_ptx(), words, pairs, X, u) == 0
    t = model.dot(words[:, None, :].swapaxes(0, 1), pairs)[0]
    for s in range(len(words)):
        q = np.array([(int(words[s, j]) >> (4 * i)) & 15 for j in range(4) for i in range(8)])
        xs = values(segs[s])
        exact = (xs * q).sum() / u[s]
        if np.abs(xs).max() < 2.0 ** 113:
            assert abs(t[s] - exact) <= 1e-2 * (np.abs(xs) * q).sum() / u[s] + 2.0 ** -19, s


@pytest.mark.parametrize("which, old, new", [
    ("dot", "0x00F000F0", "0x00F000F1"),             # a code mask
    ("dot", "shr.b32 v, $3, 8;", "shr.b32 v, $3, 7;"),  # a shift
    ("dot", "fma.rn.f16x2 acc, c, $10, acc;", "fma.rn.f16x2 acc, c, $11, acc;"),  # a pair
    ("dot", "add.rn.f16 hl, hl, hh;", "add.rn.f16 hl, hl, hl;"),  # the halves
    ("dot", "mad.wide.s32 za, $24, 2, $26;", "mad.wide.s32 za, $24, 2, $25;"),  # the zero
    ("dot", "fma.rn.f32 fl, zf, $21, fl;", "fma.rn.f32 fl, sf, $21, fl;"),  # the zero term
    ("x", "0x82008400", "0x82008380"),               # the scale of the even x
    ("x", "0x07000000", "0x07800000"),               # u
    ("x", "max.u32 mx, lo, hi;", "max.u32 mx, lo, lo;"),  # the larger half's exponent
    ("x", "cvt.rn.f16x2.f32 $5, f13, f9;", "cvt.rn.f16x2.f32 $5, f9, f13;"),  # a pair's order
    ("x", "fma.rn.f32 xe, xo, 0f41800000, xe;", "fma.rn.f32 xe, xo, 0f41000000, xe;"),  # X
])
def test_pk_ptx_checks_catch_a_mutation(which, old, new):
    """The emulated checks can fail: one changed instruction is caught."""
    import kernels.gemv.triton_w4 as w4
    if which == "dot":
        asm = w4._pk_dot_ptx()
        assert old in asm
        pairs, X, u = model.x_side(x_segments(24, 1))
        assert dot_mismatches(asm.replace(old, new, 1), code_words(24, 2), pairs, X, u) > 0
    else:
        asm = w4._pk_x_ptx(False)
        assert old in asm
        assert x_mismatches(asm.replace(old, new, 1), x_segments(24, 0), False) > 0


@pytest.mark.parametrize("K, seed", [(4096, 0), (8192, 1)])
def test_pk_error_on_realistic_gemvs(K, seed):
    """The PTX's arithmetic (the model) on Llama-like rows, G = 128, against the float64
    reference: about 2.5e-3 relative L2 with the output's bf16 rounding (1.6e-3 of it alone),
    a quarter of bf16's tolerance."""
    shape = GemvW4Shape(1, 512, K, 128)
    x, qw, s, z, G = OP.make_inputs(shape, BF16, "cpu", seed)
    ref = OP.reference(x, qw, s, z, G)
    y = torch.from_numpy(model.gemv(x, qw, s, z, G))[None]
    err = rel_err(y.to(BF16), ref)
    assert err < 3.5e-3 < OP.tol(BF16)
    assert rel_err(y, ref) < 2.5e-3  # before the output's rounding


def test_pk_model_sees_a_wrong_nibble_order():
    """The realistic-GEMV check can fail: the model fed byte-swapped nibbles is far off."""
    x, qw, s, z, G = OP.make_inputs(GemvW4Shape(1, 64, 1024, 128), BF16, "cpu", 0)
    ref = OP.reference(x, qw, s, z, G)
    y = torch.from_numpy(model.gemv(x, (qw << 4) | (qw >> 4), s, z, G))[None]
    assert rel_err(y, ref) > 0.1


PK_SHAPES = [(GemvW4Shape(1, 20, 1280, 128), None), (GemvW4Shape(1, 37, 640, 32), 2),
             (GemvW4Shape(1, 9, 2048, 256), None), (GemvW4Shape(1, 40, 3072, 64), 2)]


def pk_configs():
    import kernels.gemv.triton_w4 as mod
    return [c for c in mod._w4_kernel.configs_for(False) if c.kwargs.get("PK")]


def run_fp32_out(shape, split_k, seed=3):
    """triton_w4 at an M = 1 bf16 shape, its sums stored as fp32 (no output rounding):
    (rel err, y)."""
    x, qw, s, z, G = OP.make_inputs(shape, BF16, "cpu", seed)
    ref = OP.reference(x, qw, s, z, G)
    out = torch.full((1, shape.N), float("nan"), dtype=torch.float32)
    OP.impls["triton_w4"].fn(x, qw, s, z, G, out=out, split_k=split_k)
    return rel_err(out, ref)


@pytest.mark.parametrize("capability, kept", [((7, 5), False), ((8, 0), False), ((8, 6), False),
                                              ((8, 9), False), ((9, 0), True), ((10, 0), True)])
def test_pk_configs_are_tuned_only_where_their_ptx_compiles(monkeypatch, capability, kept):
    """ptxas refuses the PK step's PTX below sm_90 (tests/bench/gpucheck/test_sass.py compiles
    it for sm_86 and sm_90): both INT4 tuners' prunes leave the PK configs out on such a GPU
    (an A100, an L4) and keep them all from Hopper on, asking the device of x."""
    import kernels.gemv.triton_splitk as sk

    class X:  # what the prunes read of a bf16 tensor on the second GPU (none here)
        dtype = BF16
        device = torch.device("cuda", 1)
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda device=None: asked.append(device) or capability)
    w4 = [c for c in w4mod._prune(w4mod._ALL_CONFIGS, {"x_ptr": X()}, BLOCK_M=1, USE_DOT=False)
          if c.kwargs.get("PK")]
    split = [c for c in sk._w4_prune(sk._W4_CONFIGS, {"x_ptr": X(), "K": 8192}, M=1, G=128)
             if c.kwargs.get("PK")]
    assert len(w4) == (len(pk_configs()) if kept else 0)
    assert len(split) == (sum(bool(c.kwargs.get("PK")) for c in sk._W4_CONFIGS) if kept else 0)
    assert asked and set(asked) == {torch.device("cuda", 1)}


def test_pk_twin_every_config_interpreted(monkeypatch):
    """Every PK config through its Triton twin (fp32 sums, so the only error left is fp32's):
    tiles past N (rows clamped, never stored), a last step past K (masked), split-K, G = 32 to
    256."""
    import kernels.gemv.triton_w4 as mod
    configs = pk_configs()
    assert len(configs) >= 4 and all(c.kwargs["ASM"] == 0 for c in configs)
    kernel = mod._w4_kernel
    for cfg in configs:
        monkeypatch.setattr(mod, "_w4_kernel", helpers.FixedConfig(kernel, cfg))
        for shape, split in PK_SHAPES:
            err = run_fp32_out(shape, split)
            assert err < 1e-6, (cfg, shape, split, err)
        helpers.check_impl(OP, "triton_w4", PK_SHAPES[0][0], BF16, seed=5)  # bf16 out too


_X_WORD = w4mod._pk_x_word


@triton.jit
def _x_word_swapped(a0, a1, a2, a3, sc, sco):
    """A planted bug: the odd codes' x scaled as the even ones' and the other way round."""
    return _X_WORD(a0, a1, a2, a3, sco, sc)


def test_pk_twin_check_catches_a_planted_bug(monkeypatch):
    """The twin check can fail: swapped x scales are caught."""
    kernel = w4mod._w4_kernel
    monkeypatch.setattr(w4mod, "_w4_kernel", helpers.FixedConfig(kernel, pk_configs()[0]))
    monkeypatch.setattr(w4mod, "_pk_x_word", _x_word_swapped)
    assert run_fp32_out(*PK_SHAPES[0]) > 0.1


def test_pk_configs_run_only_at_m1_bf16():
    """The tuner times PK configs only where they run as such (M = 1, bf16 x)."""
    import kernels.gemv.triton_w4 as mod
    configs = mod._ALL_CONFIGS
    n_pk = sum(bool(c.kwargs.get("PK")) for c in configs)
    assert n_pk >= 4

    def kept(M, dtype):
        x = torch.zeros(M, 64, dtype=dtype)
        return sum(bool(c.kwargs.get("PK"))
                   for c in mod._prune(configs, {"x_ptr": x}, BLOCK_M=M, USE_DOT=False))
    assert kept(1, BF16) == n_pk
    assert kept(1, torch.float16) == kept(1, torch.float32) == kept(2, BF16) == 0


def test_pk_gets_x_on_a_16_byte_boundary(monkeypatch):
    """The PK path loads x 16 bytes at a time: the launcher hands the kernel an aligned x, a
    copy where the caller's is not."""
    seen = []

    class Recorder:
        fixed_meta: dict = {}

        def __getitem__(self, grid):
            return lambda *args, **kw: seen.append(args[0].data_ptr())
    monkeypatch.setattr(w4mod, "_w4_kernel", Recorder())
    x, qw, s, z, G = OP.make_inputs(GemvW4Shape(1, 8, 256, 64), BF16, "cpu", 0)
    shifted = torch.empty(257, dtype=BF16)[1:].view(1, 256)  # 2 bytes past the boundary
    shifted.copy_(x)
    assert shifted.data_ptr() % 16
    OP.impls["triton_w4"].fn(shifted, qw, s, z, G)
    OP.impls["triton_w4"].fn(x, qw, s, z, G)
    assert seen[0] % 16 == 0 and seen[1] == x.data_ptr()


@pytest.mark.cuda
@pytest.mark.parametrize("shape, split", [(GemvW4Shape(1, 4100, 4096 + 3 * 128, 128), None),
                                          (GemvW4Shape(1, 1000, 2048, 32), 2),
                                          (GemvW4Shape(1, 777, 4096, 256), None)], ids=str)
def test_pk_on_the_gpu_is_the_model(monkeypatch, shape, split):
    """Every PK config's PTX on the GPU against the numpy model of its roundings, sums kept in
    fp32: they differ only by the fp32 tail's roundings and summation order (~1e-7); a GPU
    that flushed the subnormal codes or rounded otherwise would be far off. Tiles past N, a
    last step past K, split-K, G = 32 and 256."""
    helpers.skip_unless_pk_compiles()
    kernel = w4mod._w4_kernel
    x, qw, s, z, G = OP.make_inputs(shape, BF16, "cuda", 11)
    want = torch.from_numpy(model.gemv(x.cpu(), qw.cpu(), s.cpu(), z.cpu(), G))[None]
    ref = OP.reference(x, qw, s, z, G)
    for cfg in pk_configs():
        monkeypatch.setattr(w4mod, "_w4_kernel", helpers.FixedConfig(kernel, cfg))
        out = torch.full((1, shape.N), float("nan"), dtype=torch.float32, device="cuda")
        OP.impls["triton_w4"].fn(x, qw, s, z, G, out=out, split_k=split)
        got = out.cpu().double()
        assert rel_err(got, want) < 1e-5, (cfg, rel_err(got, want))
        assert rel_err(got.to(BF16), ref) < OP.tol(BF16)
