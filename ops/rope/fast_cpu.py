"""RoPE on CPU: fused aot kernels out = x*cos + rot(x)*sin and its exact backward (dx, dcos, dsin).

Kernel: csrc/rope.cc (built by ops._build on first import), one entry pair per layout. x [B, N, S, D];
cos/sin [B or 1, 1, S, D] (other broadcastable table shapes are expanded first). float32 math; x of
another float dtype is computed in float32 and cast back, like the reference.
"""
import mindspore as ms
from mindspore import ops

from ops._build import KERNELS

_LIB = str(KERNELS["rope"].ensure_built())


def _make(name):
    bwd = ops.Custom(f"{_LIB}:Rope{name}Bwd", out_shape=lambda x, c, s, dy: (x, c, s),
                     out_dtype=lambda x, c, s, dy: (x, c, s), func_type="aot")

    def bprop(x, c, s, out, dout):
        return bwd(x, c, s, dout)

    return ops.Custom(f"{_LIB}:Rope{name}Fwd", out_shape=lambda x, c, s: x,
                      out_dtype=lambda x, c, s: x, func_type="aot", bprop=bprop)


_FWD = {"rotate_half": _make("Half"), "interleaved": _make("Inter")}


def apply_rope(x, cos, sin, layout="rotate_half"):
    """Rotate x [B, N, S, D] by cos/sin [B|1, 1, S, D] (tables from ops.rope.rotary_tables)."""
    b, _, s, d = x.shape
    ok = cos.ndim == 4 and cos.shape[1] == 1 and cos.shape[0] in (1, b) and cos.shape[2:] == (s, d)
    if not ok or sin.shape != cos.shape:
        cos = ops.broadcast_to(cos, (b, 1, s, d))
        sin = ops.broadcast_to(sin, (b, 1, s, d))
    x32 = x if x.dtype == ms.float32 else ops.cast(x, ms.float32)
    out = _FWD[layout](x32, cos.astype(ms.float32), sin.astype(ms.float32))
    return out if x.dtype == ms.float32 else ops.cast(out, x.dtype)
