"""`make bench`'s analytic FLOP count (no timing here: speed targets live in the benchmark only)."""

from pangu import registry
from recipes.bench import model_flops


def test_pro_bench_flops_by_hand():
    cfg = registry.get_config("pangu_pro_moe", "bench")
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
    cfg = registry.get_config("pangu_ultra_moe", "bench")
    flops = model_flops(cfg, 4, 512)
    # MTP reuses the lm_head: two head passes per step
    assert flops["lm_head"] == 3 * 2 * 4 * 512 * cfg.vocab_size * cfg.hidden_size * 2
    without_mtp = model_flops(registry.get_config("pangu_ultra_moe", "bench", num_mtp_layers=0), 4, 512)
    assert without_mtp["total"] < flops["total"]
