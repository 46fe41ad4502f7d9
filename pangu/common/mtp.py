"""Multi-token prediction (MTP, DeepSeek-V3 style; Pangu Ultra MoE has one MTP layer).

Legend: B batch, S sequence, H hidden, D = number of MTP depths, d = 1..D.

MTP module d predicts token t+1+d at position t from
    h_d = Layer_d(eh_proj([enorm(emb(token t+d)) | hnorm(h_{d-1})]))      (2H -> H, no bias)
    logits_d = lm_head(shared_head.norm(h_d))
with h_0 = the main model's final (normed) hidden states, the embedding and lm_head SHARED with
the main model, and Layer_d one ordinary decoder layer (same attention masks and positions).
Serving layout: MTP module d is stored as `model.layers.{L+d-1}.*` = the decoder layer's own
weights plus `enorm`, `hnorm`, `eh_proj`, `shared_head.norm` (the order [emb | h] of the concat
matches the serving code, which loads eh_proj as-is).

Targets under packing: the target of depth d at position t is token t+1+d = labels[t+d], valid
only when position t+d is a real target (loss_mask[t+d]) of the SAME document as t (equal,
non-zero segment ids) and t+d < S; everything else is masked. Using `labels` (not input_ids)
keeps the data pipeline's label for the last position of a row and its loss-mask decisions.
"""
import numpy as np
import mindspore as ms
from mindspore import nn, ops

from pangu.common.layers import Linear, RMSNorm


def shift_left(x_BS, d, fill=0):
    """y[:, t] = x[:, t+d] for t+d < S, else `fill` (static shapes, works in GRAPH mode)."""
    b, s = x_BS.shape
    if d >= s:
        return ops.full((b, s), fill, dtype=x_BS.dtype)
    pad = ops.full((b, d), fill, dtype=x_BS.dtype)
    return ops.concat((x_BS[:, d:], pad), 1)


def mtp_targets(labels_BS, loss_mask_BS, segment_ids_BS, d):
    """(labels_d int32, mask_d fp32) of MTP depth d: labels[t+d] where t+d is a valid target of
    the same document as t, else masked (label 0, mask 0)."""
    seg = segment_ids_BS.astype(ms.int32)
    seg_d = shift_left(seg, d, 0)
    same_doc = ops.logical_and(seg_d == seg, seg != 0).astype(ms.float32)
    mask_d = shift_left(loss_mask_BS.astype(ms.float32), d, 0) * same_doc
    labels_d = shift_left(labels_BS.astype(ms.int32), d, 0) * (mask_d > 0).astype(ms.int32)
    return ops.stop_gradient(labels_d), ops.stop_gradient(mask_d)


def mtp_targets_np(labels, loss_mask, segment_ids, d):
    """Numpy twin of `mtp_targets` (for data inspection and tests)."""
    labels, loss_mask, seg = (np.asarray(a) for a in (labels, loss_mask, segment_ids))
    b, s = labels.shape
    out_l = np.zeros((b, s), np.int32)
    out_m = np.zeros((b, s), np.float32)
    for i in range(b):
        for t in range(s - d):
            if seg[i, t] != 0 and seg[i, t + d] == seg[i, t] and loss_mask[i, t + d] > 0:
                out_l[i, t] = labels[i, t + d]
                out_m[i, t] = 1.0
    return out_l, out_m


class SharedHead(nn.Cell):
    """`shared_head.norm`: the MTP module's own final norm (the head matrix is the main lm_head)."""

    def __init__(self, hidden_size, eps=1e-5):
        super().__init__()
        self.norm = RMSNorm(hidden_size, eps)

    def construct(self, h):
        return self.norm(h)


class MTPLayerMixin:
    """Mix into a decoder-layer Cell class (listed first) to make it an MTP module: adds
    enorm / hnorm / eh_proj / shared_head next to the layer's own weights (serving layout)."""

    def init_mtp(self, hidden_size, eps=1e-5, compute_dtype=ms.float32):
        self.enorm = RMSNorm(hidden_size, eps)
        self.hnorm = RMSNorm(hidden_size, eps)
        self.eh_proj = Linear(2 * hidden_size, hidden_size, False, compute_dtype, axes=("embed", "mtp_concat"))
        self.shared_head = SharedHead(hidden_size, eps)

    def mtp_input(self, h_prev_BSH, emb_BSH):
        """eh_proj([enorm(emb) | hnorm(h_prev)]) -> fp32 [B, S, H], the layer's input."""
        x = ops.concat((self.enorm(emb_BSH), self.hnorm(h_prev_BSH)), -1)
        return self.eh_proj(x).astype(ms.float32)
