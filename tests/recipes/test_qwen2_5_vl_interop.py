"""MindVL in the real Qwen2.5-VL layout: a checkpoint the test writes in Qwen2_5_VLForConditionalGeneration's stock
names, config.json keys, tokenizer files (a byte-level BPE tokenizer.json built with the `tokenizers` library,
Qwen's special tokens) and preprocessor_config.json imports strictly, its decoder with M-RoPE matches an
independent numpy forward (rel <= 1e-5), and it exports back byte-identical, fp32 and bf16."""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

import models
from recipes.io import checkpoint as ck
from recipes.io import hf, safetensors_io
from np_reference import qwen2_head, qwen2_hidden, qwen2_vl_positions
from test_interop import assert_reimport_identical, exported_tensors
from test_qwen2_interop import QWEN_SPECIALS, qwen2_tensors, qwen_tokenizer

VISION = {"depth": 2, "hidden_act": "silu", "hidden_size": 32, "intermediate_size": 48, "num_heads": 2, "in_chans": 3,
          "out_hidden_size": 64, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
          "fullatt_block_indexes": [1], "tokens_per_second": 2, "temporal_patch_size": 2}
PREPROCESSOR = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
                "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
                "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"}
CHAT_TEMPLATE = {"chat_template": "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
                                  "{{ message['content'] }}<|im_end|>\n{% endfor %}"}


def vl_tensors(config, seed=1):
    """Random weights in Qwen2.5-VL's stock names: the ViT (`visual.*`, Conv3d patch embedding) + Qwen2."""
    rng = np.random.default_rng(seed)
    v = config["vision_config"]
    c, i, c4 = v["hidden_size"], v["intermediate_size"], v["hidden_size"] * v["spatial_merge_size"] ** 2

    def mat(*shape, std=0.1):
        return rng.normal(0, std, shape).astype(np.float32)

    w = {"visual.patch_embed.proj.weight": mat(c, 3, 2, 14, 14, std=0.02), "visual.merger.ln_q.weight": 1 + mat(c),
         "visual.merger.mlp.0.weight": mat(c4, c4), "visual.merger.mlp.0.bias": mat(c4),
         "visual.merger.mlp.2.weight": mat(v["out_hidden_size"], c4), "visual.merger.mlp.2.bias": mat(v["out_hidden_size"])}
    for n in range(v["depth"]):
        p = f"visual.blocks.{n}."
        w.update({p + "norm1.weight": 1 + mat(c), p + "norm2.weight": 1 + mat(c), p + "attn.qkv.weight": mat(3 * c, c),
                  p + "attn.qkv.bias": mat(3 * c), p + "attn.proj.weight": mat(c, c), p + "attn.proj.bias": mat(c),
                  p + "mlp.gate_proj.weight": mat(i, c), p + "mlp.gate_proj.bias": mat(i),
                  p + "mlp.up_proj.weight": mat(i, c), p + "mlp.up_proj.bias": mat(i),
                  p + "mlp.down_proj.weight": mat(c, i), p + "mlp.down_proj.bias": mat(c)})
    w.update(qwen2_tensors(config, seed))
    return w


def write_stock(directory, tied=False, dtype="fp32"):
    """A Qwen2.5-VL checkpoint directory as the Hub ships one: config.json, model.safetensors, tokenizer.json +
    tokenizer_config.json + chat_template.json, generation_config.json, preprocessor_config.json."""
    os.makedirs(directory)
    ids, tok_vocab = qwen_tokenizer(directory)
    config = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
              "attention_dropout": 0.0, "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
              "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
              "vision_token_id": ids["<|vision_pad|>"], "image_token_id": ids["<|image_pad|>"],
              "video_token_id": ids["<|video_pad|>"], "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02,
              "intermediate_size": 96, "max_position_embeddings": 1024, "max_window_layers": 2, "num_attention_heads": 4,
              "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
              "sliding_window": 1024, "tie_word_embeddings": tied, "torch_dtype": {"fp32": "float32", "bf16": "bfloat16"}[dtype],
              "transformers_version": "4.49.0", "use_cache": True, "use_sliding_window": False, "vision_config": VISION,
              "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}, "vocab_size": tok_vocab + 20}
    tensors = vl_tensors(config)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if dtype == "fp32":
        save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    else:   # stored bf16, read back as the fp32 values those bits mean
        safetensors_io.write(os.path.join(directory, "model.safetensors"), tensors, "bf16", metadata={"format": "pt"})
        reader = safetensors_io.Reader(os.path.join(directory, "model.safetensors"))
        tensors = {n: reader.get(n) for n in tensors}
    files = {"tokenizer_config.json": {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>",
                                       "pad_token": "<|endoftext|>", "model_max_length": 131072},
             "chat_template.json": CHAT_TEMPLATE, "preprocessor_config.json": PREPROCESSOR,
             "generation_config.json": {"bos_token_id": ids["<|endoftext|>"], "pad_token_id": ids["<|endoftext|>"],
                                        "do_sample": True, "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
                                        "temperature": 0.1, "top_p": 0.001, "top_k": 1}}
    for name, body in files.items():
        with open(os.path.join(directory, name), "w") as f:
            json.dump(body, f, indent=2)
    return config, tensors, ids


def run_model_on_an_image(model, cfg, ids_S, grid):
    """Our logits [S, V] and the merged image features [M, H] for one sequence with one image."""
    from mindspore import Tensor

    from mindvl.model import FORWARD_KEYS, VISION_KEYS

    rng = np.random.default_rng(7)
    pixels = rng.normal(0, 1, (int(np.prod(grid)), cfg.vision_for_decoder().patch_dim)).astype(np.float32)
    inputs = models.get_spec("mindvl").sequence_inputs(cfg, ids_S, pixels, [grid])
    batch = dict(zip(FORWARD_KEYS, inputs))
    logits = model(*(Tensor(x) for x in inputs)).asnumpy()[0].astype(np.float64)
    feats = model.image_features(*(Tensor(batch[k]) for k in VISION_KEYS)).asnumpy()[0].astype(np.float64)
    return logits, feats


@pytest.mark.parametrize("tied", [False, True])
def test_stock_qwen2_5_vl_imports_matches_numpy_and_exports_byte_identical(tmp_path, tied):
    src = str(tmp_path / "stock")
    config, tensors, ids = write_stock(src, tied)
    cfg, model = hf.import_hf(src, return_model=True)
    assert models.spec_of(cfg).name == "mindvl" and cfg.text_arch == "qwen2"
    assert (cfg.mrope(), cfg.image_token_id, cfg.text_config().tie_word_embeddings) == ((2, 3, 3), ids["<|image_pad|>"], tied)

    # the decoder with M-RoPE against numpy: text, an image of 2 x 2 merged tokens, text after it
    grid = (1, 4, 4)
    img = ids["<|image_pad|>"]
    seq = [ids["<|im_start|>"], 40, 41, ids["<|vision_start|>"], img, img, img, img, ids["<|vision_end|>"], 77, 5, 63]
    got, feats = run_model_on_an_image(model, cfg, seq, grid)
    emb = tensors["model.embed_tokens.weight"].astype(np.float64)[seq]
    emb[np.array(seq) == img] = feats[:4]
    pos = qwen2_vl_positions(seq, img, [grid])
    assert pos[:, -1].tolist() == [9, 9, 9]        # 3 text + image at 4..5 (2 x 2) + 3 text: resumes at 4 + 2
    want = qwen2_head(tensors, config, qwen2_hidden(tensors, config, emb, pos, config["rope_scaling"]["mrope_section"]))
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    plain = qwen2_head(tensors, config, qwen2_hidden(tensors, config, emb, np.arange(len(seq))))   # 1-D RoPE differs
    assert np.abs(plain - want).max() > 1e-3 * np.abs(want).max()

    run = str(tmp_path / "run")
    hf.import_to_run(src, run, log=lambda *_: None)
    out = str(tmp_path / "export")
    hf.export_run(run, out, log=lambda *_: None)
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f) == config
    back = exported_tensors(out)
    assert sorted(back) == sorted(tensors)
    for name in tensors:
        np.testing.assert_array_equal(back[name], tensors[name], err_msg=name)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.json", "generation_config.json",
                 "preprocessor_config.json"):
        with open(os.path.join(src, name), "rb") as a, open(os.path.join(out, name), "rb") as b:
            assert a.read() == b.read(), name
    assert_reimport_identical(run, out, str(tmp_path / "run2"))   # import -> export -> import: identical bytes


def test_bf16_checkpoint_exports_back_bit_identical_in_bf16(tmp_path):
    src = str(tmp_path / "stock")
    config, tensors, _ = write_stock(src, dtype="bf16")
    run = str(tmp_path / "run")
    hf.import_to_run(src, run, log=lambda *_: None)
    out = str(tmp_path / "export")
    hf.export_run(run, out, dtype="bf16", log=lambda *_: None)
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f) == config
    reader = safetensors_io.Reader(os.path.join(out, "model-00001-of-00001.safetensors"))
    stock = safetensors_io.Reader(os.path.join(src, "model.safetensors"))
    assert sorted(reader.names()) == sorted(tensors)
    for name in tensors:
        assert reader.dtype(name) == stock.dtype(name) == "BF16"
        np.testing.assert_array_equal(reader.get(name), stock.get(name), err_msg=name)


def test_imported_tokenizer_is_the_one_the_data_uses(tmp_path):
    """The imported run's data section names the checkpoint's tokenizer.json; MindVL's data renders with it
    (Qwen's special tokens, the BPE pieces) and an id mismatch with config.json is refused in one line."""
    from mindvl.processor import HFTokenizer, render_conversation

    src = str(tmp_path / "stock")
    config, _, ids = write_stock(src)
    run = str(tmp_path / "run")
    hf.import_to_run(src, run, log=lambda *_: None)
    from recipes.io import rundir
    recipe, cfg = rundir.load_run_config(run)
    assert recipe.data.tokenizer_json == os.path.join(os.path.abspath(run), "tokenizer.json")
    tk = models.get_spec("mindvl").build_dataset(recipe.data, "val").tokenizer
    assert isinstance(tk, HFTokenizer) and tk.eod_id == ids["<|endoftext|>"] and tk.vocab_size == config["vocab_size"] - 20
    text = "What colour is the shape at the top left?"
    assert tk.decode(tk.encode(text)) == text and len(tk.encode(text)) < len(text.encode()) // 2   # merges used
    seq, mask = render_conversation(tk, [("user", "<image>" + text), ("assistant", "red")], [4])
    assert list(seq).count(ids["<|image_pad|>"]) == 4 and seq[0] == ids["<|im_start|>"] and seq[-1] == tk.eod_id
    assert tk.decode(np.asarray(seq)[np.asarray(mask, bool)]).startswith("red<|im_end|>")

    with open(os.path.join(src, "config.json"), "w") as f:
        json.dump({**config, "image_token_id": ids["<|video_pad|>"]}, f)
    with pytest.raises(ValueError, match=r"image_token_id: config\.json says \d+ but tokenizer\.json has <\|image_pad\|>"):
        hf.import_to_run(src, str(tmp_path / "bad"), log=lambda *_: None)


@pytest.mark.parametrize("change, message", [
    ({"rope_scaling": None}, "rope_scaling: None is not M-RoPE"),
    ({"vision_config": {**VISION, "hidden_act": "gelu"}}, "vision_config.hidden_act: 'gelu' is not silu"),
    ({"vision_config": {**VISION, "out_hidden_size": 32}}, "vision_config.out_hidden_size: 32 but the decoder's"),
    ({"vision_config": {**VISION, "depht": 3}}, "vision_config.depht: not a key of this vision tower"),
])
def test_qwen2_5_vl_configs_we_cannot_express_are_refused_in_one_line(tmp_path, change, message):
    src = str(tmp_path / "stock")
    config, _, _ = write_stock(src)
    with open(os.path.join(src, "config.json"), "w") as f:
        json.dump({**config, **change}, f)
    with pytest.raises(ValueError) as err:
        hf.import_hf(src)
    assert str(err.value).startswith(os.path.join(src, "config.json") + ": " + message) and "\n" not in str(err.value)
