"""What the suites hold: smoke is every op at each of its own smoke cases (both dtypes where it
lists two), and a collective's host need counts every rank the machine runs."""
import torch

from bench.case import Case, host_need
from bench.suites import HOST_FRACTION, SuiteContext, cases_for
from kernels import OPS


def test_smoke_runs_every_op_at_each_of_its_smoke_cases():
    """The CI's one pass over every impl: an op that lists an fp32 and a bf16 smoke case gets
    both (an impl's fp32 path is code of its own)."""
    got = [(c.op, c.shape, c.dtype) for c in cases_for("smoke", SuiteContext("cpu"))]
    want = [(name, shape, dtype) for name, op in OPS.items() for shape, dtype in op.smoke]
    assert got == want
    assert any(len(op.smoke) > 1 for op in OPS.values())


def test_a_collectives_host_need_is_counted_for_every_rank():
    """Each rank of a CPU all-reduce is a process on this host: 8 ranks need 8x one rank's
    memory, so a case that one rank's need would fit is left out when all of them do not."""
    from kernels.collectives.ops import AllreduceShape

    def case(ranks):
        return Case("allreduce", AllreduceShape(bytes=1 << 26, world_size=ranks), torch.float32)

    def need(ranks):  # one rank's
        return host_need(OPS["allreduce"], case(ranks).shape, torch.float32, "cpu")
    mem = int(4 * need(4) / HOST_FRACTION) + 1  # room for 4 ranks
    assert need(8) <= HOST_FRACTION * mem < 8 * need(8)  # one rank of 8 fits, eight do not
    ctx = SuiteContext("cpu", memory_bytes=mem)
    assert ctx.fits_host(case(4)) and not ctx.fits_host(case(8))
