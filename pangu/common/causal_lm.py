"""What every causal LM of the family shares around its decoder stack: the head and the entry points.

Legend: B rows, S / T positions, H hidden, V vocabulary.

A concrete model sets `self.model` (embedding + decoder layers + final norm, with `construct`,
`prefill`, `decode`, `forward_embeddings`) and calls `init_head`; this base then provides
    logits(h_BSH)          fp32 logits of normed hidden states (own lm_head, or tied to the embedding)
    cross_entropy(logits, labels, mask)  the masked mean token NLL of those logits (a Cell)
    construct(ids, pos, seg)            -> logits [B, S, V]
    prefill(ids, pos, seg)              -> (logits [B, T, V], cache)       (pangu.generate's KV-cache path)
    decode_step(ids_B1, pos_B1, idx_B, cache) -> (logits [B, 1, V], cache)
The cache is (first per-layer tensors, second per-layer tensors, valid_BT): GQA's k and v, MLA's
compressed latent and shared rope key; valid_BT marks the written columns (pangu.common.kv_cache).
"""
import mindspore as ms
from mindspore import nn, ops

from pangu.common.kv_cache import mark_valid
from pangu.common.layers import Linear
from pangu.common.losses import MaskedCrossEntropy


class CausalLM(nn.Cell):
    """Base of the decoder-only models: the lm head, `logits`, `construct`, `prefill`, `decode_step`."""

    def init_head(self, hidden_size, vocab_size, tie_word_embeddings, compute_dtype):
        self.tie = bool(tie_word_embeddings)
        self.compute_dtype = compute_dtype
        if not self.tie:
            self.lm_head = Linear(hidden_size, vocab_size, False, compute_dtype, axes=("vocab", "embed"))
        self.matmul_t = ops.MatMul(transpose_b=True)
        # the token loss of `logits` (a vocabulary-parallel one when parallel_strategies.parallelize
        # shards the lm_head over the vocabulary)
        self.cross_entropy = MaskedCrossEntropy()

    def logits(self, h_BSH):
        """fp32 logits [B, S, V] of normed hidden states h [B, S, H]."""
        if self.tie:
            b, s, hd = h_BSH.shape
            w = self.model.embed_tokens.weight.astype(self.compute_dtype)
            out = self.matmul_t(h_BSH.reshape(-1, hd).astype(self.compute_dtype), w)
            return out.reshape(b, s, -1).astype(ms.float32)
        return self.lm_head(h_BSH).astype(ms.float32)

    def construct(self, input_ids, position_ids, segment_ids):
        h, _, _ = self.model(input_ids, position_ids, segment_ids)
        return self.logits(h)

    def prefill(self, input_ids, position_ids, segment_ids):
        """KV-cache prefill: (logits [B,T,V] = construct's, cache (per-layer a, per-layer b, valid_BT))."""
        h, a, b = self.model.prefill(input_ids, position_ids, segment_ids)
        return self.logits(h), (a, b, (segment_ids != 0).astype(ms.int32))

    def decode_step(self, input_ids_B1, position_ids_B1, index_B, cache):
        """One new token per row at column index_B: (logits [B,1,V], updated cache)."""
        a, b, valid_BT = cache
        valid_BT = mark_valid(valid_BT, index_B)
        h, a, b = self.model.decode(input_ids_B1, position_ids_B1, index_B, a, b, valid_BT)
        return self.logits(h), (a, b, valid_BT)
