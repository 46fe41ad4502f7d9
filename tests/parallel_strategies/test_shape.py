"""The planner reads every model fact from the architecture's spec: shapes, counts, parameters, axes."""
import dataclasses
import math

import numpy as np
import pytest

import models
from parallel_strategies.shape import count_parameters, model_shape, parameter_shapes, parameters
from pangu.common.layers import __doc__ as LAYERS_DOC

from ps_helpers import fixture_config, registry_config


def test_pro_shape_reads_released_field_names(pro_full):
    s = model_shape(pro_full)     # a released config.json, read by the Pro spec's own importer
    assert (s.arch, s.num_layers, s.hidden_size, s.num_heads, s.num_kv_heads, s.head_dim) == \
        ("pangu_pro_moe", 48, 5120, 40, 8, 128)
    assert (s.num_experts, s.num_expert_groups, s.top_k, s.moe_ffn, s.shared_ffn) == (64, 8, 8, 1344, 5376)
    assert s.qkv_bias and s.o_bias and s.router_scale and s.num_dense_layers == 0


def test_ultra_shape_reads_mla_fields(ultra_full):
    s = model_shape(ultra_full)
    assert (s.attention, s.q_lora_dim, s.kv_lora_dim, s.qk_nope_dim, s.qk_rope_dim, s.v_head_dim) == \
        ("mla", 1536, 512, 128, 64, 128)
    assert (s.num_experts, s.top_k, s.num_dense_layers, s.dense_ffn, s.num_mtp_layers, s.shared_ffn) == \
        (256, 8, 3, 18432, 1, 2048)
    assert s.sandwich_norm


def test_pro_parameter_count_matches_published(pro_full):
    total, active = count_parameters(pro_full)
    assert round(total / 1e9, 2) == 71.99 and round(active / 1e9, 2) == 16.50


def test_ultra_parameter_count_near_published(ultra_full):
    # published 718B total excludes the MTP layer (the spec's convention); the network has 719.1B
    total, _ = count_parameters(ultra_full)
    assert abs(total / 718e9 - 1) < 0.005


def test_parameters_are_the_real_models_with_serving_names(pro_full, ultra_full):
    pro = dict(parameter_shapes(pro_full))
    assert pro["model.layers.0.mlp.gate.router_scale"] == (1, 64)
    assert pro["model.layers.47.mlp.experts.down_proj"] == (64, 5120, 1344)      # stacked [E, out, in]
    assert pro["model.layers.0.self_attn.o_proj.bias"] == (5120,)
    ultra = dict(parameter_shapes(ultra_full))
    assert ultra["model.layers.0.mlp.gate_proj.weight"] == (18432, 7680)
    assert ultra["model.layers.3.self_attn.kv_b_proj.weight"] == (128 * 256, 512)
    assert ultra["model.layers.61.eh_proj.weight"] == (7680, 15360)          # MTP after the last layer
    assert "model.layers.3.mlp.shared_experts.up_proj.weight" in ultra
    # the serving layout of the same parameters (per-expert tensors), without allocating them
    cfg = registry_config("pangu_pro_moe", "full")
    zero = {p.name: np.broadcast_to(np.float32(0), p.shape) for p in parameters(cfg)}
    hf = models.get_spec("pangu_pro_moe").serving.to_hf(zero, cfg)
    assert hf["model.layers.47.mlp.experts.63.down_proj.weight"].shape == (5120, 1344)
    assert hf["model.layers.0.mlp.router_scale"].shape == (1, 64)


@pytest.mark.parametrize("arch,fixture", [("pangu_pro_moe", "pangu_pro_moe_full"),
                                          ("pangu_ultra_moe", "pangu_ultra_moe_full")])
def test_full_preset_matches_released_config_and_counts(arch, fixture):
    cfg = registry_config(arch, "full")
    assert model_shape(cfg) == model_shape(fixture_config(fixture))
    # the counter (published convention: MTP excluded) = the trained parameters of the real model
    no_mtp = dataclasses.replace(cfg, **({"num_mtp_layers": 0} if hasattr(cfg, "num_mtp_layers") else {}))
    trained = sum(math.prod(p.shape) for p in parameters(no_mtp) if p.trainable)
    assert count_parameters(cfg)[0] == trained


def test_mindvl_full_preset_is_qwen2_5_vl_7b():
    """`mindvl` at the full preset is the released Qwen2.5-VL-7B (8.29B parameters), read through its importer."""
    cfg = registry_config("mindvl", "full")
    released = models.get_spec("mindvl").serving.config_from_hf(fixture_config("mindvl_qwen2_5_vl_7b_layout"))
    assert model_shape(cfg) == model_shape(released) and cfg.mrope() == released.mrope() == (16, 24, 24)
    assert cfg.text_config() == released.text_config()
    assert round(count_parameters(cfg)[0] / 1e9, 2) == 8.29
    assert sum(math.prod(p.shape) for p in parameters(cfg)) == count_parameters(cfg)[0]


ARCHS = ["pangu_pro_moe", "pangu_ultra_moe", "qwen2", "mindvl", "mindvl_pangu"]


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_parameter_shapes_equal_instantiated_model(arch):
    cfg = registry_config(arch, "tiny")
    model = models.build_model(cfg)
    real = {n: tuple(p.shape) for n, p in model.parameters_and_names()}
    assert real == dict(parameter_shapes(cfg))


@pytest.mark.parametrize("arch", ARCHS)
def test_every_parameter_declares_logical_axes_from_the_vocabulary(arch):
    """One declaration: axes come from where each parameter is created, named from one vocabulary."""
    vocabulary = {line.split()[0] for line in LAYERS_DOC.splitlines()[1:]
                  if line.startswith("    ") and line.split()[0].replace("_", "").isalpha()}
    vocabulary |= {"vit_embed", "vit_heads", "vit_mlp", "vit_merge", "vit_merge_in", "patch"}
    for p in parameters(registry_config(arch, "full")):
        assert len(p.axes) == len(p.shape), p
        assert all(a is None or a in vocabulary for a in p.axes), p
