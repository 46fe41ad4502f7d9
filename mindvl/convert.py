"""MindVL <-> its serving layouts, config.json both ways, and the files a MindVL serving directory carries
besides the weights (tokenizer.json, preprocessor_config.json).

Two layouts with the same tensor naming:
  SERVING (`mindvl`, Qwen2 decoder)   `Qwen2_5_VLForConditionalGeneration`, model_type "qwen2_5_vl": the
                                      stock Qwen2.5-VL config.json (Qwen2 text keys at top level, the stock
                                      `vision_config` keys, `rope_scaling.mrope_section`, the token ids);
                                      what transformers' Qwen2.5-VL class and vLLM's loader read.
  PANGU_SERVING (`mindvl_pangu`)      `MindVLPanguForConditionalGeneration`, model_type "mindvl_pangu": the
                                      Pangu decoder's own config keys + `text_architectures` + our whole
                                      `vision_config`. No released loader reads MoE layers in a Qwen2.5-VL
                                      model, so this layout is ours (import / export / score here).

Ours == serving for `visual.*` except the patch embedding: ours `visual.patch_embed.proj.weight`
[C, 3·2·14·14] (a Linear over flattened patches) <-> serving Conv3d weight [C, 3, 2, 14, 14]
(same values, reshaped: the processor flattens patches channel, frame, row, column).
`language_model.<name>` <-> the decoder's own serving names (its spec's ServingLayout), i.e. `model.*`
and `lm_head.*` at top level, so the decoder exports exactly like the text model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np

from mindvl.config import MindVLConfig, MindVLPanguConfig, VisionConfig
from pangu.decoders import DECODERS, get_decoder
from pangu.qwen2 import convert as qwen2_convert
from pangu.spec import ServingLayout

_PATCH = "visual.patch_embed.proj.weight"
_LM = "language_model."
_TEXT_ARCH_OF = {DECODERS[name].serving.architecture: name for name in MindVLPanguConfig.TEXT_ARCHS}
# Qwen2.5-VL's vision_config keys (transformers' Qwen2_5_VLVisionConfig as the released config.json spells it);
# its modelling code fixes the ViT's RMSNorm eps at 1e-6 and the 2-D RoPE base at 1e4
_QWEN_VISION_KEYS = ("depth", "hidden_act", "hidden_size", "intermediate_size", "num_heads", "in_chans",
                     "out_hidden_size", "patch_size", "spatial_merge_size", "spatial_patch_size", "window_size",
                     "fullatt_block_indexes", "tokens_per_second", "temporal_patch_size")
_QWEN_VISION_FIXED = {"rms_norm_eps": 1e-6, "rope_theta": 10000.0}


def to_hf(state: dict, cfg: MindVLConfig) -> dict:
    """Our {name: array} -> serving {name: array}."""
    vision, text = cfg.vision_for_decoder(), cfg.text_config()
    out, text_state = {}, {}
    for name, v in state.items():
        v = np.asarray(v)
        if name == _PATCH:
            out[name] = v.reshape(v.shape[0], vision.in_chans, vision.temporal_patch_size,
                                  vision.patch_size, vision.patch_size)
        elif name.startswith(_LM):
            text_state[name[len(_LM):]] = v
        else:
            out[name] = v
    out.update(get_decoder(cfg.text_arch).serving.to_hf(text_state, text))
    return out


def from_hf(state: dict, cfg: MindVLConfig) -> dict:
    """Serving {name: array} -> our {name: array}."""
    out, text_state = {}, {}
    for name, v in state.items():
        v = np.asarray(v)
        if name == _PATCH:
            out[name] = v.reshape(v.shape[0], -1)
        elif name.startswith("visual."):
            out[name] = v
        else:
            text_state[name] = v
    text = get_decoder(cfg.text_arch).serving.from_hf(text_state, cfg.text_config())
    out.update({_LM + k: v for k, v in text.items()})
    return out


def _ids(cfg: MindVLConfig) -> dict:
    return dict(image_token_id=cfg.image_token_id, vision_start_token_id=cfg.vision_start_token_id,
                vision_end_token_id=cfg.vision_end_token_id)


def hf_config(cfg: MindVLConfig) -> dict:
    """config.json of Qwen2_5_VLForConditionalGeneration: Qwen2's text keys, the stock `vision_config`, M-RoPE
    sections and the vision token ids. A model the layout's loaders would build differently is refused."""
    if cfg.text_arch != "qwen2":
        raise ValueError(f"text_arch: {cfg.text_arch!r}; Qwen2.5-VL's loaders build a dense Qwen2 decoder, so "
                         "this model has no qwen2_5_vl export (model.arch: mindvl_pangu exports as mindvl_pangu)")
    text, v = cfg.text_config(), cfg.vision_for_decoder()
    for key, want in _QWEN_VISION_FIXED.items():
        if getattr(v, key) != want:
            raise ValueError(f"vision_config.{key}: {getattr(v, key)}; Qwen2.5-VL's vision tower fixes it at {want}, "
                             f"so this model has no qwen2_5_vl export (train with {key}: {want})")
    vd = {k: getattr(v, k) for k in _QWEN_VISION_KEYS if hasattr(v, k)}
    vd.update(hidden_act="silu", spatial_patch_size=v.patch_size, tokens_per_second=2,   # video only: stock value
              fullatt_block_indexes=list(v.fullatt_block_indexes))
    vd = {k: vd[k] for k in _QWEN_VISION_KEYS}
    d = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
         **qwen2_convert.text_config(text), **_ids(cfg), "vision_config": vd,
         "rope_scaling": {"type": "mrope", "mrope_section": list(cfg.mrope())}, "torch_dtype": "bfloat16"}
    return d


def config_from_hf(d: dict, names=None) -> MindVLConfig:
    """Qwen2.5-VL config.json (+ serving tensor names; None: the config alone) -> our validated MindVLConfig.
    The text keys through Qwen2's reader (its rules and refusals), the vision keys by their stock names;
    `rope_scaling` must be M-RoPE with its sections."""
    text_names = None if names is None else [n for n in names if not n.startswith("visual.")]
    text = qwen2_convert.config_from_hf(d, text_names)
    scaling = d.get("rope_scaling") or {}
    if (scaling.get("type") or scaling.get("rope_type")) != "mrope" or not scaling.get("mrope_section"):
        raise ValueError(f"rope_scaling: {scaling or None} is not M-RoPE with mrope_section; a Qwen2.5-VL config "
                         "has {\"type\": \"mrope\", \"mrope_section\": [t, h, w]}")
    vision = _vision_from_hf(d, {"hidden_act", "spatial_patch_size", "tokens_per_second"}, text.hidden_size)
    return MindVLConfig(vision_config=vision, text_arch="qwen2", text_preset="tiny",
                        text_overrides=dataclasses.asdict(text), mrope_section=tuple(scaling["mrope_section"]),
                        image_token_id=d.get("image_token_id", 151655),
                        vision_start_token_id=d.get("vision_start_token_id", 151652),
                        vision_end_token_id=d.get("vision_end_token_id", 151653), vocab_size=text.vocab_size,
                        compute_dtype=text.compute_dtype).validate()


def _vision_from_hf(d: dict, known: set, text_hidden: int) -> VisionConfig:
    """VisionConfig from config.json's nested vision_config (unknown keys refused in one line)."""
    if not isinstance(d.get("vision_config"), dict):
        raise ValueError("vision_config: absent from config.json; a vision-language config nests the ViT's keys there")
    fields = {f.name for f in dataclasses.fields(VisionConfig)}
    raw = d["vision_config"]
    if raw.get("hidden_act", "silu") != "silu":
        raise ValueError(f"vision_config.hidden_act: {raw['hidden_act']!r} is not silu; only SwiGLU ViT blocks "
                         "(Qwen2.5-VL) are implemented")
    unknown = sorted(set(raw) - fields - known - {"model_type", "torch_dtype", "initializer_range"})
    if unknown:
        raise ValueError(f"vision_config.{unknown[0]}: not a key of this vision tower; remove it or use a "
                         "Qwen2.5-VL-layout checkpoint")
    vd = {k: v for k, v in raw.items() if k in fields}
    vd["fullatt_block_indexes"] = tuple(vd.get("fullatt_block_indexes", ()))
    vision = VisionConfig(**vd)
    if vision.out_hidden_size != text_hidden:
        raise ValueError(f"vision_config.out_hidden_size: {vision.out_hidden_size} but the decoder's hidden_size is "
                         f"{text_hidden}; the merger must project to the decoder width")
    return vision


def pangu_hf_config(cfg: MindVLPanguConfig) -> dict:
    """config.json of the mindvl_pangu layout: the Pangu decoder's serving config + `text_architectures` +
    our whole vision_config + M-RoPE sections + the vision token ids."""
    text, v = cfg.text_config(), cfg.vision_for_decoder()
    d = get_decoder(cfg.text_arch).serving.config_to_hf(text)
    vd = dataclasses.asdict(v)
    vd["fullatt_block_indexes"] = list(v.fullatt_block_indexes)
    vd.update(spatial_patch_size=v.patch_size, hidden_act="silu")
    d.update(vision_config=vd, **_ids(cfg), rope_scaling={"type": "mrope", "mrope_section": list(cfg.mrope())},
             text_architectures=d.get("architectures"), architectures=[PANGU_ARCHITECTURE],
             model_type=PANGU_MODEL_TYPE)
    return d


def pangu_config_from_hf(d: dict, names=None) -> MindVLPanguConfig:
    """mindvl_pangu config.json (+ serving tensor names; None: the config alone) -> our MindVLPanguConfig."""
    text_arch = _TEXT_ARCH_OF.get((d.get("text_architectures") or [None])[0])
    if text_arch is None:
        raise ValueError(f"text_architectures: {d.get('text_architectures')} is not a Pangu decoder; "
                         f"expected one of {sorted(_TEXT_ARCH_OF)}")
    text_names = None if names is None else [n for n in names if not n.startswith("visual.")]
    text = get_decoder(text_arch).serving.config_from_hf(d, text_names)
    vision = _vision_from_hf(d, {"hidden_act", "spatial_patch_size"}, text.hidden_size)
    return MindVLPanguConfig(vision_config=vision, text_arch=text_arch, text_preset="tiny",
                             text_overrides=dataclasses.asdict(text),
                             mrope_section=tuple(d["rope_scaling"]["mrope_section"]),
                             image_token_id=d["image_token_id"], vision_start_token_id=d["vision_start_token_id"],
                             vision_end_token_id=d["vision_end_token_id"], vocab_size=text.vocab_size,
                             compute_dtype=text.compute_dtype).validate()


PANGU_MODEL_TYPE, PANGU_ARCHITECTURE = "mindvl_pangu", "MindVLPanguForConditionalGeneration"


# ---------------------------------------------------------------------------------------------
# Serving-directory assets (the ServingLayout hooks)
# ---------------------------------------------------------------------------------------------

def run_assets(data_cfg, run_dir: str) -> dict:
    """The run's tokenizer (`data.tokenizer_json`, else ByteTokenizer) and image processor: the run
    directory's preprocessor_config.json (the resolution search or an import writes one) or the data budget."""
    from mindvl.processor import ImageProcessor, data_tokenizer

    saved = os.path.join(run_dir, "preprocessor_config.json")
    processor = ImageProcessor.load(saved) if os.path.isfile(saved) else data_cfg.processor()
    return {"tokenizer": data_tokenizer(data_cfg.tokenizer_json), "processor": processor}


def write_assets(cfg: MindVLConfig, out: str, tokenizer, processor) -> dict:
    """tokenizer.json & co., generation_config.json, preprocessor_config.json; returns config.json's id keys."""
    from mindvl.processor import HFTokenizer

    text, vision = cfg.text_config(), cfg.vision_for_decoder()
    ids = {}
    if tokenizer is not None:
        if isinstance(tokenizer, HFTokenizer):      # a checkpoint's own files, as they are
            copy_tokenizer_files(os.path.dirname(tokenizer.path), out)
        else:
            save_tokenizer(tokenizer, out, getattr(text, "max_position_embeddings", 4096))
        gen = generation_ids(tokenizer)
        with open(os.path.join(out, "generation_config.json"), "w") as f:
            json.dump({**gen, "do_sample": False}, f, indent=2)
        ids = {**gen, "eos_token_id": gen["eos_token_id"][0]}  # config.json: <|im_end|>, as Qwen2.5-VL
    if processor is not None:
        check_processor(processor, vision)
        save_preprocessor(processor, out)
    return ids


def read_assets(hf_dir: str, out: str, cfg: MindVLConfig) -> dict:
    """The imported run's `data:` section from the directory's files: its own tokenizer.json (any tokenizer
    the `tokenizers` library reads that has MindVL's special tokens; copied into OUT with its companion
    files and named by `tokenizer_json`; MindVL's own ByteTokenizer export needs nothing) and
    preprocessor_config.json (copied verbatim; its pixel budget becomes the data budget). The vision token
    ids of config.json must be the tokenizer's."""
    from mindvl.processor import HFTokenizer, ImageProcessor

    data = {}
    if any(os.path.isfile(os.path.join(hf_dir, n)) for n in TOKENIZER_FILES):
        tokenizer = load_tokenizer(hf_dir)
        for name, key in (("<|image_pad|>", "image_token_id"), ("<|vision_start|>", "vision_start_token_id"),
                          ("<|vision_end|>", "vision_end_token_id")):
            if tokenizer.token_id(name) != getattr(cfg, key):
                raise ValueError(f"{key}: config.json says {getattr(cfg, key)} but tokenizer.json has {name} = "
                                 f"{tokenizer.token_id(name)}; the tokenizer belongs to another model")
        if isinstance(tokenizer, HFTokenizer):
            copy_tokenizer_files(hf_dir, out)
            data["tokenizer_json"] = os.path.abspath(os.path.join(out, "tokenizer.json"))
    saved = os.path.join(hf_dir, "preprocessor_config.json")
    if not os.path.isfile(saved):
        return data
    processor = ImageProcessor.load(saved)
    check_processor(processor, cfg.vision_for_decoder())
    shutil.copyfile(saved, os.path.join(out, "preprocessor_config.json"))
    return {**data, "min_pixels": processor.min_pixels, "max_pixels": processor.max_pixels}


def serving_assets(hf_dir: str) -> dict:
    """The tokenizer (tokenizer.json) and image processor (preprocessor_config.json) of a serving
    directory; None for a file the directory does not have."""
    from mindvl.processor import ImageProcessor

    saved = os.path.join(hf_dir, "preprocessor_config.json")
    return {"tokenizer": load_tokenizer(hf_dir) if os.path.isfile(os.path.join(hf_dir, "tokenizer.json")) else None,
            "processor": ImageProcessor.load(saved) if os.path.isfile(saved) else None}


def example_inputs(cfg: MindVLConfig, seq_len: int, patches: int) -> list:
    """One all-padding row of the multimodal batch (construct's 12 inputs, static shapes)."""
    from mindvl.data import collate
    from mindvl.model import FORWARD_KEYS
    from mindvl.processor import ByteTokenizer

    vision = cfg.vision_for_decoder()
    merge = vision.spatial_merge_size
    if patches % (merge * merge):
        raise ValueError(f"--mindir-patches: {patches} is not a multiple of {merge * merge} (merge {merge}x{merge})")
    batch = collate([], [[]], seq_len, patches, ByteTokenizer(), merge, vision.window_merged, vision.patch_dim)
    return [batch[k] for k in FORWARD_KEYS]


# ---------------------------------------------------------------------------------------------
# Tokenizer, generation and processor files of a serving export (recipes.export writes them)
# ---------------------------------------------------------------------------------------------

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# what a Qwen2.5-VL checkpoint carries besides tokenizer.json (the slow tokenizer's files, the chat template)
TOKENIZER_COMPANIONS = ("vocab.json", "merges.txt", "added_tokens.json", "chat_template.json", "chat_template.jinja")


def copy_tokenizer_files(src: str, dst: str) -> None:
    """Copy a checkpoint's tokenizer files (those of TOKENIZER_FILES + TOKENIZER_COMPANIONS it has) unchanged."""
    for name in TOKENIZER_FILES + TOKENIZER_COMPANIONS:
        if os.path.isfile(os.path.join(src, name)) and os.path.abspath(src) != os.path.abspath(dst):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


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
    """bos/eos/pad ids of generation_config.json: stop at <|im_end|> (end of an answer) or <eod>
    (ByteTokenizer's <eod>, a Qwen tokenizer's <|endoftext|>)."""
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
    """The tokenizer of a serving directory's tokenizer.json: MindVL's ByteTokenizer when the file describes it
    (our own export), else the file itself through the `tokenizers` library (HFTokenizer: a Qwen2.5-VL
    checkpoint's byte-level BPE); a one-line ValueError when the file is missing, unreadable or lacks
    MindVL's special tokens."""
    from mindvl.processor import ByteTokenizer, HFTokenizer

    path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: not found; a MindVL export carries tokenizer.json (python -m recipes.export)")
    with open(path, encoding="utf-8") as f:
        found = json.load(f)
    tokenizer = ByteTokenizer()
    want = tokenizer_json(tokenizer)
    if all(found.get(key) == want[key] for key in ("added_tokens", "pre_tokenizer", "decoder", "model")):
        return tokenizer
    return HFTokenizer(path)


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
    path = os.path.join(directory, "preprocessor_config.json")
    source = getattr(processor, "source_path", None)     # an imported file, unchanged since: written as it was
    if source and os.path.isfile(source) and type(processor).load(source) == processor:
        shutil.copyfile(source, path)
        return path
    d = processor.to_dict()
    d.update(processor_class="Qwen2_5_VLProcessor",
             size={"shortest_edge": processor.min_pixels, "longest_edge": processor.max_pixels})
    with open(path, "w") as f:
        json.dump(d, f, indent=2, sort_keys=True)
    return path


_ASSETS = dict(run_assets=run_assets, write_assets=write_assets, read_assets=read_assets,
               serving_assets=serving_assets, example_inputs=example_inputs)
SERVING = ServingLayout(model_type="qwen2_5_vl", architecture="Qwen2_5_VLForConditionalGeneration", to_hf=to_hf,
                        from_hf=from_hf, config_to_hf=hf_config, config_from_hf=config_from_hf, **_ASSETS)
PANGU_SERVING = ServingLayout(model_type=PANGU_MODEL_TYPE, architecture=PANGU_ARCHITECTURE, to_hf=to_hf,
                              from_hf=from_hf, config_to_hf=pangu_hf_config, config_from_hf=pangu_config_from_hf,
                              **_ASSETS)
