"""The device check's peers step: wheels and .tar.xz trees carried in .whl/ installed for the
children, a missing or broken one said in the summary and never a failed check."""
import argparse
import io
import json
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from bench.gpucheck import check as dc
from bench.gpucheck.peers import describe, extract, peer_files, probe, top_packages


def fake_peers(folder: Path, broken: bool = False) -> Path:
    """A .whl folder like the one carried to the GPU: a wheel (package dwfake_whl) and a .tar.xz
    of an installed tree (package dwfake_tar, its dist-info beside it); with `broken`, also a
    file named like a wheel that is not a zip."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = "dwfake_whl-0.1.dist-info"
    files = {"dwfake_whl/__init__.py": "__version__ = '0.1'\n",
             f"{dist}/METADATA": "Metadata-Version: 2.1\nName: dwfake-whl\nVersion: 0.1\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(folder / "dwfake_whl-0.1-py3-none-any.whl", "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    with tarfile.open(folder / "dwfake_tar-0.2.tar.xz", "w:xz") as tf:
        for name, text in {"./dwfake_tar/__init__.py": "__version__ = '0.2'\n",
                           "./dwfake_tar-0.2.dist-info/METADATA": "Name: dwfake-tar\n"}.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    if broken:
        (folder / "dwbroken-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    return folder


def _check(tmp_path: Path, wheels: Path | None) -> dc.Check:
    args = argparse.Namespace(dry_run=True, out=str(tmp_path / "out"), limit=None, only=None,
                              skip=None, time_limit=dc.TOTAL_S, suite="gpu-check",
                              budget="quick", chip=None, wheels=str(wheels) if wheels else None)
    return dc.Check(args)


def test_peer_files_and_extract(tmp_path):
    folder = fake_peers(tmp_path / "whl")
    (folder / "notes.txt").write_text("x")
    wheels, archives = peer_files(folder)
    assert [p.name for p in wheels] == ["dwfake_whl-0.1-py3-none-any.whl"]
    assert [p.name for p in archives] == ["dwfake_tar-0.2.tar.xz"]
    assert peer_files(tmp_path / "none") == ([], [])
    into = tmp_path / "site"
    assert extract(archives[0], into) == ["dwfake_tar", "dwfake_tar-0.2.dist-info"]
    assert top_packages(into) == ["dwfake_tar"]


def test_extract_refuses_a_member_outside_the_folder(tmp_path):
    bad = tmp_path / "evil.tar.xz"
    with tarfile.open(bad, "w:xz") as tf:
        info = tarfile.TarInfo("../escaped.py")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(Exception):
        extract(bad, tmp_path / "site")
    assert not (tmp_path / "escaped.py").exists()


def test_probe_says_what_imports_and_why_not():
    r = probe(["json", "no_such_module_dw"])
    assert r["json"]["ok"] and not r["no_such_module_dw"]["ok"]
    assert "ModuleNotFoundError" in r["no_such_module_dw"]["error"]
    text = describe(r)
    assert f"json {r['json']['version']} imports" in text
    assert "no_such_module_dw: ModuleNotFoundError" in text


def test_a_peer_that_exits_on_import_is_its_own_failed_import(tmp_path, monkeypatch):
    """A peer may raise anything at import, SystemExit included: that is its failed import,
    said with the reason, and the modules after it are still probed (the probe prints its JSON
    line)."""
    (tmp_path / "dwexits_on_import.py").write_text("raise SystemExit('no GPU found')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = probe(["dwexits_on_import", "json"])
    assert r["dwexits_on_import"] == {"ok": False, "error": "SystemExit: no GPU found"}
    assert r["json"]["ok"]


def test_no_wheels_is_said_and_is_no_failure(tmp_path):
    check = _check(tmp_path, tmp_path / "empty")
    before = check.env["PYTHONPATH"]
    check.step_peers()
    check.end(check.steps["peers"])
    step = check.steps["peers"]
    assert step.status == "warn" and "no wheels or .tar.xz in" in step.detail
    assert "gemlite" in step.detail and "flashinfer" in step.detail
    assert check.env["PYTHONPATH"] == before and check.peer_dir is None
    summary = json.loads((check.out / "summary.json").read_text())
    assert summary["peers"]["wheels"] == [] and "gemlite" in summary["peers"]["imports"]
    check.log.close()


def test_wheels_and_trees_are_installed_for_the_children_and_a_broken_one_is_said(tmp_path):
    folder = fake_peers(tmp_path / "whl", broken=True)
    check = _check(tmp_path, folder)
    try:
        check.step_peers()
        check.end(check.steps["peers"])
        step = check.steps["peers"]
        assert step.status == "warn"  # the broken wheel: said, not a failed check
        assert "dwbroken-1.0-py3-none-any.whl not installed" in step.detail
        assert set(check.peers["installed"]) == {"dwfake_whl-0.1-py3-none-any.whl", "dwfake_tar-0.2.tar.xz"}
        imports = check.peers["imports"]  # probed in a child, through the children's PYTHONPATH
        assert imports["dwfake_whl"] == {"ok": True, "version": "0.1",
                                         "file": str(check.peer_dir / "dwfake_whl" / "__init__.py")}
        assert imports["dwfake_tar"]["ok"] and imports["dwfake_tar"]["version"] == "0.2"
        path = check.env["PYTHONPATH"].split(os.pathsep)
        assert path[:2] == [str(dc.REPO), str(check.peer_dir)]
        check.write_summary(final=True)
        assert "dwfake_whl 0.1 imports" in (check.out / "summary.txt").read_text()
    finally:
        if check.peer_dir is not None:
            shutil.rmtree(check.peer_dir, ignore_errors=True)


def test_a_peers_step_out_of_time_is_a_warning_not_a_failure(tmp_path):
    check = _check(tmp_path, tmp_path / "empty")
    check.steps["peers"].status, check.steps["peers"].detail = "timeout", "cut"
    check.end(check.steps["peers"])
    assert check.steps["peers"].status == "warn" and check.steps["peers"].detail.startswith("timeout")
    check.steps["env"].status = "timeout"
    check.end(check.steps["env"])  # any other step keeps its failure
    assert check.steps["env"].status == "timeout"
    check.log.close()
