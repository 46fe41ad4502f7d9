"""MindVL <-> serving layout (Qwen2_5_VLForConditionalGeneration naming) and export.

Ours == serving for `visual.*` except the patch embedding: ours `visual.patch_embed.proj.weight`
[C, 3·2·14·14] (a Linear over flattened patches) <-> serving Conv3d weight [C, 3, 2, 14, 14]
(same values, reshaped: the processor flattens patches channel, frame, row, column).
`language_model.<name>` <-> the decoder arch's own serving names (its convert module), i.e. `model.*`
and `lm_head.*` at top level.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os

import numpy as np

from pangu import registry

_PATCH = "visual.patch_embed.proj.weight"
_LM = "language_model."


def _text_convert(arch: str):
    return importlib.import_module(registry.get_spec(arch)["convert_module"])


def _call(fn, state, text_cfg):
    """Pro's to_hf/from_hf take (state), Ultra's take (state, cfg)."""
    if len(inspect.signature(fn).parameters) >= 2:
        if text_cfg is None:
            raise ValueError("text_cfg: this decoder's converter needs its config; pass text_cfg=model.text_config")
        return fn(state, text_cfg)
    return fn(state)


def to_hf(state: dict, vision_cfg, text_arch: str, text_cfg=None) -> dict:
    out, text = {}, {}
    for name, v in state.items():
        v = np.asarray(v)
        if name == _PATCH:
            out[name] = v.reshape(v.shape[0], vision_cfg.in_chans, vision_cfg.temporal_patch_size,
                                  vision_cfg.patch_size, vision_cfg.patch_size)
        elif name.startswith(_LM):
            text[name[len(_LM):]] = v
        else:
            out[name] = v
    out.update(_call(_text_convert(text_arch).to_hf, text, text_cfg))
    return out


def from_hf(state: dict, text_arch: str, text_cfg=None) -> dict:
    out, text = {}, {}
    for name, v in state.items():
        v = np.asarray(v)
        if name == _PATCH:
            out[name] = v.reshape(v.shape[0], -1)
        elif name.startswith("visual."):
            out[name] = v
        else:
            text[name] = v
    out.update({_LM + k: v for k, v in _call(_text_convert(text_arch).from_hf, text, text_cfg).items()})
    return out


def hf_config(model) -> dict:
    """config.json: the decoder's serving config + nested vision_config + M-RoPE sections."""
    cfg, v = model.config, model.vision_config
    d = _text_convert(cfg.text_arch).hf_config(model.text_config)
    vd = dataclasses.asdict(v)
    vd["fullatt_block_indexes"] = list(v.fullatt_block_indexes)
    vd.update(spatial_patch_size=v.patch_size, hidden_act="silu")
    d.update(vision_config=vd, image_token_id=cfg.image_token_id, vision_start_token_id=cfg.vision_start_token_id,
             vision_end_token_id=cfg.vision_end_token_id,
             rope_scaling={"type": "mrope", "mrope_section": list(model.mrope_section)},
             text_architectures=d.get("architectures"), architectures=["Qwen2_5_VLForConditionalGeneration"],
             model_type="qwen2_5_vl")
    return d


def export(model, processor, directory: str, tokenizer=None, overwrite: bool = False) -> dict:
    """Export a built MindVL model for serving: `recipes.export.export_state` (the layout of
    `python -m recipes.export`: sharded safetensors + index, config.json, preprocessor_config.json,
    and the tokenizer / generation files when `tokenizer` is given). Returns the safetensors index."""
    from recipes.export import export_state

    state = {n: p.asnumpy() for n, p in model.parameters_and_names()}
    return export_state(model.config, state, directory, tokenizer, processor=processor, overwrite=overwrite,
                        log=lambda *_: None)


# ---------------------------------------------------------------------------------------------
# Tokenizer, generation and processor files of a serving export (recipes.export writes them)
# ---------------------------------------------------------------------------------------------

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _byte_chars() -> list[str]:
    """The byte -> printable character table of byte-level BPE tokenizer.json files (GPT-2 / Qwen2):
    printable Latin-1 bytes map to themselves, the other 68 to U+0100 onwards."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = dict(zip(keep, keep)), 0
    for b in range(256):
        if b not in table:
            table[b] = 256 + extra
            extra += 1
    return [chr(table[b]) for b in range(256)]


def _check_byte_tokenizer(tokenizer):
    from mindvl.processor import SPECIAL_TOKENS, ByteTokenizer

    if not isinstance(tokenizer, ByteTokenizer):
        raise ValueError(f"tokenizer: {type(tokenizer).__name__} has no MindVL serving export; only ByteTokenizer "
                         "(the tokenizer of mindvl.dataset) is supported")
    return SPECIAL_TOKENS


def tokenizer_json(tokenizer) -> dict:
    """`tokenizer.json` (Hugging Face `tokenizers` format) that encodes exactly like our ByteTokenizer:
    byte-level BPE without merges (one token per UTF-8 byte, id = byte + offset) and the special
    tokens as added tokens with their ids 0..6. Like Qwen2's tokenizer, special-token strings in the
    text are matched as special tokens (ByteTokenizer.encode only ever sees plain text)."""
    specials = _check_byte_tokenizer(tokenizer)
    vocab = {t: tokenizer.token_id(t) for t in specials}
    vocab.update({c: tokenizer.offset + b for b, c in enumerate(_byte_chars())})
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": tokenizer.token_id(t), "content": t, "single_word": False, "lstrip": False,
                              "rstrip": False, "normalized": False, "special": True} for t in specials],
            "normalizer": None, "pre_tokenizer": byte_level, "post_processor": None, "decoder": byte_level,
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": vocab, "merges": []}}


def chat_template() -> str:
    """Jinja chat template (transformers' apply_chat_template, Qwen2.5-VL message format) that renders
    what `processor.render_conversation(template="chat")` tokenises: default system turn,
    `<|im_start|>role\\n ... <|im_end|>\\n`, an image as <|vision_start|><|image_pad|><|vision_end|>
    (the processor repeats <|image_pad|> once per merged token). Training rows end with <eod> after the
    last turn; generation stops at <|im_end|>."""
    import inspect

    from mindvl.processor import render_conversation

    system = inspect.signature(render_conversation).parameters["system"].default
    image = "<|vision_start|><|image_pad|><|vision_end|>"
    return ("{% for message in messages %}"
            "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n" + system + "<|im_end|>\n"
            "{% endif %}<|im_start|>{{ message['role'] }}\n"
            "{% if message['content'] is string %}{{ message['content'] | replace('<image>', '" + image + "') }}"
            "{% else %}{% for content in message['content'] %}"
            "{% if content['type'] == 'image' or 'image' in content %}" + image +
            "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
            "<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def generation_ids(tokenizer) -> dict:
    """bos/eos/pad ids of generation_config.json: stop at <|im_end|> (end of an answer) or <eod>."""
    _check_byte_tokenizer(tokenizer)
    return {"bos_token_id": None, "eos_token_id": [tokenizer.token_id("<|im_end|>"), tokenizer.eod_id],
            "pad_token_id": tokenizer.pad_id}


def save_tokenizer(tokenizer, directory: str, max_length: int = 4096) -> None:
    """tokenizer.json + tokenizer_config.json (PreTrainedTokenizerFast, chat template) + special_tokens_map.json."""
    specials = _check_byte_tokenizer(tokenizer)
    named = {"eos_token": "<|im_end|>", "pad_token": specials[tokenizer.pad_id]}
    extra = [t for t in specials if t not in named.values()]
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
              "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
              **named, "additional_special_tokens": extra, "chat_template": chat_template(),
              "added_tokens_decoder": {str(tokenizer.token_id(t)): {
                  "content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                  "special": True} for t in specials}}
    for name, body in (("tokenizer.json", tokenizer_json(tokenizer)), ("tokenizer_config.json", config),
                       ("special_tokens_map.json", {**named, "additional_special_tokens": extra})):
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            json.dump(body, f, indent=2, ensure_ascii=False)


def load_tokenizer(directory: str):
    """The ByteTokenizer described by an export's tokenizer.json; a one-line ValueError when the file
    is missing or describes any other tokenizer (ids, byte table, merges, special tokens)."""
    from mindvl.processor import ByteTokenizer

    path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: not found; a MindVL export carries tokenizer.json (python -m recipes.export)")
    with open(path, encoding="utf-8") as f:
        found = json.load(f)
    tokenizer = ByteTokenizer()
    want = tokenizer_json(tokenizer)
    for key in ("added_tokens", "pre_tokenizer", "decoder", "model"):
        if found.get(key) != want[key]:
            raise ValueError(f"{path}: {key} differs from MindVL's ByteTokenizer (byte-level, ids = byte + "
                             f"{tokenizer.offset}, 7 special tokens); this tokenizer cannot be rebuilt here")
    return tokenizer


def check_processor(processor, vision_cfg) -> None:
    """The processor must cut patches the way the exported ViT reads them."""
    for ours, theirs in (("patch_size", "patch_size"), ("temporal_patch_size", "temporal_patch_size"),
                         ("merge_size", "spatial_merge_size")):
        if getattr(processor, ours) != getattr(vision_cfg, theirs):
            raise ValueError(f"preprocessor_config.json: {ours} {getattr(processor, ours)} but the model's "
                             f"vision_config.{theirs} is {getattr(vision_cfg, theirs)}; the processor belongs to "
                             "another model")


def save_preprocessor(processor, directory: str) -> str:
    """preprocessor_config.json as Qwen2.5-VL ships it (min/max_pixels also as `size`), plus our record
    (`extra.resolution_search`, written by mindvl.evaluate); ImageProcessor.load reads it back."""
    d = processor.to_dict()
    d.update(processor_class="Qwen2_5_VLProcessor",
             size={"shortest_edge": processor.min_pixels, "longest_edge": processor.max_pixels})
    path = os.path.join(directory, "preprocessor_config.json")
    with open(path, "w") as f:
        json.dump(d, f, indent=2, sort_keys=True)
    return path
