"""The wheel ships what the code reads at run time: every .c and .h under kernels/ (an install
builds them), the chip catalog and the model configs."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.helpers import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel of the checkout, built from a copy (building in place writes build/ into it)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for d in ("kernels", "bench", "backends"):
        shutil.copytree(REPO / d, src / d, ignore=skip)
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, src / f)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp / "dist"), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1000:]
    (whl,) = (tmp / "dist").glob("decodewall-*.whl")
    return whl


def test_wheel_ships_every_c_source(wheel):
    shipped = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "kernels").rglob("*")
               if p.suffix in (".c", ".h")}
    assert sources and sources <= shipped, sorted(sources - shipped)


def test_wheel_ships_the_chip_catalog_and_the_model_configs(wheel, tmp_path):
    shipped = set(zipfile.ZipFile(wheel).namelist())
    data = {p.relative_to(REPO).as_posix() for p in
            [REPO / "backends" / "chips.json", *(REPO / "bench" / "model" / "models").glob("*.json")]}
    assert len(data) > 1 and data <= shipped, sorted(data - shipped)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("from backends import load_catalog; from bench.model.workload import model_names; "
            "print(len(load_catalog()), len(model_names()))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(site)), timeout=120)
    assert r.returncode == 0, r.stderr[-1000:]
    chips, models = map(int, r.stdout.split())
    assert chips > 0 and models == len(data) - 1


@pytest.mark.slow
def test_installed_wheel_builds_the_c_kernels(wheel, tmp_path):
    """Each C library compiles from where the wheel installs it, not from the checkout."""
    if not shutil.which(os.environ.get("CC") or "cc"):
        pytest.skip("no C compiler")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # a pure-Python wheel: unpacked is installed
    code = """
import kernels, kernels.gemv.simd as g, kernels.attention.simd as a, kernels.probes.simd as p
print(kernels.__file__)
for m in (g, a, p):
    try:
        m.library()
    except NotImplementedError as e:  # a CPU without the instructions: not a packaging fault
        assert "lacks" in str(e), e
"""
    env = dict(os.environ, PYTHONPATH=str(site), DECODEWALL_CACHE=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-1000:]
    assert r.stdout.strip().startswith(str(site))
