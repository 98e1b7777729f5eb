"""bench/plugins.py in-process: every way a plugin file can fail to load is one UsageError line
naming the file and why (never the plugin's traceback or its terminal escapes), and what a
plugin registers is not a built-in (only built-ins set the roof) nor a replacement of one."""
import tempfile
import time

import pytest

from bench.errors import UsageError
from bench.isolation import preflight_plugins as preflight
from bench.plugins import load_plugins
from kernels import OPS
from tests import helpers


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """plugin(name, body) -> the path of a plugin file; the ops' impls are put back after."""
    for op in OPS.values():
        monkeypatch.setattr(op, "impls", dict(op.impls))

    def make(name, body):
        p = tmp_path / name
        p.write_text(body)
        return str(p)
    return make


def why(paths):
    with pytest.raises(UsageError) as e:
        load_plugins(paths)
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def test_a_plugins_impl_is_not_a_builtin(plugin):
    p = plugin("mine.py", "from kernels import register_impl\n"
               "@register_impl('read', 'plug_sum', backends=['cpu'])\n"
               "def plug_sum(src):\n    return src.sum()\n")
    load_plugins([p])
    assert OPS["read"].impls["plug_sum"].builtin is False
    assert OPS["read"].impls["torch_sum"].builtin is True


def test_a_plugin_reusing_an_impl_name_is_refused_not_a_replacement(plugin):
    """A plugin's 'torch_sum' would silently stand in for the built-in (and set the roof)."""
    real = OPS["read"].impls["torch_sum"]
    p = plugin("clash.py", "from kernels import register_impl\n"
               "@register_impl('read', 'torch_sum', backends=['cpu'])\n"
               "def f(src):\n    return src.sum() * 0\n")
    msg = why([p])
    assert msg.startswith(f"plugin {p} failed to load: ValueError: read already has an impl "
                          "named 'torch_sum'"), msg
    assert OPS["read"].impls["torch_sum"] is real


@pytest.mark.parametrize("body, expect", [
    ("raise RuntimeError('first line\\nsecond line')\n", "RuntimeError: first line"),
    ("def broken(:\n", "SyntaxError: "),
    ("import sys\nsys.exit(3)\n", "it called sys.exit(3)"),
    ("import sys\nsys.exit()\n", "it called sys.exit()"),
    ("raise KeyError\n", "KeyError"),
    ("raise ValueError('\\x1b]0;pwned\\x07red \\x1b[31mtext\\x7f\\x9b2J')\n",
     "ValueError: red text"),
    ("raise ValueError('a\\ud800b')\n", "ValueError: a?b"),  # a lone surrogate: unprintable
    # an exception whose str() raises: named by its type, not an internal error
    ("class E(Exception):\n    def __str__(self):\n        raise ValueError('no')\nraise E()\n",
     "E"),
])
def test_a_broken_plugin_is_one_line_naming_it_and_why(plugin, body, expect):
    p = plugin("bad.py", body)
    msg = why([p])
    assert msg.startswith(f"plugin {p} failed to load: {expect}"), msg
    assert not any(c in msg for c in "\x1b\x07\x7f\x9b"), repr(msg)
    assert "pwned" not in msg and "2J" not in msg  # escape sequences go whole


def test_paths_that_are_no_plugin_file(plugin, tmp_path):
    p = plugin("ok.py", "")
    assert why([" "]) == "--plugin is empty: give a Python file"
    assert why([str(tmp_path)]) == f"plugin {tmp_path}: is a directory, not a Python file"
    assert why([str(tmp_path / "nope.py")]) == f"plugin {tmp_path / 'nope.py'}: no such file"
    assert why(["/dev/null"]) == "plugin /dev/null: not a regular file"
    assert why([p, p]) == f"plugin {p} is given twice"


def test_ctrl_c_while_a_plugin_loads_is_an_interrupt(plugin):
    p = plugin("slow.py", "raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        load_plugins([p])


def test_a_plugin_with_a_dataclass_and_an_odd_file_name_loads(plugin):
    """The module is in sys.modules while it runs (dataclasses look a class's module up there,
    under `from __future__ import annotations`), named by the file's stem made an identifier."""
    p = plugin("my kern.v2.py", "from __future__ import annotations\n"
               "from dataclasses import dataclass\n"
               "from kernels import register_impl\n\n"
               "@dataclass\nclass Tile:\n    rows: int\n\n"
               "@register_impl('read', 'tiled_sum', backends=['cpu'])\n"
               "def tiled_sum(src):\n    return src.sum() * Tile(1).rows\n")
    load_plugins([p])
    impl = OPS["read"].impls["tiled_sum"]
    import sys
    assert impl.fn.__module__.isidentifier() and impl.fn.__module__ in sys.modules


def test_a_plugin_declaring_a_dtype_its_op_does_not_take_is_refused(plugin):
    p = plugin("bad_dtype.py", "from kernels import register_impl\n"
               "@register_impl('gemv_bf16', 'int8_gemv', dtypes=['int8'])\n"
               "def f(x, w):\n    return x @ w.T\n")
    assert "gemv_bf16 does not take dtype int8" in why([p])


@pytest.mark.parametrize("body, why_", [
    ("import os\nos._exit(7)\n", "ended its process (exit code 7)"),
    ("import os\nos._exit(0)\n", "ended its process (exit code 0)"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", "SIGSEGV"),
], ids=["exit-7", "exit-0", "segfault"])
def test_a_plugin_that_ends_its_process_at_import_is_named_not_fatal(plugin, body, why_):
    """Imported in this process, such a plugin would end the CLI with no word; the preflight
    child takes the blow and the CLI names the file (the second, here: the first is fine)."""
    ok = plugin("fine.py", "X = 1\n")
    bad = plugin("bad.py", body)
    with pytest.raises(UsageError) as e:
        preflight([ok, bad])
    assert str(e.value).startswith(f"plugin {bad} failed to load: importing it ended its process")
    assert why_ in str(e.value)


def test_what_a_plugin_starts_at_import_ends_with_the_preflight(plugin, tmp_path):
    """A process a plugin starts as it is imported (a compile server, a helper) belongs to the
    throwaway child: it is killed with it, not left running without a parent."""
    pid_file = tmp_path / "pid"
    p = plugin("starts.py", "import subprocess\n"
               "proc = subprocess.Popen(['sleep', '600'])\n"
               f"open({str(pid_file)!r}, 'w').write(str(proc.pid))\n")
    preflight([p])
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[-1].startswith("Z"):  # killed, not yet reaped
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"process {pid} the plugin started is still running")


def test_the_preflight_leaves_errors_to_load_plugins_and_good_plugins_alone(plugin, monkeypatch,
                                                                           tmp_path):
    """A plugin that raises (or calls sys.exit) is load_plugins' to name; a good one passes;
    the progress file is removed either way."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    tempfile.tempdir = None
    try:
        good = plugin("good.py", "import threading, time\n"
                      "threading.Thread(target=time.sleep, args=(600,)).start()\n")
        raising = plugin("raising.py", "raise RuntimeError('no')\n")
        exiting = plugin("exiting.py", "import sys\nsys.exit(3)\n")
        started = time.monotonic()
        preflight([good, raising, exiting])  # the thread it started does not hold the child
        assert time.monotonic() - started < 60
        assert not list(tmp_path.glob("decodewall-plugins-*"))
    finally:
        tempfile.tempdir = None


def test_the_cli_names_a_plugin_that_ends_its_process(tmp_path):
    bad = tmp_path / "dies.py"
    bad.write_text("import os\nos._exit(9)\n")
    r = helpers.run_cli("run", "--list", "--plugin", str(bad), timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"decodewall: error: plugin {bad} failed to load: importing it ended its process (exit "
        "code 9)"]


def test_a_preflight_child_that_ends_before_any_plugin_blames_none(plugin, monkeypatch, tmp_path):
    """The preflight child can end before it imports the first plugin (its interpreter or torch
    failing as it starts): no plugin is named, and the CLI's own import finds out why."""
    import bench.isolation as iso
    boot = tmp_path / "boot.py"
    boot.write_text("import os\nos._exit(5)\n")
    monkeypatch.setattr(iso, "BOOT", boot)
    assert preflight([plugin("fine.py", "X = 1\n")]) is None


def test_two_plugin_files_of_one_name_are_two_modules(plugin, tmp_path):
    """a/impls.py and b/impls.py each stay their own module in sys.modules, where pickle (and
    dataclasses, typing) look a plugin's classes up: an object of either pickles and comes back."""
    import pickle
    import sys
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    paths = []
    for d in ("a", "b"):
        paths.append(plugin(f"{d}/impls.py", "from dataclasses import dataclass\n"
                            "from kernels import register_impl\n\n"
                            f"@dataclass\nclass Tile_{d}:\n    rows: int\n\n"
                            f"@register_impl('read', 'sum_{d}', backends=['cpu'])\n"
                            f"def sum_{d}(src):\n    return src.sum() * Tile_{d}(1).rows\n"))
    load_plugins(paths)
    for d, path in zip("ab", paths):
        module = sys.modules[OPS["read"].impls[f"sum_{d}"].fn.__module__]
        assert module.__file__ == path
        tile = getattr(module, f"Tile_{d}")(3)
        assert pickle.loads(pickle.dumps(tile)) == tile


def test_what_a_plugin_prints_in_the_preflight_is_dropped(plugin, capfd):
    """The preflight child's stdout and stderr go nowhere: the CLI's own import of the plugin
    prints it once, and under --json stdout holds records only."""
    p = plugin("chatty.py", "import os, sys\nprint('to stdout')\n"
               "print('to stderr', file=sys.stderr)\nos.write(1, b'to fd 1\\n')\n")
    capfd.readouterr()
    preflight([p])
    assert capfd.readouterr() == ("", "")

