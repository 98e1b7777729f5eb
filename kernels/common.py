"""What every op family shares: element sizes, the accuracy an fp32-accumulating kernel is held
to, and the GPU's SM count that launch policies size their grids by."""
from __future__ import annotations

from functools import lru_cache

import torch

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

# ‖out − ref‖ / ‖ref‖ allowed for an op that accumulates in fp32 and writes its output in the
# input dtype: a bf16 output alone rounds at ~2e-3.
TOLERANCE: dict[torch.dtype, float] = {BF16: 1e-2, F16: 2e-3, F32: 1e-4}


def esize(dtype: torch.dtype) -> int:
    """Bytes of one element of `dtype`."""
    return torch.empty((), dtype=dtype).element_size()


def num_sms(device: torch.device) -> int | None:
    """Streaming multiprocessors of a CUDA device; None elsewhere (the CPU, the Triton
    interpreter): there is no GPU to fill, so split-K and split-KV policies do not split."""
    if device.type != "cuda":
        return None
    return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())


@lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


FLOATS = (F16, BF16, F32)


def check_out(name: str, out: torch.Tensor | None, shape: tuple[int, ...], device: torch.device,
              dtypes: tuple[torch.dtype, ...] = FLOATS) -> None:
    """ValueError unless `out`, where given, is a tensor of `shape`, one of `dtypes`, on
    `device`: kernels store into it through its pointer, so a smaller one would be written past
    its end, and torch's `out=` ops would resize it or fail with their own error."""
    if out is None:
        return
    if tuple(out.shape) != tuple(shape) or out.dtype not in dtypes or out.device != device:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        got = f"{str(out.dtype).removeprefix('torch.')}{list(out.shape)} on {out.device}"
        raise ValueError(f"{name}: out must be {names} {list(shape)} on {device}, got {got}")


# sm_90's shared memory a block may opt into (227 KiB): the limit where no device says otherwise
SM90_SMEM_BYTES = 232448


def smem_per_block(device: torch.device | None) -> int:
    """Shared memory a CUDA block may use on `device` (its opt-in maximum); elsewhere sm_90's,
    which the offline sm_90 compiles (bench.gpucheck.sass) are checked against."""
    if device is None or device.type != "cuda":
        return SM90_SMEM_BYTES
    return _cuda_smem(device.index if device.index is not None else torch.cuda.current_device())


@lru_cache(maxsize=None)
def _cuda_smem(index: int) -> int:
    props = torch.cuda.get_device_properties(index)
    return int(getattr(props, "shared_memory_per_block_optin", SM90_SMEM_BYTES))


__all__ = ["TOLERANCE", "FLOATS", "check_out", "esize", "num_sms", "smem_per_block",
           "SM90_SMEM_BYTES"]
