"""The one-call GPU device check (run by bench/device_check.sh) and the GPU tools beside it: the
Nsight Compute byte check (ncu.py) and the static instruction count of the Triton GEMVs compiled
for sm_90 without a GPU (sass.py)."""
