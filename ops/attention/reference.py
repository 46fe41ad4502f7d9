"""Reference attention: plain softmax with an explicit [B, 1, S, S] boolean mask (fp32 math).

Legend: B batch, N query heads, Nkv kv heads, S sequence, Dqk / Dv head dims.
"""
import numpy as np
import mindspore as ms
from mindspore import ops, Tensor

_NEG = -1e30  # finite "minus infinity": a fully masked row stays NaN-free and is zeroed after


def build_mask(segment_ids_BS, seq_len, causal=True):
    """Boolean [B or 1, 1, S, S]: True where query i may attend key j (same non-zero segment,
    and j <= i when causal)."""
    mask = None
    if causal:
        mask = Tensor(np.tril(np.ones((seq_len, seq_len), np.bool_)))[None, None]
    if segment_ids_BS is not None:
        seg_q = segment_ids_BS[:, None, :, None]
        seg_k = segment_ids_BS[:, None, None, :]
        doc = ops.logical_and(seg_q == seg_k, seg_q != 0)
        mask = doc if mask is None else ops.logical_and(mask, doc)
    return mask


def repeat_kv(x_BKSD, n_rep):
    """GQA: [B, Nkv, S, D] -> [B, Nkv*n_rep, S, D] (head h uses kv head h // n_rep)."""
    if n_rep == 1:
        return x_BKSD
    b, nkv, s, d = x_BKSD.shape
    x = ops.broadcast_to(x_BKSD[:, :, None], (b, nkv, n_rep, s, d))
    return x.reshape(b, nkv * n_rep, s, d)


def attention(q, k, v, segment_ids=None, causal=True, scale=None):
    """softmax(q k^T * scale + mask) v; fully masked rows return 0. Output in q's dtype."""
    n, s, dqk = q.shape[1], q.shape[2], q.shape[3]
    n_rep = n // k.shape[1]
    if scale is None:
        scale = dqk ** -0.5
    q32 = q.astype(ms.float32)
    k32 = repeat_kv(k.astype(ms.float32), n_rep)
    v32 = repeat_kv(v.astype(ms.float32), n_rep)
    scores = ops.matmul(q32, k32.swapaxes(-1, -2)) * scale                    # [B, N, S, S]
    mask = build_mask(segment_ids, s, causal)
    if mask is None:
        probs = ops.softmax(scores, -1)
    else:
        scores = ops.where(mask, scores, ops.full_like(scores, _NEG))
        probs = ops.softmax(scores, -1)
        row_any = mask.astype(ms.float32).max(-1, keepdims=True)              # [B, 1, S, 1]
        probs = probs * row_any
    return ops.matmul(probs, v32).astype(q.dtype)
