"""Pangu Ultra MoE causal LM: MLA + depth-scaled sandwich norm + sigmoid top-k MoE + MTP.

Legend: B batch, S sequence, H hidden, V vocab, L decoder layers, E routed experts, K top-k,
D MTP depths.

Decoder layer (sandwich_norm=True, DSSN):
    h = h + post_attention_layernorm(MLA(input_layernorm(h)))
    h = h + post_mlp_layernorm(MLP(pre_mlp_layernorm(h)))
(sandwich_norm=False: plain pre-norm, post_attention_layernorm is the pre-MLP norm, HF style.)
MLP = dense SwiGLU for the first num_dense_layers layers, else MoE: sigmoid router (selection
bias, top-k, renormalised weights x routed_scaling_factor) + routed SwiGLU experts + one
ungated shared expert (`mlp.shared_experts`, serving name).
MTP modules (pangu.common.mtp) sit at model.layers[L : L+D]; `construct` (inference) skips them,
`loss` trains them.

Loss: total = lm_loss + aux_loss + mtp_loss_weight * mtp_loss, where
    aux_loss = router_aux_loss_coef * mean over MoE layers (main + MTP) of sum_i f_i p_i
               (f_i, p_i aggregated over `aux_loss_scope`, see pangu.common.routers)
    mtp_loss = mean over depths d of the masked CE of depth d (targets: pangu.common.mtp)
Metrics: METRIC_NAMES = ("lm_loss", "aux_loss", "mtp_loss", "imbalance"), imbalance = mean over
main MoE layers of (max - min device load) / T with the experts spread over K devices.
"""
import mindspore as ms
from mindspore import nn, ops

from ops import impl_scope
from ops.attention import resolve_impl as attention_impl
from ops.rope import resolve_impl as rope_impl
from pangu.common.causal_lm import CausalLM
from pangu.common.init import init_normal
from pangu.common.layers import Embedding, RMSNorm, dtype_of
from pangu.common.mla import MultiHeadLatentAttention, mla_rotary_tables
from pangu.common.mlp import SwiGLUMLP
from pangu.common.moe import MoE
from pangu.common.mtp import MTPLayerMixin, mtp_targets, shift_left
from pangu.common.routers import SigmoidTopKRouter, reset_expert_load
from pangu.common.sandwich import init_dssn_post_norms, init_tiny
from pangu.ultra_moe.config import PanguUltraMoEConfig


class UltraMoE(MoE):
    """pangu.common.moe.MoE with the serving name `shared_experts` (its balance statistics are aggregated
    over `cfg.aux_loss_scope` when the model is parallelised, parallel_strategies.parallelize).

    construct(h [..., H]) -> (y [..., H], balance (alpha-free sum f_i p_i), imbalance)
    """

    def __init__(self, cfg: PanguUltraMoEConfig):
        cd = dtype_of(cfg.compute_dtype)
        router = SigmoidTopKRouter(cfg.hidden_size, cfg.num_routed_experts, cfg.num_experts_per_tok,
                                   cfg.router_enable_expert_bias, cfg.norm_topk_prob,
                                   cfg.routed_scaling_factor, cfg.router_bias_update_rate, cfg.n_group,
                                   cfg.topk_group)
        super().__init__(cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_routed_experts,
                         cfg.num_experts_per_tok, router, 0, cfg.expert_impl, cd,
                         imbalance_devices=cfg.num_experts_per_tok)
        self.has_shared_experts = cfg.num_shared_experts > 0
        self.shared_experts = (SwiGLUMLP(cfg.hidden_size,
                                         cfg.num_shared_experts * cfg.moe_intermediate_size, cd)
                               if self.has_shared_experts else None)

    def construct(self, h):
        shape = h.shape
        h_TH = h.reshape(-1, shape[-1])
        weights_TK, experts_TK, probs_TE = self.gate(h_TH)                       # route
        y_TH = self.experts(h_TH, weights_TK, experts_TK)    # dispatch, experts (expert_impl), combine
        if self.has_shared_experts:
            y_TH = y_TH + self.shared_experts(h_TH).astype(y_TH.dtype)           # ungated
        balance, imbalance = self.stats(probs_TE, experts_TK)
        return y_TH.reshape(shape[:-1] + (y_TH.shape[-1],)), balance, imbalance


class PanguUltraMoEDecoderLayer(nn.Cell):
    """MLA + (dense SwiGLU | UltraMoE), DSSN sandwich norm or plain pre-norm."""

    def __init__(self, cfg: PanguUltraMoEConfig, moe: bool):
        super().__init__()
        cd = dtype_of(cfg.compute_dtype)
        h, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.sandwich = cfg.sandwich_norm
        self.is_moe = moe
        self.input_layernorm = RMSNorm(h, eps)
        self.self_attn = MultiHeadLatentAttention(
            h, cfg.num_attention_heads, cfg.attention_q_lora_dim, cfg.attention_kv_lora_dim,
            cfg.attention_qk_dim, cfg.attention_qk_rope_dim, cfg.attention_v_dim, eps, cd,
            attention_impl(cfg.attention_impl), rope_impl(cfg.rope_impl))
        self.post_attention_layernorm = RMSNorm(h, eps)
        if self.sandwich:
            self.pre_mlp_layernorm = RMSNorm(h, eps)
            self.post_mlp_layernorm = RMSNorm(h, eps)
        if moe:
            self.mlp = UltraMoE(cfg)
        else:
            self.mlp = SwiGLUMLP(h, cfg.intermediate_size, cd)

    def construct(self, h_BSH, cos, sin, segment_ids):
        a = self.self_attn(self.input_layernorm(h_BSH), cos, sin, segment_ids)
        return self._after_attention(h_BSH, a)

    def prefill(self, h_BSH, cos, sin, segment_ids):
        """construct's hidden states plus this layer's MLA cache entries (c, k_rope)."""
        a, c, k_rope = self.self_attn.prefill(self.input_layernorm(h_BSH), cos, sin, segment_ids)
        h_BSH, _, _ = self._after_attention(h_BSH, a)
        return h_BSH, c, k_rope

    def decode(self, h_B1H, cos, sin, index_B, c_cache, k_rope_cache, valid_BT):
        a, c_cache, k_rope_cache = self.self_attn.decode(self.input_layernorm(h_B1H), cos, sin, index_B,
                                                         c_cache, k_rope_cache, valid_BT)
        h_B1H, _, _ = self._after_attention(h_B1H, a)
        return h_B1H, c_cache, k_rope_cache

    def _after_attention(self, h_BSH, a):
        """Attention residual (+ DSSN post-norm), then the MLP sub-layer: (h, balance, imbalance)."""
        if self.sandwich:
            h_BSH = h_BSH + self.post_attention_layernorm(a).astype(ms.float32)
            x = self.pre_mlp_layernorm(h_BSH)
        else:
            h_BSH = h_BSH + a.astype(ms.float32)
            x = self.post_attention_layernorm(h_BSH)
        if self.is_moe:
            m, balance, imbalance = self.mlp(x)
        else:
            m = self.mlp(x)
            balance = ops.zeros((), ms.float32)
            imbalance = ops.zeros((), ms.float32)
        if self.sandwich:
            m = self.post_mlp_layernorm(m)
        return h_BSH + m.astype(ms.float32), balance, imbalance


class PanguUltraMoEMTPLayer(MTPLayerMixin, PanguUltraMoEDecoderLayer):
    """One MTP module: a decoder layer plus enorm / hnorm / eh_proj / shared_head."""

    def __init__(self, cfg: PanguUltraMoEConfig, moe: bool):
        PanguUltraMoEDecoderLayer.__init__(self, cfg, moe)
        self.init_mtp(cfg.hidden_size, cfg.rms_norm_eps, dtype_of(cfg.compute_dtype))


class PanguUltraMoEModel(nn.Cell):
    """`model.*` of the serving layout: embed_tokens, layers (L decoder + D MTP), norm."""

    def __init__(self, cfg: PanguUltraMoEConfig):
        super().__init__()
        L = cfg.num_hidden_layers
        self.num_layers = L
        self.num_mtp = cfg.num_mtp_layers
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size)
        layers = [PanguUltraMoEDecoderLayer(cfg, i >= cfg.num_dense_layers)
                  for i in range(L)]
        mtp_moe = cfg.num_dense_layers < L  # MTP layers are MoE layers like the last layer
        layers += [PanguUltraMoEMTPLayer(cfg, mtp_moe) for _ in range(self.num_mtp)]
        self.layers = nn.CellList(layers)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rope_dim = cfg.attention_qk_rope_dim
        self.rope_theta = cfg.rope_theta
        self.num_moe = L - cfg.num_dense_layers

    def construct(self, input_ids, position_ids, segment_ids):
        """-> (normed final hidden fp32 [B,S,H], balance sum over MoE layers, imbalance sum)."""
        h = self.embed_tokens(input_ids)
        cos, sin = mla_rotary_tables(position_ids, self.rope_dim, self.rope_theta)
        return self.forward_embeddings(h, cos, sin, segment_ids)

    def forward_embeddings(self, h, cos, sin, segment_ids):
        """Main decoder layers + final norm from input embeddings h [B,S,H] fp32 and rope tables
        cos/sin [B,1,S,rope_dim] (MindVL hook: image features in h, M-RoPE tables); MTP skipped."""
        balance = ops.zeros((), ms.float32)
        imbalance = ops.zeros((), ms.float32)
        for i in range(self.num_layers):
            h, b, m = self.layers[i](h, cos, sin, segment_ids)
            balance = balance + b
            imbalance = imbalance + m
        return self.norm(h), balance, imbalance

    def prefill(self, input_ids, position_ids, segment_ids):
        """(normed hidden states [B,T,H], c per layer, k_rope per layer); MTP skipped."""
        h = self.embed_tokens(input_ids)
        cos, sin = mla_rotary_tables(position_ids, self.rope_dim, self.rope_theta)
        cs, ks = [], []
        for i in range(self.num_layers):
            h, c, k = self.layers[i].prefill(h, cos, sin, segment_ids)
            cs.append(c)
            ks.append(k)
        return self.norm(h), tuple(cs), tuple(ks)

    def decode(self, input_ids_B1, position_ids_B1, index_B, cs, ks, valid_BT):
        h = self.embed_tokens(input_ids_B1)
        cos, sin = mla_rotary_tables(position_ids_B1, self.rope_dim, self.rope_theta)
        new_cs, new_ks = [], []
        for i in range(self.num_layers):
            h, c, k = self.layers[i].decode(h, cos, sin, index_B, cs[i], ks[i], valid_BT)
            new_cs.append(c)
            new_ks.append(k)
        return self.norm(h), tuple(new_cs), tuple(new_ks)


class PanguUltraMoEForCausalLM(CausalLM):
    """Model contract: construct -> main logits [B,S,V] fp32 (MTP skipped); loss -> (total, metrics
    named by METRIC_NAMES); logits / prefill / decode_step from pangu.common.causal_lm.CausalLM (the
    KV cache holds MLA's compressed latent, see pangu.common.mla). Parameter names = serving layout
    except the stacked routed experts and the `expert_load` buffers (see convert.py)."""

    METRIC_NAMES = ("lm_loss", "aux_loss", "mtp_loss", "imbalance")

    def __init__(self, cfg: PanguUltraMoEConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        with impl_scope(cfg.ops_impl):      # every op's impl="auto" resolves to cfg.ops_impl
            self.model = PanguUltraMoEModel(cfg)
        self.init_head(cfg.hidden_size, cfg.vocab_size, cfg.tie_word_embeddings, dtype_of(cfg.compute_dtype))
        self.aux_coef = float(cfg.router_aux_loss_coef)
        self.mtp_weight = float(cfg.mtp_loss_weight)
        self.num_layers = cfg.num_hidden_layers
        self.num_mtp = cfg.num_mtp_layers
        self.num_moe_main = cfg.num_moe_layers
        mtp_moe = cfg.num_dense_layers < cfg.num_hidden_layers
        self.num_moe_total = self.num_moe_main + (self.num_mtp if mtp_moe else 0)
        # aux-loss-free balancing: the layers whose routers count their load (trainer hooks below)
        self.tracks_expert_load = cfg.router_bias_update_rate > 0
        L, nd = cfg.num_hidden_layers, cfg.num_dense_layers
        self.moe_layer_ids = tuple(i for i in range(L + cfg.num_mtp_layers) if self.tracks_expert_load
                                   and (nd <= i < L or (i >= L and mtp_moe)))

    def loss(self, input_ids, labels, loss_mask, position_ids, segment_ids):
        h, balance, imbalance = self.model(input_ids, position_ids, segment_ids)
        lm_loss = self.cross_entropy(self.logits(h), labels, loss_mask)
        mtp_loss = ops.zeros((), ms.float32)
        if self.num_mtp > 0:
            cos, sin = mla_rotary_tables(position_ids, self.model.rope_dim, self.model.rope_theta)
            h_prev = h
            for d in range(1, self.num_mtp + 1):
                layer = self.model.layers[self.num_layers + d - 1]
                emb = self.model.embed_tokens(shift_left(input_ids, d, 0))
                x = layer.mtp_input(h_prev, emb)
                h_prev, b, _ = layer(x, cos, sin, segment_ids)
                balance = balance + b
                labels_d, mask_d = mtp_targets(labels, loss_mask, segment_ids, d)
                logits_d = self.logits(layer.shared_head(h_prev))
                mtp_loss = mtp_loss + self.cross_entropy(logits_d, labels_d, mask_d)
            mtp_loss = mtp_loss / self.num_mtp
        aux_loss = self.aux_coef * balance / max(self.num_moe_total, 1)
        imbalance = imbalance / max(self.num_moe_main, 1)
        total = lm_loss + aux_loss + self.mtp_weight * mtp_loss
        return total, (lm_loss, aux_loss, mtp_loss, ops.stop_gradient(imbalance))

    # -- aux-loss-free balancing (router_bias_update_rate > 0), called inside the trainer's graphs --
    def expert_loads(self):
        """The load counters of every MoE layer (main + MTP), layer order."""
        return tuple([self.model.layers[i].mlp.gate.expert_load for i in self.moe_layer_ids])

    def zero_expert_loads(self):
        """Start an optimiser step's count."""
        for i in self.moe_layer_ids:
            self.model.layers[i].mlp.gate.zero_load()
        return ops.zeros((), ms.float32)

    def update_expert_bias(self, loads, applied):
        """b_i += rate * sign(mean load - load_i) per MoE layer from `loads` (the step's counts, summed
        over data-parallel ranks by the trainer), when `applied`; the counters keep `loads`."""
        for i, load in zip(self.moe_layer_ids, loads):
            self.model.layers[i].mlp.gate.update_bias(load, applied)
        return ops.zeros((), ms.float32)

    def restore_expert_loads(self, loads):
        """Put the counters back (evaluation batches also pass through loss())."""
        for i, load in zip(self.moe_layer_ids, loads):
            ops.assign(self.model.layers[i].mlp.gate.expert_load, load)
        return ops.zeros((), ms.float32)

    # -- MTP modules as a drafter (pangu.speculative): each depth keeps its own MLA cache, same columns --
    def mtp_prefill(self, h_BTH, ids_BT, position_ids, segment_ids, depth):
        """MTP module `depth` (1-based) over a whole buffer, chained as in `loss`: h_BTH its input (the
        main model's normed final hidden states for depth 1, depth-1's output after), ids_BT the token
        t+depth at column t -> (logits [B,T,V], output h [B,T,H], c cache, k_rope cache)."""
        layer = self.model.layers[self.num_layers + depth - 1]
        cos, sin = mla_rotary_tables(position_ids, self.model.rope_dim, self.model.rope_theta)
        x = layer.mtp_input(h_BTH, self.model.embed_tokens(ids_BT))
        h, c, k_rope = layer.prefill(x, cos, sin, segment_ids)
        return self.logits(layer.shared_head(h)), h, c, k_rope

    def mtp_decode(self, h_BSH, ids_BS, position_ids_BS, index_BS, c_cache, k_rope_cache, mask_BST, depth):
        """`mtp_prefill` for S columns per row at index_BS through the depth's cache (mask_BST:
        pangu.common.kv_cache.chunk_mask) -> (logits [B,S,V], h [B,S,H], c cache, k_rope cache)."""
        layer = self.model.layers[self.num_layers + depth - 1]
        cos, sin = mla_rotary_tables(position_ids_BS, self.model.rope_dim, self.model.rope_theta)
        x = layer.mtp_input(h_BSH, self.model.embed_tokens(ids_BS))
        h, c_cache, k_rope_cache = layer.decode(x, cos, sin, index_BS, c_cache, k_rope_cache, mask_BST)
        return self.logits(layer.shared_head(h)), h, c_cache, k_rope_cache


def init_weights(model, cfg: PanguUltraMoEConfig, seed=None):
    """TinyInit (or normal(0, initializer_range)), then DSSN post-norm gammas c/sqrt(L);
    norms 1, selection biases and load counters 0."""
    L = cfg.num_hidden_layers
    if cfg.tiny_init:
        init_tiny(model, cfg.hidden_size, L, cfg.tiny_init_embedding_std, seed)
    else:
        init_normal(model, cfg.initializer_range, seed)
    if cfg.sandwich_norm:
        init_dssn_post_norms(model.model.layers, L, cfg.sandwich_norm_c_attn, cfg.sandwich_norm_c_mlp)
    reset_expert_load(model)
    return model


def instantiate(cfg: PanguUltraMoEConfig):
    """The model (values set by init_weights)."""
    return PanguUltraMoEForCausalLM(cfg)


def build_model(cfg: PanguUltraMoEConfig, seed=None):
    """Instantiate + initialise."""
    return init_weights(instantiate(cfg), cfg, seed)


def count_trainable(model) -> int:
    """Number of trained parameters of an instantiated model (buffers excluded)."""
    return sum(int(p.size) for p in model.trainable_params())
