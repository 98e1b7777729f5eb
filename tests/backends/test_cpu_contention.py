"""Whether a CPU timing window had the CPU to itself: PSI's wait share and the hypervisor's steal
share over the window, recorded with each case, and one line after a run whose cases shared it.
Fake /proc files and a fake clock; and once for real, against a busy process."""
import os
import subprocess
import sys
import time

import pytest
import torch

from backends.cpu import CONTENTION_KEYS, ContentionSampler, _psi_some_us
from bench.case import Case
from bench.contention import contended, contention_note
from kernels.gemv import GemvShape


def psi(total_us: int) -> str:
    return (f"some avg10=0.00 avg60=0.00 avg300=0.00 total={total_us}\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")


def stat(steal: int, idle: int) -> str:
    # cpu user nice system idle iowait irq softirq steal guest guest_nice
    return f"cpu  1000 0 100 {idle} 0 0 0 {steal} 0 0\ncpu0 1 2 3\n"


def window(tmp_path, before, after, seconds=2.0):
    """A sampler over fake /proc files whose contents move from `before` to `after` (psi, stat)
    while the fake clock moves `seconds`."""
    p, s = tmp_path / "psi", tmp_path / "stat"
    times = iter([10.0, 10.0 + seconds])
    sm = ContentionSampler(clock=lambda: next(times), psi=str(p), stat=str(s))
    p.write_text(psi(before[0]))
    s.write_text(stat(*before[1]))
    sm.start()
    p.write_text(psi(after[0]))
    s.write_text(stat(*after[1]))
    return sm.stop(10, 0.5)


def test_the_wait_and_steal_shares_of_the_window(tmp_path):
    out = window(tmp_path, (1_000_000, (50, 8000)), (1_900_000, (150, 8700)))
    assert out["cpu_pressure_pct"] == pytest.approx(45.0)  # 0.9 s of 2 s
    assert out["cpu_steal_pct"] == pytest.approx(100 * 100 / 800)  # 100 of 800 jiffies
    assert contended(out)
    quiet = window(tmp_path, (1_000_000, (50, 8000)), (1_010_000, (50, 8800)))
    assert quiet == {"cpu_pressure_pct": 0.5, "cpu_steal_pct": 0.0} and not contended(quiet)


def test_guest_time_is_counted_once_and_pressure_is_at_most_the_window(tmp_path):
    """/proc/stat's user time already holds guest time (its 9th and 10th fields): the steal share
    is of user..steal alone. PSI, read just outside the clock's window, can exceed it: the share
    is 100% at most."""
    p, s = tmp_path / "psi", tmp_path / "stat"
    times = iter([10.0, 12.0])
    sm = ContentionSampler(clock=lambda: next(times), psi=str(p), stat=str(s))
    p.write_text(psi(1_000_000))
    s.write_text("cpu  1000 0 100 8000 0 0 0 50 0 0\n")
    sm.start()
    p.write_text(psi(3_500_000))  # 2.5 s of waiting in a 2 s window
    s.write_text("cpu  1600 0 100 8200 0 0 0 150 500 0\n")  # 500 of the 600 user: a guest's
    out = sm.stop(10, 0.5)
    assert out["cpu_steal_pct"] == pytest.approx(100 * 100 / 900, abs=0.01)
    assert out["cpu_pressure_pct"] == 100.0


def test_without_psi_or_stat_the_figures_are_null(tmp_path):
    sm = ContentionSampler(psi=str(tmp_path / "none"), stat=str(tmp_path / "none2"))
    sm.start()
    assert sm.stop(1, 0.1) == dict.fromkeys(CONTENTION_KEYS) and sm.min_window_s(2.0) == 0.0
    (tmp_path / "junk").write_text("nonsense\n")
    sm = ContentionSampler(psi=str(tmp_path / "junk"), stat=str(tmp_path / "junk"))
    sm.start()
    assert sm.stop(1, 0.1) == dict.fromkeys(CONTENTION_KEYS)


def test_the_pressure_read_is_the_process_cgroups_where_cgroup_v2_has_one(tmp_path, monkeypatch):
    import backends.cpu as cpu
    root = tmp_path / "cg"
    (root / "user.slice" / "job").mkdir(parents=True)
    (root / "user.slice" / "job" / "cpu.pressure").write_text(psi(5))
    own = tmp_path / "self"
    monkeypatch.setattr(cpu, "CGROUP", root)
    monkeypatch.setattr(cpu, "PROC_CGROUP", own)
    own.write_text("0::/user.slice/job\n")
    assert cpu.psi_path() == str(root / "user.slice" / "job" / "cpu.pressure")
    own.write_text("4:memory:/x\n0::/\n")  # the root cgroup: the system's figure
    assert cpu.psi_path() == cpu.PSI_CPU
    own.write_text("0::/elsewhere\n")  # no cpu.pressure there (PSI off per cgroup)
    assert cpu.psi_path() == cpu.PSI_CPU
    own.unlink()
    assert cpu.psi_path() == cpu.PSI_CPU


def test_a_run_says_how_many_cases_shared_the_cpu():
    ok = {"status": "ok", "time_s": {"median": 1e-3}}
    recs = [{**ok, "cpu_pressure_pct": 45.0, "cpu_steal_pct": 0.0},
            {**ok, "cpu_pressure_pct": 0.4, "cpu_steal_pct": 12.5},
            {**ok, "cpu_pressure_pct": 0.4, "cpu_steal_pct": 0.0},
            {**ok, "cpu_pressure_pct": None, "cpu_steal_pct": None},
            {"status": "failed-check", "time_s": None, "cpu_pressure_pct": 90.0}]
    line = contention_note(recs)
    assert line.startswith("2 of 4 timed case(s) ran while other tasks waited for the CPU")
    assert "up to 45%" in line and "rerun on a quiet machine" in line
    assert contention_note(recs[2:4]) is None and contention_note([]) is None


def test_a_cpu_record_carries_the_figures(tmp_path):
    from tests.bench.test_nvml import make_runner
    r = make_runner(tmp_path)
    (rec,) = r.run_case(Case("gemv_bf16", GemvShape(1, 32, 64), torch.float32))
    assert rec["status"] == "ok" and set(CONTENTION_KEYS) <= set(rec)


@pytest.mark.skipif(_psi_some_us() is None or not hasattr(os, "sched_setaffinity"),
                    reason="no PSI, or no CPU affinity, on this kernel")
def test_busy_processes_beside_the_window_show(tmp_path):
    """Two busy processes and the window's own spin, all on one CPU: runnable tasks wait for it
    most of the time, far past the threshold, whatever the machine's core count. (How far is
    this machine's: only the direction is held.)"""
    cpu = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    hog = f"import os; os.sched_setaffinity(0, {{{cpu}}}); print(flush=True)\nwhile True: pass"
    hogs = [subprocess.Popen([sys.executable, "-c", hog], stdout=subprocess.PIPE)
            for _ in range(2)]
    try:
        os.sched_setaffinity(0, {cpu})
        # the window opens once both spin on the CPU: a fixed wait after their start may end
        # before a busy machine has started them
        for h in hogs:
            assert h.stdout.readline() == b"\n", "a busy process did not start"
        time.sleep(0.3)
        sm = ContentionSampler()
        sm.start()
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            pass
        out = sm.stop(1, 1.0)
    finally:
        os.sched_setaffinity(0, before)
        for h in hogs:
            h.kill()
            h.wait()
            h.stdout.close()
    assert out["cpu_pressure_pct"] is not None and out["cpu_pressure_pct"] > 10.0


def test_a_share_at_the_threshold_is_not_contention_and_the_worst_is_either_figure():
    """More than CONTENDED_PCT is contention, exactly it is not; the note's "up to" is the
    larger of the wait and the steal share over the contended cases."""
    from bench.contention import CONTENDED_PCT
    ok = {"status": "ok", "time_s": {"median": 1e-3}}
    at = {**ok, "cpu_pressure_pct": CONTENDED_PCT, "cpu_steal_pct": CONTENDED_PCT}
    assert not contended(at) and contention_note([at]) is None
    stolen = {**ok, "cpu_pressure_pct": 11.0, "cpu_steal_pct": 60.0}
    line = contention_note([at, stolen])
    assert line.startswith("1 of 2 timed case(s) ran while other tasks waited for the CPU")
    assert "up to 60%" in line


def test_the_readers_name_the_samplers_figures():
    """bench.contention (torch-free, for show) names the figures the sampler records."""
    import bench.contention
    assert bench.contention.CONTENTION_KEYS == CONTENTION_KEYS

