"""The one-call GPU device check: the optional peers installed from the checkout, CUDA tests, the
GPU suite, an L2-flush comparison, an Nsight Compute check of the byte model, all time-boxed to fit
one call on a lent GPU, everything written under $OUT (else results/device-check-<timestamp>/) and
a short summary printed last. docs/device-check.md says what each step does and why.

    bench/device_check.sh              # on the GPU machine: at most 7 minutes
    bench/device_check.sh --dry-run    # the same steps on the CPU with tiny shapes (tested in CI)

Steps, each a child process (or a few) in its own process group, killed at its time box:
  peers    wheels and .tar.xz trees in .whl/ installed into a temporary folder on the children's
           PYTHONPATH; which peers import. Never fails the check.
  env      versions, the device, nvidia-smi, ncu, which optional packages are present; ncu
           probed on one launch in the background (no counters: the ncu box goes to the suite)
  pytest   `pytest -m "cuda and not slow"` but the every-config tests, one config per Triton
           kernel (DECODEWALL_AUTOTUNE=0), as a few pytest processes at once (their compiles on
           cores of their own), test names streamed to the log and the console
  configs  the every-config tests alone (each GEMV config compiled and checked once), the same
           way: an empty Triton cache costs this box, not the other tests'
  (warm)   beside pytest and configs, in the background: the suite's Triton kernels compiled at
           its own shapes on the other cores (bench/gpucheck/warm.py), so that the suite's tuner
           times configs instead of compiling them; stopped before anything is timed
  roof     `decodewall roof --json` (only with --with roof: the suite measures its own roof)
  flush    `python -m bench.gpucheck.flushcmp --json`: one read-bound GEMV under each L2 flush mode
           (only with --with flush)
  suite    `decodewall run --suite gpu-check`: results are flushed per case, so a case cut off by
           the time box loses only itself; the summary says how many planned cases finished
  ncu      `ncu` on one launch of each of our Triton kernels at a DRAM-sized shape: DRAM bytes
           read + written vs the op's bytes_moved; right after the INT4 GEMV's launches at
           M = 1 and 16 and the long-context attention's, the why pass on each (ncu's
           occupancy, scheduler and warp-state sections)
The summary (summary.txt, summary.json) is rewritten as each step starts and ends, so a check cut
from outside still leaves one; SIGTERM or Ctrl-C end the running step and write the final one.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench.errors import OneLineParser, describe_exit

from .proc import (FAIL_LINE, KILL_GRACE_S, REPO, kill_group, find_ncu, run_proc, run_procs,
                   usable_cores)

# Nominal seconds per step, in the order they run. The suite is elastic: it gets whatever the
# total leaves after the steps before it and the nominal boxes of the steps after it; its figure
# here is what it gets when every other step takes its whole box. On the H200 (results/h200/,
# empty Triton cache, 2026-12-04): 95 cuda tests and the 15 every-config ones (~130 compiles);
# 8 pytest processes got through 52 of the 95 in 60 s and 8 through the 15 in 40 s; the suite,
# with GemLite tuning itself for 5-22 s a GEMV case and attention ~20 s a case, finished 10-11 of
# its 39 cases in 167-202 s. Its goal cases come first, so a short box cuts the least important
# ones.
BOXES = {"peers": 30, "env": 30, "pytest": 90, "configs": 50, "roof": 20, "flush": 25,
         "suite": 83, "ncu": 80}
STEPS = tuple(BOXES)
# Steps that run only when asked for (--with or --only): the suite measures the roof its % of roof
# are taken against (every record holds it), so the roof step would spend its box on a second
# reading; the flush comparison is a one-off whose result docs/gpu-results.md holds. Their boxes
# go to the suite.
OFF_BY_DEFAULT = ("roof", "flush")
CASE_TIMEOUT_S = 60  # the suite's --case-timeout: one hung impl costs a minute, not the box
# (the slowest impl seen on the H200 took 22 s, GemLite tuning itself at 57344 x 8192)
ENV_PROBE_S = 20  # the least the env step's Python probe gets (it took 4-6 s on the H200)
NCU_PROBE_S = 20  # the background ncu probe's time box (torch import, one launch profiled)
# The whole check, summary included: a step cut at its box takes up to 2 x KILL_GRACE_S more to
# die, and the summary a second; RESERVE_S keeps that inside TOTAL_S.
TOTAL_S = 420
RESERVE_S = 2 * KILL_GRACE_S + 2
NCU_TARGET_S = 30  # one profiled process: torch import, inputs, autotune, the profiled launch
WARM_MAX = 8  # background compile processes (warm.py) at most, on the cores pytest leaves
NEVER_FAIL = ("peers",)  # a step whose problems are findings, never a failed check
EVERY_CONFIG = "every_config"  # the -k expression of the every-config tests, and where they are
EVERY_CONFIG_DIR = "tests/kernels/gemv"  # (collecting one folder saves seconds of the box)
PEER_TESTS = "test_peers_"  # the -k keyword of the peers' test files (tests/kernels/*/test_peers_*)


@dataclasses.dataclass
class Step:
    name: str
    status: str = "pending"  # running | ok | warn | failed | timeout | skipped | pending
    seconds: float = 0.0
    detail: str = ""


class Interrupted(Exception):
    """SIGTERM (or Ctrl-C) while the check runs: the running step ends, the summary is written."""


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = args.dry_run
        self.backend = "cpu" if self.dry else "cuda"
        default = REPO / "results" / f"device-check-{time.strftime('%Y%m%d-%H%M%S')}"
        self.out = Path(args.out or os.environ.get("OUT") or default).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = open(self.out / "steps.log", "a", encoding="utf-8")
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.time_limit - RESERVE_S
        self.steps: dict[str, Step] = {s: Step(s) for s in STEPS}
        self.boxes = dict(BOXES)
        for item in args.limit or []:
            name, _, sec = item.partition("=")
            self.boxes[name] = float(sec)
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO)] + ([self.env["PYTHONPATH"]] if self.env.get("PYTHONPATH") else []))
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        self.env.setdefault("COLUMNS", "200")
        self.py = sys.executable
        self.info: dict[str, Any] = {}
        self.backend_usable: bool | None = None  # the env probe's answer; None: not known
        self.roof: dict[str, Any] | None = None
        self.records: list[dict[str, Any]] = []
        self.jsonl: Path | None = None
        self.planned: list = []
        self.notes: list[str] = []
        self.peers: dict[str, Any] = {}
        self.tests: dict[str, dict[str, Any]] = {}  # pytest / configs: what the -v lines said
        self.flush: dict[str, Any] = {}
        self.ncu: list[dict[str, Any]] = []
        self.ncu_why: list[dict[str, Any]] = []  # occupancy, issue rate, stalls (_why)
        self.ncu_path: str | None = None
        self.ncu_probe: dict[str, Any] | None = None  # the background probe (start_ncu_probe)
        self.ncu_refused: str | None = None  # ncu's line refusing the counters on this machine
        self.peer_dir: Path | None = None
        self.current: Step | None = None
        self.warm_procs: list[tuple[subprocess.Popen, Path]] = []  # start_warm, finish_warm
        self.warm_t0 = 0.0
        self.warm: dict[str, Any] | None = None  # what the background compiles did

    # -- helpers ----------------------------------------------------------------------------
    def say(self, msg: str) -> None:
        print(msg, flush=True)
        self.log.write(f"# {msg}\n")
        self.log.flush()

    def box(self, name: str) -> float:
        left = self.deadline - time.monotonic()
        if name == "suite":  # elastic: what the later steps' nominal boxes leave
            later = sum(self.boxes[s] for s in STEPS[STEPS.index(name) + 1:]
                        if self.wanted(s) and not (s == "ncu" and self.ncu_unusable()))
            return max(0.0, max(min(left, 20.0), left - later))
        return max(0.0, min(self.boxes[name], left))

    def wanted(self, name: str) -> bool:
        if self.args.only:
            return name in self.args.only
        if name in (self.args.skip or []):
            return False
        return name not in OFF_BY_DEFAULT or name in (getattr(self.args, "with_", None) or [])

    def ncu_unusable(self) -> str | None:
        """Why the ncu step can measure nothing here (no ncu, or the probe saw it refuse the
        counters), else None: only then is its box held back from the suite."""
        if self.dry:
            return None
        if not self.ncu_path:
            return "ncu not found (PATH, /usr/local/cuda*/bin, /opt/nvidia/nsight-compute)"
        if self.ncu_refused:
            return f"ncu cannot read the hardware counters here: {self.ncu_refused}"
        return None

    def begin(self, name: str) -> Step | None:
        step = self.steps[name]
        if not self.wanted(name):
            step.status, step.detail = "skipped", ("not run by default (add it with --with "
                                                   f"{name})" if name in OFF_BY_DEFAULT and
                                                   not self.args.only else "not asked for")
            return None
        if self.box(name) < 3:
            step.status, step.detail = "timeout", "no time left in the total time box"
            return None
        self.log.write(f"===== {name} =====\n")
        self.say(f"[{time.monotonic() - self.t0:5.0f} s] {name} (time box {self.box(name):.0f} s)")
        step.status, self.current = "running", step
        self.write_summary(final=False)
        return step

    def end(self, step: Step) -> None:
        if step.name in NEVER_FAIL and step.status in ("failed", "timeout"):
            step.detail = f"{step.status}: {step.detail}"
            step.status = "warn"
        self.current = None
        self.write_summary(final=False)

    def dw(self, *argv: str) -> list[str]:
        return [self.py, "-m", "bench.cli", *argv]

    def _capture(self, cmd: list[str], box: float, env: dict[str, str] | None = None
                 ) -> tuple[int | None, float, str]:
        """run_proc with stdout captured (and copied into the log); stderr to the log."""
        fd, name = tempfile.mkstemp(prefix="dwcheck-")
        os.close(fd)
        tmp = Path(name)
        try:
            rc, dt = run_proc(cmd, box, self.log, env or self.env, stdout_path=tmp)
            text = tmp.read_text(encoding="utf-8", errors="replace")
        finally:
            tmp.unlink(missing_ok=True)
        self.log.write(text + ("" if text.endswith("\n") else "\n"))
        self.log.flush()
        return rc, dt, text

    # -- steps ------------------------------------------------------------------------------
    def step_peers(self) -> None:
        """Install the peers the checkout carries (never fails the check: the summary says what
        is missing, and the suite records each peer's cases as skipped with the reason)."""
        step = self.begin("peers")
        if step is None:
            return
        from .peers import PEER_MODULES, describe, peer_files, top_packages
        t0 = time.monotonic()
        end = t0 + self.box("peers")
        folder = Path(self.args.wheels).resolve() if self.args.wheels else REPO / ".whl"
        wheels, archives = peer_files(folder)
        self.peers = {"folder": str(folder), "wheels": [p.name for p in wheels],
                      "archives": [p.name for p in archives], "target": None, "installed": [],
                      "failed": {}}
        problems: list[str] = []
        if wheels or archives:
            self.peer_dir = Path(tempfile.mkdtemp(prefix="dwcheck-peers-"))
            target = self.peers["target"] = str(self.peer_dir)
            for whl in wheels:  # one pip a wheel: a wheel this Python cannot take fails alone
                rc, _, text = self._capture(
                    [self.py, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                     "--no-compile", "--no-cache-dir", "--disable-pip-version-check",
                     "--target", target, str(whl)], max(1.0, end - time.monotonic()))
                self._installed(whl.name, rc, problems)
            if archives:
                rc, _, text = self._capture(
                    [self.py, "-m", "bench.gpucheck.peers", "extract", "--into", target,
                     *map(str, archives)], max(1.0, end - time.monotonic()))
                done = {ln.split(":", 1)[0] for ln in text.splitlines() if ":" in ln}
                for a in archives:
                    self._installed(a.name, 0 if a.name in done else None if rc is None else rc or 1,
                                    problems)
            if any(self.peer_dir.iterdir()):
                self.env["PYTHONPATH"] = os.pathsep.join(
                    [str(REPO), target] + [p for p in self.env["PYTHONPATH"].split(os.pathsep)
                                           if p and p != str(REPO)])
        else:
            problems.append(f"no wheels or .tar.xz in {folder}")
        installed = top_packages(self.peer_dir) if self.peer_dir else []
        names = list(dict.fromkeys([*PEER_MODULES, *installed]))
        rc, _, text = self._capture([self.py, "-m", "bench.gpucheck.peers", "probe", *names],
                                    max(1.0, end - time.monotonic()))
        try:
            self.peers["imports"] = json.loads(text.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            self.peers["imports"] = {}
            problems.append("the import probe " + ("ran out of time" if rc is None else
                                                   f"gave no result (exit {rc})"))
        step.seconds = time.monotonic() - t0
        imports = self.peers["imports"]
        missing = [m for m in PEER_MODULES if not imports.get(m, {}).get("ok")]
        if missing:
            problems.append(f"{', '.join(missing)} not importable: their rows will be skipped")
        parts = []
        if self.peers["installed"]:
            parts.append(f"installed {', '.join(self.peers['installed'])}")
        parts += problems
        if imports:
            parts.append(describe(imports))
        step.detail = "; ".join(parts)
        step.status = "warn" if problems else "ok"

    def _installed(self, name: str, rc: int | None, problems: list[str]) -> None:
        if rc == 0:
            self.peers["installed"].append(name)
        else:
            why = "time box reached" if rc is None else f"exit {rc}, see steps.log"
            self.peers["failed"][name] = why
            problems.append(f"{name} not installed ({why})")

    def step_env(self) -> None:
        step = self.begin("env")
        if step is None:
            return
        t0 = time.monotonic()
        end = t0 + self.box("env")
        # nvidia-smi and `ncu --version` take a second or two; the Python probe (torch and the
        # device initialised) keeps at least ENV_PROBE_S of its own, whatever they took.
        if shutil.which("nvidia-smi"):
            run_proc(["nvidia-smi", "--query-gpu=name,memory.total,clocks.sm,clocks.mem,"
                      "clocks.max.sm,clocks.max.mem,power.draw,power.limit,temperature.gpu",
                      "--format=csv"], max(1.0, min(8.0, end - time.monotonic())), self.log,
                     self.env)
        self.ncu_path = None if self.dry else find_ncu()
        if self.ncu_path:
            run_proc([self.ncu_path, "--version"], max(1.0, min(8.0, end - time.monotonic())),
                     self.log, self.env)
        rc, _, text = self._capture([self.py, "-m", "bench.gpucheck.env_probe", self.backend],
                                    min(max(ENV_PROBE_S, end - time.monotonic()),
                                        max(1.0, self.deadline - time.monotonic())))
        try:
            self.info = json.loads(text.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            self.info = {}
        step.seconds = time.monotonic() - t0
        if rc is None:
            step.status = "timeout"
            step.detail = ("the probe (torch, the device) did not answer in its time box; the "
                           "steps after it run, each in its own box")
            return
        if not self.info:
            step.status, step.detail = "failed", "could not import torch / the project (see steps.log)"
            self.backend_usable = False
            return
        self.backend_usable = bool(self.info.get("backend_ok"))
        if self.ncu_path and self.info.get("backend_ok"):
            try:
                self.start_ncu_probe()
            except Exception as e:  # the check's own error: no probe, so the ncu step is skipped
                self.log.write(traceback.format_exc())
                self.notes.append(f"ncu probe not started ({type(e).__name__}: {e}): ncu is not "
                                  "used")
                self.ncu_path = None
        missing = [m for m in ("rich", "numpy", "pytest") if not self.info.get(m)]
        dev = self.info.get("device") or {}
        step.detail = (f"torch {self.info.get('torch_version')}, triton "
                       f"{self.info.get('triton_version', 'missing')}, "
                       f"{dev.get('name', 'no device')}, "
                       f"ncu {'at ' + self.ncu_path if self.ncu_path else 'not used' if self.dry else 'not found'}")
        if not self.info.get("backend_ok"):
            step.status = "failed"
            step.detail += f"; backend {self.backend} unavailable: {self.info.get('backend_why')}" \
                           " (no GPU here? use --dry-run)"
        elif missing:
            step.status = "warn"
            step.detail += (f"; missing Python packages {', '.join(missing)}: carry their wheels "
                            "(the device tool README, Notes) or the steps that need them fail")
        else:
            step.status = "ok"

    def start_ncu_probe(self) -> None:
        """Profile one tiny launch with ncu in the background (it runs beside the test steps): on
        a machine whose ncu cannot read the counters, the ncu step's box goes to the suite."""
        from .ncu import probe_command
        fd, name = tempfile.mkstemp(prefix="dwcheck-ncuprobe-")
        cmd = probe_command(self.ncu_path, self.py)
        self.log.write(f"$ {' '.join(cmd)}   [in the background, time box {NCU_PROBE_S} s]\n")
        self.log.flush()
        with os.fdopen(fd, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                    cwd=REPO, start_new_session=True)
        self.ncu_probe = {"proc": proc, "path": Path(name), "t0": time.monotonic(),
                          "verdict": None, "why": None}

    def finish_ncu_probe(self) -> None:
        """The probe's verdict (waiting for it up to its time box): "refused" sets ncu_refused;
        "unknown" (cut, no reading) leaves the ncu step as it was."""
        pr = self.ncu_probe
        if pr is None or pr["verdict"] is not None:
            return
        from .ncu import probe_verdict
        proc = pr["proc"]
        try:
            rc = proc.wait(timeout=max(0.1, pr["t0"] + NCU_PROBE_S - time.monotonic()))
        except subprocess.TimeoutExpired:
            rc = None
            kill_group(proc, 1.0)
        text = pr["path"].read_text(encoding="utf-8", errors="replace")
        pr["path"].unlink(missing_ok=True)
        pr["verdict"], pr["why"] = probe_verdict(rc, text)
        self.log.write(f"----- ncu probe (exit {rc if rc is not None else 'timeout'}, "
                       f"{time.monotonic() - pr['t0']:.1f} s): {pr['verdict']}\n{text}\n")
        self.log.flush()
        if pr["verdict"] == "refused":
            self.ncu_refused = pr["why"]
        self.info["ncu_probe"] = {"verdict": pr["verdict"], "why": pr["why"]}

    def start_warm(self) -> None:
        """Start the background compiles (bench/gpucheck/warm.py) beside the test steps: the
        suite's planned cases shared among warm_shards() processes, each compiling its cases'
        Triton kernels into Triton's on-disk cache and launching none of them."""
        if self.args.no_warm or not (self.wanted("suite") and
                                     (self.wanted("pytest") or self.wanted("configs"))):
            return
        n = warm_shards()
        self.warm_t0 = time.monotonic()
        for i in range(n):
            cmd = [self.py, "-m", "bench.gpucheck.warm", "--shard", f"{i}/{n}", "--backend",
                   self.backend, "--suite", self.args.suite]
            fd, name = tempfile.mkstemp(prefix="dwcheck-warm-")
            self.log.write(f"$ {' '.join(cmd)}   [in the background until the configs step ends]\n")
            with os.fdopen(fd, "w") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                        cwd=REPO, start_new_session=True)
            self.warm_procs.append((proc, Path(name)))
        self.log.flush()

    def step_configs(self) -> None:
        """The every-config tests, then the background compiles stopped, whatever the tests'
        step did: no compile may run beside a timing."""
        try:
            self.step_pytest("configs")
        finally:
            self.finish_warm()

    def finish_warm(self) -> None:
        """Stop the background compiles before any step times a kernel (those still compiling
        are killed: what they compiled stays in the cache) and say what they did."""
        if not self.warm_procs:
            return
        texts, cut, ended = [], 0, []
        for proc, path in self.warm_procs:
            running = proc.poll() is None
            if running:
                cut += 1
                kill_group(proc, 1.0)
            text = path.read_text(encoding="utf-8", errors="replace")
            texts.append(text)
            path.unlink(missing_ok=True)
            if not running and " done: " not in text:  # it ended on an error of its own
                last = (text.strip().splitlines() or ["no output"])[-1].strip()
                ended.append(f"{describe_exit(proc.returncode)}: {last}"[:200])
        n, seconds = len(self.warm_procs), time.monotonic() - self.warm_t0
        self.warm_procs = []
        self.log.write(f"----- warm ({n} processes, {seconds:.0f} s, {cut} stopped while "
                       "compiling)\n" + "".join(texts) + "\n")
        self.log.flush()
        self.warm = warm_report(texts, cut, seconds, ended)

    def step_pytest(self, name: str) -> None:
        """`pytest` runs the cuda tests but the every-config ones, `configs` those alone, each
        as pytest_shards() processes at once (`--shard I/N`): their Triton compiles take most of
        the time with an empty cache, and each process compiles on a core of its own. -v streams
        each test's name as it starts and its outcome as it ends, to the log and the console
        under its shard's tag, so a cut run still says what passed and what was running."""
        step = self.begin(name)
        if step is None:
            return
        # The peers' own tests stay out: the suite checks each peer against our reference on the
        # goal shapes, and GemLite tunes itself for 5-22 s a case, ahead of our kernels' tests.
        sel = ([EVERY_CONFIG, EVERY_CONFIG_DIR] if name == "configs"
               else [f"not {EVERY_CONFIG} and not {PEER_TESTS}"])
        # --continue-on-collection-errors: a test file that fails to import (an API this
        # machine's torch or Triton lacks) costs its own tests, not every shard's whole run
        cmd = [self.py, "-m", "pytest", "-m", "cuda and not slow", "-k", *sel, "-v", "--tb=line",
               "-rfE", "-p", "no:cacheprovider", "--color=no", "--continue-on-collection-errors",
               "-p", "bench.gpucheck.pytest_shard"]
        # One config per Triton kernel (DECODEWALL_AUTOTUNE=0): tuning every test shape would
        # compile every config again and again; the every-config tests check them all once.
        # On the CPU (dry run) every cuda test is collected and skipped: the same commands.
        env = {**self.env, "DECODEWALL_AUTOTUNE": "0"}
        n = pytest_shards()
        rcs, step.seconds, outs = run_procs([cmd + ["--shard", f"{i}/{n}"] for i in range(n)],
                                            self.box(name), self.log, env,
                                            [f"{name} {i + 1}/{n}" for i in range(n)])
        prog = merge_progress([pytest_progress(lines) for lines in outs])
        self.tests[name] = prog
        counts = ", ".join(f"{k} {w.lower()}" for w, k in prog["counts"].items() if k) or "no test ran"
        failed_rcs = [rc for rc in rcs if rc not in (None, 0, 5)]  # 5: a shard selected nothing
        if None in rcs:
            where = (f"while running {', '.join(prog['running'])}" if prog["running"] else
                     f"after {prog['last']}" if prog["last"] else "before any test started")
            step.status, step.detail = "timeout", f"cut at the time box {where} ({counts} before it)"
        elif failed_rcs:
            step.status, step.detail = "failed", f"exit {failed_rcs[0]}: {counts}"
        elif 0 not in rcs:
            step.status, step.detail = "warn", "no tests selected"
        else:
            step.status, step.detail = "ok", counts
            if self.dry and not prog["counts"].get("PASSED"):
                step.detail += " (dry run: no GPU, every cuda test skipped)"
        step.detail += f" ({n} pytest processes at once)"
        if prog["failed"]:
            shown = [t + (f" ({prog['reasons'][t]})" if t in prog["reasons"] else "")
                     for t in prog["failed"][:6]]
            more = len(prog["failed"]) - len(shown)
            step.detail += f"; failed: {', '.join(shown)}" + (f" and {more} more" if more else "")
        if prog["last"] and None not in rcs:
            step.detail += f"; last test: {prog['last']}"

    def step_roof(self) -> None:
        step = self.begin("roof")
        if step is None:
            return
        path = self.out / "roof.json"
        rc, step.seconds = run_proc(self.dw("roof", "--backend", self.backend, "--budget", "quick",
                                            "--json") + self._chip(), self.box("roof"), self.log,
                                    self.env, stdout_path=path)
        try:
            self.roof = json.loads(path.read_text(encoding="utf-8").strip().splitlines()[-1])
        except (OSError, json.JSONDecodeError, IndexError):
            self.roof = None
        if rc is None:
            step.status, step.detail = "timeout", "cut at the time box"
        elif rc != 0 or self.roof is None:
            step.status, step.detail = "failed", f"exit {rc} (see steps.log)"
        else:
            ds = self.roof.get("datasheet_gbps")
            step.status = "ok"
            step.detail = (f"copy {self.roof['copy_gbps']:.0f} GB/s, read {self.roof['read_gbps']:.0f} GB/s"
                           + (f" = {100 * self.roof['roof_gbps'] / ds:.0f}% of datasheet {ds:.0f}"
                              if ds else ""))
        if self.roof is None:
            path.unlink(missing_ok=True)

    def step_flush(self) -> None:
        """One read-bound GEMV timed under each L2 flush mode: how much the flush itself moves
        the numbers. Its JSON goes into summary.json, the % differences into the summary."""
        step = self.begin("flush")
        if step is None:
            return
        from .summary import flush_tables
        if importlib.util.find_spec("bench.gpucheck.flushcmp") is None:
            step.status = "skipped"
            step.detail = "not available: this checkout has no bench.gpucheck.flushcmp"
            self.flush = {"available": False}
            return
        rc, step.seconds, text = self._capture(
            [self.py, "-m", "bench.gpucheck.flushcmp", "--json"], self.box("flush"))
        data = None
        for ln in reversed(text.strip().splitlines()):
            try:
                data = json.loads(ln)
                break
            except json.JSONDecodeError:
                continue
        self.flush = {"available": True, "exit": rc, "json": data}
        tables = flush_tables(data)
        timed = [t for t in tables if "error" not in t]
        if rc is None:
            step.status, step.detail = "timeout", "cut at the time box"
        elif rc != 0:
            step.status, step.detail = "failed", f"exit {rc} (see steps.log)"
        elif not isinstance(data, dict):
            last = (text.strip().splitlines() or ["no output"])[-1][:150]
            step.status, step.detail = "warn", f"no JSON object in its output: {last}"
        elif timed:
            step.status = "ok" if len(timed) == len(tables) else "warn"
            step.detail = (f"{len(timed)}/{len(tables)} cases timed under each flush mode "
                           "(the summary's flush lines)")
        else:  # on the CPU (dry run) it says why it timed nothing
            step.status = "ok" if self.dry else "warn"
            step.detail = str(data.get("note") or "no case timed (see summary.json)")[:200]

    def _chip(self) -> list[str]:
        return ["--chip", self.args.chip] if self.args.chip else []

    def plan(self) -> None:
        """The cases the suite step will run, computed here too so the summary can say what did
        not finish, and which ops or suites are missing."""
        from ..suites import SUITES, SuiteContext, cases_for, gpu_check_cases
        dev = self.info.get("device") or {}
        ctx = SuiteContext(self.backend, dev.get("memory_bytes"), dev.get("cache_bytes"))
        try:
            if self.args.suite == "gpu-check":
                self.planned = gpu_check_cases(ctx, self.notes)
            elif self.args.suite in SUITES:
                self.planned = cases_for(self.args.suite, ctx)
        except Exception as e:  # a broken suite is a finding for the summary, not a crash here
            self.notes.append(f"planning suite {self.args.suite}: {type(e).__name__}: {e}")

    def step_suite(self) -> None:
        step = self.begin("suite")
        if step is None:
            return
        before = set(self.out.glob("*.jsonl"))
        cmd = self.dw("run", "--backend", self.backend, "--suite", self.args.suite, "--budget",
                      self.args.budget, "--out", str(self.out), "--no-progress",
                      "--case-timeout", str(CASE_TIMEOUT_S)) + self._chip()
        try:
            rc, step.seconds = run_proc(cmd, self.box("suite"), self.log, self.env)
        finally:  # interrupted or not, the records written so far are read
            self._read_records(before)
        from ..notes import notes
        # what `run` said of the machine (another process on the GPU, clocks held down by power
        # or heat) goes into the summary too, not only into steps.log
        self.notes += [f"suite: {n}" for n in notes(self.records)]
        done = {(r["op"], json.dumps(r["shape"], sort_keys=True)) for r in self.records}
        n_done, n_plan = len(done), len(self.planned)
        from ..results import FAILED
        bad = [r for r in self.records if r["status"] in FAILED]
        step.detail = f"{n_done}/{n_plan or '?'} cases, {len(self.records)} records"
        if bad:
            step.detail += f", {len(bad)} impl(s) failed the check, errored, crashed or timed out"
        if rc is None:
            step.status = "timeout"
            step.detail += "; cut at the time box (finished cases are kept)"
        elif rc != 0:
            step.status, step.detail = "failed", f"exit {rc}; " + step.detail
        else:
            step.status = "failed" if bad else "ok"

    def _read_records(self, before: set[Path]) -> None:
        new = sorted(set(self.out.glob("*.jsonl")) - before, key=lambda p: p.stat().st_mtime)
        if not new:
            return
        self.jsonl = new[-1]
        from ..results import ResultsError, read_results
        skipped: list[str] = []
        try:  # a bad line costs itself, not the records around it
            self.records = read_results(self.jsonl, skipped)
        except ResultsError as e:
            self.notes.append(f"suite results unreadable: {e}")
        self.notes += [f"suite results: line skipped, {why}" for why in skipped]

    def step_ncu(self) -> None:
        step = self.begin("ncu")
        if step is None:
            return
        from .ncu import MARK, byte_ratio, fake_ncu_csv, ncu_command, parse_ncu_csv, profiler_refused
        t0 = time.monotonic()
        end = t0 + self.box("ncu")
        self.finish_ncu_probe()
        unusable = self.ncu_unusable()
        if unusable:
            step.status, step.detail = "skipped", unusable
            return
        from .cases import ncu_targets
        targets = ncu_targets(self.backend, self.notes)
        # The why passes (why_targets: the INT4 GEMV at M = 1 and 16, the long-context
        # attention) each run right after their launch's byte check, on the kernel of ours that
        # its goal read in this run, and those launches go first, so that the byte loop cannot
        # starve them.
        whys = why_targets(targets, self.records)
        targets = whys + [t for t in targets if not any(t is w for w in whys)]
        # On the GPU one process per launch, so that ncu's table belongs to one case and a crash
        # or hang costs one case; the dry run has no profiler and runs them all in one process.
        batches = [targets] if self.dry and targets else [[tg] for tg in targets]
        refused = None  # ncu's line refusing to profile on this machine: the rest is not run
        with open(self.out / "ncu-raw.txt", "w", encoding="utf-8") as raw:
            for batch in batches:
                left = end - time.monotonic()
                results = [dict(tg) for tg in batch]
                self.ncu.extend(results)
                if refused:
                    for res in results:
                        res["error"] = f"not run: ncu cannot profile here ({refused})"
                elif left < 8:
                    for res in results:
                        res["error"] = "not reached: the ncu time box was spent"
                else:
                    box = min(left, NCU_TARGET_S * (2 if self.dry else 1))
                    target = [self.py, "-m", "bench.gpucheck.ncu", "target", "--backend", self.backend]
                    for tg in batch:
                        target += ["--case", json.dumps(tg)]
                    cmd = target + ["--interpret"] if self.dry else ncu_command(self.ncu_path, target)
                    rc, dt, text = self._capture(cmd, box)
                    refused = None if self.dry else profiler_refused(text)
                    infos = [json.loads(ln[len(MARK):]) for ln in text.splitlines() if ln.startswith(MARK)]
                    title = " | ".join(f"{t['op']}/{t['impl']} {t['shape']} {t['dtype']}" for t in batch)
                    raw.write(f"### {title}{' (dry run: no ncu)' if self.dry else ''}\n{text}\n")
                    for res in results:
                        info = next((i for i in infos if i["op"] == res["op"] and i["impl"] == res["impl"]), None)
                        if refused:
                            res["error"] = f"ncu cannot profile here: {refused}"
                        elif info is not None and info.get("error"):
                            res["error"] = info["error"]
                        elif info is None:
                            errs = [ln for ln in text.splitlines() if "ERR" in ln or "rror" in ln]
                            res["error"] = (f"time box ({box:.0f} s) reached" if rc is None else
                                            f"exit {rc}: " + (errs[-1].strip() if errs else "no result (see steps.log)"))
                        else:
                            table = text
                            if self.dry:  # no counters on a CPU: ncu's table fabricated from the byte model
                                table = fake_ncu_csv(f"{res['impl']}_kernel", info["bytes_moved"] - info["out_bytes"],
                                                     info["out_bytes"], dt * 1e9 / len(batch))
                                raw.write(f"### fabricated table fed to the parser for {res['op']}/{res['impl']}:\n{table}\n")
                                res["fake"] = True
                            try:
                                res.update(byte_ratio(parse_ncu_csv(table), info["bytes_moved"]))
                            except ValueError as e:
                                res["error"] = f"exit {rc}: {e}"
                            res["device"] = info.get("device")
                raw.flush()
                for why_tg in whys:
                    if any(tg is why_tg for tg in batch) and not refused:
                        self._why(why_tg, end, raw)
                        self.write_summary(final=False)
        step.seconds = time.monotonic() - t0
        ok = [r for r in self.ncu if r.get("ratio") is not None]
        off = [r for r in ok if not r.get("within_5pct")]
        errs = [r for r in self.ncu if r.get("error")]
        step.detail = f"{len(ok)}/{len(self.ncu)} launches compared"
        if off:
            step.detail += f", {len(off)} off the byte model by more than 5% (a finding to explain)"
        if errs:
            step.detail += f", {len(errs)} not measured"
        if not targets:
            step.status, step.detail = "warn", "no Triton kernels to profile"
        elif refused and not ok:  # a machine without counters (gVisor): nothing to fail
            self.ncu_refused = refused
            step.status, step.detail = "skipped", self.ncu_unusable() or refused
        else:
            step.status = "ok" if not errs else "warn" if ok else "failed"
        if self.dry:
            step.detail += " (dry run: counters fabricated from the byte model)"

    def _why(self, tg: dict[str, Any], end: float, raw) -> None:
        """One more ncu pass on a launch (why_targets) with the sections that say why it runs
        below the roof: occupancy, issue rate, stalls."""
        from .ncu import MARK, fake_why_csv, parse_ncu_csv, why, why_command
        res: dict[str, Any] = dict(tg)
        self.ncu_why.append(res)
        left = end - time.monotonic()
        if left < 12:
            res["error"] = "not reached: the ncu time box was spent"
            return
        target = [self.py, "-m", "bench.gpucheck.ncu", "target", "--backend", self.backend,
                  "--case", json.dumps(tg)]
        cmd = target + ["--interpret"] if self.dry else why_command(self.ncu_path, target)
        rc, _, text = self._capture(cmd, min(left, NCU_TARGET_S))
        raw.write(f"### why: {tg['op']}/{tg['impl']} {tg['shape']} {tg['dtype']}"
                  f"{' (dry run: no ncu)' if self.dry else ''}\n{text}\n")
        raw.flush()
        if not any(ln.startswith(MARK) for ln in text.splitlines()) or rc:
            errs = [ln for ln in text.splitlines() if "ERR" in ln or "rror" in ln]
            res["error"] = "time box reached" if rc is None else \
                f"exit {rc}: " + (errs[-1].strip() if errs else "no result (see steps.log)")
            return
        table = text
        if self.dry:  # no counters on a CPU: a made-up table, to run the parser
            table = fake_why_csv(f"{tg['impl']}_kernel")
            raw.write(f"### fabricated table fed to the parser:\n{table}\n")
            res["fake"] = True
        try:
            res.update(why(parse_ncu_csv(table)))
        except ValueError as e:
            res["error"] = str(e)

    # -- the summary ------------------------------------------------------------------------
    def write_summary(self, final: bool) -> int:
        """summary.write; an error of its own (record content only a GPU run makes) leaves a
        minimal summary, the traceback in steps.log, and the check going on."""
        try:
            from .summary import write
            return write(self, final=final)
        except Interrupted:  # SIGTERM while it was written (importing torch takes seconds)
            raise
        except Exception as e:
            err = f"{type(e).__name__}: {e}"
            if not self.log.closed:
                self.log.write(traceback.format_exc())
                self.log.flush()
            return self._minimal_summary(final, err)

    def _minimal_summary(self, final: bool, err: str) -> int:
        from .summary import _atomic
        bad = [s for s in self.steps.values() if s.status in ("failed", "timeout")]
        lines = [f"decodewall device check{' (dry run)' if self.dry else ''}: the summary code "
                 f"failed ({err}; traceback in steps.log); the steps and files as they are:"]
        lines += [f"  {s.name:8s} {s.status:8s} {s.seconds:6.0f} s  {s.detail}"
                  for s in self.steps.values()]
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"results: {self.jsonl.name if self.jsonl else 'none'}")
        lines.append("RESULT: " + ("incomplete" if not final else "problems in the summary"
                                   + "".join(f", {s.name} ({s.status})" for s in bad)))
        text = "\n".join(lines) + "\n"
        data = {"dry_run": self.dry, "final": final, "summary_error": err,
                "seconds": time.monotonic() - self.t0, "env": self.info,
                "steps": [dataclasses.asdict(s) for s in self.steps.values()],
                "notes": self.notes, "results_file": self.jsonl.name if self.jsonl else None,
                "peers": self.peers, "tests": self.tests, "ncu": self.ncu,
                "ncu_why": self.ncu_why, "ok": False if final else None}
        try:
            _atomic(self.out / "summary.json", json.dumps(data, indent=1, default=str) + "\n")
            _atomic(self.out / "summary.txt", text)
        except OSError:
            pass
        if final:
            if not self.log.closed:
                self.log.close()
            print("\n" + text, end="", flush=True)
        return 1  # the summary itself failed: its goal lines are missing

    def guarded(self, name: str, fn: Any) -> None:
        """Run one step; an error of the check's own code (a path only a GPU takes, which no dry
        run exercises) fails that step, its traceback in steps.log, and the next step runs: one
        bug must not cost the rest of a device window."""
        try:
            fn()
        except Interrupted:  # SIGTERM: run() ends the check
            raise
        except Exception as e:
            step = self.steps[name]
            self.log.write(traceback.format_exc())
            step.status = "failed"
            step.detail = (f"{step.detail}; " if step.detail else "") + \
                f"the check's own error: {type(e).__name__}: {e} (traceback in steps.log)"
            self.say(f"{name}: the check's own error, {type(e).__name__}: {e}; going on")
        self.end(self.steps[name])  # write_summary inside never raises

    def run(self) -> int:
        self.say(f"decodewall device check{' --dry-run' if self.dry else ''}: writing to {self.out}")
        old = signal.signal(signal.SIGTERM, _on_sigterm)
        code = None
        try:
            self.guarded("peers", self.step_peers)
            self.guarded("env", self.step_env)
            if self.backend_usable is False:  # the probe said so; not an error of env's code
                self.say("no usable torch or backend here: the other steps are skipped")
            else:
                try:
                    self.start_warm()
                except Exception as e:  # the check's own error: the steps run without it
                    self.log.write(traceback.format_exc())
                    self.notes.append(f"starting the background compiles: {type(e).__name__}: {e}")
                for name, fn in (("pytest", lambda: self.step_pytest("pytest")),
                                 ("configs", self.step_configs),
                                 ("roof", self.step_roof), ("flush", self.step_flush),
                                 ("suite", lambda: (self.finish_ncu_probe(), self.plan(),
                                                    self.step_suite())),
                                 ("ncu", self.step_ncu)):
                    self.guarded(name, fn)
        except (Interrupted, KeyboardInterrupt) as e:
            step = self.current
            how = "SIGTERM" if isinstance(e, Interrupted) else "Ctrl-C"
            if step is not None:
                step.status = "timeout"
                step.detail = f"the check was stopped ({how}) during this step" + \
                    (f"; {step.detail}" if step.detail else "")
            self.notes.append(f"stopped by {how}: the steps after the one cut did not run")
            code = 143 if isinstance(e, Interrupted) else 130
        finally:
            signal.signal(signal.SIGTERM, old)
            if self.ncu_probe is not None and self.ncu_probe["proc"].poll() is None:
                kill_group(self.ncu_probe["proc"], 1.0)
            if self.ncu_probe is not None:
                self.ncu_probe["path"].unlink(missing_ok=True)
            try:  # configs cut by an error of the check's own code, or the check interrupted
                self.finish_warm()
            except Exception as e:
                self.notes.append(f"stopping the background compiles: {type(e).__name__}: {e}")
            for s in self.steps.values():
                if s.status == "pending":
                    s.status, s.detail = "skipped", "not reached"
        rc = self.write_summary(final=True)
        if self.peer_dir is not None:
            shutil.rmtree(self.peer_dir, ignore_errors=True)
        return code if code is not None else rc


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Interrupted()


def _batch(t: dict[str, Any]) -> int:
    return t.get("shape", {}).get("M", 1)


def why_target(targets: list[dict[str, Any]], prefer: str | None) -> dict[str, Any] | None:
    """The INT4 GEMV (M = 1) target of the why pass: `prefer` (the impl the goal read) if
    profiled, else the first gemv_w4 target at M = 1."""
    w4 = [t for t in targets if t["op"] == "gemv_w4" and _batch(t) == 1]
    return next((t for t in w4 if t["impl"] == prefer), w4[0] if w4 else None)


LONG_CONTEXT = 32768  # the long-context attention goal's sequence


def why_targets(targets: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The launches the why pass profiles, in order: the INT4 GEMV at M = 1 (why_target), the
    INT4 GEMV at M = 16 (the goal furthest from its mark in results/h200/; the first such
    target) and paged attention at batch 1 x LONG_CONTEXT (the impl its goal read in this run
    if profiled, else the first profiled there: the split-KV one)."""
    from .summary import best_ours, goals
    out = [t for t in [why_target(targets, best_ours(records, "gemv_w4"))] if t is not None]
    out += [t for t in targets if t["op"] == "gemv_w4" and _batch(t) > 1][:1]
    long = [t for t in targets if t["op"] == "paged_attention"
            and t["shape"].get("B") == 1 and t["shape"].get("context") == LONG_CONTEXT]
    read = next((g.get("impl") for g in goals(records) if g["op"] == "paged_attention"
                 and g.get("context") == LONG_CONTEXT), None)
    if long:
        out.append(next((t for t in long if t["impl"] == read), long[0]))
    return out


OUTCOMES = ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS")
# The plugin's line: `DWFAIL <test id> (<when>): <reason>`. The first " (<when>): " ends the id
# (an id may hold ": " or " (", a parametrized string's; a reason may hold anything).
FAIL_PARTS = re.compile(r"(.*?) \((setup|call|teardown|collect)\): (.*)", re.S)
TEST_LINE = re.compile(r"[\w./-]+\.py::")  # -v names a test by its relative path; --tb=line lines
# start with an absolute path and a line number, the -rfE summary with FAILED / ERROR


def pytest_shards() -> int:
    """How many pytest processes a test step runs at once: half the cores, 2 to 8 (the GPU
    machine's 16 give 8: with an empty Triton cache 4 got through a quarter of the cuda tests in
    60 s, compiling; the dry run on 2 still runs two, so the parallel path is tested)."""
    return max(2, min(8, usable_cores() // 2))


def warm_shards() -> int:
    """Background compile processes: the cores the pytest processes leave, 1 to WARM_MAX."""
    return max(1, min(WARM_MAX, usable_cores() - pytest_shards()))


def warm_report(texts: list[str], cut: int, seconds: float,
                ended: list[str] | None = None) -> dict[str, Any]:
    """What warm.py's processes said (one output each): (case, impl) pairs done (compiled, or
    run under the interpreter), skipped and failed (the first failures' lines), configs
    compiled, processes that finished; `ended`: each process that exited without its done
    line (a crash of warm.py itself: its exit status and last line)."""
    pairs = [ln.split(": ", 1)[1] for t in texts for ln in t.splitlines()
             if ln.startswith("warm ") and ": " in ln and " done: " not in ln]
    done = [ln for t in texts for ln in t.splitlines() if " done: " in ln]
    configs = sum(int(m.group(1)) for ln in pairs
                  if (m := re.search(r": (\d+) configs compiled", ln)))
    failed = [ln for ln in pairs if ": failed: " in ln]
    return {"processes": len(texts), "finished": len(done), "stopped": cut,
            "seconds": round(seconds, 1), "done": sum(": failed: " not in ln and ": skipped: "
                                                      not in ln for ln in pairs),
            "skipped": sum(": skipped: " in ln for ln in pairs), "failed": len(failed),
            "failures": failed[:3], "configs": configs, "ended": list(ended or [])[:3],
            "crashed": len(ended or [])}


def merge_progress(progs: list[dict[str, Any]]) -> dict[str, Any]:
    """pytest_progress of the shards as one: counts summed, the failed tests and the files
    that failed to collect once each (every shard collects every file, so such a file fails in
    each), (a list) the tests still running, the last test seen, each shard's final line
    joined."""
    return {"counts": {w: sum(p["counts"][w] for p in progs) for w in OUTCOMES},
            "failed": list(dict.fromkeys(t for p in progs for t in p["failed"])),
            "reasons": {t: r for p in progs for t, r in p.get("reasons", {}).items()},
            "last": next((p["last"] for p in reversed(progs) if p["last"]), None),
            "running": [p["running"] for p in progs if p["running"]],
            "final": "; ".join(p["final"] for p in progs if p["final"])}


def pytest_progress(lines: list[str]) -> dict[str, Any]:
    """What `pytest -v` said so far: counts per outcome, the failed tests and the test files
    that failed to collect, and why (the pytest_shard plugin's lines), the last test seen, the
    one running when the output stops (the last test named, with no outcome yet), the final
    line."""
    counts = dict.fromkeys(OUTCOMES, 0)
    failed: list[str] = []
    reasons: dict[str, str] = {}
    last = outcome = None
    final = ""
    for raw in lines:
        ln = raw.rstrip("\n")
        if ln.startswith(FAIL_LINE):
            rest = ln[len(FAIL_LINE):]
            m = FAIL_PARTS.match(rest)
            if m:
                test, when, why = m.groups()
            else:  # no stage named
                (test, _, why), when = rest.partition(": "), None
            reasons.setdefault(test, why)
            if when == "collect" and test not in failed:  # a file none of whose tests ran
                failed.append(test)
        elif TEST_LINE.match(ln):
            last, outcome = ln.strip(), None
            for word in OUTCOMES:
                i = ln.find(f" {word}")
                if i > 0 and (len(ln) == i + len(word) + 1 or not ln[i + len(word) + 1].isalnum()):
                    last, outcome = ln[:i].strip(), word
                    break
            if outcome is not None:
                counts[outcome] += 1
                if outcome in ("FAILED", "ERROR") and last not in failed:
                    failed.append(last)
        elif ln.startswith("=") and (" in " in ln or "no tests ran" in ln):
            final = ln.strip("= ").strip()
    return {"counts": counts, "failed": failed, "reasons": reasons, "last": last,
            "running": last if last is not None and outcome is None else None, "final": final}




def build_parser() -> OneLineParser:
    p = OneLineParser(prog="bench/device_check.sh",
                      description="One-call GPU device check; see docs/device-check.md.")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU backend, tiny shapes, no ncu: tests this script without a GPU")
    p.add_argument("--out", help="output folder (default: $OUT, else results/device-check-<time>)")
    p.add_argument("--suite", default="gpu-check", help="suite for the suite step (default gpu-check)")
    p.add_argument("--budget", default="quick", choices=["quick", "normal", "thorough"])
    p.add_argument("--chip", help="catalog id, when the device name does not say (e.g. h100-sxm)")
    p.add_argument("--wheels", help="folder of peer wheels and .tar.xz trees (default: .whl/ in "
                   "the checkout); what is there is installed for this check only")
    p.add_argument("--time-limit", type=float, default=TOTAL_S,
                   help=f"seconds for the whole check, summary included (default {TOTAL_S})")
    p.add_argument("--limit", action="append", metavar="STEP=SECONDS",
                   help=f"nominal time box of a step ({', '.join(f'{k}={v}' for k, v in BOXES.items())}; "
                   "the suite step gets whatever the others leave of --time-limit)")
    p.add_argument("--only", nargs="+", choices=STEPS,
                   help="run only these steps (peers and env always run)")
    p.add_argument("--skip", nargs="+", choices=STEPS, help="skip these steps")
    p.add_argument("--no-warm", action="store_true",
                   help="do not compile the suite's kernels in the background of the test steps")
    p.add_argument("--with", dest="with_", nargs="+", choices=OFF_BY_DEFAULT, default=[],
                   help="also run these steps, off by default: roof (a second roof reading; "
                   "the suite measures its own) and flush (the L2 flush modes compared)")
    return p


NAMES_TIMEOUT_S = 60  # `run --list`: one torch import


def unknown_names(suite: str, chip: str | None) -> str | None:
    """The CLI's refusal of a --suite or --chip it does not know (`run --list` checks both), or
    None. Asked before any step, so that a misspelt name ends the check at once instead of failing
    its suite step after the minutes of device time the steps before it spend; the default suite
    with no --chip is not asked about (no torch import in the check's own process either way)."""
    if suite == "gpu-check" and chip is None:
        return None
    cmd = [sys.executable, "-m", "bench.cli", "run", "--list", "--suite", suite,
           *(["--chip", chip] if chip is not None else [])]
    try:
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                           timeout=NAMES_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None  # not known to be wrong: the suite step will say
    lines = r.stderr.strip().splitlines()
    if r.returncode != 2 or not lines:
        return None
    return lines[-1].removeprefix("decodewall: error: ")


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    for item in args.limit or []:
        name, _, sec = item.partition("=")
        # isdecimal, not isdigit: float() takes no superscript digit ('²' is a digit)
        if name not in BOXES or not sec.replace(".", "", 1).isdecimal():
            p.error(f"--limit {item!r}: expected STEP=SECONDS with STEP in {', '.join(BOXES)}")
    if not math.isfinite(args.time_limit):  # nan or inf: no deadline to keep
        p.error(f"--time-limit {args.time_limit:g}: expected a finite number of seconds")
    if args.time_limit <= RESERVE_S:
        p.error(f"--time-limit {args.time_limit:g}: must exceed the {RESERVE_S:g} s kept for "
                "killing a step and writing the summary")
    if args.only:
        args.only = list(dict.fromkeys(["peers", "env", *args.only]))
    bad = unknown_names(args.suite, args.chip)
    if bad:
        p.error(bad)
    try:
        check = Check(args)
    except OSError as e:  # --out (or $OUT) a file, or a folder that cannot be written
        p.error(f"cannot write the output folder: {e.strerror or e}"
                + (f": {e.filename!r}" if e.filename else ""))
    try:
        return check.run()
    except KeyboardInterrupt:
        print("device check: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
