"""Depth-scaled sandwich norm (DSSN) and TinyInit, the Pangu Ultra stability recipe.

DSSN (Pangu Ultra, MODELS.md): every sub-layer is wrapped by a pre- AND a post-norm,
    h = h + RMSNorm_post(Sub(RMSNorm_pre(h)))
with the post-norm gamma initialised to c / sqrt(L) (L = decoder layers; c_attn = 0.283,
c_mlp = 0.432 in the paper), so each residual update starts small and depth-independent.
Serving names: attention uses input_layernorm (pre) / post_attention_layernorm (post), the MLP
uses pre_mlp_layernorm (pre) / post_mlp_layernorm (post). Without sandwich norm the usual
pre-norm layout applies: input_layernorm before attention, post_attention_layernorm before MLP.

TinyInit: every weight matrix ~ N(0, sqrt(1 / (2 d L))) (d = hidden size), the embedding table
~ N(0, 0.5). Norm gammas stay 1 (except DSSN post-norms), biases / selection biases 0.
"""
import math

import numpy as np
from mindspore import Tensor

from pangu.common.init import init_normal

# (post-norm attribute name, which constant) of a DSSN decoder layer
DSSN_POST_NORMS = (("post_attention_layernorm", "attn"), ("post_mlp_layernorm", "mlp"))


def dssn_gamma(c: float, num_layers: int) -> float:
    """Initial post-norm gamma c / sqrt(L)."""
    return float(c) / math.sqrt(num_layers)


def tiny_init_std(hidden_size: int, num_layers: int) -> float:
    """TinyInit weight std sqrt(1 / (2 d L))."""
    return math.sqrt(1.0 / (2.0 * hidden_size * num_layers))


def init_tiny(model, hidden_size, num_layers, embedding_std=0.5, seed=None,
              embedding_suffix="embed_tokens.weight"):
    """TinyInit in place (same draw order / determinism rules as pangu.common.init.init_normal)."""
    def std_for(name):
        return embedding_std if name.endswith(embedding_suffix) else None
    return init_normal(model, tiny_init_std(hidden_size, num_layers), seed, std_for)


def init_dssn_post_norms(layers, num_layers, c_attn, c_mlp):
    """Set the post-norm gammas of every DSSN layer in `layers` to c / sqrt(num_layers)."""
    values = {"attn": dssn_gamma(c_attn, num_layers), "mlp": dssn_gamma(c_mlp, num_layers)}
    for layer in layers:
        for attr, which in DSSN_POST_NORMS:
            norm = getattr(layer, attr)
            norm.weight.set_data(Tensor(np.full(norm.weight.shape, values[which], np.float32)))
