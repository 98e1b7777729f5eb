"""Two Python threads calling one CPU impl at once each get their own answer: the C kernels and
the chunked attention reuse scratch buffers across calls, and ctypes releases the GIL, so a
buffer shared between threads would be written by both calls at once."""
import threading

import pytest
import torch

from kernels import OPS, rel_err
from tests import helpers

# Large enough that calls overlap (each a fraction of a millisecond or more), small for the CI.
SHAPES = {"gemv_bf16": dict(M=4, N=512, K=2048), "gemv_w8": dict(M=4, N=512, K=2048),
          "gemv_w4": dict(M=2, N=512, K=2048, group_size=128),
          "paged_attention": dict(B=2, Hq=8, Hkv=2, D=128, context=1000),
          "paged_attention_kv8": dict(B=2, Hq=8, Hkv=2, D=128, context=1000)}
DTYPE = torch.float32

CASES = [pytest.param(op_name, impl.name, id=f"{op_name}-{impl.name}")
         for op_name in SHAPES for impl in OPS[op_name].impls.values()
         if impl.builtin and "cpu" in impl.backends and impl.kind != "triton"
         and DTYPE in impl.dtypes and not impl.known_issue]


@pytest.mark.parametrize("op_name, impl_name", CASES)
def test_two_threads_at_once_each_get_their_own_answer(op_name, impl_name):
    op = OPS[op_name]
    impl = op.impls[impl_name]
    shape = op.shape(**SHAPES[op_name])
    cases = [op.make_inputs(shape, DTYPE, "cpu", seed) for seed in (1, 2)]
    refs = [op.reference(*args) for args in cases]
    try:
        impl(*cases[0])
    except NotImplementedError as e:
        helpers.skip_if_machine_lacks(e)
    start, worst = threading.Barrier(2), [0.0, 0.0]

    def calls(i: int) -> None:
        start.wait()
        for _ in range(25):
            worst[i] = max(worst[i], rel_err(impl(*cases[i]), refs[i]))

    threads = [threading.Thread(target=calls, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(worst) <= op.tol(DTYPE), worst
