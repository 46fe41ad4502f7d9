"""Rotary position embedding, plain MindSpore ops (fp32 tables).

Legend: B batch, N heads, S sequence, D rotary dim.
Layouts (how the D dims are paired for rotation):
  "rotate_half": dim i pairs with dim i + D/2 (GPT-NeoX / Llama / Pangu Pro MoE);
                 table = [f0..f_{D/2-1}, f0..f_{D/2-1}].
  "interleaved": dim 2i pairs with dim 2i+1 (GPT-J / Pangu Ultra MoE's MLA rope dims);
                 table = [f0, f0, f1, f1, ...].
"""
import numpy as np
import mindspore as ms
from mindspore import ops, Tensor

LAYOUTS = ("rotate_half", "interleaved")


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout: unknown rope layout {layout!r}; use one of {LAYOUTS}")


def inv_freq(dim: int, theta: float) -> np.ndarray:
    """theta^(-2i/dim) for i in [0, dim/2), float64 numpy (exact constants for the graph)."""
    if dim % 2:
        raise ValueError(f"dim: rotary dim {dim} is odd; use an even rotary dim")
    return 1.0 / (float(theta) ** (np.arange(0, dim, 2, dtype=np.float64) / dim))


def rotary_tables(position_ids_BS, dim, theta, layout="rotate_half"):
    """position_ids [B, S] int -> (cos, sin) fp32 [B, 1, S, D] laid out for `layout`."""
    check_layout(layout)
    freqs_h = Tensor(inv_freq(dim, theta).astype(np.float32))              # [D/2]
    ang_BSh = position_ids_BS.astype(ms.float32)[:, :, None] * freqs_h      # [B, S, D/2]
    if layout == "rotate_half":
        ang_BSD = ops.concat((ang_BSh, ang_BSh), -1)
    else:
        b, s, h = ang_BSh.shape
        ang_BSD = ops.stack((ang_BSh, ang_BSh), -1).reshape(b, s, 2 * h)
    ang_B1SD = ang_BSD[:, None]
    return ops.cos(ang_B1SD), ops.sin(ang_B1SD)


def _rotate(x, layout):
    """The 'i * x' partner: rotate_half -> [-x2, x1]; interleaved -> [-x1, x0, -x3, x2, ...]."""
    d = x.shape[-1]
    if layout == "rotate_half":
        x1 = x[..., : d // 2]
        x2 = x[..., d // 2:]
        return ops.concat((-x2, x1), -1)
    pairs = x.reshape(x.shape[:-1] + (d // 2, 2))
    x_even = pairs[..., 0]
    x_odd = pairs[..., 1]
    return ops.stack((-x_odd, x_even), -1).reshape(x.shape)


def apply_rope(x_BNSD, cos_B1SD, sin_B1SD, layout="rotate_half"):
    """x * cos + rotate(x) * sin, computed in fp32, returned in x's dtype."""
    check_layout(layout)
    x32 = x_BNSD.astype(ms.float32)
    out = x32 * cos_B1SD + _rotate(x32, layout) * sin_B1SD
    return out.astype(x_BNSD.dtype)


def _layout_angles(ang_BSh, layout):
    """Half-dim angles [B, S, D/2] -> [B, 1, S, D] cos/sin laid out for `layout`."""
    if layout == "rotate_half":
        ang_BSD = ops.concat((ang_BSh, ang_BSh), -1)
    else:
        b, s, h = ang_BSh.shape
        ang_BSD = ops.stack((ang_BSh, ang_BSh), -1).reshape(b, s, 2 * h)
    ang_B1SD = ang_BSD[:, None]
    return ops.cos(ang_B1SD), ops.sin(ang_B1SD)


def rotary_tables_2d(row_ids_BP, col_ids_BP, dim, theta, layout="rotate_half"):
    """2-D RoPE for ViT patches (Qwen2-VL / Qwen2.5-VL VisionRotaryEmbedding(dim/2)).

    row_ids, col_ids [B, P] int -> (cos, sin) fp32 [B, 1, P, dim]: the first dim/4 frequency pairs
    (freqs theta^(-4i/dim)) rotate by the patch row, the last dim/4 by the column.
    """
    check_layout(layout)
    if dim % 4:
        raise ValueError(f"dim: 2-D rotary dim {dim} is not a multiple of 4; use a multiple of 4")
    f_q = Tensor(inv_freq(dim // 2, theta).astype(np.float32))               # [D/4]
    ang_rows = row_ids_BP.astype(ms.float32)[:, :, None] * f_q
    ang_cols = col_ids_BP.astype(ms.float32)[:, :, None] * f_q
    return _layout_angles(ops.concat((ang_rows, ang_cols), -1), layout)      # [B, P, D/2]


def mrope_tables(position_ids_B3S, dim, theta, sections, layout="rotate_half"):
    """3-D multimodal RoPE (M-RoPE, Qwen2-VL / Qwen2.5-VL) tables.

    position_ids [B, 3, S] int (temporal, row, column streams; batch-first like every batch
    field) -> (cos, sin) fp32 [B, 1, S, dim]. Frequency pair k rotates by the temporal position for
    k < sections[0], by the row for the next sections[1] pairs, by the column for the last
    sections[2]; sum(sections) must be dim/2. With three equal streams (text tokens) this equals
    `rotary_tables`.
    """
    check_layout(layout)
    sections = tuple(int(x) for x in sections)
    if len(sections) != 3 or sum(sections) != dim // 2:
        raise ValueError(f"sections: {list(sections)} must be 3 numbers adding up to dim/2 = "
                         f"{dim // 2}; e.g. (dim/8, 3*dim/16, 3*dim/16)")
    f = inv_freq(dim, theta).astype(np.float32)
    stream = np.repeat(np.arange(3), sections)
    sel_3h = np.zeros((3, dim // 2), np.float32)
    sel_3h[stream, np.arange(dim // 2)] = f           # one non-zero per column: exact products
    pos_BS3 = position_ids_B3S.astype(ms.float32).swapaxes(1, 2)
    return _layout_angles(ops.matmul(pos_BS3, Tensor(sel_3h)), layout)
