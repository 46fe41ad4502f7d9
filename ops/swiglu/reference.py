"""SwiGLU activation, plain MindSpore ops: silu(gate) * up (in fp32, returned in gate's dtype)."""
import mindspore as ms
from mindspore import ops


def swiglu(gate, up):
    g32 = gate.astype(ms.float32)
    return (g32 * ops.sigmoid(g32) * up.astype(ms.float32)).astype(gate.dtype)
