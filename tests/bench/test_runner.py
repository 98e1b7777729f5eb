"""The runner's correctness gate and record contract, in-process on the CPU backend."""
import json
import math

import pytest
import torch

from backends import get_backend
import backends.cpu as cpu_backend
from bench.results import FIELDS, ResultWriter, read_results
from bench.roofline import IN_CACHE, Roof
from bench.runner import WARM_CACHE_FACTOR, RunContext, Runner
from bench.case import Case
from bench.timing import BUDGETS
from kernels import OPS, register_impl
from kernels.cbuild import default_march
from kernels.gemv import GemvShape

TEST_IMPLS = ["t_wrong", "t_lazy", "t_unsupported", "t_crash", "t_widened", "t_good"]


@pytest.fixture
def test_impls():
    @register_impl("gemv_bf16", "t_wrong", backends=["cpu"])
    def wrong(x, w):
        return (x @ w.T) * 1.05  # a 5% error: must be caught

    @register_impl("gemv_bf16", "t_lazy", backends=["cpu"])
    def lazy(x, w, out=None):
        out[:, :-1] = x @ w[:-1].T  # forgets the last column: poisoned NaN must show it
        return out

    @register_impl("gemv_bf16", "t_unsupported", backends=["cpu"])
    def unsupported(x, w):
        raise NotImplementedError("needs K % 1024 == 0")

    @register_impl("gemv_bf16", "t_crash", backends=["cpu"])
    def crash(x, w):
        raise RuntimeError("boom")

    @register_impl("gemv_bf16", "t_widened", backends=["cpu"])
    def widened(x, w):
        return x.double() @ w.double().T  # right values, but not the bytes the record counts

    @register_impl("gemv_bf16", "t_good", backends=["cpu"], dtypes=["float32"])
    def good(x, w, out=None):
        return torch.matmul(x, w.T, out=out)

    yield
    for n in TEST_IMPLS:
        OPS["gemv_bf16"].impls.pop(n, None)


LLC = 1 << 20  # the last-level cache the tests that rotate input sets see, whatever the host's


@pytest.fixture
def fixed_llc(monkeypatch):
    """The CPU backend reports one cache level, an LLC of LLC bytes: rotating a small case past 4x the host's own
    can need more than MAX_SETS input sets (a 128 MiB L3), which leaves the case not cold."""
    monkeypatch.setattr(cpu_backend, "read_caches", lambda: {"L3": LLC})


def make_runner(tmp_path, impls):
    b = get_backend("cpu")
    roof = Roof("cpu", 20.0, 25.0, 1 << 28, matmul_tflops={"float32": 0.1})
    ctx = RunContext(backend=b, roof=roof, chip=None, device_info=b.device_info(),
                     budget=BUDGETS["quick"], seed=0, run_id="test-run", command="pytest",
                     git_commit=None, versions={"torch": torch.__version__},
                     impl_filter=tuple(impls))
    return Runner(ctx, ResultWriter(tmp_path, "test-run"))


def records_of(tmp_path, impls):
    """Each impl's record of one small fp32 GEMV case, by impl name."""
    r = make_runner(tmp_path, impls)
    recs = {x["impl"]: x for x in r.run_case(Case("gemv_bf16", GemvShape(2, 64, 128),
                                                  torch.float32))}
    r.writer.close()
    return recs


def test_gate_catches_wrong_impls_and_only_times_passing_ones(tmp_path, test_impls, fixed_llc):
    r = make_runner(tmp_path, TEST_IMPLS)
    recs = {x["impl"]: x for x in r.run_case(Case("gemv_bf16", GemvShape(2, 64, 128), torch.float32))}
    r.writer.close()
    assert recs["t_wrong"]["status"] == "failed-check" and recs["t_wrong"]["time_s"] is None
    assert recs["t_wrong"]["correct"] is False and recs["t_wrong"]["rel_err"] > 0.04
    assert recs["t_lazy"]["status"] == "failed-check" and "NaN" in recs["t_lazy"]["error"]
    assert recs["t_unsupported"]["status"] == "skipped"
    assert "K % 1024" in recs["t_unsupported"]["error"]
    assert recs["t_crash"]["status"] == "error" and "boom" in recs["t_crash"]["error"]
    widened = recs["t_widened"]
    assert widened["status"] == "failed-check" and widened["correct"] is False
    assert "output dtype float64, the op's is float32" in widened["error"]
    good = recs["t_good"]
    assert good["status"] == "ok" and good["correct"] is True
    assert good["time_s"]["n"] >= 5 and good["time_s"]["median"] > 0
    assert good["achieved_gbps"] == pytest.approx(good["bytes"] / good["time_s"]["median"] / 1e9)
    # the rotated working set defeats the cache
    assert good["n_sets"] > 1 and good["n_sets"] * good["set_bytes"] > 4 * LLC and good["cold"]
    saved = read_results(tmp_path / "test-run.jsonl")
    assert [x["impl"] for x in saved] == list(recs)
    for rec in saved:
        assert set(FIELDS) <= rec.keys()
        json.dumps(rec)
        # the CPU's vector extension, the C kernels' target and the NUMA nodes the run's CPUs
        # are on travel with every record
        assert rec["device"]["isa"] == cpu_backend.cpu_isa()
        assert rec["device"]["c_march"] == default_march()
        assert rec["device"]["numa_nodes"] == cpu_backend.numa_nodes()


def test_dtype_mismatch_is_skipped_with_reason(tmp_path, test_impls):
    r = make_runner(tmp_path, ["t_good"])
    (rec,) = r.run_case(Case("gemv_bf16", GemvShape(1, 8, 16), torch.bfloat16))
    assert rec["status"] == "skipped" and "float32" in rec["error"]


def test_writer_creates_nothing_without_records(tmp_path):
    w = ResultWriter(tmp_path, "empty")
    w.close()
    assert not list(tmp_path.iterdir())


def test_writer_never_appends_to_another_runs_file(tmp_path):
    """Two runs drawn the same id (16 random bits a second): the later takes another id."""
    other = tmp_path / "same-id.jsonl"
    other.write_text('{"run_id": "same-id"}\n')
    ids = iter(["same-id", "fresh-id"])  # the first new id collides again
    w = ResultWriter(tmp_path, "same-id", new_id=lambda: next(ids))
    rec = {"op": "copy", "run_id": "same-id"}
    w.write(rec)
    w.write({"op": "copy", "run_id": "same-id"})
    w.close()
    assert other.read_text() == '{"run_id": "same-id"}\n'
    assert w.path == tmp_path / "fresh-id.jsonl" and w.run_id == "fresh-id" and w.count == 2
    assert [json.loads(x)["run_id"] for x in w.path.read_text().splitlines()] == ["fresh-id"] * 2
    assert rec["run_id"] == "fresh-id"  # what the CLI prints (--json) is what the file holds
    w2 = ResultWriter(tmp_path, "same-id")  # its own fallback: the id with a random suffix
    w2.write({"op": "copy"})
    w2.close()
    assert w2.path.name.startswith("same-id-") and w2.count == 1


def test_writer_counts_a_record_an_interrupt_lands_after(tmp_path, monkeypatch):
    """A signal after the line's fsync, before the count: raised once the record is counted, so
    "N finished case(s) kept" is the file's number of lines."""
    import os
    import signal

    from bench.interrupts import Interrupted, handled
    fsync = os.fsync

    def fsync_then_signal(fd):
        fsync(fd)
        signal.raise_signal(signal.SIGINT)

    w = ResultWriter(tmp_path, "run")
    with handled():
        monkeypatch.setattr(os, "fsync", fsync_then_signal)
        with pytest.raises(Interrupted):
            w.write({"op": "copy"})
        monkeypatch.setattr(os, "fsync", fsync)
    w.close()
    assert w.count == 1 == len(w.path.read_text().splitlines())


# --- warm cases (the size sweep) ------------------------------------------------------------------

def test_warm_case_in_cache_is_timed_on_one_set_and_not_judged(tmp_path, test_impls, fixed_llc):
    """A warm case the LLC holds: one input set, no rotation, and its % of roof judges nothing (a
    cache-resident GEMV can pass the DRAM roof; 'above the roof: harness suspect' would be wrong)."""
    r = make_runner(tmp_path, ["t_good"])
    shape = GemvShape(1, 64, 256)
    cold, = r.run_case(Case("gemv_bf16", shape, torch.float32))
    warm, = r.run_case(Case("gemv_bf16", shape, torch.float32, warm=True))
    r.writer.close()
    assert cold["status"] == warm["status"] == "ok"
    assert cold["n_sets"] > 1 and cold["n_sets"] * cold["set_bytes"] > 4 * LLC
    assert cold["cold"] and not cold["warm"]
    assert warm["set_bytes"] <= WARM_CACHE_FACTOR * LLC
    assert warm["n_sets"] == 1 and not warm["cold"] and warm["warm"]
    assert warm["verdict"] == IN_CACHE and warm["pct_roof"] is not None
    assert cold["verdict"] != IN_CACHE


def test_rotation_counts_the_bytes_a_call_touches_not_the_pool_it_holds(tmp_path, fixed_llc):
    """A paged KV pool is allocated whole (here 32x the blocks read) and read in part: sizing the
    rotation by allocation would give one set, and the part read would stay cached."""
    from kernels.attention.ops import PagedAttentionShape
    r = make_runner(tmp_path, ["gather_sdpa"])
    shape = PagedAttentionShape(B=1, Hq=4, Hkv=1, D=64, context=512, ragged=0, pool=32)
    rec, = r.run_case(Case("paged_attention", shape, torch.float32))
    r.writer.close()
    assert rec["status"] == "ok", rec["error"]
    assert rec["set_bytes"] > 4 * LLC > rec["bytes"]  # by allocation one set would do
    assert rec["n_sets"] > 1 and rec["n_sets"] * rec["bytes"] > 4 * LLC and rec["cold"]


def test_a_rotation_that_cannot_pass_the_cache_is_judged_in_cache(tmp_path, test_impls, monkeypatch):
    """MAX_SETS copies of a tiny case stay under 4x the LLC: partly cached, so not judged against
    the DRAM roof, whatever the host's cache."""
    monkeypatch.setattr(cpu_backend, "read_caches", lambda: {"L3": 64 << 20})
    r = make_runner(tmp_path, ["t_good"])
    rec, = r.run_case(Case("gemv_bf16", GemvShape(1, 16, 64), torch.float32))
    r.writer.close()
    assert rec["n_sets"] * rec["bytes"] <= 4 * (64 << 20)
    assert rec["verdict"] == IN_CACHE and not rec["cold"]


def test_warm_case_past_the_cache_is_judged_like_a_cold_one(tmp_path, test_impls, monkeypatch):
    """A warm set larger than WARM_CACHE_FACTOR x the LLC streams from DRAM: judged, marked cold."""
    r = make_runner(tmp_path, ["t_good"])
    monkeypatch.setattr(cpu_backend, "read_caches", lambda: {"L3": 1024})
    rec, = r.run_case(Case("gemv_bf16", GemvShape(1, 64, 256), torch.float32, warm=True))
    r.writer.close()
    assert rec["set_bytes"] > WARM_CACHE_FACTOR * 1024
    assert rec["n_sets"] == 1 and rec["cold"] and rec["warm"] and rec["verdict"] != IN_CACHE


def test_every_record_says_whether_it_was_warm(tmp_path, test_impls):
    r = make_runner(tmp_path, TEST_IMPLS)
    recs = r.run_case(Case("gemv_bf16", GemvShape(1, 64, 128), torch.float32, warm=True))
    r.writer.close()
    assert {x["status"] for x in recs} >= {"ok", "failed-check", "skipped", "error"}
    assert all(x["warm"] is True for x in recs)


def test_reader_can_read_on_past_bad_lines(tmp_path):
    """The device check reads the suite's file past a bad line (noted), so one line cannot cost
    a window's records; every other reader stops at it."""
    from bench.results import ResultsError
    good = {"op": "gemv_bf16", "impl": "x", "shape": {"M": 1}, "status": "ok"}
    f = tmp_path / "r.jsonl"
    f.write_text("\n".join([json.dumps(good), "{not json", json.dumps({**good, "dtype": [1]}),
                            json.dumps({**good, "impl": "y"})]) + "\n")
    with pytest.raises(ResultsError, match=":2: not valid JSON"):
        read_results(f)
    skipped: list[str] = []
    assert [r["impl"] for r in read_results(f, skipped)] == ["x", "y"]
    assert len(skipped) == 2 and ":3: malformed record (dtype" in skipped[1]


def test_reader_refuses_what_is_no_regular_file_and_overlong_lines(tmp_path, monkeypatch):
    """/dev/zero, a FIFO and a folder are refused before a byte is read (reading them never ends,
    blocks, or fails); a line past MAX_LINE is refused after MAX_LINE + 1 characters, or, while
    reading on past bad lines, skipped a bounded chunk at a time."""
    import os
    import bench.results as results
    from bench.results import ResultsError
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, kind in (("/dev/zero", "character device"), (fifo, "FIFO"), (tmp_path, "folder")):
        with pytest.raises(ResultsError, match=f"is a {kind}, not a results file"):
            read_results(path)
    monkeypatch.setattr(results, "MAX_LINE", 1000)
    good = {"op": "gemv_bf16", "impl": "x", "shape": {"M": 1}, "status": "ok"}
    f = tmp_path / "r.jsonl"
    f.write_text(json.dumps(good) + "\n" + "x" * 5000 + "\n" + json.dumps({**good, "impl": "y"})
                 + "\n" + "y" * 1000)  # a last line of exactly MAX_LINE, no newline: not over
    with pytest.raises(ResultsError, match=":2: a line of over 1000 bytes"):
        read_results(f)
    skipped: list[str] = []
    assert [r["impl"] for r in read_results(f, skipped)] == ["x", "y"]
    assert len(skipped) == 2 and ":2: a line of over" in skipped[0] and ":4: not valid JSON" \
        in skipped[1]
    exact = tmp_path / "exact.jsonl"
    pad = 1000 - len(json.dumps({**good, "error": ""}))
    exact.write_text(json.dumps({**good, "error": "e" * pad}) + "\n")  # MAX_LINE and its newline
    assert len(exact.read_text()) == 1001 and read_results(exact)[0]["impl"] == "x"


@pytest.fixture
def rude_impls():
    """Impls that break the runner's contract without raising."""
    names = ["t_mutates", "t_prepare_mutates", "t_none", "t_shape", "t_threads", "t_after"]

    @register_impl("gemv_bf16", "t_mutates", backends=["cpu"], dtypes=["float32"])
    def mutates(x, w):
        y = x @ w.T
        x.mul_(3)  # the right answer, then the case's inputs spoiled for every later impl
        w[0, 0] = float("nan")
        return y

    def spoil_in_prepare(x, w):
        w.mul_(-1)  # "repacked" in place, outside the call the check watches
        return x, w

    @register_impl("gemv_bf16", "t_prepare_mutates", backends=["cpu"], dtypes=["float32"],
                   prepare=spoil_in_prepare)
    def reads_spoiled(x, w):
        return -(x @ w.T)  # right for the weights it was given

    @register_impl("gemv_bf16", "t_none", backends=["cpu"], dtypes=["float32"])
    def none(x, w):
        return None

    @register_impl("gemv_bf16", "t_shape", backends=["cpu"], dtypes=["float32"])
    def shape(x, w):
        return (x @ w.T).reshape(-1)

    @register_impl("gemv_bf16", "t_threads", backends=["cpu"], dtypes=["float32"])
    def threads(x, w, out=None):
        torch.set_num_threads(1)  # process-wide: it would time every later impl on one thread
        torch.set_default_dtype(torch.float64)  # and build the next case's inputs in fp64
        return torch.matmul(x, w.T, out=out)

    @register_impl("gemv_bf16", "t_after", backends=["cpu"], dtypes=["float32"])
    def after(x, w, out=None):
        after.seen = (torch.get_num_threads(), torch.get_default_dtype())
        return torch.matmul(x, w.T, out=out)

    yield after
    for n in names:
        OPS["gemv_bf16"].impls.pop(n, None)


def test_impls_that_break_the_contract_fail_and_leave_the_next_impl_clean(tmp_path, rude_impls,
                                                                         fixed_llc):
    threads = torch.get_num_threads()
    r = make_runner(tmp_path, ["t_mutates", "t_prepare_mutates", "t_none", "t_shape",
                               "t_threads", "t_after"])
    try:
        recs = {x["impl"]: x for x in r.run_case(Case("gemv_bf16", GemvShape(2, 64, 128),
                                                      torch.float32))}
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(torch.float32)
    r.writer.close()
    mut = recs["t_mutates"]
    assert mut["status"] == "failed-check" and mut["correct"] is False
    assert "changed its inputs 0, 1" in mut["error"]
    # its prepare changed the weights: the check counts from before prepare, so it fails and
    # the weights are put back (the next impls pass on them)
    prep = recs["t_prepare_mutates"]
    assert prep["status"] == "failed-check" and "changed its input 1" in prep["error"]
    assert recs["t_none"]["status"] == "failed-check"
    assert "returned NoneType, not a tensor" in recs["t_none"]["error"]
    assert recs["t_shape"]["status"] == "failed-check"
    assert "output shape (128,), the op's is (2, 64)" in recs["t_shape"]["error"]
    assert recs["t_threads"]["status"] == "ok" and recs["t_threads"]["device"]["threads"] == 1
    # the inputs were put back and torch's state restored before the next impl
    assert recs["t_after"]["status"] == "ok" and recs["t_after"]["rel_err"] < 1e-6
    assert rude_impls.seen == (threads, torch.float32)
    assert recs["t_after"]["device"]["threads"] == threads


@pytest.fixture
def sly_impls():
    """Impls whose check passes and whose later calls do not hold to it: the check alone, one
    call on fresh inputs with a poisoned out, cannot see them."""
    names = ["t_spoils_later", "t_first_only", "t_sniffs_poison", "t_first_only_ret"]
    calls = {"spoil": 0, "first": 0, "ret": 0}

    @register_impl("gemv_bf16", "t_spoils_later", backends=["cpu"], dtypes=["float32"])
    def spoils_later(x, w):
        y = x @ w.T
        calls["spoil"] += 1
        if calls["spoil"] > 1:  # the check's call is clean; every timed call scales set i's x
            x.mul_(3)
        return y

    @register_impl("gemv_bf16", "t_first_only", backends=["cpu"], dtypes=["float32"])
    def first_only(x, w, out=None):
        calls["first"] += 1
        if calls["first"] == 1:  # the check's call; the timed ones do no work at all
            torch.matmul(x, w.T, out=out)
        return out

    @register_impl("gemv_bf16", "t_sniffs_poison", backends=["cpu"], dtypes=["float32"])
    def sniffs_poison(x, w, out=None):
        if out.isnan().all():  # only the check poisons its out buffer
            torch.matmul(x, w.T, out=out)
        return out

    @register_impl("gemv_bf16", "t_first_only_ret", backends=["cpu"], dtypes=["float32"])
    def first_only_ret(x, w):
        calls["ret"] += 1
        return x @ w.T if calls["ret"] == 1 else torch.zeros(x.shape[0], w.shape[0])

    yield
    for n in names:
        OPS["gemv_bf16"].impls.pop(n, None)


def test_inputs_changed_after_the_check_fail_that_impl_not_the_next(tmp_path, sly_impls,
                                                                     fixed_llc):
    """Set 0 of the timing is the case's inputs, which the next impl is checked on: an impl that
    spoils them in its warm-up or timing (not in its check's call) fails itself, with the inputs
    put back, so that the next, right impl is not failed in its place (rel err 8 against the
    reference of the inputs as they were)."""
    r = make_runner(tmp_path, ["t_spoils_later", "torch_matmul"])
    recs = {x["impl"]: x for x in r.run_case(Case("gemv_bf16", GemvShape(2, 64, 128),
                                                  torch.float32))}
    r.writer.close()
    assert r._guard is None  # the snapshot is not held while the next case builds its inputs
    spoil = recs["t_spoils_later"]
    assert spoil["status"] == "failed-check" and spoil["correct"] is False
    assert spoil["time_s"] is None and spoil["verdict"] is None
    assert "changed its input 0 after its check" in spoil["error"]
    assert recs["torch_matmul"]["status"] == "ok" and recs["torch_matmul"]["rel_err"] < 1e-6


@pytest.mark.parametrize("name", ["t_first_only", "t_sniffs_poison", "t_first_only_ret"])
def test_an_impl_right_only_in_its_check_is_not_timed_as_right(tmp_path, sly_impls, fixed_llc,
                                                               name):
    """What the timed calls return is checked too: an impl that does the work only on its first
    call, or only into a NaN-poisoned buffer (which tells it the check is on), would otherwise be
    recorded ok with the time of doing nothing ('in cache' at small shapes, where no roof judges
    it; 'harness suspect' at large ones, blaming the harness)."""
    r = make_runner(tmp_path, [name])
    (rec,) = r.run_case(Case("gemv_bf16", GemvShape(2, 64, 128), torch.float32))
    r.writer.close()
    assert rec["status"] == "failed-check" and rec["correct"] is False, rec["error"]
    assert rec["time_s"] is None and rec["verdict"] is None
    assert "after timing (its check had passed" in rec["error"]


@pytest.fixture
def valueless_impls():
    names = ["t_meta", "t_sparse", "t_why"]

    @register_impl("gemv_bf16", "t_meta", backends=["cpu"], dtypes=["float32"])
    def meta(x, w):
        return torch.empty(x.shape[0], w.shape[0], device="meta")

    @register_impl("gemv_bf16", "t_sparse", backends=["cpu"], dtypes=["float32"])
    def sparse(x, w):
        return (x @ w.T).to_sparse()

    @register_impl("gemv_bf16", "t_why", backends=["cpu"], dtypes=["float32"])
    def why(x, w):
        raise NotImplementedError("needs K % 1024 == 0\nsee the docs")

    yield
    for n in names:
        OPS["gemv_bf16"].impls.pop(n, None)


def test_an_output_without_values_fails_its_check_rather_than_skips(tmp_path, valueless_impls):
    """A meta or sparse output has no values to compare: the check's own reading of it would
    raise NotImplementedError, which must not read as the impl's own 'skipped' (not counted by
    --strict) with the dispatcher's message of thousands of characters. A skip's reason, from
    the impl's own NotImplementedError, is one line like every record's error."""
    r = make_runner(tmp_path, ["t_meta", "t_sparse", "t_why"])
    recs = {x["impl"]: x for x in r.run_case(Case("gemv_bf16", GemvShape(2, 64, 128),
                                                  torch.float32))}
    r.writer.close()
    assert recs["t_meta"]["status"] == "failed-check", recs["t_meta"]["error"]
    assert "meta" in recs["t_meta"]["error"]
    assert recs["t_sparse"]["status"] == "failed-check", recs["t_sparse"]["error"][:200]
    assert "sparse" in recs["t_sparse"]["error"]
    assert recs["t_why"]["status"] == "skipped"
    assert recs["t_why"]["error"] == "needs K % 1024 == 0"


@pytest.fixture
def settings_impls():
    names = ["t_settings", "t_sees"]

    @register_impl("gemv_bf16", "t_settings", backends=["cpu"], dtypes=["float32"])
    def settings(x, w, out=None):
        y = torch.matmul(x, w.T, out=out)
        torch.set_default_device("meta")  # every tensor made without a device: no data
        torch.set_float32_matmul_precision("medium")  # fp32 matmuls in bf16 where it can
        torch.use_deterministic_algorithms(True)
        return y

    @register_impl("gemv_bf16", "t_sees", backends=["cpu"], dtypes=["float32"])
    def sees(x, w, out=None):
        sees.seen.append((torch.empty(1).device.type, torch.get_float32_matmul_precision(),
                          torch.are_deterministic_algorithms_enabled()))
        return torch.matmul(x, w.T, out=out)

    sees.seen = []
    yield sees
    for n in names:
        OPS["gemv_bf16"].impls.pop(n, None)


def test_torch_settings_an_impl_changes_are_put_back(tmp_path, settings_impls, fixed_llc):
    """The default device, fp32 matmul precision and deterministic mode are process-wide like
    the thread count: left as an impl set them, the next impl would run under them and the next
    case's inputs would be built on the meta device ('Cannot copy out of meta tensor' for every
    impl of every later case in the worker)."""
    from bench.runner import _default_device
    before = (_default_device(), torch.get_float32_matmul_precision(),
              torch.are_deterministic_algorithms_enabled())
    r = make_runner(tmp_path, ["t_settings", "t_sees"])
    try:
        recs = r.run_case(Case("gemv_bf16", GemvShape(2, 64, 128), torch.float32))
        recs += r.run_case(Case("gemv_bf16", GemvShape(1, 32, 64), torch.float32))
    finally:
        torch.set_default_device(before[0])
        torch.set_float32_matmul_precision(before[1])
        torch.use_deterministic_algorithms(before[2])
    r.writer.close()
    assert [x["status"] for x in recs] == ["ok"] * 4, [x["error"] for x in recs]
    assert set(settings_impls.seen) == {(torch.empty(0).device.type, before[1], before[2])}


def test_an_impls_huge_error_leaves_the_results_file_readable(tmp_path):
    """An impl's error is one line, but its first line may be megabytes (a tensor or IR dumped
    into the message): whole in the record's error and traceback, it would make a line past
    read_results' limit, and show would refuse the whole file, every other case's record with
    it."""
    @register_impl("gemv_bf16", "t_huge_error", backends=["cpu"], dtypes=["float32"])
    def huge_error(x, w):
        raise RuntimeError("x" * 2_000_000)

    try:
        r = make_runner(tmp_path, ["t_huge_error"])
        (rec,) = r.run_case(Case("gemv_bf16", GemvShape(1, 32, 64), torch.float32))
        r.writer.close()
    finally:
        OPS["gemv_bf16"].impls.pop("t_huge_error", None)
    assert rec["status"] == "error" and rec["error"].startswith("RuntimeError: xxx")
    assert len(rec["error"]) < 1100 and "characters]" in rec["error"]
    (back,) = read_results(r.writer.path)
    assert back["status"] == "error" and back["error"] == rec["error"]


@pytest.mark.parametrize("raise_on_call", [1, 2, 3],
                         ids=["in-its-check", "in-its-timing", "on-another-set"])
def test_an_impl_that_changes_its_inputs_then_raises_leaves_them_put_back(tmp_path, fixed_llc,
                                                                          raise_on_call):
    """An impl that spoils its inputs and then raises (in its check, or in a timed call on set
    0 or on another rotated set) has them put back too: the next impl is checked on set 0 and
    timed on the others."""
    calls = []

    @register_impl("gemv_bf16", "t_spoils_raises", backends=["cpu"], dtypes=["float32"])
    def spoils_raises(x, w):
        calls.append(1)
        y = x @ w.T
        if len(calls) >= raise_on_call:
            w.mul_(-1)
            raise RuntimeError("gave up")
        return y

    try:
        recs = records_of(tmp_path, ["t_spoils_raises", "torch_matmul"])
    finally:
        OPS["gemv_bf16"].impls.pop("t_spoils_raises", None)
    bad = recs["t_spoils_raises"]
    assert bad["status"] == "error" and bad["error"].startswith("RuntimeError: gave up")
    assert "changed its input 1" in bad["error"]
    assert recs["torch_matmul"]["status"] == "ok" and recs["torch_matmul"]["rel_err"] < 1e-6


@pytest.mark.parametrize("batched", [False, True], ids=["in-place", "batched"])
def test_every_timing_set_is_compared_and_put_back_as_its_own(batched):
    """After the timing each set is compared with the case's snapshot, one word at a time on
    the CPU, a stacked batch at a time off it (one wait for the device in all): a changed set is
    put back in its own buffer, a NaN left where it was is no change (the KV pool's unused
    slots hold NaN), and a set the impl resized or gave another dtype counts as changed."""
    b = get_backend("cpu")
    x = torch.randn(3, 5)  # 60 bytes: words of 4, not 8
    w = torch.randn(4, 8)
    w[0, 0] = float("nan")
    sets = [(x, w)] + [(x.clone(), w.clone()) for _ in range(4)]
    snap = b.snapshot(sets[0])
    sets[2][1][1, 1] += 1
    sets[3][0].view(-1).view(torch.int32)[7] ^= 1  # one bit of one element
    assert b.restore_changed_sets(sets, snap, batched=batched) == [0, 1]
    for s in sets:
        assert torch.equal(s[0], x) and torch.equal(s[1].nan_to_num(), w.nan_to_num())
    assert len({s[k].data_ptr() for s in sets for k in (0, 1)}) == 10
    assert b.restore_changed_sets(sets, snap, batched=batched) == []
    sets[4][0].resize_(5, 3)  # the same bytes in another shape
    sets[3][1].data = sets[3][1].data.half()  # another dtype
    assert b.restore_changed_sets(sets[3:], snap, batched=batched) == [0, 1]
    assert sets[4][0].shape == x.shape and torch.equal(sets[4][0], x)
    assert sets[3][1].dtype == w.dtype and torch.equal(sets[3][1].nan_to_num(), w.nan_to_num())


class _ReplayingAllocator:
    """The runner's torch, but its out buffers (torch.empty / torch.full) come from one arena
    handed out again from its start for each impl: what CUDA's caching allocator does for a
    sequence of allocations that repeats after the last impl's blocks were freed (device memory
    holds no free-list words, so a freed block keeps the values last written to it)."""

    def __init__(self):
        self.arena = torch.zeros(1 << 20, dtype=torch.uint8)
        self.off = 0

    def reset(self, _phase=None):
        self.off = 0

    def empty(self, shape, dtype=None, device=None):
        n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        t = self.arena[self.off:self.off + n].view(dtype).view(shape)
        self.off += -(-n // 512) * 512
        return t

    def full(self, shape, value, dtype=None, device=None):
        return self.empty(shape, dtype=dtype, device=device).fill_(value)

    def __getattr__(self, name):
        return getattr(torch, name)


@pytest.mark.parametrize("name", ["t_first_only", "t_sniffs_poison"])
def test_a_timed_out_buffer_holding_the_last_impls_answer_does_not_pass(tmp_path, sly_impls,
                                                                       monkeypatch, name):
    """On CUDA (one input set, so one timed buffer) the caching allocator can give an impl the
    block the impl before it left its answer in. The timed buffers start with a wrong finite
    value, so an impl that does the work only on its check's call, or only into a NaN-poisoned
    buffer, fails the after-timing check instead of being timed doing nothing."""
    import bench.runner as runner_mod
    alloc = _ReplayingAllocator()
    monkeypatch.setattr(runner_mod, "torch", alloc)
    r = make_runner(tmp_path, ["torch_matmul", name])  # a right impl first (registered first)
    r.on_start = alloc.reset
    # warm: one input set, as every CUDA case has (the L2 is flushed instead of rotated past)
    recs = {x["impl"]: x for x in r.run_case(Case("gemv_bf16", GemvShape(2, 64, 128),
                                                  torch.float32, warm=True))}
    r.writer.close()
    assert recs["torch_matmul"]["status"] == "ok"
    assert recs[name]["status"] == "failed-check", (recs[name]["status"], recs[name]["time_s"])


def test_the_after_timing_comparison_holds_no_whole_copy_of_an_input(tmp_path, monkeypatch):
    """Off the CPU sets are compared stacked, but one big set (CUDA's: always one) is compared
    in place: stacked it would be a whole copy of the input beside the snapshot, three copies of
    a case's weight where the check needs two. A suite case takes up to 40% of the device
    (FIT_FRACTION): its snapshot fits, a stack would not, and a right impl, checked and timed,
    would be recorded 'error' for the harness's own out of memory. The fake device here has room
    for the inputs and one copy of them, as such a case."""
    from backends.cpu import CPUBackend
    stack = torch.stack

    def device_stack(tensors, *a, **k):
        if sum(t.nbytes for t in tensors) >= 64 * 128 * 4:  # the case's weight: no room left
            raise torch.OutOfMemoryError("CUDA out of memory (fake: inputs + snapshot fill it)")
        return stack(tensors, *a, **k)

    batched = CPUBackend.restore_changed_sets
    monkeypatch.setattr(CPUBackend, "restore_changed_sets",
                        lambda self, sets, snap: batched(self, sets, snap, batched=True))
    monkeypatch.setattr(torch, "stack", device_stack)
    r = make_runner(tmp_path, ["torch_matmul"])
    (rec,) = r.run_case(Case("gemv_bf16", GemvShape(2, 64, 128), torch.float32, warm=True))
    r.writer.close()
    assert rec["status"] == "ok", rec["error"]


@pytest.mark.parametrize("batched", [False, True], ids=["in-place", "batched"])
def test_an_input_that_is_a_view_at_an_odd_offset_is_not_a_change(batched):
    """An input that is a view into a larger allocation (a plugin op's make_inputs slicing one
    buffer) sits at an offset its snapshot and clones (offset 0) do not: compared as words of
    another size it would differ from them, and every impl would have 'changed its input'."""
    b = get_backend("cpu")
    x = torch.randn(65)[1:]  # contiguous, 4 bytes into its storage
    w = torch.randn(8, 64)
    snap = b.snapshot((x, w))
    assert b.restore_changed((x, w), snap) == []
    sets = [(x, w), (x.clone(), w.clone())]
    assert b.restore_changed_sets(sets, snap, batched=batched) == []


def test_an_impl_using_torchs_new_tf32_api_is_recorded_and_the_next_runs(tmp_path, fixed_llc):
    """torch >= 2.9's TF32 setting (torch.backends.cuda.matmul.fp32_precision, what torch's own
    warning tells users to write) makes every read of the legacy flags (allow_tf32,
    get_float32_matmul_precision) raise 'mix of the legacy and new APIs': the settings are put
    back newest API first and a getter that raises is skipped, so the impl gets its record and
    the next impl runs (in a worker an escaping error would kill it: 'crashed')."""
    @register_impl("gemv_bf16", "t_new_tf32", backends=["cpu"], dtypes=["float32"])
    def new_tf32(x, w, out=None):
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        return torch.matmul(x, w.T, out=out)

    before = torch.backends.cuda.matmul.fp32_precision
    try:
        recs = records_of(tmp_path, ["t_new_tf32", "torch_matmul"])
    finally:
        torch.backends.cuda.matmul.fp32_precision = before
        OPS["gemv_bf16"].impls.pop("t_new_tf32", None)
    assert recs["t_new_tf32"]["status"] == "ok"
    assert recs["torch_matmul"]["status"] == "ok"


def test_putting_the_default_device_back_leaves_no_device_mode_on(tmp_path, settings_impls,
                                                                  fixed_llc):
    """torch.set_default_device(cpu) is not 'no default device': it pushes a DeviceContext, a
    TorchFunctionMode that every later torch call in the worker would go through (about +0.8 us
    an op on a CPU: in the timings of every later impl of the run). The way back from an impl's
    set_default_device is set_default_device(None) where none was set."""
    from torch.overrides import _get_current_function_mode_stack
    torch.set_default_device(None)  # none set, as in a worker (an earlier test may leave one)
    before = list(_get_current_function_mode_stack())
    r = make_runner(tmp_path, ["t_settings"])
    try:
        r.run_case(Case("gemv_bf16", GemvShape(2, 64, 128), torch.float32))
        after = list(_get_current_function_mode_stack())
    finally:
        torch.set_default_device(None)
        torch.set_float32_matmul_precision("highest")
        torch.use_deterministic_algorithms(False)
    r.writer.close()
    assert after == before, after


@pytest.fixture
def built_impls():
    """Compiled impls whose library says how it was built: with OpenMP, and without (one thread)."""
    builds = {"t_omp": {"compiler": "gcc 12.2.0", "flags": "-O3 -fopenmp", "openmp": True},
              "t_no_omp": {"compiler": "Apple LLVM 15.0.0", "flags": "-O3", "openmp": False}}
    for name, info in builds.items():
        register_impl("gemv_bf16", name, backends=["cpu"], dtypes=["float32"], kind="compiled",
                      build_info=lambda info=info: info)(
            lambda x, w, out=None: torch.matmul(x, w.T, out=out))
    yield builds
    for name in builds:
        OPS["gemv_bf16"].impls.pop(name, None)


def test_a_compiled_impl_records_its_build_and_one_thread_without_openmp(tmp_path, built_impls,
                                                                         fixed_llc):
    threads = torch.get_num_threads()
    recs = records_of(tmp_path, ["t_omp", "t_no_omp", "torch_matmul"])
    assert recs["t_omp"]["status"] == "ok" and recs["t_omp"]["c_build"] == built_impls["t_omp"]
    assert recs["t_omp"]["device"]["threads"] == threads
    no = recs["t_no_omp"]
    assert no["status"] == "ok" and no["c_build"] == built_impls["t_no_omp"]
    assert no["device"]["threads"] == 1  # what its kernels ran on, whatever torch's count
    assert "c_build" not in recs["torch_matmul"]
    from bench.notes import notes
    (note,) = [n for n in notes(list(recs.values())) if "one thread" in n]
    assert note.startswith("gemv_bf16/t_no_omp ran on one thread: Apple LLVM 15.0.0 could not "
                           "build with -fopenmp")
