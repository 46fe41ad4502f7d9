"""`make bench`'s analytic FLOP count (no timing here: speed targets live in the benchmark only)."""

import models
from recipes.tools.bench import model_flops


def test_pro_bench_flops_by_hand():
    cfg = models.get_config("pangu_pro_moe", "bench")
    b, s, h = 4, 512, 512
    attn_proj = 512 * 512 + 2 * 512 * 128 + 512 * 512          # q, k, v (2 kv heads x 64), o
    mlp = 16 * 512 + 4 * 3 * 512 * 256 + 3 * 512 * 512          # router, 4 routed experts, shared
    layers = 3 * 2 * b * s * 4 * (attn_proj + mlp)
    head = 3 * 2 * b * s * 8192 * h
    attention = 3 * 4 * 2 * 8 * (b * s * (s + 1) / 2) * 128   # causal half, QK^T and PV
    flops = model_flops(cfg, b, s)
    assert flops["layers_matmul"] == layers and flops["lm_head"] == head
    assert flops["attention"] == attention
    assert flops["total"] == layers + head + attention


def test_ultra_bench_counts_dense_layer_and_mtp():
    cfg = models.get_config("pangu_ultra_moe", "bench")
    flops = model_flops(cfg, 4, 512)
    # MTP reuses the lm_head: two head passes per step
    assert flops["lm_head"] == 3 * 2 * 4 * 512 * cfg.vocab_size * cfg.hidden_size * 2
    without_mtp = model_flops(models.get_config("pangu_ultra_moe", "bench", num_mtp_layers=0), 4, 512)
    assert without_mtp["total"] < flops["total"]


def test_mindvl_bench_flops_by_hand():
    """Decoder as the Pro formula + the ViT on the real patches only (padding slots not counted)."""
    import numpy as np

    from recipes.tools.bench import vision_step_stats

    cfg = models.get_config("mindvl", "bench")
    v = cfg.vision_config
    c, i, h = v.hidden_size, v.intermediate_size, cfg.text_config().hidden_size
    # one row: image 1 = 8 patches in windows 1 (4) and 2 (4); image 2 = 4 patches in window 3; 4 padding
    seg = np.array([[1] * 8 + [2] * 4 + [0] * 4], np.int32)
    win = np.array([[1] * 4 + [2] * 4 + [3] * 4 + [0] * 4], np.int32)
    stats = vision_step_stats([{"vit_segment_ids": seg, "vit_window_ids": win}])
    assert stats == {"patches": 12.0, "window_pairs": 48.0, "image_pairs": 80.0}
    flops = model_flops(cfg, 4, 512, stats)
    per_patch = 1176 * c + v.depth * (4 * c * c + 3 * c * i)
    merger = (4 * c) ** 2 + 4 * c * h
    assert flops["vision_matmul"] == 3 * 2 * (12 * per_patch + 3 * merger)
    full = len(v.fullatt_block_indexes)
    assert flops["vision_attention"] == 3 * 4 * c * ((v.depth - full) * 48 + full * 80)
    text = model_flops(cfg.text_config(), 4, 512)
    assert flops["total"] == text["total"] + flops["vision_matmul"] + flops["vision_attention"]


def test_bench_ab_variant_spec():
    import pytest

    from recipes.tools.bench_ab import parse_variant

    assert parse_variant("ref|PANGU_OPS_THREADS=2,X=a=b|optimizer.impl=reference train.seed=3") == {
        "name": "ref", "env": {"PANGU_OPS_THREADS": "2", "X": "a=b"},
        "overrides": ["optimizer.impl=reference", "train.seed=3"]}
    assert parse_variant("new||") == {"name": "new", "env": {}, "overrides": []}
    with pytest.raises(ValueError, match="use NAME\\|ENV\\|OVERRIDES"):
        parse_variant("no-bars")
    with pytest.raises(ValueError, match="not VAR=VALUE"):
        parse_variant("x|THREADS|")
