"""The one-call GPU device check: CUDA tests, the GPU suite, an Nsight Compute check of the byte
model, all time-boxed to fit one call on a lent GPU, everything written under $OUT (else
results/device-check-<timestamp>/) and a short summary printed last.

    bench/device_check.sh              # on the GPU machine: about 5 1/2 minutes
    bench/device_check.sh --dry-run    # the same steps on the CPU with tiny shapes (tested in CI)

Steps, each a child process in its own process group, killed at its time box:
  env     versions, the device, nvidia-smi, ncu, which optional packages are present
  pytest  `pytest -m "cuda and not slow"`, one config per Triton kernel (DECODEWALL_AUTOTUNE=0),
          every config checked once by test_cuda_every_config (dry run: only collected)
  roof    `decodewall roof --json`
  suite   `decodewall run --suite gpu-check`: results are flushed per case, so a case cut off by
          the time box loses only itself; the summary says how many planned cases finished
  ncu     `ncu` on one launch of each Triton kernel at a DRAM-sized shape: DRAM bytes read +
          written vs the op's bytes_moved (dry run: no ncu; the parser is fed a table fabricated
          from the byte model, so the ratio path runs and reads 1.00 by construction); then
          one more pass on the INT4 GEMV with ncu's LaunchStats, Occupancy, SchedulerStats and
          WarpStateStats sections: why it runs below the roof (occupancy, issue rate, stalls)
Files, flat and at most 8 so the device tool brings them all back: summary.txt, summary.json,
steps.log, roof.json, <run_id>.jsonl, ncu-raw.txt.

This module runs the steps (class Check); the suite's cases are bench/suites.py's `gpu-check`,
the ncu targets come from cases.py, child processes from proc.py, the environment from
env_probe.py, the parsing of ncu's output from ncu.py and the summary from summary.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .proc import REPO, find_ncu, run_proc

# Nominal seconds per step (H100). The suite is elastic: it gets whatever the total leaves after
# the steps before it and the nominal boxes of the steps after it.
BOXES = {"env": 20, "pytest": 100, "roof": 25, "suite": 100, "ncu": 80}
# Under 5 minutes is the aim (DESIGN.md, "Device checks"); every GEMV config compiled and checked
# once (pytest: 61 configs, bf16 21, INT4 20, INT8 20, with the X3D and SWAP variants) and a suite
# that took 156 s on an H200 need 5 1/2; the suite gives way first (its goal cases run first).
# Kills and start-up fit in the rest of a 400 s call.
TOTAL_S = 330
NCU_TARGET_S = 30  # one profiled process: torch import, inputs, autotune, the profiled launch
STEPS = tuple(BOXES)


@dataclasses.dataclass
class Step:
    name: str
    status: str = "skipped"  # ok | warn | failed | timeout | skipped
    seconds: float = 0.0
    detail: str = ""


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
        self.deadline = self.t0 + args.time_limit
        self.steps: dict[str, Step] = {s: Step(s) for s in STEPS}
        self.boxes = dict(BOXES)
        for item in args.limit or []:
            name, _, sec = item.partition("=")
            self.boxes[name] = float(sec)
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO)] + ([self.env["PYTHONPATH"]] if self.env.get("PYTHONPATH") else []))
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env.setdefault("COLUMNS", "200")
        self.py = sys.executable
        self.info: dict[str, Any] = {}
        self.roof: dict[str, Any] | None = None
        self.records: list[dict[str, Any]] = []
        self.jsonl: Path | None = None
        self.planned: list = []
        self.notes: list[str] = []
        self.ncu: list[dict[str, Any]] = []
        self.ncu_why: list[dict[str, Any]] = []  # occupancy, issue rate, stalls (_why)
        self.ncu_path: str | None = None

    # -- helpers ----------------------------------------------------------------------------
    def say(self, msg: str) -> None:
        print(msg, flush=True)
        self.log.write(f"# {msg}\n")
        self.log.flush()

    def box(self, name: str) -> float:
        left = self.deadline - time.monotonic()
        if name == "suite":  # elastic: what the later steps' nominal boxes leave
            later = sum(self.boxes[s] for s in STEPS[STEPS.index(name) + 1:] if self.wanted(s))
            return max(min(left, 20.0), left - later)
        return max(0.0, min(self.boxes[name], left))

    def wanted(self, name: str) -> bool:
        if self.args.only:
            return name in self.args.only
        return name not in (self.args.skip or [])

    def begin(self, name: str) -> Step | None:
        step = self.steps[name]
        if not self.wanted(name):
            step.detail = "not asked for"
            return None
        if self.box(name) < 3:
            step.status, step.detail = "timeout", "no time left in the total time box"
            return None
        self.log.write(f"===== {name} =====\n")
        self.say(f"[{time.monotonic() - self.t0:5.0f} s] {name} (time box {self.box(name):.0f} s)")
        return step

    def dw(self, *argv: str) -> list[str]:
        return [self.py, "-m", "bench.cli", *argv]

    # -- steps ------------------------------------------------------------------------------
    def step_env(self) -> None:
        step = self.begin("env")
        if step is None:
            return
        t0 = time.monotonic()
        if shutil.which("nvidia-smi"):
            run_proc(["nvidia-smi", "--query-gpu=name,memory.total,clocks.sm,clocks.mem,"
                      "clocks.max.sm,clocks.max.mem,power.draw,power.limit,temperature.gpu",
                      "--format=csv"], 15, self.log, self.env)
        self.ncu_path = None if self.dry else find_ncu()
        if self.ncu_path:
            run_proc([self.ncu_path, "--version"], 15, self.log, self.env)
        tmp = Path(tempfile.mkstemp(prefix="dwcheck-env-")[1])
        rc, _ = run_proc([self.py, "-m", "bench.gpucheck.env_probe", self.backend],
                         self.box("env"), self.log, self.env, stdout_path=tmp)
        text = tmp.read_text(encoding="utf-8", errors="replace").strip()
        tmp.unlink(missing_ok=True)
        self.log.write(text + "\n")
        try:
            self.info = json.loads(text.splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            self.info = {}
        step.seconds = time.monotonic() - t0
        if rc is None or not self.info:
            step.status, step.detail = ("timeout" if rc is None else "failed"), \
                "could not import torch / the project (see steps.log)"
            return
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

    def step_pytest(self) -> None:
        step = self.begin("pytest")
        if step is None:
            return
        cmd = [self.py, "-m", "pytest", "-m", "cuda and not slow", "-q", "-p", "no:cacheprovider",
               "-rfE"]
        if self.dry:
            cmd.append("--collect-only")
        tmp = Path(tempfile.mkstemp(prefix="dwcheck-pytest-")[1])
        # One config per Triton kernel (DECODEWALL_AUTOTUNE=0): tuning every test shape would
        # compile every config again and again; test_cuda_every_config checks them all once.
        env = {**self.env, "DECODEWALL_AUTOTUNE": "0"}
        rc, step.seconds = run_proc(cmd, self.box("pytest"), self.log, env, stdout_path=tmp)
        text = tmp.read_text(encoding="utf-8", errors="replace")
        tmp.unlink(missing_ok=True)
        self.log.write(text)
        last = [ln for ln in text.strip().splitlines() if ln.strip()]
        tail = last[-1].strip("= ") if last else ""
        if rc is None:
            step.status, step.detail = "timeout", f"cut at the time box; last line: {tail}"
        elif rc == 0:
            step.status, step.detail = "ok", tail
        elif rc == 5:
            step.status, step.detail = "warn", "no tests marked cuda were collected"
        else:
            step.status, step.detail = "failed", f"exit {rc}: {tail}"

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
                      self.args.budget, "--out", str(self.out), "--no-progress") + self._chip()
        rc, step.seconds = run_proc(cmd, self.box("suite"), self.log, self.env)
        new = sorted(set(self.out.glob("*.jsonl")) - before, key=lambda p: p.stat().st_mtime)
        if new:
            self.jsonl = new[-1]
            from ..results import ResultsError, read_results
            try:
                self.records = read_results(self.jsonl)
            except ResultsError as e:
                self.notes.append(f"suite results unreadable: {e}")
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

    def step_ncu(self) -> None:
        step = self.begin("ncu")
        if step is None:
            return
        from .ncu import MARK, byte_ratio, fake_ncu_csv, ncu_command, parse_ncu_csv
        t0 = time.monotonic()
        end = t0 + self.box("ncu")
        if not self.dry and not self.ncu_path:
            step.status = "skipped"
            step.detail = "ncu not found (PATH, /usr/local/cuda*/bin, /opt/nvidia/nsight-compute)"
            return
        from .cases import ncu_targets
        targets = ncu_targets(self.backend, self.notes)
        # On the GPU one process per launch, so that ncu's table belongs to one case and a crash
        # or hang costs one case; the dry run has no profiler and runs them all in one process.
        batches = [targets] if self.dry and targets else [[tg] for tg in targets]
        raw = open(self.out / "ncu-raw.txt", "w", encoding="utf-8")
        for batch in batches:
            left = end - time.monotonic()
            results = [dict(tg) for tg in batch]
            self.ncu.extend(results)
            if left < 8:
                for res in results:
                    res["error"] = "not reached: the ncu time box was spent"
                continue
            box = min(left, NCU_TARGET_S * (2 if self.dry else 1))
            target = [self.py, "-m", "bench.gpucheck.ncu", "target", "--backend", self.backend]
            for tg in batch:
                target += ["--case", json.dumps(tg)]
            cmd = target + ["--interpret"] if self.dry else ncu_command(self.ncu_path, target)
            tmp = Path(tempfile.mkstemp(prefix="dwcheck-ncu-")[1])
            rc, dt = run_proc(cmd, box, self.log, self.env, stdout_path=tmp)
            text = tmp.read_text(encoding="utf-8", errors="replace")
            tmp.unlink(missing_ok=True)
            infos = [json.loads(ln[len(MARK):]) for ln in text.splitlines() if ln.startswith(MARK)]
            title = " | ".join(f"{t['op']}/{t['impl']} {t['shape']} {t['dtype']}" for t in batch)
            raw.write(f"### {title}{' (dry run: no ncu)' if self.dry else ''}\n{text}\n")
            for res in results:
                info = next((i for i in infos if i["op"] == res["op"] and i["impl"] == res["impl"]), None)
                if info is not None and info.get("error"):
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
        self._why(targets, end, raw)
        raw.close()
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
        else:
            step.status = "ok" if not errs else "warn" if ok else "failed"
        if self.dry:
            step.detail += " (dry run: counters fabricated from the byte model)"

    def _why(self, targets: list[dict[str, Any]], end: float, raw) -> None:
        """After the byte checks, one more ncu pass on the INT4 GEMV (the goal furthest from met)
        with the sections that say why it runs below the roof: occupancy, issue rate, stalls."""
        from .ncu import MARK, fake_why_csv, parse_ncu_csv, why, why_command
        for tg in [t for t in targets if t["op"] == "gemv_w4"][:1]:
            res: dict[str, Any] = dict(tg)
            self.ncu_why.append(res)
            left = end - time.monotonic()
            if left < 12:
                res["error"] = "not reached: the ncu time box was spent"
                continue
            target = [self.py, "-m", "bench.gpucheck.ncu", "target", "--backend", self.backend,
                      "--case", json.dumps(tg)]
            cmd = target + ["--interpret"] if self.dry else why_command(self.ncu_path, target)
            tmp = Path(tempfile.mkstemp(prefix="dwcheck-why-")[1])
            rc, _ = run_proc(cmd, min(left, NCU_TARGET_S), self.log, self.env, stdout_path=tmp)
            text = tmp.read_text(encoding="utf-8", errors="replace")
            tmp.unlink(missing_ok=True)
            raw.write(f"### why: {tg['op']}/{tg['impl']} {tg['shape']} {tg['dtype']}"
                      f"{' (dry run: no ncu)' if self.dry else ''}\n{text}\n")
            if not any(ln.startswith(MARK) for ln in text.splitlines()) or rc:
                errs = [ln for ln in text.splitlines() if "ERR" in ln or "rror" in ln]
                res["error"] = "time box reached" if rc is None else \
                    f"exit {rc}: " + (errs[-1].strip() if errs else "no result (see steps.log)")
                continue
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


    def summary(self) -> int:
        from .summary import write
        return write(self)

    def run(self) -> int:
        self.say(f"decodewall device check{' --dry-run' if self.dry else ''}: writing to {self.out}")
        self.step_env()
        if self.steps["env"].status in ("failed", "timeout"):
            self.say("no usable torch or backend here: the other steps are skipped")
            return self.summary()
        self.step_pytest()
        self.step_roof()
        self.plan()
        self.step_suite()
        self.step_ncu()
        return self.summary()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/device_check.sh",
                                description="One-call GPU device check; see docs/device-check.md.")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU backend, tiny shapes, no ncu: tests this script without a GPU")
    p.add_argument("--out", help="output folder (default: $OUT, else results/device-check-<time>)")
    p.add_argument("--suite", default="gpu-check", help="suite for the suite step (default gpu-check)")
    p.add_argument("--budget", default="quick", choices=["quick", "normal", "thorough"])
    p.add_argument("--chip", help="catalog id, when the device name does not say (e.g. h100-sxm)")
    p.add_argument("--time-limit", type=float, default=TOTAL_S,
                   help=f"total seconds for all steps (default {TOTAL_S})")
    p.add_argument("--limit", action="append", metavar="STEP=SECONDS",
                   help=f"nominal time box of a step ({', '.join(f'{k}={v}' for k, v in BOXES.items())}; "
                   "the suite step also gets whatever the others leave of --time-limit)")
    p.add_argument("--only", nargs="+", choices=STEPS, help="run only these steps (env always runs)")
    p.add_argument("--skip", nargs="+", choices=STEPS, help="skip these steps")
    args = p.parse_args(argv)
    for item in args.limit or []:
        name, _, sec = item.partition("=")
        if name not in BOXES or not sec.replace(".", "", 1).isdigit():
            p.error(f"--limit {item!r}: expected STEP=SECONDS with STEP in {', '.join(BOXES)}")
    if args.only and "env" not in args.only:
        args.only = ["env", *args.only]
    try:
        return Check(args).run()
    except KeyboardInterrupt:
        print("device check: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
