"""The op contract: shapes from keyword values, rel_err, register_impl's rules, dtype names."""
import math

import pytest
import torch

from kernels import OPS, parse_dtype, register_impl, rel_err


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
