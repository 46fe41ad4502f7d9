"""INT8 post-training quantisation of an exported serving directory, in msModelSlim's layout.

    python -m recipes.export RUN --out DIR --quantize w8a8          # W8A8_DYNAMIC
    python -m recipes.export RUN --out DIR --quantize int8-weight   # W8A16

Format (msModelSlim "AscendV1" quantised weights, which vLLM-Ascend and MindIE load; described in
msModelSlim's docs/zh/feature_guide/traditional_quantization_v0/quantized_weight_format.md and read by
vllm-ascend's vllm_ascend/quantization/methods/w8a8_dynamic.py, which takes
`quant_model_description.json` as its config file):
  * each quantised Linear `X.weight` [n, k] is stored as int8 with `X.weight_scale` [n, 1] and
    `X.weight_offset` [n, 1] (float, the export dtype; offsets 0 = symmetric), dequantised as
    (weight - weight_offset) * weight_scale;
  * `quant_model_description.json` maps every tensor name to its type: "W8A8_DYNAMIC" (int8 weights,
    activations quantised per token at run time by the engine) or "W8A16" (weight-only int8), and
    "FLOAT" for tensors left in the export dtype; "model_quant_type" names the scheme.
Scales: per output channel, symmetric, scale = max|w_row| / 127, q = round(w / scale) in [-127, 127];
so every dequantised weight is within scale / 2 (half a quantisation step) of the original.

What stays FLOAT (a choice, docs/export.md): the embedding and lm_head (the vocabulary ends are the most
sensitive and are not matmuls with an activation to quantise on the embedding side), every norm
(including MLA's q_a / kv_a latent norms), the MoE router (`mlp.gate`, its selection bias: routing
decisions flip on small errors), biases, and the MTP modules (layers past num_hidden_layers, which
serve as a draft model). Quantised: the attention projections (q/k/v/o, MLA's q_a/q_b/kv_a/kv_b) and
every MLP / expert projection (gate/up/down of dense, shared and routed experts) of the main layers.

Loading back (`recipes.io.load.load_model(DIR)`, `recipes.io.hf.import_hf`) dequantises to float, so
accuracy is measured with our own model (weights quantised; W8A8's run-time activation rounding is the
serving engine's and is not simulated here).
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from recipes.io import safetensors_io

DESCRIPTION_FILE = "quant_model_description.json"
SCHEMES = {"w8a8": "W8A8_DYNAMIC", "int8-weight": "W8A16"}
FLOAT = "FLOAT"
QUANTIZED_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa",
                     "kv_b_proj", "gate_proj", "up_proj", "down_proj")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
QMAX = 127


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric int8: (q int8 [n, k], scale float32 [n, 1]); w ~ q * scale."""
    w = np.asarray(w, dtype=np.float32)
    amax = np.abs(w).max(axis=1, keepdims=True)
    scale = np.where(amax > 0, amax / QMAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -QMAX, QMAX).astype(np.int8)
    return q, scale


def dequantize_weight(q: np.ndarray, scale: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
    """(q - offset) * scale in float32 (msModelSlim's per-channel formula)."""
    q = q.astype(np.float32)
    if offset is not None:
        q = q - np.asarray(offset, np.float32)
    return q * np.asarray(scale, np.float32)


def is_quantized_name(name: str, shape, num_hidden_layers: int) -> bool:
    """True for a 2-D main-layer Linear weight of QUANTIZED_LINEARS (module docstring)."""
    m = _LAYER.match(name)
    if m is None or int(m.group(1)) >= num_hidden_layers or len(shape) != 2 or not name.endswith(".weight"):
        return False
    return name[: -len(".weight")].rsplit(".", 1)[-1] in QUANTIZED_LINEARS


def quantize_dir(directory: str, files: dict, index_file: str, scheme: str, export_dtype: str = "fp32",
                 log=print) -> dict:
    """Quantise an export directory in place (its shards, the index `index_file`, the description);
    `files`: tensor name -> shard (recipes.io.hf.hf_files). Returns the description."""
    if scheme not in SCHEMES:
        raise ValueError(f"--quantize: unknown scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    qtype = SCHEMES[scheme]
    with open(os.path.join(directory, "config.json")) as f:
        num_layers = int(json.load(f)["num_hidden_layers"])
    description = {"model_quant_type": qtype}
    weight_map, total = {}, 0
    for fname in sorted(set(files.values())):
        path = os.path.join(directory, fname)
        reader = safetensors_io.Reader(path)
        out = {}
        for name in reader.names():
            value = reader.get(name)
            if is_quantized_name(name, value.shape, num_layers):
                q, scale = quantize_weight(value)
                base = name[: -len(".weight")]
                out[name] = q
                out[base + ".weight_scale"] = scale
                out[base + ".weight_offset"] = np.zeros_like(scale)
                for n in (name, base + ".weight_scale", base + ".weight_offset"):
                    description[n] = qtype
            else:
                out[name] = value
                description[name] = FLOAT
        total += safetensors_io.write(path, out, export_dtype, reader.metadata or None)
        weight_map.update({n: fname for n in out})
    index_path = os.path.join(directory, index_file)
    if os.path.isfile(index_path):
        with open(index_path) as f:
            index = json.load(f)
        index["weight_map"] = dict(sorted(weight_map.items()))
        index.setdefault("metadata", {})["total_size"] = total
        with open(index_path, "w") as f:
            json.dump(index, f, indent=2)
    with open(os.path.join(directory, DESCRIPTION_FILE), "w") as f:
        json.dump(description, f, indent=2)
    n_q = sum(1 for n, t in description.items() if t == qtype and n.endswith(".weight"))
    log(f"quantised {n_q} linear weights to int8 ({qtype}, per-channel symmetric); wrote {DESCRIPTION_FILE}")
    return description


class _DequantReader:
    """A safetensors_io.Reader view that hides weight_scale / weight_offset and dequantises int8 weights."""

    def __init__(self, reader, scales: dict[str, tuple]):
        self.reader, self.scales = reader, scales

    def shape(self, name):
        return self.reader.shape(name)

    def get(self, name):
        value = self.reader.get(name)
        if name in self.scales:
            scale_reader, scale_name, offset_reader, offset_name = self.scales[name]
            value = dequantize_weight(value, scale_reader.get(scale_name), offset_reader.get(offset_name))
        return value


def float_view(directory: str, files: dict, readers: dict) -> tuple[dict, dict]:
    """(files, readers) of a quantised directory as the float tensors they stand for (identity for a
    directory without DESCRIPTION_FILE)."""
    path = os.path.join(directory, DESCRIPTION_FILE)
    if not os.path.isfile(path):
        return files, readers
    with open(path) as f:
        description = json.load(f)
    qtype = description.get("model_quant_type")
    if qtype not in SCHEMES.values():
        raise ValueError(f"{path}: model_quant_type {qtype!r} is not one we read ({', '.join(SCHEMES.values())}); "
                         "load an export made by recipes.export --quantize")
    scales, hidden = {}, set()
    for name, fname in files.items():
        if description.get(name, FLOAT) == FLOAT or not name.endswith(".weight"):
            continue
        base = name[: -len(".weight")]
        s, o = base + ".weight_scale", base + ".weight_offset"
        if s not in files or o not in files:
            raise ValueError(f"{directory}: {name} is {description[name]} but {s} / {o} are missing; the "
                             "quantised export is incomplete")
        scales.setdefault(fname, {})[name] = (readers[files[s]], s, readers[files[o]], o)
        hidden |= {s, o}
    files = {n: f for n, f in files.items() if n not in hidden}
    readers = {f: _DequantReader(r, scales.get(f, {})) for f, r in readers.items()}
    return files, readers
