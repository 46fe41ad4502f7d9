"""Basic parametrised layers with serving-layout parameter names, logical axes and compute-dtype casting.

Parameters are always fp32 ("master" weights); `compute_dtype` (ms.float32 | ms.bfloat16) is the
dtype matmul inputs are cast to. Parameters are created by `param` from an initializer, so a model
can be instantiated at its full published size without memory to read its parameter names, shapes
and logical axes (`pangu.spec.ModelSpec.parameters`); `pangu.common.init` gives them their values.

Logical axes (MaxText's `kernel_axes`): every parameter carries a name per dimension, declared where
it is created; a strategy's rules table maps them to mesh axes from outside the model
(`parallel_strategies.apply`), the model math never reads them. The vocabulary:

    vocab        vocabulary rows of the embedding / lm_head
    embed        the model width H (the residual stream)
    heads        query heads x per-head dims (q_proj out, o_proj in; MLA's q_b / kv_b per-head outputs)
    kv_heads     GQA key/value heads x head dim (k_proj / v_proj out)
    q_lora       MLA query rank (q_a_proj out, q_a_layernorm)
    kv_lora      MLA key/value rank (+ the shared rope key) (kv_a_proj_with_mqa out, kv_a_layernorm)
    mlp          width of a dense or shared-expert SwiGLU
    expert       routed-expert index of a stacked expert tensor
    expert_mlp   width of one routed expert's SwiGLU
    router       the expert dimension of routing parameters (every rank routes to every expert)
    norm         the gamma of a norm
    mtp_concat   the 2H input of an MTP module's eh_proj
    vit_*        the vision tower's own widths (vit_embed, vit_heads, vit_mlp, vit_merge, patch)
    None         a singleton dimension
"""
import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import initializer

from ops.rms_norm import resolve_impl as rms_norm_impl, rms_norm


def dtype_of(name: str):
    """"float32" | "bfloat16" -> MindSpore dtype."""
    return {"float32": ms.float32, "bfloat16": ms.bfloat16}[name]


def param(shape, axes, init="zeros", requires_grad=True) -> Parameter:
    """An fp32 Parameter from an initializer, with its logical axes (one name per dimension)."""
    shape, axes = tuple(int(d) for d in shape), tuple(axes)
    assert len(axes) == len(shape), f"logical axes {axes} do not match shape {shape}"
    p = Parameter(initializer(init, shape, ms.float32), requires_grad=requires_grad)
    p.logical_axes = axes     # metadata for parallel_strategies; the model math never reads it
    return p


def zeros_param(shape, axes, requires_grad=True) -> Parameter:
    return param(shape, axes, "zeros", requires_grad)


def ones_param(shape, axes, requires_grad=True) -> Parameter:
    return param(shape, axes, "ones", requires_grad)


class Linear(nn.Cell):
    """y = x @ weight.T (+ bias); weight [out, in] like torch/HF, logical `axes` = (out axis, in axis).
    Output in compute dtype."""

    def __init__(self, in_features, out_features, bias=False, compute_dtype=ms.float32, *, axes):
        super().__init__()
        self.weight = zeros_param((out_features, in_features), axes)
        self.bias = zeros_param((out_features,), axes[:1]) if bias else None
        self.has_bias = bias
        self.compute_dtype = compute_dtype
        self.matmul = ops.MatMul(transpose_b=True)
        # Tensor parallelism, set from outside (parallel_strategies.parallelize): `comm_in` on the input
        # of a column-parallel shard (identity forward, gradient summed over the group), `comm_out` on
        # the partial output of a row-parallel shard (summed over the group, before the bias).
        self.comm_in = None
        self.comm_out = None

    def construct(self, x):
        if self.comm_in is not None:
            x = self.comm_in(x)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).astype(self.compute_dtype)
        y = self.matmul(x2, self.weight.astype(self.compute_dtype))
        if self.comm_out is not None:
            y = self.comm_out(y)
        if self.has_bias:
            y = y + self.bias.astype(y.dtype)
        return y.reshape(shape[:-1] + (y.shape[-1],))


class Embedding(nn.Cell):
    """Token embedding table `weight` [V, H] (axes vocab, embed); lookup returns fp32 rows."""

    def __init__(self, vocab_size, hidden_size):
        super().__init__()
        self.weight = zeros_param((vocab_size, hidden_size), ("vocab", "embed"))

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)


class RMSNorm(nn.Cell):
    """RMSNorm with learnable `weight` [H] (init 1, axis norm) and configurable eps."""

    def __init__(self, hidden_size, eps=1e-5, impl="auto"):
        super().__init__()
        self.weight = ones_param((hidden_size,), ("norm",))
        self.eps = float(eps)
        self.impl = rms_norm_impl(impl)

    def construct(self, x):
        return rms_norm(x, self.weight, self.eps, self.impl)
