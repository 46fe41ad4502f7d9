"""Export a checkpoint to the serving (Hugging Face Hub) layout, and import one back.

    python -m recipes.export RUN_OR_CKPT --out DIR [--dtype fp32|bf16] [--shard-size 2GB] [--mindir]
                             [--mindir-seq-len 128] [--mindir-patches 256] [--overwrite]

writes exactly what vLLM / vLLM-Ascend / transformers read (docs/export.md, shared MODELS.md):

    config.json                        architectures, model_type and the released key names (convert.hf_config)
                                       + torch_dtype and the bos/eos/pad ids
    model-0000i-of-0000N.safetensors   serving tensor names (convert.to_hf), [out, in] linears, F32 or BF16,
                                       greedy shards of at most --shard-size (a bigger tensor gets its own)
    model.safetensors.index.json       {"metadata": {"total_size": data bytes}, "weight_map": {name: shard}}
    tokenizer.model                    the run's sentencepiece model (text models)
    tokenizer.json                     MindVL: its ByteTokenizer as a byte-level BPE tokenizer.json
    tokenizer_config.json, special_tokens_map.json   special tokens, chat template
    generation_config.json             bos / eos (eod and <|user|>; MindVL <|im_end|> and eod) / pad ids, greedy
    preprocessor_config.json           MindVL: the image processor (+ the resolution-search record)
    model.mindir                       (--mindir) the inference graph for MindSpore Lite / `mindspore.load`

`import_hf(DIR) -> (model_cfg, state)` is the inverse: config.json back into our config dataclass and the
tensors through convert.from_hf, strict about missing, unexpected and mis-shaped tensors.
User errors print one line and exit with status 2 (`--debug` for the traceback).

Architectures are plugged in through `ADAPTERS` (`register_adapter`): each knows its convert module's
to_hf/from_hf/hf_config and how to rebuild its config from config.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np

os.environ.setdefault("GLOG_v", "3")

from recipes import safetensors_io, weights  # noqa: E402
from recipes.cli import run_command

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
MINDIR_FILE = "model.mindir"
DEFAULT_SHARD_SIZE = "2GB"


# ----------------------------------------------------------------------------------------- adapters
@dataclass
class Adapter:
    """How one architecture maps to and from the serving layout."""

    model_type: str  # config.json model_type
    config_cls: type  # our config dataclass
    build_model: Callable  # (cfg, seed) -> model Cell
    to_hf: Callable  # (our state, cfg) -> serving state
    from_hf: Callable  # (serving state, cfg) -> our state
    hf_config: Callable  # cfg -> config.json dict
    config_from_hf: Callable  # (config.json dict, serving tensor names) -> validated cfg
    # Optional hooks of an arch whose export carries more than a sentencepiece tokenizer (MindVL);
    # None = the text-model behaviour (tokenizer_for / write_tokenizer / input_ids, position_ids, segment_ids)
    run_assets: Callable | None = None  # (recipe, run_dir) -> export_state kwargs (tokenizer=, processor=)
    write_assets: Callable | None = None  # (cfg, out, tokenizer, processor) -> config.json id keys
    import_assets: Callable | None = None  # (hf_dir, out, cfg) -> the `data:` section of an imported run
    example_inputs: Callable | None = None  # (cfg, seq_len, patches) -> numpy inputs of the MINDIR graph


def _pro_adapter() -> Adapter:
    from pangu.pro_moe import convert
    from pangu.pro_moe.config import PanguProMoEConfig

    def config_from_hf(d: dict, names) -> PanguProMoEConfig:
        fields = {f.name for f in dataclasses.fields(PanguProMoEConfig)}
        kw = {k: v for k, v in d.items() if k in fields}
        # hf_config drops attention_bias (the release always has biases): read it off the tensors
        kw["attention_bias"] = any(n.endswith(".self_attn.q_proj.bias") for n in names)
        return PanguProMoEConfig(**kw).validate()

    return Adapter("PanguProMoE", PanguProMoEConfig, _registry_build, lambda s, c: convert.to_hf(s),
                   lambda s, c: convert.from_hf(s), convert.hf_config, config_from_hf)


def _ultra_adapter() -> Adapter:
    from pangu.ultra_moe import convert
    from pangu.ultra_moe.config import PanguUltraMoEConfig

    def config_from_hf(d: dict, names) -> PanguUltraMoEConfig:
        cfg = PanguUltraMoEConfig.from_hf_dict(d)
        # config.json has no key for the selection bias; the checkpoint either has it or not
        has_bias = any(n.endswith(".mlp.gate.e_score_correction_bias") for n in names)
        return cfg.replace(router_enable_expert_bias=has_bias,
                           router_bias_update_rate=cfg.router_bias_update_rate if has_bias else 0.0)

    return Adapter("pangu_ultra_moe", PanguUltraMoEConfig, _registry_build, convert.to_hf, convert.from_hf,
                   convert.hf_config, config_from_hf)


def _registry_build(cfg, seed=0):
    from pangu import registry

    return registry.build_model(cfg, seed)


_TEXT_ARCH_OF = {"PanguProMoEForCausalLM": "pangu_pro_moe", "PanguUltraMoEForCausalLM": "pangu_ultra_moe"}


def _mindvl_adapter() -> Adapter:
    """MindVL (Qwen2_5_VLForConditionalGeneration layout) through mindvl.convert; the decoder part goes
    through the decoder's own adapter, so a Pro or Ultra decoder exports exactly like a text model."""
    import types

    from mindvl import convert as vl
    from mindvl.config import MindVLConfig, VisionConfig, auto_mrope_section
    from mindvl.model import build_model, decoder_rope

    def parts(cfg):
        text = cfg.text_config()
        vision = dataclasses.replace(cfg.vision_config, out_hidden_size=text.hidden_size)
        return text, vision, tuple(cfg.mrope_section) or auto_mrope_section(decoder_rope(text)[0])

    def to_hf(state, cfg):
        text, vision, _ = parts(cfg)
        return vl.to_hf(state, vision, cfg.text_arch, text)

    def from_hf(state, cfg):
        return vl.from_hf(state, cfg.text_arch, parts(cfg)[0])

    def hf_config(cfg):
        text, vision, section = parts(cfg)
        return vl.hf_config(types.SimpleNamespace(config=cfg, text_config=text, vision_config=vision,
                                                  mrope_section=section))

    def config_from_hf(d, names):
        text_arch = _TEXT_ARCH_OF.get((d.get("text_architectures") or [None])[0])
        if text_arch is None:
            raise ValueError(f"text_architectures: {d.get('text_architectures')} is not a pangu decoder; "
                             f"expected one of {sorted(_TEXT_ARCH_OF)}")
        text = adapter(text_arch).config_from_hf(d, [n for n in names if not n.startswith("visual.")])
        fields = {f.name for f in dataclasses.fields(VisionConfig)}
        vd = {k: v for k, v in d["vision_config"].items() if k in fields}
        vd["fullatt_block_indexes"] = tuple(vd.get("fullatt_block_indexes", ()))
        return MindVLConfig(vision_config=VisionConfig(**vd), text_arch=text_arch, text_preset="tiny",
                            text_overrides=dataclasses.asdict(text),
                            mrope_section=tuple(d["rope_scaling"]["mrope_section"]),
                            image_token_id=d["image_token_id"], vision_start_token_id=d["vision_start_token_id"],
                            vision_end_token_id=d["vision_end_token_id"], vocab_size=text.vocab_size,
                            compute_dtype=text.compute_dtype).validate()

    def run_assets(recipe, run_dir):
        """The run's tokenizer (mindvl.dataset always uses ByteTokenizer) and image processor: the run
        directory's preprocessor_config.json (mindvl.evaluate's resolution search writes one) or the
        recipe's data budget."""
        from mindvl.processor import ByteTokenizer, ImageProcessor

        saved = os.path.join(run_dir, "preprocessor_config.json")
        processor = ImageProcessor.load(saved) if os.path.isfile(saved) else recipe.data.processor()
        return {"tokenizer": ByteTokenizer(), "processor": processor}

    def write_assets(cfg, out, tokenizer, processor):
        text, vision, _ = parts(cfg)
        ids = {}
        if tokenizer is not None:
            vl.save_tokenizer(tokenizer, out, getattr(text, "max_position_embeddings", 4096))
            gen = vl.generation_ids(tokenizer)
            with open(os.path.join(out, "generation_config.json"), "w") as f:
                json.dump({**gen, "do_sample": False}, f, indent=2)
            ids = {**gen, "eos_token_id": gen["eos_token_id"][0]}  # config.json: <|im_end|>, as Qwen2.5-VL
        if processor is not None:
            vl.check_processor(processor, vision)
            vl.save_preprocessor(processor, out)
        return ids

    def import_assets(hf_dir, out, cfg):
        """Check that the tokenizer files describe the ByteTokenizer; keep preprocessor_config.json
        (copied verbatim: a re-export writes the same file) and its pixel budget as the data budget."""
        from mindvl.processor import ImageProcessor

        if any(os.path.isfile(os.path.join(hf_dir, n)) for n in vl.TOKENIZER_FILES):
            vl.load_tokenizer(hf_dir)
        saved = os.path.join(hf_dir, "preprocessor_config.json")
        if not os.path.isfile(saved):
            return {}
        processor = ImageProcessor.load(saved)
        vl.check_processor(processor, parts(cfg)[1])
        shutil.copyfile(saved, os.path.join(out, "preprocessor_config.json"))
        return {"min_pixels": processor.min_pixels, "max_pixels": processor.max_pixels}

    def example_inputs(cfg, seq_len, patches):
        """One all-padding row of the multimodal batch (construct's 12 inputs, static shapes)."""
        from mindvl.data import collate
        from mindvl.model import MM_KEYS
        from mindvl.processor import ByteTokenizer

        _, vision, _ = parts(cfg)
        merge = vision.spatial_merge_size
        if patches % (merge * merge):
            raise ValueError(f"--mindir-patches: {patches} is not a multiple of {merge * merge} (merge {merge}x{merge})")
        batch = collate([], [[]], seq_len, patches, ByteTokenizer(), merge, vision.window_merged, vision.patch_dim)
        return [batch[k] for k in ("input_ids", "position_ids", "segment_ids") + MM_KEYS]

    return Adapter("qwen2_5_vl", MindVLConfig, lambda cfg, seed=0: build_model(cfg, seed, "reference"), to_hf,
                   from_hf, hf_config, config_from_hf, run_assets, write_assets, import_assets, example_inputs)


ADAPTERS: dict[str, Callable[[], Adapter]] = {"pangu_pro_moe": _pro_adapter, "pangu_ultra_moe": _ultra_adapter,
                                              "mindvl": _mindvl_adapter}


def register_adapter(arch: str, factory: Callable[[], Adapter]) -> None:
    ADAPTERS[arch] = factory


def adapter(arch: str) -> Adapter:
    if arch not in ADAPTERS:
        raise ValueError(f"model.arch: {arch!r} has no serving export; supported: {sorted(ADAPTERS)}")
    return ADAPTERS[arch]()


def _available() -> dict[str, Adapter]:
    """Adapters whose packages import (a variant still being written must not break the others)."""
    out = {}
    for arch in ADAPTERS:
        try:
            out[arch] = adapter(arch)
        except (ImportError, SyntaxError):
            continue
    return out


def arch_of_config(cfg) -> str:
    for arch, ad in _available().items():
        if isinstance(cfg, ad.config_cls):
            return arch
    raise ValueError(f"config: {type(cfg).__name__} has no serving export; supported: {sorted(_available())}")


def arch_of_model_type(model_type: str) -> str:
    available = _available()
    for arch, ad in available.items():
        if ad.model_type == model_type:
            return arch
    known = sorted(ad.model_type for ad in available.values())
    raise ValueError(f"config.json: model_type {model_type!r} is not supported; known: {known}")


# ------------------------------------------------------------------------------------------- export
def natural_key(name: str):
    """Sort key that orders model.layers.10 after model.layers.9 (shards then follow the layers)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def plan_shards(sizes: dict[str, int], max_bytes: int) -> list[list[str]]:
    """Greedy shards in natural name order; a tensor larger than max_bytes gets a shard of its own."""
    shards, current, used = [], [], 0
    for name in sorted(sizes, key=natural_key):
        if current and used + sizes[name] > max_bytes:
            shards.append(current)
            current, used = [], 0
        current.append(name)
        used += sizes[name]
    if current:
        shards.append(current)
    return shards


def shard_name(i: int, n: int) -> str:
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def write_sharded(hf_state: dict[str, np.ndarray], out: str, dtype: str = "fp32",
                  shard_size: int | str = DEFAULT_SHARD_SIZE) -> dict:
    """Write model-*-of-*.safetensors + the index; returns the index dict."""
    max_bytes = safetensors_io.parse_size(shard_size)
    item = {"fp32": 4, "bf16": 2}[dtype]

    def nbytes(v):
        return v.size * item if np.issubdtype(v.dtype, np.floating) else v.nbytes

    sizes = {n: nbytes(np.asarray(v)) for n, v in hf_state.items()}
    shards = plan_shards(sizes, max_bytes)
    weight_map, total = {}, 0
    for i, names in enumerate(shards):
        fname = shard_name(i, len(shards))
        # metadata format=pt: transformers refuses safetensors files without a known format tag
        total += safetensors_io.write(os.path.join(out, fname), {n: hf_state[n] for n in names}, dtype,
                                      metadata={"format": "pt"})
        weight_map.update({n: fname for n in names})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items(), key=lambda kv: natural_key(kv[0])))}
    with open(os.path.join(out, INDEX_FILE), "w") as f:
        json.dump(index, f, indent=2)
    return index


def token_ids(tokenizer) -> dict:
    """bos/eos/pad ids for config.json and generation_config.json (eos: eod, plus <|user|> when present)."""
    eos = [tokenizer.eod_id] + ([tokenizer.user_id] if tokenizer.user_id is not None else [])
    return {"bos_token_id": tokenizer.bos_id if tokenizer.bos_id >= 0 else None,
            "eos_token_id": eos if len(eos) > 1 else eos[0], "pad_token_id": tokenizer.pad_id}


def write_tokenizer(tokenizer, out: str, max_length: int) -> None:
    """tokenizer.model + tokenizer_config.json + special_tokens_map.json (sentencepiece, Llama-style)."""
    from recipes.data.tokenizer import CHAT_TOKENS

    shutil.copyfile(tokenizer.model_path, os.path.join(out, "tokenizer.model"))
    piece = tokenizer.id_to_piece

    def special(i):
        return piece(i) if i is not None and i >= 0 else None

    specials = {"bos_token": special(tokenizer.bos_id), "eos_token": special(tokenizer.eod_id),
                "unk_token": special(tokenizer.unk_id), "pad_token": special(tokenizer.pad_id)}
    chat = [t for t, i in zip(CHAT_TOKENS, (tokenizer.user_id, tokenizer.assistant_id)) if i is not None]
    ids = sorted({i for i in (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eod_id,
                              tokenizer.user_id, tokenizer.assistant_id) if i is not None and i >= 0})
    added = {str(i): {"content": piece(i), "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True} for i in ids}
    config = {
        # LlamaTokenizer is transformers' plain sentencepiece wrapper; legacy=True keeps encode() == our ids
        "tokenizer_class": "LlamaTokenizer", "legacy": True, "add_bos_token": False, "add_eos_token": False,
        "clean_up_tokenization_spaces": False, "model_max_length": max_length, "sp_model_kwargs": {},
        **{k: v for k, v in specials.items() if v is not None},
        "additional_special_tokens": chat, "added_tokens_decoder": added,
    }
    if len(chat) == 2:  # recipes.data.sft.render: <|user|>text<|assistant|>text ...
        config["chat_template"] = (
            "{% for message in messages %}{% if message['role'] == 'user' %}" + chat[0] + "{% else %}"
            + chat[1] + "{% endif %}{{ message['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}" + chat[1] + "{% endif %}")
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
        json.dump({**{k: v for k, v in specials.items() if v is not None}, "additional_special_tokens": chat}, f,
                  indent=2)


def portable_config(model_cfg):
    """The config with every op implementation switch (`*_impl` set to auto/fast/ascend) on "reference".

    The CPU fast paths are custom aot ops whose compiled .so is not part of a MINDIR file, so the graph
    is exported with plain MindSpore ops: expert_impl "grouped" (aot grouped-matmul kernel) becomes
    "batched" (same maths in plain ops, active FLOPs + padding); batched/loop are plain ops and kept.
    """
    if callable(getattr(model_cfg, "text_config", None)):  # MindVL: the switches live in the decoder config
        text = portable_config(model_cfg.text_config())
        switches = {f.name: getattr(text, f.name) for f in dataclasses.fields(text) if f.name.endswith("_impl")}
        return dataclasses.replace(model_cfg, text_overrides={**model_cfg.text_overrides, **switches})
    switches = {f.name: "reference" for f in dataclasses.fields(model_cfg)
                if f.name.endswith("_impl") and getattr(model_cfg, f.name) in ("auto", "fast", "ascend")}
    if getattr(model_cfg, "expert_impl", None) == "grouped":
        switches["expert_impl"] = "batched"
    return dataclasses.replace(model_cfg, **switches)


def export_mindir(model_cfg, state: dict, out: str, seq_len: int = 128, patches: int = 256) -> str:
    """The inference graph as MINDIR, static shapes, built with `portable_config` (reference ops); on
    Ascend, export there with the fused ops instead. Text models: (input_ids, position_ids, segment_ids
    [1, seq_len] int32) -> logits. MindVL: `MindVL.construct`'s 12 inputs, one row of seq_len tokens and
    `patches` patch slots (fields as mindvl.data.collate makes them) -> logits."""
    import mindspore as ms
    from mindspore import Tensor

    ad = adapter(arch_of_config(model_cfg))
    model = ad.build_model(portable_config(model_cfg), 0)
    _load_into(model, state)
    model.set_train(False)
    if ad.example_inputs is not None:
        inputs = ad.example_inputs(model_cfg, seq_len, patches)
    else:
        inputs = [np.zeros((1, seq_len), np.int32), np.arange(seq_len, dtype=np.int32)[None],
                  np.ones((1, seq_len), np.int32)]
    base = os.path.join(out, os.path.splitext(MINDIR_FILE)[0])
    ms.export(model, *(Tensor(x) for x in inputs), file_name=base, file_format="MINDIR")
    return base + ".mindir"


def export_state(model_cfg, state: dict[str, np.ndarray], out: str, tokenizer=None, dtype: str = "fp32",
                 shard_size: int | str = DEFAULT_SHARD_SIZE, mindir: bool = False, mindir_seq_len: int = 128,
                 overwrite: bool = False, log=print, processor=None, mindir_patches: int = 256) -> dict:
    """Write the serving directory for `state` (our names) of a model with config `model_cfg`
    (`processor`: MindVL's ImageProcessor -> preprocessor_config.json)."""
    if dtype not in safetensors_io.EXPORT_DTYPES:
        raise ValueError(f"--dtype: unknown {dtype!r}; use one of {safetensors_io.EXPORT_DTYPES}")
    safetensors_io.parse_size(shard_size)  # fail before writing anything
    arch = arch_of_config(model_cfg)
    ad = adapter(arch)
    with weights.staged_out(out, overwrite) as stage:   # a failed export leaves no half-written OUT
        hf_state = ad.to_hf(state, model_cfg)
        index = write_sharded(hf_state, stage, dtype, shard_size)
        config = ad.hf_config(model_cfg)
        config["torch_dtype"] = {"fp32": "float32", "bf16": "bfloat16"}[dtype]
        if ad.write_assets is not None:
            config.update(ad.write_assets(model_cfg, stage, tokenizer, processor))
        elif tokenizer is not None:
            ids = token_ids(tokenizer)
            config.update(ids)
            config["eos_token_id"] = tokenizer.eod_id  # config.json: the single end-of-document id
            write_tokenizer(tokenizer, stage, getattr(model_cfg, "max_position_embeddings", 4096))
            with open(os.path.join(stage, "generation_config.json"), "w") as f:
                json.dump({**ids, "do_sample": False}, f, indent=2)
        with open(os.path.join(stage, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        if mindir:
            export_mindir(model_cfg, state, stage, mindir_seq_len, mindir_patches)
    n_shards = len(set(index["weight_map"].values()))
    log(f"exported {arch} ({len(hf_state)} tensors, {index['metadata']['total_size'] / 1e6:.1f} MB {dtype}, "
        f"{n_shards} shard{'s' if n_shards > 1 else ''}{', MINDIR' if mindir else ''}) -> {out}")
    return index


def tokenizer_for(data_cfg):
    """The tokenizer a run trained with (from the data cache; trained again only on a cold cache)."""
    from recipes.data.dataset import _Corpus, _get_tokenizer, resolve_cache_dir

    return _get_tokenizer(data_cfg, resolve_cache_dir(data_cfg.cache_dir), _Corpus(data_cfg))


def export_run(path: str, out: str, dtype: str = "fp32", shard_size: int | str = DEFAULT_SHARD_SIZE,
               mindir: bool = False, mindir_seq_len: int = 128, overwrite: bool = False, log=print,
               mindir_patches: int = 256) -> dict:
    """Export a run directory (newest valid checkpoint) or one step_* checkpoint directory."""
    from recipes import checkpoint as ckpt_lib

    loc = weights.locate(path, log)
    if loc.run_dir is None:
        raise ValueError(f"{path}: no config.yaml in the run directory of {loc.checkpoint}; export a checkpoint "
                         "made by recipes.run / recipes.average (they write config.yaml)")
    recipe, model_cfg = weights.load_run_config(loc.run_dir)
    state = ckpt_lib.load_tensors(loc.checkpoint, ckpt_lib.MODEL_FILE)
    model_cfg = _fit_to_state(model_cfg, state)
    ad = adapter(arch_of_config(model_cfg))
    assets = ad.run_assets(recipe, loc.run_dir) if ad.run_assets else {"tokenizer": tokenizer_for(recipe.data)}
    return export_state(model_cfg, state, out, dtype=dtype, shard_size=shard_size, mindir=mindir,
                        mindir_seq_len=mindir_seq_len, overwrite=overwrite, log=log, mindir_patches=mindir_patches,
                        **assets)


def _fit_to_state(model_cfg, state):
    """config.yaml stores the resolved model config; vocab follows the tokenizer there already."""
    emb = state.get("model.embed_tokens.weight")
    if emb is not None and emb.shape[0] != model_cfg.vocab_size:
        raise ValueError(f"model.embed_tokens.weight: {emb.shape[0]} rows but config.yaml says vocab_size "
                         f"{model_cfg.vocab_size}; the checkpoint does not belong to this run")
    return model_cfg


# ------------------------------------------------------------------------------------------- import
def _hf_files(directory: str) -> dict[str, str]:
    """Serving tensor name -> file, from the index (checked against the shards) or model.safetensors."""
    index_path = os.path.join(directory, INDEX_FILE)
    if os.path.isfile(index_path):
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
        for fname in sorted(set(weight_map.values())):
            if not os.path.isfile(os.path.join(directory, fname)):
                raise ValueError(f"{index_path}: shard {fname} is missing; copy the whole export directory")
        for fname in sorted(set(weight_map.values())):
            for name in safetensors_io.read_header(os.path.join(directory, fname)):
                if name != "__metadata__" and weight_map.get(name) != fname:
                    raise ValueError(f"{os.path.join(directory, fname)}: tensor {name} is not mapped to this shard "
                                     f"in {INDEX_FILE}; the index and the shards disagree")
        return weight_map
    single = os.path.join(directory, SINGLE_FILE)
    if os.path.isfile(single):
        return {n: SINGLE_FILE for n in safetensors_io.read_header(single) if n != "__metadata__"}
    raise ValueError(f"{directory}: neither {INDEX_FILE} nor {SINGLE_FILE}; give a serving-layout directory")


def read_hf_config(directory: str, names=()):
    """config.json -> (arch, our validated config dataclass)."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{directory}: no config.json; give a serving-layout directory")
    with open(path) as f:
        d = json.load(f)
    arch = arch_of_model_type(d.get("model_type"))
    try:
        cfg = adapter(arch).config_from_hf(d, names)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None
    return arch, cfg


def _load_into(model, state: dict) -> None:
    from mindspore import Tensor

    from recipes import checkpoint as ckpt_lib

    params = dict(model.parameters_and_names())
    ckpt_lib.check_compatible({n: tuple(p.shape) for n, p in params.items()}, state, "import")
    for name, p in params.items():
        p.set_data(Tensor(np.asarray(state[name], np.float32)).astype(p.dtype))


def import_hf(directory: str, model=None, return_model: bool = False):
    """Serving-layout directory -> (model_cfg, our state) [or (model_cfg, model) with return_model].

    Strict: every serving tensor the config implies must be present with its exact shape, and nothing
    else; the first offending tensor is named in a one-line ValueError. BF16 tensors come back as fp32.
    """
    files = _hf_files(directory)
    arch, cfg = read_hf_config(directory, files)
    ad = adapter(arch)
    if model is None:
        model = ad.build_model(cfg, 0)
    ours = {n: p.asnumpy() for n, p in model.parameters_and_names()}
    expected = {n: tuple(np.shape(v)) for n, v in ad.to_hf(ours, cfg).items()}
    readers = {f: safetensors_io.Reader(os.path.join(directory, f)) for f in sorted(set(files.values()))}
    for name in sorted(set(expected) | set(files), key=natural_key):
        if name not in files:
            raise ValueError(f"{directory}: missing tensor {name} (config.json implies it); the export is incomplete "
                             "or config.json does not match the weights")
        if name not in expected:
            raise ValueError(f"{directory}: unexpected tensor {name} in {files[name]} (config.json does not imply it); "
                             "the weights belong to a different config")
        shape = readers[files[name]].shape(name)
        if shape != expected[name]:
            raise ValueError(f"{directory}: tensor {name} has shape {shape}, config.json implies {expected[name]}")
    hf_state = {n: readers[f].get(n) for n, f in files.items()}
    state = ad.from_hf(hf_state, cfg)
    if return_model:
        _load_into(model, state)
        model.set_train(False)
        return cfg, model
    return cfg, state


# ---------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m recipes.export", description=__doc__.splitlines()[0])
    p.add_argument("path", help="run directory (newest valid checkpoint) or a checkpoints/step_* directory")
    p.add_argument("--out", required=True, help="output directory (serving layout)")
    p.add_argument("--dtype", choices=safetensors_io.EXPORT_DTYPES, default="fp32", help="stored float dtype")
    p.add_argument("--shard-size", default=DEFAULT_SHARD_SIZE, help="max bytes per shard, e.g. 2GB, 500MB")
    p.add_argument("--mindir", action="store_true", help="also write model.mindir (inference graph)")
    p.add_argument("--mindir-seq-len", type=int, default=128, help="static sequence length of the MINDIR graph")
    p.add_argument("--mindir-patches", type=int, default=256, help="MindVL: static patch slots of the MINDIR graph")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def body():
        export_run(args.path, args.out, args.dtype, args.shard_size, args.mindir, args.mindir_seq_len, args.overwrite,
                   mindir_patches=args.mindir_patches)

    return run_command(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
