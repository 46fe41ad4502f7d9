"""SwiGLU MLP: down(silu(gate(x)) * up(x)), no biases (Pangu dense FFN and shared experts)."""
import mindspore as ms
from mindspore import nn

from ops.swiglu import swiglu, resolve_impl
from pangu.common.layers import Linear


class SwiGLUMLP(nn.Cell):
    """Parameter names gate_proj / up_proj / down_proj (serving layout)."""

    def __init__(self, hidden_size, intermediate_size, compute_dtype=ms.float32, impl="auto"):
        super().__init__()
        self.gate_proj = Linear(hidden_size, intermediate_size, False, compute_dtype, axes=("mlp", "embed"))
        self.up_proj = Linear(hidden_size, intermediate_size, False, compute_dtype, axes=("mlp", "embed"))
        self.down_proj = Linear(intermediate_size, hidden_size, False, compute_dtype, axes=("embed", "mlp"))
        self.impl = resolve_impl(impl)

    def construct(self, x):
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x), self.impl))
