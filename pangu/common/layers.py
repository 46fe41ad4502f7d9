"""Basic parametrised layers with serving-layout parameter names and compute-dtype casting.

Parameters are always fp32 ("master" weights); `compute_dtype` (ms.float32 | ms.bfloat16) is the
dtype matmul inputs are cast to. Initial values are placeholders (zeros / ones); real init is done
by `pangu.common.init` so init schemes (normal, TinyInit) stay separate from the module code.
"""
import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter, Tensor

from ops.rms_norm import rms_norm


def dtype_of(name: str):
    """"float32" | "bfloat16" -> MindSpore dtype."""
    return {"float32": ms.float32, "bfloat16": ms.bfloat16}[name]


def zeros_param(shape, requires_grad=True):
    return Parameter(Tensor(np.zeros(shape, np.float32)), requires_grad=requires_grad)


def ones_param(shape, requires_grad=True):
    return Parameter(Tensor(np.ones(shape, np.float32)), requires_grad=requires_grad)


class Linear(nn.Cell):
    """y = x @ weight.T (+ bias); weight [out, in] like torch/HF. Output in compute dtype."""

    def __init__(self, in_features, out_features, bias=False, compute_dtype=ms.float32):
        super().__init__()
        self.weight = zeros_param((out_features, in_features))
        self.bias = zeros_param((out_features,)) if bias else None
        self.has_bias = bias
        self.compute_dtype = compute_dtype
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).astype(self.compute_dtype)
        y = self.matmul(x2, self.weight.astype(self.compute_dtype))
        if self.has_bias:
            y = y + self.bias.astype(y.dtype)
        return y.reshape(shape[:-1] + (y.shape[-1],))


class Embedding(nn.Cell):
    """Token embedding table `weight` [V, H]; lookup returns fp32 rows."""

    def __init__(self, vocab_size, hidden_size):
        super().__init__()
        self.weight = zeros_param((vocab_size, hidden_size))

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)


class RMSNorm(nn.Cell):
    """RMSNorm with learnable `weight` [H] (init 1) and configurable eps."""

    def __init__(self, hidden_size, eps=1e-5, impl="auto"):
        super().__init__()
        self.weight = ones_param((hidden_size,))
        self.eps = float(eps)
        from ops.rms_norm import resolve_impl
        self.impl = resolve_impl(impl)

    def construct(self, x):
        return rms_norm(x, self.weight, self.eps, self.impl)
