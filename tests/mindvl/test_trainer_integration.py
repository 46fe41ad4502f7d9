"""MindVL through the real recipe system and Trainer: `model.arch: mindvl` resolves with nested
`vision_config` overrides and a MindVL `data:` section, bad keys give one-line errors, and a warm-up
run leaves every frozen parameter bit-identical while the merger trains and accuracy is logged."""

import json
import os

import numpy as np
import pytest

from recipes.engine.config import ConfigError, load_recipe

RECIPE = "recipes/mindvl/warmup_tiny.yaml"
SMALL = ["data.num_samples=12", "data.num_val_samples=4", "data.seq_length=256", "data.max_patches=128",
         "train.micro_batch_size=2", "train.eval_batches=1", "schedule.warmup_steps=0"]


def test_recipe_resolves_nested_vision_config_and_data_section():
    from mindvl.dataset import MindVLDataConfig

    recipe, cfg = load_recipe(RECIPE, ["model.vision_config.depth=3", "model.vision_config.fullatt_block_indexes=[0,2]"])
    assert type(recipe.data) is MindVLDataConfig and recipe.data.template == "plain"
    assert cfg.vision_config.depth == 3 and cfg.vision_config.fullatt_block_indexes == (0, 2)
    assert cfg.vision_config.hidden_size == 64          # the recipe's other vision keys are kept
    text_recipe, _ = load_recipe("recipes/pangu_pro_moe/pretrain_tiny.yaml")
    assert type(text_recipe.data).__name__ == "DataConfig"  # text archs keep the text pipeline


@pytest.mark.parametrize("override, message", [
    ("model.vision_config.depht=3", "model.vision_config.depht: unknown key; did you mean model.vision_config.depth?"),
    ("model.vision_config.num_heads=3", "model.vision_config.hidden_size: 64 not divisible by num_heads 3"),
    ("model.text_overrides={hiden_size: 8}", "model.text_overrides.hiden_size: unknown config field"),
    ("data.max_patch=8", "data.max_patch: unknown key; did you mean data.max_patches"),
])
def test_bad_mindvl_keys_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as err:
        load_recipe(RECIPE, [override])
    text = str(err.value)
    assert text.startswith(message) and "\n" not in text


def test_warmup_run_keeps_frozen_parameters_bit_identical(tmp_path):
    from recipes.engine.trainer import Trainer

    recipe, cfg = load_recipe(RECIPE, SMALL + ["train.steps=2", f"run.root={tmp_path}", "run.name=warm"])
    trainer = Trainer(recipe, cfg, log=lambda *_: None)
    assert trainer.batch_keys == type(trainer.model).BATCH_KEYS and len(trainer.batch_keys) == 14
    trained = {p.name for p in trainer.params}
    assert trained and all(n.startswith("visual.merger.") for n in trained)
    before = {p.name: p.asnumpy().copy() for p in trainer.model.get_parameters()}
    result = trainer.train()
    assert result.steps_done == 2 and np.isfinite(result.final_loss)
    changed = set()
    for p in trainer.model.get_parameters():
        if not np.array_equal(before[p.name], p.asnumpy()):
            changed.add(p.name)
    assert changed == trained                              # frozen: bit-identical; merger: all updated
    with open(os.path.join(trainer.run_dir, "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f][-1]
    assert 0.0 <= last["val_accuracy"] <= 1.0 and "val_accuracy_caption" in last
