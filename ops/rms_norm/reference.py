"""RMSNorm, plain MindSpore ops: y = x / sqrt(mean(x^2) + eps) * weight, computed in fp32."""
import mindspore as ms
from mindspore import ops


def rms_norm(x, weight, eps=1e-5):
    """x [..., H], weight [H] -> same shape and dtype as x."""
    x32 = x.astype(ms.float32)
    var = (x32 * x32).mean(-1, keep_dims=True)
    y = x32 * ops.rsqrt(var + eps) * weight.astype(ms.float32)
    return y.astype(x.dtype)
