"""copy and read: references and bytes by hand; torch_copy fills its out buffer; the C read probe
counts every element once."""
import pytest
import torch

from kernels import OPS, rel_err
from kernels.probes import simd as probes_simd
from tests import helpers


def test_copy_and_read_references_by_hand():
    src = torch.tensor([1.0, 2.0, 3.5], dtype=torch.float32)
    assert OPS["copy"].reference(src).tolist() == [1.0, 2.0, 3.5]
    assert OPS["read"].reference(src).item() == 6.5


def test_byte_counts():
    c = OPS["copy"]
    assert c.bytes_moved(c.shape(N=1000), torch.float32) == 8000  # read + write
    r = OPS["read"]
    assert r.bytes_moved(r.shape(N=1000), torch.bfloat16) == 2004  # + the fp32 sum


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 1000, (1 << 16) + 3])
def test_torch_copy_writes_every_element_of_out(n, dtype):
    """torch_copy into a NaN-poisoned out buffer, against the reference exactly (tolerance 0)."""
    copy = OPS["copy"]
    assert copy.impls["torch_copy"].out_arg and copy.tol(dtype) == 0.0
    assert helpers.check_impl(copy, "torch_copy", copy.shape(N=n), dtype, seed=n) == 0.0


@pytest.mark.parametrize("n", [1, 31, 128, 4 * 128 * 3 + 17, 1 << 16, (1 << 20) + 5])
def test_c_read_probe_sums_every_element(n):
    """Every element counted once, whatever n is against the 4 streams x 128-byte steps."""
    x = torch.rand(n, dtype=torch.float32) + 0.5
    got = probes_simd.read_simd_c(x)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert rel_err(got, x.double().sum()) < 1e-6
    for i in {0, n // 2, n - 1}:  # one element raised by n, 1000x the tolerance, must show
        y = x.clone()
        y[i] += n
        assert abs(probes_simd.read_simd_c(y).item() - y.double().sum().item()) < 1e-3 * n


def test_c_read_probe_without_avx2_or_openmp(tmp_path):
    lib = helpers.build_baseline_x86(probes_simd.library, tmp_path)
    for n in (5, 4 * 128 * 3 + 17, 100_003):
        x = torch.rand(n) + 0.5
        assert abs(lib.read_sum(x.data_ptr(), n, 2) / x.double().sum().item() - 1) < 1e-6


def test_c_read_probe_refuses_other_dtypes():
    with pytest.raises(NotImplementedError, match="fp32"):
        probes_simd.read_simd_c(torch.ones(8, dtype=torch.bfloat16))


def test_probe_host_footprints_by_hand():
    """On CUDA the reference reads src from the GPU: the host holds its fp32 draw and the float64
    copies, not src itself (counting it there refuses CUDA cases the host can hold)."""
    c, r = OPS["copy"], OPS["read"]
    s = c.shape(N=1000)
    # max(8 B an element drawn, src + 2 float64 copies) for copy; + 1 copy for read; x1.1 margin
    assert c.host_footprint_bytes(s, torch.float32, "cpu") == 22000
    assert c.host_footprint_bytes(s, torch.float32, "cuda") == 17600
    assert r.host_footprint_bytes(s, torch.bfloat16, "cpu") == 11000
    assert r.host_footprint_bytes(s, torch.bfloat16, "cuda") == 8800


def test_probe_shapes_are_bounded():
    """2**34 elements (64 GiB in fp32) is the most the shape takes: a larger N is refused as
    impossible by the shape, not only by the memory check of the machine at hand."""
    from kernels.probes import ProbeShape
    ProbeShape(N=2**34)
    for n in (0, 2**34 + 1):
        with pytest.raises(ValueError):
            ProbeShape(N=n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_outputs_are_what_out_spec_says(dtype):
    """out_spec is the out= buffer an impl fills: read's sum is fp32 whatever the input (a bf16
    buffer would round it far past read's 1e-4)."""
    from kernels.probes import ProbeShape
    s = ProbeShape(N=100)
    (src,) = OPS["copy"].make_inputs(s, dtype, "cpu", 0)
    for op, impl in (("copy", "torch_copy"), ("read", "torch_sum")):
        got = OPS[op].impls[impl](src)
        assert (tuple(got.shape), got.dtype) == OPS[op].out_spec(s, dtype), op
    assert OPS["read"].out_spec(s, dtype) == ((), torch.float32)


def test_probe_tolerances_by_hand():
    """Every probe check judges err <= op.tol(dtype), so a looser table would let a probe that
    skips part of its input pass, and its bandwidth would be counted for bytes it never read:
    the values are pinned here. copy is exact; read's fp32-accumulated sum is held to 1e-4."""
    dts = (torch.float32, torch.float16, torch.bfloat16)
    assert set(OPS["copy"].dtypes) == set(OPS["read"].dtypes) == set(dts)
    assert {dt: OPS["copy"].tol(dt) for dt in dts} == {dt: 0.0 for dt in dts}
    assert {dt: OPS["read"].tol(dt) for dt in dts} == {dt: 1e-4 for dt in dts}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_read_that_misses_one_element_in_1000_fails_its_check(dtype):
    """A read probe that skips one element in 1000 (a tail or a stride gone wrong) reads 0.1%
    fewer bytes than it is credited with: its sum must fail the check, while the fp32 sum of
    every element passes it."""
    from kernels.probes import ProbeShape
    op = OPS["read"]
    (src,) = op.make_inputs(ProbeShape(N=1000), dtype, "cpu", 0)
    ref = op.reference(src)
    assert rel_err(op.impls["torch_sum"](src), ref) <= op.tol(dtype)
    for skipped in (0, 500, 999):
        short = torch.cat([src[:skipped], src[skipped + 1:]]).sum(dtype=torch.float32)
        assert rel_err(short, ref) > op.tol(dtype), skipped
