"""MindVL = vision tower + patch merger + any pangu decoder (pangu.decoders), with 3-D M-RoPE.

Legend: B rows, S LLM tokens, H decoder hidden, V vocab, P patch slots, M = P/4 merged tokens,
D rotary dim of the decoder.

The decoder is used through its public surface: `language_model.model.forward_embeddings(h, cos,
sin, segment_ids)` (input embeddings + rotary tables instead of ids + positions) and
`language_model.logits(h)`; nothing of it is copied. Image placeholder tokens' embeddings are
replaced by the merged vision features (`image_mask`, `image_token_index` from `mindvl.data.collate`).
"""

from __future__ import annotations


from mindspore import Tensor, nn, ops

from mindvl.config import MindVLConfig
from mindvl.vision import VisionTransformer, gather_rows, init_vision_params
from ops import impl_scope
from ops.rope import mrope_tables
from pangu.common.layers import dtype_of
from pangu.common.losses import masked_cross_entropy
from pangu.decoders import get_decoder

VISION_KEYS = ("pixel_values", "vit_position_ids", "vit_segment_ids", "vit_window_ids", "window_index",
               "reverse_window_index")
MM_KEYS = ("mrope_position_ids", "image_mask", "image_token_index") + VISION_KEYS
FORWARD_KEYS = ("input_ids", "position_ids", "segment_ids") + MM_KEYS   # construct's inputs, in order
_LM = "language_model."


class MindVL(nn.Cell):
    """Model contract plus the multimodal batch fields (BATCH_KEYS, in loss() argument order)."""

    BATCH_KEYS = ("input_ids", "labels", "loss_mask", "position_ids", "segment_ids") + MM_KEYS
    METRIC_NAMES = ("lm_loss", "aux_loss", "imbalance")   # what loss() returns, whatever the decoder

    def __init__(self, cfg: MindVLConfig, attention_impl: str = "auto"):
        super().__init__()
        cfg.validate()
        text_cfg = cfg.text_config()
        vcfg = cfg.vision_for_decoder()
        self.config, self.text_config, self.vision_config = cfg, text_cfg, vcfg
        self.rope_dim, self.rope_theta, self.rope_layout = cfg.decoder_rope()
        self.mrope_section = cfg.mrope()
        if sum(self.mrope_section) != self.rope_dim // 2:
            raise ValueError(f"mrope_section: {list(self.mrope_section)} sums to {sum(self.mrope_section)}, "
                             f"the decoder has {self.rope_dim // 2} rotary pairs; make them add up or use ()")
        with impl_scope(getattr(text_cfg, "ops_impl", "auto")):     # the decoder's op switch
            self.visual = VisionTransformer(vcfg, dtype_of(text_cfg.compute_dtype), attention_impl)
        self.language_model = get_decoder(cfg.text_arch).instantiate(text_cfg)
        self.aux_coef = float(getattr(text_cfg, "router_aux_loss_coef", 0.0))
        # forward_embeddings returns the balance term averaged over layers (Pro) or summed over the
        # main MoE layers (Ultra, which exposes num_moe_main); MTP layers are not used by MindVL.
        self.balance_div = float(max(getattr(self.language_model, "num_moe_main", 1), 1))
        # the decoder's aux-loss-free balancing (an Ultra decoder with router_bias_update_rate > 0)
        self.tracks_expert_load = bool(getattr(self.language_model, "tracks_expert_load", False))

    def expert_loads(self):
        return self.language_model.expert_loads()

    def zero_expert_loads(self):
        return self.language_model.zero_expert_loads()

    def update_expert_bias(self, loads, applied):
        return self.language_model.update_expert_bias(loads, applied)

    def restore_expert_loads(self, loads):
        return self.language_model.restore_expert_loads(loads)

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
        return self.language_model.logits(h)

    def loss(self, input_ids, labels, loss_mask, position_ids, segment_ids, mrope_position_ids, image_mask,
             image_token_index, pixel_values, vit_position_ids, vit_segment_ids, vit_window_ids, window_index,
             reverse_window_index):
        """(total, (lm_loss, aux_loss, imbalance)); aux = router_aux_loss_coef · balance (0 without one)."""
        h, balance, imbalance = self.hidden(input_ids, segment_ids, mrope_position_ids, image_mask,
                                            image_token_index, pixel_values, vit_position_ids, vit_segment_ids,
                                            vit_window_ids, window_index, reverse_window_index)
        lm_loss = masked_cross_entropy(self.language_model.logits(h), labels, loss_mask)
        aux_loss = self.aux_coef * balance / self.balance_div
        return lm_loss + aux_loss, (lm_loss, aux_loss, ops.stop_gradient(imbalance / self.balance_div))


def batch_args(model: MindVL, batch: dict, keys=None):
    """Tensors for `model(...)` (keys None) or `model.loss(...)` (keys = model.BATCH_KEYS)."""
    return [Tensor(batch[k]) for k in (keys or FORWARD_KEYS)]


def init_weights(model: MindVL, cfg: MindVLConfig, seed=None) -> MindVL:
    """The vision tower's init (normal weights, zero biases, unit norms) and the decoder's own scheme,
    each drawn from `seed` (None -> 0)."""
    seed = 0 if seed is None else int(seed)
    init_vision_params(model.visual, model.vision_config.initializer_range, seed)
    get_decoder(cfg.text_arch).init_weights(model.language_model, model.text_config, seed)
    return model


def build_model(cfg: MindVLConfig, seed=None, attention_impl: str = "auto") -> MindVL:
    """The initialised MindVL of a config."""
    return init_weights(MindVL(cfg, attention_impl), cfg, seed)


def forward_inputs(cfg: MindVLConfig, ids, pixel_values=None, grid_thw=None) -> list:
    """`model(...)`'s numpy inputs for one sequence (the ModelSpec hook; see mindvl.data.sequence_inputs)."""
    from mindvl.data import sequence_inputs

    batch = sequence_inputs(cfg, ids, pixel_values, grid_thw)
    return [batch[k] for k in FORWARD_KEYS]


def init_from_state(cfg: MindVLConfig, tensors: dict, params: dict, log=print) -> dict:
    """The tensors a MindVL run loads from its `init_from` checkpoint (the ModelSpec hook the trainer calls).

    A MindVL checkpoint (names under `visual.` / `language_model.`) loads as it is. A text decoder's checkpoint (a
    qwen2 / Pangu run of ours, or an imported Qwen2ForCausalLM / Pangu serving directory) is the warm-up's
    pretrained LLM: its `model.*` / `lm_head.*` become `language_model.*`, the vision tower and merger keep their
    fresh initialisation (`params`' current values), and embedding / head rows the text vocabulary lacks (ids
    this MindVL tokenizer adds) keep theirs. Anything else that does not fit is refused in one line."""
    import numpy as np

    if any(n.startswith(("visual.", _LM)) for n in tensors):
        return tensors
    mapped = {_LM + n: np.asarray(v) for n, v in tensors.items()}
    ours = {n for n in params if n.startswith(_LM)}
    extra, missing = sorted(set(mapped) - ours), sorted(ours - set(mapped))
    if extra or missing:
        name = (extra or missing)[0][len(_LM):]
        raise ValueError(f"init_from: {name} {'is not a parameter of' if extra else 'is missing for'} this MindVL's "
                         f"{cfg.text_arch} decoder; warm-start from a text run of the same architecture and sizes "
                         "(text_overrides) as the decoder")
    out = {n: np.array(p.asnumpy()) for n, p in params.items()}
    grown = 0
    for name, value in mapped.items():
        want = tuple(params[name].shape)
        if value.shape != want and value.ndim == 2 and value.shape[1] == want[1] and value.shape[0] < want[0]:
            out[name][: value.shape[0]] = value      # vocabulary rows: the text tokenizer's ids come first
            grown = max(grown, want[0] - value.shape[0])
        else:
            out[name] = value                        # a shape mismatch is named by the loader's strict check
    log(f"init_from: text decoder -> language_model.* ({len(mapped)} tensors); visual.* fresh "
        f"({sum(n.startswith('visual.') for n in params)} tensors)" + (f"; {grown} new vocabulary rows" if grown else ""))
    return out
