"""Device-check paths that only a GPU machine takes, or that its dry run passes by: the ncu
target's profiled window, the commands the test and suite steps start, the ncu probe, the peers'
extraction, the time boxes and process groups of the steps, driven here with stand-ins for CUDA,
ncu and the children."""
import json
import subprocess
import sys
import time
import types

import pytest
import torch

from bench.gpucheck import check as dc
from bench.gpucheck import ncu
from kernels.triton_util import HAS_TRITON
from tests.bench.gpucheck.test_device_check import _check


def _wait_gone(pid: int, within: float = 5.0) -> None:
    """Wait until process `pid` has died (gone, or a zombie not yet reaped); AssertionError if
    it still runs after `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} still running")


def _fake_op(calls: list[str]) -> types.SimpleNamespace:
    """An op whose one impl notes each call in `calls` and whose inputs live on the host."""
    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append("call")
        return x * 2

    impl = types.SimpleNamespace(fn=fn, prepare=None, out_arg=False)
    return types.SimpleNamespace(
        impls={"fake_impl": impl}, shape=lambda **kw: types.SimpleNamespace(**kw),
        make_inputs=lambda shape, dtype, dev, seed: (torch.ones(shape.N, dtype=dtype),),
        out_spec=lambda shape, dtype: ((shape.N,), dtype),
        bytes_moved=lambda shape, dtype: 4 * shape.N)


def test_the_ncu_target_profiles_one_call_after_the_tuning_calls_on_cuda(monkeypatch):
    """On CUDA, ncu (--profile-from-start off) profiles what runs between cudaProfilerStart and
    Stop: one call of the impl, synchronized inside the window, after two calls outside it that
    tune and compile; the record says which device ran it."""
    import kernels
    calls: list[str] = []
    monkeypatch.setitem(kernels.OPS, "fake_op", _fake_op(calls))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Fake H200")
    monkeypatch.setattr(ncu, "_profiler", lambda on: calls.append("start" if on else "stop"))
    case = {"op": "fake_op", "impl": "fake_impl", "shape": {"N": 8}, "dtype": "float32"}
    info = ncu.run_target(case, "cuda", 0)
    assert calls == ["call", "call", "sync", "start", "call", "sync", "stop"]
    assert info["device"] == "Fake H200" and info["bytes_moved"] == 32 and info["out_bytes"] == 32
    calls.clear()
    ncu.run_target(case, "cpu", 0)  # the dry run's interpreted path has no profiler window
    assert "start" not in calls and calls.count("call") == 3


def test_the_profiler_window_falls_back_to_libcudart(monkeypatch):
    """A torch without the cudart binding: cudaProfilerStart/Stop through ctypes, and an error
    code from them is an error, not a window that silently profiles nothing."""
    import ctypes
    import torch.cuda.profiler as prof

    def missing() -> None:
        raise AttributeError("no cudart")

    monkeypatch.setattr(prof, "start", missing)
    monkeypatch.setattr(prof, "stop", missing)
    seen: list[str] = []
    rcs = {"cudaProfilerStart": 0, "cudaProfilerStop": 0}
    lib = types.SimpleNamespace(**{name: (lambda name=name: seen.append(name) or rcs[name])
                                   for name in rcs})
    monkeypatch.setattr(ctypes, "CDLL", lambda path: lib)
    ncu._profiler(True)
    ncu._profiler(False)
    assert seen == ["cudaProfilerStart", "cudaProfilerStop"]
    rcs["cudaProfilerStart"] = 3
    with pytest.raises(RuntimeError, match="cudaProfilerStart returned 3"):
        ncu._profiler(True)


def test_the_test_steps_start_the_cuda_tests_untuned_in_shards(tmp_path, monkeypatch):
    """What the pytest and configs steps start on the GPU: the cuda tests but the slow ones,
    every config and the peers' own tests left to their places, one config per kernel
    (DECODEWALL_AUTOTUNE=0: tuning each test shape would compile every config again and again),
    one shard of the selection each, with the plugin that shards and names failures."""
    seen: list[tuple] = []

    def fake_run_procs(cmds, box, log, env, tags):
        seen.append((cmds, env))
        return [0] * len(cmds), 1.0, [[] for _ in cmds]

    monkeypatch.setattr(dc, "run_procs", fake_run_procs)
    monkeypatch.setattr(dc, "pytest_shards", lambda: 3)
    c = _check(tmp_path)
    try:
        c.step_pytest("pytest")
        c.step_pytest("configs")
    finally:
        c.log.close()
    (tests, env), (configs, cenv) = seen
    for cmds, e in ((tests, env), (configs, cenv)):
        assert e["DECODEWALL_AUTOTUNE"] == "0" and e["PYTHONPATH"] == c.env["PYTHONPATH"]
        assert [cmd[cmd.index("--shard") + 1] for cmd in cmds] == ["0/3", "1/3", "2/3"]
        for cmd in cmds:
            assert cmd[cmd.index("-m", 3) + 1] == "cuda and not slow"
            plugin = cmd.index("-p", cmd.index("--color=no")) + 1
            assert cmd[plugin] == "bench.gpucheck.pytest_shard"
            assert "-v" in cmd
    k = tests[0][tests[0].index("-k") + 1]
    assert "not every_config" in k and "not test_peers_" in k
    i = configs[0].index("-k")
    assert configs[0][i + 1:i + 3] == ["every_config", "tests/kernels/gemv"]


def test_the_suite_step_runs_the_suite_into_the_output_folder_with_a_case_timeout(
        tmp_path, monkeypatch):
    """The suite step's command: the suite and budget asked for on this backend, its results
    file written into the check's folder (the files that come back), one hung impl boxed at
    CASE_TIMEOUT_S, no progress bar; --chip passed on."""
    seen: list[list[str]] = []
    monkeypatch.setattr(dc, "run_proc", lambda cmd, *a, **k: seen.append(cmd) or (0, 1.0))
    c = _check(tmp_path, chip="h200")
    try:
        c._read_records = lambda before: None
        c.step_suite()
    finally:
        c.log.close()
    (cmd,) = seen
    assert cmd[1:5] == ["-m", "bench.cli", "run", "--backend"] and cmd[5] == "cuda"

    def opt(name: str) -> str:
        return cmd[cmd.index(name) + 1]

    assert opt("--suite") == "gpu-check" and opt("--budget") == "quick"
    assert opt("--out") == str(c.out) and opt("--chip") == "h200"
    assert opt("--case-timeout") == str(dc.CASE_TIMEOUT_S) and "--no-progress" in cmd


def test_a_kernels_key_case_is_the_planned_first_shape_whatever_finished_first():
    """The key case is the op's first planned shape even where the records start elsewhere (a
    suite whose first case failed for this impl, or records read in another order)."""
    from bench.gpucheck.summary import kernel_rows
    from kernels import OPS
    from tests.bench.gpucheck.test_goals import rec
    shapes = [dict(M=1, N=n, K=128) for n in (64, 128)]
    planned = [types.SimpleNamespace(op="gemv_bf16", shape=OPS["gemv_bf16"].shape(**s))
               for s in shapes]
    rs = [rec("gemv_bf16", "triton", shapes[1], 20.0), rec("gemv_bf16", "triton", shapes[0], 10.0)]
    (row,) = kernel_rows(planned, rs, [])
    assert row["key_shape"] == shapes[0] and row["key_pct_roof"] == 10.0


def test_a_kernels_row_counts_only_its_records_that_passed():
    """A record that failed its check (or crashed, timed out) is a case of the row, not an ok
    one: its % of roof is neither the key case's figure nor in the median."""
    from bench.gpucheck.summary import kernel_rows
    from kernels import OPS
    from tests.bench.gpucheck.test_goals import rec
    shapes = [dict(M=1, N=n, K=128) for n in (64, 128)]
    planned = [types.SimpleNamespace(op="gemv_bf16", shape=OPS["gemv_bf16"].shape(**s))
               for s in shapes]
    rs = [rec("gemv_bf16", "triton", shapes[0], 99.0, status="failed-check"),
          rec("gemv_bf16", "triton", shapes[0], 10.0, dtype="float16"),
          rec("gemv_bf16", "triton", shapes[1], 30.0)]
    (row,) = kernel_rows(planned, rs, [])
    assert (row["ok"], row["cases"]) == (2, 3) and row["statuses"] == ["failed-check", "ok"]
    assert row["key_pct_roof"] == 10.0 and row["median_pct_roof"] == 20.0


@pytest.mark.parametrize("member, link", [("../escaped.py", None), ("peer/cfg", "/etc/passwd"),
                                          ("peer/up", "../../escaped.py")])
def test_extract_into_the_existing_peers_folder_refuses_what_leaves_it(tmp_path, member, link):
    """The check extracts FlashInfer's tree into a folder that exists already (the peers
    folder, wheels installed in it first): a member, or a link, that would reach outside it is
    refused there too, and nothing is written outside."""
    import io
    import tarfile

    from bench.gpucheck.peers import extract
    bad = tmp_path / "evil.tar.xz"
    with tarfile.open(bad, "w:xz") as tf:
        info = tarfile.TarInfo(member)
        if link is None:
            info.size = 1
            tf.addfile(info, io.BytesIO(b"x"))
        else:
            info.type, info.linkname = tarfile.SYMTYPE, link
            tf.addfile(info)
    site = tmp_path / "deep" / "site"
    site.mkdir(parents=True)
    with pytest.raises((tarfile.TarError, ValueError)):
        extract(bad, site)
    assert not (tmp_path / "deep" / "escaped.py").exists()
    assert not (site / "peer" / "cfg").is_symlink() and not (site / "peer" / "up").is_symlink()


@pytest.mark.skipif(not HAS_TRITON, reason="no Triton")
def test_the_gpu_ncu_targets_go_round_robin_and_long_context_starts_with_split_kv():
    """The GPU's ncu targets, all bf16 (the goals' dtype, the one the suite tuned): every
    entry's first impl before any entry's second, so that a spent box drops second impls first;
    at batch 1 x 32768 the split-KV impls first (the why pass profiles the first there when no
    goal read one; splitting is that shape's point)."""
    from bench.gpucheck.cases import ncu_targets
    from bench.gpucheck.check import LONG_CONTEXT
    targets = ncu_targets("cuda", [])
    assert targets and {t["dtype"] for t in targets} == {"bfloat16"}

    def entry(t: dict) -> tuple:
        return t["op"], tuple(sorted(t["shape"].items()))

    entries = list(dict.fromkeys(entry(t) for t in targets))
    assert [entry(t) for t in targets[:len(entries)]] == entries
    long = [t["impl"] for t in targets if t["op"] == "paged_attention"
            and t["shape"]["B"] == 1 and t["shape"]["context"] == LONG_CONTEXT]
    assert len(long) > 1 and "split" in long[0]
    split = [i for i, name in enumerate(long) if "split" in name]
    assert split == list(range(len(split)))


def test_a_test_that_errs_in_setup_is_named_with_its_reason(tmp_path):
    """A fixture that raises (a CUDA tensor it could not allocate, a peer that did not import)
    is an ERROR in setup, not a failure in the call: its reason comes on a line of its own too,
    and pytest_progress files it under the test."""
    from bench.gpucheck.check import pytest_progress
    from tests.helpers import pytest_with_plugin
    (tmp_path / "test_s.py").write_text(
        "import pytest\n\n\n@pytest.fixture\ndef buf():\n"
        "    raise RuntimeError('CUDA out of memory. Tried to allocate 2.00 GiB')\n\n\n"
        "def test_a(buf):\n    pass\n")
    out = pytest_with_plugin("-v", "--tb=line", str(tmp_path))
    assert out.returncode == 1, out.stdout[-2000:]
    assert any(ln.startswith("DWFAIL ") and "test_s.py::test_a (setup): RuntimeError: CUDA out "
               "of memory" in ln for ln in out.stdout.splitlines()), out.stdout[-2000:]
    p = pytest_progress(out.stdout.splitlines(keepends=True))
    assert p["counts"]["ERROR"] == 1 and len(p["failed"]) == 1
    assert p["reasons"][p["failed"][0]].startswith("RuntimeError: CUDA out of memory")


def test_a_step_that_ignores_sigterm_is_killed_all_the_same(tmp_path):
    """kill_group follows SIGTERM with SIGKILL: a child that ignores SIGTERM (a process stuck in
    a driver call, a tool that traps it) cannot outlive its time box, nor can its children."""
    from bench.gpucheck.proc import kill_group
    pid_file = tmp_path / "grandchild"
    proc = subprocess.Popen(["bash", "-c", f"trap '' TERM; (trap '' TERM; sleep 60) & "
                             f"echo $! > {pid_file}; wait"], start_new_session=True)
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    t0 = time.monotonic()
    kill_group(proc, 0.5)
    assert proc.poll() is not None and time.monotonic() - t0 < 5
    _wait_gone(grandchild)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("many", [False, True])
def test_a_check_interrupted_during_a_step_leaves_none_of_its_processes(tmp_path, many):
    """SIGTERM from outside (the device tool's limit) raises in the check while it waits on a
    step: run_proc and run_procs kill the step's process groups before the exception goes on,
    so nothing keeps the GPU after the check."""
    import signal

    from bench.gpucheck.proc import run_proc, run_procs

    pid_files = [tmp_path / f"pid{i}" for i in range(2 if many else 1)]
    stopped = []

    def stop(signum, frame):
        # once, and only once each step has started its child: on a busy machine a bash may not
        # have written its pid a second after it was started, and a group killed before then is
        # no test of the children. Until then the timer fires again (the step's box is 60 s).
        if not stopped and all(p.exists() and p.read_text().strip() for p in pid_files):
            stopped.append(True)
            raise _Stop()

    cmds = [["bash", "-c", f"sleep 60 & echo $! > {p}; wait"] for p in pid_files]
    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, 1.0, 0.1)
    try:
        with open(tmp_path / "log", "w") as log, pytest.raises(_Stop):
            if many:
                run_procs(cmds, 60, log, {"PATH": "/usr/bin:/bin"}, ["a", "b"])
            else:
                run_proc(cmds[0], 60, log, {"PATH": "/usr/bin:/bin"})
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    for p in pid_files:
        _wait_gone(int(p.read_text()))


def test_the_processes_of_a_test_step_cut_at_its_box_are_killed(tmp_path):
    """run_procs cuts every process still running at the step's box, children included: none
    of them goes on beside the next step's timings."""
    from bench.gpucheck.proc import run_procs
    pid_files = [tmp_path / f"pid{i}" for i in range(2)]
    cmds = [["bash", "-c", f"sleep 60 & echo $! > {p}; wait"] for p in pid_files]
    with open(tmp_path / "log", "w") as log:
        rcs, _, _ = run_procs(cmds, 1.0, log, {"PATH": "/usr/bin:/bin"}, ["a", "b"])
    assert rcs == [None, None]
    for p in pid_files:
        _wait_gone(int(p.read_text()))


def test_ncu_off_the_path_is_found_where_cuda_installs_it(monkeypatch):
    """Where ncu is not on PATH: the default toolkit's (/usr/local/cuda, the link the install
    points at the toolkit in use), else the newest under /usr/local/cuda-*/bin (by version: 13.0
    after 9.2), else under Nsight Compute's own folder; None where none holds one."""
    import fnmatch

    from bench.gpucheck import proc
    files = ["/usr/local/cuda/bin/ncu", "/usr/local/cuda-9.2/bin/ncu",
             "/usr/local/cuda-13.0/bin/ncu", "/usr/local/cuda-12.8/bin/ncu",
             "/opt/nvidia/nsight-compute/2025.3.1/ncu"]
    monkeypatch.setattr(proc.shutil, "which", lambda name: None)
    monkeypatch.setattr(proc.glob, "glob", lambda pattern: fnmatch.filter(files, pattern))
    assert proc.find_ncu() == "/usr/local/cuda/bin/ncu"
    files.remove("/usr/local/cuda/bin/ncu")
    assert proc.find_ncu() == "/usr/local/cuda-13.0/bin/ncu"
    files[:] = [f for f in files if not f.startswith("/usr/local/")]
    assert proc.find_ncu() == "/opt/nvidia/nsight-compute/2025.3.1/ncu"
    files.clear()
    assert proc.find_ncu() is None
    monkeypatch.setattr(proc.shutil, "which", lambda name: "/usr/bin/ncu")
    assert proc.find_ncu() == "/usr/bin/ncu"


def test_the_shards_of_a_test_step_share_one_time_box(tmp_path, monkeypatch):
    """run_procs waits on each process only for what is left of the one box: a shard that ends
    late in the box leaves the next one the rest of it, not a box of its own (8 shards would
    otherwise stretch a 90 s step far past the check's total)."""
    import io

    from bench.gpucheck import proc
    clock = [100.0]
    waits: list[float] = []

    class FakeProc:
        made = 0

        def __init__(self, cmd, **kw):
            self.first, FakeProc.made = FakeProc.made == 0, FakeProc.made + 1
            self.stdout, self.pid, self.rc = io.BytesIO(b""), 0, None

        def wait(self, timeout=None):
            waits.append(timeout)
            if not self.first:
                raise subprocess.TimeoutExpired("pytest", timeout)
            clock[0] += 70.0  # the first shard ends 70 s into the box
            self.rc = 0
            return 0

        def poll(self):
            return self.rc

    monkeypatch.setattr(proc.subprocess, "Popen", FakeProc)
    monkeypatch.setattr(proc.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(proc, "kill_group", lambda p, grace: None)
    with open(tmp_path / "log", "w") as log:
        rcs, _, _ = proc.run_procs([["a"], ["b"]], 90.0, log, {}, ["a", "b"])
    assert rcs == [0, None] and waits == [90.0, pytest.approx(20.0)]


def test_a_peer_cut_at_the_peers_box_is_not_installed(tmp_path):
    """A wheel whose pip the time box cut (no exit status) or that pip refused is a problem
    named with why, never listed as installed."""
    c = _check(tmp_path)
    try:
        c.peers = {"installed": [], "failed": {}}
        problems: list[str] = []
        for name, rc in (("a.whl", 0), ("b.whl", None), ("c.tar.xz", 1)):
            c._installed(name, rc, problems)
    finally:
        c.log.close()
    assert c.peers["installed"] == ["a.whl"]
    assert c.peers["failed"] == {"b.whl": "time box reached", "c.tar.xz": "exit 1, see steps.log"}
    assert problems == ["b.whl not installed (time box reached)",
                        "c.tar.xz not installed (exit 1, see steps.log)"]


def test_no_usable_backend_ends_the_check_after_env_and_a_slow_env_keeps_the_probes_box(
        tmp_path, monkeypatch):
    """The env probe answering that the backend is not there (no GPU) is the one answer that
    ends the check after env; and the probe (torch imported, the device initialised) keeps
    ENV_PROBE_S of its own however little of env's box nvidia-smi and ncu left."""
    monkeypatch.setattr(dc, "run_proc", lambda *a, **k: (0, 0.1))
    monkeypatch.setattr(dc, "find_ncu", lambda: None)
    boxes: list[float] = []
    for ok in (False, True):
        c = _check(tmp_path, limit=["env=4"])
        probe = {"backend_ok": ok, "backend_why": "no CUDA device", "torch_version": "2",
                 "triton_version": "3", "rich": True, "numpy": True, "pytest": True,
                 "device": {"name": "H200"}}

        def capture(cmd, box, env=None, probe=probe):
            boxes.append(box)
            return 0, 0.1, json.dumps(probe) + "\n"

        c._capture = capture
        try:
            c.step_env()
        finally:
            c.log.close()
        assert c.backend_usable is ok
        assert c.steps["env"].status == ("ok" if ok else "failed")
    assert "no CUDA device" in json.dumps(c.info) and all(b >= dc.ENV_PROBE_S - 1 for b in boxes)


def test_the_suites_records_are_read_when_the_check_is_stopped_during_it(tmp_path, monkeypatch):
    """SIGTERM during the suite (the device tool's limit) ends the check, and the cases the suite
    finished are still read for the final summary: the records file flushed per case is the
    window's result."""
    def stopped(*a, **k):
        raise dc.Interrupted()

    monkeypatch.setattr(dc, "run_proc", stopped)
    c = _check(tmp_path)
    read: list[set] = []
    c._read_records = lambda before: read.append(before)
    try:
        with pytest.raises(dc.Interrupted):
            c.step_suite()
    finally:
        c.log.close()
    assert read == [set()]


def test_the_background_compiles_end_with_a_check_stopped_before_configs(tmp_path):
    """SIGTERM during the pytest step (before configs would stop them): the background compile
    processes are stopped as the check ends and said in the summary, not left compiling and
    holding the GPU after it."""
    from tests.bench.gpucheck.test_device_check import _stub_steps
    c = _check(tmp_path, dry_run=True, no_warm=False)
    _stub_steps(c, [])
    out = tmp_path / "warm.out"
    started: list[subprocess.Popen] = []

    def start_warm():
        with open(out, "w") as f:
            started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                            stdout=f, start_new_session=True))
        c.warm_procs, c.warm_t0 = [(started[0], out)], time.monotonic()

    def pytest_step(name):
        c.begin(name)
        raise dc.Interrupted()

    c.start_warm, c.step_pytest = start_warm, pytest_step
    assert c.run() == 143
    (proc,) = started
    assert proc.poll() is not None and c.warm_procs == [] and c.warm["stopped"] == 1


def test_a_roof_step_that_read_nothing_leaves_no_roof_file(tmp_path, monkeypatch):
    """roof.json comes back only holding a reading: a roof run that failed or printed no JSON
    leaves no empty file among the few the device tool brings back; one that read the roof
    keeps it and says the figures against the datasheet."""
    reading = {"copy_gbps": 4200.0, "read_gbps": 4300.0, "roof_gbps": 4300.0,
               "datasheet_gbps": 4800.0}

    def roof(text, rc):
        def fake(cmd, box, log, env, stdout_path=None):
            stdout_path.write_text(text)
            return rc, 1.0
        return fake

    for text, rc, there in (("", 1, False), ("Traceback ...\n", 0, False),
                            (json.dumps(reading) + "\n", 0, True)):
        monkeypatch.setattr(dc, "run_proc", roof(text, rc))
        c = _check(tmp_path, with_=["roof"])
        try:
            c.step_roof()
        finally:
            c.log.close()
        assert (c.out / "roof.json").exists() == there
        assert c.steps["roof"].status == ("ok" if there else "failed")
    assert c.steps["roof"].detail == "copy 4200 GB/s, read 4300 GB/s = 90% of datasheet 4800"


def test_an_ncu_probe_that_hangs_is_cut_at_its_box(tmp_path, monkeypatch):
    """An ncu probe that never answers (ncu waiting on the GPU, a hung driver call) is cut at
    NCU_PROBE_S: the suite step that asks its verdict waits no longer than that, and the
    verdict says why it is unknown."""
    from tests.bench.gpucheck.test_device_check import NCU_PROBE
    monkeypatch.setattr(dc, "NCU_PROBE_S", 1)
    fake = tmp_path / "ncu"
    fake.write_text(NCU_PROBE.format(calls=tmp_path / "calls", body="sleep 60"))
    fake.chmod(0o755)
    c = _check(tmp_path)
    try:
        c.ncu_path = str(fake)
        c.start_ncu_probe()
        c.finish_ncu_probe()
    finally:
        c.log.close()
    assert c.info["ncu_probe"] == {"verdict": "unknown", "why": "time box reached"}
    assert c.ncu_probe["proc"].poll() is not None


def test_env_starts_the_ncu_probe_where_ncu_and_the_gpu_are_there(tmp_path, monkeypatch):
    """On the GPU with ncu found, env starts the background probe (its refusal is what gives the
    ncu box to the suite on machines without counters); without a usable backend it does not."""
    from tests.bench.gpucheck.test_device_check import NCU_PROBE
    fake = tmp_path / "ncu"
    fake.write_text(NCU_PROBE.format(calls=tmp_path / "calls", body="echo "
                                     "'==ERROR== Failed to initialize the profiler: x'; exit 1"))
    fake.chmod(0o755)
    monkeypatch.setattr(dc, "find_ncu", lambda: str(fake))
    monkeypatch.setattr(dc, "run_proc", lambda *a, **k: (0, 0.1))
    for ok in (True, False):
        c = _check(tmp_path)
        probe = {"backend_ok": ok, "torch_version": "2", "triton_version": "3", "rich": True,
                 "numpy": True, "pytest": True, "device": {"name": "H200"}}
        c._capture = lambda cmd, box, env=None, probe=probe: (0, 0.1, json.dumps(probe) + "\n")
        try:
            c.step_env()
            assert (c.ncu_probe is not None) == ok
            c.finish_ncu_probe()
        finally:
            c.log.close()
        if ok:
            assert c.info["ncu_probe"]["verdict"] == "refused" and c.ncu_unusable()


def test_a_test_file_that_fails_to_import_is_named_with_its_error(tmp_path):
    """A test file that cannot import on the GPU machine (an API its torch or Triton lacks)
    runs none of its tests and names none: every shard says the file and the import's error on
    a line of its own, and the merged progress lists the file once with that reason."""
    from bench.gpucheck.check import merge_progress, pytest_progress
    from tests.helpers import pytest_with_plugin
    (tmp_path / "test_bad.py").write_text("import torch\ntorch.no_such_api_xyz()\n\n\n"
                                          "def test_a():\n    pass\n")
    (tmp_path / "test_good.py").write_text("def test_b():\n    pass\n")
    progs = []
    for i in range(2):
        out = pytest_with_plugin("-v", "--tb=line", "-rfE", "--color=no", "--shard", f"{i}/2",
                                 str(tmp_path))
        assert out.returncode == 2, out.stdout[-2000:]
        assert any(ln.startswith("DWFAIL ") and "test_bad.py (collect): AttributeError"
                   in ln for ln in out.stdout.splitlines()), out.stdout[-2000:]
        progs.append(pytest_progress(out.stdout.splitlines(keepends=True)))
    m = merge_progress(progs)
    (bad,) = m["failed"]
    assert bad.endswith("test_bad.py") and "no_such_api_xyz" in m["reasons"][bad]
    assert sum(m["counts"].values()) == 0  # no test ran, and none is counted


def test_a_test_file_that_fails_to_import_costs_its_own_tests_only(tmp_path, monkeypatch):
    """The test steps' command, on a tree where one file cannot import: pytest would stop every
    shard at collection ("Interrupted: 1 error during collection") and run no test at all; the
    other files' tests run, and the file is named with its error."""
    from bench.gpucheck.check import pytest_progress
    from tests.helpers import REPO
    seen: list[list[str]] = []

    def fake_run_procs(cmds, box, log, env, tags):
        seen.extend(cmds)
        return [0] * len(cmds), 1.0, [[] for _ in cmds]

    monkeypatch.setattr(dc, "run_procs", fake_run_procs)
    monkeypatch.setattr(dc, "pytest_shards", lambda: 2)
    c = _check(tmp_path / "check")
    try:
        c.step_pytest("pytest")
    finally:
        c.log.close()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "pytest.ini").write_text("[pytest]\nmarkers =\n    cuda: x\n    slow: x\n")
    (tree / "test_bad.py").write_text("from torch import no_such_api_xyz\n")
    (tree / "test_good.py").write_text("import pytest\n\n\n@pytest.mark.cuda\n"
                                       "def test_b():\n    pass\n")
    out = subprocess.run(seen[0] + [str(tree)], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    p = pytest_progress(out.stdout.splitlines(keepends=True))
    assert p["counts"]["PASSED"] == 1, out.stdout[-2000:]
    (bad,) = p["failed"]
    assert bad.endswith("test_bad.py") and "no_such_api_xyz" in p["reasons"][bad]


def test_a_failures_reason_is_filed_under_its_whole_id_and_keeps_its_exception(tmp_path):
    """A parametrized id may hold ": " or " (" (a string parameter's): the reason is filed under
    the whole id, as -v names the test. An import error whose message runs over lines keeps
    its exception and every line, not the last line alone."""
    from bench.gpucheck.check import pytest_progress
    from tests.helpers import pytest_with_plugin
    (tmp_path / "test_ids.py").write_text(
        "import pytest\n\n\n@pytest.mark.parametrize('s', ['k: v', 'a (b)'])\n"
        "def test_p(s):\n    raise RuntimeError('boom ' + s)\n")
    (tmp_path / "test_ml.py").write_text(
        "raise ImportError('cannot load the kernel module\\nhint: build it with make')\n")
    out = pytest_with_plugin("-v", "--tb=line", "--color=no", "--continue-on-collection-errors",
                             str(tmp_path))
    p = pytest_progress(out.stdout.splitlines(keepends=True))
    assert len(p["failed"]) == 3, out.stdout[-2000:]
    for test in p["failed"]:
        assert test in p["reasons"], (test, p["reasons"])
    (k,) = [t for t in p["failed"] if t.endswith("[k: v]")]
    assert p["reasons"][k] == "RuntimeError: boom k: v"
    (ml,) = [t for t in p["failed"] if t.endswith("test_ml.py")]
    assert p["reasons"][ml] == ("ImportError: cannot load the kernel module hint: build it "
                                "with make")
