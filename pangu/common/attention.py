"""Grouped-query attention with optional q/k/v/o biases and RoPE (Pangu Pro MoE layout).

Legend: B batch, S sequence, H hidden, N query heads, Nkv kv heads, D head dim, T cache columns.

KV cache (pangu/generate.py's `KVCacheModel`, pieces in pangu.common.kv_cache): `prefill` is `construct` that also returns the
roped k/v of every column ([B, Nkv, S, D], the cache); `decode` runs ONE new column per row: it
writes its k/v at column index_B[b] (`kv_cache_write`) and attends over the valid columns
(`decode_attention`, GQA by repeating kv heads). Same math as `construct`, one column at a time.
"""
import mindspore as ms
from mindspore import nn, ops

from ops.attention import attention, resolve_impl as attn_resolve
from ops.rope import apply_rope, resolve_impl as rope_resolve
from pangu.common.layers import Linear
from pangu.common.kv_cache import decode_attention, kv_cache_write


class GQAttention(nn.Cell):
    """q/k/v/o projections named like the serving layout; rope on the full head dim."""

    def __init__(self, hidden_size, num_heads, num_kv_heads, head_dim, qkv_bias=True,
                 o_bias=True, compute_dtype=ms.float32, attention_impl="auto",
                 rope_layout="rotate_half"):
        super().__init__()
        self.q_proj = Linear(hidden_size, num_heads * head_dim, qkv_bias, compute_dtype, axes=("heads", "embed"))
        self.k_proj = Linear(hidden_size, num_kv_heads * head_dim, qkv_bias, compute_dtype,
                             axes=("kv_heads", "embed"))
        self.v_proj = Linear(hidden_size, num_kv_heads * head_dim, qkv_bias, compute_dtype,
                             axes=("kv_heads", "embed"))
        self.o_proj = Linear(num_heads * head_dim, hidden_size, o_bias, compute_dtype, axes=("embed", "heads"))
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.rope_layout = rope_layout
        self.attn_impl = attn_resolve(attention_impl)
        self.rope_impl = rope_resolve("auto")

    def _qkv(self, x_BSH, cos, sin):
        """q [B,N,S,D], k and v [B,Nkv,S,D], rope applied to q and k."""
        b, s, _ = x_BSH.shape
        d = self.head_dim
        q = self.q_proj(x_BSH).reshape(b, s, self.num_heads, d).swapaxes(1, 2)
        k = self.k_proj(x_BSH).reshape(b, s, self.num_kv_heads, d).swapaxes(1, 2)
        v = self.v_proj(x_BSH).reshape(b, s, self.num_kv_heads, d).swapaxes(1, 2)
        q = apply_rope(q, cos, sin, self.rope_layout, self.rope_impl)
        k = apply_rope(k, cos, sin, self.rope_layout, self.rope_impl)
        return q, k, v

    def _out(self, o_BNSD):
        b, _, s, _ = o_BNSD.shape
        return self.o_proj(o_BNSD.swapaxes(1, 2).reshape(b, s, self.num_heads * self.head_dim))

    def construct(self, x_BSH, cos, sin, segment_ids_BS):
        q, k, v = self._qkv(x_BSH, cos, sin)
        return self._out(attention(q, k, v, segment_ids_BS, causal=True, impl=self.attn_impl))

    def prefill(self, x_BSH, cos, sin, segment_ids_BS):
        """construct's output and the cache entries of every column: (out, k [B,Nkv,S,D], v)."""
        q, k, v = self._qkv(x_BSH, cos, sin)
        return self._out(attention(q, k, v, segment_ids_BS, causal=True, impl=self.attn_impl)), k, v

    def decode(self, x_B1H, cos, sin, index_B, k_cache, v_cache, valid_BT):
        """One new column per row (cos/sin [B,1,1,D] of its position): (out [B,1,H], k_cache, v_cache).
        `valid_BT` must already mark column index_B[b] (the token attends to itself)."""
        q, k, v = self._qkv(x_B1H, cos, sin)
        k_cache = kv_cache_write(k_cache, k.astype(k_cache.dtype), index_B)
        v_cache = kv_cache_write(v_cache, v.astype(v_cache.dtype), index_B)
        return self._out(decode_attention(q, k_cache, v_cache, valid_BT)), k_cache, v_cache
