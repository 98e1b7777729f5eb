"""The op contract: shapes from keyword values, rel_err, register_impl's rules, dtype names."""
import math

import pytest
import torch

from kernels import OPS, dtype_name, parse_dtype, register_impl, rel_err
from tests import helpers


def test_shape_field_errors():
    with pytest.raises(ValueError, match="no shape field Q"):
        OPS["gemv_bf16"].shape(M=1, N=2, K=3, Q=4)
    with pytest.raises(ValueError, match="needs K"):
        OPS["gemv_bf16"].shape(M=1, N=2)


def test_rel_err_flags_nan_and_shape():
    ref = torch.ones(3, dtype=torch.float64)
    assert rel_err(torch.tensor([1.0, float("nan"), 1.0]), ref) == math.inf
    assert rel_err(torch.tensor([1.0, 1.0, 1.1]), ref) == pytest.approx(0.1 / math.sqrt(3))
    with pytest.raises(ValueError):
        rel_err(torch.ones(4), ref)


def test_register_impl_rejects_bad_metadata():
    with pytest.raises(ValueError, match="unknown op"):
        register_impl("nope")(lambda x: x)
    with pytest.raises(ValueError, match="unknown impl kind"):
        register_impl("copy", kind="magic")(lambda x: x)
    with pytest.raises(ValueError, match="already has"):
        register_impl("copy", "torch_copy")(lambda x: x)
    with pytest.raises(ValueError, match="unknown dtype"):
        parse_dtype("float7")
    for name in (123, " ", ("a",)):  # a results file keeps the name as a string
        with pytest.raises(ValueError, match="non-empty string"):
            register_impl("copy", name)(lambda x: x)
    assert 123 not in OPS["copy"].impls


def test_a_baseline_flag_is_kept_as_true_or_false(monkeypatch):
    """A results file takes baseline as true or false only: a plugin's baseline=1 is stored as
    True, not written as 1 into records that show would then refuse."""
    monkeypatch.setattr(OPS["copy"], "impls", dict(OPS["copy"].impls))
    register_impl("copy", "plug_copy", baseline=1)(lambda src: src.clone())
    assert OPS["copy"].impls["plug_copy"].baseline is True



@pytest.mark.parametrize("name, dtype", [
    ("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16), ("BF16", torch.bfloat16),
    ("float16", torch.float16), ("fp16", torch.float16), ("half", torch.float16),
    ("Half", torch.float16), ("float32", torch.float32), ("fp32", torch.float32),
    ("float", torch.float32), ("FLOAT32", torch.float32), ("int8", torch.int8),
    ("uint8", torch.uint8), (torch.bfloat16, torch.bfloat16)])
def test_dtype_names_and_aliases(name, dtype):
    """--dtype and register_impl(dtypes=...) take each alias in any case; a wrong alias would
    measure (and label) every case in another dtype than asked."""
    assert parse_dtype(name) is dtype
    assert parse_dtype(dtype_name(dtype)) is dtype


def test_rel_err_wants_the_shape_not_only_the_element_count():
    """A transposed output has the reference's elements in another order: refused, not compared
    element by element after a reshape or a broadcast."""
    ref = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    with pytest.raises(ValueError, match="shape"):
        rel_err(ref.T.contiguous(), ref)
    with pytest.raises(ValueError, match="shape"):
        rel_err(ref.reshape(1, 6), ref.reshape(6))
    assert rel_err(torch.zeros(2), torch.zeros(2, dtype=torch.float64)) == 0.0
    # a zero reference: the error is the output's norm, not 0 (nor a division by zero)
    zero = torch.zeros(2, dtype=torch.float64)
    assert rel_err(torch.ones(2), zero) == pytest.approx(math.sqrt(2))


CPU_RETURNING = [
    pytest.param(op.name, impl.name, shape, dtype, id=f"{op.name}-{impl.name}-{dtype_name(dtype)}")
    for op in OPS.values() if not op.collective
    for impl in op.impls.values() if "cpu" in impl.backends and impl.builtin
    for dtype in impl.dtypes
    for shape in [next((sh for sh, dt in op.smoke if dt == dtype), None)] if shape is not None]


@pytest.mark.parametrize("op_name, impl_name, shape, dtype", CPU_RETURNING)
def test_a_returned_output_is_the_callers_not_a_reused_buffer(op_name, impl_name, shape, dtype):
    """Called without out=, an impl returns a tensor of its own: a second call on other inputs
    leaves the first result as it was (a kernel's reused scratch buffer, returned, would not)."""
    op = OPS[op_name]
    impl = op.impls[impl_name]
    try:
        first = impl(*op.make_inputs(shape, dtype, "cpu", 0))
    except NotImplementedError as e:  # a smoke shape every impl on the CPU takes
        helpers.skip_if_machine_lacks(e)
    kept = first.clone()
    impl(*op.make_inputs(shape, dtype, "cpu", 1))
    assert torch.equal(first, kept)


def _smoke_case(op, impl):
    """A smoke (shape, dtype) of op that impl takes, fp32 first (the Triton interpreter's), or None."""
    for dtype in sorted(impl.dtypes, key=lambda d: d != torch.float32):
        shape = next((sh for sh, dt in op.smoke if dt == dtype), None)
        if shape is not None:
            return shape, dtype
    return None


CPU_OUT_TAKING = [
    pytest.param(op.name, impl.name, id=f"{op.name}-{impl.name}")
    for op in OPS.values() if not op.collective
    for impl in op.impls.values()
    if impl.out_arg and impl.builtin and _smoke_case(op, impl) is not None
    and ("cpu" in impl.backends or impl.kind == "triton")]


@pytest.mark.parametrize("op_name, impl_name", CPU_OUT_TAKING)
def test_an_out_that_is_not_the_output_is_refused_and_left_alone(op_name, impl_name):
    """out= of another shape, a non-float dtype or another device is a ValueError before
    anything is written: a kernel stores through out's pointer, so one element short of the output
    would be written past its end (into whatever the caller keeps there)."""
    op = OPS[op_name]
    impl = op.impls[impl_name]
    shape, dtype = _smoke_case(op, impl)
    args = op.make_inputs(shape, dtype, "cpu", 0)
    out_shape, out_dtype = op.out_spec(shape, dtype)
    try:
        impl(*args, out=torch.empty(out_shape, dtype=out_dtype))
    except NotImplementedError as e:  # a peer not installed or CUDA-only, a C compiler missing
        if impl.fn.__module__.endswith(".peers"):
            pytest.skip(str(e))
        helpers.skip_if_machine_lacks(e)
    n = math.prod(out_shape)
    short = list(out_shape)
    short[-1] -= 1
    bad = {"last dim one short": short, "first dim one long": [out_shape[0] + 1, *out_shape[1:]]}
    for what, bad_shape in bad.items():
        backing = torch.full((2 * n + 64,), 7.0, dtype=out_dtype)
        out = backing[:math.prod(bad_shape)].view(bad_shape)
        with pytest.raises(ValueError, match="out"):
            impl(*args, out=out)
        assert bool((backing == 7.0).all()), f"{what}: written before the refusal"
    with pytest.raises(ValueError, match="out"):
        impl(*args, out=torch.empty(out_shape, dtype=torch.int32))
    with pytest.raises(ValueError):  # some say "every tensor on the CPU"
        impl(*args, out=torch.empty(out_shape, dtype=out_dtype, device="meta"))


@pytest.mark.parametrize("op_name", ["gemv_bf16", "gemv_w8", "gemv_w4", "paged_attention",
                                     "paged_attention_kv8"])
def test_kernel_tolerances_by_hand(op_name):
    """Every kernel test judges err <= op.tol(dtype), so a looser table would weaken all of them
    at once and none would notice: the values are pinned here. An fp32-accumulating kernel whose
    output is rounded once to the dtype sits well inside them: the reference itself rounded to
    bf16 / fp16 / fp32 is at most half the tolerance away."""
    op = OPS[op_name]
    assert {dt: op.tol(dt) for dt in (torch.bfloat16, torch.float16, torch.float32)} == \
        {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-4}
    shape, _ = op.smoke[0]
    ref = op.reference(*op.make_inputs(shape, torch.float32, "cpu", 0))
    for dt in (torch.bfloat16, torch.float16, torch.float32):
        assert rel_err(ref.to(dt), ref) <= op.tol(dt) / 2, dt
