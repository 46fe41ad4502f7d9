"""MindVL vision tower: patch embed → blocks (2-D RoPE, window/full attention) → patch merger.

Legend: B rows, P patch slots per row, M = P / merge² merged tokens, C ViT width, N heads, D head dim,
D_p = 3·2·14·14 flattened patch values, H decoder hidden size.

Several images share a row (packing): `segment_ids` (image number, 0 = padding) isolates them in
full-attention blocks, `window_ids` (window number, unique in the row) in window blocks, so a packed
row computes exactly what separate forwards of its images compute. The index tensors come from
`mindvl.data.vision_inputs` (numpy), keeping the graph shapes fixed.
"""

from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from mindvl.config import VisionConfig
from ops.attention import attention, resolve_impl as attn_resolve
from ops.rope import apply_rope, resolve_impl as rope_resolve, rotary_tables_2d
from ops.swiglu import resolve_impl as swiglu_resolve, swiglu
from pangu.common.init import param_kind
from pangu.common.layers import Linear, RMSNorm


def gather_rows(x_BM_, index_BK):
    """out[b, k] = x[b, index[b, k]] for x [B, M, ...], index [B, K] (flattened gather; CPU and Ascend)."""
    b, m = x_BM_.shape[:2]
    k = index_BK.shape[1]
    rest = x_BM_.shape[2:]
    offs = (ops.arange(b, dtype=ms.int32) * m)[:, None]
    flat = x_BM_.reshape((b * m,) + rest)
    return ops.gather(flat, (index_BK.astype(ms.int32) + offs).reshape(-1), 0).reshape((b, k) + rest)


def to_window_order(x_BP_, window_index_BM, merge_units: int):
    """Reorder per-patch tensor [B, P, ...] from merge order to window order (moves whole merge units)."""
    b, p = x_BP_.shape[:2]
    rest = x_BP_.shape[2:]
    y = gather_rows(x_BP_.reshape((b, p // merge_units, merge_units) + rest), window_index_BM)
    return y.reshape((b, p) + rest)


def vision_rotary_tables(position_ids_BP2, head_dim: int, theta: float):
    """2-D rotate-half tables [B, 1, P, D]: the first D/4 frequency pairs rotate by the patch row,
    the last D/4 by the column (Qwen2.5-VL's VisionRotaryEmbedding(D/2))."""
    return rotary_tables_2d(position_ids_BP2[:, :, 0], position_ids_BP2[:, :, 1], head_dim, theta)


class VisionAttention(nn.Cell):
    """Fused qkv (bias) + 2-D RoPE + non-causal segment-masked attention + proj (bias)."""

    def __init__(self, cfg: VisionConfig, compute_dtype=ms.float32, attention_impl="auto"):
        super().__init__()
        c = cfg.hidden_size
        self.qkv = Linear(c, 3 * c, True, compute_dtype, axes=("vit_heads", "vit_embed"))
        self.proj = Linear(c, c, True, compute_dtype, axes=("vit_embed", "vit_heads"))
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.attn_impl = attn_resolve(attention_impl)
        self.rope_impl = rope_resolve("auto")

    def construct(self, x_BPC, cos, sin, segment_ids_BP):
        b, p, c = x_BPC.shape
        qkv = self.qkv(x_BPC).reshape(b, p, 3, self.num_heads, self.head_dim).transpose(2, 0, 3, 1, 4)
        q = apply_rope(qkv[0], cos, sin, "rotate_half", self.rope_impl)
        k = apply_rope(qkv[1], cos, sin, "rotate_half", self.rope_impl)
        o = attention(q, k, qkv[2], segment_ids_BP, causal=False, impl=self.attn_impl)   # [B, N, P, D]
        return self.proj(o.swapaxes(1, 2).reshape(b, p, c))


class VisionMLP(nn.Cell):
    """SwiGLU with biases: down(silu(gate(x)) * up(x)) (serving names gate_proj/up_proj/down_proj)."""

    def __init__(self, cfg: VisionConfig, compute_dtype=ms.float32):
        super().__init__()
        c, i = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Linear(c, i, True, compute_dtype, axes=("vit_mlp", "vit_embed"))
        self.up_proj = Linear(c, i, True, compute_dtype, axes=("vit_mlp", "vit_embed"))
        self.down_proj = Linear(i, c, True, compute_dtype, axes=("vit_embed", "vit_mlp"))
        self.impl = swiglu_resolve("auto")

    def construct(self, x):
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x), self.impl))


class VisionBlock(nn.Cell):
    """Pre-norm block: x + attn(norm1(x)); x + mlp(norm2(x))."""

    def __init__(self, cfg: VisionConfig, compute_dtype=ms.float32, attention_impl="auto"):
        super().__init__()
        self.norm1 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.norm2 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = VisionAttention(cfg, compute_dtype, attention_impl)
        self.mlp = VisionMLP(cfg, compute_dtype)

    def construct(self, x_BPC, cos, sin, segment_ids_BP):
        x_BPC = x_BPC + self.attn(self.norm1(x_BPC), cos, sin, segment_ids_BP).astype(x_BPC.dtype)
        return x_BPC + self.mlp(self.norm2(x_BPC)).astype(x_BPC.dtype)


class PatchEmbed(nn.Cell):
    """Conv3d(3→C, kernel = stride = (2, 14, 14), no bias) on one patch = a Linear over its D_p values.
    `proj.weight` is stored [C, D_p]; convert reshapes it to the serving [C, 3, 2, 14, 14]."""

    def __init__(self, cfg: VisionConfig, compute_dtype=ms.float32):
        super().__init__()
        self.proj = Linear(cfg.patch_dim, cfg.hidden_size, False, compute_dtype, axes=("vit_embed", "patch"))

    def construct(self, pixel_values_BPD):
        return self.proj(pixel_values_BPD).astype(ms.float32)


class PatchMerger(nn.Cell):
    """RMSNorm → concat merge² neighbouring patches (4C) → Linear 4C→4C → GELU → Linear 4C→H."""

    def __init__(self, cfg: VisionConfig, compute_dtype=ms.float32):
        super().__init__()
        c4 = cfg.hidden_size * cfg.spatial_merge_size ** 2
        self.ln_q = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = nn.SequentialCell([Linear(c4, c4, True, compute_dtype, axes=("vit_merge", "vit_merge_in")),
                                      nn.GELU(approximate=False),
                                      Linear(c4, cfg.out_hidden_size, True, compute_dtype,
                                             axes=("embed", "vit_merge"))])
        self.c4 = c4

    def construct(self, x_BPC):
        b, p, _ = x_BPC.shape
        return self.mlp(self.ln_q(x_BPC).reshape(b, p * x_BPC.shape[2] // self.c4, self.c4))


class VisionTransformer(nn.Cell):
    """pixel_values [B, P, D_p] (+ index tensors) -> merged features [B, M, H] fp32 in merge order."""

    def __init__(self, cfg: VisionConfig, compute_dtype=ms.float32, attention_impl="auto"):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg, compute_dtype)
        self.blocks = nn.CellList([VisionBlock(cfg, compute_dtype, attention_impl) for _ in range(cfg.depth)])
        self.merger = PatchMerger(cfg, compute_dtype)
        self.full_attention = tuple(i in cfg.fullatt_block_indexes for i in range(cfg.depth))
        self.merge_units = cfg.spatial_merge_size ** 2

    def construct(self, pixel_values_BPD, position_ids_BP2, segment_ids_BP, window_ids_BP,
                  window_index_BM, reverse_window_index_BM):
        mu = self.merge_units
        x = to_window_order(self.patch_embed(pixel_values_BPD), window_index_BM, mu)
        pos = to_window_order(position_ids_BP2, window_index_BM, mu)
        seg_full = to_window_order(segment_ids_BP, window_index_BM, mu)
        seg_win = to_window_order(window_ids_BP, window_index_BM, mu)
        cos, sin = vision_rotary_tables(pos, self.cfg.head_dim, self.cfg.rope_theta)
        for i, blk in enumerate(self.blocks):
            x = blk(x, cos, sin, seg_full if self.full_attention[i] else seg_win)
        merged = self.merger(x).astype(ms.float32)                                 # window order
        return gather_rows(merged, reverse_window_index_BM)                       # merge order


VISION_NORMS = ("norm1.weight", "norm2.weight", "ln_q.weight")


def init_vision_params(cell: nn.Cell, std: float, seed: int = 0):
    """pangu.common.init's rules (normal weights, zero biases, unit norms) plus the ViT's norm names."""
    rng = np.random.default_rng(seed)
    for name, p in sorted(cell.parameters_and_names(), key=lambda kv: kv[0]):
        kind = "ones" if name.endswith(VISION_NORMS) else param_kind(name)
        if kind == "ones":
            val = np.ones(p.shape, np.float32)
        elif kind == "zeros":
            val = np.zeros(p.shape, np.float32)
        else:
            val = rng.normal(0.0, std, size=p.shape).astype(np.float32)
        p.set_data(Tensor(val))
