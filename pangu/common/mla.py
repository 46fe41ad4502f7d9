"""Multi-head latent attention (MLA, DeepSeek-V2/V3 and Pangu Ultra MoE), serving-layout names.

Legend: B batch, S sequence, H hidden, N heads, Dn per-head q/k dims without rope (nope),
Dr rope dims, Dqk = Dn + Dr, Dv value dims, Rq query rank, Rkv key/value rank.

    q      = q_b_proj(RMSNorm(q_a_proj(h)))            [B,S,N,Dqk] = [nope Dn | rope Dr] per head
    [c_kv | k_rope] = kv_a_proj_with_mqa(h)            [B,S,Rkv + Dr]; k_rope is ONE head, shared
    [k_nope | v]    = kv_b_proj(RMSNorm(c_kv))         [B,S,N,Dn + Dv]
    RoPE (interleaved pairs, rope dims only) on q_rope and k_rope
    k = [k_nope | k_rope broadcast to N heads], softmax scale Dqk^-0.5
    out = o_proj(attention(q, k, v))                   (Dqk != Dv is fine for ops.attention)

Training materialises per-head keys/values (the "naive" form). The KV cache (`prefill` /
`decode`) stores the COMPRESSED latent instead: per column c = RMSNorm(c_kv) [B,1,T,Rkv] and the
roped shared k_rope [B,1,T,Dr] (Rkv + Dr = 576 numbers per token and layer in the full model, vs
N * (Dqk + Dv) = 40960 expanded), and decodes in the "absorbed" form: with kv_b_proj split per
head into W_uk [N,Dn,Rkv] and W_uv [N,Dv,Rkv],
    q_nope . k_nope = (q_nope W_uk) . c           out_head = W_uv (sum_t p_t c_t)
so decode is MQA over [c | k_rope] with query [q_nope W_uk | q_rope] and values c -- the same
numbers as the naive form up to float reassociation.
"""
import mindspore as ms
from mindspore import nn, ops

from ops.attention import attention, resolve_impl as resolve_attention_impl
from ops.rope import apply_rope, resolve_impl as resolve_rope_impl, rotary_tables
from pangu.common.layers import Linear, RMSNorm
from pangu.common.kv_cache import decode_attention, kv_cache_write

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
        self.q_a_proj = Linear(hidden_size, q_lora_dim, False, compute_dtype, axes=("q_lora", "embed"))
        self.q_a_layernorm = RMSNorm(q_lora_dim, eps, norm_impl)
        self.q_b_proj = Linear(q_lora_dim, num_heads * self.qk_head_dim, False, compute_dtype,
                               axes=("heads", "q_lora"))
        self.kv_a_proj_with_mqa = Linear(hidden_size, kv_lora_dim + qk_rope_dim, False, compute_dtype,
                                         axes=("kv_lora", "embed"))
        self.kv_a_layernorm = RMSNorm(kv_lora_dim, eps, norm_impl)
        self.kv_b_proj = Linear(kv_lora_dim, num_heads * (qk_nope_dim + v_dim), False, compute_dtype,
                                axes=("heads", "kv_lora"))
        self.o_proj = Linear(num_heads * v_dim, hidden_size, False, compute_dtype, axes=("embed", "heads"))
        # Tensor parallelism, set from outside (parallel_strategies.parallelize): the shared k_rope feeds
        # every head, so with the heads split over ranks its gradient is a partial sum on each rank;
        # `k_rope_comm` (identity forward, gradient summed over the group) makes it whole.
        self.k_rope_comm = None

    def _q(self, x_BSH, cos_B1SD, sin_B1SD):
        """(q_nope [B,N,S,Dn], roped q_rope [B,N,S,Dr])."""
        b, s, _ = x_BSH.shape
        n, dn, dr = self.num_heads, self.qk_nope_dim, self.qk_rope_dim
        q_BSNQ = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x_BSH))).reshape(b, s, n, dn + dr)
        q_BNSQ = q_BSNQ.transpose(0, 2, 1, 3)
        q_nope_BNSn = q_BNSQ[:, :, :, :dn]
        q_rope_BNSr = apply_rope(q_BNSQ[:, :, :, dn:], cos_B1SD, sin_B1SD, ROPE_LAYOUT, self.rope_impl)
        return q_nope_BNSn, q_rope_BNSr

    def _latent(self, x_BSH, cos_B1SD, sin_B1SD):
        """(normed c_kv [B,S,Rkv], roped shared k_rope [B,1,S,Dr]) -- what the KV cache holds."""
        b, s, _ = x_BSH.shape
        kv_a_BSC = self.kv_a_proj_with_mqa(x_BSH)
        c_kv_BSR = kv_a_BSC[:, :, :self.kv_lora_dim]
        k_rope_B1Sr = kv_a_BSC[:, :, self.kv_lora_dim:].reshape(b, 1, s, self.qk_rope_dim)
        if self.k_rope_comm is not None:
            k_rope_B1Sr = self.k_rope_comm(k_rope_B1Sr)
        k_rope_B1Sr = apply_rope(k_rope_B1Sr, cos_B1SD, sin_B1SD, ROPE_LAYOUT, self.rope_impl)
        return self.kv_a_layernorm(c_kv_BSR), k_rope_B1Sr

    def _attend(self, q_nope_BNSn, q_rope_BNSr, c_BSR, k_rope_B1Sr, segment_ids_BS):
        """Naive form: expand per-head k/v from the latent and run ops.attention -> [B,S,H]."""
        b, n, s, _ = q_nope_BNSn.shape
        dn, dr, dv = self.qk_nope_dim, self.qk_rope_dim, self.v_dim
        kv_BSNK = self.kv_b_proj(c_BSR).reshape(b, s, n, dn + dv)
        kv_BNSK = kv_BSNK.transpose(0, 2, 1, 3)
        k_nope_BNSn = kv_BNSK[:, :, :, :dn]
        v_BNSv = kv_BNSK[:, :, :, dn:]

        q = ops.concat((q_nope_BNSn, q_rope_BNSr), -1)
        k = ops.concat((k_nope_BNSn, ops.broadcast_to(k_rope_B1Sr, (b, n, s, dr))), -1)
        o_BNSv = attention(q, k, v_BNSv, segment_ids_BS, causal=True, scale=self.scale,
                           impl=self.attention_impl)
        o_BSV = o_BNSv.transpose(0, 2, 1, 3).reshape(b, s, n * dv)
        return self.o_proj(o_BSV)

    def construct(self, x_BSH, cos_B1SD, sin_B1SD, segment_ids_BS):
        q_nope, q_rope = self._q(x_BSH, cos_B1SD, sin_B1SD)
        c_BSR, k_rope_B1Sr = self._latent(x_BSH, cos_B1SD, sin_B1SD)
        return self._attend(q_nope, q_rope, c_BSR, k_rope_B1Sr, segment_ids_BS)

    def prefill(self, x_BSH, cos_B1SD, sin_B1SD, segment_ids_BS):
        """construct's output and the compressed cache: (out, c [B,1,S,Rkv], k_rope [B,1,S,Dr])."""
        q_nope, q_rope = self._q(x_BSH, cos_B1SD, sin_B1SD)
        c_BSR, k_rope_B1Sr = self._latent(x_BSH, cos_B1SD, sin_B1SD)
        out = self._attend(q_nope, q_rope, c_BSR, k_rope_B1Sr, segment_ids_BS)
        return out, c_BSR[:, None], k_rope_B1Sr

    def decode(self, x_B1H, cos_B11D, sin_B11D, index_B, c_cache, k_rope_cache, valid_BT):
        """One new column per row, absorbed form: (out [B,1,H], c_cache, k_rope_cache).
        `valid_BT` must already mark column index_B[b]. S columns per row: index [B,S], x [B,S,H] and a
        per-query mask [B,S,T] (pangu.common.kv_cache.chunk_mask)."""
        b, s = x_B1H.shape[0], x_B1H.shape[1]
        n, dn, dv, r = self.num_heads, self.qk_nope_dim, self.v_dim, self.kv_lora_dim
        q_nope_BN1n, q_rope_BN1r = self._q(x_B1H, cos_B11D, sin_B11D)
        c_B1R, k_rope_B11r = self._latent(x_B1H, cos_B11D, sin_B11D)
        c_cache = kv_cache_write(c_cache, c_B1R[:, None].astype(c_cache.dtype), index_B)
        k_rope_cache = kv_cache_write(k_rope_cache, k_rope_B11r.astype(k_rope_cache.dtype), index_B)
        w_NKR = self.kv_b_proj.weight.reshape(n, dn + dv, r).astype(ms.float32)
        w_uk_NnR, w_uv_NvR = w_NKR[:, :dn], w_NKR[:, dn:]
        q_abs_BN1R = ops.matmul(q_nope_BN1n.astype(ms.float32), w_uk_NnR)
        q_BN1C = ops.concat((q_abs_BN1R, q_rope_BN1r.astype(ms.float32)), -1)
        k_B1TC = ops.concat((c_cache, k_rope_cache), -1).astype(ms.float32)
        ctx_BN1R = decode_attention(q_BN1C, k_B1TC, c_cache.astype(ms.float32), valid_BT, self.scale)
        o_BN1v = ops.matmul(ctx_BN1R, w_uv_NvR.swapaxes(-1, -2))
        out = self.o_proj(o_BN1v.transpose(0, 2, 1, 3).reshape(b, s, n * dv).astype(x_B1H.dtype))
        return out, c_cache, k_rope_cache
