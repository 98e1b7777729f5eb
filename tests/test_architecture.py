"""The architecture, checked on the source: the import graph of kernels/, backends/ and bench/.

Every `import` and `from ... import` in a module counts, at any depth (inside functions and
conditionals too: a function-level import is an import that runs later, not an absent one).

The graph: one node per module (a package is its `__init__.py`). An import makes an edge from
the importing module to
- `import a.b.c`: the module a.b.c;
- `from a.b import c`: the module a.b.c when c is a submodule, else the module a.b (c is then a
  name that a.b's body defines or re-exports).
Importing a submodule makes no edge to its parent packages, although Python runs their
`__init__.py` first: the package object exists before its body runs, and the submodule needs
nothing from it. So a package whose `__init__.py` imports (re-exports) its own submodules is no
cycle. A submodule that takes a *name* from its own package's `__init__.py` is one, and a real
one: when the package is imported first, its body stops at the line that imports the submodule,
and the name exists or not depending on the order of those lines.

Rules:
(a) no cycle between modules (a strongly connected component of more than one module, or a
    module importing itself);
(b) the flow of DESIGN.md: kernels/ and backends/ never import bench/; backends/ never imports
    kernels/;
(c) bench/ never takes a private name of kernels/ (a leading underscore): not as an imported
    module or name, not as an attribute of something imported from kernels/;
(d) the front-ends stay leaves inside bench/: only bench.cli's own modules import bench.cli, and
    none of them imports the package bench.cli itself (its __init__ assembles the commands); the
    measurement core (the modules directly in bench/) imports none of bench.cli, bench.report and
    bench.gpucheck.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("kernels", "backends", "bench")
FRONT_ENDS = ("bench.cli", "bench.report", "bench.gpucheck")


def _modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Module name -> file, for every .py file under the packages."""
    out: dict[str, Path] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


class Import:
    """One import statement's targets in our packages, and the names it binds to them."""

    def __init__(self, line: int, target: str, name: str | None, bound: str | None) -> None:
        self.line, self.target, self.name, self.bound = line, target, name, bound


def _imports(module: str, path: Path, known: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module if _is_package(path) else module.rpartition(".")[0]  # for relative imports
    out: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in _roots(known):
                    out.append(Import(node.lineno, a.name, None, a.asname))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[:len(base) - (node.level - 1)]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            if src.split(".")[0] not in _roots(known):
                continue
            for a in node.names:
                sub = f"{src}.{a.name}"
                if sub in known:
                    out.append(Import(node.lineno, sub, None, a.asname or a.name))
                else:
                    out.append(Import(node.lineno, src, a.name, a.asname or a.name))
    return out


def _roots(known: dict[str, Path]) -> set[str]:
    return {m.split(".")[0] for m in known}


def _private_attributes(path: Path, names: set[str]) -> list[tuple[int, str]]:
    """`x._private` where x is a name bound to something imported from kernels/."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    hits = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in names and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            hits.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return hits


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES):
    """(modules, edges): edges[a] = {b: first line of a that imports b}."""
    known = _modules(root, packages)
    edges: dict[str, dict[str, int]] = {m: {} for m in known}
    for m, path in known.items():
        for imp in _imports(m, path, known):
            if imp.target in known:
                edges[m].setdefault(imp.target, imp.line)
    return known, edges


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module, and self-imports (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # iterative would do too; the graph is a few hundred nodes
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, {}):
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def violations(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """Every broken rule, one line each, naming the file and line."""
    known, edges = import_graph(root, packages)
    found: list[str] = []
    for comp in cycles(edges):
        ring = [f"{a} -> {b} ({known[a].relative_to(root)}:{edges[a][b]})"
                for a in comp for b in edges[a] if b in comp]
        found.append("(a) import cycle: " + "; ".join(ring))
    for m, path in known.items():
        rel = path.relative_to(root)
        imports = _imports(m, path, known)
        for imp in imports:
            t, where = imp.target, f"{rel}:{imp.line}"
            if (_under(m, "kernels") or _under(m, "backends")) and _under(t, "bench"):
                found.append(f"(b) {where}: {m} imports {t}: nothing below bench/ imports it")
            if _under(m, "backends") and _under(t, "kernels"):
                found.append(f"(b) {where}: {m} imports {t}: backends/ knows no ops")
            if _under(m, "bench") and _under(t, "kernels"):
                private = [p for p in t.split(".") if p.startswith("_") and not p.startswith("__")]
                if imp.name and imp.name.startswith("_") and not imp.name.startswith("__"):
                    private.append(imp.name)
                if private:
                    found.append(f"(c) {where}: {m} imports the private {'.'.join(private)} "
                                 f"of {t}")
            if _under(m, "bench") and _under(t, "bench.cli"):
                if not _under(m, "bench.cli"):
                    found.append(f"(d) {where}: {m} imports {t}: only the CLI imports the CLI")
                elif m not in ("bench.cli", "bench.cli.__main__") and t == "bench.cli" \
                        and imp.name is not None:
                    found.append(f"(d) {where}: {m} takes {imp.name} from the package "
                                 "bench.cli: commands import its modules, never its __init__")
            core = _under(m, "bench") and m.count(".") == 1 and not _is_package(path)
            if core and any(_under(t, f) for f in FRONT_ENDS):
                found.append(f"(d) {where}: the measurement core module {m} imports the "
                             f"front-end {t}")
        if _under(m, "bench"):
            bound = {imp.bound for imp in imports if imp.bound and _under(imp.target, "kernels")}
            bound |= {"kernels"} if any(imp.target.startswith("kernels") and imp.bound is None
                                        for imp in imports) else set()
            for line, attr in _private_attributes(path, bound):
                found.append(f"(c) {rel}:{line}: {m} reaches the private {attr} of kernels/")
    return list(dict.fromkeys(found))  # one line per finding, though a line imports many names


# --- the tree itself ------------------------------------------------------------------------

def test_the_source_tree_keeps_the_architecture():
    assert violations(REPO) == []


def test_the_walk_sees_every_package_and_function_level_imports():
    known, edges = import_graph(REPO)
    assert {"kernels", "backends", "bench"} <= set(known)
    assert sum(map(len, edges.values())) > 50  # a walk that found nothing would pass (a) too


# --- the checker, on small planted trees ---------------------------------------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return tmp_path


def test_a_clean_tree_passes(tmp_path):
    root = _tree(tmp_path, {
        "kernels/__init__.py": "from .ops import OPS\nfrom . import gemv\n",
        "kernels/ops.py": "OPS = {}\n",
        "kernels/gemv/__init__.py": "from .impl import run\n",
        "kernels/gemv/impl.py": "from ..ops import OPS\nfrom . import helper\nimport backends\n",
        "kernels/gemv/helper.py": "",
        "backends/__init__.py": "from .cpu import CPU\n",
        "backends/cpu.py": "CPU = 1\n",
        "bench/runner.py": "from kernels import OPS\nfrom backends import CPU\n",
        "bench/cli/__init__.py": "from . import run\n\ndef main():\n    pass\n",
        "bench/cli/__main__.py": "from bench.cli import main\n",
        "bench/cli/run.py": "from . import common\nfrom ..runner import OPS\n",
        "bench/cli/common.py": "",
    })
    assert violations(root) == []


def test_a_package_that_re_exports_its_submodules_is_no_cycle(tmp_path):
    root = _tree(tmp_path, {
        "bench/report/__init__.py": "from .table import table\nfrom .plot import plot\n",
        "bench/report/table.py": "def table():\n    pass\n",
        "bench/report/plot.py": "from . import table\nfrom .table import table as t\n",
    })
    assert violations(root) == []


@pytest.mark.parametrize("files, rule, needle", [
    ({"bench/a.py": "from . import b\n", "bench/b.py": "from . import a\n"},
     "(a)", "bench.a -> bench.b"),
    ({"bench/a.py": "def f():\n    from .b import x\n", "bench/b.py": "import bench.a\n"},
     "(a)", "bench.b -> bench.a"),
    ({"bench/a.py": "from bench.c import x\n", "bench/b.py": "from bench import a\n",
      "bench/c.py": "def f():\n    from .b import y\n"}, "(a)", "bench.c -> bench.b"),
    ({"bench/pkg/__init__.py": "from .sub import f\nX = 1\n",
      "bench/pkg/sub.py": "from . import X\n\ndef f():\n    pass\n"},
     "(a)", "bench.pkg.sub -> bench.pkg"),
    ({"bench/a.py": "from . import a\n"}, "(a)", "bench.a -> bench.a"),
    ({"kernels/x.py": "def f():\n    import bench.runner\n", "bench/runner.py": ""},
     "(b)", "kernels.x imports bench.runner"),
    ({"backends/cpu.py": "from bench.timing import t\n", "bench/timing.py": ""},
     "(b)", "backends.cpu imports bench.timing"),
    ({"backends/cpu.py": "from kernels import OPS\n"}, "(b)", "backends/ knows no ops"),
    ({"kernels/gemv.py": "_k = 1\n", "bench/sass.py": "from kernels.gemv import _k\n"},
     "(c)", "private _k"),
    ({"kernels/_util.py": "", "bench/sass.py": "import kernels._util\n"},
     "(c)", "private _util"),
    ({"kernels/gemv.py": "", "bench/sass.py": "from kernels import gemv\nj = gemv._w4.jit_fn\n"},
     "(c)", "private gemv._w4"),
    ({"bench/runner.py": "def f():\n    from .cli import common\n", "bench/cli/common.py": ""},
     "(d)", "only the CLI imports the CLI"),
    ({"bench/cli/__init__.py": "from . import run\nX = 1\n",
      "bench/cli/run.py": "def f():\n    from bench.cli import X\n"}, "(d)", "never its __init__"),
    ({"bench/runner.py": "from .report.table import t\n", "bench/report/table.py": ""},
     "(d)", "front-end bench.report.table"),
])
def test_a_planted_violation_is_found(tmp_path, files, rule, needle):
    found = violations(_tree(tmp_path, files))
    assert any(f.startswith(rule) and needle in f for f in found), found
