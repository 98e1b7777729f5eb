"""The CPU backend's memory: the machine's, or its container's cgroup limit where smaller (CI
runners and pods see the host's /proc/meminfo but are killed at their limit)."""
import pytest

import backends.cpu as cpu


def fake_cgroup(tmp_path, monkeypatch, files: dict[str, str], proc: str = "0::/\n"):
    """A cgroup tree under tmp_path and /proc/self/cgroup saying where this process sits."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "proc-self-cgroup").write_text(proc)
    monkeypatch.setattr(cpu, "CGROUP", tmp_path)
    monkeypatch.setattr(cpu, "PROC_CGROUP", tmp_path / "proc-self-cgroup")
    monkeypatch.setattr(cpu, "_meminfo", lambda key: {"MemTotal": 64 * 2**30,
                                                      "MemAvailable": 60 * 2**30}[key])


def test_a_v2_limit_bounds_total_and_available(tmp_path, monkeypatch):
    fake_cgroup(tmp_path, monkeypatch, {
        "memory.max": f"{8 * 2**30}\n", "memory.current": f"{3 * 2**30}\n",
        "memory.stat": f"anon {2 * 2**30}\ninactive_file {2**30}\nactive_file 0\n"})
    assert cpu._mem_total() == 8 * 2**30
    assert cpu.mem_available() == 6 * 2**30  # 8 - (3 - 1 reclaimable)


def test_a_v1_limit_counts_the_same(tmp_path, monkeypatch):
    fake_cgroup(tmp_path, monkeypatch, {
        "memory/memory.limit_in_bytes": f"{4 * 2**30}\n",
        "memory/memory.usage_in_bytes": f"{2**30}\n",
        "memory/memory.stat": "cache 0\ntotal_inactive_file 0\n"})
    assert cpu._mem_total() == 4 * 2**30 and cpu.mem_available() == 3 * 2**30


@pytest.mark.parametrize("files", [
    {"memory.max": "max\n", "memory.current": "123\n"},
    {"memory/memory.limit_in_bytes": "9223372036854771712\n"},
    {}])
def test_no_limit_leaves_the_machines_figures(tmp_path, monkeypatch, files):
    fake_cgroup(tmp_path, monkeypatch, files)
    assert cpu.cgroup_memory() is None
    assert cpu._mem_total() == 64 * 2**30 and cpu.mem_available() == 60 * 2**30


def test_a_limit_on_the_process_cgroup_or_an_ancestor_counts(tmp_path, monkeypatch):
    """A batch job or pod whose limit sits on its own cgroup or a parent, not on the root: the
    tightest on the way up bounds it, with that cgroup's usage."""
    fake_cgroup(tmp_path, monkeypatch, {
        "memory.max": "max\n",
        "job.slice/memory.max": f"{16 * 2**30}\n", "job.slice/memory.current": f"{2**30}\n",
        "job.slice/step_0/memory.max": "max\n",
        "job.slice/step_0/memory.current": f"{2**30}\n"}, proc="0::/job.slice/step_0\n")
    assert cpu.cgroup_dirs() == [tmp_path / "job.slice" / "step_0", tmp_path / "job.slice",
                                 tmp_path]
    assert cpu.cgroup_memory() == (16 * 2**30, 2**30) and cpu._mem_total() == 16 * 2**30
    # v1: the memory controller's own tree, found by its line in /proc/self/cgroup
    fake_cgroup(tmp_path / "v1", monkeypatch, {
        "memory/docker/abc/memory.limit_in_bytes": f"{2 * 2**30}\n",
        "memory/docker/abc/memory.usage_in_bytes": "0\n"},
        proc="12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    assert cpu.cgroup_memory() == (2 * 2**30, 0)


def test_the_tightest_limit_counts_and_never_more_than_the_host_has(tmp_path, monkeypatch):
    """Limits on a job and on its step: the step's 8 GiB bounds it, not the job's 16. A limit
    above the host's memory (64 GiB total, 60 available here) bounds nothing: the host's figures
    stand."""
    fake_cgroup(tmp_path, monkeypatch, {
        "job/memory.max": f"{16 * 2**30}\n", "job/memory.current": f"{2 * 2**30}\n",
        "job/step/memory.max": f"{8 * 2**30}\n", "job/step/memory.current": f"{2**30}\n"},
        proc="0::/job/step\n")
    assert cpu.cgroup_memory() == (8 * 2**30, 2**30)
    assert cpu._mem_total() == 8 * 2**30 and cpu.mem_available() == 7 * 2**30
    fake_cgroup(tmp_path / "big", monkeypatch, {
        "memory.max": f"{128 * 2**30}\n", "memory.current": f"{2**30}\n"})
    assert cpu._mem_total() == 64 * 2**30 and cpu.mem_available() == 60 * 2**30


def test_the_room_left_is_the_least_under_any_limit_on_the_way_up(tmp_path, monkeypatch):
    """A job limited to 16 GiB whose other steps use 15.5 of it leaves this step 0.5 GiB,
    though the step's own 8 GiB limit has 7 GiB of room: past 0.5 GiB the job's limit kills
    it. Its total stays the tightest limit, the step's 8 GiB."""
    fake_cgroup(tmp_path, monkeypatch, {
        "job/memory.max": f"{16 * 2**30}\n", "job/memory.current": f"{31 * 2**29}\n",
        "job/step/memory.max": f"{8 * 2**30}\n", "job/step/memory.current": f"{2**30}\n"},
        proc="0::/job/step\n")
    assert cpu._mem_total() == 8 * 2**30 and cpu.mem_available() == 2**29


@pytest.mark.parametrize("files, proc, cpus, expect", [
    ({"cpu.max": "max 100000\n"}, "0::/\n", set(range(8)), 8),
    ({"cpu.max": "250000 100000\n"}, "0::/\n", set(range(8)), 3),  # 2.5 CPUs: 3 can be busy
    ({"pod/cpu.max": "100000 100000\n", "pod/c/cpu.max": "max 100000\n"}, "0::/pod/c\n",
     set(range(8)), 1),
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"},
     "3:cpu,cpuacct:/\n", set(range(8)), 2),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "3:cpu:/\n",
     {0, 5}, 2),  # no quota: the affinity
    ({"pod/cpu.max": "400000 100000\n", "pod/c/cpu.max": "200000 100000\n"}, "0::/pod/c\n",
     set(range(8)), 2),  # the tighter of two quotas on the way up
    ({"cpu/docker/abc/cpu.cfs_quota_us": "150000\n",
      "cpu/docker/abc/cpu.cfs_period_us": "100000\n"},
     "4:cpu,cpuacct:/docker/abc\n0::/\n", set(range(8)), 2),  # v1: cpu among joint controllers
])
def test_usable_cpus_are_the_affinity_within_the_cpu_quota(tmp_path, monkeypatch, files, proc,
                                                             cpus, expect):
    fake_cgroup(tmp_path, monkeypatch, files, proc)
    monkeypatch.setattr(cpu, "affinity", lambda: cpus)
    assert cpu.usable_cpus() == expect
