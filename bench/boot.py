"""The first lines of a worker process (bench/isolation.py's Worker starts every case worker and
every collective rank this way):

    python /path/to/bench/boot.py MODULE:FUNCTION JOB_FD MESSAGE_FD

It takes the parent's sys.path, then calls the entry, which reads the two pipe descriptors from
sys.argv[1:]. It is run by file path, not with -m, so that nothing of bench/ or kernels/ is
imported before sys.path is the parent's: the worker imports the same checkout as the parent,
whatever its own default path would find first (another checkout, an installed copy).
"""
import os
import sys


def main() -> None:
    del sys.path[0]  # this file's folder, bench/: no module there may stand in for the stdlib
    if sys.platform.startswith("linux"):  # die with the parent from the first line: an entry
        try:  # imports torch for seconds before its own watch (isolation._die_with_parent) starts
            import ctypes
            ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
        except (OSError, AttributeError):
            pass
        parent = os.environ.get("DECODEWALL_PARENT")
        if parent and os.getppid() != int(parent):  # it died before prctl took effect
            os._exit(1)
    import importlib
    import json
    sys.path[:] = json.loads(os.environ["DECODEWALL_WORKER_PATH"])
    module, func = sys.argv.pop(1).split(":")
    getattr(importlib.import_module(module), func)()


if __name__ == "__main__":
    main()
