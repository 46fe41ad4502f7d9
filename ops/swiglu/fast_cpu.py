"""SwiGLU on CPU: fused aot kernels y = silu(g) * u and (dg, du) (sigmoid recomputed, nothing saved).

Kernel: csrc/swiglu.cc (built by ops._build on first import). float32 math; other float dtypes are
computed in float32 and cast back, like the reference.
"""
import mindspore as ms
from mindspore import ops

from ops._build import KERNELS

_LIB = str(KERNELS["swiglu"].ensure_built())

_BWD = ops.Custom(f"{_LIB}:SwigluBwd", out_shape=lambda g, u, dy: (g, u),
                  out_dtype=lambda g, u, dy: (g, u), func_type="aot")


def _bprop(g, u, out, dout):
    dg, du = _BWD(g, u, dout)
    return dg, du


_FWD = ops.Custom(f"{_LIB}:SwigluFwd", out_shape=lambda g, u: g, out_dtype=lambda g, u: g,
                  func_type="aot", bprop=_bprop)


def swiglu(gate, up):
    """silu(gate) * up (same shapes), in gate's dtype."""
    if gate.shape != up.shape:
        raise ValueError(f"gate/up shapes {gate.shape} vs {up.shape}: must be equal")
    g32 = gate if gate.dtype == ms.float32 else ops.cast(gate, ms.float32)
    u32 = up if up.dtype == ms.float32 else ops.cast(up, ms.float32)
    y = _FWD(g32, u32)
    return y if gate.dtype == ms.float32 else ops.cast(y, gate.dtype)
