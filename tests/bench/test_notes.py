"""The notes a run ends with about the machine (bench.notes), read off records as `run`, `show`
and `compare` read them: each says nothing of a quiet machine or of records without its field."""
from bench.notes import notes


def test_a_run_on_several_numa_nodes_says_so_and_one_node_does_not():
    ok = {"status": "ok", "time_s": {"median": 1e-3}, "device": {"name": "x", "numa_nodes": 1}}
    assert not [n for n in notes([ok]) if "NUMA" in n]
    two = {**ok, "device": {"name": "x", "numa_nodes": 2}}
    (line,) = [n for n in notes([ok, two]) if "NUMA" in n]
    assert line.startswith("this run's CPUs are on 2 NUMA nodes") and "numactl" in line
    # an older record without the field, or a corrupt one, says nothing
    assert not [n for n in notes([{**ok, "device": {"numa_nodes": "2"}}]) if "NUMA" in n]


def test_a_run_on_a_gpu_other_processes_had_open_says_so():
    def rec(others):
        return {"status": "ok", "time_s": {"median": 1e-3},
                "device": {"name": "NVIDIA H100 80GB HBM3",
                           "clocks": {"source": "nvml", "other_processes": others}}}
    assert not [n for n in notes([rec([]), rec(None)]) if "GPU" in n]
    (line,) = [n for n in notes([rec([{"pid": 4242, "used_mib": 20480}]), rec([]), rec(None)])
               if "GPU" in n]
    assert line.startswith("as 1 of 3 timed case(s) ended, other processes had this GPU "
                           "open (pid 4242 (20480 MiB);")


def test_a_run_on_a_throttled_gpu_says_so_and_app_clocks_do_not():
    def rec(throttle, sm=1980):
        return {"status": "ok", "time_s": {"median": 1e-3},
                "device": {"clocks": {"source": "nvml", "throttle": throttle, "sm_mhz": sm,
                                      "sm_max_mhz": 1980}}}
    quiet = [rec([]), rec(None), rec(["app_clocks", "display_clocks"])]
    assert not [n for n in notes(quiet) if "throttled" in n]
    (line,) = [n for n in notes([*quiet, rec(["sw_power_cap"], 1395), rec(["hw_thermal"], 1600)])
               if "throttled" in n]
    assert line.startswith("as 2 of 5 timed case(s) ended, NVML gave hw_thermal, sw_power_cap "
                           "as holding the GPU's clocks down; SM clock 1395 of 1980 MHz at the "
                           "lowest")
