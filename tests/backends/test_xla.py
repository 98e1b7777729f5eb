"""The xla backend on XLA:CPU: the torchax import shim, device identity, every op's lowering impls
against the float64 reference, the smoke suite through the real CLI, and the missing-sync check.

Tests marked `xla` need jax + torchax (`pip install -e '.[xla]'`, then `pytest -m xla`); the
unmarked ones run everywhere, including where torchax is absent.
"""
from __future__ import annotations

import json
import os
import sys
import types

import pytest
import torch

from backends import BACKENDS, best_backend, get_backend
from backends.xla import XLABackend
from bench.case import make_inputs
from kernels import OPS, register_impl, rel_err

from tests.helpers import run_cli

XLA_CASES = [
    pytest.param(op_name, shape, dtype, impl_name,
                 id=f"{op_name}-{impl_name}-{'x'.join(map(str, vars(shape).values()))}-"
                    f"{str(dtype).removeprefix('torch.')}")
    for op_name, op in OPS.items()
    for impl_name, impl in op.impls.items() if "xla" in impl.backends
    for shape, dtype in op.smoke if dtype in impl.dtypes
]


# --- everywhere (no jax needed) ----------------------------------------------------------------

def test_xla_is_registered_but_never_the_default():
    assert BACKENDS["xla"] is XLABackend
    assert best_backend().name in ("cpu", "cuda")


def test_missing_torchax_makes_xla_unavailable_with_a_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchax", None)  # `import torchax` now raises ImportError
    ok, why = XLABackend().available()
    assert not ok and "not installed" in why and "decodewall[xla]" in why


def test_installed_but_broken_jax_is_not_called_missing(monkeypatch):
    from backends import xla
    monkeypatch.setattr(xla.importlib.util, "find_spec", lambda name: object())  # both installed
    why = xla._import_error(ImportError("cannot import name 'x' from 'jax'"))
    assert "installed but do not import" in why and "cannot import name" in why
    assert "not installed" not in why
    monkeypatch.setattr(xla.importlib.util, "find_spec",
                        lambda name: None if name == "torchax" else object())
    assert xla._import_error(ImportError("No module named 'torchax'")).startswith(
        "torchax not installed")


def test_a_platform_jax_cannot_start_is_named_not_blamed_on_torch(monkeypatch):
    jax = pytest.importorskip("jax")
    from backends import xla_compat

    def no_device():
        raise AssertionError()
    monkeypatch.setattr(jax, "devices", no_device)
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    ok, why = XLABackend().available()
    assert not ok and why == "JAX could not start cuda: AssertionError", why
    with pytest.raises(xla_compat.JaxStartError):
        xla_compat.load()


def test_overlapping_shims_leave_torch_as_it_was():
    import threading
    import torch._ops as ops
    from backends.xla_compat import _tolerate_missing_dimname_overloads
    original = ops.OpOverloadPacket.__getattr__

    def enter_and_leave():
        with _tolerate_missing_dimname_overloads():
            pass
    with _tolerate_missing_dimname_overloads():
        other = threading.Thread(target=enter_and_leave)
        other.start()  # it waits for this one: it must not save this patch as torch's own
        other.join(timeout=0.2)
    other.join()
    assert ops.OpOverloadPacket.__getattr__ is original


def test_shim_stubs_only_missing_named_tensor_overloads():
    import torch._ops as ops
    from backends.xla_compat import _tolerate_missing_dimname_overloads
    original = ops.OpOverloadPacket.__getattr__
    with _tolerate_missing_dimname_overloads():
        stub = torch.ops.aten.prod.dim_Dimname  # a stub on torch >= 2.13, the real one before
        assert stub is not None
        assert torch.ops.aten.prod.dim_int is not None  # real overloads are untouched
        with pytest.raises(AttributeError):
            torch.ops.aten.prod.no_such_overload  # other misses still raise
    assert ops.OpOverloadPacket.__getattr__ is original  # undone on exit
    if "dim_Dimname" not in torch.ops.aten.prod.overloads():
        with pytest.raises(AttributeError):
            torch.ops.aten.prod.dim_Dimname  # and outside the import, torch is as it was


class _NoContextEnv:
    """An Environment of another torchax: no `with env:`, the first thing the backend does."""


def test_a_torchax_that_imports_but_does_not_run_is_unavailable_with_its_version(monkeypatch):
    from backends import xla_compat
    fake = types.ModuleType("torchax")
    fake.__version__ = "0.0.99"
    monkeypatch.setitem(sys.modules, "torchax", fake)
    monkeypatch.setattr(xla_compat, "load", lambda: (fake, _NoContextEnv()))
    ok, why = XLABackend().available()
    assert not ok and "\n" not in why, why
    assert why.startswith("torchax 0.0.99 ") and "tested with" in why and "torchax==" in why, why


def test_xla_cpu_rotates_past_every_host_cache_level_as_the_cpu_backend(monkeypatch):
    """XLA:CPU runs on the host's caches: 4x the L3 alone leaves a non-inclusive L3 and the L2s
    beside it (Sierra Forest: 144 MB of L2, 108 MB of L3) at 1.7x what they hold."""
    from backends import cpu
    from backends.cpu import CPUBackend
    monkeypatch.setattr(cpu, "read_caches",
                        lambda root=None: {"L1d": 144 * 2**15, "L2": 144 * 2**20, "L3": 108 * 2**20})
    dev = _FakeTPU()
    dev.platform = dev.device_kind = "cpu"
    monkeypatch.setattr(XLABackend, "_devices", lambda self: [dev])
    b = XLABackend()
    assert b.cache_bytes() == 108 * 2**20
    assert b.rotate_bytes() == CPUBackend().rotate_bytes() == 4 * (144 * 2**15 + 252 * 2**20)


def test_xla_cpu_reads_its_roof_in_sets_as_large_as_a_weight_and_as_a_gemv(monkeypatch):
    """XLA's reduce streams memory slower than its matrix-vector product, and 16 MiB calls
    slower than 64 MiB ones: a read roof set by 16 MiB reduces put XLA's own GEMVs at 104-172%
    of it. The read probe runs as a matvec too, in 64 MiB sets; copy keeps 16 MiB sets (each
    call allocates an output of its input's size)."""
    dev = _FakeTPU()
    dev.platform = dev.device_kind = "cpu"
    monkeypatch.setattr(XLABackend, "_devices", lambda self: [dev])
    b = XLABackend()
    assert b.probe_sets(2**28, writes=True) == 16 and b.probe_sets(2**28, writes=False) == 4
    matvec = OPS["read"].impls["torch_matvec"]
    assert matvec.backends == ("xla",) and matvec.dtypes == (torch.float32,)
    src = torch.rand(3 * 4096, dtype=torch.float32) + 0.5
    assert torch.allclose(matvec.fn(src), src.double().sum().float(), rtol=1e-5)
    with pytest.raises(NotImplementedError, match="not a multiple of 4096"):
        matvec.fn(torch.ones(4095))


class _FakeTPU:
    platform, device_kind, id = "tpu", "TPU v5 lite", 0

    def memory_stats(self):
        return {"bytes_limit": 16 * 2**30}

    def __str__(self):
        return "TPU_0(process=0,(0,0,0,0))"


@pytest.mark.parametrize("kind,chip", [("TPU v4", "tpu-v4"), ("TPU v5 lite", "tpu-v5e"),
                                       ("TPU v5p", "tpu-v5p"), ("TPU v6 lite", "tpu-v6e"),
                                       ("TPU7x", "tpu7x")])
def test_tpu_device_kinds_map_to_catalog_chips(monkeypatch, kind, chip):
    dev = _FakeTPU()
    dev.device_kind = kind
    monkeypatch.setattr(XLABackend, "_devices", lambda self: [dev, dev])
    b = XLABackend()
    info = b.device_info()
    assert info["chip"] == chip and info["platform"] == "tpu" and info["device_count"] == 2
    assert info["memory_bytes"] == 16 * 2**30
    assert b.rotate_bytes() == 4 * 128 * 1024**2 and b.probe_sets(2**30) == 1


# --- XLA:CPU ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def xla():
    b = get_backend("xla")
    ok, why = b.available()
    if not ok:
        pytest.fail(f"xla tests need jax + torchax: {why}")
    return b


@pytest.mark.xla
def test_torchax_imports_through_the_shim(xla):
    import torch._ops as ops
    from importlib import metadata
    from backends import xla_compat
    torchax, env = xla_compat.load()
    assert torchax.__version__ == metadata.version("torchax")
    assert all(xla_compat._NAMED_TENSOR.search(q.rsplit(".", 1)[1]) for q in xla_compat.PATCHED)
    assert ops.OpOverloadPacket.__getattr__.__module__ == "torch._ops"  # patch removed
    with env:
        y = (torch.arange(6.0).to("jax") * 2).sum()
    assert float(xla.to_host(y)) == 30.0


@pytest.mark.xla
def test_the_matvec_read_probe_compiles_to_a_dot_not_the_sum_probes_reduce(xla):
    """torch_matvec is there to read memory as XLA's GEMVs do, through a dot: a reduce alone
    reads slower, and a roof taken from it put XLA's own GEMVs above the roof. Its product
    with ones written as a matrix times a vector compiled to torch_sum's one reduce."""
    from kernels import OPS
    with xla.session():
        src = torch.rand(8 * 4096).to(xla.device())

    def hlo(fn):
        return xla.wrap(fn)._jit.lower((("t", None),), src.jax()).compile().as_text()
    matvec, total = (OPS["read"].impls[n].fn for n in ("torch_matvec", "torch_sum"))
    assert " dot(" in hlo(matvec) and " dot(" not in hlo(total)
    assert float(xla.to_host(xla.wrap(matvec)(src))) == pytest.approx(
        float(xla.to_host(src).double().sum()), rel=1e-5)


@pytest.mark.xla
def test_device_info_shows_platform_devices_memory_and_llc(xla):
    from backends.cpu import CPUBackend
    info = xla.device_info()
    assert info["platform"] == "cpu" and info["devices"] and info["device_count"] >= 1
    assert info["memory_bytes"] and info["memory_bytes"] > 2**30
    assert info["cache_bytes"] == CPUBackend().cache_bytes()
    assert xla.rotate_bytes() == CPUBackend().rotate_bytes() >= 4 * info["cache_bytes"]
    assert info["matmul_precision"] == "highest"


@pytest.mark.xla
def test_backends_command_lists_xla_platform(tmp_path):
    p = run_cli("backends", "--json")
    assert p.returncode == 0, p.stderr
    row = next(json.loads(line) for line in p.stdout.splitlines() if '"xla"' in line[:30])
    assert row["available"] and row["device"]["platform"] == "cpu"
    assert row["device"]["devices"] and row["versions"]["torchax"]


@pytest.mark.xla
def test_another_torchax_version_is_one_line_and_exit_2(tmp_path):
    """A torchax that imports but lacks what the backend drives (here `torchax.tensor` and the
    `jax` device) is an unavailable backend naming its version, not an internal error mid-run."""
    from tests.helpers import REPO
    pkg = tmp_path / "torchax"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        '__version__ = "0.0.99"\n\n\nclass Environment:\n'
        '    def __enter__(self):\n        return self\n\n'
        '    def __exit__(self, *exc):\n        return None\n\n\n'
        'def default_env():\n    return Environment()\n')
    for cmd in (("run", "--backend", "xla", "--suite", "smoke", "--no-save"),
                ("roof", "--backend", "xla")):
        p = run_cli(*cmd, env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"})
        assert p.returncode == 2, (cmd, p.returncode, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
        assert "xla is not available: torchax 0.0.99" in p.stderr and "tested with" in p.stderr


@pytest.mark.xla
def test_xla_flags_xla_does_not_know_leave_the_other_backends(tmp_path):
    """XLA ends the process on an unknown flag in XLA_FLAGS (a fatal C++ log line): `backends`
    still lists cpu with xla unavailable and why, and a run on xla is one line, exit 2."""
    env = {"XLA_FLAGS": "--no_such_xla_flag"}
    p = run_cli("backends", "--json", env=env)
    assert p.returncode == 0, p.stderr
    rows = {r["backend"]: r for r in map(json.loads, p.stdout.splitlines())}
    assert rows["cpu"]["available"] and not rows["xla"]["available"], rows
    assert "XLA_FLAGS='--no_such_xla_flag'" in rows["xla"]["reason"]
    assert "--no_such_xla_flag" in rows["xla"]["reason"].split(": ", 1)[1]
    p = run_cli("run", "--backend", "xla", "--suite", "smoke", "--no-save", env=env)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "backend xla is not available: JAX could not start with XLA_FLAGS" in p.stderr


@pytest.mark.xla
def test_the_xla_flags_check_names_the_flags_fault_and_only_the_flags(tmp_path, monkeypatch):
    """The check starts JAX in a child: one that cannot start for another reason (a platform
    this host lacks) says that reason, not blaming XLA_FLAGS; a jax/ folder in the working
    directory is not what the child imports; and of XLA's lines the reason is its first error,
    not the tail of the flag list it prints after."""
    from backends import xla_compat
    monkeypatch.delenv(xla_compat._FLAGS_OK, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=abc")
    with pytest.raises(xla_compat.JaxStartError) as e:
        xla_compat._probe_xla_flags()
    assert str(e.value) == ("JAX could not start with XLA_FLAGS="
                            "'--xla_force_host_platform_device_count=abc': Couldn't interpret "
                            "value abc for flag xla_force_host_platform_device_count.")
    (tmp_path / "jax").mkdir()
    (tmp_path / "jax" / "__init__.py").write_text("raise ImportError('the folder, not jax')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    xla_compat._probe_xla_flags()  # the real jax, started with good flags
    assert os.environ.pop(xla_compat._FLAGS_OK) == "--xla_force_host_platform_device_count=2"
    monkeypatch.setenv("JAX_PLATFORMS", "no_such_platform")
    with pytest.raises(xla_compat.JaxStartError) as e:  # JAX cannot start without them either
        xla_compat._probe_xla_flags()
    assert str(e.value).startswith("JAX could not start: ") and "XLA_FLAGS" not in str(e.value)
    assert "no_such_platform" in str(e.value)
    assert xla_compat._FLAGS_OK not in os.environ


@pytest.mark.xla
def test_rotated_copies_do_not_share_buffers(xla):
    from bench.runner import clone_args, set_bytes
    x, w = make_inputs(xla, OPS["gemv_bf16"], OPS["gemv_bf16"].shape(M=1, N=64, K=64),
                           torch.float32, 0)
    (x2,) = clone_args((x,), xla.clone)
    assert x2.jax().unsafe_buffer_pointer() != x.jax().unsafe_buffer_pointer()
    assert set_bytes((x, x2), None) == 2 * 64 * 4  # equal-sized XLA tensors each count


@pytest.mark.xla
def test_the_check_of_every_timing_set_leaves_each_its_own_buffer(xla):
    """After timing, every set is compared with the case's snapshot and put back where an impl
    changed it. The snapshot is set 0's arrays: a set given them back (changed or not) would
    share set 0's buffer, and the next impl's rotation would read it from the cache."""
    from bench.runner import clone_args
    x, w = make_inputs(xla, OPS["gemv_bf16"], OPS["gemv_bf16"].shape(M=1, N=64, K=64),
                       torch.float32, 0)
    snap = xla.snapshot((x, w))
    sets = [(x, w)] + [clone_args((x, w), xla.clone) for _ in range(2)]
    with xla.session():
        sets[2][1].mul_(3)  # an impl that scaled the weight of the last set
    assert xla.restore_changed_sets(sets, snap) == [1]
    ptrs = [a.jax().unsafe_buffer_pointer() for s in sets for a in s]
    assert len(set(ptrs)) == len(ptrs), ptrs
    assert torch.equal(xla.to_host(sets[2][1]), xla.to_host(w))
    assert torch.equal(xla.to_host(sets[1][0]), xla.to_host(x))


@pytest.mark.xla
def test_untouched_timing_sets_are_known_without_reading_their_values(xla, monkeypatch):
    """A set that still holds the array it was cloned with is unchanged: no blocking value
    comparison for it (a tiny case has thousands of sets, at about half a millisecond each)."""
    import jax.numpy as jnp

    from bench.runner import clone_args
    x, w = make_inputs(xla, OPS["gemv_bf16"], OPS["gemv_bf16"].shape(M=1, N=64, K=64),
                       torch.float32, 0)
    snap = xla.snapshot((x, w))
    sets = [(x, w)] + [clone_args((x, w), xla.clone) for _ in range(3)]
    compared = []
    equal = jnp.array_equal
    monkeypatch.setattr(jnp, "array_equal", lambda *a, **k: compared.append(1) or equal(*a, **k))
    assert xla.restore_changed_sets(sets, snap) == [] and compared == []
    with xla.session():
        sets[1][0].mul_(1)  # a new array of the same values: looked at, and no change
    assert xla.restore_changed_sets(sets, snap) == [] and len(compared) == 1


@pytest.mark.xla
def test_every_op_has_an_impl_that_runs_on_xla():
    """Every single-device op; collectives run in torch.distributed process groups (gloo, NCCL),
    which the XLA backend does not form."""
    assert any(op.collective for op in OPS.values())
    missing = [name for name, op in OPS.items() if not op.collective
               and not any("xla" in i.backends for i in op.impls.values())]
    assert not missing, f"ops with no xla impl: {missing}"


@pytest.mark.xla
@pytest.mark.parametrize("op_name,shape,dtype,impl_name", XLA_CASES)
def test_lowering_impls_match_the_reference(xla, op_name, shape, dtype, impl_name):
    op, impl = OPS[op_name], OPS[op_name].impls[impl_name]
    inputs = make_inputs(xla, op, shape, dtype, 0)
    ref = op.reference(*(xla.to_host(a) for a in inputs))
    with xla.session():
        args = tuple(impl.prepare(*inputs)) if impl.prepare else inputs
    out = xla.wrap(impl.fn)(*args)  # an impl that declares xla lowers: a failure fails here
    assert out.device.type == "jax"
    err = rel_err(xla.to_host(out), ref)
    assert err <= op.tol(dtype), f"rel err {err:.3g} > {op.tol(dtype):.3g}"


@pytest.mark.xla
@pytest.mark.parametrize("op_name", ["paged_attention", "paged_attention_kv8"])
def test_paged_attention_ignores_garbage_where_nothing_is_read(xla, op_name):
    """NaN, +-inf and bad block ids in unused slots, blocks and table entries (as in
    tests/kernels/attention/test_paged_attention.py): every xla impl's output does not change by
    one bit."""
    from tests.kernels.attention.test_paged_attention import GARBAGE_VALUES, case_inputs, perturb
    op, kv8 = OPS[op_name], op_name.endswith("kv8")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        args = case_inputs(op_name, 8, 2, 64, 16, dtype, [1, 37, 80], seed=5)
        for name, impl in op.impls.items():
            if "xla" not in impl.backends:
                continue
            fn = xla.wrap(impl.fn)

            def run(a):
                return xla.to_host(fn(*(xla.to_device(t) if isinstance(t, torch.Tensor) else t
                                        for t in a)))
            base = run(args)
            assert torch.isfinite(base).all()
            assert rel_err(base, op.reference(*args)) <= op.tol(dtype)
            for i, value in enumerate(GARBAGE_VALUES):
                bad = perturb(args, kv8, value, seed=i)
                assert torch.equal(run(bad), base), (name, dtype, value)


@pytest.fixture
def non_lowering_impl():
    @register_impl("gemv_bf16", "t_xla_dynamic", backends=["xla"], dtypes=["float32"])
    def dynamic(x, w):
        return (x @ w.T)[:, : int((w[0] > 0).sum())]  # data-dependent shape: cannot be jitted

    yield "t_xla_dynamic"
    OPS["gemv_bf16"].impls.pop("t_xla_dynamic", None)


@pytest.mark.xla
def test_an_impl_that_does_not_lower_is_skipped_with_the_reason(xla, tmp_path, non_lowering_impl,
                                                                monkeypatch):
    from bench.results import ResultWriter
    from bench.roofline import Roof
    from bench.runner import RunContext, Runner
    from bench.case import Case
    from bench.timing import BUDGETS
    roof = Roof("xla", 5.0, 5.0, 1 << 28, matmul_tflops={"float32": 0.05})
    # the rotation past a 32 MiB LLC's caches: 4096 sets of 256 KiB cannot pass a host whose L3
    # is hundreds of MiB (a slice of a large server), and that case is then timed in cache
    monkeypatch.setattr(xla, "rotate_bytes", lambda: 4 * (32 << 20))
    ctx = RunContext(backend=xla, roof=roof, chip=None, device_info={}, budget=BUDGETS["quick"],
                     seed=0, run_id="t", command="pytest", git_commit=None, versions={},
                     impl_filter=(non_lowering_impl, "torch_matmul"))
    recs = {r["impl"]: r for r in Runner(ctx, ResultWriter(None, "t")).run_case(
        Case("gemv_bf16", OPS["gemv_bf16"].shape(M=2, N=256, K=256), torch.float32))}
    assert recs[non_lowering_impl]["status"] == "skipped"
    assert "does not lower to XLA" in recs[non_lowering_impl]["error"]
    ok = recs["torch_matmul"]
    assert ok["status"] == "ok" and ok["correct"] and ok["n_sets"] > 1 and ok["cold"]


@pytest.fixture
def in_place_prepare():
    def scale_in_place(x, w):
        w2 = w.clone()
        w.mul_(0)  # the shared input, changed: torchax swaps a new array into the tensor
        return x, w2

    def keep_in_place(x, w):
        w.mul_(1)  # a new array of the same values: no change
        return x, w

    @register_impl("gemv_bf16", "t_xla_mutator", backends=["xla"], prepare=scale_in_place)
    def mutator(x, w):
        return x @ w.T

    @register_impl("gemv_bf16", "t_xla_same", backends=["xla"], prepare=keep_in_place)
    def same(x, w):
        return x @ w.T

    @register_impl("gemv_bf16", "t_xla_victim", backends=["xla"])
    def victim(x, w):
        return x @ w.T

    names = ("t_xla_mutator", "t_xla_same", "t_xla_victim")
    yield names
    for n in names:
        OPS["gemv_bf16"].impls.pop(n, None)


@pytest.mark.xla
def test_a_prepare_that_changes_an_input_fails_and_the_next_impl_gets_it_back(xla,
                                                                              in_place_prepare):
    """XLA arrays cannot change, but torchax's in-place ops swap a new array into the tensor:
    an impl whose prepare zeroes the shared weight fails, and the one after it is checked on
    the weight as it was, not failing in the mutator's place. New values equal to the old are
    no change."""
    from bench.results import ResultWriter
    from bench.roofline import Roof
    from bench.runner import RunContext, Runner
    from bench.case import Case
    from bench.timing import BUDGETS
    mutator, same, victim = in_place_prepare
    roof = Roof("xla", 5.0, 5.0, 1 << 28, matmul_tflops={"float32": 0.05})
    ctx = RunContext(backend=xla, roof=roof, chip=None, device_info={}, budget=BUDGETS["quick"],
                     seed=0, run_id="t", command="pytest", git_commit=None, versions={},
                     impl_filter=in_place_prepare, check_only=True)
    recs = {r["impl"]: r for r in Runner(ctx, ResultWriter(None, "t")).run_case(
        Case("gemv_bf16", OPS["gemv_bf16"].shape(M=1, N=64, K=128), torch.float32))}
    assert recs[mutator]["status"] == "failed-check"
    assert recs[mutator]["error"] == "changed its input 1 (counted from 0; put back for the " \
                                     "next impl)"
    assert recs[same]["status"] == recs[victim]["status"] == "ok"


@pytest.mark.xla
def test_missing_sync_would_be_caught_as_above_the_roof(xla, monkeypatch):
    """The classic TPU bug: reading the clock without block_until_ready times only the dispatch."""
    from bench.roofline import Roof, judge
    from bench.timing import BUDGETS, measure
    op = OPS["read"]
    shape = op.shape(N=1 << 24)
    (src,) = make_inputs(xla, op, shape, torch.float32, 0)
    fn = xla.wrap(op.impls["torch_sum"].fn)
    nbytes = op.bytes_moved(shape, torch.float32)
    synced = measure(xla, lambda i: fn(src), 1, BUDGETS["quick"])
    roof = Roof("xla", 0.0, nbytes / synced.median / 1e9, nbytes, noise=synced.rel_iqr)
    # The bug: the clock is read as soon as the call returns. Work still queued is drained
    # before the next sample (outside the timed region) so each sample sees one dispatch.
    pending: list = []
    drain = XLABackend.block
    monkeypatch.setattr(XLABackend, "block", lambda self, out: pending.append(out))
    monkeypatch.setattr(XLABackend, "synchronize",
                        lambda self: [drain(self, pending.pop()) for _ in list(pending)])
    unsynced = measure(xla, lambda i: fn(src), 1, BUDGETS["quick"])
    xla.synchronize()
    assert judge(nbytes, 0, unsynced.median, roof, torch.float32, 0).verdict.startswith(
        "above the roof")
    assert not judge(nbytes, 0, synced.median, roof, torch.float32, 0).verdict.startswith(
        "above the roof")


@pytest.fixture(scope="module")
def smoke_records(tmp_path_factory):
    out = tmp_path_factory.mktemp("xla-smoke")
    p = run_cli("run", "--backend", "xla", "--suite", "smoke", "--json", "--no-progress",
                "--out", str(out), timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


@pytest.mark.xla
def test_smoke_suite_runs_every_xla_impl_through_the_cli(smoke_records):
    seen = {(r["op"], r["impl"]) for r in smoke_records}
    want = {(op, impl) for op, _, _, impl in (c.values for c in XLA_CASES)}
    assert want <= seen
    bad = [(r["op"], r["impl"], r["status"], r["error"]) for r in smoke_records
           if r["status"] not in ("ok", "skipped") or (r["op"], r["impl"]) in want
           and r["status"] != "ok"]  # every impl that declares xla runs on its smoke shapes
    assert not bad
    for r in smoke_records:
        assert r["backend"] == "xla" and r["versions"]["torchax"] and r["versions"]["jax"]


@pytest.mark.xla
def test_every_xla_result_is_timed_past_the_host_caches_or_says_it_is_not(smoke_records, xla):
    """What keeps an XLA:CPU figure under the roof, by the records alone (no timing is compared
    here: on a busy machine the roof read before a case can be low, and a pass/fail test must
    not hang on that): each cold case rotated input sets whose bytes read pass 4x the host's
    last-level cache, or is marked in cache and judged against nothing; and every case whose
    rotation could pass the caches (MAX_SETS copies, a quarter of memory) did. Which cases can
    depends on the host: a slice of a server with a 480 MiB L3 rotates none of the smoke shapes
    past it. The sync half is test_missing_sync_would_be_caught_as_above_the_roof."""
    from bench.results import IN_CACHE
    from bench.runner import MAX_SETS
    timed = [r for r in smoke_records if r["status"] == "ok"]
    assert timed
    llc, mem = timed[0]["device"]["cache_bytes"], timed[0]["device"]["memory_bytes"]
    assert llc >= 1 << 20 and all(r["device"]["cache_bytes"] == llc for r in timed)
    need = xla.rotate_bytes()  # this host's caches, which the run rotated past
    assert need >= 4 * llc
    for r in timed:
        touched = min(r["set_bytes"], r["bytes"])
        rotated = r["n_sets"] * touched
        assert (r["cold"] is True and rotated > need) or (
            r["cold"] is False and r["verdict"] == IN_CACHE), (r["op"], r["impl"], r["shape"])
        if min(MAX_SETS, mem // 4 // r["set_bytes"]) * touched > need:
            assert r["cold"] is True, (r["op"], r["impl"], r["shape"])


@pytest.mark.xla
def test_roof_command_measures_through_xla():
    p = run_cli("roof", "--backend", "xla", "--budget", "quick", "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    d = json.loads(p.stdout.splitlines()[-1])
    assert d["backend"] == "xla" and d["device"]["platform"] == "cpu"
    assert d["copy_gbps"] > 0 and d["read_gbps"] > 0 and d["matmul_tflops"]["float32"] > 0


@pytest.mark.xla
def test_prepare_calling_an_op_torchax_lacks_is_a_skip(xla):
    (x,) = make_inputs(xla, OPS["read"], OPS["read"].shape(N=64), torch.float32, 0)
    with pytest.raises(NotImplementedError, match="does not lower to XLA"):
        with xla.session():
            torch._convert_weight_to_int4pack(x.to(torch.int32).view(8, 8), 8)


@pytest.mark.xla
def test_the_case_workers_are_started_on_the_parents_jax_platform():
    """Workers inherit JAX_PLATFORMS set to the platform the run's process started: one that
    cannot have the parent's TPU fails instead of timing the host's CPU under its name."""
    import subprocess
    from tests.helpers import REPO
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["PYTHONPATH"] = str(REPO)
    code = ("import os; from backends import get_backend; ok, why = get_backend('xla').available();"
            " print(ok, os.environ.get('JAX_PLATFORMS'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.split()[-2:] == ["True", "cpu"], r.stderr[-2000:]
