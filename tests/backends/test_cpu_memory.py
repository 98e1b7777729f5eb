"""The CPU backend's memory: the machine's, or its container's cgroup limit where smaller (CI
runners and pods see the host's /proc/meminfo but are killed at their limit)."""
import pytest

import backends.cpu as cpu


def fake_cgroup(tmp_path, monkeypatch, files: dict[str, str]):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(cpu, "CGROUP", tmp_path)
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
