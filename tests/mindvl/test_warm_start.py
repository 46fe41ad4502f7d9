"""Warm-up from a pretrained LLM: the text stage tokenises with MindVL's own ids (the shipped byte_tokenizer.json
read by the `tokenizers` library), a MindVL run `init_from` a text decoder checkpoint loads it as language_model.*
with a fresh vision tower (ModelSpec.init_from_state), through the real Trainer; misfits are one-line errors."""
import json
import os

import numpy as np
import pytest

import models
from mindvl import convert
from mindvl.model import init_from_state
from mindvl.processor import ByteTokenizer
from recipes.data.tokenizer import JsonTokenizer, open_tokenizer
from recipes.engine.config import load_recipe

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BYTE_JSON = os.path.join(REPO, "recipes", "mindvl", "byte_tokenizer.json")


def test_shipped_byte_tokenizer_json_is_the_byte_tokenizer():
    with open(BYTE_JSON, encoding="utf-8") as f:
        assert json.load(f) == convert.tokenizer_json(ByteTokenizer())
    tk, byte = open_tokenizer(BYTE_JSON), ByteTokenizer()
    assert isinstance(tk, JsonTokenizer)
    assert (tk.vocab_size, tk.eod_id, tk.pad_id, tk.bos_id, tk.user_id) == (byte.vocab_size, byte.eod_id, byte.pad_id,
                                                                            -1, None)
    from recipes.data import DataConfig
    from recipes.data.dataset import corpus_texts

    texts = corpus_texts(DataConfig(num_documents=40, num_val_documents=4), "train")
    texts.append("héllo ✓\tend")
    assert tk.encode_batch(texts) == [byte.encode(t) for t in texts]
    assert [tk.decode(tk.encode(t)) for t in texts] == texts


def _text_state(cfg, seed):
    return {n: np.array(p.asnumpy()) for n, p in models.build_model(cfg, seed).parameters_and_names()}


def test_init_from_state_maps_a_text_decoder_and_keeps_the_vision_tower_fresh():
    _, vl_cfg = load_recipe(os.path.join(REPO, "recipes/mindvl/warmup_tiny.yaml"), ["model.vocab_size=263"])
    model = models.build_model(vl_cfg, seed=0)
    params = {p.name: p for p in model.get_parameters()}
    fresh = {n: np.array(p.asnumpy()) for n, p in params.items()}
    text_cfg = models.get_config("qwen2", "tiny", **{**vl_cfg.text_overrides, "vocab_size": 200})
    text = _text_state(text_cfg, 5)
    logs = []
    out = init_from_state(vl_cfg, text, params, logs.append)
    assert sorted(out) == sorted(params)
    for name, value in text.items():
        got = out["language_model." + name]
        if name == "model.embed_tokens.weight":    # the text vocabulary's rows, then this tokenizer's new ids fresh
            np.testing.assert_array_equal(got[:200], value)
            np.testing.assert_array_equal(got[200:], fresh["language_model." + name][200:])
        else:
            np.testing.assert_array_equal(got, value)
    for name in params:
        if name.startswith("visual."):
            np.testing.assert_array_equal(out[name], fresh[name])
    assert logs == ["init_from: text decoder -> language_model.* (38 tensors); visual.* fresh (30 tensors); "
                    "63 new vocabulary rows"]
    assert init_from_state(vl_cfg, fresh, params, logs.append) is fresh          # a MindVL checkpoint: as it is

    pro = _text_state(models.get_config("pangu_pro_moe", "tiny", vocab_size=263, hidden_size=128), 0)
    with pytest.raises(ValueError) as err:
        init_from_state(vl_cfg, pro, params)
    assert str(err.value).startswith("init_from: lm_head.weight is not a parameter of this "
                                     "MindVL's qwen2 decoder; warm-start from a text run of the same architecture")


@pytest.mark.integration
def test_warmup_run_starts_from_a_text_run_through_the_trainer(tmp_path):
    """A 2-step text run of the decoder, then a 2-step warm-up `init_from` it: the frozen decoder is the text
    run's final weights bit for bit, the merger trains, the ViT keeps its fresh init."""
    from recipes.engine.trainer import Trainer
    from recipes.io import checkpoint as ck

    small = [f"run.root={tmp_path}", "train.steps=2", "train.micro_batch_size=2", "schedule.warmup_steps=0"]
    recipe, cfg = load_recipe(os.path.join(REPO, "recipes/mindvl/text_pretrain_tiny.yaml"),
                              small + ["data.num_documents=40", "data.num_val_documents=4", "data.seq_length=128",
                                       "checkpoint.every=2", f"data.tokenizer_model={BYTE_JSON}"])
    Trainer(recipe, cfg, log=lambda *_: None).train()
    text_run = os.path.join(str(tmp_path), recipe.run.name)
    text = ck.load_tensors(ck.latest_valid(os.path.join(text_run, "checkpoints")).path, ck.MODEL_FILE)

    recipe, cfg = load_recipe(os.path.join(REPO, "recipes/mindvl/warmup_tiny.yaml"),
                              small + [f"init_from={text_run}", "data.num_samples=12", "data.num_val_samples=4",
                                       "data.seq_length=256", "data.max_patches=128", "train.eval_batches=1"])
    logs = []
    trainer = Trainer(recipe, cfg, log=logs.append)
    assert any(line.startswith("init_from: text decoder -> language_model.* (38 tensors)") for line in logs)
    vit_before = {p.name: p.asnumpy().copy() for p in trainer.model.get_parameters() if p.name.startswith("visual.")}
    merger_before = {n: v for n, v in vit_before.items() if n.startswith("visual.merger.")}
    trainer.train()
    after = {p.name: p.asnumpy() for p in trainer.model.get_parameters()}
    for name, value in text.items():
        np.testing.assert_array_equal(after["language_model." + name], value, err_msg=name)
    for name, value in vit_before.items():
        if name not in merger_before:
            np.testing.assert_array_equal(after[name], value, err_msg=name)
    assert all(not np.array_equal(after[n], v) for n, v in merger_before.items())
