"""Probe and collective byte counts pinned by hand."""
from __future__ import annotations

import torch

from kernels import OPS


def test_probe_bytes_by_hand():
    copy, read = OPS["copy"], OPS["read"]
    assert copy.bytes_moved(copy.shape(N=1001), torch.float16) == 4004   # 1001*2 read + written
    assert copy.bytes_moved(copy.shape(N=1001), torch.bfloat16) == 4004
    assert read.bytes_moved(read.shape(N=1001), torch.float32) == 4008   # 1001*4 read, 4 written
    assert read.bytes_moved(read.shape(N=1001), torch.float16) == 2006


def test_allreduce_bytes_are_the_message():
    """nccl-tests' `bytes`: the message size, whatever the dtype or world size."""
    op = OPS["allreduce"]
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        assert op.bytes_moved(op.shape(bytes=4096, world_size=4), dt) == 4096
