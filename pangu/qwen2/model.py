"""Qwen2 dense causal LM (`Qwen2ForCausalLM`; the language model of Qwen2.5-VL).

Legend: B batch, S sequence, H hidden, V vocab, L layers.
Layer: h = h + Attn(RMSNorm(h)); h = h + SwiGLU(RMSNorm(h)) (pre-norm). Attention: GQA with biases on
q/k/v (not o), rotate-half RoPE on the full head. Built from pangu.common's blocks (GQAttention,
SwiGLUMLP, RMSNorm, Embedding, the CausalLM head), so only the layer wiring lives here.
KV cache (pangu/generate.py): `prefill` / `decode_step` as for Pro MoE; the cache is (k per layer,
v per layer, valid_BT) with k, v [B, Nkv, T, head_dim] after RoPE.
"""
import mindspore as ms
from mindspore import nn, ops

from ops import impl_scope
from pangu.common.attention import GQAttention
from pangu.common.causal_lm import CausalLM
from pangu.common.decoder_stack import RopeDecoderStack
from pangu.common.init import init_normal
from pangu.common.layers import RMSNorm, dtype_of
from pangu.common.mlp import SwiGLUMLP
from pangu.qwen2.config import Qwen2Config


class Qwen2DecoderLayer(nn.Cell):
    def __init__(self, cfg: Qwen2Config):
        super().__init__()
        cd = dtype_of(cfg.compute_dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = GQAttention(cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                                     cfg.head_dim, True, False, cd, cfg.attention_impl, "rotate_half")
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLUMLP(cfg.hidden_size, cfg.intermediate_size, cd)

    def _mlp_residual(self, h_BSH):
        return h_BSH + self.mlp(self.post_attention_layernorm(h_BSH)).astype(ms.float32)

    def construct(self, h_BSH, cos, sin, segment_ids):
        a = self.self_attn(self.input_layernorm(h_BSH), cos, sin, segment_ids)
        return self._mlp_residual(h_BSH + a.astype(ms.float32))

    def prefill(self, h_BSH, cos, sin, segment_ids):
        """construct's hidden states plus this layer's cache entries (k, v)."""
        a, k, v = self.self_attn.prefill(self.input_layernorm(h_BSH), cos, sin, segment_ids)
        return self._mlp_residual(h_BSH + a.astype(ms.float32)), k, v

    def decode(self, h_B1H, cos, sin, index_B, k_cache, v_cache, valid_BT):
        a, k_cache, v_cache = self.self_attn.decode(self.input_layernorm(h_B1H), cos, sin, index_B,
                                                    k_cache, v_cache, valid_BT)
        return self._mlp_residual(h_B1H + a.astype(ms.float32)), k_cache, v_cache


class Qwen2Model(RopeDecoderStack):
    """Embedding + decoder stack + final norm (`model.*` in the serving layout)."""

    def __init__(self, cfg: Qwen2Config):
        super().__init__(cfg, [Qwen2DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])

    def forward_embeddings(self, h, cos, sin, segment_ids):
        """Decoder stack + final norm from input embeddings h [B,S,H] fp32 and rotary tables cos/sin
        [B,1,S,head_dim] (MindVL hook: image features in h, M-RoPE tables). Returns (h, 0, 0): the
        decoders' (hidden, balance, imbalance) contract, a dense model has no router."""
        for layer in self.layers:
            h = layer(h, cos, sin, segment_ids)
        zero = ops.zeros((), ms.float32)
        return self.norm(h), zero, zero


class Qwen2ForCausalLM(CausalLM):
    """Model contract: construct -> logits [B, S, V] fp32; loss -> (total, (lm_loss,)); logits / prefill /
    decode_step from pangu.common.causal_lm.CausalLM."""

    METRIC_NAMES = ("lm_loss",)

    def __init__(self, cfg: Qwen2Config):
        super().__init__()
        cfg.validate()
        self.config = cfg
        with impl_scope(cfg.ops_impl):      # every op's impl="auto" resolves to cfg.ops_impl
            self.model = Qwen2Model(cfg)
        self.init_head(cfg.hidden_size, cfg.vocab_size, cfg.tie_word_embeddings, dtype_of(cfg.compute_dtype))

    def loss(self, input_ids, labels, loss_mask, position_ids, segment_ids):
        h, _, _ = self.model(input_ids, position_ids, segment_ids)
        lm_loss = self.cross_entropy(self.logits(h), labels, loss_mask)
        return lm_loss, (lm_loss,)


def init_weights(model, cfg: Qwen2Config, seed=None):
    """normal(0, initializer_range) weights, zero biases, unit norms (transformers' Qwen2 init)."""
    return init_normal(model, cfg.initializer_range, seed)


def build_model(cfg: Qwen2Config, seed=None):
    """Instantiate and initialise a Qwen2 model."""
    return init_weights(Qwen2ForCausalLM(cfg), cfg, seed)
