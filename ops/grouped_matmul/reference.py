"""Grouped matmul, plain MindSpore ops: y[rows of e] = x[rows of e] @ w[e]^T, fp32.

Row r belongs to expert e iff start_e <= r < end_e (end = cumsum(counts), start = end - counts);
rows past sum(counts) belong to no expert and give 0. Every expert is applied to every row and the
result masked (E times the FLOPs of the grouped product): obvious, static shapes, GRAPH-mode
friendly, autodiff gives dx and dw. Legend: A rows, K in, N out, E experts.
"""
import numpy as np
import mindspore as ms
from mindspore import Tensor, ops

_BMM_T = ops.BatchMatMul(transpose_b=True)


def grouped_matmul(x_AK, w_ENK, counts_E):
    """x_AK [A, K], w_ENK [E, N, K], counts_E [E] int -> y_AN [A, N] in x's dtype."""
    a = x_AK.shape[0]
    end_E = ops.cumsum(counts_E.astype(ms.int32), 0)
    start_E = end_E - counts_E.astype(ms.int32)
    row_A = Tensor(np.arange(a, dtype=np.int32))
    mask_EA = ops.logical_and(row_A[None, :] >= start_E[:, None], row_A[None, :] < end_E[:, None])
    x_EAK = x_AK.astype(ms.float32)[None] * mask_EA.astype(ms.float32)[:, :, None]
    y_EAN = _BMM_T(x_EAK, w_ENK.astype(ms.float32))
    return y_EAN.sum(0).astype(x_AK.dtype)
