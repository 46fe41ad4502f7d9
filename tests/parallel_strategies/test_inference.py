"""Inference cost model: each mechanism on a hand-computable case, and the docs/serving.md hand calculation."""
import dataclasses
import json
import os

import pytest

from parallel_strategies import inference as inf
from parallel_strategies.shape import ModelShape, model_shape
from parallel_strategies.strategy import Hardware, load_hardware

from ps_helpers import fixture_config

DEEPSEEK = os.path.join(os.path.dirname(__file__), "..", "..", "parallel_strategies", "models",
                        "deepseek_r1_config.json")

# a dense toy decoder and a flat hardware profile: every number below is arithmetic on these
TOY = ModelShape(arch="toy", vocab_size=1000, hidden_size=1024, num_layers=2, num_heads=8, num_kv_heads=8,
                 head_dim=128, v_head_dim=128, dense_ffn=4096, num_dense_layers=2)


def _hw(**kw):
    base = dict(name="flat", peak_tflops=100.0, hbm_gb=64, hbm_bandwidth_gbs=1000.0, devices_per_node=8,
                intra_node_bandwidth_gbs=100.0, inter_node_bandwidth_gbs=10.0, supernode_devices=8,
                supernode_bandwidth_gbs=100.0, intra_node_latency_us=0.0, inter_node_latency_us=0.0,
                matmul_efficiency=1.0, bandwidth_efficiency=1.0, reserved_gb=0.0, peak_int8_tops=200.0)
    base.update(kw)
    return Hardware(**base)


def _toy_weight_bytes(wb=2):
    H, F, V = 1024, 4096, 1000
    attn = 4 * H * H                     # q, k, v, o with 8 heads x 128 = H
    return 2 * (attn + 3 * H * F) * wb + V * H * 2   # layers + lm_head (16-bit)


def test_decode_step_is_bound_by_hbm_bandwidth():
    hw = _hw(peak_tflops=1e6, peak_int8_tops=2e6)        # compute is free: only bytes count
    st = inf.decode_step(TOY, hw, inf.Instance(1), inf.Precision(), batch=1, context=100)
    H = 1024
    kv_per_token_layer = 2 * 8 * 128 * 2
    hand = (_toy_weight_bytes() + 2 * (2 * H * 2)          # weights + activations in/out of the projections
            + 2 * (100 + 1) * kv_per_token_layer           # KV read of 100 cached tokens + write of 1, 2 layers
            + 1000 * 4) / 1e12                             # fp32 logits
    assert st.seconds == pytest.approx(hand, rel=1e-12)
    assert st.bound == "memory" and st.memory_bound_s == pytest.approx(st.seconds)
    faster = inf.decode_step(TOY, _hw(peak_tflops=1e6, peak_int8_tops=2e6, hbm_bandwidth_gbs=2000.0),
                             inf.Instance(1), inf.Precision(), batch=1, context=100)
    assert faster.seconds == pytest.approx(st.seconds / 2, rel=1e-12)
    more_flops = inf.decode_step(TOY, _hw(peak_tflops=2e6, peak_int8_tops=4e6), inf.Instance(1), inf.Precision(),
                                 batch=1, context=100)
    assert more_flops.seconds == pytest.approx(st.seconds, rel=1e-12)


def test_int8_weights_halve_the_bytes_of_a_weight_bound_step():
    hw = _hw(peak_tflops=1e6, peak_int8_tops=2e6)
    b16 = inf.weight_bytes(TOY, inf.Instance(1), inf.Precision("bf16"))
    b8 = inf.weight_bytes(TOY, inf.Instance(1), inf.Precision("int8"))
    assert b8["attention"] == b16["attention"] / 2 and b8["dense_ffn"] == b16["dense_ffn"] / 2
    assert b8["embedding_head"] == b16["embedding_head"]          # embedding / lm_head stay 16-bit
    s16 = inf.decode_step(TOY, hw, inf.Instance(1), inf.Precision("bf16"), 1, 1)
    s8 = inf.decode_step(TOY, hw, inf.Instance(1), inf.Precision("int8"), 1, 1)
    assert s16.breakdown["dense_ffn"] == pytest.approx(2 * s8.breakdown["dense_ffn"], rel=1e-6)


def test_prefill_is_bound_by_compute():
    hw = _hw(hbm_bandwidth_gbs=1e9)                       # bytes are free: only FLOPs count
    S = 4096
    st = inf.prefill_batch(TOY, hw, inf.Instance(1), inf.Precision(), seqs=2, prompt=S)
    H, F, N, hd = 1024, 4096, 8, 128
    proj = 2 * 2 * (2 * S) * (4 * H * H + 3 * H * F)      # 2 layers x 2 FLOPs x 2 prompts of S tokens
    core = 2 * 2 * (2 * S * (S + 1) / 2) * N * (hd + hd)  # causal: token i attends i keys, 2 prompts, 2 layers
    head = 2 * 2 * H * 1000                                # logits of the 2 last tokens
    assert st.seconds == pytest.approx((proj + core + head) / 100e12, rel=1e-9)
    assert st.bound == "compute"
    twice = inf.prefill_batch(TOY, _hw(hbm_bandwidth_gbs=1e9, peak_tflops=200.0), inf.Instance(1), inf.Precision(),
                              seqs=2, prompt=S)
    assert twice.seconds == pytest.approx(st.seconds / 2, rel=1e-9)
    cached = inf.prefill_batch(TOY, hw, inf.Instance(1), inf.Precision(), seqs=2, prompt=S, cached=S // 2)
    assert cached.seconds < 0.75 * st.seconds             # half the prompt from the prefix cache


def test_mla_caches_the_latent_gqa_the_full_kv():
    ds = model_shape(json.load(open(DEEPSEEK)))
    pro = model_shape(fixture_config("pangu_pro_moe_full"))
    assert inf.kv_bytes_per_token(ds, inf.Precision()) == (512 + 64) * 2 * 61
    assert inf.kv_bytes_per_token(pro, inf.Precision()) == 2 * 8 * 128 * 2 * 48
    # TP splits GQA's KV heads but not MLA's latent (every TP rank needs all of it)
    assert inf.kv_values_per_token_layer(pro, 4) == inf.kv_values_per_token_layer(pro, 1) / 4
    assert inf.kv_values_per_token_layer(ds, 4) == inf.kv_values_per_token_layer(ds, 1)
    assert inf.kv_bytes_per_request(ds, inf.Precision(), 4096) == pytest.approx(4096 * 576 * 2 * 61)


def test_microbatch_overlap_hides_communication_but_rereads_weights():
    ds = model_shape(json.load(open(DEEPSEEK)))
    hw = load_hardware("ascend_910c_cm384")
    p8 = inf.Precision("int8")
    one = inf.prefill_batch(ds, hw, inf.Instance(32), p8, seqs=2, prompt=4096)
    two = inf.prefill_batch(ds, hw, inf.Instance(32), p8, seqs=2, prompt=4096, microbatches=2)
    assert one.comm_s > 0.3 * one.seconds                   # dispatch/combine of a 16K-token prefill
    assert two.seconds < one.seconds - 0.9 * min(one.comm_s, one.compute_s)
    # a weight-bound decode with no communication only pays for reading the weights twice
    toy1 = inf.decode_step(TOY, _hw(peak_tflops=1e6, peak_int8_tops=2e6), inf.Instance(1), inf.Precision(), 8, 10)
    toy2 = inf.decode_step(TOY, _hw(peak_tflops=1e6, peak_int8_tops=2e6), inf.Instance(1), inf.Precision(), 8, 10,
                           microbatches=2)
    assert toy2.seconds > 1.5 * toy1.seconds and toy2.comm_s == 0 and toy2.overlap_saved_s == 0


def test_ep_dispatch_uses_measured_ub_bandwidth_inside_the_supernode_and_roce_outside():
    pro = model_shape(fixture_config("pangu_pro_moe_full"))
    p8 = inf.Precision("int8")
    cm = load_hardware("ascend_910c_cm384")
    st = inf.decode_step(pro, cm, inf.Instance(16), p8, batch=10, context=1)
    T, K, H = 10, 8, 5120
    per_layer = T * K * H * 1 * (1 - 1 / 16) / 54e9 + 5e-6            # INT8 dispatch at the measured 54 GB/s
    assert st.breakdown["ep_dispatch"] == pytest.approx(48 * per_layer, rel=1e-9)
    b = load_hardware("atlas_800i_a2")
    inside = inf.decode_step(pro, b, inf.Instance(8), p8, batch=200, context=1).breakdown["ep_dispatch"]
    across = inf.decode_step(pro, b, inf.Instance(16), p8, batch=200, context=1).breakdown["ep_dispatch"]
    bytes16 = 200 * K * H * (15 / 16)
    assert across == pytest.approx(48 * (bytes16 / 2 / (25e9 * 0.8) + 20e-6), rel=1e-9)  # half leaves the node, RoCE
    assert across > 3 * inside                                           # RoCE 25 GB/s vs HCCS 196 GB/s


def test_hand_calculation_in_docs_pro_decode_on_800i_a2():
    """docs/serving.md, 'Hand calculation': Pangu Pro MoE decode, one Atlas 800I A2 server (8 x 910B,
    TP1 x DP8 attention, EP8), INT8 weights, 16 sequences per DP group, 2,048 cached tokens each."""
    pro = model_shape(fixture_config("pangu_pro_moe_full"))
    hw = load_hardware("atlas_800i_a2")
    st = inf.decode_step(pro, hw, inf.Instance(8), inf.Precision("int8"), batch=16, context=2048)
    B, Fc, Fb = 1600e9 * 0.8, 626e12 * 0.75, 313e12 * 0.75
    H, b, c = 5120, 16, 2048
    attn = (5120 * 5120 + 2 * 5120 * 1024 + 5120 * 5120 + 2 * b * H * 2) / B          # int8 weights + activations
    core = ((b * c + b) * 2 * 8 * 128 * 2) / B                                         # bf16 KV read + write
    router = 5120 * 64 * 2 / B
    link = 196e9 * 0.8
    dispatch = b * 8 * H * 1 * (7 / 8) / link + 10e-6
    active = 8 * (1 - (7 / 8) ** (b * 8))
    experts = (active * 3 * H * 1344 + 2 * b * 8 * H * 2) / B
    combine = b * 8 * H * 2 * (7 / 8) / link + 10e-6
    shared = 3 * H * 5376 / B
    layer = attn + core + router + dispatch + experts + combine + shared
    head = (H * 153376 * 2 + b * 153376 * 4) / B
    hand = 48 * layer + head
    assert max(2 * b * 62914560 / Fc, 2 * b * c * 40 * 256 / Fb) < min(attn, core)    # both memory-bound
    assert st.seconds == pytest.approx(hand, rel=1e-9)
    assert 1e3 * st.seconds == pytest.approx(19.54, abs=0.005)                        # the number in the docs
    assert st.bound == "memory"


def test_memory_per_device_and_max_sequences():
    pro = model_shape(fixture_config("pangu_pro_moe_full"))
    hw = load_hardware("atlas_800i_a2")
    inst, p8 = inf.Instance(8), inf.Precision("int8")
    w = inf.weight_bytes(pro, inst, p8)
    assert w["routed_experts"] == 48 * 8 * 3 * 5120 * 1344           # 64 experts / EP8 = 8 per device
    assert w["embedding_head"] == 2 * 153376 * 5120 * 2
    cap = inf.max_sequences(pro, hw, inst, p8, context=4096)
    assert inf.memory(pro, hw, inst, p8, sequences=cap, context=4096, tokens_in_flight=cap).fits
    assert not inf.memory(pro, hw, inst, p8, sequences=cap + 1, context=4096, tokens_in_flight=cap + 1).fits


def test_refusals_are_one_line():
    duo = load_hardware("atlas_300i_duo")
    with pytest.raises(ValueError, match=r"dtype: bf16 is not supported on atlas_300i_duo .*use --dtype fp16"):
        inf.check_precision(inf.Precision("bf16", "fp16"), duo)
    with pytest.raises(ValueError, match="mtp-accept: toy has no MTP layers"):
        inf.decode_step(TOY, _hw(), inf.Instance(1), inf.Precision(), 1, 1, mtp_accept=0.7)
    with pytest.raises(ValueError, match="instance: 6 devices with attention TP 4"):
        inf.Instance(6, 4)
    with pytest.raises(ValueError, match="prefix: 10 cached tokens of a 10-token prompt"):
        inf.prefill_batch(TOY, _hw(), inf.Instance(1), inf.Precision(), 1, 10, cached=10)


def test_mtp_verifies_two_tokens_per_step_and_yields_one_plus_acceptance():
    ds = model_shape(json.load(open(DEEPSEEK)))
    hw = load_hardware("ascend_910c_cm384")
    p8 = inf.Precision("int8")
    plain = inf.decode_step(ds, hw, inf.Instance(320), p8, 48, 4096)
    mtp = inf.decode_step(ds, hw, inf.Instance(320), p8, 48, 4096, mtp_accept=0.7)
    assert mtp.seconds > plain.seconds                                  # 2 query tokens + the MTP layer
    assert inf.tpot(mtp, 0.7) == pytest.approx(mtp.seconds / 1.7)
    assert inf.tpot(mtp, 0.7) < inf.tpot(plain)                         # weights / KV read once for 1.7 tokens
    # the KV read is per sequence, not per query token
    assert mtp.breakdown["attention_core"] < 2.2 * plain.breakdown["attention_core"]


def test_hardware_profiles_for_serving_cite_sources():
    here = os.path.join(os.path.dirname(__file__), "..", "..", "parallel_strategies", "hardware")
    for name, needle in (("atlas_800i_a2", "sglang"), ("atlas_300i_duo", "408 GB/s"),
                         ("ascend_910c_cm384", "2506.12708")):
        text = open(os.path.join(here, name + ".yaml")).read()
        assert needle in text
        hw = load_hardware(name)
        assert hw.peak_int8_tops >= 2 * hw.peak_tflops - 1e-9
    cm = load_hardware("ascend_910c_cm384")
    assert cm.devices_per_npu == 2 and cm.ep_dispatch_bandwidth_gbs == 54 and cm.ep_combine_bandwidth_gbs == 103
    assert "bf16" not in load_hardware("atlas_300i_duo").matmul_dtypes
    assert dataclasses.fields(Hardware)[-1].default is not dataclasses.MISSING   # new fields all have defaults
