"""Multi-head latent attention (MLA, DeepSeek-V2/V3 and Pangu Ultra MoE), serving-layout names.

Legend: B batch, S sequence, H hidden, N heads, Dn per-head q/k dims without rope (nope),
Dr rope dims, Dqk = Dn + Dr, Dv value dims, Rq query rank, Rkv key/value rank.

    q      = q_b_proj(RMSNorm(q_a_proj(h)))            [B,S,N,Dqk] = [nope Dn | rope Dr] per head
    [c_kv | k_rope] = kv_a_proj_with_mqa(h)            [B,S,Rkv + Dr]; k_rope is ONE head, shared
    [k_nope | v]    = kv_b_proj(RMSNorm(c_kv))         [B,S,N,Dn + Dv]
    RoPE (interleaved pairs, rope dims only) on q_rope and k_rope
    k = [k_nope | k_rope broadcast to N heads], softmax scale Dqk^-0.5
    out = o_proj(attention(q, k, v))                   (Dqk != Dv is fine for ops.attention)

Training materialises per-head keys/values (the "naive" form); the absorbed form (attention in the
Rkv latent space, what serving uses for decode) is mathematically identical and a serving concern.
"""
import mindspore as ms
from mindspore import nn, ops

from ops.attention import attention, resolve_impl as resolve_attention_impl
from ops.rope import apply_rope, resolve_impl as resolve_rope_impl, rotary_tables
from pangu.common.layers import Linear, RMSNorm

ROPE_LAYOUT = "interleaved"  # Pangu Ultra MoE / DeepSeek-V3 checkpoints store rope dims as pairs


def mla_rotary_tables(position_ids_BS, rope_dim, theta):
    """(cos, sin) [B, 1, S, Dr] fp32 for MLA's rope dims; compute once per forward, share by layers."""
    return rotary_tables(position_ids_BS, rope_dim, theta, ROPE_LAYOUT)


class MultiHeadLatentAttention(nn.Cell):
    """MLA with q and kv low-rank compression; parameter names = serving layout (`self_attn.*`)."""

    def __init__(self, hidden_size, num_heads, q_lora_dim, kv_lora_dim, qk_nope_dim, qk_rope_dim,
                 v_dim, eps=1e-5, compute_dtype=ms.float32, attention_impl="auto", rope_impl="auto",
                 norm_impl="auto"):
        super().__init__()
        self.num_heads = num_heads
        self.qk_nope_dim = qk_nope_dim
        self.qk_rope_dim = qk_rope_dim
        self.qk_head_dim = qk_nope_dim + qk_rope_dim
        self.v_dim = v_dim
        self.kv_lora_dim = kv_lora_dim
        self.scale = float(self.qk_head_dim) ** -0.5
        # resolved once here: "auto" must not be resolved inside a GRAPH-mode construct
        self.attention_impl = resolve_attention_impl(attention_impl)
        self.rope_impl = resolve_rope_impl(rope_impl)
        self.q_a_proj = Linear(hidden_size, q_lora_dim, False, compute_dtype)
        self.q_a_layernorm = RMSNorm(q_lora_dim, eps, norm_impl)
        self.q_b_proj = Linear(q_lora_dim, num_heads * self.qk_head_dim, False, compute_dtype)
        self.kv_a_proj_with_mqa = Linear(hidden_size, kv_lora_dim + qk_rope_dim, False, compute_dtype)
        self.kv_a_layernorm = RMSNorm(kv_lora_dim, eps, norm_impl)
        self.kv_b_proj = Linear(kv_lora_dim, num_heads * (qk_nope_dim + v_dim), False, compute_dtype)
        self.o_proj = Linear(num_heads * v_dim, hidden_size, False, compute_dtype)

    def construct(self, x_BSH, cos_B1SD, sin_B1SD, segment_ids_BS):
        b, s, _ = x_BSH.shape
        n, dn, dr, dv = self.num_heads, self.qk_nope_dim, self.qk_rope_dim, self.v_dim

        q_BSNQ = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x_BSH))).reshape(b, s, n, dn + dr)
        q_BNSQ = q_BSNQ.transpose(0, 2, 1, 3)
        q_nope_BNSn = q_BNSQ[:, :, :, :dn]
        q_rope_BNSr = apply_rope(q_BNSQ[:, :, :, dn:], cos_B1SD, sin_B1SD, ROPE_LAYOUT, self.rope_impl)

        kv_a_BSC = self.kv_a_proj_with_mqa(x_BSH)
        c_kv_BSR = kv_a_BSC[:, :, :self.kv_lora_dim]
        k_rope_B1Sr = kv_a_BSC[:, :, self.kv_lora_dim:].reshape(b, 1, s, dr)
        k_rope_B1Sr = apply_rope(k_rope_B1Sr, cos_B1SD, sin_B1SD, ROPE_LAYOUT, self.rope_impl)

        kv_BSNK = self.kv_b_proj(self.kv_a_layernorm(c_kv_BSR)).reshape(b, s, n, dn + dv)
        kv_BNSK = kv_BSNK.transpose(0, 2, 1, 3)
        k_nope_BNSn = kv_BNSK[:, :, :, :dn]
        v_BNSv = kv_BNSK[:, :, :, dn:]

        q = ops.concat((q_nope_BNSn, q_rope_BNSr), -1)
        k = ops.concat((k_nope_BNSn, ops.broadcast_to(k_rope_B1Sr, (b, n, s, dr))), -1)
        o_BNSv = attention(q, k, v_BNSv, segment_ids_BS, causal=True, scale=self.scale,
                           impl=self.attention_impl)
        o_BSV = o_BNSv.transpose(0, 2, 1, 3).reshape(b, s, n * dv)
        return self.o_proj(o_BSV)
