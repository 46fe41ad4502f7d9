"""Exports are byte-stable: a freshly initialised tiny Pro, Ultra and MindVL run, written as a run directory
and exported with `export_run`, gives exactly these files (sha256). Recorded with the exporter before the
ModelSpec refactor; a change to any byte of any file is either a bug or a deliberate layout change that
updates this table in the same commit, saying why.

Changes: (1) Ultra config.json gained the keys every serving loader reads (both spellings of the MLA and
MoE sizes, router_enable_expert_bias, rope_interleave, num_key_value_heads, hidden_act, DeepSeek's routing
keys); (2) the MindVL tiny recipes' decoder went from 8 heads of 32 to 4 heads of 32 in hidden 128 (head_dim =
hidden / heads, which the layout's loaders assume), so its weights and configs changed; (3) issue 16: `mindvl`
is MindVL in the real Qwen2.5-VL layout, with the dense Qwen2 decoder (new weights, index and the stock
config.json keys); the Pangu-decoder MindVL is `mindvl_pangu` (recipes/mindvl/pangu_multitask_tiny.yaml): its
weights and index are byte-for-byte the former `mindvl` ones (f6c0a93b.., ba0ccf50..), only its config.json
changed (architectures MindVLPanguForConditionalGeneration, model_type mindvl_pangu); `qwen2` added (text)."""
import dataclasses
import hashlib
import os

import pytest

import models
from recipes.data import load_tokenizer
from recipes.engine.config import dump_yaml, load_recipe
from recipes.io import rundir
from recipes.io.hf import export_run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNS = {  # arch -> (recipe, overrides): Ultra with the aux-loss-free bias (its load buffers are not exported)
    "pangu_pro_moe": ("recipes/pangu_pro_moe/pretrain_tiny.yaml", []),
    "pangu_ultra_moe": ("recipes/pangu_ultra_moe/pretrain_tiny.yaml", ["model.router_bias_update_rate=0.001"]),
    "mindvl": ("recipes/mindvl/sft_tiny.yaml", ["init_from=null"]),
    "mindvl_pangu": ("recipes/mindvl/pangu_multitask_tiny.yaml", []),
    "qwen2": ("recipes/qwen2/pretrain_tiny.yaml", []),
}
TEXT_TOKENIZER = {
    "special_tokens_map.json": "fc343a35a171c9a763b4d07fcf79d9c99cd9af6786e69f765834acbd86458add",
    "tokenizer.model": "a46f5a91ee67b16a3349cf67821807ae219a46ec1add713d8e4bf004b4064c5e",
    "generation_config.json": "9f30619cfd0661df67c4f2369d0d411fbe5ed24f769fd6198ff05cd39885e8fc",
}
MINDVL_ASSETS = {
    "preprocessor_config.json": "96f7a202f0ecddbc7741709afe816053c555333b9ae99bb2ba09580607307ad2",
    "special_tokens_map.json": "542a9529bd92114b36eec8ad5bac8030a1a60d00ead08c440598481dc7134444",
    "tokenizer.json": "29bc89c9cd68cedd4cd5c75e8d2a92b942ba7461a34b0e22437c17ab1f90bbde",
    "tokenizer_config.json": "ae1f7e1e10c0c7003aa0eb203012669a384b36944bd3ff582730d1fd1f3393e7",
}
GOLDEN = {
    "pangu_pro_moe": {
        **TEXT_TOKENIZER,
        "config.json": "e56cce6674b1a1e05d7ebc691ff9c214fa11287b726d8403abf9dd356d269a1f",
        "model-00001-of-00001.safetensors": "c0d2fe151879568327a7169a087def008e9d3a475e10f108099b27c635bf6b79",
        "model.safetensors.index.json": "ad83363d51da7e0388744c95e20b02d173e600ea35b55668c537d38dfe44ed03",
        "tokenizer_config.json": "9101f7d824bec7b587a06e5d44cda8646095636f7ddefb2c60554a35f4eda688",
    },
    "pangu_ultra_moe": {
        **TEXT_TOKENIZER,
        "config.json": "4ca02f32d526b3ea6e6e55ff4182d47dd037d4c60dd9db60cb3106ac025610cd",
        "model-00001-of-00001.safetensors": "7362707397344848680c662d0c7c9cd927f419c6cb82ec5d54c14bdf5a8797c1",
        "model.safetensors.index.json": "be4cb6afcd4bdc021aa15172fb6fc9ff30d5c6c5b26616812ceeaa77ed5bd973",
        "tokenizer_config.json": "4d1fb3b322545ab2d9eed0a4c7eea4e8192eb7d17577796d7bad3897fd3ab368",
    },
    "mindvl": {
        "config.json": "215de71b109b060ee264ff26f7ced6d81ffc191bc62404a67cce5e6872cec46d",
        "generation_config.json": "508afd55c21cdc09e69bb3824616a9251c019c2a2c7e713b5dcac8c5bf745fb5",
        "model-00001-of-00001.safetensors": "58b36cc10039cd5af86e2d4a26adf45a8dd14df99cd284f6d281db07268bff0f",
        "model.safetensors.index.json": "b95a175a0c77724b9dcebbb4eae8d353c2abd268ddefff890820951a04b3810c",
        **MINDVL_ASSETS,
    },
    "mindvl_pangu": {
        "config.json": "e29b8e5fe8e4d0a8ac31de36f4748ec628664b3b0432ed18455ad4d682801dca",
        "generation_config.json": "508afd55c21cdc09e69bb3824616a9251c019c2a2c7e713b5dcac8c5bf745fb5",
        "model-00001-of-00001.safetensors": "f6c0a93b39d3a8b15b5ef10833ee98bef5dac3d4c085c36a203bc44f27cdac04",
        "model.safetensors.index.json": "ba0ccf501a7be66a4ca922c98efd99938e5e875e13b223d23fbf2edeca7d27ae",
        **MINDVL_ASSETS,
    },
    "qwen2": {
        **TEXT_TOKENIZER,
        "config.json": "65d40228f2d3f52030e69df03f77cb61e934f087710e0d7233aa8718456f7e3f",
        "model-00001-of-00001.safetensors": "a429ff5526639880eea6d483378f4ec6d8df6c6f93b839cb6ea2c7ffeb61d11c",
        "model.safetensors.index.json": "72b785efd2236b310399b119caae77db3ef7b5722188b415e86343772109542c",
        "tokenizer_config.json": "9101f7d824bec7b587a06e5d44cda8646095636f7ddefb2c60554a35f4eda688",
    },
}


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.parametrize("arch", sorted(RUNS))
def test_export_of_a_tiny_run_is_byte_identical(arch, tmp_path):
    recipe_path, sets = RUNS[arch]
    recipe, cfg = load_recipe(os.path.join(REPO, recipe_path), sets + [f"run.root={tmp_path}", "run.name=r"])
    spec = models.get_spec(arch)
    run = str(tmp_path / "r")
    os.makedirs(run)
    tokenizer = (spec.serving.run_assets(recipe.data, run)["tokenizer"] if spec.serving.run_assets
                 else load_tokenizer(recipe.data))
    cfg = dataclasses.replace(cfg, vocab_size=tokenizer.vocab_size)    # as the trainer fits it
    model = spec.build(cfg, seed=recipe.train.seed)
    dump_yaml(recipe, cfg, os.path.join(run, "config.yaml"))
    rundir.write_run_checkpoint(run, 0, {n: p.asnumpy() for n, p in model.parameters_and_names()}, {}, None)
    out = str(tmp_path / "export")
    export_run(run, out, log=lambda *_: None)
    assert {f: _sha256(os.path.join(out, f)) for f in sorted(os.listdir(out))} == GOLDEN[arch]
