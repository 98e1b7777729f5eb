"""kernels/triton_util: the fixed config under the interpreter, and the record of autotune picks."""
import types

import pytest

triton = pytest.importorskip("triton")

from kernels import triton_util  # noqa: E402
from tests import helpers  # noqa: E402


def test_interpreted_kernels_carry_their_fixed_config_and_every_config():
    import kernels.gemv.triton_bf16 as bf
    import kernels.gemv.triton_w4 as w4
    import kernels.gemv.triton_w8 as w8
    for kern, fixed in ((w4._w4_kernel, {"BLOCK_N": 16, "BLOCK_K": 256, "ASM": 0, "PREFETCH": 1}),
                        (w8._w8_kernel, {"BLOCK_N": 16, "BLOCK_K": 64, "ASM": 0, "PREFETCH": 1}),
                        (bf._gemv_kernel, {"BLOCK_N": 16, "BLOCK_K": 64, "ACC3": 1})):
        assert kern.fixed_meta == fixed
        assert triton_util.launch_meta(kern, True) == triton_util.launch_meta(kern, False) == fixed
        assert kern.jit_fn is kern
        gemv, dot = kern.configs_for(False), kern.configs_for(True)
        assert gemv and dot
        assert all(c.kwargs["BLOCK_N"] >= 16 for c in dot)  # tl.dot's minimum
        # the interpreter runs no PTX: its configs swap the inline-asm conversion for its twin
        assert not any(c.kwargs.get("ASM") for c in gemv + dot)
    for mod, kern in ((w4, w4._w4_kernel), (w8, w8._w8_kernel)):  # the GPU tunes between both
        assert {c.kwargs["ASM"] for c in mod._GEMV_CONFIGS} == {0, 1}
        assert len(kern.configs_for(False)) == len(mod._GEMV_CONFIGS)  # each tile still checked
    for kern in (w4._w4_kernel, w8._w8_kernel):
        assert {c.kwargs["PREFETCH"] for c in kern.configs_for(False)} == {0, 1}


def test_prune_keeps_each_path_and_x3d_only_at_m1():
    """Each launch tunes over its own path's configs; X3D ones (an M = 1 layout) only at
    BLOCK_M = 1, where they differ from their X3D=0 twin; INT4's PK ones only at M = 1 with
    bf16 x, the one case they run as such."""
    import torch
    import kernels.gemv.triton_w4 as w4
    import kernels.gemv.triton_w8 as w8
    bf16 = {"x_ptr": torch.empty(1, dtype=torch.bfloat16)}
    fp16 = {"x_ptr": torch.empty(1, dtype=torch.float16)}
    for mod in (w4, w8):
        at1 = mod._prune(mod._ALL_CONFIGS, bf16, USE_DOT=False, BLOCK_M=1)
        at4 = mod._prune(mod._ALL_CONFIGS, bf16, USE_DOT=False, BLOCK_M=4)
        x3 = [c for c in at1 if c.kwargs.get("X3D")]
        pk = [c for c in at1 if c.kwargs.get("PK")]
        assert x3 and not any(c.kwargs.get("X3D") or c.kwargs.get("PK") for c in at4)
        assert bool(pk) == (mod is w4)
        batched = {id(c) for c in at1} - {id(c) for c in x3 + pk}
        assert {id(c) for c in at4} < batched  # less the tiles that spill above M = 1
        assert set(map(id, at1)) <= set(map(id, mod._GEMV_CONFIGS))
        at1_fp16 = mod._prune(mod._ALL_CONFIGS, fp16, USE_DOT=False, BLOCK_M=1)
        assert {id(c) for c in at1_fp16} == {id(c) for c in at1} - {id(c) for c in pk}
        dot = mod._prune(mod._ALL_CONFIGS, bf16, USE_DOT=True, BLOCK_M=16)
        assert dot and set(map(id, dot)) == set(map(id, mod._DOT_CONFIGS))


def test_prune_above_one_row_keeps_the_tiles_that_do_not_spill():
    """Above M = 1 every row of x keeps the step's converted codes live: INT4 keeps tiles of at
    most 32 words a thread at BLOCK_M = 2 and 16 at 4, and so does INT8 (the larger ones spill on
    sm_90: bench.gpucheck.sass --compile-all); each keeps some tiles, with and without PREFETCH;
    M = 1 keeps them all."""
    import torch
    import kernels.gemv.triton_w4 as w4
    import kernels.gemv.triton_w8 as w8
    from kernels.gemv.triton_common import words_per_thread
    x = {"x_ptr": torch.empty(1, dtype=torch.float16)}
    for mod, cpw, most in ((w4, 8, {2: 32, 4: 16}), (w8, 4, {2: 32, 4: 16})):
        gemv = [c for c in mod._GEMV_CONFIGS if not c.kwargs.get("X3D") and not c.kwargs.get("PK")]
        assert mod._prune(gemv, x, USE_DOT=False, BLOCK_M=1) == gemv
        for bm, limit in most.items():
            kept = mod._prune(gemv, x, USE_DOT=False, BLOCK_M=bm)
            assert {c.kwargs["PREFETCH"] for c in kept} == {0, 1}
            assert kept == [c for c in gemv if words_per_thread(c, cpw) <= limit]
        assert len(mod._prune(gemv, x, USE_DOT=False, BLOCK_M=4)) < len(gemv)


def test_a_fixed_config_stand_in_launches_its_config():
    """tests/helpers.FixedConfig: the launcher gets no meta-parameters of its own from
    launch_meta, and the launch gets the config's, whatever the kernel's fixed set is."""
    launches = []

    class Jit:
        def __getitem__(self, grid):
            return lambda *args, **kw: launches.append((grid, args, kw))

    kern = types.SimpleNamespace(jit_fn=Jit(), fixed_meta={"BLOCK_N": 1})
    stand_in = helpers.FixedConfig(kern, triton.Config({"BLOCK_N": 2}, num_warps=4, num_stages=3))
    assert triton_util.launch_meta(stand_in) == {}
    stand_in[(3,)]("x", USE_DOT=False, **triton_util.launch_meta(stand_in))
    forced = {"BLOCK_N": 2} if triton_util.INTERPRET else {"BLOCK_N": 2, "num_warps": 4,
                                                           "num_stages": 3}
    assert launches == [((3,), ("x",), {"USE_DOT": False, **forced})]


def test_w4_gemv_configs_step_whole_groups():
    import kernels.gemv.triton_w4 as w4
    from kernels.quant import INT4_GROUP_SIZES
    for c in w4._w4_kernel.configs_for(False):
        assert all(c.kwargs["BLOCK_K"] % g == 0 for g in INT4_GROUP_SIZES), c


def test_config_meta_and_describe():
    cfg = triton.Config({"BLOCK_N": 32, "MAGIC": 1}, num_warps=8, num_stages=3)
    assert triton_util.config_meta(cfg) == {"BLOCK_N": 32, "MAGIC": 1, "num_warps": 8,
                                            "num_stages": 3}
    assert triton_util.describe(cfg) == "BLOCK_N=32, MAGIC=1, warps=8, stages=3"


class FakeTuned:
    """What tuned() reads off a triton.autotune object: best_config, configs_timings, base_fn."""

    def __init__(self, name):
        self.base_fn = types.SimpleNamespace(__name__=name)
        self.best_config = None
        self.configs_timings = None


def test_tuned_names_only_kernels_run_since_forget(monkeypatch):
    a, b = FakeTuned("_a_kernel"), FakeTuned("_b_kernel")
    monkeypatch.setattr(triton_util, "TUNED", [a, b])
    fast = triton.Config({"BLOCK_N": 16}, num_warps=4, num_stages=3)
    slow = triton.Config({"BLOCK_N": 64}, num_warps=8, num_stages=3)
    a.best_config, a.configs_timings = fast, {slow: [0.0123, 0.012, 0.013], fast: [0.0081, 0.008, 0.009]}
    b.best_config = slow  # a cache hit: no timings this time
    got = triton_util.tuned()
    assert got["_a_kernel"]["config"] == "BLOCK_N=16, warps=4, stages=3"
    assert list(got["_a_kernel"]["timings_us"].items()) == [
        ("BLOCK_N=16, warps=4, stages=3", 8.1), ("BLOCK_N=64, warps=8, stages=3", 12.3)]
    assert got["_b_kernel"] == {"config": "BLOCK_N=64, warps=8, stages=3"}
    triton_util.forget_tuned()
    assert triton_util.tuned() == {}
    b.best_config = fast
    assert list(triton_util.tuned()) == ["_b_kernel"]


def test_timings_restored_from_tritons_disk_cache_are_marked_as_such(monkeypatch):
    """With cache_results, a pick restored from disk comes with that earlier tuning's timings;
    tuned() says so where no config was timed since forget_tuned()."""
    a = FakeTuned("_a_kernel")
    monkeypatch.setattr(triton_util, "TUNED", [a])
    cfg = triton.Config({"BLOCK_N": 16}, num_warps=4, num_stages=3)
    triton_util.forget_tuned()
    a.best_config, a.configs_timings = cfg, {cfg: [0.008]}
    assert triton_util.tuned()["_a_kernel"]["timings_cached"] is True
    monkeypatch.setattr(triton.testing, "do_bench", lambda *a, **k: 0.008)
    triton_util._quick_bench(lambda: None)  # the tuner timed a config in this case
    assert "timings_cached" not in triton_util.tuned()["_a_kernel"]


_FUSION_PROBE = r'''
import os
import kernels.triton_util
import triton
from triton import knobs
print(os.environ.get("TRITON_DEFAULT_FP_FUSION"), knobs.language.default_fp_fusion)
'''


@pytest.mark.parametrize("env, want", [(None, "1 True"), ("0", "0 False")])
def test_fp_fusion_is_pinned_on_unless_the_user_chose(env, want):
    # The kernels' FFMA/HFMA2 loops and their sm_90 instruction counts assume fused multiply-adds;
    # Triton 3.10 turns the default off. A user's own setting wins.
    import os
    import subprocess
    import sys
    pytest.importorskip("triton.knobs")
    e = {k: v for k, v in os.environ.items() if k != "TRITON_DEFAULT_FP_FUSION"}
    if env is not None:
        e["TRITON_DEFAULT_FP_FUSION"] = env
    e["PYTHONPATH"] = str(helpers.REPO)
    r = subprocess.run([sys.executable, "-c", _FUSION_PROBE], env=e, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-800:]
    assert r.stdout.split("\n")[-2] == want


@pytest.mark.parametrize("triton_version, numpy_version, refused", [
    ("3.6.0", "2.4.6", True), ("3.0.0", "2.4.0rc1", True), ("3.6.0+git1a2b3c", "2.5.0", True),
    ("3.6.0", "2.3.5", False), ("3.7.0", "2.4.6", False), ("3.10.0", "2.4.6", False),
])
def test_the_interpreter_numpy_conflict_is_named_before_any_test(triton_version, numpy_version,
                                                                 refused):
    """Triton before 3.7 interprets with int() of a one-element array, which numpy 2.4 refuses:
    the session stops with the fix in one line instead of failing every kernel test inside
    Triton. 3.10 is newer than 3.7 (compared as numbers, not strings)."""
    from tests.helpers import interpreter_numpy_conflict
    why = interpreter_numpy_conflict(triton_version, numpy_version)
    if refused:
        assert why == (f"Triton {triton_version}'s interpreter cannot run with numpy "
                       f"{numpy_version} (numpy 2.4 refuses int() of a one-element array): "
                       f"pip install 'numpy<2.4', or Triton 3.7 or newer")
    else:
        assert why is None


@triton.jit
def _named_kernel(x_ptr, N, BLOCK: "triton.language.constexpr"):
    pass


@pytest.mark.parametrize("key, cfg, fixed, kw, wrong", [
    (["N", "M"], {"BLOCK": 16}, {"BLOCK": 16}, {}, "key 'M'"),
    (["N"], {"BLOCK": 16, "BLOCK_K": 8}, {"BLOCK": 16}, {}, "config 'BLOCK_K'"),
    (["N"], {"BLOCK": 16}, {"BLOK": 16}, {}, "fixed 'BLOK'"),
    (["N"], {"BLOCK": 16}, {"BLOCK": 16}, {"reset_to_zero": ["y_ptr"]}, "reset_to_zero 'y_ptr'"),
    (["N"], {"BLOCK": 16}, {"BLOCK": 16}, {}, None),
])
def test_autotune_names_that_are_not_parameters_are_refused_at_import(key, cfg, fixed, kw, wrong):
    """Before 3.9 Triton's tuner drops a key name that is not a parameter without a word (one
    config then serves every shape), and the interpreter never builds the tuner: the decorator
    checks every name, so importing the kernels in the CPU tests checks them all."""
    deco = triton_util.autotune_or_fixed([triton.Config(cfg)], key=key, fixed=fixed, **kw)
    if wrong is None:
        assert deco(_named_kernel).jit_fn is not None
        return
    with pytest.raises(ValueError) as e:
        deco(_named_kernel)
    assert str(e.value) == f"autotune of _named_kernel: {wrong} not among its parameters"


@triton.jit
def _first_config_kernel(x_ptr, N, BLOCK: "triton.language.constexpr"):
    pass


def test_on_a_gpu_without_autotune_the_first_config_runs(monkeypatch):
    """DECODEWALL_AUTOTUNE=0 on a GPU: no tuner; the kernel's fixed set is the first config's
    meta-parameters, warps and stages (not the interpreter's `fixed`, not the last config)."""
    monkeypatch.setattr(triton_util, "INTERPRET", False)
    monkeypatch.setattr(triton_util, "AUTOTUNE", False)
    monkeypatch.setattr(triton_util, "TUNED", [])
    first = triton.Config({"BLOCK": 32}, num_warps=2, num_stages=1)
    last = triton.Config({"BLOCK": 64}, num_warps=8, num_stages=4)
    kern = triton_util.autotune_or_fixed([first, last], key=["N"], fixed={"BLOCK": 16})(
        _first_config_kernel)
    assert kern is _first_config_kernel and kern.jit_fn is kern
    assert kern.fixed_meta == {"BLOCK": 32, "num_warps": 2, "num_stages": 1}
    assert triton_util.TUNED == []


def test_launch_meta_in_each_mode(monkeypatch):
    """Interpreted: the fixed set, whatever DECODEWALL_AUTOTUNE says. GPU with autotune off: the
    first config of the launch's own path. GPU tuning: nothing (the tuner picks)."""
    gemv = [triton.Config({"BLOCK": 32}, num_warps=2, num_stages=1),
            triton.Config({"BLOCK": 64}, num_warps=8, num_stages=4)]
    dot = [triton.Config({"BLOCK": 128}, num_warps=4, num_stages=3)]
    kern = types.SimpleNamespace(fixed_meta={"BLOCK": 16},
                                 configs_for=lambda use_dot, **path: dot if use_dot else gemv)
    monkeypatch.setattr(triton_util, "INTERPRET", True)
    monkeypatch.setattr(triton_util, "AUTOTUNE", False)
    assert triton_util.launch_meta(kern, True) == {"BLOCK": 16}
    monkeypatch.setattr(triton_util, "INTERPRET", False)
    assert triton_util.launch_meta(kern, False) == {"BLOCK": 32, "num_warps": 2, "num_stages": 1}
    assert triton_util.launch_meta(kern, True) == {"BLOCK": 128, "num_warps": 4, "num_stages": 3}
    monkeypatch.setattr(triton_util, "AUTOTUNE", True)
    kern.fixed_meta = {}
    assert triton_util.launch_meta(kern, False) == {}


def test_forget_tuned_starts_the_count_of_timed_configs_again(monkeypatch):
    """A config timed in an earlier case does not make the next case's restored pick look timed."""
    a = FakeTuned("_a_kernel")
    monkeypatch.setattr(triton_util, "TUNED", [a])
    monkeypatch.setattr(triton_util, "_BENCHED", [0])
    monkeypatch.setattr(triton.testing, "do_bench", lambda *args, **kw: 0.008)
    triton_util._quick_bench(lambda: None)  # the earlier case tuned
    triton_util.forget_tuned()
    cfg = triton.Config({"BLOCK_N": 16}, num_warps=4, num_stages=3)
    a.best_config, a.configs_timings = cfg, {cfg: [0.008]}
    assert triton_util.tuned()["_a_kernel"]["timings_cached"] is True


def _fresh_triton_util(monkeypatch, **env):
    """kernels/triton_util.py executed again as a separate module, under `env` (None: unset)."""
    import importlib.util
    for k, v in env.items():
        if v is None:
            monkeypatch.delenv(k, raising=False)
        else:
            monkeypatch.setenv(k, v)
    spec = importlib.util.spec_from_file_location("_triton_util_copy", triton_util.__file__)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("value, interpret", [
    ("1", True), ("true", True), ("True", True), ("yes", True), ("ON", True), ("y", True),
    ("0", False), ("false", False), ("off", False), ("2", False), ("", False), (None, False)])
def test_interpret_is_read_from_triton_interpret_as_triton_reads_it(value, interpret, monkeypatch):
    """Triton interprets for 1, true, yes, on, y in any case: decodewall must then build no
    autotuner (one needs a driver), and must agree with Triton's own reading where it has one."""
    assert _fresh_triton_util(monkeypatch, TRITON_INTERPRET=value).INTERPRET is interpret
    knobs = getattr(triton, "knobs", None)
    if knobs is not None and hasattr(knobs, "runtime"):
        assert bool(knobs.runtime.interpret) is interpret


@pytest.mark.parametrize("value, autotune", [(None, True), ("1", True), ("yes", True),
                                             ("0", False)])
def test_autotune_is_off_only_for_decodewall_autotune_0(value, autotune, monkeypatch):
    assert _fresh_triton_util(monkeypatch, DECODEWALL_AUTOTUNE=value).AUTOTUNE is autotune
