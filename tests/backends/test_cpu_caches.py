"""Cache sizes as sysfs writes them: the rotation target is 4x their sum, so a size misread by
5% (a binary unit read as decimal) leaves part of the working set cached."""
import backends.cpu as cpu
from backends.cpu import CPUBackend, _parse_size


def test_sysfs_sizes_are_binary_units():
    assert _parse_size("48K\n") == 48 * 1024
    assert _parse_size("32M") == 32 * 1024**2
    assert _parse_size("1G") == 1024**3
    assert _parse_size("2048") == 2048


def test_device_info_records_torchs_threads_and_meminfo_in_bytes():
    """The record says how many threads the CPU kernels ran on (torch's setting, not the core
    count), and memory in bytes (/proc/meminfo writes kB)."""
    import os

    import torch
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert CPUBackend().device_info()["threads"] == 1
    finally:
        torch.set_num_threads(before)
    total = cpu._meminfo("MemTotal")
    if os.path.exists("/proc/meminfo"):  # Linux: MemTotal is always there, in bytes here
        phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        assert total is not None and 0.8 * phys <= total <= 1.01 * phys, total


def test_cpu_isa_names_the_widest_vector_extension():
    """The record's device.isa tells apart CPUs of one name (a VM names Zen 3 and Zen 5 alike
    "AMD EPYC"); the widest extension wins, Arm reads its Features line."""
    x86 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma f16c {}\nmodel name\t: AMD EPYC\n"
    assert cpu.cpu_isa(x86.format("avx512f avx512bw")) == "avx512f"
    assert cpu.cpu_isa(x86.format("")) == "avx2"
    assert cpu.cpu_isa("flags\t: fpu sse sse2 avx2\n") == "sse"        # AVX2 without FMA
    assert cpu.cpu_isa("Features\t: fp asimd evtstrm sve\n") == "sve"
    assert cpu.cpu_isa("Features\t: fp asimd evtstrm\n") == "asimd"
    assert cpu.cpu_isa("") == (cpu.platform.machine() or "unknown")


def _cache(root, cpu_i, index, level, ctype, size, shared):
    d = root / f"cpu{cpu_i}" / "cache" / f"index{index}"
    d.mkdir(parents=True)
    for name, text in (("level", level), ("type", ctype), ("size", size),
                       ("shared_cpu_list", shared)):
        (d / name).write_text(text + "\n")


def test_only_the_caches_of_the_cpus_this_process_may_use_count(tmp_path):
    """Two 4-CPU dies, each with its own L3, L2 per CPU: a process pinned to CPUs 0-1 fills one
    L3 and two L2s, not the host's."""
    for c in range(8):
        _cache(tmp_path, c, 0, "1", "Data", "32K", str(c))
        _cache(tmp_path, c, 1, "1", "Instruction", "32K", str(c))
        _cache(tmp_path, c, 2, "2", "Unified", "1024K", str(c))
        _cache(tmp_path, c, 3, "3", "Unified", "32M", "0-3" if c < 4 else "4-7")
    from backends.cpu import parse_cpu_list, read_caches
    assert read_caches(tmp_path, cpus=set(range(8))) == {"L1d": 8 * 32 * 1024,
                                                         "L2": 8 * 2**20, "L3": 2 * 32 * 2**20}
    assert read_caches(tmp_path, cpus={0, 1}) == {"L1d": 2 * 32 * 1024, "L2": 2 * 2**20,
                                                  "L3": 32 * 2**20}
    assert read_caches(tmp_path, cpus={3, 4}) == {"L1d": 2 * 32 * 1024, "L2": 2 * 2**20,
                                                  "L3": 2 * 32 * 2**20}
    assert parse_cpu_list("0-3,8,10-11") == {0, 1, 2, 3, 8, 10, 11}


def test_an_arm_cpu_is_named_by_its_core_not_aarch64():
    from backends.cpu import _cpu_name
    grace = "processor\t: 0\nBogoMIPS\t: 2000.00\nFeatures\t: fp asimd sve\nCPU implementer\t: 0x41\n" \
            "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd4f\nCPU revision\t: 0\n"
    assert _cpu_name(grace) == "Arm Neoverse V2"
    other = grace.replace("0xd4f", "0xabc")
    assert "(implementer 0x41, part 0xabc)" in _cpu_name(other)
    assert _cpu_name("model name\t: AMD EPYC 9B45\nflags\t: fpu\n") == "AMD EPYC 9B45"


def test_proc_figures_meminfo_kib_as_bytes_and_the_mean_cpu_clock(tmp_path, monkeypatch):
    """/proc/meminfo writes KiB (its "kB"): memory is recorded as 1024 bytes each. The record's
    cpu_mhz is the mean of every CPU's "cpu MHz" line."""
    real_path = cpu.Path
    fake = {"/proc/meminfo": "MemTotal:       16318432 kB\nMemAvailable:    9000000 kB\n",
            "/proc/cpuinfo": "processor\t: 0\ncpu MHz\t\t: 2000.000\nprocessor\t: 1\n"
                             "cpu MHz\t\t: 3000.000\nprocessor\t: 2\ncpu MHz\t\t: 3400.000\n"}
    for name, text in fake.items():
        (tmp_path / name.rsplit("/", 1)[1]).write_text(text)
    monkeypatch.setattr(cpu, "Path", lambda p: tmp_path / p.rsplit("/", 1)[1]
                        if p in fake else real_path(p))
    assert cpu._meminfo("MemTotal") == 16318432 * 1024
    assert cpu._meminfo("MemAvailable") == 9000000 * 1024
    assert CPUBackend().clocks() == {"cpu_mhz": 2800.0}


def test_numa_nodes_counts_the_nodes_of_this_process_cpus(tmp_path, monkeypatch):
    """Two sockets, a node each, and a memory-only node (CXL): a process on one socket's CPUs is
    on one node; one spread over both, on two; without sysfs's node folder, None."""
    for node, cpus in (("node0", "0-3\n"), ("node1", "4-7\n"), ("node2", "\n")):
        (tmp_path / node).mkdir()
        (tmp_path / node / "cpulist").write_text(cpus)
    assert cpu.numa_nodes(tmp_path, cpus={0, 1, 2, 3}) == 1
    assert cpu.numa_nodes(tmp_path, cpus={3, 4}) == 2
    monkeypatch.setattr(cpu, "affinity", lambda: {5})
    assert cpu.numa_nodes(tmp_path) == 1  # the process's own affinity by default
    monkeypatch.setattr(cpu, "affinity", lambda: None)
    assert cpu.numa_nodes(tmp_path) == 2  # affinity unknown: every node with CPUs
    assert cpu.numa_nodes(tmp_path / "absent", cpus={0}) is None
