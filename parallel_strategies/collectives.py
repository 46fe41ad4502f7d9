"""Differentiable collectives for explicit tensor / expert / data parallelism (the Megatron pattern).

Each is a Cell with its own `bprop`, so the gradient of a sharded computation is exactly the gradient
of the single-process one. Communication runs over a named group (parallel_strategies.mesh); every
op works with MindSpore's CPU collectives and on Ascend (HCCL). On CPU, AllGather runs in the world
group only ("AllGather only support mccl_world_group on CPU"), so `AllGatherRows` gathers over a
sub-group as an AllReduce-sum of zero-padded rows (exact: every element is one rank's value plus zeros).

    CopyToGroup        forward identity            backward AllReduce-sum   (input of a column-parallel
                                                                             matmul: partial input grads)
    ReduceFromGroup    forward AllReduce-sum       backward identity        (output of a row-parallel
                                                                             matmul: partial sums)
    GatherFromGroup    forward AllGather (dim 0)   backward AllReduce, keep own rows
                                                   (= ReduceScatter, which has no CPU kernel)
    ScatterFromGroup   forward AllReduce, keep own rows (= ReduceScatter)   backward AllGather
    AllReduceMax       forward max over the group  no gradient (the max of a log-sum-exp is a constant)
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops


def native_all_gather(group: str) -> bool:
    """Whether `group` has an AllGather kernel: every group on Ascend, the world group only on CPU."""
    from mindspore.communication import GlobalComm

    return ms.get_context("device_target") != "CPU" or group == GlobalComm.WORLD_COMM_GROUP


class AllGatherRows(nn.Cell):
    """Every rank's x concatenated along dim 0 in group-rank order (no gradient of its own: used inside
    the Cells below, whose bprops say what the gradient is)."""

    def __init__(self, group: str, size: int, rank: int):
        super().__init__()
        self.native = native_all_gather(group)
        self.size = size
        if self.native:
            self.all_gather = ops.AllGather(group)
        else:
            self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM, group)
            self.one_hot = Tensor(np.eye(size, dtype=np.float32)[rank])

    def construct(self, x):
        if self.native:
            return self.all_gather(x)
        mask = self.one_hot.astype(x.dtype).reshape((self.size,) + (1,) * x.ndim)
        padded = (mask * x[None]).reshape((self.size * x.shape[0],) + x.shape[1:])
        return self.all_reduce(padded)


class CopyToGroup(nn.Cell):
    """Identity forward; the gradient is summed over the group (every rank fed the same x to its shard)."""

    def __init__(self, group: str):
        super().__init__()
        self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM, group)

    def construct(self, x):
        return x

    def bprop(self, x, out, dout):
        return (self.all_reduce(dout),)


class ReduceFromGroup(nn.Cell):
    """Sum over the group forward (partial sums of a row-parallel matmul); identity backward."""

    def __init__(self, group: str):
        super().__init__()
        self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM, group)

    def construct(self, x):
        return self.all_reduce(x)

    def bprop(self, x, out, dout):
        return (dout,)


class _RowCollectives(nn.Cell):
    """Gather (all ranks' rows, in group-rank order) and its adjoint, reduce-scatter (sum over the group,
    keep this rank's rows): the two Cells below are each other's backward."""

    def __init__(self, group: str, size: int, rank: int):
        super().__init__()
        self.all_gather = AllGatherRows(group, size, rank)
        self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM, group)
        self.size, self.rank = size, rank

    def gather(self, x):
        return self.all_gather(x)

    def reduce_scatter(self, x):
        rows = x.shape[0] // self.size
        return self.all_reduce(x)[self.rank * rows:(self.rank + 1) * rows]


class GatherFromGroup(_RowCollectives):
    """Concatenate every rank's x along dim 0 (rank order); backward: the summed gradient of own rows."""

    def construct(self, x):
        return self.gather(x)

    def bprop(self, x, out, dout):
        return (self.reduce_scatter(dout),)


class ScatterFromGroup(_RowCollectives):
    """Sum over the group and keep this rank's rows (ReduceScatter); backward: AllGather of the gradient."""

    def construct(self, x):
        return self.reduce_scatter(x)

    def bprop(self, x, out, dout):
        return (self.gather(dout),)


class AllReduceMax(nn.Cell):
    """Element-wise max over the group, no gradient (AllGather + max: CPU AllReduce sums only)."""

    def __init__(self, group: str, size: int, rank: int):
        super().__init__()
        self.all_gather = AllGatherRows(group, size, rank)
        self.size = size

    def construct(self, x):
        gathered = self.all_gather(ops.stop_gradient(x))
        return ops.stop_gradient(gathered.reshape((self.size,) + x.shape).max(0))
