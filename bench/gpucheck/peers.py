"""The optional peers (GemLite, FlashInfer) on a machine without network: the device check installs
what the checkout carries in `.whl/` (wheels, and FlashInfer as a .tar.xz of its installed tree)
into a folder of its own, put on the children's PYTHONPATH, then says which peers import. Nothing
here fails the check: a peer that is missing is a skipped row in the table, and the summary says
why.

    python -m bench.gpucheck.peers extract --into DIR ARCHIVE...   # a tree laid out like site-packages
    python -m bench.gpucheck.peers probe NAME...                   # one JSON line: NAME -> import result
"""
from __future__ import annotations

import importlib
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

from bench.errors import OneLineParser, one_line

# The modules the peers' impls import (kernels/gemv/peers.py, kernels/attention/peers.py): probed
# whether or not wheels were carried, since a machine's image may hold them already.
PEER_MODULES = ("gemlite", "flashinfer")
ARCHIVES = (".tar.xz", ".tar.gz", ".tgz", ".tar")


def peer_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(wheels, archives) in `folder`, sorted; both empty when the folder is not there."""
    if not folder.is_dir():
        return [], []
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return ([p for p in files if p.name.endswith(".whl")],
            [p for p in files if p.name.endswith(ARCHIVES)])


def top_packages(target: Path) -> list[str]:
    """The importable packages installed at the top of `target` (folders with an __init__.py)."""
    if not target.is_dir():
        return []
    return sorted(p.name for p in target.iterdir()
                  if p.is_dir() and (p / "__init__.py").is_file() and p.name.isidentifier())


def extract(archive: Path, into: Path) -> list[str]:
    """Unpack `archive` into `into`, refusing members that would land outside it (links out,
    absolute paths, devices). Returns the top-level names it holds."""
    with tarfile.open(archive) as tf:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: the safe filter
            tf.extractall(into, filter="data")
        else:
            root = into.resolve()
            for m in tf.getmembers():
                dest = (root / m.name).resolve()
                if not (dest == root or root in dest.parents) or m.isdev() or m.issym() or m.islnk():
                    raise ValueError(f"{archive.name}: member {m.name!r} leaves the target folder")
            tf.extractall(into)  # noqa: S202 (members checked above)
        names = set()
        for m in tf.getmembers():
            parts = [p for p in Path(m.name).parts if p != "."]
            if parts:
                names.add(parts[0])
    return sorted(names)


def probe(names: list[str]) -> dict[str, dict[str, Any]]:
    """Import each module: {"ok": True, "version", "file"} or {"ok": False, "error"}."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            mod = importlib.import_module(name)
        except BaseException as e:  # noqa: BLE001  a peer may raise anything, even SystemExit
            first = (str(e).strip().splitlines() or [""])[0][:200]
            out[name] = {"ok": False, "error": f"{type(e).__name__}: {first}".rstrip(": ")}
            continue
        out[name] = {"ok": True, "version": str(getattr(mod, "__version__", "") or ""),
                     "file": str(getattr(mod, "__file__", "") or "")}
    return out


def describe(results: dict[str, dict[str, Any]]) -> str:
    """`gemlite 0.6.0 imports, flashinfer: ModuleNotFoundError: ...` for the summary."""
    parts = []
    for name, r in results.items():
        if r.get("ok"):
            parts.append(f"{name} {r.get('version') or ''}".rstrip() + " imports")
        else:
            parts.append(f"{name}: {r.get('error', 'not importable')}")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python3 -m bench.gpucheck.peers")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=OneLineParser)
    e = sub.add_parser("extract", help="unpack archives of installed trees into a folder")
    e.add_argument("--into", required=True)
    e.add_argument("archives", nargs="+")
    pr = sub.add_parser("probe", help="import modules; one JSON line of the results")
    pr.add_argument("names", nargs="*")
    args = p.parse_args(argv)
    if args.cmd == "extract":
        into = Path(args.into)
        try:
            into.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # --into a file
            p.error(f"--into {args.into!r}: {err.strerror or err}")
        rc = 0
        for a in args.archives:
            try:
                print(f"{Path(a).name}: {', '.join(extract(Path(a), into))}", flush=True)
            except (OSError, tarfile.TarError, ValueError, EOFError) as err:
                why = " ".join(str(err).split())  # tarfile's ReadError lists each method tried
                print(one_line(f"{Path(a).name}: cannot extract: {type(err).__name__}: {why}"),
                      file=sys.stderr, flush=True)
                rc = 1
        return rc
    print(json.dumps(probe(args.names)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
