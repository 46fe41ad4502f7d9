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


def export(model, processor, directory: str) -> dict:
    """Write model.safetensors (serving names), config.json and preprocessor_config.json."""
    from safetensors.numpy import save_file
    os.makedirs(directory, exist_ok=True)
    state = {n: p.asnumpy() for n, p in model.parameters_and_names()}
    hf = to_hf(state, model.vision_config, model.config.text_arch, model.text_config)
    save_file({k: np.ascontiguousarray(v) for k, v in hf.items()}, os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config(model), f, indent=2)
    processor.save(directory)
    return {"tensors": len(hf), "directory": directory}
