"""MoE permutation on CPU: aot kernels (csrc/moe_permute.cc) for the grouped expert path.

  sort_plan(experts_TK, E)          -> (order_A, counts_E): stable counting sort, O(A + E), no grad
  sort_permute(x_TH, experts_TK, E) -> (x_AH, order_A, counts_E)   (= reference.sort_permute)
  sort_unpermute(x_AH, order_A, weights_TK) -> y_TH                 (= reference.sort_unpermute)
Backward passes are gathers through the inverse permutation (every output row written once): no
scatter-add. Built by ops._build on first import. float32 math; other float dtypes are computed in
float32 and cast back, like the reference.
"""
import numpy as np
import mindspore as ms
from mindspore import ops, Tensor

from ops._build import KERNELS

_LIB = str(KERNELS["moe"].ensure_built())


def _no_grad_bprop(experts, like, out, dout):
    return ops.zeros_like(experts), ops.zeros_like(like)


_PLAN = ops.Custom(f"{_LIB}:MoeSortPlan", out_shape=lambda ex, like: ([ex[0] * ex[1]], like),
                   out_dtype=lambda ex, like: (ex, like), func_type="aot", bprop=_no_grad_bprop)

_PERMUTE_BWD = ops.Custom(f"{_LIB}:MoePermuteBwd", out_shape=lambda x, order, dxs: x,
                          out_dtype=lambda x, order, dxs: x, func_type="aot")


def _permute_bprop(x, order, out, dout):
    return _PERMUTE_BWD(x, order, dout), ops.zeros_like(order)


_PERMUTE = ops.Custom(f"{_LIB}:MoePermute", out_shape=lambda x, order: [order[0], x[1]],
                      out_dtype=lambda x, order: x, func_type="aot", bprop=_permute_bprop)

_UNPERMUTE_BWD = ops.Custom(f"{_LIB}:MoeUnpermuteBwd", out_shape=lambda xs, order, w, dy: (xs, w),
                            out_dtype=lambda xs, order, w, dy: (xs, w), func_type="aot")


def _unpermute_bprop(xs, order, w, out, dout):
    dxs, dw = _UNPERMUTE_BWD(xs, order, w, dout)
    return dxs, ops.zeros_like(order), dw


_UNPERMUTE = ops.Custom(f"{_LIB}:MoeUnpermute", out_shape=lambda xs, order, w: [w[0], xs[1]],
                        out_dtype=lambda xs, order, w: xs, func_type="aot", bprop=_unpermute_bprop)


def _f32(x):
    return x if x.dtype == ms.float32 else ops.cast(x, ms.float32)


def sort_plan(experts_TK, num_experts):
    """(order_A int32 assignment of each expert-sorted row, counts_E int32), no gradients."""
    ex = experts_TK if experts_TK.dtype == ms.int32 else ops.cast(experts_TK, ms.int32)
    order_A, counts_E = _PLAN(ex, Tensor(np.zeros(num_experts, np.int32)))
    return ops.stop_gradient(order_A), ops.stop_gradient(counts_E)


def sort_permute(x_TH, experts_TK, num_experts):
    """-> (x_AH rows grouped by expert, order_A int32, counts_E int32), like reference.sort_permute."""
    order_A, counts_E = sort_plan(experts_TK, num_experts)
    x_AH = _PERMUTE(_f32(x_TH), order_A)
    return (x_AH if x_TH.dtype == ms.float32 else ops.cast(x_AH, x_TH.dtype)), order_A, counts_E


def sort_unpermute(x_AH, order_A, weights_TK):
    """y[t] = sum_k weights[t, k] * x_AH[row of (t, k)] -> [T, H] in x's dtype."""
    y_TH = _UNPERMUTE(_f32(x_AH), order_A, _f32(weights_TK))
    return y_TH if x_AH.dtype == ms.float32 else ops.cast(y_TH, x_AH.dtype)
