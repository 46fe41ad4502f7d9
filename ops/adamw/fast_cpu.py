"""AdamW update and sum of squares on CPU: one-pass aot kernels (csrc/adamw.cc, built by ops._build on
first import). Optimiser ops: no gradients, so no bprop."""
import mindspore as ms
from mindspore import ops

from ops._build import KERNELS

_LIB = str(KERNELS["adamw"].ensure_built())

_UPDATE = ops.Custom(f"{_LIB}:AdamwUpdate", out_shape=lambda p, m, v, g, h: (p, m, v),
                     out_dtype=lambda p, m, v, g, h: (p, m, v), func_type="aot")
_SUM_SQUARES = ops.Custom(f"{_LIB}:SumSquares", out_shape=lambda x: [1], out_dtype=lambda x: x,
                          func_type="aot")


def adamw_update(param, m, v, grad, hyper):
    """-> (param', m', v'); fp32 state, grad of any float dtype."""
    g32 = grad if grad.dtype == ms.float32 else ops.cast(grad, ms.float32)
    return _UPDATE(param, m, v, g32, hyper)


def sum_squares(x):
    """sum(x ** 2) as a fp32 scalar."""
    x32 = x if x.dtype == ms.float32 else ops.cast(x, ms.float32)
    return _SUM_SQUARES(x32).reshape(())
