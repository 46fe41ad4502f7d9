import dataclasses

import pytest

from parallel_strategies.shape import analytic_parameter_count, count_parameters, model_shape, parameter_shapes

from ps_helpers import fixture_config, registry_config


def test_pro_shape_reads_released_field_names(pro_full):
    s = model_shape(pro_full)
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
    assert s.sandwich_norm and s.shared_name == "shared_experts"


def test_pro_parameter_count_matches_published(pro_full):
    total, active = analytic_parameter_count(pro_full)
    assert round(total / 1e9, 2) == 71.99 and round(active / 1e9, 2) == 16.50


def test_ultra_parameter_count_near_published(ultra_full):
    # published 718B total excludes the MTP layer; the serving-layout count gives 719.1B
    no_mtp = dict(ultra_full, num_mtp_layers=0)
    total, _ = analytic_parameter_count(no_mtp)
    assert abs(total / 718e9 - 1) < 0.005


def test_parameter_names_follow_serving_layout(pro_full, ultra_full):
    pro = dict(parameter_shapes(pro_full, "serving"))
    assert pro["model.layers.0.mlp.router_scale"] == (1, 64)
    assert pro["model.layers.47.mlp.experts.63.down_proj.weight"] == (5120, 1344)
    assert pro["model.layers.0.self_attn.o_proj.bias"] == (5120,)
    ultra = dict(parameter_shapes(ultra_full, "serving"))
    assert ultra["model.layers.0.mlp.gate_proj.weight"] == (18432, 7680)
    assert ultra["model.layers.3.self_attn.kv_b_proj.weight"] == (128 * 256, 512)
    assert ultra["model.layers.61.eh_proj.weight"] == (7680, 15360)          # MTP after the last layer
    assert "model.layers.3.mlp.shared_experts.up_proj.weight" in ultra


@pytest.mark.parametrize("arch,stand_in", [("pangu_pro_moe", "pangu_pro_moe_full"),
                                           ("pangu_ultra_moe", "pangu_ultra_moe_full")])
def test_registry_full_preset_matches_published(arch, stand_in):
    cfg = registry_config(arch, "full")
    if cfg is None:
        pytest.skip(f"pangu.registry has no {arch}/full yet (being written)")
    assert model_shape(cfg) == dataclasses.replace(model_shape(fixture_config(stand_in)), arch=model_shape(cfg).arch)
    # pangu's own counter (used for reports) excludes MTP layers, like the published totals
    total, _ = count_parameters(cfg)
    ours, _ = analytic_parameter_count(dataclasses.replace(cfg, **({"num_mtp_layers": 0} if hasattr(cfg, "num_mtp_layers") else {})))
    assert abs(total / ours - 1) < 1e-4


@pytest.mark.parametrize("arch", ["pangu_pro_moe", "pangu_ultra_moe"])
def test_tiny_parameter_shapes_equal_instantiated_model(arch):
    cfg = registry_config(arch, "tiny")
    if cfg is None:
        pytest.skip(f"pangu.registry has no {arch}/tiny yet")
    from pangu import registry
    model = registry.build_model(cfg)
    real = {p.name: tuple(p.shape) for p in model.get_parameters()}
    assert real == dict(parameter_shapes(cfg))
