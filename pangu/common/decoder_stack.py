"""`model.*` of a decoder with rotate-half RoPE (Pangu Pro MoE, Qwen2): embed_tokens, layers, norm.

    construct(ids, pos, seg)                          -> forward_embeddings(embedded ids, RoPE tables, seg)
    forward_embeddings(h, cos, sin, seg)              the concrete stack's: (normed h, balance, imbalance)
    prefill(ids, pos, seg)                            -> (normed h [B,T,H], k per layer, v per layer)
    decode(ids_B1, pos_B1, index_B, ks, vs, valid_BT) -> (normed h [B,1,H], new ks, new vs)
Every layer has `prefill(h, cos, sin, seg) -> (h, k, v)` and `decode(h, cos, sin, index, k, v, valid) -> (h, k, v)`.
"""
from mindspore import nn

from ops.rope import rotary_tables
from pangu.common.layers import Embedding, RMSNorm


class RopeDecoderStack(nn.Cell):
    def __init__(self, cfg, layers):
        super().__init__()
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.CellList(layers)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.head_dim = cfg.head_dim
        self.rope_theta = cfg.rope_theta

    def construct(self, input_ids, position_ids, segment_ids):
        h = self.embed_tokens(input_ids)
        cos, sin = rotary_tables(position_ids, self.head_dim, self.rope_theta, "rotate_half")
        return self.forward_embeddings(h, cos, sin, segment_ids)

    def prefill(self, input_ids, position_ids, segment_ids):
        """(normed hidden states [B,T,H], k per layer, v per layer)."""
        h = self.embed_tokens(input_ids)
        cos, sin = rotary_tables(position_ids, self.head_dim, self.rope_theta, "rotate_half")
        ks, vs = [], []
        for layer in self.layers:
            h, k, v = layer.prefill(h, cos, sin, segment_ids)
            ks.append(k)
            vs.append(v)
        return self.norm(h), tuple(ks), tuple(vs)

    def decode(self, input_ids_B1, position_ids_B1, index_B, ks, vs, valid_BT):
        h = self.embed_tokens(input_ids_B1)
        cos, sin = rotary_tables(position_ids_B1, self.head_dim, self.rope_theta, "rotate_half")
        new_ks, new_vs = [], []
        for layer, k, v in zip(self.layers, ks, vs):
            h, k, v = layer.decode(h, cos, sin, index_B, k, v, valid_BT)
            new_ks.append(k)
            new_vs.append(v)
        return self.norm(h), tuple(new_ks), tuple(new_vs)
