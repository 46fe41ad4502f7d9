"""Pangu Ultra MoE: MLA, interleaved RoPE, sigmoid router, balance loss, MTP targets, DSSN/TinyInit,
parameter counts, GRAPH-mode training step, conversion round trip (tiny sizes, CPU)."""
import math

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

from ops.rope import apply_rope, rotary_tables
import models
from pangu.common.mla import MultiHeadLatentAttention
from pangu.common.mtp import mtp_targets, mtp_targets_np
from pangu.common.moe import MoEStats
from pangu.common.routers import SigmoidTopKRouter, balance_loss_np, expert_bias_update
from pangu.common.sandwich import dssn_gamma, tiny_init_std
from pangu.ultra_moe import convert
from pangu.ultra_moe.config import (PUBLISHED_ACTIVE, PUBLISHED_TOLERANCE, PUBLISHED_TOTAL,
                                    PanguUltraMoEConfig, count_parameters, full, tiny)
from pangu.ultra_moe import SPEC
from pangu.ultra_moe.model import build_model, count_trainable


def _rng(seed=0):
    return np.random.default_rng(seed)


def _packed_batch(b, s, vocab, doc_lens, seed=0):
    """Batch-contract dict: rows pack documents of the given lengths, rest padding (seg 0)."""
    rng = _rng(seed)
    ids = np.zeros((b, s), np.int32)
    seg = np.zeros((b, s), np.int32)
    pos = np.zeros((b, s), np.int32)
    for i in range(b):
        t = 0
        for n, length in enumerate(doc_lens, 1):
            length = min(length, s - t)
            ids[i, t:t + length] = rng.integers(1, vocab, length)
            seg[i, t:t + length] = n
            pos[i, t:t + length] = np.arange(length)
            t += length
    labels = np.zeros((b, s), np.int32)
    mask = np.zeros((b, s), np.float32)
    same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] != 0)
    labels[:, :-1] = np.where(same, ids[:, 1:], 0)
    mask[:, :-1] = same
    return dict(input_ids=ids, labels=labels, loss_mask=mask, position_ids=pos, segment_ids=seg)


def _t(batch, *keys):
    return [Tensor(batch[k]) for k in keys]


# ------------------------------------------------------------------------- parameter counts
def test_full_preset_matches_published_counts():
    total, active = count_parameters(full())
    assert (total, active) == (719_093_767_680, 39_191_846_400)
    assert abs(total / PUBLISHED_TOTAL - 1) <= PUBLISHED_TOLERANCE       # +0.15%
    assert abs(active / PUBLISHED_ACTIVE - 1) <= PUBLISHED_TOLERANCE     # +0.49%
    # the published total excludes the MTP layer (with it: 731.5B, +1.9%)
    total_mtp, _ = count_parameters(full(), include_mtp=True)
    assert total_mtp == 731_537_111_040
    assert abs(total_mtp / PUBLISHED_TOTAL - 1) > PUBLISHED_TOLERANCE


@pytest.mark.parametrize("overrides", [{}, {"sandwich_norm": False, "tie_word_embeddings": True},
                                       {"num_mtp_layers": 2, "num_shared_experts": 0}])
def test_analytic_count_equals_instantiated_tiny(overrides):
    cfg = tiny().replace(**overrides)
    model = build_model(cfg, seed=0)
    assert count_trainable(model) == count_parameters(cfg, include_mtp=True)[0]
    total, active = count_parameters(cfg)
    assert active < total


def test_registry_and_validate_messages():
    cfg = models.get_config("pangu_ultra_moe", "tiny", num_experts_per_tok=4)
    assert isinstance(cfg, PanguUltraMoEConfig) and cfg.num_experts_per_tok == 4
    assert models.count_parameters(full()) == count_parameters(full())
    with pytest.raises(ValueError, match=r"^num_dense_layers: .*; "):
        tiny().replace(num_dense_layers=9)
    with pytest.raises(ValueError, match=r"^aux_loss_scope: unknown value 'node'; use one of"):
        tiny().replace(aux_loss_scope="node")
    with pytest.raises(ValueError, match=r"^attention_qk_rope_dim: .*odd"):
        tiny().replace(attention_qk_rope_dim=7)
    # config.json round trip: the names are read back without the tensor names (config keys only)
    assert convert.config_from_hf(convert.hf_config(full())) == full()
    assert convert.hf_config(full())["sandwich_norm"] is True


# ------------------------------------------------------------------------- RoPE and MLA
def _rotate_pairs_np(x, pos, theta):
    """Hand-computed interleaved RoPE: pair (2i, 2i+1) rotated by pos * theta^(-2i/d)."""
    d = x.shape[-1]
    out = np.empty_like(x)
    for i in range(d // 2):
        ang = pos * theta ** (-2.0 * i / d)
        c, s = np.cos(ang), np.sin(ang)
        x0, x1 = x[..., 2 * i], x[..., 2 * i + 1]
        out[..., 2 * i] = x0 * c - x1 * s
        out[..., 2 * i + 1] = x0 * s + x1 * c
    return out


def test_rope_interleaved_is_pairwise_rotation():
    rng = _rng(1)
    b, n, s, d, theta = 2, 3, 7, 8, 2.56e7 / 1e6
    x = rng.normal(size=(b, n, s, d)).astype(np.float32)
    pos = rng.integers(0, 50, (b, s)).astype(np.int32)
    cos, sin = rotary_tables(Tensor(pos), d, theta, "interleaved")
    got = apply_rope(Tensor(x), cos, sin, "interleaved", impl="reference").asnumpy()
    want = _rotate_pairs_np(x.astype(np.float64), pos[:, None, :].astype(np.float64), theta)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # rotation preserves each pair's norm
    np.testing.assert_allclose((got.reshape(b, n, s, d // 2, 2) ** 2).sum(-1),
                               (x.reshape(b, n, s, d // 2, 2) ** 2).sum(-1), rtol=1e-5)


def _rms_np(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _mla_np(x, W, seg, pos, n, dn, dr, dv, rq, rkv, theta, eps):
    """Straightforward MLA: materialise every head's keys and values, loop over heads."""
    b, s, _ = x.shape
    q = _rms_np(x @ W["q_a_proj"].T, W["q_a_layernorm"], eps) @ W["q_b_proj"].T
    q = q.reshape(b, s, n, dn + dr)
    kv_a = x @ W["kv_a_proj_with_mqa"].T
    c_kv, k_rope = kv_a[..., :rkv], kv_a[..., rkv:]
    k_rope = _rotate_pairs_np(k_rope, pos, theta)                        # shared by all heads
    kv = (_rms_np(c_kv, W["kv_a_layernorm"], eps) @ W["kv_b_proj"].T).reshape(b, s, n, dn + dv)
    allowed = (np.tril(np.ones((s, s), bool))[None]
               & (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] != 0))
    heads = []
    for h in range(n):
        q_h = np.concatenate([q[:, :, h, :dn], _rotate_pairs_np(q[:, :, h, dn:], pos, theta)], -1)
        k_h = np.concatenate([kv[:, :, h, :dn], k_rope], -1)             # materialised key
        v_h = kv[:, :, h, dn:]                                           # materialised value
        scores = np.einsum("bqd,bkd->bqk", q_h, k_h) / math.sqrt(dn + dr)
        scores = np.where(allowed, scores, -np.inf)
        mx = np.max(np.where(allowed, scores, -1e300), -1, keepdims=True)
        p = np.where(allowed, np.exp(scores - mx), 0.0)
        p = p / np.maximum(p.sum(-1, keepdims=True), 1e-300)
        heads.append(np.einsum("bqk,bkd->bqd", p, v_h))
    return np.concatenate(heads, -1) @ W["o_proj"].T


@pytest.mark.parametrize("impl", ["reference", "auto"])
def test_mla_matches_numpy_materialised_heads(impl):
    rng = _rng(2)
    hdim, n, rq, rkv, dn, dr, dv, theta, eps = 24, 3, 12, 8, 6, 4, 5, 1e4, 1e-5
    mla = MultiHeadLatentAttention(hdim, n, rq, rkv, dn, dr, dv, eps, attention_impl=impl,
                                   rope_impl="reference")
    W = {}
    for name, p in mla.parameters_and_names():
        key = name.split(".")[0]
        if "layernorm" in name:
            val = 1.0 + 0.2 * rng.normal(size=p.shape)
        else:
            val = rng.normal(size=p.shape) / math.sqrt(p.shape[-1])
        p.set_data(Tensor(val.astype(np.float32)))
        W[key] = val
    batch = _packed_batch(2, 11, 10, [4, 5])          # two documents + 2 padding positions
    seg, pos = batch["segment_ids"], batch["position_ids"]
    x = rng.normal(size=(2, 11, hdim))
    cos, sin = rotary_tables(Tensor(pos), dr, theta, "interleaved")
    got = mla(Tensor(x.astype(np.float32)), cos, sin, Tensor(seg)).asnumpy()
    want = _mla_np(x, W, seg, pos.astype(np.float64), n, dn, dr, dv, rq, rkv, theta, eps)
    np.testing.assert_allclose(got[seg != 0], want[seg != 0], rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(got[seg == 0], 0.0, atol=1e-6)  # padding rows: o_proj(0) = 0
    assert mla.scale == pytest.approx((dn + dr) ** -0.5)


# ------------------------------------------------------------------------- router and balance
def test_sigmoid_router_matches_numpy_and_bias_only_selects():
    rng = _rng(3)
    t, hdim, e, k, scale = 12, 16, 8, 3, 2.5
    router = SigmoidTopKRouter(hdim, e, k, selection_bias=True, norm_topk_prob=True,
                               scaling_factor=scale)
    w = rng.normal(size=(e, hdim)).astype(np.float32)
    bias = np.zeros(e, np.float32)
    bias[[1, 6]] = 5.0                                  # forces experts 1 and 6 into every top-k
    router.weight.set_data(Tensor(w))
    router.e_score_correction_bias.set_data(Tensor(bias))
    h = rng.normal(size=(t, hdim)).astype(np.float32)
    weights, experts, probs = (a.asnumpy() for a in router(Tensor(h)))

    s = 1.0 / (1.0 + np.exp(-(h.astype(np.float64) @ w.T.astype(np.float64))))
    chosen = np.argsort(-(s + bias), axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(np.sort(experts, 1), np.sort(chosen, 1))
    assert all({1, 6} <= set(row) for row in experts)
    # weights come from the UNBIASED scores of the chosen experts, renormalised, x scale
    picked = np.take_along_axis(s, experts.astype(np.int64), 1)
    np.testing.assert_allclose(weights, picked / picked.sum(1, keepdims=True) * scale, rtol=1e-5)
    np.testing.assert_allclose(weights.sum(1), scale, rtol=1e-5)
    np.testing.assert_allclose(probs, s / s.sum(1, keepdims=True), rtol=1e-5)
    # without the bias the selection is the plain top-k of the scores
    router.e_score_correction_bias.set_data(Tensor(np.zeros(e, np.float32)))
    experts0 = router(Tensor(h))[1].asnumpy()
    np.testing.assert_array_equal(np.sort(experts0, 1),
                                  np.sort(np.argsort(-s, 1, kind="stable")[:, :k], 1))


def test_balance_loss_and_imbalance_of_one_micro_batch_match_numpy():
    from ops.moe import imbalance_score_np

    rng = _rng(4)
    t, e, k = 20, 8, 2
    probs = rng.dirichlet(np.ones(e), t).astype(np.float32)
    experts = np.stack([rng.choice(e, k, replace=False) for _ in range(t)]).astype(np.int32)
    balance, imbalance = MoEStats(e, k, 4)(Tensor(probs), Tensor(experts))
    assert float(balance.asnumpy()) == pytest.approx(balance_loss_np(probs, experts, e, k), rel=1e-5)
    assert float(imbalance.asnumpy()) == pytest.approx(imbalance_score_np(experts, e, 4), rel=1e-6)
    # perfectly uniform routing and probabilities give exactly 1
    uni = np.full((e, e), 1.0 / e, np.float32)
    ex = np.stack([np.arange(e), np.roll(np.arange(e), 1)], 1).astype(np.int32)
    assert float(MoEStats(e, k, 4)(Tensor(uni), Tensor(ex))[0].asnumpy()) == pytest.approx(1.0)


def test_expert_bias_update_rule_and_model_hook():
    b = expert_bias_update(np.zeros(4), np.array([10, 2, 5, 3]), 0.01)
    np.testing.assert_allclose(b, [-0.01, 0.01, 0.0, 0.01], rtol=1e-6)  # mean load 5
    cfg = tiny().replace(router_bias_update_rate=0.001)
    model = build_model(cfg, seed=0)
    batch = _packed_batch(2, 16, cfg.vocab_size, [16])
    model.zero_expert_loads()
    model.loss(*_t(batch, "input_ids", "labels", "loss_mask", "position_ids", "segment_ids"))
    loads = [load.asnumpy() for load in model.expert_loads()]
    n_moe = cfg.num_moe_layers + cfg.num_mtp_layers
    assert len(loads) == n_moe == len(model.moe_layer_ids)
    for load in loads:
        assert load.sum() == 2 * 16 * cfg.num_experts_per_tok           # every assignment counted
    skipped = model.update_expert_bias(model.expert_loads(), Tensor(False))  # a step the guard skipped
    assert all(not p.asnumpy().any() for n, p in model.parameters_and_names() if n.endswith("correction_bias"))
    model.update_expert_bias(tuple(Tensor(load) for load in loads), Tensor(True))
    biases = [p.asnumpy() for n, p in sorted(model.parameters_and_names()) if n.endswith("e_score_correction_bias")]
    for bias, load in zip(biases, [loads[model.moe_layer_ids.index(i)] for i in sorted(model.moe_layer_ids, key=str)]):
        np.testing.assert_allclose(bias, expert_bias_update(np.zeros_like(bias), load, 0.001), atol=1e-7)
    for i, load in zip(model.moe_layer_ids, loads):                      # the counters keep the loads used
        np.testing.assert_array_equal(model.model.layers[i].mlp.gate.expert_load.asnumpy(), load)
    assert skipped is not None
    assert all(not p.requires_grad for n, p in model.parameters_and_names()
               if n.endswith(("e_score_correction_bias", "expert_load")))


# ------------------------------------------------------------------------- MTP
def test_mtp_targets_shift_within_documents():
    batch = _packed_batch(2, 12, 50, [5, 4])             # docs [0,5) [5,9), padding [9,12)
    ids, seg = batch["input_ids"], batch["segment_ids"]
    for d in (1, 2, 3):
        got_l, got_m = (a.asnumpy() for a in mtp_targets(
            *_t(batch, "labels", "loss_mask", "segment_ids"), d))
        # independent expectation: token t+1+d if it exists and is in t's document
        want_m = np.zeros_like(got_m)
        want_l = np.zeros_like(got_l)
        for i in range(2):
            for t in range(12):
                j = t + 1 + d
                if j < 12 and seg[i, t] != 0 and seg[i, j] == seg[i, t]:
                    want_m[i, t] = 1
                    want_l[i, t] = ids[i, j]
        np.testing.assert_array_equal(got_m, want_m)
        np.testing.assert_array_equal(got_l, want_l)
        np.testing.assert_array_equal(got_l, mtp_targets_np(batch["labels"], batch["loss_mask"], seg, d)[0])
    # depth 1 spot check: doc 1 has 5 tokens -> positions 0..2 predict tokens 2..4, 3..4 masked
    _, m1 = mtp_targets(*_t(batch, "labels", "loss_mask", "segment_ids"), 1)
    np.testing.assert_array_equal(m1.asnumpy()[0], [1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0])


def test_mtp_skipped_at_inference_and_documents_isolated():
    cfg = tiny()
    model = build_model(cfg, seed=1)
    batch = _packed_batch(1, 16, cfg.vocab_size, [7, 9], seed=5)
    ids, pos, seg = _t(batch, "input_ids", "position_ids", "segment_ids")
    logits = model(ids, pos, seg).asnumpy()
    assert logits.shape == (1, 16, cfg.vocab_size) and logits.dtype == np.float32
    args = _t(batch, "input_ids", "labels", "loss_mask", "position_ids", "segment_ids")
    total0, m0 = model.loss(*args)
    L = cfg.num_hidden_layers
    p = model.model.layers[L].eh_proj.weight
    p.set_data(Tensor(p.asnumpy() * 3.0))
    np.testing.assert_array_equal(model(ids, pos, seg).asnumpy(), logits)   # MTP not used
    total1, m1 = model.loss(*args)
    names = type(model).METRIC_NAMES
    assert m1[names.index("lm_loss")].asnumpy() == m0[names.index("lm_loss")].asnumpy()
    assert m1[names.index("mtp_loss")].asnumpy() != m0[names.index("mtp_loss")].asnumpy()
    # changing document 1 does not change document 2's logits (segment masking)
    ids2 = batch["input_ids"].copy()
    ids2[0, :7] = (ids2[0, :7] + 1) % cfg.vocab_size
    logits2 = model(Tensor(ids2), pos, seg).asnumpy()
    np.testing.assert_allclose(logits2[0, 7:], logits[0, 7:], rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits2[0, :7], logits[0, :7])


# ------------------------------------------------------------------------- init, DSSN
def test_dssn_and_tiny_init():
    cfg = tiny()
    model = build_model(cfg, seed=0)
    params = dict(model.parameters_and_names())
    L = cfg.num_hidden_layers
    for i in range(L + cfg.num_mtp_layers):
        assert np.allclose(params[f"model.layers.{i}.post_attention_layernorm.weight"].asnumpy(),
                           0.283 / math.sqrt(L))
        assert np.allclose(params[f"model.layers.{i}.post_mlp_layernorm.weight"].asnumpy(),
                           dssn_gamma(0.432, L))
        assert np.allclose(params[f"model.layers.{i}.input_layernorm.weight"].asnumpy(), 1.0)
    emb = params["model.embed_tokens.weight"].asnumpy()
    assert emb.std() == pytest.approx(0.5, rel=0.05)
    big = params["model.layers.1.mlp.experts.gate_proj"].asnumpy()
    assert big.std() == pytest.approx(tiny_init_std(cfg.hidden_size, L), rel=0.05)
    plain = build_model(cfg.replace(sandwich_norm=False, tiny_init=False), seed=0)
    pp = dict(plain.parameters_and_names())
    assert "model.layers.0.pre_mlp_layernorm.weight" not in pp
    assert np.allclose(pp["model.layers.0.post_attention_layernorm.weight"].asnumpy(), 1.0)
    assert pp["model.layers.1.mlp.experts.gate_proj"].asnumpy().std() == pytest.approx(0.02, rel=0.05)


# ------------------------------------------------------------------------- convert
def test_convert_round_trip_and_serving_names():
    cfg = tiny().replace(router_bias_update_rate=0.01)
    model = build_model(cfg, seed=0)
    ours = {n: p.asnumpy() for n, p in model.parameters_and_names()}
    axes = {p.name: p.axes for p in SPEC.parameters(cfg)}    # declared where each parameter is made
    assert set(axes) == set(ours)
    assert axes["model.layers.1.mlp.gate.expert_load"] == ("router",)
    assert axes["model.layers.0.self_attn.kv_b_proj.weight"] == ("heads", "kv_lora")
    assert axes[f"model.layers.{cfg.num_hidden_layers}.eh_proj.weight"] == ("embed", "mtp_concat")
    hf = convert.to_hf(ours, cfg)
    L, E = cfg.num_hidden_layers, cfg.num_routed_experts
    for name in ("model.layers.0.self_attn.q_a_proj.weight", "model.layers.0.self_attn.kv_a_layernorm.weight",
                 "model.layers.0.mlp.gate_proj.weight", "model.layers.1.pre_mlp_layernorm.weight",
                 "model.layers.1.post_mlp_layernorm.weight", "model.layers.1.mlp.gate.weight",
                 "model.layers.1.mlp.gate.e_score_correction_bias",
                 f"model.layers.1.mlp.experts.{E - 1}.down_proj.weight",
                 "model.layers.1.mlp.shared_experts.up_proj.weight",
                 f"model.layers.{L}.eh_proj.weight", f"model.layers.{L}.enorm.weight",
                 f"model.layers.{L}.shared_head.norm.weight", f"model.layers.{L}.shared_head.head.weight",
                 f"model.layers.{L}.embed_tokens.weight", f"model.layers.{L}.mlp.experts.0.gate_proj.weight",
                 "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert name in hf, name
    assert not any("expert_load" in n or n.endswith("experts.gate_proj") for n in hf)
    assert hf["model.layers.1.mlp.experts.2.gate_proj.weight"].shape == (cfg.moe_intermediate_size,
                                                                         cfg.hidden_size)
    back = convert.from_hf(hf, cfg)
    assert set(back) == set(ours)
    for n in ours:
        np.testing.assert_array_equal(back[n], ours[n])
    other = build_model(cfg, seed=9)
    for name, p in other.parameters_and_names():
        p.set_data(ms.Tensor(back[name]))
    batch = _packed_batch(1, 8, cfg.vocab_size, [8])
    a = _t(batch, "input_ids", "position_ids", "segment_ids")
    np.testing.assert_array_equal(other(*a).asnumpy(), model(*a).asnumpy())


# ------------------------------------------------------------------------- GRAPH mode
def test_graph_mode_forward_and_grad_match_pynative():
    cfg = tiny().replace(router_bias_update_rate=0.001)
    batch = _packed_batch(2, 16, cfg.vocab_size, [6, 10], seed=3)
    args = _t(batch, "input_ids", "labels", "loss_mask", "position_ids", "segment_ids")

    def run(graph):
        model = build_model(cfg, seed=0)
        params = model.trainable_params()

        def forward(input_ids, labels, loss_mask, position_ids, segment_ids):
            return model.loss(input_ids, labels, loss_mask, position_ids, segment_ids)

        grad_fn = ms.value_and_grad(forward, None, params, has_aux=True)
        step = ms.jit(grad_fn) if graph else grad_fn
        (loss, metrics), grads = step(*args)
        load = model.model.layers[1].mlp.gate.expert_load.asnumpy().copy()
        return (float(loss.asnumpy()), [float(m.asnumpy()) for m in metrics],
                {p.name: g.asnumpy() for p, g in zip(params, grads)}, load)

    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        g_loss, g_metrics, g_grads, g_load = run(True)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    p_loss, p_metrics, p_grads, p_load = run(False)
    assert g_loss == pytest.approx(p_loss, rel=1e-5)
    np.testing.assert_allclose(g_metrics, p_metrics, rtol=1e-4, atol=1e-7)
    lm, aux, mtp, imb = p_metrics
    assert p_loss == pytest.approx(lm + aux + cfg.mtp_loss_weight * mtp, rel=1e-6)
    assert 0 < aux < 1 and mtp > 0 and 0 <= imb <= 1
    assert g_load.sum() == p_load.sum() == 2 * 16 * cfg.num_experts_per_tok  # side effect ran once
    L = cfg.num_hidden_layers
    for name in ("model.layers.1.mlp.gate.weight", f"model.layers.{L}.eh_proj.weight",
                 "model.layers.0.self_attn.kv_b_proj.weight", "model.layers.2.mlp.experts.down_proj"):
        assert np.abs(g_grads[name]).sum() > 0, name
        np.testing.assert_allclose(g_grads[name], p_grads[name], rtol=2e-3, atol=1e-6)
    assert all(np.isfinite(g).all() for g in g_grads.values())
