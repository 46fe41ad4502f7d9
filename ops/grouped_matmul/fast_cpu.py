"""Grouped matmul on CPU: aot kernels calling oneDNN's dnnl_sgemm once per expert (or piece of one),
spread over std::threads with equal FLOPs per thread (csrc/grouped_matmul.cc).

GmmFwd(x, w, counts) -> y; GmmBwd(x, w, counts, dy) -> (dx, dw) in one call (its threads share the
dx and dw GEMMs); counts get no gradient. Built by ops._build on first import, linked against the
libdnnl.so.3 in the mindspore wheel. float32 math; other float dtypes are computed in float32 and
cast back, like the reference.
"""
import mindspore as ms
from mindspore import ops

from ops._build import KERNELS

_LIB = str(KERNELS["grouped_matmul"].ensure_built())

_BWD = ops.Custom(f"{_LIB}:GmmBwd", out_shape=lambda x, w, c, dy: (x, w),
                  out_dtype=lambda x, w, c, dy: (x, w), func_type="aot")


def _bprop(x, w, counts, out, dout):
    dx, dw = _BWD(x, w, counts, dout)
    return dx, dw, ops.zeros_like(counts)


_FWD = ops.Custom(f"{_LIB}:GmmFwd", out_shape=lambda x, w, c: [x[0], w[1]],
                  out_dtype=lambda x, w, c: x, func_type="aot", bprop=_bprop)


def grouped_matmul(x_AK, w_ENK, counts_E):
    """x_AK [A, K], w_ENK [E, N, K], counts_E [E] (>= 0) -> y_AN [A, N] in x's dtype."""
    x32 = x_AK if x_AK.dtype == ms.float32 else ops.cast(x_AK, ms.float32)
    w32 = w_ENK if w_ENK.dtype == ms.float32 else ops.cast(w_ENK, ms.float32)
    c32 = counts_E if counts_E.dtype == ms.int32 else ops.cast(counts_E, ms.int32)
    y = _FWD(x32, w32, c32)
    return y if x_AK.dtype == ms.float32 else ops.cast(y, x_AK.dtype)
