"""Qwen2 (dense, the Qwen2.5-VL language model) against checkpoints the tests write in Qwen2ForCausalLM's stock
names and config keys: logits held to an independent numpy forward (rel <= 1e-5), import -> export byte-identical,
a run of ours exported and read back, and the configs the implementation cannot express refused in one line."""
import json
import os

import numpy as np
import pytest

import models
from recipes.io import hf
from np_reference import qwen2_logits
from test_interop import assert_reimport_identical, exported_tensors, logits_of, write_checkpoint

QWEN2_CONFIG = {  # a tiny Qwen2.5 as transformers writes it (every key of Qwen2Config)
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 96, "hidden_size": 32,
    "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "hidden_act": "silu", "max_position_embeddings": 256, "initializer_range": 0.02, "rms_norm_eps": 1e-6,
    "use_cache": True, "tie_word_embeddings": False, "rope_theta": 1000000.0, "rope_scaling": None,
    "use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 2, "attention_dropout": 0.0,
    "bos_token_id": 90, "eos_token_id": 91, "torch_dtype": "bfloat16", "transformers_version": "4.49.0"}


QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
def qwen_tokenizer(directory):
    """A small Qwen2-style tokenizer.json: byte-level BPE trained on a few lines, then Qwen's 14 added tokens."""
    from tokenizers import Tokenizer, decoders, models as tk_models, pre_tokenizers, trainers

    tk = Tokenizer(tk_models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tk.train_from_iterator(["What colour is the shape at the top left?", "The answer is red.",
                            "Read the digits: 4 7 1 9", "You are a helpful assistant."] * 20, trainer)
    tk.add_special_tokens(list(QWEN_SPECIALS))
    tk.save(os.path.join(directory, "tokenizer.json"))
    return {t: tk.token_to_id(t) for t in QWEN_SPECIALS}, tk.get_vocab_size(with_added_tokens=True)


def qwen2_tensors(c, seed=0):
    """Random weights in Qwen2's stock names (norm gammas around 1, random biases)."""
    rng = np.random.default_rng(seed)
    h, v, f = c["hidden_size"], c["vocab_size"], c["intermediate_size"]
    d = h // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d

    def mat(*shape, std=0.15):
        return rng.normal(0, std, shape).astype(np.float32)

    def gamma(n):
        return (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": mat(v, h, std=0.5), "model.norm.weight": gamma(h)}
    if not c["tie_word_embeddings"]:
        w["lm_head.weight"] = mat(v, h)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w.update({p + "input_layernorm.weight": gamma(h), p + "post_attention_layernorm.weight": gamma(h),
                  p + "self_attn.q_proj.weight": mat(q, h), p + "self_attn.q_proj.bias": mat(q),
                  p + "self_attn.k_proj.weight": mat(kv, h), p + "self_attn.k_proj.bias": mat(kv),
                  p + "self_attn.v_proj.weight": mat(kv, h), p + "self_attn.v_proj.bias": mat(kv),
                  p + "self_attn.o_proj.weight": mat(h, q), p + "mlp.gate_proj.weight": mat(f, h),
                  p + "mlp.up_proj.weight": mat(f, h), p + "mlp.down_proj.weight": mat(h, f)})
    return w


@pytest.mark.parametrize("tied", [False, True])
def test_qwen2_checkpoint_imports_matches_numpy_and_exports_back(tmp_path, tied):
    config = {**QWEN2_CONFIG, "tie_word_embeddings": tied}
    tensors = qwen2_tensors(config)
    src = write_checkpoint(str(tmp_path / "qwen2"), config, tensors)
    cfg, model = hf.import_hf(src, return_model=True)
    assert models.spec_of(cfg).name == "qwen2"
    assert (cfg.num_key_value_heads, cfg.head_dim, cfg.tie_word_embeddings, cfg.rope_theta) == (2, 8, tied, 1e6)
    ids = [5, 17, 3, 88, 41, 2, 63, 9, 30, 71, 12, 50]
    want = qwen2_logits(tensors, config, np.array(ids))
    got = logits_of(model, ids)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    # the q/k/v biases take part: the same weights without them give other logits
    nobias = {k: (np.zeros_like(v) if k.endswith("_proj.bias") else v) for k, v in tensors.items()}
    assert np.abs(qwen2_logits(nobias, config, np.array(ids)) - want).max() > 1e-3 * np.abs(want).max()

    run = str(tmp_path / "run")
    hf.import_to_run(src, run, log=lambda *_: None)
    out = str(tmp_path / "export")
    hf.export_run(run, out, log=lambda *_: None)
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f) == {**config, "torch_dtype": "float32"}   # every key as it was; fp32 written
    back = exported_tensors(out)
    assert sorted(back) == sorted(tensors)
    for name in tensors:
        np.testing.assert_array_equal(back[name], tensors[name], err_msg=name)
    assert_reimport_identical(run, out, str(tmp_path / "run2"))   # import -> export -> import: identical bytes


def test_a_model_of_ours_exports_as_qwen2_and_reads_back(tmp_path):
    cfg = models.get_config("qwen2", "tiny", vocab_size=64, tie_word_embeddings=False)
    model = models.build_model(cfg, seed=3)
    state = {n: np.array(p.asnumpy()) for n, p in model.parameters_and_names()}
    out = str(tmp_path / "out")
    hf.export_state(cfg, state, out, log=lambda *_: None)
    with open(os.path.join(out, "config.json")) as f:
        conf = json.load(f)
    assert conf["architectures"] == ["Qwen2ForCausalLM"] and conf["model_type"] == "qwen2"
    assert (conf["num_key_value_heads"], conf["intermediate_size"], conf["use_sliding_window"]) == (2, 128, False)
    assert sorted(exported_tensors(out)) == sorted(state)      # our names are the stock names
    cfg2, state2 = hf.import_hf(out)
    assert cfg2 == cfg
    for name in state:
        np.testing.assert_array_equal(state2[name], state[name], err_msg=name)
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    np.testing.assert_allclose(logits_of(model, ids), qwen2_logits(state, conf, np.array(ids)), rtol=0, atol=1e-4)


@pytest.mark.parametrize("change, message", [
    ({"use_sliding_window": True}, "use_sliding_window: True is not implemented"),
    ({"hidden_act": "gelu"}, "hidden_act: 'gelu' is not SwiGLU's silu"),
    ({"head_dim": 16}, "head_dim: 16 x 4 heads != hidden_size 32"),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope_scaling: {'type': 'yarn', 'factor': 4.0} is not"),
    ({"tie_word_embeddings": True}, "tie_word_embeddings: True but the checkpoint has lm_head.weight"),
])
def test_configs_qwen2_cannot_express_are_refused_in_one_line(tmp_path, change, message):
    src = write_checkpoint(str(tmp_path / "q"), {**QWEN2_CONFIG, **change}, qwen2_tensors(QWEN2_CONFIG))
    with pytest.raises(ValueError, match="^" + os.path.join(src, "config.json").replace(".", r"\.") + ": "
                       + message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace(".", r"\.")):
        hf.import_hf(src)


def test_qwen2_presets_match_the_published_parameter_counts():
    full = models.get_config("qwen2", "full")
    total, active = models.count_parameters(full)
    emb = full.vocab_size * full.hidden_size * 2
    assert (round(total / 1e9, 2), round((total - emb) / 1e9, 2), active) == (7.62, 6.53, total)   # Qwen2.5-7B
    small = models.get_config("qwen2", "0.5b")
    total, _ = models.count_parameters(small)
    assert (round(total / 1e9, 2), round((total - small.vocab_size * small.hidden_size) / 1e9, 2)) == (0.49, 0.36)
    tiny = models.get_config("qwen2", "tiny")
    assert sum(p.asnumpy().size for p in models.build_model(tiny).get_parameters()) == models.count_parameters(tiny)[0]
    assert sum(int(np.prod(p.shape)) for p in models.get_spec("qwen2").parameters(full)) == models.count_parameters(full)[0]


def test_an_imported_qwen2_trains_with_its_own_tokenizer_json(tmp_path):
    """A Qwen2 checkpoint with only a tokenizer.json (as Qwen2.5 ships): the imported run's data.tokenizer_model is
    that file, read by the `tokenizers` library (JsonTokenizer), and a re-export writes it back unchanged."""
    from recipes.data import load_tokenizer
    from recipes.data.tokenizer import JsonTokenizer
    from recipes.io import rundir

    src = str(tmp_path / "qwen2")
    os.makedirs(src)
    ids, tok_vocab = qwen_tokenizer(src)
    config = {**QWEN2_CONFIG, "vocab_size": tok_vocab + 6, "bos_token_id": None, "eos_token_id": ids["<|endoftext|>"]}
    write_checkpoint(src, config, qwen2_tensors(config))
    run = str(tmp_path / "run")
    hf.import_to_run(src, run, log=lambda *_: None)
    recipe, _ = rundir.load_run_config(run)
    assert recipe.data.tokenizer_model == os.path.join(os.path.abspath(run), "tokenizer.json")
    tk = load_tokenizer(recipe.data)
    assert isinstance(tk, JsonTokenizer) and (tk.eod_id, tk.pad_id, tk.vocab_size) == (ids["<|endoftext|>"],) * 2 + (tok_vocab,)
    assert tk.decode(tk.encode("The answer is red.")) == "The answer is red."
    out = str(tmp_path / "export")
    hf.export_run(run, out, log=lambda *_: None)
    with open(os.path.join(src, "tokenizer.json"), "rb") as a, open(os.path.join(out, "tokenizer.json"), "rb") as b:
        assert a.read() == b.read()
    from recipes.io.load import load_model
    served = load_model(out)                       # a serving directory with only tokenizer.json: the same tokenizer
    assert isinstance(served.tokenizer, JsonTokenizer) and served.tokenizer.sha256 == tk.sha256
