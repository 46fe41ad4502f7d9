"""MindVL = vision tower + patch merger + any pangu decoder (pangu.registry), with 3-D M-RoPE.

Legend: B rows, S LLM tokens, H decoder hidden, V vocab, P patch slots, M = P/4 merged tokens,
D rotary dim of the decoder.

The decoder is used through one hook, `language_model.model.forward_embeddings(h, cos, sin,
segment_ids)` (input embeddings + rotary tables instead of ids + positions), and its
`_logits(h)`; nothing of it is copied. Image placeholder tokens' embeddings are replaced by the
merged vision features (`image_mask`, `image_token_index` from `mindvl.data.collate`).
"""

from __future__ import annotations

import dataclasses

import mindspore as ms
from mindspore import Tensor, nn, ops

from mindvl.config import MindVLConfig, auto_mrope_section
from mindvl.vision import VisionTransformer, gather_rows, init_vision_params
from ops._dispatch import impl_scope
from ops.rope import mrope_tables  # noqa: F401  (lives in ops.rope; re-exported for callers)
from pangu import registry
from pangu.common.layers import dtype_of

VISION_KEYS = ("pixel_values", "vit_position_ids", "vit_segment_ids", "vit_window_ids", "window_index",
               "reverse_window_index")
MM_KEYS = ("mrope_position_ids", "image_mask", "image_token_index") + VISION_KEYS


def decoder_rope(text_cfg):
    """(rotary dim, theta, layout) of a pangu decoder config: Pro = full head_dim rotate-half;
    Ultra (MLA) = its qk_rope dims, interleaved."""
    if hasattr(text_cfg, "attention_qk_rope_dim"):
        return text_cfg.attention_qk_rope_dim, text_cfg.rope_theta, "interleaved"
    return text_cfg.head_dim, text_cfg.rope_theta, "rotate_half"


class MindVL(nn.Cell):
    """Model contract plus the multimodal batch fields (BATCH_KEYS, in loss() argument order)."""

    BATCH_KEYS = ("input_ids", "labels", "loss_mask", "position_ids", "segment_ids") + MM_KEYS
    METRIC_NAMES = ("lm_loss", "aux_loss", "imbalance")   # what loss() returns, whatever the decoder

    def __init__(self, cfg: MindVLConfig, text_cfg=None, attention_impl: str = "auto", seed: int = 0):
        super().__init__()
        cfg.validate()
        if text_cfg is None:
            text_cfg = cfg.text_config()
        vcfg = cfg.vision_config
        if vcfg.out_hidden_size != text_cfg.hidden_size:
            vcfg = dataclasses.replace(vcfg, out_hidden_size=text_cfg.hidden_size)
        self.config, self.text_config, self.vision_config = cfg, text_cfg, vcfg
        self.rope_dim, self.rope_theta, self.rope_layout = decoder_rope(text_cfg)
        self.mrope_section = tuple(cfg.mrope_section) or auto_mrope_section(self.rope_dim)
        if sum(self.mrope_section) != self.rope_dim // 2:
            raise ValueError(f"mrope_section: {list(self.mrope_section)} sums to {sum(self.mrope_section)}, "
                             f"the decoder has {self.rope_dim // 2} rotary pairs; make them add up or use ()")
        with impl_scope(getattr(text_cfg, "ops_impl", "auto")):     # the decoder's op switch
            self.visual = VisionTransformer(vcfg, dtype_of(text_cfg.compute_dtype), attention_impl)
        init_vision_params(self.visual, vcfg.initializer_range, seed)
        self.language_model = registry.build_model(text_cfg, seed)
        self.aux_coef = float(getattr(text_cfg, "router_aux_loss_coef", 0.0))
        # forward_embeddings returns the balance term averaged over layers (Pro) or summed over the
        # main MoE layers (Ultra, which exposes num_moe_main); MTP layers are not used by MindVL.
        self.balance_div = float(max(getattr(self.language_model, "num_moe_main", 1), 1))

    def image_features(self, pixel_values, vit_position_ids, vit_segment_ids, vit_window_ids, window_index,
                       reverse_window_index):
        """[B, M, H] merged vision tokens per row, merge order."""
        return self.visual(pixel_values, vit_position_ids, vit_segment_ids, vit_window_ids, window_index,
                           reverse_window_index)

    def hidden(self, input_ids, segment_ids, mrope_position_ids, image_mask, image_token_index, pixel_values,
               vit_position_ids, vit_segment_ids, vit_window_ids, window_index, reverse_window_index):
        text_BSH = self.language_model.model.embed_tokens(input_ids)
        vis_BMH = self.image_features(pixel_values, vit_position_ids, vit_segment_ids, vit_window_ids,
                                      window_index, reverse_window_index)
        img_BSH = gather_rows(vis_BMH, image_token_index)
        h_BSH = ops.where(image_mask[:, :, None] > 0.5, img_BSH, text_BSH)
        cos, sin = mrope_tables(mrope_position_ids, self.rope_dim, self.rope_theta, self.mrope_section,
                                self.rope_layout)
        return self.language_model.model.forward_embeddings(h_BSH, cos, sin, segment_ids)

    def construct(self, input_ids, position_ids, segment_ids, mrope_position_ids, image_mask, image_token_index,
                  pixel_values, vit_position_ids, vit_segment_ids, vit_window_ids, window_index,
                  reverse_window_index):
        """logits [B, S, V] fp32 (position_ids is unused: M-RoPE positions carry it)."""
        h, _, _ = self.hidden(input_ids, segment_ids, mrope_position_ids, image_mask, image_token_index,
                              pixel_values, vit_position_ids, vit_segment_ids, vit_window_ids, window_index,
                              reverse_window_index)
        return self.language_model._logits(h)

    def loss(self, input_ids, labels, loss_mask, position_ids, segment_ids, mrope_position_ids, image_mask,
             image_token_index, pixel_values, vit_position_ids, vit_segment_ids, vit_window_ids, window_index,
             reverse_window_index):
        """(total, (lm_loss, aux_loss, imbalance)); aux = router_aux_loss_coef · balance (0 without one)."""
        h, balance, imbalance = self.hidden(input_ids, segment_ids, mrope_position_ids, image_mask,
                                            image_token_index, pixel_values, vit_position_ids, vit_segment_ids,
                                            vit_window_ids, window_index, reverse_window_index)
        logits = self.language_model._logits(h)
        logp = ops.log_softmax(logits, -1)
        nll = -ops.gather_elements(logp, 2, labels.astype(ms.int32)[:, :, None]).squeeze(-1)
        mask = loss_mask.astype(ms.float32)
        lm_loss = (nll * mask).sum() / ops.maximum(mask.sum(), 1.0)
        aux_loss = self.aux_coef * balance / self.balance_div
        return lm_loss + aux_loss, (lm_loss, aux_loss, ops.stop_gradient(imbalance / self.balance_div))


def batch_args(model: MindVL, batch: dict, keys=None):
    """Tensors for `model(...)` (keys None) or `model.loss(...)` (keys = model.BATCH_KEYS)."""
    if keys is None:
        keys = ("input_ids", "position_ids", "segment_ids") + MM_KEYS
    return [Tensor(batch[k]) for k in keys]


def build_model(cfg: MindVLConfig, seed=None, attention_impl: str = "auto") -> MindVL:
    """MindVL from a config (registry-compatible signature; seed None -> 0)."""
    return MindVL(cfg, None, attention_impl, 0 if seed is None else int(seed))
