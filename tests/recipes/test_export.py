"""Serving export and import: MODELS.md layouts (names, shapes, config keys), shards + index, bf16 bits,
exact export -> import round trips (tensors and logits), strict import errors, MINDIR, the CLI.
Pangu Pro / Ultra and Qwen2 (text), MindVL (Qwen2.5-VL layout: multimodal logits, tokenizer + processor files)
and MindVL with a Pangu decoder (its own mindvl_pangu layout)."""

import dataclasses
import json
import os
import struct

import numpy as np
import pytest
from safetensors import safe_open

import models
from recipes.io import checkpoint as ck
from recipes import export as export_cli
from recipes.io import hf as hfio
from recipes.io import safetensors_io
from recipes.engine.config import dump_yaml, load_recipe
from recipes.data import DataConfig, load_tokenizer

ARCHS = ("pangu_pro_moe", "pangu_ultra_moe", "qwen2")
VL_ARCHS = ("mindvl", "mindvl_pangu")
ALL_ARCHS = ARCHS + VL_ARCHS
VL_SEQ, VL_PATCHES = 256, 96  # a MindVL batch row: tokens, patch slots


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(DataConfig())


def tiny(arch, tok, **kw):
    if arch in VL_ARCHS:
        return dataclasses.replace(models.get_spec(arch).presets["tiny"](), vocab_size=tok.vocab_size, **kw)
    return models.get_config(arch, "tiny", vocab_size=tok.vocab_size, **kw)


def tokenizer_of(arch, text_tokenizer):
    """What a run of `arch` trains with: MindVL's ByteTokenizer, the text models' sentencepiece model."""
    from mindvl.processor import ByteTokenizer

    return ByteTokenizer() if arch in VL_ARCHS else text_tokenizer


def build(arch, cfg, seed):
    return models.build_model(cfg, seed)


def same_config(arch, a, b):
    """Imported MindVL configs spell the decoder as full text_overrides: compare what they describe."""
    if arch in VL_ARCHS:
        to_hf = models.get_spec(arch).serving.config_to_hf
        return to_hf(a) == to_hf(b) and a.text_config() == b.text_config()
    return a == b


def vl_processor(record=True):
    """The processor of a tiny MindVL run, with a resolution-search record as the search writes it."""
    from mindvl.processor import ImageProcessor

    extra = {"resolution_search": {"metric": "validation exact-match accuracy", "chosen_max_pixels": 7056,
                                   "scores": {"3136": 0.25, "7056": 0.5}, "num_samples": 4}} if record else {}
    return ImageProcessor(min_pixels=3136, max_pixels=7056, extra=extra)


def vl_batch(seed=3):
    """Two packed rows of chat-template synthetic samples (images of several sizes, OCR included)."""
    from mindvl.data import SyntheticDataset, collate, encode_example, pack
    from mindvl.processor import ByteTokenizer

    tk = ByteTokenizer()
    ds = SyntheticDataset(4, "validation", seed=seed, min_side=56, max_side=112)
    samples = [encode_example(ds[i], vl_processor(), tk, "chat") for i in range(len(ds))]
    rows = pack(samples, VL_SEQ, VL_PATCHES)
    assert len(rows) >= 2 and sum(int(s.grid_thw.shape[0]) for s in samples) == 4
    return collate(samples, rows[:2], VL_SEQ, VL_PATCHES, tk)


def vl_logits(model, batch):
    from mindvl.model import batch_args

    model.set_train(False)
    return model(*batch_args(model, batch)).asnumpy()


def state_of(model):
    return {n: p.asnumpy() for n, p in model.parameters_and_names()}


def logits(model, seed=0, B=2, S=12):
    from mindspore import Tensor

    model.set_train(False)
    ids = np.random.default_rng(seed).integers(0, model_vocab(model), (B, S)).astype(np.int32)
    pos = np.tile(np.arange(S, dtype=np.int32), (B, 1))
    seg = np.ones((B, S), np.int32)
    seg[1, 8:] = 2  # a second document in row 1
    pos[1, 8:] = np.arange(S - 8)
    return model(Tensor(ids), Tensor(pos), Tensor(seg)).asnumpy()


def model_vocab(model):
    return dict(model.parameters_and_names())["model.embed_tokens.weight"].shape[0]


def any_logits(arch, model):
    """Text: two rows (one with two documents); MindVL: a packed multimodal batch."""
    return vl_logits(model, vl_batch()) if arch in VL_ARCHS else logits(model)


def read_all(directory):
    """{name: (dtype, shape)} of every tensor of every shard, read with the safetensors library."""
    out = {}
    for fname in sorted(f for f in os.listdir(directory) if f.endswith(".safetensors")):
        with safe_open(os.path.join(directory, fname), framework="numpy") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                assert name not in out, f"{name} in two shards"
                out[name] = (sl.get_dtype(), tuple(sl.get_shape()))
    return out


# ------------------------------------------------------------------ expected layouts from MODELS.md
def expected_pro(c):
    H, V, E, I, Is = c.hidden_size, c.vocab_size, c.num_experts, c.moe_intermediate_size, c.shared_expert_intermediate_size
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    names = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,), "lm_head.weight": (V, H)}
    for n in range(c.num_hidden_layers):
        p = f"model.layers.{n}."
        names.update({p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
                      p + "self_attn.q_proj.weight": (q, H), p + "self_attn.q_proj.bias": (q,),
                      p + "self_attn.k_proj.weight": (kv, H), p + "self_attn.k_proj.bias": (kv,),
                      p + "self_attn.v_proj.weight": (kv, H), p + "self_attn.v_proj.bias": (kv,),
                      p + "self_attn.o_proj.weight": (H, q), p + "self_attn.o_proj.bias": (H,),
                      p + "mlp.gate.weight": (E, H), p + "mlp.router_scale": (1, E),
                      p + "mlp.shared_expert.gate_proj.weight": (Is, H), p + "mlp.shared_expert.up_proj.weight": (Is, H),
                      p + "mlp.shared_expert.down_proj.weight": (H, Is)})
        for e in range(E):
            names.update({p + f"mlp.experts.{e}.gate_proj.weight": (I, H), p + f"mlp.experts.{e}.up_proj.weight": (I, H),
                          p + f"mlp.experts.{e}.down_proj.weight": (H, I)})
    return names


def expected_ultra(c):
    H, V, E, I, F, N = (c.hidden_size, c.vocab_size, c.num_routed_experts, c.moe_intermediate_size,
                        c.intermediate_size, c.num_attention_heads)
    names = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,), "lm_head.weight": (V, H)}
    L = c.num_hidden_layers
    for n in range(L + c.num_mtp_layers):  # MTP layers are stored as model.layers.{L+i}
        p = f"model.layers.{n}."
        names.update({p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
                      p + "pre_mlp_layernorm.weight": (H,), p + "post_mlp_layernorm.weight": (H,),
                      p + "self_attn.q_a_proj.weight": (c.attention_q_lora_dim, H),
                      p + "self_attn.q_a_layernorm.weight": (c.attention_q_lora_dim,),
                      p + "self_attn.q_b_proj.weight": (N * (c.attention_qk_dim + c.attention_qk_rope_dim),
                                                        c.attention_q_lora_dim),
                      p + "self_attn.kv_a_proj_with_mqa.weight": (c.attention_kv_lora_dim + c.attention_qk_rope_dim, H),
                      p + "self_attn.kv_a_layernorm.weight": (c.attention_kv_lora_dim,),
                      p + "self_attn.kv_b_proj.weight": (N * (c.attention_qk_dim + c.attention_v_dim),
                                                         c.attention_kv_lora_dim),
                      p + "self_attn.o_proj.weight": (H, N * c.attention_v_dim)})
        if n < c.num_dense_layers:
            names.update({p + "mlp.gate_proj.weight": (F, H), p + "mlp.up_proj.weight": (F, H),
                          p + "mlp.down_proj.weight": (H, F)})
        else:
            names.update({p + "mlp.gate.weight": (E, H), p + "mlp.gate.e_score_correction_bias": (E,),
                          p + "mlp.shared_experts.gate_proj.weight": (I, H),
                          p + "mlp.shared_experts.up_proj.weight": (I, H),
                          p + "mlp.shared_experts.down_proj.weight": (H, I)})
            for e in range(E):
                names.update({p + f"mlp.experts.{e}.gate_proj.weight": (I, H),
                              p + f"mlp.experts.{e}.up_proj.weight": (I, H),
                              p + f"mlp.experts.{e}.down_proj.weight": (H, I)})
        if n >= L:
            names.update({p + "enorm.weight": (H,), p + "hnorm.weight": (H,), p + "eh_proj.weight": (H, 2 * H),
                          p + "shared_head.norm.weight": (H,), p + "shared_head.head.weight": (V, H),
                          p + "embed_tokens.weight": (V, H)})
    return names


def expected_mindvl(c):
    """Qwen2.5-VL names (MODELS.md): visual.* with the Conv3d patch embedding, then the decoder's own layout."""
    text = c.text_config()
    v = c.vision_config
    C, I, H, C4 = v.hidden_size, v.intermediate_size, text.hidden_size, v.hidden_size * v.spatial_merge_size ** 2
    names = {"visual.patch_embed.proj.weight": (C, v.in_chans, v.temporal_patch_size, v.patch_size, v.patch_size),
             "visual.merger.ln_q.weight": (C,), "visual.merger.mlp.0.weight": (C4, C4), "visual.merger.mlp.0.bias": (C4,),
             "visual.merger.mlp.2.weight": (H, C4), "visual.merger.mlp.2.bias": (H,)}
    for n in range(v.depth):
        p = f"visual.blocks.{n}."
        names.update({p + "norm1.weight": (C,), p + "norm2.weight": (C,),
                      p + "attn.qkv.weight": (3 * C, C), p + "attn.qkv.bias": (3 * C,),
                      p + "attn.proj.weight": (C, C), p + "attn.proj.bias": (C,),
                      p + "mlp.gate_proj.weight": (I, C), p + "mlp.gate_proj.bias": (I,),
                      p + "mlp.up_proj.weight": (I, C), p + "mlp.up_proj.bias": (I,),
                      p + "mlp.down_proj.weight": (C, I), p + "mlp.down_proj.bias": (C,)})
    names.update(EXPECTED[c.text_arch](text))
    return names


def expected_qwen2(c):
    """Qwen2ForCausalLM (MODELS.md): biases on q/k/v only, dense SwiGLU, lm_head unless tied."""
    H, V, F, D = c.hidden_size, c.vocab_size, c.intermediate_size, c.head_dim
    Q, KV = c.num_attention_heads * D, c.num_key_value_heads * D
    names = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    if not c.tie_word_embeddings:
        names["lm_head.weight"] = (V, H)
    for n in range(c.num_hidden_layers):
        p = f"model.layers.{n}."
        names.update({p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
                      p + "self_attn.q_proj.weight": (Q, H), p + "self_attn.q_proj.bias": (Q,),
                      p + "self_attn.k_proj.weight": (KV, H), p + "self_attn.k_proj.bias": (KV,),
                      p + "self_attn.v_proj.weight": (KV, H), p + "self_attn.v_proj.bias": (KV,),
                      p + "self_attn.o_proj.weight": (H, Q), p + "mlp.gate_proj.weight": (F, H),
                      p + "mlp.up_proj.weight": (F, H), p + "mlp.down_proj.weight": (H, F)})
    return names


EXPECTED = {"pangu_pro_moe": expected_pro, "pangu_ultra_moe": expected_ultra, "qwen2": expected_qwen2,
            "mindvl": expected_mindvl, "mindvl_pangu": expected_mindvl}


# --------------------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_export_import_round_trip_is_exact(arch, tokenizer, tmp_path):
    tok = tokenizer_of(arch, tokenizer)
    cfg = tiny(arch, tok)
    model = build(arch, cfg, 11)
    want = any_logits(arch, model)
    out = str(tmp_path / "hf")
    index = hfio.export_state(cfg, state_of(model), out, tok, "fp32", "40KB", log=lambda *_: None,
                                processor=vl_processor() if arch in VL_ARCHS else None)

    # exactly the MODELS.md names and [out, in] shapes, all F32, readable by the safetensors library
    found = read_all(out)
    expected = EXPECTED[arch](cfg)
    assert sorted(found) == sorted(expected)
    assert {n: s for n, (_, s) in found.items()} == expected
    assert {d for d, _ in found.values()} == {"F32"}

    # several shards, index consistent with them
    shards = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    n = len(shards)
    assert n > 1 and shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    with open(os.path.join(out, hfio.INDEX_FILE)) as f:
        assert json.load(f) == index
    assert set(index["weight_map"]) == set(expected)
    total = 0
    for fname in shards:
        header = safetensors_io.read_header(os.path.join(out, fname))
        assert header.pop("__metadata__") == {"format": "pt"}
        assert {k for k, v in index["weight_map"].items() if v == fname} == set(header)
        total += sum(m["data_offsets"][1] - m["data_offsets"][0] for m in header.values())
    assert index["metadata"]["total_size"] == total == 4 * sum(int(np.prod(s)) for s in expected.values())

    # import into a fresh model: identical tensors and identical logits
    cfg2, state2 = hfio.import_hf(out)
    assert same_config(arch, cfg2, cfg)
    ours = state_of(model)
    assert sorted(state2) == sorted(ours)
    for name, value in ours.items():
        np.testing.assert_array_equal(state2[name], value, err_msg=name)
    _, model2 = hfio.import_hf(out, return_model=True)
    np.testing.assert_array_equal(any_logits(arch, model2), want)


def test_config_and_tokenizer_files(tokenizer, tmp_path):
    for arch in ARCHS:
        cfg = tiny(arch, tokenizer)
        out = str(tmp_path / arch)
        hfio.export_state(cfg, state_of(models.build_model(cfg, seed=0)), out, tokenizer, log=lambda *_: None)
        with open(os.path.join(out, "config.json")) as f:
            conf = json.load(f)
        assert conf["torch_dtype"] == "float32"
        assert (conf["bos_token_id"], conf["eos_token_id"], conf["pad_token_id"]) == (2, 3, 0)
        if arch == "pangu_pro_moe":
            assert conf["architectures"] == ["PanguProMoEForCausalLM"] and conf["model_type"] == "PanguProMoE"
            keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                    "rms_norm_eps", "rope_theta", "moe_intermediate_size", "shared_expert_intermediate_size",
                    "num_experts", "num_experts_per_tok", "router_aux_loss_coef", "tie_word_embeddings")
        elif arch == "qwen2":
            assert conf["architectures"] == ["Qwen2ForCausalLM"] and conf["model_type"] == "qwen2"
            assert conf["use_sliding_window"] is False and conf["hidden_act"] == "silu" and "head_dim" not in conf
            keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "rms_norm_eps", "rope_theta", "tie_word_embeddings")
        else:
            assert conf["architectures"] == ["PanguUltraMoEForCausalLM"] and conf["model_type"] == "pangu_ultra_moe"
            assert conf["sandwich_norm"] is True and conf["num_nextn_predict_layers"] == cfg.num_mtp_layers
            keys = ("attention_q_lora_dim", "attention_kv_lora_dim", "attention_qk_dim", "attention_qk_rope_dim",
                    "attention_v_dim", "num_routed_experts", "num_shared_experts", "num_dense_layers",
                    "num_mtp_layers", "routed_scaling_factor", "norm_topk_prob")
        for key in keys:
            assert conf[key] == getattr(cfg, key), key
    with open(tokenizer.model_path, "rb") as a, open(os.path.join(out, "tokenizer.model"), "rb") as b:
        assert a.read() == b.read()
    with open(os.path.join(out, "tokenizer_config.json")) as f:
        tc = json.load(f)
    assert (tc["bos_token"], tc["eos_token"], tc["pad_token"], tc["unk_token"]) == ("<bos>", "<eod>", "<pad>", "<unk>")
    assert tc["additional_special_tokens"] == ["<|user|>", "<|assistant|>"]
    assert tc["added_tokens_decoder"]["4"]["content"] == "<|user|>" and tc["add_bos_token"] is False
    with open(os.path.join(out, "generation_config.json")) as f:
        assert json.load(f) == {"bos_token_id": 2, "eos_token_id": [3, 4], "pad_token_id": 0, "do_sample": False}


# --------------------------------------------------------------------------------------------- bf16
def bf16_reference(x):
    """Independent RNE: pick the nearer of the two bf16 neighbours (ties: even mantissa), via float64."""
    x = np.asarray(x, np.float32)
    lo = (x.view(np.uint32) >> 16).astype(np.uint16)
    hi = lo + np.uint16(1)
    f_lo = safetensors_io.bf16_bits_to_fp32(lo).astype(np.float64)
    f_hi = safetensors_io.bf16_bits_to_fp32(hi).astype(np.float64)
    d_lo, d_hi = np.abs(x - f_lo), np.abs(f_hi - x)
    return np.where((d_hi < d_lo) | ((d_hi == d_lo) & (lo % 2 == 1)), hi, lo)


def test_bf16_rounding_bits():
    bits = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0x7F7FFFFF, 0xFF7FFFFF, 0x00000001,
                     0x80000000, 0x7F800000, 0xFF800000], np.uint32)
    x = bits.view(np.float32)
    got = safetensors_io.fp32_to_bf16_bits(x)
    assert list(got) == [0x3F80, 0x3F82, 0x3F81, 0x3F80, 0x7F80, 0xFF80, 0x0000, 0x8000, 0x7F80, 0xFF80]
    nan = safetensors_io.fp32_to_bf16_bits(np.array([np.nan, -np.nan], np.float32))
    assert np.isnan(safetensors_io.bf16_bits_to_fp32(nan)).all()
    r = (np.random.default_rng(0).standard_normal(20000) * 10.0 ** np.random.default_rng(1).integers(-40, 38, 20000))
    r = r.astype(np.float32)  # normals, subnormals and zeros of float32
    finite = np.isfinite(r) & (np.abs(r) < 3e38)
    np.testing.assert_array_equal(safetensors_io.fp32_to_bf16_bits(r[finite]), bf16_reference(r[finite]))


def test_bf16_export_header_and_values(tokenizer, tmp_path):
    cfg = tiny("pangu_pro_moe", tokenizer)
    state = state_of(models.build_model(cfg, seed=5))
    out = str(tmp_path / "bf16")
    hfio.export_state(cfg, state, out, tokenizer, "bf16", "1GB", log=lambda *_: None)
    assert sorted(f for f in os.listdir(out) if f.endswith(".safetensors")) == ["model-00001-of-00001.safetensors"]
    path = os.path.join(out, "model-00001-of-00001.safetensors")
    header = safetensors_io.read_header(path)
    header.pop("__metadata__")
    (n,) = struct.unpack("<Q", open(path, "rb").read(8))
    assert n % 8 == 0
    ends = sorted((m["data_offsets"] for m in header.values()))
    assert ends[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ends, ends[1:]))  # contiguous
    assert os.path.getsize(path) == 8 + n + ends[-1][1]
    for name, meta in header.items():
        assert meta["dtype"] == "BF16" and meta["data_offsets"][1] - meta["data_offsets"][0] == 2 * np.prod(meta["shape"])
    with safe_open(path, framework="numpy") as f:  # the library parses it; numpy itself has no bfloat16
        sl = f.get_slice("model.layers.0.mlp.gate.weight")
        assert sl.get_dtype() == "BF16" and sl.get_shape() == [cfg.num_experts, cfg.hidden_size]
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["torch_dtype"] == "bfloat16"
    cfg2, back = hfio.import_hf(out)
    from pangu.pro_moe import convert

    hf = convert.to_hf(state)
    reader = safetensors_io.Reader(path)
    for name, value in hf.items():  # stored bits = RNE(fp32); import gives them back as fp32
        np.testing.assert_array_equal(safetensors_io.fp32_to_bf16_bits(reader.get(name)), bf16_reference(value))
        assert np.max(np.abs(reader.get(name) - value)) <= np.max(np.abs(value)) * 2.0 ** -8
    assert sorted(back) == sorted(state)


# -------------------------------------------------------------------------------- strict import
def _rewrite(out, edit):
    """Apply edit(dict) to the single shard's tensors and rewrite shard + index."""
    fname = "model-00001-of-00001.safetensors"
    reader = safetensors_io.Reader(os.path.join(out, fname))
    tensors = {n: reader.get(n) for n in reader.names()}
    edit(tensors)
    safetensors_io.write(os.path.join(out, fname), tensors, metadata={"format": "pt"})
    with open(os.path.join(out, hfio.INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": {n: fname for n in tensors}}, f)


STRICT_CASES = {
    "pangu_ultra_moe": [
        (lambda t: t.pop("model.layers.2.mlp.experts.3.up_proj.weight"),
         "missing tensor model.layers.2.mlp.experts.3.up_proj.weight"),
        (lambda t: t.update({"model.layers.1.mlp.extra.weight": np.zeros(2, np.float32)}),
         "unexpected tensor model.layers.1.mlp.extra.weight"),
        (lambda t: t.update({"model.layers.0.self_attn.o_proj.weight": np.zeros((64, 63), np.float32)}),
         "tensor model.layers.0.self_attn.o_proj.weight has shape (64, 63), config.json implies (64, 64)"),
        (lambda t: t.pop("model.layers.3.eh_proj.weight"), "missing tensor model.layers.3.eh_proj.weight"),
    ],
    "mindvl": [
        (lambda t: t.pop("visual.blocks.1.attn.qkv.bias"), "missing tensor visual.blocks.1.attn.qkv.bias"),
        (lambda t: t.update({"visual.patch_embed.proj.weight": np.zeros((32, 3, 2, 14, 13), np.float32)}),
         "tensor visual.patch_embed.proj.weight has shape (32, 3, 2, 14, 13), config.json implies (32, 3, 2, 14, 14)"),
        (lambda t: t.update({"visual.blocks.2.norm1.weight": np.zeros(32, np.float32)}),  # depth is 2
         "unexpected tensor visual.blocks.2.norm1.weight"),
        (lambda t: t.pop("model.layers.1.mlp.up_proj.weight"), "missing tensor model.layers.1.mlp.up_proj.weight"),
        (lambda t: t.update({"model.layers.0.self_attn.o_proj.bias": np.zeros(64, np.float32)}),   # Qwen2: no o bias
         "unexpected tensor model.layers.0.self_attn.o_proj.bias"),
    ],
    "mindvl_pangu": [
        (lambda t: t.pop("model.layers.1.mlp.experts.3.up_proj.weight"),
         "missing tensor model.layers.1.mlp.experts.3.up_proj.weight"),
    ],
}


@pytest.mark.parametrize("arch", sorted(STRICT_CASES))
def test_import_is_strict(arch, tokenizer, tmp_path):
    cfg = tiny(arch, tokenizer_of(arch, tokenizer))
    state = state_of(build(arch, cfg, 0))
    for i, (edit, message) in enumerate(STRICT_CASES[arch]):
        out = str(tmp_path / f"case{i}")
        hfio.export_state(cfg, state, out, None, log=lambda *_: None)
        _rewrite(out, edit)
        with pytest.raises(ValueError) as err:
            hfio.import_hf(out)
        assert message in str(err.value) and "\n" not in str(err.value)
    out = str(tmp_path / "bad_index")
    hfio.export_state(cfg, state, out, None, "fp32", "50KB", log=lambda *_: None)
    with open(os.path.join(out, hfio.INDEX_FILE)) as f:
        index = json.load(f)
    index["weight_map"]["lm_head.weight"] = "model-00001-of-00099.safetensors"
    with open(os.path.join(out, hfio.INDEX_FILE), "w") as f:
        json.dump(index, f)
    with pytest.raises(ValueError, match="shard model-00001-of-00099.safetensors is missing"):
        hfio.import_hf(out)


# ------------------------------------------------------------------------------------ MINDIR + CLI
RUN_RECIPE = {"pangu_pro_moe": "recipes/pangu_pro_moe/pretrain_tiny.yaml",
              "pangu_ultra_moe": "recipes/pangu_ultra_moe/pretrain_tiny.yaml",
              "mindvl": "recipes/mindvl/warmup_tiny.yaml"}


def make_run(tmp_path, tokenizer, arch="pangu_pro_moe", name="run"):
    """A run directory as recipes.run leaves it (config.yaml + one checkpoint), without training; a MindVL
    run also gets the preprocessor_config.json (with a search record) that the resolution search writes."""
    recipe, _ = load_recipe(RUN_RECIPE[arch], [f"run.root={tmp_path}", f"run.name={name}"])
    cfg = tiny(arch, tokenizer_of(arch, tokenizer))
    run = tmp_path / name
    os.makedirs(run)
    dump_yaml(recipe, cfg, str(run / "config.yaml"))
    model = build(arch, cfg, 2)
    ck.save(str(run / "checkpoints"), 7, state_of(model), None, {"step": 7}, keep_last=2)
    if arch in VL_ARCHS:
        vl_processor().save(str(run))
    return str(run), cfg, model


def test_cli_and_mindir(tokenizer, tmp_path, capsys):
    import mindspore as ms
    from mindspore import Tensor, nn

    run, cfg, model = make_run(tmp_path, tokenizer)
    out = str(tmp_path / "hf")
    assert export_cli.main([run, "--out", out, "--mindir", "--mindir-seq-len", "16"]) == 0
    assert "exported pangu_pro_moe" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model-00001-of-00001.safetensors",
                                       "model.mindir", "model.safetensors.index.json", "special_tokens_map.json",
                                       "tokenizer.model", "tokenizer_config.json"]
    graph = nn.GraphCell(ms.load(os.path.join(out, "model.mindir")))
    ids = np.random.default_rng(3).integers(0, cfg.vocab_size, (1, 16)).astype(np.int32)
    pos, seg = np.arange(16, dtype=np.int32)[None], np.ones((1, 16), np.int32)
    portable = hfio.portable_config(cfg)
    assert portable.attention_impl == "reference"
    assert portable.expert_impl == ("batched" if cfg.expert_impl == "grouped" else cfg.expert_impl)
    ref = models.build_model(portable, seed=0)
    for name, p in ref.parameters_and_names():
        p.set_data(dict(model.parameters_and_names())[name].data)
    ref.set_train(False)
    want = ref(Tensor(ids), Tensor(pos), Tensor(seg)).asnumpy()
    np.testing.assert_array_equal(graph(Tensor(ids), Tensor(pos), Tensor(seg)).asnumpy(), want)

    assert export_cli.main([run, "--out", out]) == 2  # not empty
    assert capsys.readouterr().err.startswith(f"error: --out: {out} is not empty")
    assert export_cli.main([str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert export_cli.main([run, "--out", str(tmp_path / "y"), "--shard-size", "lots"]) == 2
    err = capsys.readouterr().err
    assert "--shard-size: cannot parse 'lots'" in err and err.count("\n") == 2


@pytest.mark.parametrize("arch", ["pangu_ultra_moe", "mindvl"])
def test_import_to_run_then_export_again_is_identical(arch, tokenizer, tmp_path):
    """Hub dir -> our run-like directory (init_from-able) -> Hub dir again: byte-identical files
    (MindVL: also tokenizer.json and preprocessor_config.json with its resolution-search record)."""
    from recipes.io import rundir

    run, cfg, model = make_run(tmp_path, tokenizer, arch)
    first, second, ours = str(tmp_path / "hf1"), str(tmp_path / "hf2"), str(tmp_path / "ours")
    hfio.export_run(run, first, shard_size="200KB", log=lambda *_: None)
    step_dir = hfio.import_to_run(first, ours, log=lambda *_: None)
    assert ck.resolve_init_from(ours) == step_dir
    recipe, cfg2 = rundir.load_run_config(ours)
    assert same_config(arch, cfg2, cfg)
    if arch == "mindvl":
        assert (recipe.data.min_pixels, recipe.data.max_pixels) == (3136, 7056)
        assert sorted(f for f in os.listdir(first) if not f.endswith(".safetensors")) == [
            "config.json", "generation_config.json", "model.safetensors.index.json", "preprocessor_config.json",
            "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    else:
        assert recipe.data.tokenizer_model == os.path.join(ours, "tokenizer.model")
    hfio.export_run(ours, second, shard_size="200KB", log=lambda *_: None)
    names = sorted(os.listdir(first))
    assert names == sorted(os.listdir(second))
    for name in names:
        with open(os.path.join(first, name), "rb") as a, open(os.path.join(second, name), "rb") as b:
            assert a.read() == b.read(), name


def test_mindvl_run_export_files_and_mindir(tokenizer, tmp_path, capsys):
    """`python -m recipes.export RUN` of a MindVL run: Qwen2.5-VL tensors readable by the safetensors
    library, config / generation / tokenizer / processor files, and a MINDIR of the multimodal graph."""
    import mindspore as ms
    from mindspore import nn

    from mindvl import convert as vl
    from mindvl.processor import SPECIAL_TOKENS, ByteTokenizer, ImageProcessor

    run, cfg, model = make_run(tmp_path, tokenizer, "mindvl")
    out = str(tmp_path / "hf")
    assert export_cli.main([run, "--out", out, "--shard-size", "300KB", "--mindir", "--mindir-seq-len", str(VL_SEQ),
                        "--mindir-patches", str(VL_PATCHES)]) == 0
    assert "exported mindvl" in capsys.readouterr().out
    files = sorted(os.listdir(out))
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) > 1 and sorted(set(files) - set(shards)) == [
        "config.json", "generation_config.json", "model.mindir", "model.safetensors.index.json",
        "preprocessor_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]

    # tensors: exactly the Qwen2.5-VL names and shapes, F32, the index naming every shard's tensors
    found = read_all(out)
    assert {n: s for n, (_, s) in found.items()} == expected_mindvl(cfg)
    assert found["visual.patch_embed.proj.weight"] == ("F32", (32, 3, 2, 14, 14))
    with open(os.path.join(out, hfio.INDEX_FILE)) as f:
        assert set(json.load(f)["weight_map"]) == set(found)

    # config.json: Qwen2.5-VL keys, nested vision_config, M-RoPE sections, special ids
    with open(os.path.join(out, "config.json")) as f:
        conf = json.load(f)
    v = cfg.vision_config
    assert conf["architectures"] == ["Qwen2_5_VLForConditionalGeneration"] and conf["model_type"] == "qwen2_5_vl"
    assert {k: conf["vision_config"][k] for k in ("depth", "hidden_size", "intermediate_size", "num_heads",
                                                 "patch_size", "spatial_merge_size", "temporal_patch_size",
                                                 "window_size", "fullatt_block_indexes", "out_hidden_size")} == {
        "depth": v.depth, "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
        "num_heads": v.num_heads, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
        "window_size": 112, "fullatt_block_indexes": list(v.fullatt_block_indexes),
        "out_hidden_size": cfg.text_config().hidden_size}
    assert conf["rope_scaling"] == {"type": "mrope", "mrope_section": list(model.mrope_section)}
    assert (conf["image_token_id"], conf["vision_start_token_id"], conf["vision_end_token_id"]) == (6, 4, 5)
    assert (conf["eos_token_id"], conf["pad_token_id"], conf["torch_dtype"]) == (3, 0, "float32")
    with open(os.path.join(out, "generation_config.json")) as f:
        assert json.load(f) == {"bos_token_id": None, "eos_token_id": [3, 1], "pad_token_id": 0, "do_sample": False}

    # preprocessor_config.json: pixel budget, patch geometry, CLIP mean/std and the resolution-search record
    with open(os.path.join(out, "preprocessor_config.json")) as f:
        pre = json.load(f)
    assert (pre["min_pixels"], pre["max_pixels"], pre["size"]) == (3136, 7056, {"shortest_edge": 3136,
                                                                               "longest_edge": 7056})
    assert (pre["patch_size"], pre["merge_size"], pre["temporal_patch_size"]) == (14, 2, 2)
    assert pre["image_mean"] == [0.48145466, 0.4578275, 0.40821073] and pre["image_std"] == [0.26862954, 0.26130258,
                                                                                              0.27577711]
    assert pre["image_processor_type"] == "Qwen2VLImageProcessor" and pre["processor_class"] == "Qwen2_5_VLProcessor"
    assert pre["extra"]["resolution_search"] == vl_processor().extra["resolution_search"]
    assert ImageProcessor.load(out) == vl_processor()

    # tokenizer: tokenizer.json is byte-level BPE with our ids; load_tokenizer rebuilds the ByteTokenizer
    with open(os.path.join(out, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    vocab = tj["model"]["vocab"]
    assert len(vocab) == 263 and tj["model"]["merges"] == [] and tj["pre_tokenizer"]["type"] == "ByteLevel"
    assert [(t["id"], t["content"]) for t in tj["added_tokens"]] == list(enumerate(SPECIAL_TOKENS))
    to_byte = {vocab[c]: b for b, c in enumerate(vl._byte_chars())}
    tk = ByteTokenizer()
    text = "What colour is the shape at the top left? — 7 ü"
    assert bytes(to_byte[i] for i in tk.encode(text)).decode("utf-8") == text
    assert isinstance(vl.load_tokenizer(out), ByteTokenizer)
    with open(os.path.join(out, "tokenizer_config.json")) as f:
        tc = json.load(f)
    assert tc["tokenizer_class"] == "PreTrainedTokenizerFast" and tc["eos_token"] == "<|im_end|>"
    assert "<|vision_start|><|image_pad|><|vision_end|>" in tc["chat_template"]

    # MINDIR: the multimodal inference graph reproduces the reference model's logits
    batch = vl_batch()
    batch = {k: v[:1] for k, v in batch.items()}
    graph = nn.GraphCell(ms.load(os.path.join(out, "model.mindir")))
    portable = hfio.portable_config(cfg)
    assert portable.text_config().attention_impl == portable.text_config().ops_impl == "reference"
    ref = build("mindvl", portable, 0)
    for name, p in ref.parameters_and_names():
        p.set_data(dict(model.parameters_and_names())[name].data)
    from mindvl.model import batch_args

    got = graph(*batch_args(ref, batch)).asnumpy()
    np.testing.assert_array_equal(got, vl_logits(ref, batch))

    # the run without a preprocessor_config.json exports the recipe's pixel budget (no record)
    os.remove(os.path.join(run, "preprocessor_config.json"))
    recipe, _ = load_recipe(RUN_RECIPE["mindvl"])
    assets = models.get_spec("mindvl").serving.run_assets(recipe.data, run)
    assert assets["processor"] == recipe.data.processor() and assets["processor"].extra == {}


def test_mindvl_assets_keep_a_foreign_tokenizer_and_refuse_a_foreign_processor(tokenizer, tmp_path):
    """A tokenizer.json that is not the ByteTokenizer is the imported run's own tokenizer (read by the `tokenizers`
    library); one without MindVL's special tokens, or a processor whose patches do not fit the ViT (on export and
    on import), is refused in one line."""

    from mindvl.processor import ByteTokenizer, ImageProcessor

    cfg = tiny("mindvl", ByteTokenizer())
    state = state_of(build("mindvl", cfg, 0))
    with pytest.raises(ValueError) as err:
        hfio.export_state(cfg, state, str(tmp_path / "bad_proc"), ByteTokenizer(), processor=ImageProcessor(
            patch_size=16), log=lambda *_: None)
    assert str(err.value).startswith("preprocessor_config.json: patch_size 16 but the model's "
                                     "vision_config.patch_size is 14") and "\n" not in str(err.value)
    out = str(tmp_path / "hf")
    hfio.export_state(cfg, state, out, ByteTokenizer(), processor=vl_processor(), log=lambda *_: None)
    path = os.path.join(out, "tokenizer.json")
    with open(path, encoding="utf-8") as f:
        tj = json.load(f)
    tj["model"]["vocab"]["a"], tj["model"]["vocab"]["b"] = tj["model"]["vocab"]["b"], tj["model"]["vocab"]["a"]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tj, f)
    from mindvl.processor import HFTokenizer
    from recipes.io import rundir

    hfio.import_to_run(out, str(tmp_path / "ours"), log=lambda *_: None)
    recipe, _ = rundir.load_run_config(str(tmp_path / "ours"))
    tk = models.get_spec("mindvl").build_dataset(recipe.data, "val").tokenizer
    byte = ByteTokenizer()
    assert isinstance(tk, HFTokenizer) and tk.encode("ab") == byte.encode("ba") and tk.eod_id == byte.eod_id
    del tj["added_tokens"][1]                                           # <eod>
    tj["model"]["vocab"].pop("<eod>")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tj, f)
    with pytest.raises(ValueError) as err:
        hfio.import_to_run(out, str(tmp_path / "ours_no_eod"), log=lambda *_: None)
    assert str(err.value).endswith("tokenizer.json: no <|endoftext|> token; MindVL needs <|endoftext|>, <|im_end|>, "
                                   "<|im_start|>, <|image_pad|>, <|vision_end|>, <|vision_start|> (a Qwen2-VL / "
                                   "Qwen2.5-VL tokenizer has them)")
    assert "\n" not in str(err.value)
    out = str(tmp_path / "hf2")
    hfio.export_state(cfg, state, out, ByteTokenizer(), processor=vl_processor(), log=lambda *_: None)
    with open(os.path.join(out, "preprocessor_config.json")) as f:
        pre = json.load(f)
    with open(os.path.join(out, "preprocessor_config.json"), "w") as f:
        json.dump({**pre, "merge_size": 4}, f)
    with pytest.raises(ValueError, match=r"^preprocessor_config.json: merge_size 4 but the model's "
                                         r"vision_config.spatial_merge_size is 2"):
        hfio.import_to_run(out, str(tmp_path / "ours2"), log=lambda *_: None)


def test_failed_export_leaves_the_previous_export_intact(tokenizer, tmp_path, monkeypatch):
    cfg = tiny("pangu_pro_moe", tokenizer)
    state = state_of(models.build_model(cfg, seed=0))
    out = str(tmp_path / "hf")
    quiet = dict(log=lambda *_: None)

    def files():
        return {f: open(os.path.join(out, f), "rb").read() for f in sorted(os.listdir(out))}

    hfio.export_state(cfg, state, out, tokenizer, **quiet)
    before = files()

    def disk_full(*_, **__):
        raise OSError("No space left on device")

    monkeypatch.setattr(hfio, "export_mindir", disk_full)   # fails after the shards and configs are written
    with pytest.raises(OSError, match="No space left"):
        hfio.export_state(cfg, state, out, tokenizer, dtype="bf16", mindir=True, overwrite=True, **quiet)
    assert os.listdir(tmp_path) == ["hf"] and files() == before     # no staging dir left, old export kept
    with pytest.raises(OSError, match="No space left"):
        hfio.export_state(cfg, state, str(tmp_path / "new"), tokenizer, mindir=True, **quiet)
    assert os.listdir(tmp_path) == ["hf"]                             # nothing half-written at a new path
    monkeypatch.undo()
    hfio.export_state(cfg, state, out, tokenizer, dtype="bf16", overwrite=True, **quiet)
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["torch_dtype"] == "bfloat16"
    assert os.listdir(tmp_path) == ["hf"]
