"""The training losses every model of the family shares."""
import mindspore as ms
from mindspore import nn, ops


def masked_cross_entropy(logits_BSV, labels_BS, mask_BS):
    """Mean token NLL over the positions where mask_BS > 0 (fp32; 0 when the mask is empty).

    Legend: B rows, S positions, V vocabulary. The log-softmax runs in fp32 whatever the logits' dtype.
    """
    logp = ops.log_softmax(logits_BSV.astype(ms.float32), -1)
    nll = -ops.gather_elements(logp, 2, labels_BS.astype(ms.int32)[:, :, None]).squeeze(-1)
    mask = mask_BS.astype(ms.float32)
    return (nll * mask).sum() / ops.maximum(mask.sum(), 1.0)


class MaskedCrossEntropy(nn.Cell):
    """`masked_cross_entropy` as a Cell, so a model's loss can be swapped from outside (parallel_strategies
    puts a vocabulary-parallel one in when the lm_head is sharded over the vocabulary)."""

    def construct(self, logits_BSV, labels_BS, mask_BS):
        return masked_cross_entropy(logits_BSV, labels_BS, mask_BS)
