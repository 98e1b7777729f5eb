"""The op contract: shapes from keyword values, rel_err, register_impl's rules, dtype names."""
import math

import pytest
import torch

from kernels import OPS, dtype_name, parse_dtype, register_impl, rel_err
from kernels.triton_util import HAS_TRITON
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
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        register_impl("copy", "on_tpu", backends=["cpu", "tpu"])(lambda x: x)
    with pytest.raises(ValueError, match="cannot name an impl"):  # the case worker's phase
        register_impl("copy", "inputs")(lambda x: x)
    assert "on_tpu" not in OPS["copy"].impls and "inputs" not in OPS["copy"].impls
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



def test_an_impls_metadata_is_kept_as_registered(monkeypatch):
    """Defaults (CPU and CUDA, every dtype of the op), a known issue, the doc's first line; only
    decodewall's own `kernels` package makes a builtin, not a module whose name starts so."""
    monkeypatch.setattr(OPS["copy"], "impls", dict(OPS["copy"].impls))

    def plug(src):
        """Clone it.

        More words that are not the summary."""
        return src.clone()

    register_impl("copy", known_issue="see issue 9")(plug)
    impl = OPS["copy"].impls["plug"]
    assert impl.backends == ("cpu", "cuda") and impl.dtypes == OPS["copy"].dtypes
    assert impl.known_issue == "see issue 9" and impl.doc == "Clone it."
    assert impl.builtin is False and impl.kind == "torch" and impl.out_arg is False

    def lookalike(src):
        return src.clone()
    lookalike.__module__ = "kernels_extra.mine"
    register_impl("copy")(lookalike)
    assert OPS["copy"].impls["lookalike"].builtin is False


def test_supports_says_why_not(monkeypatch):
    """The runner records a skip with this reason: the backend, or the dtype asked and those
    taken."""
    monkeypatch.setattr(OPS["copy"], "impls", dict(OPS["copy"].impls))
    register_impl("copy", "gpu_f32", backends=["cuda"], dtypes=["float32", "bf16"])(lambda s: s)
    impl = OPS["copy"].impls["gpu_f32"]
    assert impl.supports("cpu", torch.float32) == (False, "gpu_f32 runs on cuda, not cpu")
    assert impl.supports("cuda", torch.float16) == \
        (False, "gpu_f32 takes float32, bfloat16, not float16")
    assert impl.supports("cuda", torch.bfloat16) == (True, "")


def test_an_impl_without_out_is_called_without_it(monkeypatch):
    """Calling any impl as `impl(*args, out=buf)` is allowed: one that takes no out= returns its
    own result and leaves buf alone (it is not handed an argument it does not take)."""
    monkeypatch.setattr(OPS["copy"], "impls", dict(OPS["copy"].impls))
    register_impl("copy", "plain")(lambda src: src * 2)
    buf = torch.full((3,), 7.0)
    y = OPS["copy"].impls["plain"](torch.ones(3), out=buf)
    assert y.tolist() == [2.0, 2.0, 2.0] and buf.tolist() == [7.0, 7.0, 7.0]


def test_an_op_is_registered_once():
    """A second op of the same name is refused, not put in place of the first."""
    import dataclasses

    from kernels.registry import register_op
    first = OPS["copy"]
    with pytest.raises(ValueError, match="registered twice"):
        register_op(dataclasses.replace(first, impls={}))
    assert OPS["copy"] is first


def test_shape_errors_name_only_the_required_fields_missing():
    """gemv_w4's group_size has a default, and so does a field with a default_factory."""
    import dataclasses
    with pytest.raises(ValueError, match=r"^gemv_w4 shape needs K$"):
        OPS["gemv_w4"].shape(M=1, N=2)

    @dataclasses.dataclass(frozen=True)
    class Tagged:
        N: int
        tags: tuple = dataclasses.field(default_factory=tuple)
    op = dataclasses.replace(OPS["copy"], name="tagged", shape_type=Tagged, impls={})
    with pytest.raises(ValueError, match=r"^tagged shape needs N$"):
        op.shape()
    assert op.shape(N=3) == Tagged(3, ())


def test_no_tolerance_for_a_dtype_the_op_does_not_list():
    """A tolerance is never made up: a dtype missing from the table is a KeyError, not a default."""
    with pytest.raises(KeyError):
        OPS["gemv_bf16"].tol(torch.float64)


def test_check_out_wants_the_exact_shape_dtype_and_device():
    """Same element count in another shape (a transposed y), float64 (not an op output dtype)."""
    from kernels.common import check_out
    check_out("k", torch.empty(2, 3), (2, 3), torch.device("cpu"))
    check_out("k", None, (2, 3), torch.device("cpu"))
    for bad in (torch.empty(3, 2), torch.empty(6), torch.empty(2, 3, dtype=torch.float64),
                torch.empty(2, 3, device="meta")):
        with pytest.raises(ValueError, match=r"k: out must be float16, bfloat16, float32 \[2, 3\]"):
            check_out("k", bad, (2, 3), torch.device("cpu"))


def test_element_sizes():
    from kernels.common import esize
    assert [esize(d) for d in (torch.int8, torch.uint8, torch.bfloat16, torch.float16,
                               torch.float32, torch.int32)] == [1, 1, 2, 2, 4, 4]


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
    # a float64 output is compared in float64: 2^-40 is not rounded away in float32
    one = torch.ones(1, dtype=torch.float64)
    assert rel_err(one + 2.0**-40, one) == 2.0**-40
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
    and ("cpu" in impl.backends or (impl.kind == "triton" and (HAS_TRITON or impl.baseline)))]


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


def test_what_a_plugin_may_pass_to_register_impl_means_what_it_says(monkeypatch):
    """A C function whose signature Python cannot read (torch.nn.functional.linear is a whole
    gemv_bf16) registers as taking no out= rather than failing the plugin's load ('no signature
    found for builtin'); a backend or dtype given as one string is that name, not its letters
    ('unknown backend 'c''); an empty list, which would make an impl no case runs ('x runs on ,
    not cpu'), is refused."""
    monkeypatch.setattr(OPS["gemv_bf16"], "impls", dict(OPS["gemv_bf16"].impls))
    register_impl("gemv_bf16", "plug_linear", backends="cpu",
                  dtypes="bfloat16")(torch.nn.functional.linear)
    impl = OPS["gemv_bf16"].impls["plug_linear"]
    assert impl.out_arg is False and impl.backends == ("cpu",)
    assert impl.dtypes == (torch.bfloat16,)
    x, w = torch.randn(1, 8), torch.randn(4, 8)
    assert torch.equal(impl(x, w), x @ w.T)
    with pytest.raises(ValueError, match="at least one backend"):
        register_impl("gemv_bf16", "nowhere", backends=[])(lambda x, w: x @ w.T)
    with pytest.raises(ValueError, match="at least one dtype"):
        register_impl("gemv_bf16", "no_dtype", dtypes=[])(lambda x, w: x @ w.T)
    assert "nowhere" not in OPS["gemv_bf16"].impls and "no_dtype" not in OPS["gemv_bf16"].impls


def test_without_triton_its_impls_are_listed_and_skip_saying_why(tmp_path):
    """Where `import triton` fails (macOS, Windows, a broken install) the Triton impls stay
    registered and raise NotImplementedError naming the import error, so a CUDA run records them
    skipped with the reason and `--impl triton_w4` is not called unknown."""
    import os
    import subprocess
    import sys
    stand_in = tmp_path / "triton"
    stand_in.mkdir()
    (stand_in / "__init__.py").write_text("raise ImportError('a stand-in that will not load')\n")
    code = (
        "import json, kernels\n"
        "from kernels import OPS\n"
        "from kernels.triton_util import HAS_TRITON\n"
        "out = {'has': HAS_TRITON, 'impls': {}, 'why': None}\n"
        "for name, op in OPS.items():\n"
        "    t = [i for i in op.impls.values() if i.kind == 'triton' and i.builtin]\n"
        "    out['impls'][name] = [(i.name, list(i.backends)) for i in t]\n"
        "try:\n"
        "    OPS['gemv_w4'].impls['triton_w4'].fn(None, None, None, None, 128)\n"
        "except NotImplementedError as e:\n"
        "    out['why'] = str(e)\n"
        "print(json.dumps(out))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(helpers.REPO)]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    import json
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["has"] is False
    from kernels.attention import TRITON_IMPLS as att
    from kernels.gemv import TRITON_IMPLS as gemv
    want = {**gemv, **att}
    # GemLite (pure Triton, kind "triton") is a peer registered either way: left out here
    names = {op: [n for n, _ in v if not n.startswith("gemlite")]
             for op, v in got["impls"].items() if v}
    assert names == {op: list(v) for op, v in want.items()}
    assert all(b == ["cuda"] for v in got["impls"].values() for _, b in v)
    assert got["why"].startswith("Triton does not import here (ImportError: a stand-in that "
                                 "will not load)")


def test_the_triton_impl_names_listed_for_a_machine_without_triton_are_those_registered():
    """TRITON_IMPLS (what a machine without Triton lists) names exactly the impls the Triton
    modules register, so the two cannot drift apart."""
    pytest.importorskip("triton")
    from kernels.attention import TRITON_IMPLS as att
    from kernels.gemv import TRITON_IMPLS as gemv
    registered = {}
    for name, op in OPS.items():
        mine = [i.name for i in op.impls.values() if i.kind == "triton"
                and i.fn.__module__.startswith(("kernels.gemv.triton", "kernels.attention.triton"))]
        if mine:
            registered[name] = mine
    assert registered == {op: list(v) for op, v in {**gemv, **att}.items()}
