"""The device check's first step, in a process of its own: which packages import, the torch and
Triton versions, and the backend's device, printed as one JSON line. A broken torch or driver ends
this process, not the check.

    python -m bench.gpucheck.env_probe cuda
"""
import importlib.util
import json
import sys


def main(backend: str) -> None:
    info = {"python": sys.version.split()[0], "executable": sys.executable}
    for m in ("torch", "triton", "numpy", "rich", "pytest", "pynvml", "jax"):
        info[m] = importlib.util.find_spec(m) is not None
    import torch
    info["torch_version"] = torch.__version__
    info["cuda_version"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    try:
        import triton
        info["triton_version"] = triton.__version__
    except Exception as e:
        info["triton_error"] = str(e)
    from backends import get_backend
    b = get_backend(backend)
    ok, why = b.available()
    info["backend_ok"], info["backend_why"] = ok, why
    if ok:
        info["device"] = b.device_info()
    print(json.dumps(info, default=str))


BACKEND_NAMES = ("cpu", "cuda", "xla")  # backends.BACKENDS, named here: torch not yet imported


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1].lower() not in BACKEND_NAMES:
        print(f"python -m bench.gpucheck.env_probe: error: expected one backend "
              f"({', '.join(BACKEND_NAMES)}), got {sys.argv[1:]!r}"[:300], file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])
