"""Grouped-query attention with optional q/k/v/o biases and RoPE (Pangu Pro MoE layout).

Legend: B batch, S sequence, H hidden, N query heads, Nkv kv heads, D head dim.
"""
import mindspore as ms
from mindspore import nn

from ops.attention import attention, resolve_impl as attn_resolve
from ops.rope import apply_rope, resolve_impl as rope_resolve
from pangu.common.layers import Linear


class GQAttention(nn.Cell):
    """q/k/v/o projections named like the serving layout; rope on the full head dim."""

    def __init__(self, hidden_size, num_heads, num_kv_heads, head_dim, qkv_bias=True,
                 o_bias=True, compute_dtype=ms.float32, attention_impl="auto",
                 rope_layout="rotate_half"):
        super().__init__()
        self.q_proj = Linear(hidden_size, num_heads * head_dim, qkv_bias, compute_dtype)
        self.k_proj = Linear(hidden_size, num_kv_heads * head_dim, qkv_bias, compute_dtype)
        self.v_proj = Linear(hidden_size, num_kv_heads * head_dim, qkv_bias, compute_dtype)
        self.o_proj = Linear(num_heads * head_dim, hidden_size, o_bias, compute_dtype)
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.rope_layout = rope_layout
        self.attn_impl = attn_resolve(attention_impl)
        self.rope_impl = rope_resolve("auto")

    def construct(self, x_BSH, cos, sin, segment_ids_BS):
        b, s, _ = x_BSH.shape
        d = self.head_dim
        q = self.q_proj(x_BSH).reshape(b, s, self.num_heads, d).swapaxes(1, 2)
        k = self.k_proj(x_BSH).reshape(b, s, self.num_kv_heads, d).swapaxes(1, 2)
        v = self.v_proj(x_BSH).reshape(b, s, self.num_kv_heads, d).swapaxes(1, 2)
        q = apply_rope(q, cos, sin, self.rope_layout, self.rope_impl)
        k = apply_rope(k, cos, sin, self.rope_layout, self.rope_impl)
        o = attention(q, k, v, segment_ids_BS, causal=True, impl=self.attn_impl)   # [B,N,S,D]
        o = o.swapaxes(1, 2).reshape(b, s, self.num_heads * d)
        return self.o_proj(o)
