"""The one-call device check (bench/device_check.sh): its dry run end to end, and the ncu parser."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.gpucheck.cases import ncu_targets
from bench.gpucheck.check import (BOXES, EVERY_CONFIG, EVERY_CONFIG_DIR, RESERVE_S, TOTAL_S,
                                  merge_progress, pytest_progress, why_target)
from bench.gpucheck.ncu import byte_ratio, fake_ncu_csv, ncu_command, parse_ncu_csv, why, why_command
from bench.gpucheck.proc import KILL_GRACE_S, run_proc, run_procs
from bench.suites import SUITES, SuiteContext, gpu_check_cases, shape_for
from kernels.triton_util import HAS_TRITON
from tests.helpers import REPO, pytest_with_plugin


# What `ncu --csv --print-units base` prints for a split-K GEMV (two launches), with the
# program's own output and ncu's ==PROF== lines around it, thousands separators in the values.
DETAILS = '''==PROF== Connected to process 4242 (/opt/torch/.venv/bin/python3.12)
==PROF== Profiling "_gemv_w4_kernel": 0%....50%....100% - 1 pass
==PROF== Profiling "_splitk_reduce": 0%....50%....100% - 1 pass
DWCHECK {"op": "gemv_w4", "impl": "triton_w4", "bytes_moved": 62390272}
==PROF== Disconnected from process 4242
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"
"0","4242","python3.12","127.0.0.1","_gemv_w4_kernel","1","7","(128, 1, 1)","(448, 4, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","byte","62,371,584"
"0","4242","python3.12","127.0.0.1","_gemv_w4_kernel","1","7","(128, 1, 1)","(448, 4, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","byte","458,752"
"0","4242","python3.12","127.0.0.1","_gemv_w4_kernel","1","7","(128, 1, 1)","(448, 4, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","nsecond","22,336"
"1","4242","python3.12","127.0.0.1","_splitk_reduce","1","7","(128, 1, 1)","(224, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","byte","458,752"
"1","4242","python3.12","127.0.0.1","_splitk_reduce","1","7","(128, 1, 1)","(224, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","byte","57,344"
"1","4242","python3.12","127.0.0.1","_splitk_reduce","1","7","(128, 1, 1)","(224, 1, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","nsecond","3,104"
'''

# The raw page: metrics as columns, a units row, ncu's auto-scaled units.
RAW = '''"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","dram__bytes_read.sum","dram__bytes_write.sum","gpu__time_duration.sum"
"","","","","","","","","","","","Mbyte","Kbyte","usecond"
"0","77","python3","host","_paged_attn_onepass","1","7","(128, 1, 1)","(8, 16, 1)","0","9.0","268.52","131.07","91.20"
'''


def test_parse_details_page_sums_every_launch():
    launches = parse_ncu_csv(DETAILS)
    assert [ln["kernel"] for ln in launches] == ["_gemv_w4_kernel", "_splitk_reduce"]
    assert launches[0]["metrics"]["dram__bytes_read.sum"] == 62_371_584
    r = byte_ratio(launches, 62_390_272)
    assert r["dram_read_bytes"] == 62_371_584 + 458_752
    assert r["dram_write_bytes"] == 458_752 + 57_344
    assert r["ratio"] == pytest.approx((62_830_336 + 516_096) / 62_390_272)
    assert r["within_5pct"] is True
    assert r["duration_ns"] == 25_440
    assert r["ncu_gbps"] == pytest.approx((62_830_336 + 516_096) / 25_440)


def test_parse_raw_page_with_scaled_units():
    (launch,) = parse_ncu_csv("==PROF== Connected\n" + RAW)
    assert launch["kernel"] == "_paged_attn_onepass"
    assert launch["metrics"]["dram__bytes_read.sum"] == pytest.approx(268.52e6)
    assert launch["metrics"]["dram__bytes_write.sum"] == pytest.approx(131.07e3)
    assert launch["metrics"]["gpu__time_duration.sum"] == pytest.approx(91_200)
    r = byte_ratio([launch], 200_000_000)
    assert r["ratio"] == pytest.approx(1.3432, abs=1e-3) and r["within_5pct"] is False


def test_parse_without_a_table_is_a_clear_error():
    with pytest.raises(ValueError, match="no ncu CSV table"):
        parse_ncu_csv("==ERROR== ERR_NVGPUCTRPERM - The user does not have permission\n")


def test_missing_metric_gives_no_ratio_rather_than_a_wrong_one():
    text = DETAILS.replace('"dram__bytes_write.sum","byte","57,344"', '"dram__bytes_write.sum","byte","n/a"')
    assert byte_ratio(parse_ncu_csv(text), 62_390_272)["ratio"] is None


def test_fake_table_round_trips_through_the_parser():
    r = byte_ratio(parse_ncu_csv(fake_ncu_csv("k", 1_000_000, 2_000, 5_000)), 1_002_000)
    assert r["ratio"] == 1.0 and r["launches"] == 1


def test_ncu_command_profiles_only_the_window_and_leaves_clocks_alone():
    cmd = ncu_command("ncu", ["python3", "-m", "bench.gpucheck.ncu", "target"])
    s = " ".join(cmd)
    assert "--profile-from-start off" in s and "--clock-control none" in s
    assert "--cache-control all" in s
    assert "dram__bytes_read.sum,dram__bytes_write.sum" in s
    assert cmd[-4:] == ["python3", "-m", "bench.gpucheck.ncu", "target"]


# The raw page of the why sections for a split-K launch pair: metrics in ncu's order, units row,
# the reduction kernel first and smaller.
WHY_RAW = """==PROF== Connected to process 77
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","launch__grid_size","launch__registers_per_thread","launch__waves_per_multiprocessor","sm__maximum_warps_per_active_cycle_pct","sm__warps_active.avg.pct_of_peak_sustained_active","smsp__average_warp_latency_per_inst_issued.ratio","smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio","smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio","smsp__average_warps_issue_stalled_no_instruction_per_issue_active.ratio","smsp__average_warps_issue_stalled_selected_per_issue_active.ratio","smsp__average_warps_issue_stalled_wait_per_issue_active.ratio","smsp__issue_active.avg.pct_of_peak_sustained_active"
"","","","","","","","","register/thread","","%","%","","","","","","","%"
"0","77","python3","h","zero_kernel","1","7","64","16","0.03","100","10.5","30.1","0","20.0","1","1","2","3.1"
"1","77","python3","h","_w4_kernel","1","7","1,792","168","3.39","37.5","35.25","12.4","0.8","8.9","0.35","1","0.6","18.75"
"""


def test_why_reads_the_largest_launch_of_the_sections_raw_page():
    w = why(parse_ncu_csv(WHY_RAW))
    assert w["kernel"] == "_w4_kernel" and w["registers"] == 168 and w["waves"] == 3.39
    assert (w["occupancy_pct"], w["theoretical_occupancy_pct"]) == (35.25, 37.5)
    assert w["issue_active_pct"] == 18.75 and w["cycles_per_issue"] == 12.4
    assert list(w["stalls"]) == ["long_scoreboard", "selected", "barrier", "wait", "no_instruction"]
    assert w["stalls"]["long_scoreboard"] == 8.9
    with pytest.raises(ValueError):
        why([])


def test_why_leaves_out_the_not_issued_stall_breakdown_and_other_statistics():
    """ncu's Warp State section also prints each stall's `_not_issued` share and, for some
    metrics, other statistics than the per-issue ratio: neither is a stall reason of its own, and
    a large `_not_issued` figure must not push a real reason out of the top list."""
    extra = {"smsp__average_warps_issue_stalled_long_scoreboard_not_issued_per_issue_active.ratio": "50",
             "smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.pct": "40"}
    head, units, row0, row1 = WHY_RAW.strip().splitlines()[1:]
    text = "\n".join([head + "".join(f',"{k}"' for k in extra), units + ',""' * len(extra),
                      row0 + ',"0"' * len(extra), row1 + "".join(f',"{v}"' for v in extra.values())])
    w = why(parse_ncu_csv(text))
    assert list(w["stalls"]) == ["long_scoreboard", "selected", "barrier", "wait", "no_instruction"]
    assert w["stalls"]["long_scoreboard"] == 8.9


def test_binary_prefixes_are_powers_of_two_and_decimal_ones_powers_of_ten():
    """ncu prints `Kbyte` / `Mbyte` (10^3, 10^6) unless told --print-units base, and some
    versions' tables say `KiB` / `MiB` (2^10, 2^20): mixing them up is a 2.4-4.9% error, as large
    as the 5% the byte check allows."""
    from bench.gpucheck.ncu import _value
    assert _value("2", "KiB") == 2048 and _value("2", "MiB") == 2 * 2**20
    assert _value("2", "GiB") == 2 * 2**30
    assert _value("2", "Kbyte") == 2000 and _value("2", "Mbyte") == 2e6 and _value("2", "Gbyte") == 2e9
    assert _value("1,024", "byte") == 1024 and _value("n/a", "byte") is None


def test_the_probe_says_ok_only_when_ncu_printed_a_reading():
    """An ncu that exits 0 without the metric in its output (the program ran unprofiled, or an
    ncu that ignored the launch) has not shown that it can read the counters: unknown, not ok."""
    from bench.gpucheck.ncu import DURATION, probe_verdict
    assert probe_verdict(0, f'"ID","Metric Name"\n"0","{DURATION}"') == ("ok", None)
    verdict, why_ = probe_verdict(0, "==PROF== Disconnected\n2048.0\n")
    assert verdict == "unknown" and "exit 0" in why_
    assert probe_verdict(None, "")[0] == "unknown"
    assert probe_verdict(1, "==ERROR== ERR_NVGPUCTRPERM - no permission")[0] == "refused"


def test_why_command_asks_for_sections_not_metric_names():
    cmd = why_command("ncu", ["python3", "-m", "bench.gpucheck.ncu", "target"])
    s = " ".join(cmd)
    for sec in ("LaunchStats", "Occupancy", "SchedulerStats", "WarpStateStats"):
        assert f"--section {sec}" in s
    assert "--metrics" not in s and "--page raw" in s and "--cache-control all" in s
    assert "--profile-from-start off" in s and "--clock-control none" in s
    assert cmd[-4:] == ["python3", "-m", "bench.gpucheck.ncu", "target"]


def test_shape_for_sets_fields_and_explains_failures():
    shape, why = shape_for("gemv_bf16", M=1, N=64, K=128, group_size=128)  # optional: no field
    assert why == "" and (shape.M, shape.N, shape.K) == (1, 64, 128)
    shape, why = shape_for("no_such_op", M=1)
    assert shape is None and "not registered" in why
    shape, why = shape_for("gemv_bf16", M=1, N=64, K=128, context=5)
    assert shape is None and "no field for context" in why


@pytest.mark.skipif(not HAS_TRITON, reason="no Triton")
def test_gpu_check_suite_puts_the_goal_cases_first_and_names_what_is_missing():
    assert "gpu-check" in SUITES
    notes = []
    cases = gpu_check_cases(SuiteContext("cuda", 80 * 2**30, 50 * 2**20), notes)
    assert cases, notes
    assert all(c.impls is None or all(n for n in c.impls) for c in cases)
    keys = [(c.op, str(c.shape)) for c in cases]
    assert len(keys) == len(set(keys))  # no case twice
    from kernels import OPS
    if "paged_attention" in OPS:
        first_attn = next(c for c in cases if c.op == "paged_attention")
        assert (first_attn.shape.B, first_attn.shape.context) == (64, 4096)
    for op in ("gemv_w4", "gemv_w8"):
        if op in OPS:
            first = next(c for c in cases if c.op == op)
            assert first.shape.M == 1 and first.shape.N * first.shape.K == 57344 * 8192
        else:
            assert any(op in n for n in notes)
    # In the order the time box affords the goals: INT4 and INT8 at M = 1 on the two large 70B
    # shapes, INT4 at M = 16 on the same two, attention, M = 1 on the two small 70B shapes (the
    # all-four goal), INT4 at M = 16 on the 8B shapes, then the precision, bf16 and 8B cases.
    m16 = [i for i, c in enumerate(cases) if c.op == "gemv_w4" and c.shape.M == 16]
    first_bf16 = next(i for i, c in enumerate(cases) if c.op == "gemv_bf16")
    assert len(m16) == 6 and max(m16) < first_bf16
    big2 = [(57344, 8192), (8192, 28672)]
    assert [(c.op, c.shape.M, (c.shape.N, c.shape.K)) for c in cases[:m16[0]]] == [
        (op, 1, nk) for op in ("gemv_w4", "gemv_w8") for nk in big2]
    assert [(cases[i].shape.N, cases[i].shape.K) for i in m16[:2]] == big2
    assert m16[1] == m16[0] + 1 and m16[2:] == list(range(m16[2], m16[2] + 4))
    small70 = [i for i, c in enumerate(cases) if c.op in ("gemv_w4", "gemv_w8") and c.shape.M == 1
               and (c.shape.N, c.shape.K) in ((10240, 8192), (8192, 8192))]
    assert len(small70) == 4 and max(small70) < m16[2]
    if "paged_attention" in OPS:
        attn = [i for i, c in enumerate(cases) if c.op == "paged_attention"][:2]
        assert m16[1] < attn[0] and attn[1] < min(small70)
        # the split-KV impls (a tuning each) at 1 x 32768, where splitting is the point
        split = {"triton_splitkv", "triton_splitkv_fused"} & set(OPS["paged_attention"].impls)
        b64, b1 = (cases[i] for i in attn)
        assert not split & set(b64.impls) and split <= set(b1.impls)
        assert "triton_onepass" in b64.impls and "gather_sdpa" in b64.impls
    # the peers run beside our kernels; only torch.compile impls (seconds a shape) stay out
    impls = {i for c in cases for i in c.impls}
    assert "torch_compiled" not in impls
    # GemLite only where a goal compares it, before attention: M = 1 on the two large 70B
    # shapes (its own tuning takes seconds a case); FlashInfer at every attention case
    for peer, op in (("flashinfer_decode", "paged_attention"), ("gemlite_w4", "gemv_w4")):
        if op in OPS and peer in OPS[op].impls:
            for i, c in enumerate(cases[:m16[2] + 4]):
                if c.op == op:
                    assert (peer in c.impls) == (i < m16[0] or op == "paged_attention"), (peer, c)
    # every Triton kernel of ours (not the peers) of the ops present gets an ncu target
    targets = ncu_targets("cuda", [])
    triton = {(o, i) for o, op in OPS.items() for i, impl in op.impls.items()
              if impl.kind == "triton" and not impl.baseline
              and o in ("gemv_w4", "gemv_w8", "gemv_bf16", "paged_attention", "paged_attention_kv8")}
    assert {(t["op"], t["impl"]) for t in targets} == triton
    assert not any(OPS[t["op"]].impls[t["impl"]].baseline for t in targets)
    # INT4 at M = 16 for its why pass: only the impl that runs M = 16 (split-K refuses it)
    m16 = [t for t in targets if t["shape"].get("M") == 16]
    if "gemv_w4" in OPS:
        assert [(t["op"], t["impl"]) for t in m16] == [("gemv_w4", "triton_w4")]
    assert all(t["shape"].get("M", 1) == 1 for t in ncu_targets("cpu", []))


def test_run_proc_kills_a_step_at_its_time_box(tmp_path):
    with open(tmp_path / "log", "w") as log:
        t0 = time.monotonic()
        rc, dt = run_proc(["bash", "-c", "sleep 30 & sleep 30"], 1, log, {"PATH": "/usr/bin:/bin"})
    assert rc is None and time.monotonic() - t0 < 15
    assert "time box" in (tmp_path / "log").read_text()


def test_run_proc_tee_streams_both_streams_to_the_log_the_console_and_the_list(tmp_path, capsys):
    lines: list[str] = []
    with open(tmp_path / "log", "w") as log:
        rc, _ = run_proc(["bash", "-c", "echo to-out; echo to-err >&2; exit 3"], 20, log,
                         {"PATH": "/usr/bin:/bin"}, tee=lines)
    assert rc == 3 and [ln.strip() for ln in lines] == ["to-out", "to-err"]
    text = (tmp_path / "log").read_text()
    assert "to-out" in text and "to-err" in text
    assert "to-out" in capsys.readouterr().out


def test_run_procs_runs_at_once_tags_each_line_and_cuts_all_at_one_box(tmp_path, capsys):
    """Two commands at once: each one's lines in its own list, tagged in the log and on the
    console; the one still running at the box is killed, the one that ended keeps its rc."""
    with open(tmp_path / "log", "w") as log:
        rcs, dt, outs = run_procs([["bash", "-c", "echo one; exit 4"],
                                   ["bash", "-c", "echo two; echo err >&2; sleep 30"]],
                                  3, log, {"PATH": "/usr/bin:/bin"}, ["a", "b"])
        # the first still running at the box: the one after it that ended keeps its rc
        later = run_procs([["bash", "-c", "sleep 30"], ["bash", "-c", "exit 3"]], 2, log,
                          {"PATH": "/usr/bin:/bin"}, ["c", "d"])[0]
    assert rcs == [4, None] and dt < 15 and later == [None, 3]
    assert [ln.strip() for ln in outs[0]] == ["one"]
    assert [ln.strip() for ln in outs[1]] == ["two", "err"]
    text = (tmp_path / "log").read_text()
    assert "[a] one" in text and "[b] two" in text and "[b] err" in text
    assert "1 of 2 process groups killed" in text and "exit 4, timeout" in text
    assert "[a] one" in capsys.readouterr().out


def test_shards_run_each_selected_test_once(tmp_path):
    """--shard I/N of the plugin: over I = 0..N-1 every test that -k keeps runs exactly once, the
    ones -k drops never; a malformed --shard is a usage error."""
    (tmp_path / "test_s.py").write_text(
        "".join(f"def test_{i}():\n    pass\n\n\n" for i in range(7)) + "def test_x_skipme():\n    pass\n")
    ran = []
    for i in range(3):
        out = pytest_with_plugin("--shard", f"{i}/3", "-k", "not skipme", "-v", str(tmp_path))
        assert out.returncode == 0, out.stdout[-2000:]
        ran += [ln.split("::")[1].split()[0] for ln in out.stdout.splitlines()
                if "::test_" in ln and "PASSED" in ln]
    assert sorted(ran) == [f"test_{i}" for i in range(7)]
    bad = pytest_with_plugin("--shard", "3/3", str(tmp_path))
    assert bad.returncode == 4 and "expected I/N" in bad.stderr


def test_plugin_says_why_a_test_failed_the_moment_it_fails(tmp_path):
    """The reason comes on its own line right after the test's FAILED, before the next test
    starts (pytest's own report waits for the end of the run, which a time box may cut off), and
    pytest_progress files it under the test."""
    (tmp_path / "test_f.py").write_text(
        "def test_a():\n    assert 1 + 1 == 3, 'rel err 0.5 > 0.01'\n\n\n"
        "def test_b():\n    raise RuntimeError('out of resources:\\n  shared memory')\n\n\n"
        "def test_c():\n    pass\n")
    out = pytest_with_plugin("-v", "--tb=line", str(tmp_path))
    assert out.returncode == 1, out.stdout[-2000:]
    lines = out.stdout.splitlines()
    why_a = next(i for i, ln in enumerate(lines) if ln.startswith("DWFAIL ") and "test_a" in ln)
    started_c = next(i for i, ln in enumerate(lines) if "::test_c" in ln)
    assert why_a < started_c
    assert "test_f.py::test_a (call): AssertionError: rel err 0.5 > 0.01" in lines[why_a]
    p = pytest_progress(out.stdout.splitlines(keepends=True))
    assert [t.split("::")[1] for t in p["failed"]] == ["test_a", "test_b"]
    assert p["reasons"][p["failed"][0]].startswith("AssertionError: rel err 0.5 > 0.01")
    assert p["reasons"][p["failed"][1]] == "RuntimeError: out of resources: shared memory"
    assert merge_progress([p])["reasons"] == p["reasons"]


def test_a_failed_tests_id_is_the_one_verbose_shows_wherever_pytest_starts(tmp_path):
    """shown_id names a test relative to where pytest started, as -v does: below, above or beside
    the rootdir, "::" and brackets in a parameter kept; a file outside the rootdir (`-c` naming
    another folder's ini: an empty path part) by the rootdir itself, as -v names it."""
    from types import SimpleNamespace

    from bench.gpucheck.pytest_shard import shown_id
    root = tmp_path / "proj"

    def at(here: Path, rootpath: Path = root) -> SimpleNamespace:
        return SimpleNamespace(invocation_params=SimpleNamespace(dir=here), rootpath=rootpath)
    nid = "tests/t.py::TestC::test_p[a::b/c]"
    assert shown_id(at(root), nid) == nid
    assert shown_id(at(root / "tests"), nid) == "t.py::TestC::test_p[a::b/c]"
    assert shown_id(at(tmp_path), nid) == "proj/tests/t.py::TestC::test_p[a::b/c]"
    assert shown_id(at(tmp_path / "other"), nid) == "../proj/tests/t.py::TestC::test_p[a::b/c]"
    assert shown_id(at(root, root / "cfg"), "::test_a") == "cfg::test_a"
    # the same through pytest itself, whose -v line names the test first
    (root / "cfg").mkdir(parents=True)
    (root / "cfg" / "pytest.ini").write_text("[pytest]\n")
    (root / "t").mkdir()
    (root / "t" / "test_o.py").write_text("def test_a():\n    assert 0\n")
    out = pytest_with_plugin("-v", "--tb=no", "--color=no", "-c", "cfg/pytest.ini", "t/test_o.py",
                             cwd=root)
    lines = out.stdout.splitlines()
    # (`cfg::test_a` since pytest 8.3.3, `cfg/::test_a` before: the plugin names it as -v does)
    shown = next(ln.split(" FAILED")[0] for ln in lines if ln.startswith("cfg") and " FAILED" in ln)
    (said,) = [ln for ln in lines if ln.startswith("DWFAIL ")]
    assert said.startswith(f"DWFAIL {shown} (call): "), out.stdout[-2000:]


def test_merged_progress_of_shards_sums_and_lists_what_each_was_running():
    done = pytest_progress(VERBOSE.splitlines(keepends=True))
    cut = pytest_progress(VERBOSE.split("[100%]")[0].rsplit(" PASSED", 1)[0].splitlines(keepends=True))
    m = merge_progress([done, cut])
    assert m["counts"]["PASSED"] == 3 and m["counts"]["FAILED"] == 2
    assert m["running"] == ["tests/kernels/gemv/test_w8.py::test_cuda_every_config[False]"]
    assert len(m["failed"]) == 1 and m["final"] == done["final"]  # one test named once


# What `pytest -v --tb=line -rfE` prints: ids with spaces, a skip with its reason, a failure
# with its --tb=line line (an absolute path and a line number), the short summary.
VERBOSE = """============================= test session starts ==============================
collecting ... collected 6 items / 2 deselected / 4 selected

tests/kernels/gemv/test_w4.py::test_cuda_impls[GemvW4Shape(M=1, N=64, K=256)-bf16] PASSED [ 25%]
tests/kernels/gemv/test_w4.py::test_cuda_impls[GemvW4Shape(M=16, N=64, K=256)-bf16] FAILED [ 50%]
tests/kernels/attention/test_paged_attention.py::test_cuda[B=1] SKIPPED (no CUDA device) [ 75%]
tests/kernels/gemv/test_w8.py::test_cuda_every_config[False] PASSED                [100%]

=================================== FAILURES ===================================
/work/main/tests/kernels/gemv/test_w4.py:88: AssertionError: rel err 0.3 > 0.01 (tests/x.py::y)
=========================== short test summary info ============================
FAILED tests/kernels/gemv/test_w4.py::test_cuda_impls[GemvW4Shape(M=16, N=64, K=256)-bf16] - AssertionError
============ 1 failed, 2 passed, 1 skipped, 2 deselected in 12.34s =============
"""


def test_pytest_progress_of_a_finished_run():
    p = pytest_progress(VERBOSE.splitlines(keepends=True))
    assert (p["counts"]["PASSED"], p["counts"]["FAILED"], p["counts"]["SKIPPED"]) == (2, 1, 1)
    assert p["failed"] == ["tests/kernels/gemv/test_w4.py::test_cuda_impls[GemvW4Shape(M=16, N=64, K=256)-bf16]"]
    assert p["last"] == "tests/kernels/gemv/test_w8.py::test_cuda_every_config[False]"
    assert p["running"] is None
    assert p["final"] == "1 failed, 2 passed, 1 skipped, 2 deselected in 12.34s"


def test_pytest_progress_of_a_cut_run_names_the_test_that_was_running():
    cut = VERBOSE.split("[100%]")[0].rsplit(" PASSED", 1)[0]  # the last test's name, no outcome
    p = pytest_progress(cut.splitlines(keepends=True))
    assert p["running"] == p["last"] == "tests/kernels/gemv/test_w8.py::test_cuda_every_config[False]"
    assert p["counts"]["PASSED"] == 1 and p["final"] == ""


def test_boxes_fit_the_total_and_the_suite_takes_what_the_others_leave(tmp_path):
    assert sum(BOXES.values()) + RESERVE_S <= TOTAL_S
    assert RESERVE_S >= 2 * KILL_GRACE_S  # a step killed at its box dies inside the reserve
    assert list(BOXES)[-2:] == ["suite", "ncu"] and BOXES["flush"] <= 25
    check = _check(tmp_path)
    try:
        check.ncu_path = "/opt/ncu"  # found, not known to refuse: its box is held back
        later = BOXES["ncu"]
        assert check.box("suite") == pytest.approx(TOTAL_S - RESERVE_S - later, abs=1)
        check.ncu_refused = "==ERROR== Failed to initialize the profiler: LibraryNotLoaded"
        assert check.box("suite") == pytest.approx(TOTAL_S - RESERVE_S, abs=1)
        check.ncu_refused = check.ncu_path = None  # no ncu here: nothing held back either
        assert check.box("suite") == pytest.approx(TOTAL_S - RESERVE_S, abs=1)
        check.ncu_path = "/opt/ncu"
        check.deadline = time.monotonic() + 50  # 50 s left: the suite keeps 20, never less than 0
        assert check.box("suite") == pytest.approx(20, abs=1)
        assert check.box("ncu") == pytest.approx(50, abs=1)
        check.deadline = time.monotonic() - 5
        assert check.box("suite") == 0 and check.box("ncu") == 0
    finally:
        check.log.close()


@pytest.mark.parametrize("argv, expect", [
    (["--limit", "foo=3"], "expected STEP=SECONDS"), (["--limit", "suite=x"], "expected STEP=SECONDS"),
    (["--time-limit", "5"], "must exceed the 12 s"), (["--only", "nosuch"], "invalid choice"),
    # asked of the CLI before any step: a misspelt name must not cost the steps before the suite
    (["--suite", "gpu-chek"], "unknown suite 'gpu-chek'; did you mean 'gpu-check'"),
    (["--chip", "h100-sx"], "unknown chip 'h100-sx'; did you mean 'h100-sxm'")])
def test_bad_options_are_one_line_and_exit_2(argv, expect, capsys, tmp_path):
    from bench.gpucheck.check import main
    with pytest.raises(SystemExit) as e:
        main(["--dry-run", "--out", str(tmp_path), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and expect in err[0], err
    assert err[0].startswith("bench/device_check.sh: error:") and not list(tmp_path.iterdir())


def test_known_names_are_not_refused():
    from bench.gpucheck.check import unknown_names
    assert unknown_names("gpu-check", None) is None  # the default: no child process at all
    assert unknown_names("smoke", "h200") is None


def _check(tmp_path, **kw):
    import argparse
    from bench.gpucheck import check as dc
    args = argparse.Namespace(dry_run=False, out=str(tmp_path / "out"), limit=None, only=None,
                              skip=None, with_=[], time_limit=TOTAL_S, suite="gpu-check",
                              budget="quick", chip=None, wheels=None, no_warm=True)
    for k, v in kw.items():
        setattr(args, k, v)
    return dc.Check(args)


def _stub_steps(c, ran: list):
    """Every step of check `c` replaced by one that marks itself ok and adds its name to `ran`;
    returns the maker of such a step, for a test to put some back."""
    def ok(name):
        def step():
            st = c.begin(name)
            if st is not None:  # None: a step not asked for
                st.status = "ok"
                ran.append(name)
        return step

    c.step_peers, c.step_env, c.plan = ok("peers"), ok("env"), lambda: None
    c.step_pytest = lambda name: ok(name)()
    c.step_roof, c.step_flush = ok("roof"), ok("flush")
    c.step_suite, c.step_ncu = ok("suite"), ok("ncu")
    return ok


def test_an_error_in_the_checks_own_code_fails_that_step_and_the_next_ones_run(tmp_path):
    """A bug on a path only a GPU takes must not end the check: that step fails with the error
    named (its traceback in steps.log, not on the console) and every later step still runs."""
    c = _check(tmp_path, dry_run=True, with_=["roof", "flush"])
    ran = []
    ok = _stub_steps(c, ran)

    def pytest_step(name):
        if name == "configs":
            return ok(name)()
        c.begin(name)
        raise KeyError("M")

    c.step_pytest = pytest_step
    rc = c.run()
    assert ran == ["peers", "env", "configs", "roof", "flush", "suite", "ncu"]
    st = c.steps["pytest"]
    assert st.status == "failed" and "KeyError: 'M'" in st.detail and rc != 0
    assert "Traceback (most recent call last)" in (tmp_path / "out" / "steps.log").read_text()
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["final"] and not s["ok"]
    from bench.gpucheck.check import Interrupted
    with pytest.raises(Interrupted):  # SIGTERM is not a step's error: it ends the check
        c.guarded("ncu", lambda: (_ for _ in ()).throw(Interrupted()))


def test_roof_and_flush_run_only_when_asked_for(tmp_path):
    """The suite measures the roof its records are judged against and the flush comparison is a
    one-off: by default neither takes a box from the suite; --with or --only runs them."""
    c = _check(tmp_path, dry_run=True)
    ran = []
    c.step_roof = lambda: ran.append("roof") if c.begin("roof") else None
    c.step_flush = lambda: ran.append("flush") if c.begin("flush") else None
    for name in ("peers", "env", "pytest", "configs", "suite", "ncu"):
        c.steps[name].status = "ok"
    assert not c.wanted("roof") and not c.wanted("flush") and c.wanted("suite")
    c.guarded("roof", c.step_roof)
    c.guarded("flush", c.step_flush)
    assert ran == [] and c.steps["roof"].status == "skipped"
    assert "--with roof" in c.steps["roof"].detail and "--with flush" in c.steps["flush"].detail
    c.args.with_ = ["flush"]
    assert c.wanted("flush") and not c.wanted("roof")
    c.args.with_, c.args.only = [], ["peers", "env", "roof"]
    assert c.wanted("roof") and not c.wanted("suite")
    c.log.close()


def test_an_error_in_the_summary_code_leaves_a_summary_and_the_check_goes_on(tmp_path, monkeypatch):
    """The summary is rewritten at every step's start and end: a bug there (a record only a GPU
    makes) must not end the check; a minimal summary says so and the later steps run."""
    from bench.gpucheck import summary
    c = _check(tmp_path, dry_run=True)
    ran = []
    _stub_steps(c, ran)

    def broken(*a, **k):
        raise KeyError("time_s")

    monkeypatch.setattr(summary, "write", broken)
    rc = c.run()
    assert ran == ["peers", "env", "pytest", "configs", "suite", "ncu"] and rc == 1
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["final"] and s["ok"] is False and "KeyError" in s["summary_error"]
    assert [st["status"] for st in s["steps"]] == ["ok", "ok", "ok", "ok", "skipped", "skipped",
                                                  "ok", "ok"]
    text = (tmp_path / "out" / "summary.txt").read_text()
    assert "the summary code failed" in text and text.rstrip().endswith("RESULT: problems in the summary")
    assert "Traceback (most recent call last)" in (tmp_path / "out" / "steps.log").read_text()


def test_a_slow_env_probe_does_not_end_the_check(tmp_path):
    """Only a backend that is not there ends the check after env; a probe cut at its box (a slow
    first CUDA initialisation) leaves the later steps to run in their own boxes."""
    for env_status, expect in (("timeout", ["pytest", "configs", "suite", "ncu"]), ("failed", [])):
        c = _check(tmp_path / env_status, dry_run=True)
        ran = []
        _stub_steps(c, ran)

        def env(c=c, env_status=env_status):
            c.begin("env").status = env_status
            if env_status == "failed":  # the probe's answer: no backend here
                c.backend_usable = False

        c.step_env = env
        c.run()
        assert ran == ["peers"] + expect, (env_status, ran)


NCU_PROBE = r"""#!/bin/sh
echo "$@" >> {calls}
{body}
"""


@pytest.mark.parametrize("body, verdict", [
    ("echo '==ERROR== Failed to initialize the profiler: LibraryNotLoaded'; exit 1", "refused"),
    ("echo '\"ID\",\"Kernel Name\",\"Metric Name\",\"Metric Unit\",\"Metric Value\"'; "
     "echo '\"0\",\"fill\",\"gpu__time_duration.sum\",\"nsecond\",\"2,112\"'", "ok"),
    ("sleep 30", "unknown"),
])
def test_the_background_ncu_probe_decides_whether_the_ncu_box_is_held(tmp_path, monkeypatch, body, verdict):
    """ncu is probed on one tiny launch while the tests run: where it refuses the counters (as on
    gVisor) the ncu step is skipped with ncu's reason and its box goes to the suite; where it
    reads them, or the probe cannot tell (cut at its box), the box stays held."""
    from bench.gpucheck import check as dc
    monkeypatch.setattr(dc, "NCU_PROBE_S", 3)
    calls = tmp_path / "calls"
    fake = tmp_path / "ncu"
    fake.write_text(NCU_PROBE.format(calls=calls, body=body))
    fake.chmod(0o755)
    c = _check(tmp_path)
    c.ncu_path = str(fake)
    c.start_ncu_probe()

    def held():  # seconds of what is left that the suite's box leaves to later steps
        return c.deadline - time.monotonic() - c.box("suite")

    assert held() == pytest.approx(BOXES["ncu"], abs=1)  # until the probe answers
    c.finish_ncu_probe()
    assert c.info["ncu_probe"]["verdict"] == verdict
    assert "--launch-count 1" in calls.read_text() and "gpu__time_duration.sum" in calls.read_text()
    if verdict == "refused":
        assert held() == pytest.approx(0, abs=1)
        c.step_ncu()
        assert c.steps["ncu"].status == "skipped" and "LibraryNotLoaded" in c.steps["ncu"].detail
        assert calls.read_text().count("\n") == 1  # the step launched nothing more
    else:
        assert held() == pytest.approx(BOXES["ncu"], abs=1)
    assert not c.ncu_probe["path"].exists()
    c.log.close()


def test_every_config_tests_live_where_the_configs_step_collects():
    """The configs step collects EVERY_CONFIG_DIR alone; the pytest step deselects these names
    everywhere, so a cuda test of that name elsewhere would run in neither."""
    import re
    cuda_test = re.compile(r"^@pytest\.mark\.cuda\n(?:@.*\n)*def (test_\w*)", re.M)
    hits = {p.parent.relative_to(REPO).as_posix() for p in (REPO / "tests").rglob("test_*.py")
            for name in cuda_test.findall(p.read_text()) if EVERY_CONFIG in name}
    assert hits == {EVERY_CONFIG_DIR}


@pytest.mark.slow  # a pytest child killed at a 10 s box
def test_a_configs_step_cut_at_its_box_names_what_passed_and_what_was_running(tmp_path, monkeypatch):
    from bench.gpucheck import check as dc
    tests = tmp_path / "t"
    tests.mkdir()
    (tests / "test_fake.py").write_text(
        "import time\nimport pytest\n\n\n@pytest.mark.cuda\ndef test_a_every_config():\n    pass\n\n\n"
        "@pytest.mark.cuda\ndef test_b_every_config():\n    time.sleep(120)\n")
    monkeypatch.setattr(dc, "EVERY_CONFIG_DIR", str(tests))
    check = _check(tmp_path, limit=["configs=10"])
    check.step_pytest("configs")
    check.end(check.steps["configs"])
    step = check.steps["configs"]
    assert step.status == "timeout", step
    assert "while running" in step.detail and step.detail.count("test_b_every_config") == 1
    assert "1 passed before it" in step.detail
    (running,) = check.tests["configs"]["running"]  # test_a's shard ended, test_b's was cut
    assert running.endswith("test_fake.py::test_b_every_config")
    log = (check.out / "steps.log").read_text()
    assert "test_a_every_config PASSED" in log and "time box" in log
    summary = (check.out / "summary.txt").read_text()
    assert "PROVISIONAL" in summary and "test_b_every_config" in summary
    check.log.close()


@pytest.mark.slow  # every step of the check on the CPU, Triton interpreted: ~1 min
@pytest.mark.alone
def test_dry_run_end_to_end(tmp_path):
    from tests.bench.gpucheck.test_peers import fake_peers
    out_dir = tmp_path / "out"
    wheels = fake_peers(tmp_path / "whl")
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(REPO / "bench" / "device_check.sh"), "--dry-run",
                           "--out", str(out_dir), "--wheels", str(wheels),
                           "--with", "roof", "flush"], capture_output=True,
                          text=True, timeout=400,
                          env={**__import__("os").environ, "PYTHON": sys.executable})
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out_dir.iterdir())
    assert all(p.is_file() for p in out_dir.iterdir()) and len(files) <= 8, files
    for name in ("summary.txt", "summary.json", "steps.log", "roof.json", "ncu-raw.txt"):
        assert name in files
    (jsonl,) = [f for f in files if f.endswith(".jsonl")]
    recs = [json.loads(ln) for ln in (out_dir / jsonl).read_text().splitlines()]
    assert recs and all(r["backend"] == "cpu" for r in recs)
    # the summary is printed last, and says the run was fine
    out = proc.stdout.rstrip().splitlines()
    assert out[-1] == "RESULT: ok"
    assert any(ln.startswith("kernels (") and " GB/s)" in ln for ln in out)  # the suite's roof
    s = json.loads((out_dir / "summary.json").read_text())
    assert s["dry_run"] and s["ok"] and s["final"]
    steps = {st["name"]: st for st in s["steps"]}
    assert list(steps) == ["peers", "env", "pytest", "configs", "roof", "flush", "suite", "ncu"]
    assert all(st["status"] in ("ok", "warn", "skipped") for st in s["steps"]), steps
    # the peers: the carried wheel and tree installed, imported by a child; gemlite and
    # flashinfer are not there, which is said, and no failure
    assert sorted(s["peers"]["installed"]) == ["dwfake_tar-0.2.tar.xz", "dwfake_whl-0.1-py3-none-any.whl"]
    assert s["peers"]["imports"]["dwfake_whl"]["ok"] and s["peers"]["imports"]["dwfake_tar"]["ok"]
    assert steps["peers"]["status"] == "warn" and "gemlite" in steps["peers"]["detail"]
    # the cuda tests ran in two steps, every one skipped on the CPU, named in the log as they went
    assert s["tests"]["configs"]["counts"]["SKIPPED"] >= 3 and "every_config" in s["tests"]["configs"]["last"]
    assert s["tests"]["pytest"]["counts"]["SKIPPED"] > 20
    assert "every_config" not in " ".join(ln for ln in (out_dir / "steps.log").read_text().split(
        "===== pytest =====")[1].split("===== configs =====")[0].splitlines() if "::" in ln)
    assert "last test: " in steps["configs"]["detail"]
    # the suite's kernels run ahead in the background (the interpreter here), stopped before a
    # step times anything, and said under the configs step
    from bench.gpucheck.check import warm_shards
    w = s["warm"]
    assert w["processes"] == warm_shards() and w["finished"] + w["stopped"] == w["processes"]
    assert w["failed"] == 0, w["failures"]
    log = (out_dir / "steps.log").read_text()
    assert log.index("bench.gpucheck.warm --shard 0/") < log.index("===== pytest =====")
    assert log.index("===== configs =====") < log.index("----- warm (") < log.index("===== roof =====")
    assert any(ln.startswith("  (warm) ") and "run under the interpreter" in ln for ln in out)
    assert steps["flush"]["status"] in ("ok", "skipped")
    assert s["ncu"] and all(n.get("fake") and n["ratio"] == 1.0 for n in s["ncu"])
    (w,) = s["ncu_why"]  # the INT4 GEMV's sections pass: ran, parsed, marked as made up
    assert w["op"] == "gemv_w4" and w["fake"] and w["stalls"] and "error" not in w
    assert any("why gemv_w4/" in ln and "FABRICATED" in ln for ln in out)
    # every goal is named, none measured on tiny CPU shapes
    i = next(i for i, ln in enumerate(out) if ln.startswith("goals ("))
    assert [ln.startswith("  [ -- ] ") for ln in out[i + 1:i + 8]] == [True] * 7
    assert s["peers"]["target"] and not Path(s["peers"]["target"]).exists()  # removed at the end
    print(f"dry run took {wall:.0f} s")


@pytest.mark.slow  # the check stopped by SIGTERM during its suite step
def test_sigterm_ends_the_running_step_and_leaves_a_final_summary(tmp_path):
    out_dir = tmp_path / "out"
    proc = subprocess.Popen(["bash", str(REPO / "bench" / "device_check.sh"), "--dry-run",
                             "--out", str(out_dir), "--wheels", str(tmp_path / "none"),
                             "--only", "suite"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**__import__("os").environ, "PYTHON": sys.executable})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            log = out_dir / "steps.log"
            if log.exists() and "--suite gpu-check" in log.read_text():
                break
            time.sleep(0.2)
        time.sleep(2)
        provisional = (out_dir / "summary.txt").read_text()
        assert "PROVISIONAL" in provisional
        assert provisional.rstrip().endswith("RESULT: incomplete (running: suite)")
        proc.terminate()
        stdout, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143
    s = json.loads((out_dir / "summary.json").read_text())
    steps = {st["name"]: st for st in s["steps"]}
    assert s["final"] and not s["ok"]
    assert steps["suite"]["status"] == "timeout" and "SIGTERM" in steps["suite"]["detail"]
    assert steps["ncu"]["status"] == "skipped" and steps["pytest"]["status"] == "skipped"
    assert stdout.rstrip().splitlines()[-1] == "RESULT: problems in suite (timeout)"
    text = (out_dir / "summary.txt").read_text()
    assert "PROVISIONAL" not in text and "stopped by SIGTERM" in text
    # nothing of the suite is left running: its process group was killed
    time.sleep(1)
    left = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(out_dir).encode() in cmdline.read_bytes():
                left.append(cmdline.parent.name)
        except OSError:  # the process ended while read
            pass
    assert not left, f"still running: pids {left}"


FAKE_NCU = r'''#!/usr/bin/env bash
# Stands in for ncu on a machine without a GPU: drops ncu's options, runs the target on the CPU
# (Triton interpreted), then prints a details-page table as ncu would after the program exits.
while [ $# -gt 0 ] && [ "$1" != "$FAKE_PY" ]; do shift; done
args=(); for a in "$@"; do [ "$a" = cuda ] && a=cpu; args+=("$a"); done
"${args[@]}" --interpret || exit $?
cat "$FAKE_TABLE"
'''


def _stand_in_ncu(tmp_path: Path, monkeypatch, table_text: str) -> Path:
    """A fake `ncu` executable that prints `table_text` as ncu's CSV page (FAKE_NCU)."""
    fake = tmp_path / "ncu"
    fake.write_text(FAKE_NCU)
    fake.chmod(0o755)
    table = tmp_path / "table.csv"
    table.write_text(table_text)
    monkeypatch.setenv("FAKE_PY", sys.executable)
    monkeypatch.setenv("FAKE_TABLE", str(table))
    return fake

@pytest.mark.skipif(not HAS_TRITON, reason="no Triton")
def test_ncu_step_on_the_gpu_path_with_a_stand_in_ncu(tmp_path, monkeypatch):
    """The GPU branch of the ncu step (one process per launch, ncu's table parsed from the
    program's stdout, a gap past 5% reported) driven through a fake `ncu` executable."""
    fake = _stand_in_ncu(tmp_path, monkeypatch, DETAILS.split("==PROF== Disconnected from process 4242\n")[1])
    shape = {"M": 1, "N": 96, "K": 256}
    from bench.gpucheck import cases
    monkeypatch.setattr(cases, "ncu_targets", lambda backend, notes: [
        {"op": "gemv_bf16", "impl": "triton_gemv", "dtype": "float32", "shape": shape}])
    check = _check(tmp_path, time_limit=120)
    check.ncu_path = str(fake)
    check.step_ncu()
    (res,) = check.ncu
    assert "error" not in res, res
    model = 4 * (96 * 256 + 256 + 96)  # fp32 x, w, y
    assert res["model_bytes"] == model
    assert res["ratio"] == pytest.approx((62_830_336 + 516_096) / model)
    assert res["within_5pct"] is False and check.steps["ncu"].status == "ok"
    assert "off the byte model" in check.steps["ncu"].detail
    assert "_splitk_reduce" in (check.out / "ncu-raw.txt").read_text()
    check.log.close()


def _fake_ncu_check(tmp_path, monkeypatch, body: str):
    """A check whose ncu is a shell script running `body`, with two small GEMV targets."""
    fake = tmp_path / "ncu"
    fake.write_text(f"#!/bin/sh\n{body}\n")
    fake.chmod(0o755)
    from bench.gpucheck import cases
    shape = {"M": 1, "N": 96, "K": 256}
    monkeypatch.setattr(cases, "ncu_targets", lambda backend, notes: [
        {"op": "gemv_bf16", "impl": impl, "dtype": "float32", "shape": shape}
        for impl in ("triton_gemv", "triton_gemv_splitk")])
    check = _check(tmp_path, time_limit=120)
    check.ncu_path = str(fake)
    return check


def test_ncu_that_cannot_profile_here_is_run_once(tmp_path, monkeypatch):
    """ncu refusing the counters (as on gVisor: LibraryNotLoaded) would refuse every launch:
    the first refusal ends the step's launches, each result saying why, not the box spent."""
    calls = tmp_path / "calls"
    check = _fake_ncu_check(tmp_path, monkeypatch, f"echo x >> {calls}\n"
                            "echo '==ERROR== Failed to initialize the profiler: LibraryNotLoaded'\n"
                            "exit 1")
    check.step_ncu()
    assert calls.read_text().count("x") == 1
    assert len(check.ncu) == 2 and all("LibraryNotLoaded" in r["error"] for r in check.ncu)
    assert "not run" in check.ncu[1]["error"]
    # a machine without counters is a fact about the machine, not a failed check
    assert check.steps["ncu"].status == "skipped" and "LibraryNotLoaded" in check.steps["ncu"].detail
    check.log.close()


@pytest.mark.skipif(not HAS_TRITON, reason="no Triton")
def test_why_pass_on_the_gpu_path_with_a_stand_in_ncu(tmp_path, monkeypatch):
    """The sections pass after the byte checks: only the INT4 GEMV, ncu's raw page parsed from the
    program's stdout, the table kept in ncu-raw.txt, the verdict line in the summary."""
    fake = _stand_in_ncu(tmp_path, monkeypatch, WHY_RAW.split("\n", 1)[1])
    check = _check(tmp_path, time_limit=120)
    check.ncu_path = str(fake)
    targets = [{"op": "gemv_bf16", "impl": "triton_gemv", "dtype": "float32", "shape": {"M": 1, "N": 64, "K": 128}},
               {"op": "gemv_w4", "impl": "triton_w4", "dtype": "float16",
                "shape": {"M": 1, "N": 64, "K": 256, "group_size": 128}}]
    assert why_target(targets, None) is targets[1]
    with open(check.out / "ncu-raw.txt", "w") as raw:
        check._why(targets[1], time.monotonic() + 60, raw)
    (w,) = check.ncu_why
    assert "error" not in w, w
    assert w["op"] == "gemv_w4" and not w.get("fake") and w["registers"] == 168
    assert "### why: gemv_w4/triton_w4" in (check.out / "ncu-raw.txt").read_text()
    check.steps["ncu"].status = "ok"
    check.write_summary(final=True)
    text = (check.out / "summary.txt").read_text()
    assert "why gemv_w4/triton_w4 M=1 64x256 (ncu sections): occupancy 35.2% of 37.5% possible" in text
    assert "long_scoreboard 8.90" in text
    # no time left: said, not run
    check.ncu_why.clear()
    with open(check.out / "ncu-raw.txt", "a") as raw:
        check._why(targets[1], time.monotonic() + 5, raw)
    assert "not reached" in check.ncu_why[0]["error"]
    check.log.close()


@pytest.mark.skipif(not HAS_TRITON, reason="no Triton")
def test_the_why_passes_run_right_after_their_byte_checks(tmp_path, monkeypatch):
    """The INT4 GEMV goes first and its why pass follows at once, then the long-context
    attention launch and its why pass, so that the byte checks of the other kernels cannot spend
    the ncu box before them (the long context shrunk to 64 tokens to run interpreted)."""
    from bench.gpucheck import cases
    from bench.gpucheck import check as dc
    monkeypatch.setattr(dc, "LONG_CONTEXT", 64)
    fake = _stand_in_ncu(tmp_path, monkeypatch, WHY_RAW.split("\n", 1)[1])
    bf16 = {"op": "gemv_bf16", "impl": "triton_gemv", "dtype": "float32", "shape": {"M": 1, "N": 64, "K": 128}}
    w4 = {"op": "gemv_w4", "impl": "triton_w4", "dtype": "float16",
          "shape": {"M": 1, "N": 64, "K": 256, "group_size": 128}}
    attn = {"op": "paged_attention", "impl": "triton_splitkv", "dtype": "float32",
            "shape": {"B": 1, "Hq": 4, "Hkv": 2, "D": 32, "context": 64, "block_size": 16,
                      "ragged": 0, "pool": 2}}
    monkeypatch.setattr(cases, "ncu_targets", lambda backend, notes: [dict(bf16), dict(w4), dict(attn)])
    check = _check(tmp_path)
    check.ncu_path = str(fake)
    check.step_ncu()
    raw = (check.out / "ncu-raw.txt").read_text()
    heads = [ln.split()[1:3] for ln in raw.splitlines() if ln.startswith("### ")]
    assert heads == [["gemv_w4/triton_w4", "{'M':"], ["why:", "gemv_w4/triton_w4"],
                     ["paged_attention/triton_splitkv", "{'B':"], ["why:", "paged_attention/triton_splitkv"],
                     ["gemv_bf16/triton_gemv", "{'M':"]], heads
    assert [w["op"] for w in check.ncu_why] == ["gemv_w4", "paged_attention"]
    assert all("error" not in w and w["registers"] == 168 for w in check.ncu_why)
    check.log.close()


def test_why_targets_follow_what_the_goals_read():
    """The why passes profile the impl each goal read in this run, else the first profiled."""
    from bench.gpucheck.check import LONG_CONTEXT, why_targets
    long = {"B": 1, "Hq": 32, "Hkv": 8, "D": 128, "context": LONG_CONTEXT, "block_size": 16,
            "ragged": 0, "pool": 2}
    m16 = {"op": "gemv_w4", "impl": "triton_w4", "dtype": "bfloat16",
           "shape": {"M": 16, "N": 57344, "K": 8192, "group_size": 128}}
    targets = [dict(m16)] + [{"op": "gemv_w4", "impl": i, "dtype": "bfloat16", "shape": {}}
                             for i in ("triton_w4", "triton_w4_splitk")] + \
        [{"op": "paged_attention", "impl": i, "dtype": "bfloat16", "shape": long}
         for i in ("triton_splitkv", "triton")] + \
        [{"op": "paged_attention", "impl": "triton", "dtype": "bfloat16", "shape": {**long, "B": 16, "context": 4096}}]
    got = why_targets(targets, [])
    assert [(t["op"], t["impl"], t["shape"].get("M")) for t in got] == [
        ("gemv_w4", "triton_w4", None), ("gemv_w4", "triton_w4", 16),
        ("paged_attention", "triton_splitkv", None)]
    assert got[0] is targets[1] and got[1] is targets[0]  # M = 1 first, though listed second
    rec = {"op": "paged_attention", "impl": "triton", "dtype": "bfloat16", "status": "ok",
           "baseline": False, "kind": "triton", "pct_datasheet": 80.0, "shape": long}
    got = why_targets(targets, [rec])
    assert got[2]["impl"] == "triton" and got[2]["shape"]["context"] == LONG_CONTEXT
    assert [t["impl"] for t in why_targets(targets[1:], [])][:2] == ["triton_w4", "triton_splitkv"]


def test_background_compiles_start_only_for_a_suite_and_are_stopped_before_it(tmp_path):
    """start_warm runs only when the suite will and a test step gives it time; finish_warm kills
    a process still at work (its group) and reports what it said."""
    import subprocess as sp
    for kw, started in (({"no_warm": True}, False), ({"only": ["peers", "env", "suite"]}, False),
                        ({"skip": ["suite"]}, False), ({"skip": ["pytest", "configs"]}, False)):
        c = _check(tmp_path, **{"no_warm": False, **kw})
        try:
            c.start_warm()
            assert bool(c.warm_procs) == started, kw
        finally:
            c.log.close()
    c = _check(tmp_path, no_warm=False)
    try:
        out = tmp_path / "warm.out"
        with open(out, "w") as f:
            proc = sp.Popen([sys.executable, "-c",
                             "import time; print('warm 0/1: gemv_w4 M=1 bfloat16 triton_w4: 3 "
                             "configs compiled in 1.0 s', flush=True); time.sleep(60)"],
                            stdout=f, start_new_session=True)
        c.warm_procs, c.warm_t0 = [(proc, out)], time.monotonic()
        deadline = time.monotonic() + 30
        while "configs compiled" not in out.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        t0 = time.monotonic()
        c.finish_warm()
        assert time.monotonic() - t0 < 5 and proc.poll() is not None and not out.exists()
        assert c.warm["stopped"] == 1 and c.warm["configs"] == 3 and c.warm["done"] == 1
        assert c.warm_procs == []
        c.finish_warm()  # a second call has nothing to stop
    finally:
        c.log.close()


def test_a_step_with_too_little_time_left_is_not_started(tmp_path):
    """A step whose box would be under 3 s cannot even start its Python: it is marked as cut
    by the total time box, and nothing of it runs."""
    c = _check(tmp_path, dry_run=True)
    try:
        c.deadline = time.monotonic() + 2
        assert c.begin("pytest") is None
        assert c.steps["pytest"].status == "timeout" and "no time left" in c.steps["pytest"].detail
        c.deadline = time.monotonic() + 60
        assert c.begin("configs") is c.steps["configs"] and c.steps["configs"].status == "running"
    finally:
        c.log.close()


def test_a_pytest_shard_with_a_failed_test_fails_the_step(tmp_path, monkeypatch):
    """pytest exits 1 when a test failed: that shard's failure is the step's, whatever the other
    shards did, and the failed test is named with the plugin's reason."""
    from bench.gpucheck import check as dc
    from bench.gpucheck.pytest_shard import FAIL_LINE
    outs = [["tests/kernels/test_a.py::test_x PASSED", "= 1 passed in 1.0s ="],
            ["tests/kernels/test_b.py::test_y FAILED",
             f"{FAIL_LINE}tests/kernels/test_b.py::test_y: rel err 0.5 > 0.01",
             "= 1 failed in 1.0s ="]]
    monkeypatch.setattr(dc, "pytest_shards", lambda: 2)
    monkeypatch.setattr(dc, "run_procs", lambda cmds, box, log, env, tags: ([0, 1], 2.0, outs))
    c = _check(tmp_path)
    try:
        c.step_pytest("pytest")
        st = c.steps["pytest"]
        assert st.status == "failed" and st.detail.startswith("exit 1: 1 passed, 1 failed")
        assert "failed: tests/kernels/test_b.py::test_y (rel err 0.5 > 0.01)" in st.detail
        monkeypatch.setattr(dc, "run_procs", lambda *a: ([0, 5], 2.0, [outs[0], []]))
        c.step_pytest("configs")  # 5: a shard that selected nothing is no failure
        assert c.steps["configs"].status == "ok"
    finally:
        c.log.close()


def test_a_suite_run_with_a_failed_impl_fails_the_step(tmp_path, monkeypatch):
    """`decodewall run` exits 0 with every case recorded, even one whose impl failed its check or
    crashed: such a record fails the suite step (the summary's RESULT), with the count said."""
    from bench.gpucheck import check as dc
    monkeypatch.setattr(dc, "run_proc", lambda *a, **k: (0, 1.0))
    c = _check(tmp_path)
    shape = {"M": 1, "N": 64, "K": 128}
    recs = [{"op": "gemv_bf16", "impl": "a", "shape": shape, "status": "ok"},
            {"op": "gemv_bf16", "impl": "b", "shape": shape, "status": "failed-check"}]
    try:
        c._read_records = lambda before: setattr(c, "records", recs)
        c.step_suite()
        st = c.steps["suite"]
        assert st.status == "failed" and "1 impl(s) failed" in st.detail
        c._read_records = lambda before: setattr(c, "records", recs[:1])
        c.step_suite()
        assert c.steps["suite"].status == "ok"
        assert not [n for n in c.notes if n.startswith("suite: ")]
    finally:
        c.log.close()


def test_what_the_suite_said_of_the_gpu_is_in_the_summary(tmp_path, monkeypatch):
    """A suite timed while NVML gave power as holding the clocks down, or while another process
    had the GPU open: `run` says so on stderr (steps.log), and the summary's notes say it too."""
    from bench.gpucheck import check as dc
    monkeypatch.setattr(dc, "run_proc", lambda *a, **k: (0, 1.0))
    c = _check(tmp_path)
    clocks = {"source": "nvml", "throttle": ["sw_power_cap"], "sm_mhz": 1500, "sm_max_mhz": 1980,
              "other_processes": [{"pid": 4242, "used_mib": 1024}]}
    recs = [{"op": "gemv_bf16", "impl": "a", "shape": {"M": 1, "N": 64, "K": 128}, "status": "ok",
             "time_s": {"median": 1e-5}, "device": {"clocks": clocks}}]
    try:
        c._read_records = lambda before: setattr(c, "records", recs)
        c.step_suite()
        c.write_summary(final=True)
        text = (tmp_path / "out" / "summary.txt").read_text()
        assert "  - suite: as 1 of 1 timed case(s) ended, NVML gave sw_power_cap" in text
        assert "other processes had this GPU open (pid 4242 (1024 MiB)" in text
    finally:
        c.log.close()


def _answer_env_probe(c, **changes) -> None:
    """The env step's probe answers as on a machine with torch, Triton, the backend and every
    package the check uses, but for `changes`."""
    probe = {"backend_ok": True, "torch_version": "2", "triton_version": "3", "rich": True,
             "numpy": True, "pytest": True, "device": {"name": "cpu"}, **changes}
    c._capture = lambda cmd, box, env=None: (0, 0.1, json.dumps(probe) + "\n")


def test_the_dry_run_never_looks_for_ncu(tmp_path, monkeypatch):
    """--dry-run tests the check on a CPU: even where an ncu is installed it is neither run nor
    probed (its probe would start a CUDA program), and the env step says ncu is not used."""
    from bench.gpucheck import check as dc
    found = []
    monkeypatch.setattr(dc, "find_ncu", lambda: found.append(1) or "/opt/nvidia/ncu")
    monkeypatch.setattr(dc.shutil, "which", lambda name: None)
    ran = []
    monkeypatch.setattr(dc, "run_proc", lambda cmd, *a, **k: ran.append(cmd) or (0, 0.1))
    c = _check(tmp_path, dry_run=True)
    _answer_env_probe(c)
    try:
        c.step_env()
        assert c.steps["env"].status == "ok" and "ncu not used" in c.steps["env"].detail
        assert c.ncu_path is None and c.ncu_probe is None and not ran and not found
    finally:
        c.log.close()


def test_an_ncu_step_that_measured_nothing_fails(tmp_path, monkeypatch):
    """ncu that can profile here but whose every launch errs (the target crashed, ncu's own error)
    measured nothing: a failed step, each launch's error kept, and not a skip as on a machine
    whose ncu refuses the counters."""
    check = _fake_ncu_check(tmp_path, monkeypatch, "echo '==ERROR== The application returned an "
                            "error code (11).'\nexit 11")
    try:
        check.step_ncu()
        assert len(check.ncu) == 2 and all("exit 11: ==ERROR== The application" in r["error"]
                                           for r in check.ncu)
        st = check.steps["ncu"]
        assert st.status == "failed" and st.detail.startswith("0/2 launches compared, 2 not measured")
    finally:
        check.log.close()


def test_a_test_that_errors_in_setup_is_listed_as_failed():
    """pytest -v marks a test whose fixture or setup raised ERROR, not FAILED: it did not pass
    either, so it is counted as an error and named among the failed tests of the step."""
    lines = ["tests/kernels/gemv/test_w4.py::test_cuda_impls[a] PASSED [ 50%]\n",
             "tests/kernels/gemv/test_w4.py::test_cuda_impls[b] ERROR [100%]\n",
             "=========== 1 passed, 1 error in 2.00s ===========\n"]
    p = pytest_progress(lines)
    assert p["counts"]["ERROR"] == 1 and p["counts"]["PASSED"] == 1
    assert p["failed"] == ["tests/kernels/gemv/test_w4.py::test_cuda_impls[b]"]
    assert p["final"] == "1 passed, 1 error in 2.00s" and p["running"] is None


def test_the_test_steps_run_several_pytest_processes_and_warm_takes_the_other_cores(monkeypatch):
    """Half the cores run pytest processes, 2 to 8 (the dry run on 2 cores still runs two, so the
    parallel path is the one tested); the background compiles take the cores left, 1 to 8."""
    from bench.gpucheck import check as dc
    for cores, shards, warm in ((1, 2, 1), (2, 2, 1), (4, 2, 2), (16, 8, 8), (64, 8, 8)):
        monkeypatch.setattr(dc, "usable_cores", lambda cores=cores: cores)
        assert (dc.pytest_shards(), dc.warm_shards()) == (shards, warm), cores


def test_the_cores_counted_are_those_the_check_may_run_on(monkeypatch):
    """A container or taskset that narrows the affinity mask narrows the processes: counting
    the machine's cores there would start 16 compiling processes on 2."""
    from bench.gpucheck import proc
    if not hasattr(proc.os, "sched_getaffinity"):
        pytest.skip("no affinity mask on this platform")
    monkeypatch.setattr(proc.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(proc.os, "sched_getaffinity", lambda pid: {3, 5})
    assert proc.usable_cores() == 2


def test_sigterm_or_ctrl_c_during_a_step_give_their_exit_status(tmp_path):
    """A check stopped by SIGTERM exits 143 and by Ctrl-C 130 (what a shell reports for such a
    stop), not the summary's 1: the caller can tell a cut check from a failed one. The running
    step is marked cut and the later ones were not run."""
    from bench.gpucheck.check import Interrupted
    for exc, code, how in ((Interrupted(), 143, "SIGTERM"), (KeyboardInterrupt(), 130, "Ctrl-C")):
        c = _check(tmp_path / how, dry_run=True)
        ran = []
        _stub_steps(c, ran)

        def suite(c=c, exc=exc):
            c.begin("suite")
            raise exc

        c.step_suite = suite
        assert c.run() == code
        assert ran == ["peers", "env", "pytest", "configs"]
        assert c.steps["suite"].status == "timeout" and how in c.steps["suite"].detail
        assert c.steps["ncu"].status == "skipped"


def test_the_why_pass_box_never_outlasts_the_ncu_box(tmp_path):
    """The why pass gets NCU_TARGET_S at most, and never more than what is left of the ncu step's
    box: a pass begun with 15 s left must not run for 30."""
    from bench.gpucheck.check import NCU_TARGET_S
    c = _check(tmp_path, dry_run=True)
    boxes = []
    c._capture = lambda cmd, box, env=None: (boxes.append(box), (None, box, ""))[1]
    tg = {"op": "gemv_w4", "impl": "triton_w4", "dtype": "float16",
          "shape": {"M": 1, "N": 64, "K": 256, "group_size": 128}}
    try:
        with open(c.out / "ncu-raw.txt", "w") as raw:
            c._why(tg, time.monotonic() + 15, raw)
            c._why(tg, time.monotonic() + 300, raw)
        assert boxes[0] <= 15 and boxes[1] == NCU_TARGET_S
        assert [w["error"] for w in c.ncu_why] == ["time box reached"] * 2
    finally:
        c.log.close()


def test_an_ncu_launch_with_under_8_s_left_is_not_started(tmp_path, monkeypatch):
    """A profiled launch takes seconds before its window (torch import, inputs, compile): with
    under 8 s of the ncu box left it is said to be not reached, not started and cut."""
    from bench.gpucheck import cases
    shape = {"M": 1, "N": 96, "K": 256}
    monkeypatch.setattr(cases, "ncu_targets", lambda backend, notes: [
        {"op": "gemv_bf16", "impl": impl, "dtype": "float32", "shape": shape}
        for impl in ("triton_gemv", "triton_gemv_splitk")])
    c = _check(tmp_path)
    c.ncu_path = "/opt/ncu"
    ran = []
    c._capture = lambda cmd, box, env=None: (ran.append(cmd), (None, box, ""))[1]
    try:
        c.deadline = time.monotonic() + 6
        c.step_ncu()
        assert not ran and len(c.ncu) == 2
        assert all(r["error"] == "not reached: the ncu time box was spent" for r in c.ncu)
        assert c.steps["ncu"].status == "failed"
    finally:
        c.log.close()


def test_the_script_runs_from_anywhere_and_passes_the_exit_status_on(tmp_path):
    """bench/device_check.sh started from another folder without PYTHONPATH runs this checkout's
    code (a fresh checkout on the GPU machine is installed nowhere; here an editable install may
    be, so the stand-in python says which `bench` the script's environment imports), and its exit
    status is the check's: bad options are one stderr line and exit 2."""
    import os
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    py = tmp_path / "python"
    py.write_text(f'#!/bin/sh\n"{sys.executable}" -c "import bench, sys; '
                  f'sys.stderr.write(\'bench at \' + bench.__file__ + chr(10))"\n'
                  f'exec "{sys.executable}" "$@"\n')
    py.chmod(0o755)
    r = subprocess.run(["bash", str(REPO / "bench" / "device_check.sh"), "--dry-run", "--out",
                        str(tmp_path / "out"), "--time-limit", "5"], capture_output=True,
                       text=True, cwd=tmp_path, env={**env, "PYTHON": str(py)}, timeout=120)
    where, *err = r.stderr.strip().splitlines()
    assert where == f"bench at {REPO / 'bench' / '__init__.py'}", r.stderr
    assert r.returncode == 2 and len(err) == 1 and "must exceed the 12 s" in err[0], r.stderr
    assert r.stdout == "" and not (tmp_path / "out").exists()


def test_an_error_in_envs_own_code_does_not_skip_the_steps_after_it(tmp_path):
    """Only the probe's answer that there is no usable torch or backend ends the check after
    env; an error of env's own code (an ncu found but not runnable) fails env and the rest run."""
    c = _check(tmp_path, dry_run=True)
    ran = []
    _stub_steps(c, ran)

    def env_bug():
        c.begin("env")
        raise OSError("[Errno 8] Exec format error: '/usr/local/cuda/bin/ncu'")
    c.step_env = env_bug
    c.run()
    assert c.steps["env"].status == "failed" and "Exec format error" in c.steps["env"].detail
    assert ran == ["peers", "pytest", "configs", "suite", "ncu"]

    c = _check(tmp_path, dry_run=True)
    ran = []
    _stub_steps(c, ran)

    def no_backend():
        st = c.begin("env")
        st.status, c.backend_usable = "failed", False
    c.step_env = no_backend
    c.run()
    assert ran == ["peers"] and c.steps["suite"].status == "skipped"


def test_the_background_compiles_stop_before_the_suite_even_when_configs_raises(tmp_path):
    c = _check(tmp_path, dry_run=True)
    ran = []
    ok = _stub_steps(c, ran)

    def pytest_step(name):
        if name == "configs":
            c.begin(name)
            raise RuntimeError("a path only the GPU takes")
        return ok(name)()
    c.step_pytest = pytest_step
    c.finish_warm = lambda: ran.append("finish_warm")
    c.run()
    assert c.steps["configs"].status == "failed"
    assert ran.index("finish_warm") < ran.index("suite"), ran


def test_sigterm_while_the_summary_is_written_stops_the_check(tmp_path, monkeypatch):
    """The summary imports torch (seconds) at the first step's start: a SIGTERM then ends the
    check with 143, not a 'summary code failed' summary and the check going on."""
    from bench.gpucheck import summary
    from bench.gpucheck.check import Interrupted
    c = _check(tmp_path, dry_run=True)
    ran = []
    _stub_steps(c, ran)
    real, calls = summary.write, []

    def write(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise Interrupted()
        return real(*a, **k)
    monkeypatch.setattr(summary, "write", write)
    assert c.run() == 143
    assert ran == [] and "summary_error" not in json.loads(
        (tmp_path / "out" / "summary.json").read_text())


def test_run_proc_of_a_command_that_cannot_start_is_127_not_an_exception(tmp_path):
    from bench.gpucheck.proc import run_proc
    bad = tmp_path / "ncu"
    bad.write_text("not a program")
    bad.chmod(0o644)  # found by a glob, not executable
    with open(tmp_path / "log", "w") as log:
        rc, _ = run_proc([str(bad), "--version"], 5, log, dict(os.environ))
    assert rc == 127 and "cannot start" in (tmp_path / "log").read_text()


def test_the_check_starts_on_a_machine_without_pytest():
    """Without pytest the check still starts: its env step names pytest as missing and the
    peers step can install it from a carried wheel; only the test steps need it."""
    code = ("import sys; sys.modules['pytest'] = None\n"
            "from bench.gpucheck import check\n"
            "raise SystemExit(check.main(['--help']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--dry-run" in r.stdout


def test_why_reads_the_largest_launch_wherever_it_comes():
    """ncu lists launches in the order they ran, a split-K GEMV before its reduction: the why
    pass reads the launch with the largest grid, whether it comes first or last."""
    head, units, small, large = WHY_RAW.strip().splitlines()[1:]
    w = why(parse_ncu_csv("\n".join([head, units, large, small])))
    assert w["kernel"] == "_w4_kernel" and w["registers"] == 168


@pytest.mark.parametrize("rcs, outs, status, says", [
    ([5, 5], [[], []], "warn", "no tests selected"),
    ([0, None], [["tests/kernels/test_a.py::test_x PASSED", "= 1 passed in 1.0s ="],
                 ["tests/kernels/test_b.py::test_slow"]], "timeout",
     "cut at the time box while running tests/kernels/test_b.py::test_slow (1 passed before it)"),
])
def test_a_test_step_is_ok_only_when_every_shard_finished_and_tests_ran(tmp_path, monkeypatch,
                                                                       rcs, outs, status, says):
    """A test step's status from its shards' exits: every shard selecting nothing (exit 5)
    checked nothing, a warning; one shard cut at the box is the step cut, whatever the others
    did, naming the test it was running."""
    from bench.gpucheck import check as dc
    monkeypatch.setattr(dc, "pytest_shards", lambda: 2)
    monkeypatch.setattr(dc, "run_procs", lambda cmds, box, log, env, tags: (rcs, 2.0, outs))
    c = _check(tmp_path)
    try:
        c.step_pytest("configs")
        st = c.steps["configs"]
        assert st.status == status and st.detail.startswith(says), st
    finally:
        c.log.close()


def test_a_suite_run_that_exits_with_an_error_fails_the_step(tmp_path, monkeypatch):
    """`decodewall run` exiting non-zero (a crash after some cases) fails the suite step with
    its exit status named, however good the records it left are."""
    from bench.gpucheck import check as dc
    monkeypatch.setattr(dc, "run_proc", lambda *a, **k: (1, 1.0))
    c = _check(tmp_path)
    recs = [{"op": "gemv_bf16", "impl": "a", "shape": {"M": 1, "N": 64, "K": 128}, "status": "ok"}]
    try:
        c._read_records = lambda before: setattr(c, "records", recs)
        c.step_suite()
        st = c.steps["suite"]
        assert st.status == "failed" and st.detail.startswith("exit 1; 1/"), st
    finally:
        c.log.close()


def _two_gemv_targets(monkeypatch):
    from bench.gpucheck import cases
    shape = {"M": 1, "N": 96, "K": 256}
    monkeypatch.setattr(cases, "ncu_targets", lambda backend, notes: [
        {"op": "gemv_bf16", "impl": impl, "dtype": "float32", "shape": shape}
        for impl in ("triton_gemv", "triton_gemv_splitk")])


def test_each_profiled_launch_is_boxed_at_ncu_target_s(tmp_path, monkeypatch):
    """On the GPU each launch is profiled in a process of its own boxed at NCU_TARGET_S, not at
    what is left of the ncu step's box: one launch that hangs cannot spend the others' time."""
    from bench.gpucheck.check import NCU_TARGET_S
    _two_gemv_targets(monkeypatch)
    c = _check(tmp_path)
    c.ncu_path = "/opt/ncu"
    boxes = []
    c._capture = lambda cmd, box, env=None: (boxes.append(box), (None, box, ""))[1]
    try:
        assert c.box("ncu") > 2 * NCU_TARGET_S
        c.step_ncu()
        assert boxes == [NCU_TARGET_S, NCU_TARGET_S]
        assert all(r["error"] == f"time box ({NCU_TARGET_S} s) reached" for r in c.ncu)
    finally:
        c.log.close()


@pytest.mark.parametrize("second", [
    "==ERROR== The application returned an error code (1).",
    "==ERROR== Failed to initialize the profiler: LibraryNotLoaded"])
def test_an_ncu_step_that_measured_some_launches_and_not_others_is_a_warning(tmp_path, monkeypatch,
                                                                            second):
    """One launch compared with the byte model and one not (the target failed, or ncu refused
    it): a warning naming both counts, never ok (a launch went unmeasured) and never skipped
    (this machine's ncu did measure)."""
    from bench.gpucheck.ncu import MARK, fake_ncu_csv
    _two_gemv_targets(monkeypatch)
    c = _check(tmp_path)
    c.ncu_path = "/opt/ncu"

    def capture(cmd, box, env=None):
        if "triton_gemv_splitk" in " ".join(cmd):
            return 1, 0.1, second + "\n"
        info = {"op": "gemv_bf16", "impl": "triton_gemv", "bytes_moved": 1000, "out_bytes": 100}
        return 0, 0.1, MARK + json.dumps(info) + "\n" + fake_ncu_csv("k", 900, 100, 1000.0)

    c._capture = capture
    try:
        c.step_ncu()
        assert c.ncu[0]["ratio"] == 1.0 and "error" in c.ncu[1]
        st = c.steps["ncu"]
        assert st.status == "warn" and st.detail.startswith("1/2 launches compared"), st
        assert "1 not measured" in st.detail
    finally:
        c.log.close()


def test_a_why_pass_whose_target_failed_records_the_failure_not_figures(tmp_path):
    """The profiled program exits 1 when its case fails, and the why pass then records that
    error: it never feeds a (dry run: fabricated) table to the parser for a launch that did not
    run."""
    c = _check(tmp_path, dry_run=True)
    tg = {"op": "gemv_w4", "impl": "no_such_impl", "dtype": "float16",
          "shape": {"M": 1, "N": 64, "K": 256, "group_size": 128}}
    try:
        with open(c.out / "ncu-raw.txt", "w") as raw:
            c._why(tg, time.monotonic() + 120, raw)
        (w,) = c.ncu_why
        assert w.get("error", "").startswith("exit 1: ") and "no_such_impl" in w["error"], w
        assert "stalls" not in w and not w.get("fake")
    finally:
        c.log.close()


def test_a_check_stopped_while_the_ncu_probe_runs_leaves_no_probe_behind(tmp_path):
    """SIGTERM before the suite step (where the probe is waited for) still ends the background
    ncu probe, its process group killed: no profiler outlives the check on the device."""
    from bench.gpucheck.check import Interrupted
    fake = tmp_path / "ncu"
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    c = _check(tmp_path, dry_run=True)
    ran = []
    ok = _stub_steps(c, ran)

    def env():
        ok("env")()
        c.ncu_path = str(fake)
        c.start_ncu_probe()

    def pytest_step(name):
        c.begin(name)
        raise Interrupted()

    c.step_env, c.step_pytest = env, pytest_step
    try:
        assert c.run() == 143
        proc = c.ncu_probe["proc"]
        assert proc.poll() is not None and not c.ncu_probe["path"].exists()
    finally:
        if c.ncu_probe is not None and c.ncu_probe["proc"].poll() is None:
            os.killpg(c.ncu_probe["proc"].pid, 9)
            c.ncu_probe["proc"].wait()


def test_an_env_without_pytest_is_a_warning_naming_it(tmp_path, monkeypatch):
    """The probe finds torch and the backend but not pytest (or rich, numpy): env warns and
    names the missing packages, so the test steps' failures that follow have their cause."""
    from bench.gpucheck import check as dc
    monkeypatch.setattr(dc.shutil, "which", lambda name: None)
    c = _check(tmp_path, dry_run=True)
    _answer_env_probe(c, pytest=False)
    try:
        c.step_env()
        st = c.steps["env"]
        assert st.status == "warn" and "missing Python packages pytest" in st.detail, st
        assert c.backend_usable is True
    finally:
        c.log.close()
