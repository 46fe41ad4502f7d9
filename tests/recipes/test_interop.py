"""Interop with released layouts, checked against checkpoints the tests write in the stock names and config keys
(every spelling the family's configs use) and held to an independent numpy forward: DeepSeek-V3 in, the
DeepSeek-V3 layout out, absent keys derived by the layout's rules or refused, re-exports of foreign checkpoints
that keep their keys, ids and tokenizer files, and the keys serving loaders need for the selection bias."""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import models
from recipes.io import checkpoint as ck
from recipes.io import hf
from np_reference import deepseek_v3_logits

DS_CONFIG = {  # a tiny DeepSeek-V3 as transformers 5 writes it (rope_parameters, rope_interleave) + extra keys
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": 96, "hidden_size": 32,
    "intermediate_size": 48, "moe_intermediate_size": 16, "num_hidden_layers": 3, "num_attention_heads": 4,
    "num_key_value_heads": 4, "n_shared_experts": 1, "n_routed_experts": 8, "routed_scaling_factor": 2.5,
    "kv_lora_rank": 16, "q_lora_rank": 24, "qk_rope_head_dim": 8, "v_head_dim": 8, "qk_nope_head_dim": 8,
    "topk_method": "noaux_tc", "n_group": 4, "topk_group": 2, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
    "norm_topk_prob": True, "scoring_func": "sigmoid", "hidden_act": "silu", "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, "rope_interleave": True,
    "tie_word_embeddings": False, "num_nextn_predict_layers": 1, "attention_bias": False, "bos_token_id": 0,
    "eos_token_id": 1, "use_cache": True, "attention_dropout": 0.0, "initializer_range": 0.02, "ep_size": 1,
    "aux_loss_alpha": 0.001, "seq_aux": True, "torch_dtype": "float32", "transformers_version": "5.0.0"}


def deepseek_tensors(c, seed=0):
    """Random weights in DeepSeek-V3's stock names (norm gammas around 1, a random selection bias)."""
    rng = np.random.default_rng(seed)
    h, v, n = c["hidden_size"], c["vocab_size"], c["num_attention_heads"]
    dn, dr, dv, qr, kvr = (c[k] for k in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "q_lora_rank",
                                          "kv_lora_rank"))
    e, f, fe = c["n_routed_experts"], c["intermediate_size"], c["moe_intermediate_size"]

    def mat(*shape, std=0.15):
        return rng.normal(0, std, shape).astype(np.float32)

    def gamma(d):
        return (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)

    w = {"model.embed_tokens.weight": mat(v, h, std=0.5), "model.norm.weight": gamma(h), "lm_head.weight": mat(v, h)}
    for i in range(c["num_hidden_layers"] + c["num_nextn_predict_layers"]):
        p = f"model.layers.{i}."
        w.update({p + "input_layernorm.weight": gamma(h), p + "post_attention_layernorm.weight": gamma(h),
                  p + "self_attn.q_a_proj.weight": mat(qr, h), p + "self_attn.q_a_layernorm.weight": gamma(qr),
                  p + "self_attn.q_b_proj.weight": mat(n * (dn + dr), qr),
                  p + "self_attn.kv_a_proj_with_mqa.weight": mat(kvr + dr, h),
                  p + "self_attn.kv_a_layernorm.weight": gamma(kvr),
                  p + "self_attn.kv_b_proj.weight": mat(n * (dn + dv), kvr), p + "self_attn.o_proj.weight": mat(h, n * dv)})
        if i < c["first_k_dense_replace"]:
            w.update({p + "mlp.gate_proj.weight": mat(f, h), p + "mlp.up_proj.weight": mat(f, h),
                      p + "mlp.down_proj.weight": mat(h, f)})
        else:
            w.update({p + "mlp.gate.weight": mat(e, h, std=0.5),
                      p + "mlp.gate.e_score_correction_bias": (0.2 * rng.standard_normal(e)).astype(np.float32)})
            for x in range(e):
                w.update({p + f"mlp.experts.{x}.gate_proj.weight": mat(fe, h), p + f"mlp.experts.{x}.up_proj.weight":
                          mat(fe, h), p + f"mlp.experts.{x}.down_proj.weight": mat(h, fe)})
            w.update({p + "mlp.shared_experts.gate_proj.weight": mat(fe, h),
                      p + "mlp.shared_experts.up_proj.weight": mat(fe, h),
                      p + "mlp.shared_experts.down_proj.weight": mat(h, fe)})
        if i >= c["num_hidden_layers"]:   # the MTP module, with the copies of the shared embedding and head
            w.update({p + "enorm.weight": gamma(h), p + "hnorm.weight": gamma(h), p + "eh_proj.weight": mat(h, 2 * h),
                      p + "shared_head.norm.weight": gamma(h), p + "shared_head.head.weight": w["lm_head.weight"],
                      p + "embed_tokens.weight": w["model.embed_tokens.weight"]})
    return w


def write_checkpoint(directory, config, tensors, extra_files=()):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    for name, text in extra_files:
        with open(os.path.join(directory, name), "w") as f:
            f.write(text)
    return directory


def logits_of(model, ids):
    from mindspore import Tensor

    s = len(ids)
    out = model(Tensor(np.array([ids], np.int32)), Tensor(np.arange(s, dtype=np.int32)[None]),
                Tensor(np.ones((1, s), np.int32)))
    return out.asnumpy()[0].astype(np.float64)


def exported_tensors(directory):
    with open(os.path.join(directory, hf.INDEX_FILE)) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    return {k: v for shard in shards for k, v in load_file(os.path.join(directory, shard)).items()}


def assert_reimport_identical(run, exported, again):
    """import -> export -> import: the second import's checkpoint file has the first one's bytes."""
    hf.import_to_run(exported, again, log=lambda *_: None)
    first = ck.latest_valid(os.path.join(run, "checkpoints")).path
    second = ck.latest_valid(os.path.join(again, "checkpoints")).path
    with open(os.path.join(first, ck.MODEL_FILE), "rb") as a, open(os.path.join(second, ck.MODEL_FILE), "rb") as b:
        assert a.read() == b.read()


def test_deepseek_v3_checkpoint_imports_matches_numpy_and_exports_back(tmp_path):
    tensors = deepseek_tensors(DS_CONFIG)
    src = write_checkpoint(str(tmp_path / "ds"), DS_CONFIG, tensors)
    cfg, model = hf.import_hf(src, return_model=True)
    assert models.spec_of(cfg).name == "pangu_ultra_moe"
    assert (cfg.n_group, cfg.topk_group, cfg.num_dense_layers, cfg.num_mtp_layers, cfg.sandwich_norm,
            cfg.router_enable_expert_bias, cfg.rope_theta, cfg.rms_norm_eps) == (4, 2, 1, 1, False, True, 1e4, 1e-6)
    ids = [5, 17, 3, 88, 41, 2, 63, 9, 30, 71, 12, 50]
    want = deepseek_v3_logits(tensors, DS_CONFIG, np.array(ids))
    got = logits_of(model, ids)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    # the group limit matters here: the same weights routed without it give other logits
    no_limit = deepseek_v3_logits(tensors, {**DS_CONFIG, "n_group": 1, "topk_group": 1}, np.array(ids))
    assert np.abs(no_limit - want).max() > 1e-3 * np.abs(want).max()

    run = str(tmp_path / "run")
    hf.import_to_run(src, run, log=lambda *_: None)
    out = str(tmp_path / "export")
    hf.export_run(run, out, log=lambda *_: None)            # the source's layout by default: DeepSeek-V3
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f) == DS_CONFIG                     # every key, the ids and the extra keys, as they were
    back = exported_tensors(out)
    assert sorted(back) == sorted(tensors)
    for name in tensors:
        np.testing.assert_array_equal(back[name], tensors[name], err_msg=name)
    assert sorted(os.listdir(out)) == ["config.json", "model-00001-of-00001.safetensors", hf.INDEX_FILE]
    assert_reimport_identical(run, out, str(tmp_path / "run2"))


def test_ultra_export_writes_every_key_the_serving_loaders_read(tmp_path):
    cfg = models.get_config("pangu_ultra_moe", "tiny", vocab_size=64)
    state = {n: p.asnumpy() for n, p in models.build_model(cfg, 0).parameters_and_names()}
    out = str(tmp_path / "ultra")
    hf.export_state(cfg, state, out, log=lambda *_: None)
    with open(os.path.join(out, "config.json")) as f:
        c = json.load(f)
    assert c["router_enable_expert_bias"] is True and c["sandwich_norm"] is True and c["rope_interleave"] is True
    # openPangu's own spellings (transformers remote code, vLLM-Ascend) and DeepSeek's (mainline vLLM openpangu.py)
    assert (c["attention_kv_lora_dim"], c["kv_lora_rank"], c["num_routed_experts"], c["n_routed_experts"],
            c["num_dense_layers"], c["first_k_dense_replace"], c["num_mtp_layers"], c["num_nextn_predict_layers"]) == (
        16, 16, 8, 8, 1, 1, 1, 1)
    assert c["num_key_value_heads"] == c["num_attention_heads"] and c["hidden_act"] == "silu"
    # DeepSeek's routing keys (omni-infer's openPangu model builds its router from them): one group, the bias
    assert (c["scoring_func"], c["topk_method"], c["n_group"], c["topk_group"]) == ("sigmoid", "noaux_tc", 1, 1)
    no_bias = cfg.replace(router_enable_expert_bias=False)
    no_bias_state = {n: p.asnumpy() for n, p in models.build_model(no_bias, 0).parameters_and_names()}
    hf.export_state(no_bias, no_bias_state, str(tmp_path / "nb"), log=lambda *_: None)
    with open(os.path.join(tmp_path / "nb", "config.json")) as f:
        nb = json.load(f)
    assert (nb["router_enable_expert_bias"], nb["topk_method"]) == (False, "greedy")
    assert hf.import_hf(str(tmp_path / "nb"))[0] == no_bias
    contradiction = {**nb, "topk_method": "noaux_tc"}
    with pytest.raises(ValueError, match=r"^router_enable_expert_bias: False contradicts topk_method 'noaux_tc' "):
        models.get_spec("pangu_ultra_moe").serving.config_from_hf(contradiction)
    with pytest.raises(ValueError, match=r"^sandwich_norm: true \(DSSN post-norms\) has no DeepseekV3ForCausalLM "
                                         r"export: that layout is pre-norm only; .*$"):
        hf.export_state(cfg, state, str(tmp_path / "ds"), layout="deepseek_v3", log=lambda *_: None)
    assert not os.path.exists(tmp_path / "ds")
    plain = cfg.replace(sandwich_norm=False)
    plain_state = {n: p.asnumpy() for n, p in models.build_model(plain, 0).parameters_and_names()}
    hf.export_state(plain, plain_state, str(tmp_path / "ds"), layout="deepseek_v3", log=lambda *_: None)
    back_cfg, back = hf.import_hf(str(tmp_path / "ds"))
    assert back_cfg.sandwich_norm is False and back_cfg.n_group == 1
    for name in plain_state:
        np.testing.assert_array_equal(back[name], plain_state[name], err_msg=name)
    with pytest.raises(ValueError, match=r"^--layout: pangu_ultra_moe has no 'llama' serving layout; use one of"):
        hf.export_state(plain, plain_state, str(tmp_path / "x"), layout="llama", log=lambda *_: None)


def pro_source(tmp_path, drop=(), extra=None):
    """A tiny Pangu Pro MoE checkpoint as released: its config class's keys (no head_dim), bos 1 / eos 2,
    keys our model does not use, no tokenizer files."""
    cfg = models.get_config("pangu_pro_moe", "tiny", vocab_size=64)
    state = {n: p.asnumpy() for n, p in models.build_model(cfg, 3).parameters_and_names()}
    tensors = models.get_spec("pangu_pro_moe").serving.to_hf(state, cfg)
    config = {"architectures": ["PanguProMoEForCausalLM"], "model_type": "PanguProMoE", "vocab_size": 64,
              "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "hidden_act": "silu", "max_position_embeddings": 2048, "initializer_range": 0.02, "rms_norm_eps": 1e-5,
              "use_cache": True, "tie_word_embeddings": False, "rope_theta": 10000.0, "moe_intermediate_size": 32,
              "shared_expert_intermediate_size": 64, "num_experts_per_tok": 4, "num_experts": 8,
              "output_router_logits": False, "router_aux_loss_coef": 0.001, "attention_dropout": 0.0,
              "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "torch_dtype": "float32", **(extra or {})}
    for key in drop:
        config.pop(key)
    return write_checkpoint(str(tmp_path / "pro"), config, {k: np.ascontiguousarray(v) for k, v in tensors.items()}), \
        config, state


def test_absent_keys_follow_the_layout_rules_or_are_refused(tmp_path):
    src, config, state = pro_source(tmp_path)
    cfg, back = hf.import_hf(src)
    assert cfg.head_dim == 64 // 4 and cfg.attention_bias          # hidden_size / num_attention_heads, biases read
    for name in state:
        np.testing.assert_array_equal(back[name], state[name])
    no_kv = {k: v for k, v in config.items() if k != "num_key_value_heads"}
    assert models.get_spec("pangu_pro_moe").serving.config_from_hf(no_kv).num_key_value_heads == 4
    with pytest.raises(ValueError) as err:
        hf.import_hf(pro_source(tmp_path / "b", drop=("moe_intermediate_size",))[0])
    assert str(err.value).endswith("config.json: moe_intermediate_size: absent from config.json and no rule derives "
                                   "it; add the key with the checkpoint's value") and "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"config.json: hidden_act: 'gelu' is not SwiGLU's silu; "):
        hf.import_hf(pro_source(tmp_path / "c", extra={"hidden_act": "gelu"})[0])
    # Ultra: only DeepSeek's spelling of the MTP count; its dense layers and bias come off the tensors
    ds = {k: v for k, v in DS_CONFIG.items() if k not in ("first_k_dense_replace",)}
    src = write_checkpoint(str(tmp_path / "ds"), ds, deepseek_tensors(DS_CONFIG))
    cfg, _ = hf.import_hf(src)
    assert (cfg.num_mtp_layers, cfg.num_dense_layers) == (1, 1)
    wrong = write_checkpoint(str(tmp_path / "ds2"), {**DS_CONFIG, "num_nextn_predict_layers": 2},
                             deepseek_tensors(DS_CONFIG))
    with pytest.raises(ValueError, match=r"num_mtp_layers: config.json says 2 MTP layers but the tensors hold 1 "):
        hf.import_hf(wrong)
    yarn = write_checkpoint(str(tmp_path / "ds3"), {**DS_CONFIG, "rope_parameters": {
        "rope_theta": 1e4, "rope_type": "yarn", "factor": 40}}, deepseek_tensors(DS_CONFIG))
    with pytest.raises(ValueError, match=r"rope_scaling: 'yarn' scaling of the rope is not implemented here; "):
        hf.import_hf(yarn)


def test_reexport_of_a_foreign_checkpoint_keeps_its_keys_ids_and_no_tokenizer(tmp_path):
    src, config, state = pro_source(tmp_path)
    run = str(tmp_path / "run")
    hf.import_to_run(src, run, log=lambda *_: None)
    out = str(tmp_path / "out")
    hf.export_run(run, out, log=lambda *_: None)
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f) == config       # bos 1 / eos 2, use_cache, attention_dropout, ... all kept, nothing added
    assert not any(name.startswith(("tokenizer", "special_tokens", "generation")) for name in os.listdir(out))
    again = str(tmp_path / "run2")
    hf.import_to_run(out, again, log=lambda *_: None)
    paths = [ck.latest_valid(os.path.join(r, "checkpoints")).path for r in (run, again)]
    with open(os.path.join(paths[0], ck.MODEL_FILE), "rb") as a, open(os.path.join(paths[1], ck.MODEL_FILE), "rb") as b:
        assert a.read() == b.read()


def test_a_config_the_loaders_cannot_read_warns_at_train_start_and_is_refused_at_export(tmp_path):
    from recipes.engine.config import load_recipe
    from recipes.engine.trainer import Trainer

    sets = ["model.head_dim=32", "data.seq_length=32", "train.steps=1", f"run.root={tmp_path}", "run.name=r"]
    recipe, cfg = load_recipe("recipes/pangu_pro_moe/pretrain_tiny.yaml", sets)
    lines = []
    Trainer(recipe, cfg, log=lines.append)
    warning = ("warning: this run will not export: head_dim: 32 x 4 heads != hidden_size 64; PanguProMoE loaders "
               "compute head_dim = hidden_size / num_attention_heads, so this model has no PanguProMoE export "
               "(train with head_dim = hidden_size / num_attention_heads)")
    assert warning in lines
    with pytest.raises(ValueError, match=r"^head_dim: 32 x 4 heads != hidden_size 64; "):
        models.get_spec("pangu_pro_moe").serving.config_to_hf(cfg)
