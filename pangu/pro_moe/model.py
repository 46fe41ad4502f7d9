"""Pangu Pro MoE (Mixture of Grouped Experts) causal LM.

Legend: B batch, S sequence, H hidden, V vocab, L layers, E routed experts, K = G groups.
Layer: h = h + Attn(RMSNorm(h)); h = h + MoE(RMSNorm(h)) (pre-norm, all layers MoE).
MoE: MoGE router (global softmax, argmax per contiguous group, * router_scale, no renorm),
routed SwiGLU experts, plus the 4 shared experts fused as one ungated SwiGLU MLP.
KV cache (pangu/generate.py): `prefill` / `decode_step`; the cache is (k per layer, v per layer,
valid_BT) with k, v [B, Nkv, T, head_dim] after RoPE and valid_BT the written columns (segment 1).
"""
import mindspore as ms
from mindspore import nn, ops

from ops import impl_scope
from pangu.common.attention import GQAttention
from pangu.common.causal_lm import CausalLM
from pangu.common.decoder_stack import RopeDecoderStack
from pangu.common.init import init_normal
from pangu.common.layers import RMSNorm, dtype_of
from pangu.common.moe import MoE, MoGERouter
from pangu.pro_moe.config import PanguProMoEConfig


class PanguProMoEDecoderLayer(nn.Cell):
    def __init__(self, cfg: PanguProMoEConfig):
        super().__init__()
        cd = dtype_of(cfg.compute_dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = GQAttention(cfg.hidden_size, cfg.num_attention_heads,
                                     cfg.num_key_value_heads, cfg.head_dim, cfg.attention_bias,
                                     cfg.attention_bias, cd, cfg.attention_impl, "rotate_half")
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        router = MoGERouter(cfg.hidden_size, cfg.num_experts, cfg.num_groups)
        self.mlp = MoE(cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts,
                       cfg.num_experts_per_tok, router, cfg.shared_expert_intermediate_size,
                       cfg.expert_impl, cd, imbalance_devices=cfg.num_groups)

    def construct(self, h_BSH, cos, sin, segment_ids):
        a = self.self_attn(self.input_layernorm(h_BSH), cos, sin, segment_ids)
        h_BSH = h_BSH + a.astype(ms.float32)
        m, balance, imbalance = self.mlp(self.post_attention_layernorm(h_BSH))
        return h_BSH + m.astype(ms.float32), balance, imbalance

    def _mlp_residual(self, h_BSH):
        m, _, _ = self.mlp(self.post_attention_layernorm(h_BSH))
        return h_BSH + m.astype(ms.float32)

    def prefill(self, h_BSH, cos, sin, segment_ids):
        """construct's hidden states plus this layer's cache entries (k, v)."""
        a, k, v = self.self_attn.prefill(self.input_layernorm(h_BSH), cos, sin, segment_ids)
        return self._mlp_residual(h_BSH + a.astype(ms.float32)), k, v

    def decode(self, h_B1H, cos, sin, index_B, k_cache, v_cache, valid_BT):
        a, k_cache, v_cache = self.self_attn.decode(self.input_layernorm(h_B1H), cos, sin, index_B,
                                                    k_cache, v_cache, valid_BT)
        return self._mlp_residual(h_B1H + a.astype(ms.float32)), k_cache, v_cache


class PanguProMoEModel(RopeDecoderStack):
    """Embedding + decoder stack + final norm (`model.*` in the serving layout)."""

    def __init__(self, cfg: PanguProMoEConfig):
        super().__init__(cfg, [PanguProMoEDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])

    def forward_embeddings(self, h, cos, sin, segment_ids):
        """Decoder stack + final norm from input embeddings h [B,S,H] fp32 and rotary tables
        cos/sin [B,1,S,head_dim] (MindVL hook: image features in h, M-RoPE tables)."""
        balance = ops.zeros((), ms.float32)
        imbalance = ops.zeros((), ms.float32)
        for layer in self.layers:
            h, b, i = layer(h, cos, sin, segment_ids)
            balance = balance + b
            imbalance = imbalance + i
        n = len(self.layers)
        return self.norm(h), balance / n, imbalance / n


class PanguProMoEForCausalLM(CausalLM):
    """Model contract: construct -> logits [B, S, V] fp32; loss -> (total, METRIC_NAMES tuple);
    logits / prefill / decode_step from pangu.common.causal_lm.CausalLM.

    aux_loss = router_aux_loss_coef * mean over layers of sum_i f_i p_i; imbalance = mean over
    layers of the imbalance score with M = G devices (0 by construction for MoGE).
    """

    METRIC_NAMES = ("lm_loss", "aux_loss", "imbalance")

    def __init__(self, cfg: PanguProMoEConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        with impl_scope(cfg.ops_impl):      # every op's impl="auto" resolves to cfg.ops_impl
            self.model = PanguProMoEModel(cfg)
        self.init_head(cfg.hidden_size, cfg.vocab_size, cfg.tie_word_embeddings, dtype_of(cfg.compute_dtype))
        self.aux_coef = float(cfg.router_aux_loss_coef)

    def loss(self, input_ids, labels, loss_mask, position_ids, segment_ids):
        h, balance, imbalance = self.model(input_ids, position_ids, segment_ids)
        lm_loss = self.cross_entropy(self.logits(h), labels, loss_mask)
        aux_loss = self.aux_coef * balance
        total = lm_loss + aux_loss
        return total, (lm_loss, aux_loss, ops.stop_gradient(imbalance))


def init_weights(model, cfg: PanguProMoEConfig, seed=None):
    """normal(0, initializer_range) weights, zero biases, unit norms and router_scale."""
    return init_normal(model, cfg.initializer_range, seed)


def build_model(cfg: PanguProMoEConfig, seed=None):
    """Instantiate and initialise a Pangu Pro MoE model."""
    return init_weights(PanguProMoEForCausalLM(cfg), cfg, seed)
