"""`run` refuses input it cannot honour: impossible shapes (past this device's memory too), seeds,
--out directories, empty names, selections with nothing to run, plugins that exit, torchrun's
variables, world sizes, and messages that name the problem. Each is one stderr line and exit 2,
before anything is measured or written; and `--json` keeps tracebacks out of stdout."""
import json
import os

import pytest

from kernels import OPS
from tests.helpers import one_error_line, run_cli

GEMV = ["--op", "gemv_bf16", "--shape", "M=1,N=64,K=128"]
PA = "paged_attention"
GiB = 2**30


@pytest.fixture
def out(tmp_path):
    return tmp_path / "runs"


def refused(capsys, out, *argv: str) -> str:
    """`run ... --out OUT` (other commands as given) fails with one error line, exit 2, no
    traceback and no results file; that line."""
    argv = [*argv, "--out", str(out)] if argv[0] == "run" and "--out" not in argv else list(argv)
    line = one_error_line(capsys, argv)
    assert "Traceback" not in line and "internal error" not in line, line
    assert not out.exists() or not list(out.iterdir()), "a results file was left behind"
    return line


@pytest.fixture
def small_memory(monkeypatch):
    """The CPU reports 1 GiB of memory, whatever this machine has."""
    monkeypatch.setattr("backends.cpu._mem_total", lambda: GiB)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Write a plugin file; impls it registers here are dropped after the test."""
    for op in OPS.values():
        monkeypatch.setattr(op, "impls", dict(op.impls))

    def write(name: str, text: str) -> str:
        p = tmp_path / name
        p.write_text(text)
        return str(p)
    return write


# --- 1. impossible shapes --------------------------------------------------------------------

@pytest.mark.parametrize("shape, expect", [
    ("B=4096,Hq=1099511627776,Hkv=1,D=256,context=8", "Hq=1099511627776 query heads"),
    ("B=2,Hq=8,Hkv=2,D=64,context=" + "1" * 31, "int32 seq_lens"),
])
def test_attention_dimensions_are_bounded(capsys, out, shape, expect):
    line = refused(capsys, out, "run", "--op", PA, "--impl", "gather_sdpa", "--shape", shape)
    assert "impossible shape for paged_attention" in line and expect in line


@pytest.mark.parametrize("shape", ["M=4096,N=1,K=17179869184", "M=4096,N=17179869184,K=1"])
def test_gemv_activations_are_bounded_not_only_the_weights(capsys, out, shape):
    line = refused(capsys, out, "run", "--op", "gemv_bf16", "--impl", "torch_matmul",
                   "--shape", shape)
    assert "impossible shape for gemv_bf16" in line and "elements together" in line


@pytest.mark.parametrize("op, shape, needs", [
    ("gemv_bf16", "M=1,N=32768,K=32768", "2.15 GB"),      # bf16 weights alone
    ("gemv_w4", "M=1,N=65536,K=32768", "1.14 GB"),        # INT4 codes + scales and zeros
    (PA, "B=64,Hq=32,Hkv=8,D=128,context=4096", "GB"),    # the whole KV pool, read or not
    ("copy", "N=268435456", "2.15 GB"),                   # fp32 src and dst
    ("allreduce", "bytes=600000000", "2 ranks x 600 MB"),  # ranks share the CPU's memory
])
def test_a_case_past_the_device_memory_is_refused(capsys, out, small_memory, op, shape, needs):
    line = refused(capsys, out, "run", "--op", op, "--shape", shape)
    assert f"impossible shape for {op} on cpu" in line and needs in line, line
    assert "the device has 1.07 GB" in line


@pytest.mark.parametrize("op, shape, needs", [
    # a 0.67 GB footprint, but drawn in fp32 (4 B a weight) beside its codes and a slice's
    # quantizer temporaries
    ("gemv_w4", "M=1,N=32768,K=32768,group_size=32", "5.54 GB"),
    ("gemv_w8", "M=1,N=16384,K=16384", "1.53 GB"),
    (PA, "B=32,Hq=32,Hkv=8,D=128,context=4096", "2.6 GB"),  # drawn in fp32, then converted
    ("copy", "N=134217728", "5.5 GB"),                      # fp32: the check's float64 copies
    ("allreduce", "bytes=268435456", "2 ranks x 2.21 GB"),  # every rank checks in float64
])
def test_a_case_past_the_hosts_available_memory_is_refused(capsys, out, monkeypatch, op, shape,
                                                             needs):
    """The inputs and float64 reference are built on the host: a case they cannot fit in its
    available memory is refused before anything is measured, though the device holds it."""
    monkeypatch.setattr("backends.cpu.mem_available", lambda: GiB)
    monkeypatch.setattr("backends.cpu._mem_total", lambda: 64 * 10**9)  # the device check passes
    line = refused(capsys, out, "run", "--op", op, "--shape", shape)
    assert f"not enough host memory for {op} on cpu: " in line and needs in line, line
    assert "inputs and float64 reference" in line and "1.07 GB is available" in line, line


def test_without_memavailable_the_backends_memory_is_the_limit(capsys, out, monkeypatch):
    monkeypatch.setattr("backends.cpu.mem_available", lambda: None)
    monkeypatch.setattr("backends.cpu._mem_total", lambda: 2 * GiB)
    line = refused(capsys, out, "run", "--op", "gemv_w4", "--shape",
                   "M=1,N=32768,K=32768,group_size=32")
    assert "not enough host memory for gemv_w4" in line and "2.15 GB is available" in line, line


def test_host_memory_counts_what_stays_on_the_host(monkeypatch):
    """On CUDA the GEMV reference runs on the GPU: the host holds only the fp32 staging (what
    decides at a shape of one slice of rows, where the reference outweighs the building)."""
    import torch

    from bench.case import Case, host_need
    from bench.cli.run import check_host_fits
    from bench.errors import UsageError
    op = OPS["gemv_w4"]
    big = Case("gemv_w4", op.shape(M=1, N=1024, K=4096, group_size=32), torch.bfloat16)
    on_cpu, on_cuda = (host_need(op, big.shape, big.dtype, b) for b in ("cpu", "cuda"))
    assert on_cuda < on_cpu
    monkeypatch.setattr("backends.cpu.mem_available", lambda: (on_cpu + on_cuda) // 2)
    with pytest.raises(UsageError, match="not enough host memory for gemv_w4 on cpu"):
        check_host_fits([big], "cpu", None)
    check_host_fits([big], "cuda", None)



# ids without "cuda": the check needs no GPU (conftest skips tests named for CUDA without one)
@pytest.mark.parametrize("backend", ["cpu", "cuda"], ids=["cpu_ranks", "gpu_ranks"])
def test_every_rank_the_run_starts_holds_its_inputs_on_this_host(monkeypatch, backend):
    """The ranks of a collective are processes on this host whatever device each one drives (a
    GPU each on CUDA): their host memory adds up on CUDA as on the CPU; the device check counts
    them only where they share the device (the CPU)."""
    import torch

    from bench.case import Case, host_need
    from bench.cli.run import check_fits, check_host_fits
    from bench.errors import UsageError
    op = OPS["allreduce"]
    case = Case("allreduce", op.shape(bytes=1 << 20, world_size=4), torch.float32)
    one = host_need(op, case.shape, case.dtype, backend)
    monkeypatch.setattr("backends.cpu.mem_available", lambda: 2 * one)
    with pytest.raises(UsageError, match=r"not enough host memory .* \(4 ranks x "):
        check_host_fits([case], backend, None)
    per_device = op.footprint_bytes(case.shape, case.dtype)
    if backend == "cuda":
        check_fits([case], backend, 2 * per_device)  # each rank its own GPU
    else:
        with pytest.raises(UsageError, match=r"\(4 ranks x "):
            check_fits([case], backend, 2 * per_device)


def test_a_suite_leaves_out_what_the_host_cannot_hold():
    """On a CPU a suite keeps the cases whose host need fits 90% of its memory, so that `run`
    does not refuse the whole suite for one case."""
    from bench.case import host_need
    from bench.suites import HOST_FRACTION, SuiteContext, cases_for
    for mem in (1 * 10**9, 2 * 10**9):
        cases = cases_for("gemv", SuiteContext("cpu", mem, 32 * 2**20))
        assert cases and all(host_need(OPS[c.op], c.shape, c.dtype, "cpu") <= HOST_FRACTION * mem
                             for c in cases)
    big = cases_for("gemv", SuiteContext("cpu", 64 * 10**9, 32 * 2**20))
    assert len(big) > len(cases_for("gemv", SuiteContext("cpu", 2 * 10**9, 32 * 2**20)))
    assert len(big) == len(cases_for("gemv", SuiteContext("cpu", 16 * 10**9, 32 * 2**20)))


def test_run_says_which_suite_cases_it_leaves_out(capsys):
    import argparse
    from bench.cli.run import _resolve_cases
    from bench.suites import SuiteContext, cases_for
    ctx = SuiteContext("cpu", 5 * 10**8, 32 * 2**20)
    args = argparse.Namespace(op=None, suite="gemv", shape=None, dtype=None)
    _resolve_cases(args, ctx)
    err = capsys.readouterr().err
    left_out: list = []
    cases_for("gemv", ctx, left_out)
    left = len(left_out)
    assert left > 0 and f"suite gemv leaves out {left} case(s)" in err
    assert "float64 reference need more than 90% of this machine's memory: gemv_" in err


def test_large_legitimate_shapes_fit():
    """The 70B GEMV shapes fit an 80 GB GPU; a 128 MB copy and the smoke suite fit 1 GiB."""
    import torch

    from bench.case import Case
    from bench.cli.run import check_fits
    from kernels.probes import ProbeShape
    llama_3_70b = ((10240, 8192), (8192, 8192), (57344, 8192), (8192, 28672), (128256, 8192))
    big = [Case(op, OPS[op].shape_type(M=64, N=n, K=k), torch.bfloat16)
           for n, k in llama_3_70b for op in ("gemv_bf16", "gemv_w8", "gemv_w4")]
    assert max(OPS[c.op].footprint_bytes(c.shape, c.dtype) for c in big) > 2 * 10**9
    check_fits(big, "cuda", 80 * 10**9)
    check_fits([Case("copy", ProbeShape(N=2**25), torch.float32)], "cpu", GiB)
    check_fits([Case(n, s, d) for n, op in OPS.items() for s, d in op.smoke], "cpu", GiB)
    check_fits(big, "xla", None)  # a device that reports no memory: the shape's own bounds only


def test_footprint_is_what_the_inputs_and_output_hold():
    import torch
    for name, op in OPS.items():
        if op.collective:
            continue
        for shape, dtype in op.smoke:
            args = op.make_inputs(shape, dtype, "cpu", 0)
            out_shape, out_dtype = op.out_spec(shape, dtype)
            held = sum(a.nbytes for a in args if isinstance(a, torch.Tensor)) + \
                torch.empty(out_shape, dtype=out_dtype).nbytes
            assert op.footprint_bytes(shape, dtype) == held, (name, shape, dtype)


# --- 2. seed ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [str(2**64), str(-2**63 - 1)])
def test_a_seed_torch_cannot_take_is_refused(capsys, out, seed):
    line = refused(capsys, out, "run", *GEMV, "--seed", seed)
    assert "--seed" in line and str(2**64 - 1) in line


def test_the_seed_range_is_torchs():
    import torch

    from bench.cli.common import SEED_RANGE, seed
    lo, hi = SEED_RANGE
    for v in (lo, hi):
        assert seed(str(v)) == v
        torch.Generator().manual_seed(v)


# --- 3, 4. --out ----------------------------------------------------------------------------------

@pytest.mark.skipif(not os.path.isdir("/proc"), reason="no /proc")
def test_out_where_no_file_can_be_made_is_refused_before_measuring(capsys, out):
    # As root os.access says /proc is writable; only making a file there shows it is not.
    line = refused(capsys, out, "run", *GEMV, "--out", "/proc")
    assert "/proc" in line
    assert not [p for p in os.listdir("/proc") if p.startswith(".decodewall-")]


@pytest.mark.parametrize("given", ["", " "])
def test_empty_out_is_refused(capsys, out, tmp_path, monkeypatch, given):
    monkeypatch.chdir(tmp_path)
    line = refused(capsys, out, "run", *GEMV, "--out", given)
    assert "--out" in line and "empty" in line
    assert not list(tmp_path.glob("*.jsonl")) and not list(tmp_path.glob("*/*.jsonl"))


# --- 5. empty names -------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, expect", [
    (["run", "--suite", ""], "--suite is empty"),
    (["run", "--suite", " "], "--suite is empty"),
    (["run", "--op", ""], "--op is empty"),
    (["run", "--op", "\t"], "--op is empty"),
    (["run", "--model", ""], "--model is empty"),
    (["run", "--model", " "], "--model is empty"),
    (["run", *GEMV, "--chip", ""], "--chip is empty"),
    (["run", *GEMV, "--chip", " "], "--chip is empty"),
    (["run", *GEMV, "--plugin", ""], "--plugin is empty"),
    (["chips", "--chip", ""], "--chip is empty"),
    (["roof", "--chip", ""], "--chip is empty"),
])
def test_an_empty_name_is_not_the_default(capsys, out, argv, expect):
    assert expect in refused(capsys, out, *argv)


# --- 6. nothing to run --------------------------------------------------------------------------

def test_a_suite_without_the_dtype_asked_for_is_refused(capsys, out):
    line = refused(capsys, out, "run", "--suite", "decode", "--dtype", "float16")
    assert "suite decode has no float16 cases" in line


def test_impls_that_do_not_run_here_are_refused(capsys, out, plugin):
    p = plugin("gpu_only.py", "from kernels import register_impl\n"
               "@register_impl('gemv_bf16', 'gpu_only', backends=['cuda'])\n"
               "def gpu_only(x, w):\n    return x @ w.T\n")
    line = refused(capsys, out, "run", *GEMV, "--plugin", p, "--impl", "gpu_only")
    assert "nothing to run on cpu: gpu_only runs on cuda, not cpu" in line


def test_impls_the_suite_leaves_out_are_refused(capsys, out):
    line = refused(capsys, out, "run", "--suite", "gemv", "--impl", "torch_compiled")
    assert "nothing to run" in line and "torch_compiled" in line


@pytest.mark.xla
def test_allreduce_on_xla_is_refused(out):
    p = run_cli("run", "--no-save", "--op", "allreduce", "--shape", "bytes=4096",
                "--backend", "xla", timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "nothing to run on xla: torch_distributed runs on cpu, cuda" in lines[0]


# --- 7, 9. plugins --------------------------------------------------------------------------------

@pytest.mark.parametrize("body, expect", [
    ("import sys\nsys.exit(0)\n", "failed to load: it called sys.exit(0)"),
    ("import sys\nsys.exit('bye')\n", "failed to load: it called sys.exit('bye')"),
    ("raise ValueError()\n", "failed to load: ValueError"),
])
def test_a_plugin_that_exits_or_raises_is_named(capsys, out, plugin, body, expect):
    p = plugin("bad.py", body)
    line = refused(capsys, out, "run", *GEMV, "--plugin", p)
    assert line.endswith(f"plugin {p} {expect}"), line


def test_a_plugin_given_twice_is_named_as_such(capsys, out, plugin, tmp_path, monkeypatch):
    p = plugin("good.py", "from kernels import register_impl\n"
               "@register_impl('gemv_bf16', 'plug_mm', backends=['cpu'])\n"
               "def plug_mm(x, w):\n    return x @ w.T\n")
    impls = dict(OPS["gemv_bf16"].impls)
    assert refused(capsys, out, "run", *GEMV, "--plugin", p, "--plugin", p).endswith(
        f"plugin {p} is given twice")
    monkeypatch.setattr(OPS["gemv_bf16"], "impls", impls)  # as a new process would start
    monkeypatch.chdir(tmp_path)  # the same file by another path
    line = refused(capsys, out, "run", *GEMV, "--plugin", p, "--plugin", "good.py")
    assert line.endswith(f"plugin good.py is given twice (also as {p})")


def test_a_directory_given_as_plugin_is_named_as_such(capsys, out, tmp_path):
    assert f"plugin {tmp_path}: is a directory" in refused(capsys, out, "run", *GEMV,
                                                           "--plugin", str(tmp_path))


def test_a_plugin_that_exits_only_in_the_case_worker_is_reported(out, plugin):
    """The worker loads the plugin again: it reports the failure, and the run ends with that
    line and what was kept (exit 1: the parent had loaded it, so it was not known before
    measuring), no empty table."""
    p = plugin("worker_exit.py", "import os, sys\n"
               "if 'DECODEWALL_WORKER_PATH' in os.environ:\n    sys.exit(0)\n")
    r = run_cli("run", *GEMV, "--impl", "torch_matmul", "--budget", "quick", "--plugin", p,
                "--out", str(out))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0] == (f"decodewall: error: the case worker ended at start (exit code 3): "
                        f"plugin {p} failed to load: it called sys.exit(0); nothing saved")
    assert not out.exists() or not list(out.iterdir())
    assert r.stdout == ""


# --- 8. torchrun's variables ----------------------------------------------------------------------

@pytest.mark.parametrize("env, expect", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a whole number"),
    ({"RANK": "x"}, "RANK='x' is not a whole number"),
    ({"RANK": "2"}, "RANK=2 is out of range 0..1"),
    ({"MASTER_PORT": "port"}, "MASTER_PORT='port'"),
    ({"MASTER_ADDR": ""}, "MASTER_ADDR is empty"),  # refused before the rendezvous
    ({"LOCAL_RANK": "x"}, "LOCAL_RANK='x' is not a whole number"),
    ({"LOCAL_RANK": "2"}, "LOCAL_RANK=2 is out of range 0..1"),
])
def test_malformed_torchrun_variables_are_named(capsys, out, monkeypatch, env, expect):
    base = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    for k, v in {**base, **env}.items():
        monkeypatch.setenv(k, v)
    assert expect in refused(capsys, out, "run", "--op", "allreduce", "--shape", "bytes=4096")


def test_a_world_size_other_than_torchruns_is_refused(capsys, out, monkeypatch):
    monkeypatch.setattr("bench.collectives.run_as_rank", None)  # nothing may start the ranks
    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(k, v)
    assert refused(capsys, out, "run", "--op", "allreduce", "--shape", "bytes=4096",
                   "--world-size", "4").endswith("--world-size 4 but torchrun started 2 ranks")


def test_a_failed_torchrun_rendezvous_is_one_line(out):
    """Rank 0 cannot serve the rendezvous (its port is taken): torch's C++ side writes warnings
    and stacks of C++ frames to fd 2 for each try, then raises; the run says it in one line."""
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        r = run_cli("run", "--op", "allreduce", "--shape", "bytes=4096,world_size=1",
                    "--case-timeout", "10", "--out", str(out), env=env)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"decodewall: error: rank 0: the torchrun rendezvous at "
                               f"127.0.0.1:{port} failed: "), lines
    assert not out.exists() or not list(out.iterdir())


# --- 9. messages ----------------------------------------------------------------------------------

def test_an_empty_shape_field_name_is_named(capsys, out):
    line = refused(capsys, out, "run", "--op", "gemv_bf16", "--shape", "=1,N=8,K=8")
    assert "a field name is empty in '=1'" in line


@pytest.mark.parametrize("argv, expect", [
    (["run", "--budget", "fast"], "decodewall: error: argument --budget: invalid choice: 'fast' "
     "(choose from 'quick', 'normal', 'thorough') (see `decodewall run --help`)"),
    (["run", "--backend", "jax"], "decodewall: error: unknown backend 'jax'; jax devices run on "
     "the xla backend (backends: cpu, cuda, xla)"),
    (["run", "--backend", "ROCm"], "decodewall: error: unknown backend 'ROCm'; rocm devices run "
     "on the cuda backend (backends: cpu, cuda, xla)"),
    (["run", "--op", "allreduce", "--world-size", "0"], "decodewall: error: argument "
     "--world-size: must be 1..4096 ranks, got '0' (see `decodewall run --help`)"),
])
def test_a_refusal_names_the_help_or_the_backend_to_use(capsys, out, argv, expect):
    assert refused(capsys, out, *argv) == expect


def test_nothing_to_run_names_three_reasons_and_counts_the_rest(capsys, out, plugin):
    p = plugin("gpu_only.py", "from kernels import register_impl\n" + "".join(
        f"@register_impl('gemv_bf16', 'gpu_{i}', backends=['cuda'])\n"
        f"def gpu_{i}(x, w):\n    return x @ w.T\n" for i in range(5)))
    argv = [a for i in range(5) for a in ("--impl", f"gpu_{i}")]
    assert refused(capsys, out, "run", *GEMV, "--plugin", p, *argv).endswith(
        "nothing to run on cpu: gpu_0 runs on cuda, not cpu; gpu_1 runs on cuda, not cpu; gpu_2 "
        "runs on cuda, not cpu; and 2 more")


def test_a_shape_with_an_empty_field_or_spaces_is_the_shape_it_names():
    """`M=1,N=8,K=8,` (a trailing comma, a doubled one) and `M = 1, N = 8` are M=1,N=8,K=8."""
    from bench.cli.common import parse_shape
    op = OPS["gemv_bf16"]
    for text in ("M=1,,N=8,K=8,", "M = 1, N =8 ,K= 8"):
        assert parse_shape(op, text) == op.shape(M=1, N=8, K=8), text


def test_without_chip_the_detected_chip_is_judged_against():
    from backends import lookup_chip
    from bench.cli.common import resolve_chip
    assert resolve_chip(None, {"chip": "h100-sxm"}) == lookup_chip("h100-sxm")
    assert resolve_chip(None, {"chip": None}) is None and resolve_chip(None, {}) is None
    assert resolve_chip("h200", {"chip": "h100-sxm"}) == lookup_chip("h200")


def test_a_roof_the_memory_limit_refuses_is_named_by_its_first_line(monkeypatch):
    from bench import roofline
    from bench.cli.common import measured_roof
    from bench.errors import UsageError

    def refuse(*args):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory\n  at frame 1\n  at frame 2")
    monkeypatch.setattr(roofline, "measure_roof", refuse)
    with pytest.raises(UsageError) as e:
        measured_roof(None, None, None)
    assert str(e.value) == ("not enough memory to measure the roof (an address-space or memory "
                            "limit?): DefaultCPUAllocator: can't allocate memory")


@pytest.mark.parametrize("argv, expect", [
    (["--bogus"], "unrecognized arguments: --bogus (decodewall takes a COMMAND first"),
    (["--bogus", "run"], "unrecognized arguments: --bogus (decodewall takes a COMMAND first"),
    (["run", "--bogus"], "unrecognized arguments: --bogus (see `decodewall run --help`)"),
    (["chips", "--bogus", "x"], "unrecognized arguments: --bogus x (see `decodewall chips --help`)"),
])
def test_unknown_arguments_are_named_with_the_right_help(capsys, out, argv, expect):
    assert expect in refused(capsys, out, *argv)


# --- 10. --json and tracebacks --------------------------------------------------------------------

def test_json_stdout_has_no_traceback_but_the_file_keeps_it(capsys, out, plugin):
    from bench.cli import main
    p = plugin("raises.py", "from kernels import register_impl\n"
               "@register_impl('gemv_bf16', 'boom', backends=['cpu'])\n"
               "def boom(x, w):\n    raise RuntimeError('kaboom')\n")
    assert main(["run", *GEMV, "--plugin", p, "--impl", "boom", "--budget", "quick", "--json",
                 "--no-progress", "--out", str(out)]) == 0
    cap = capsys.readouterr()
    (shown,) = map(json.loads, cap.out.splitlines())
    assert shown["status"] == "error" and "kaboom" in shown["error"]
    assert "traceback" not in shown and "Traceback" not in cap.out
    (f,) = out.iterdir()
    (saved,) = map(json.loads, f.read_text().splitlines())
    assert saved["status"] == "error" and "RuntimeError: kaboom" in saved["traceback"]


@pytest.mark.parametrize("raise_it, status, error", [
    ("raise E()", "error", "E"),
    ("raise N()", "skipped", "not implemented for this case"),
])
def test_a_kernel_exception_whose_str_raises_is_its_status(capsys, out, plugin, raise_it, status,
                                                           error):
    """An exception class whose own __str__ raises: recorded as the error (named by its type) or
    skip it is, not a worker crash from formatting the message."""
    from bench.cli import main
    p = plugin("badstr.py", "from kernels import register_impl\n"
               "class E(Exception):\n    def __str__(self):\n        raise ValueError('no')\n"
               "class N(NotImplementedError):\n    def __str__(self):\n        raise ValueError('no')\n"
               "@register_impl('gemv_bf16', 'badstr', backends=['cpu'])\n"
               f"def badstr(x, w):\n    {raise_it}\n")
    assert main(["run", *GEMV, "--plugin", p, "--impl", "badstr", "--budget", "quick", "--json",
                 "--no-progress", "--out", str(out)]) == 0
    (shown,) = map(json.loads, capsys.readouterr().out.splitlines())
    assert (shown["status"], shown["error"]) == (status, error)


# --- 11. world sizes ----------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["--shape", "bytes=4096", "--world-size", "64"],
    ["--shape", "bytes=4096,world_size=64"],
])
def test_a_world_size_this_machine_cannot_start_is_refused(capsys, out, monkeypatch, argv):
    monkeypatch.setattr("bench.collectives.max_world_size", lambda backend: 2)
    line = refused(capsys, out, "run", "--op", "allreduce", *argv)
    assert "cannot run allreduce on cpu: world size 64 is more ranks than this machine runs (2)" \
        in line


# --- 12. repeated selections --------------------------------------------------------------------

@pytest.mark.parametrize("extra", [
    ["--shape", "M=1,N=64,K=128", "--shape", "K=128,M=1,N=64"],  # one shape, written twice
    ["--shape", "M=1,N=64,K=128", "--dtype", "bfloat16", "--dtype", "bfloat16"],
    ["--dtype", "float32", "--dtype", "float32"],  # the op's smoke shapes
    ["--shape", "bytes=4096,world_size=2", "--shape", "bytes=4096,world_size=4",
     "--world-size", "2"],  # two shapes made one by the world size asked for
])
def test_a_case_given_twice_is_measured_once(extra):
    from bench.cli import parse_args
    from bench.cli.run import resolve_cases
    from bench.suites import SuiteContext
    op = "allreduce" if "--world-size" in extra else "gemv_bf16"
    args = parse_args(["run", "--op", op, *extra])
    cases = resolve_cases(args, SuiteContext("cpu"))
    keys = [(c.shape, c.dtype) for c in cases]
    assert keys and len(keys) == len(set(keys)), keys


def test_smoke_shapes_listed_in_two_dtypes_are_one_case_in_the_dtype_asked_for(monkeypatch):
    import torch

    from bench.cli import parse_args
    from bench.cli.run import resolve_cases
    from bench.suites import SuiteContext
    copy = OPS["copy"]
    (shape, _), = copy.smoke
    monkeypatch.setattr(copy, "smoke", ((shape, torch.float32), (shape, torch.bfloat16)))
    cases = resolve_cases(parse_args(["run", "--op", "copy", "--dtype", "float16"]),
                          SuiteContext("cpu"))
    assert [(c.shape, c.dtype) for c in cases] == [(shape, torch.float16)]


def test_argument_types_bound_their_values():
    """--world-size, --case-timeout and path arguments are refused at parse time with what
    they take (a later check, where there is one, would blame the op's shape instead)."""
    import argparse

    from bench.cli.common import MAX_SECONDS, given, ranks, seconds
    assert ranks("1") == 1 and ranks("4096") == 4096
    assert seconds("0.5") == 0.5 and seconds(str(MAX_SECONDS)) == MAX_SECONDS
    assert given("a") == "a"
    for f, text in [(ranks, "0"), (ranks, "4097"), (ranks, "-2"), (ranks, "2.0"),
                    (seconds, "0"), (seconds, "-1"), (seconds, "nan"), (seconds, "inf"),
                    (seconds, str(MAX_SECONDS + 1)), (given, ""), (given, " \t")]:
        with pytest.raises(argparse.ArgumentTypeError):
            f(text)


def test_the_default_backend_is_checked_like_a_named_one(monkeypatch):
    """A backend's unusable settings (DECODEWALL_FLUSH set to no mode) are refused whether the
    backend was named or picked by default, before anything is measured."""
    import backends
    from bench.cli.common import resolve_backend
    from bench.errors import UsageError
    cpu = backends.get_backend("cpu")
    monkeypatch.setattr(type(cpu), "config_error", lambda self: "DECODEWALL_X is bad")
    monkeypatch.setattr(backends, "best_backend", lambda: cpu)
    for name in (None, "cpu", "CPU"):
        with pytest.raises(UsageError, match="DECODEWALL_X is bad"):
            resolve_backend(name)


def test_op_alone_runs_its_smoke_shapes_and_help_says_so():
    """`--op` without `--shape` runs the op's smoke shapes (tiny, fp32 among them): --help says so,
    or a reader expects a real shape and reads "in cache: not judged" without knowing why."""
    import argparse

    from bench.cli.run import _resolve_cases
    from bench.suites import SuiteContext
    args = argparse.Namespace(op="gemv_w4", suite=None, shape=None, dtype=None)
    cases = _resolve_cases(args, SuiteContext("cpu", 10**10, 32 * 2**20))
    assert [(c.shape, c.dtype) for c in cases] == list(OPS["gemv_w4"].smoke)
    out = run_cli("run", "--help")
    assert out.returncode == 0
    assert "smoke suite shapes" in " ".join(out.stdout.split())
    # copy, read and allreduce smoke in fp32 alone, paged_attention_kv8 in bf16 alone
    dtypes = {len({dt for _, dt in op.smoke}) for op in OPS.values()}
    assert dtypes == {1, 2} and "several dtypes" not in " ".join(out.stdout.split())


@pytest.mark.parametrize("argv, flag", [
    (["run", "--op", PA, "--op", "paged_attention_kv8"], "--op"),
    (["run", "--suite", "smoke", "--suite", "gemv"], "--suite"),
    (["run", *GEMV, "--budget", "quick", "--budget", "thorough"], "--budget"),
    (["roof", "--backend", "cpu", "--backend", "xla"], "--backend"),
    (["run", *GEMV, "--seed", "1", "--seed", "2"], "--seed"),
])
def test_an_option_of_one_value_given_two_is_refused(capsys, out, argv, flag):
    """argparse keeps the last of an option given twice: `run --op A --op B` would run B alone,
    without a word, where --shape, --impl and --dtype repeat. Two different values are refused
    naming both; the same value twice is one value."""
    line = refused(capsys, out, *argv)
    assert f"argument {flag}: given twice" in line and "it takes one value" in line, line
    from bench.cli import main
    assert main(["run", "--op", PA, "--op", PA, "--seed", "3", "--seed", "3", "--list"]) == 0
    capsys.readouterr()


def test_backends_says_when_the_cpus_span_numa_nodes(capsys, monkeypatch):
    import backends
    from bench.cli import main
    monkeypatch.setenv("COLUMNS", "250")
    # the CPU alone: asking XLA imports torchax into this process, whose claim on PrivateUse1
    # breaks torch.distributed's barrier for the in-process rank tests that may follow here
    monkeypatch.setattr(backends, "BACKENDS", {"cpu": backends.BACKENDS["cpu"]}, raising=False)
    monkeypatch.setattr("backends.cpu.numa_nodes", lambda: 2)
    assert main(["backends"]) == 0
    assert "; 2 NUMA nodes)" in capsys.readouterr().out
    monkeypatch.setattr("backends.cpu.numa_nodes", lambda: 1)
    assert main(["backends"]) == 0
    assert "NUMA" not in capsys.readouterr().out
