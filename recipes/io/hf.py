"""The serving (Hugging Face Hub) layout on disk: write a model's serving directory, read one back.

Plain I/O over an architecture's `ServingLayout` (pangu.spec): nothing here knows a model. Export writes

    config.json                        architectures, model_type and the released key names
                                       (serving.config_to_hf) + torch_dtype and the bos/eos/pad ids
    model-0000i-of-0000N.safetensors   serving tensor names (serving.to_hf), [out, in] linears, F32 or BF16,
                                       greedy shards of at most `shard_size` (a bigger tensor gets its own)
    model.safetensors.index.json       {"metadata": {"total_size": data bytes}, "weight_map": {name: shard}}
    tokenizer.model                    a text run's sentencepiece model
    tokenizer_config.json, special_tokens_map.json   special tokens, chat template
    generation_config.json             bos / eos (eod and <|user|>) / pad ids, greedy
    ... + the architecture's own assets (serving.write_assets; MindVL: tokenizer.json,
        preprocessor_config.json)
    model.mindir                       (mindir=True) the inference graph for MindSpore Lite / `mindspore.load`

into a staging directory that replaces the output only on success. Import is the inverse
(`import_hf`, `read_config`): config.json through serving.config_from_hf, the tensors through
serving.from_hf, strict about missing, unexpected and mis-shaped tensors; `import_to_run` writes the
result as a run-like directory (recipes.io.rundir) that every other tool accepts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil

import numpy as np

import models
from recipes.io import checkpoint as ckpt_lib
from recipes.io import rundir, safetensors_io

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
MINDIR_FILE = "model.mindir"
DEFAULT_SHARD_SIZE = "2GB"
# A run imported from a serving directory keeps that directory's own files here, so that exporting it
# (or a run initialised from it) writes the same config keys, special-token ids and tokenizer files.
HF_SOURCE = "hf_source"
SOURCE_FILES = ("config.json", "generation_config.json", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
                "chat_template.json")


# ---------------------------------------------------------------------------------------------- shards
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



# ---------------------------------------------------------------------------------- text tokenizer files
def token_ids(tokenizer) -> dict:
    """bos/eos/pad ids for config.json and generation_config.json (eos: eod, plus <|user|> when present)."""
    eos = [tokenizer.eod_id] + ([tokenizer.user_id] if tokenizer.user_id is not None else [])
    return {"bos_token_id": tokenizer.bos_id if tokenizer.bos_id >= 0 else None,
            "eos_token_id": eos if len(eos) > 1 else eos[0], "pad_token_id": tokenizer.pad_id}


def write_tokenizer(tokenizer, out: str, max_length: int) -> None:
    """tokenizer.model + tokenizer_config.json + special_tokens_map.json (sentencepiece, Llama-style); a run that
    trained with a tokenizer.json (JsonTokenizer) gets that file as it is and a PreTrainedTokenizerFast config."""
    from recipes.data.tokenizer import CHAT_TOKENS

    is_json = str(tokenizer.model_path).endswith(".json")
    shutil.copyfile(tokenizer.model_path, os.path.join(out, "tokenizer.json" if is_json else "tokenizer.model"))
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
    } if not is_json else {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "add_eos_token": False}
    config.update({
        "clean_up_tokenization_spaces": False, "model_max_length": max_length,
        **({} if is_json else {"sp_model_kwargs": {}}), **{k: v for k, v in specials.items() if v is not None},
        "additional_special_tokens": chat, "added_tokens_decoder": added,
    })
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



# ----------------------------------------------------------------------------------------------- MINDIR
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
    [1, seq_len] int32) -> logits. An architecture with `serving.example_inputs` (MindVL: construct's 12
    inputs, one row of seq_len tokens and `patches` patch slots) -> logits."""
    import mindspore as ms
    from mindspore import Tensor

    spec = models.spec_of(model_cfg)
    model = spec.build(portable_config(model_cfg), 0)
    ckpt_lib.load_into(model, state, "export")
    model.set_train(False)
    if spec.serving.example_inputs is not None:
        inputs = spec.serving.example_inputs(model_cfg, seq_len, patches)
    else:
        inputs = [np.zeros((1, seq_len), np.int32), np.arange(seq_len, dtype=np.int32)[None],
                  np.ones((1, seq_len), np.int32)]
    base = os.path.join(out, os.path.splitext(MINDIR_FILE)[0])
    ms.export(model, *(Tensor(x) for x in inputs), file_name=base, file_format="MINDIR")
    return base + ".mindir"


# ----------------------------------------------------------------------------------------------- export
def export_state(model_cfg, state: dict[str, np.ndarray], out: str, tokenizer=None, dtype: str = "fp32",
                 shard_size: int | str = DEFAULT_SHARD_SIZE, mindir: bool = False, mindir_seq_len: int = 128,
                 overwrite: bool = False, log=print, processor=None, mindir_patches: int = 256,
                 layout: str | None = None, source: str | None = None, inputs=()) -> dict:
    """Write the serving directory for `state` (our names) of a model with config `model_cfg`
    (`processor`: MindVL's ImageProcessor -> preprocessor_config.json; `layout`: a serving layout of the
    architecture by model_type, default its own). `source`: the files of the serving directory the model
    was imported from (HF_SOURCE): its config.json is the base (keys we do not model and the special-token
    ids are kept; the keys the model determines are ours) and its tokenizer / generation files are copied
    as they are instead of writing `tokenizer`'s. Returns the safetensors index."""
    if dtype not in safetensors_io.EXPORT_DTYPES:
        raise ValueError(f"--dtype: unknown {dtype!r}; use one of {safetensors_io.EXPORT_DTYPES}")
    safetensors_io.parse_size(shard_size)  # fail before writing anything
    spec = models.spec_of(model_cfg)
    serving = spec.layout(layout)
    config = serving.config_to_hf(model_cfg)     # refuses a model the layout cannot express, before any write
    base = _source_config(source, serving) if source else None
    with rundir.staged_out(out, overwrite, inputs=(*inputs, source)) as stage:   # a failed export leaves no half-written OUT
        hf_state = serving.to_hf(state, model_cfg)
        index = write_sharded(hf_state, stage, dtype, shard_size)
        if base is not None:     # the source's keys (values the model determines are ours) + what loaders need
            config = {**base, **{k: v for k, v in config.items() if k in base or k in serving.required_keys}}
        config["torch_dtype"] = {"fp32": "float32", "bf16": "bfloat16"}[dtype]
        if base is not None:
            for name in SOURCE_FILES[1:]:
                if os.path.isfile(os.path.join(source, name)):
                    shutil.copyfile(os.path.join(source, name), os.path.join(stage, name))
            if serving.write_assets is not None:
                serving.write_assets(model_cfg, stage, None, processor)
        elif serving.write_assets is not None:
            config.update(serving.write_assets(model_cfg, stage, tokenizer, processor))
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
    log(f"exported {spec.name} as {serving.architecture} ({len(hf_state)} tensors, "
        f"{index['metadata']['total_size'] / 1e6:.1f} MB {dtype}, {n_shards} shard{'s' if n_shards > 1 else ''}"
        f"{', MINDIR' if mindir else ''}) -> {out}")
    return index


def _source_config(source: str, serving) -> dict:
    """The imported directory's config.json, when it is of the layout being written (else no base)."""
    with open(os.path.join(source, "config.json")) as f:
        base = json.load(f)
    return base if base.get("model_type") == serving.model_type else None


def export_run(path: str, out: str, dtype: str = "fp32", shard_size: int | str = DEFAULT_SHARD_SIZE,
               mindir: bool = False, mindir_seq_len: int = 128, overwrite: bool = False, log=print,
               mindir_patches: int = 256, layout: str | None = None) -> dict:
    """Export a run directory (newest valid checkpoint) or one step_* checkpoint directory. A run imported
    from a serving directory (or initialised from one) is written in that directory's layout, with its
    config keys, special-token ids and tokenizer files (HF_SOURCE)."""
    from recipes.data import load_tokenizer

    rundir.prepare_out(out, overwrite, create=False, inputs=(path,))   # before anything is read or deleted
    loc = rundir.locate(path, log)
    if loc.run_dir is None:
        raise ValueError(f"{path}: no config.yaml in the run directory of {loc.checkpoint}; export a checkpoint "
                         "made by recipes.run / recipes.average (they write config.yaml)")
    recipe, model_cfg = rundir.load_run_config(loc.run_dir)
    state = ckpt_lib.load_tensors(loc.checkpoint, ckpt_lib.MODEL_FILE)
    emb = state.get("model.embed_tokens.weight")
    if emb is not None and emb.shape[0] != model_cfg.vocab_size:   # config.yaml's vocab follows the tokenizer
        raise ValueError(f"model.embed_tokens.weight: {emb.shape[0]} rows but config.yaml says vocab_size "
                         f"{model_cfg.vocab_size}; the checkpoint does not belong to this run")
    spec = models.spec_of(model_cfg)
    source = os.path.join(loc.run_dir, HF_SOURCE)
    if os.path.isfile(os.path.join(source, "config.json")):
        if layout is None:
            with open(os.path.join(source, "config.json")) as f:
                layout = json.load(f).get("model_type")
        assets = spec.serving.run_assets(recipe.data, loc.run_dir) if spec.serving.run_assets else {}
        assets["tokenizer"] = None
    else:
        source = None
        assets = (spec.serving.run_assets(recipe.data, loc.run_dir) if spec.serving.run_assets
                  else {"tokenizer": load_tokenizer(recipe.data)})
    return export_state(model_cfg, state, out, dtype=dtype, shard_size=shard_size, mindir=mindir,
                        mindir_seq_len=mindir_seq_len, overwrite=overwrite, log=log, mindir_patches=mindir_patches,
                        layout=layout, source=source, inputs=(path, loc.checkpoint), **assets)


# ----------------------------------------------------------------------------------------------- import
def hf_files(directory: str) -> dict[str, str]:
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


def read_config(directory: str, names=()):
    """config.json -> (spec, serving layout, our validated config dataclass)."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{directory}: no config.json; give a serving-layout directory")
    try:
        with open(path) as f:
            d = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); fix or replace the file") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object of config keys; fix or replace the file")
    spec = models.spec_for_model_type(d.get("model_type"))
    layout = spec.layout(d.get("model_type"))
    try:
        cfg = layout.config_from_hf(d, list(names))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None
    return spec, layout, cfg


def import_hf(directory: str, model=None, return_model: bool = False):
    """Serving-layout directory -> (model_cfg, our state) [or (model_cfg, model) with return_model].

    Strict: every serving tensor the config implies must be present with its exact shape, and nothing
    else; the first offending tensor is named in a one-line ValueError. BF16 tensors come back as fp32,
    int8 weights of a quantised export (recipes.io.quantize) dequantised.
    """
    from recipes.io.quantize import float_view

    files = hf_files(directory)
    readers = {f: safetensors_io.Reader(os.path.join(directory, f)) for f in sorted(set(files.values()))}
    files, readers = float_view(directory, files, readers)     # an INT8 export reads back dequantised
    spec, layout, cfg = read_config(directory, files)
    expected = {n: tuple(np.shape(v)) for n, v in layout.to_hf(_zero_state(spec, cfg), cfg).items()}
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
    state = layout.from_hf(hf_state, cfg)
    if return_model:
        model = model if model is not None else spec.build(cfg, 0)
        ckpt_lib.load_into(model, state, f"import {directory}")
        model.set_train(False)
        return cfg, model
    return cfg, state


def _zero_state(spec, cfg) -> dict:
    """{our name: zero-strided array of the right shape} of the model `cfg` describes (no allocation)."""
    return {p.name: np.broadcast_to(np.float32(0), p.shape) for p in spec.parameters(cfg)}


def import_to_run(hf_dir: str, out: str, overwrite: bool = False, log=print) -> str:
    """Write HF_DIR's weights as OUT/checkpoints/step_00000000 (+ OUT/config.yaml, and HF_DIR's config,
    generation and tokenizer files under OUT/hf_source); return the step dir."""
    import yaml

    from recipes.engine.config import resolve

    rundir.prepare_out(out, overwrite, create=False, inputs=(hf_dir,))
    cfg, state = import_hf(hf_dir)
    spec = models.spec_of(cfg)
    # written into a staging directory that replaces OUT only once complete (a failed import keeps OUT)
    with rundir.staged_out(out, overwrite, inputs=(hf_dir,)) as stage:
        raw = {"description": f"imported from {os.path.abspath(hf_dir)}",
               "model": {"arch": spec.name, "preset": "tiny", **_plain(dataclasses.asdict(cfg))},
               "run": {"root": os.path.dirname(os.path.abspath(out)), "name": os.path.basename(os.path.normpath(out))}}
        # the text data tokenizer: the checkpoint's sentencepiece model, else its tokenizer.json (Qwen2's
        # byte-level BPE, read by recipes.data.tokenizer.JsonTokenizer); an arch with asset hooks reads its own
        names = ("tokenizer.model",) if spec.serving.read_assets is not None else ("tokenizer.model", "tokenizer.json")
        tokenizer = next((n for n in names if os.path.isfile(os.path.join(hf_dir, n))), None)
        if tokenizer is not None:
            shutil.copyfile(os.path.join(hf_dir, tokenizer), os.path.join(stage, tokenizer))
            raw["data"] = {"tokenizer_model": os.path.abspath(os.path.join(stage, tokenizer))}
        if spec.serving.read_assets is not None:
            data = spec.serving.read_assets(hf_dir, stage, cfg)
            if data:
                raw["data"] = {**raw.get("data", {}), **data}
        resolve(dict(raw))  # the written config must load back
        staged, final = os.path.abspath(stage) + os.sep, os.path.abspath(out) + os.sep
        if "data" in raw:   # paths into the staging directory name OUT (where they are after the swap)
            raw["data"] = {k: final + v[len(staged):] if isinstance(v, str) and v.startswith(staged) else v
                           for k, v in raw["data"].items()}
        with open(os.path.join(stage, "config.yaml"), "w") as f:
            yaml.safe_dump(raw, f, sort_keys=False)
        os.makedirs(os.path.join(stage, HF_SOURCE))
        for name in SOURCE_FILES:     # the source's own files, for an export that writes them back
            if os.path.isfile(os.path.join(hf_dir, name)):
                shutil.copyfile(os.path.join(hf_dir, name), os.path.join(stage, HF_SOURCE, name))
        step = rundir.write_run_checkpoint(stage, 0, state, {"imported_from": os.path.abspath(hf_dir)}, None)
    path = os.path.join(out, os.path.relpath(step, stage))
    log(f"imported {spec.name} ({len(state)} tensors) from {hf_dir} -> {path}")
    return path


def _plain(value):
    """Tuples (e.g. MindVL's fullatt_block_indexes) as lists, so yaml.safe_dump can write them."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
