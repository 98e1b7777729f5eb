"""`.ci/run` stops at the first step that fails, installs included: under `set -e` a command left
of `&&` that fails does not end the script, so a failed install would skip its tests and CI pass."""
import os
import shutil
import subprocess

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.skipif(not shutil.which("bash"), reason="no bash")

STUB = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$LOG"
case "$*" in *"$FAIL"*) exit 1;; esac
"""


def run_ci(tmp_path, fail: str) -> tuple[int, list[str]]:
    """.ci/run with python3 and decodewall replaced by stubs that log their command line and fail
    on one that contains `fail`: (exit status, the commands run)."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(REPO / ".ci" / "run", tmp_path / ".ci" / "run")
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name in ("python3", "decodewall"):
        (bin_ / name).write_text(STUB)
        (bin_ / name).chmod(0o755)
    log = tmp_path / "log"
    env = dict(os.environ, PATH=f"{bin_}{os.pathsep}{os.environ['PATH']}", LOG=str(log), FAIL=fail)
    r = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True,
                       env=env, timeout=60)
    return r.returncode, log.read_text().splitlines()


@pytest.mark.parametrize("fail", ["install -q -e .[test]", "-m slow and not alone",
                                  "-m slow and alone", "install -q -e .[xla]"])
def test_ci_stops_at_the_step_that_fails(fail, tmp_path):
    rc, ran = run_ci(tmp_path, fail)
    assert rc != 0, ran
    assert ran[-1].endswith(fail), ran  # nothing ran after the step that failed


def test_ci_runs_every_step_when_each_passes(tmp_path):
    """The stubs pass, so the script reaches the smoke run (whose results check then fails on the
    stub's empty output folder): the steps all ran, in order."""
    _, ran = run_ci(tmp_path, "no step has this")
    assert ran[:-1] == ["python3 -m pip install -q torch==2.13.0",
                        "python3 -m pip install -q -e .[test]", "python3 -m pytest -q -n 2",
                        "python3 -m pytest -q -n 2 -m slow and not alone",
                        "python3 -m pytest -q -m slow and alone",
                        "python3 -m pip install -q -e .[xla]",
                        "python3 -m pytest -q -n 2 -m xla"]
    assert ran[-1].startswith("decodewall run --suite smoke --backend cpu --out "), ran
    assert ran[-1].endswith(" --strict --no-progress"), ran


def test_ci_runs_the_readmes_test_command():
    """The README promises one command that runs the tests; CI must run that command (quietly),
    not a variant that drifts from it."""
    readme = (REPO / "README.md").read_text().splitlines()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    (told,) = [x for x in readme if x.startswith("python3 -m pip install") and "[test]" in x]
    (run,) = [x for x in ci if not x.startswith("#") and "[test]" in x]

    def words(line: str) -> list[str]:
        return [w for w in line.split("||")[0].split() if w != "-q"]
    assert words(run) == words(told), (run, told)
