#!/usr/bin/env bash
# One-call GPU device check: CUDA tests, the gpu-check suite, the Nsight Compute byte check (the
# roof and L2 flush comparison with --with roof flush). Runs from a fresh checkout with the machine's own python3 (torch + triton),
# uses the project through PYTHONPATH, installs only the peers carried in .whl/ (into a temporary
# folder), writes under $OUT (else results/device-check-<time>/). See docs/device-check.md.
#   bench/device_check.sh             on a GPU machine (at most 7 minutes)
#   bench/device_check.sh --dry-run   same steps on the CPU, tiny shapes (CI runs this)
# Options: see `bench/device_check.sh --help`. Exit 0: every step passed; 1: see the summary.
set -u
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 2
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" -m bench.gpucheck.check "$@"
