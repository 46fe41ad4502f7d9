"""Export round trip (serving layout) and resolution search mechanics on an untrained tiny model."""

import json
import os

import numpy as np
import pytest

import models
from mindvl import convert
from mindvl.config import PANGU_PRESETS, PRESETS
from mindvl.data import SyntheticDataset, encode_example
from mindvl.evaluate import accuracy, at_budget, resolution_search
from mindvl.model import build_model
from mindvl.processor import ByteTokenizer, ImageProcessor
from recipes.io.hf import export_state


@pytest.fixture(scope="module")
def model():
    return build_model(PRESETS["tiny"](), seed=1, attention_impl="reference")


def export(model, processor, directory):
    state = {n: p.asnumpy() for n, p in model.parameters_and_names()}
    return export_state(model.config, state, directory, processor=processor, overwrite=True, log=lambda *_: None)


def load_export(directory):
    """Every tensor of an exported directory, through its safetensors index."""
    from safetensors.numpy import load_file
    with open(os.path.join(directory, "model.safetensors.index.json")) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    return {k: v for shard in shards for k, v in load_file(os.path.join(directory, shard)).items()}


def test_export_uses_serving_layout_and_round_trips(model, tmp_path):
    proc = ImageProcessor(max_pixels=112 * 112)
    export(model, proc, str(tmp_path))
    hf = load_export(tmp_path)
    assert hf["visual.patch_embed.proj.weight"].shape == (32, 3, 2, 14, 14)
    assert "visual.merger.mlp.2.bias" in hf and "visual.blocks.1.attn.qkv.bias" in hf
    assert "model.layers.0.mlp.up_proj.weight" in hf and "model.layers.0.self_attn.k_proj.bias" in hf
    assert "lm_head.weight" not in hf and "model.layers.0.self_attn.o_proj.bias" not in hf  # tiny Qwen2: tied
    cfg = json.load(open(os.path.join(tmp_path, "config.json")))
    assert cfg["model_type"] == "qwen2_5_vl" and cfg["vision_config"]["fullatt_block_indexes"] == [1]
    assert cfg["architectures"] == ["Qwen2_5_VLForConditionalGeneration"] and "text_architectures" not in cfg
    assert sum(cfg["rope_scaling"]["mrope_section"]) == model.text_config.head_dim // 2
    assert ImageProcessor.load(str(tmp_path)).max_pixels == 112 * 112
    ours = {n: p.asnumpy() for n, p in model.parameters_and_names()}
    back = convert.from_hf(hf, model.config)
    assert set(back) == set(ours)
    for k in ours:
        np.testing.assert_array_equal(back[k], ours[k])


def test_resolution_search_records_choice(model, tmp_path):
    tk = ByteTokenizer()
    ds = SyntheticDataset(4, "validation", seed=5, min_side=56, max_side=120)
    examples = [ds[i] for i in range(len(ds))]
    proc = ImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56)
    chosen, scores = resolution_search(model, examples, proc, tk, [28 * 28 * 4, 84 * 84], 640, 192)
    assert sorted(scores) == [3136, 7056]
    rec = chosen.extra["resolution_search"]
    assert rec["chosen_max_pixels"] == chosen.max_pixels == chosen.min_pixels in scores
    assert set(rec["scores"]) == {"3136", "7056"}
    saved = ImageProcessor.load(chosen.save(str(tmp_path)))
    assert saved.extra["resolution_search"]["chosen_max_pixels"] == chosen.max_pixels


def test_at_budget_rescales_every_image_to_the_budget():
    proc = ImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56)
    assert at_budget(proc, 112 * 112).target_size(56, 56) == (112, 112)      # small images upscaled
    assert at_budget(proc, 56 * 56).target_size(224, 224) == (56, 56)        # large ones downscaled
    assert at_budget(proc, 56 * 56).target_size(28, 112) == (28, 112)        # aspect kept
    with pytest.raises(ValueError, match="min_pixels"):
        at_budget(proc, 100)


def test_accuracy_counts_exact_matches(model):
    tk = ByteTokenizer()
    proc = ImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56)
    ds = SyntheticDataset(3, "validation", seed=6, min_side=40, max_side=80)
    samples = [encode_example(ds[i], proc, tk) for i in range(3)]

    class Oracle:                                    # predicts the labels: accuracy must be 1
        def __call__(self, input_ids, *rest):
            out = np.zeros(input_ids.shape + (tk.vocab_size,), np.float32)
            ids = input_ids.asnumpy()
            nxt = np.concatenate([ids[:, 1:], ids[:, :1]], 1)
            np.put_along_axis(out, nxt[..., None], 1.0, -1)
            from mindspore import Tensor
            return Tensor(out)

    res = accuracy(model, samples, tk, 640, 192, forward=Oracle())
    assert res["accuracy"] == 1.0 and res["n"] == 3
    assert accuracy(model, samples, tk, 640, 192)["accuracy"] == 0.0        # untrained tiny model


@pytest.mark.parametrize("text_arch", ["pangu_pro_moe", "pangu_ultra_moe"])
def test_export_round_trip_with_pangu_decoders_in_their_own_layout(tmp_path, text_arch):
    cfg = PANGU_PRESETS["tiny"]()
    cfg.text_arch = text_arch
    model = build_model(cfg, seed=2, attention_impl="reference")
    export(model, ImageProcessor(), str(tmp_path))
    hf = load_export(tmp_path)
    conf = json.load(open(os.path.join(tmp_path, "config.json")))
    assert (conf["architectures"], conf["model_type"]) == (["MindVLPanguForConditionalGeneration"], "mindvl_pangu")
    assert conf["text_architectures"] == [models.get_spec(text_arch).serving.architecture]
    with pytest.raises(ValueError, match="^text_arch: .* has no qwen2_5_vl export"):
        convert.hf_config(cfg)
    with pytest.raises(ValueError, match=r"^--layout: mindvl_pangu has no 'qwen2_5_vl' serving layout; use one of "
                                         r"\['mindvl_pangu'\]"):
        models.get_spec("mindvl_pangu").layout("qwen2_5_vl")
    assert hf["visual.patch_embed.proj.weight"].shape == (32, 3, 2, 14, 14)
    back = convert.from_hf(hf, cfg)
    ours = {n: p.asnumpy() for n, p in model.parameters_and_names()}
    assert set(back) == set(ours)
    for k in ours:
        np.testing.assert_array_equal(back[k], ours[k])


def test_search_cli_errors_are_one_line(capsys, tmp_path):
    """`python -m recipes.evaluate RUN --resolution-search`: bad budgets and a text run are one line each."""
    import dataclasses

    import models
    from recipes.engine.config import dump_yaml, load_recipe
    from recipes.evaluate import main
    from recipes.io import rundir

    assert main([str(tmp_path), "--resolution-search", "--budgets", "3136,lots"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --budgets: '3136,lots' is not a comma-separated list") and err.count("\n") == 1
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run = tmp_path / "pro"
    recipe, cfg = load_recipe(os.path.join(repo, "recipes", "pangu_pro_moe", "pretrain_tiny.yaml"),
                              [f"run.root={tmp_path}", "run.name=pro", "model.vocab_size=112"])
    run.mkdir()
    dump_yaml(recipe, cfg, str(run / "config.yaml"))
    model = models.build_model(dataclasses.replace(cfg, attention_impl="reference"), 0)
    rundir.write_run_checkpoint(str(run), 0, {n: p.asnumpy() for n, p in model.parameters_and_names()}, {}, None)
    assert main([str(run), "--resolution-search"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --resolution-search: {run} is a pangu_pro_moe run") and err.count("\n") == 1
