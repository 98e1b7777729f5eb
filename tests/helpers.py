"""Shared test helpers: run the real CLI in-process or as a subprocess."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def default_sigint() -> None:
    """Popen's preexec_fn for a child the test interrupts with SIGINT: a shell without job
    control starts background jobs (a CI script run with `&`) with SIGINT ignored, a child
    inherits that, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interpreter_numpy_conflict(triton_version: str, numpy_version: str) -> str | None:
    """Why Triton's interpreter cannot run here, or None. Before Triton 3.7 the interpreter
    takes a scalar's value with int() of a one-element array, which numpy 2.4 refuses: every
    kernel with a computed loop bound then fails inside Triton, hundreds of tests alike."""
    def release(v: str) -> tuple[int, int]:
        m = re.match(r"(\d+)\.(\d+)", v)
        return (int(m[1]), int(m[2])) if m else (0, 0)
    if release(triton_version) < (3, 7) and release(numpy_version) >= (2, 4):
        return (f"Triton {triton_version}'s interpreter cannot run with numpy {numpy_version} "
                f"(numpy 2.4 refuses int() of a one-element array): pip install 'numpy<2.4', "
                f"or Triton 3.7 or newer")
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a torchrun rendezvous)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m bench.cli ...` from the repo root: the same entry point as `decodewall`."""
    e = dict(os.environ)
    e.setdefault("TRITON_INTERPRET", "1")
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=e)


def pytest_with_plugin(*args: str, cwd: Path = REPO,
                       timeout: float = 120) -> subprocess.CompletedProcess:
    """pytest in a child with the device check's plugin (bench/gpucheck/pytest_shard.py) and the
    project on its path, as the check runs it; `args` follow the plugin's `-p`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "bench.gpucheck.pytest_shard",
                           "-p", "no:cacheprovider", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)


def check_impl(op, name: str, shape, dtype, device: str = "cpu", seed: int = 0, **kw) -> float:
    """Run one impl like the harness does (NaN-poisoned out where it takes one) and judge it as
    the harness does (err <= tol: a copy's tol is 0). `kw` go to fn beside out=; an impl without
    out= takes none (TypeError)."""
    import torch

    from kernels import rel_err
    impl = op.impls[name]
    args = op.make_inputs(shape, dtype, device, seed)
    ref = op.reference(*args)
    out_shape, out_dtype = op.out_spec(shape, dtype)
    if impl.out_arg:
        out = torch.full(out_shape, float("nan"), dtype=out_dtype, device=device)
        y = impl.fn(*(impl.prepare(*args) if impl.prepare else args), out=out, **kw)
        assert y.data_ptr() == out.data_ptr()
    elif kw:
        raise TypeError(f"check_impl passes {', '.join(sorted(kw))} only with out=, "
                        f"which {name} does not take")
    else:
        y = impl(*args)
    assert tuple(y.shape) == tuple(out_shape) and y.dtype == out_dtype
    err = rel_err(y, ref)
    assert err <= op.tol(dtype), f"{name} {shape} {dtype}: rel err {err:.2e}"
    return err


def build_baseline_x86(library, tmp_path: Path):
    """The C source of `library` (a kernels.cbuild.CLibrary) built for a baseline x86-64 (no
    AVX2/F16C, as on CPUs without them), loaded with its signatures; skips the test where that
    cannot be built."""
    import ctypes
    import platform
    import shutil

    import pytest
    cc = shutil.which("cc") or shutil.which("gcc")
    if platform.machine() not in ("x86_64", "AMD64") or cc is None:
        pytest.skip("needs an x86-64 C compiler")
    r = subprocess.run([cc, "-O1", "-march=x86-64", "-fPIC", "-shared", f"-I{library.source.parent}",
                        str(library.source), "-o", str(tmp_path / "k.so"), "-lm"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-500:]
    lib = ctypes.CDLL(str(tmp_path / "k.so"))
    for fn, (argtypes, restype) in library.signatures.items():
        getattr(lib, fn).argtypes, getattr(lib, fn).restype = argtypes, restype
    return lib


class FixedConfig:
    """Stands in for an autotuned Triton kernel in its module: launches the raw kernel with one
    config, so a test can check every config the tuner may pick (it checks only the winner).

    Its `fixed_meta` is empty, so kernels.triton_util.launch_meta hands the launcher nothing of
    its own; the launch adds the config's meta-parameters to what the launcher passes."""

    fixed_meta: dict = {}

    def __init__(self, kernel, cfg) -> None:
        from kernels.triton_util import INTERPRET, config_meta
        self.fn = kernel.jit_fn
        meta = config_meta(cfg)
        if INTERPRET:  # the interpreter has no warps or pipeline stages to choose
            meta.pop("num_warps"), meta.pop("num_stages")
        self.meta = meta

    def __getitem__(self, grid):
        launch = self.fn[grid]
        return lambda *args, **kw: launch(*args, **kw, **self.meta)


def check_split_k(check, name: str, shape, device: str = "cuda") -> None:
    """`check(name, shape, bf16, device=, seed=, split_k=)` with K split 2 and 4 ways: each
    tile's last program writes y from the workspace, which it leaves zeroed, as it does the
    counters (kernels/triton_split.py)."""
    import torch

    from kernels.triton_split import scratch_is_zero
    for split in (2, 4):
        check(name, shape, torch.bfloat16, device=device, seed=split, split_k=split)
    assert scratch_is_zero()


def check_every_config(monkeypatch, module, attr: str, use_dot: bool, check,
                       keep=lambda cfg: True) -> int:
    """Run `check()` once per config of `module.attr` that can run on the (use_dot) path (and
    that `keep` keeps: what the tuner's prune would drop at the shape checked)."""
    kernel = getattr(module, attr)
    configs = [c for c in kernel.configs_for(use_dot) if keep(c)]
    assert configs
    for cfg in configs:
        monkeypatch.setattr(module, attr, FixedConfig(kernel, cfg))
        try:
            check()
        except AssertionError as e:
            raise AssertionError(f"config {cfg}: {e}") from None
    monkeypatch.setattr(module, attr, kernel)
    return len(configs)


def skip_unless_pk_compiles() -> None:
    """Skip a test that runs the INT4 PK configs on a GPU whose ptxas refuses their PTX (below
    sm_90: kernels/gemv/triton_w4.py, PK_MIN_CAPABILITY), where the tuners leave them out."""
    import pytest
    import torch

    from kernels.gemv.triton_w4 import PK_MIN_CAPABILITY, pk_compiles
    if not pk_compiles(torch.empty(0, device="cuda")):
        have = torch.cuda.get_device_capability()
        pytest.skip(f"the PK configs' PTX needs compute capability "
                    f"{'.'.join(map(str, PK_MIN_CAPABILITY))}; this GPU has {have[0]}.{have[1]}")


def skip_if_machine_lacks(e: NotImplementedError) -> None:
    """Skip where this machine cannot build or run a C kernel (its CPU lacks the instructions,
    there is no C compiler); re-raise any other NotImplementedError, such as a C build that
    fails, so that a broken kernel fails its tests instead of skipping them."""
    import pytest
    msg = str(e)
    if "; this CPU lacks " in msg or msg.startswith("no C compiler found"):
        pytest.skip(msg)
    raise e


class IsolatedChecker:
    """The correctness gate of one impl at one shape, run by the harness's own case worker, so an
    impl that kills its process (a third-party builtin on some CPUs) is recorded, not fatal."""

    def __init__(self, backend: str = "cpu") -> None:
        import torch

        from backends import get_backend
        from bench.isolation import IsolatedRunner
        from bench.results import ResultWriter
        from bench.roofline import Roof
        from bench.runner import RunContext
        from bench.timing import BUDGETS
        b = get_backend(backend)
        ctx = RunContext(backend=b, roof=Roof(backend, 1.0, 1.0, 1), chip=None,
                         device_info={"name": "test"}, budget=BUDGETS["quick"], seed=0,
                         run_id="test", command="pytest", git_commit=None,
                         versions={"torch": torch.__version__}, check_only=True)
        self.ctx = ctx
        self.runner = IsolatedRunner(ctx, ResultWriter(None, "test"), case_timeout=120)

    def __call__(self, op: str, impl: str, shape, dtype, seed: int = 0) -> dict:
        from bench.case import Case
        self.ctx.seed = seed
        (rec,) = self.runner.run_case(Case(op, shape, dtype, impls=(impl,)))
        return rec

    def close(self) -> None:
        self.runner.close()


def one_error_line(capsys, argv) -> str:
    """Run the CLI in-process on argv: it must fail with exit 2 and one line on stderr; that line."""
    from bench.cli import main
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("decodewall: error:"), err
    return err[0]
