"""RMSNorm on CPU: one fused aot kernel forward (saves rstd [R]) and one backward (dx, dw).

Kernel: csrc/rms_norm.cc (built by ops._build on first import). float32 math; other float dtypes are
computed in float32 and cast back, like the reference.
"""
import mindspore as ms
from mindspore import ops

from ops._build import KERNELS

_LIB = str(KERNELS["rms_norm"].ensure_built())

_BWD = ops.Custom(f"{_LIB}:RmsNormBwd", out_shape=lambda x, w, r, dy: (x, w),
                  out_dtype=lambda x, w, r, dy: (x, w), func_type="aot")


def _bprop(x, w, cfg, out, dout):
    """dx, dw from the saved rstd (out[1]); the rstd cotangent is ignored (never exposed)."""
    dx, dw = _BWD(x, w, out[1], dout[0])
    return dx, dw, ops.zeros_like(cfg)


_FWD = ops.Custom(f"{_LIB}:RmsNormFwd", out_shape=lambda x, w, cfg: (x, x[:-1]),
                  out_dtype=lambda x, w, cfg: (x, x), func_type="aot", bprop=_bprop)


def rms_norm(x, weight, eps=1e-5):
    """x [..., H], weight [H] -> x / sqrt(mean(x^2, -1) + eps) * weight, in x's dtype."""
    x32 = x if x.dtype == ms.float32 else ops.cast(x, ms.float32)
    w32 = weight if weight.dtype == ms.float32 else ops.cast(weight, ms.float32)
    y = _FWD(x32, w32, ms.Tensor([float(eps)], ms.float32))[0]
    return y if x.dtype == ms.float32 else ops.cast(y, x.dtype)
