"""Pangu Pro MoE: MoGE router, loop vs batched vs grouped experts, parameter counts, masking, config
validation, GRAPH-mode train step, conversion round trip, registry."""
import shutil

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

import models
from pangu.common.moe import MoE, MoGERouter, TopKRouter
from pangu.common.init import init_normal
from pangu.pro_moe import PRESETS, SPEC, PanguProMoEConfig, PanguProMoEForCausalLM, build_model, count_parameters
from pangu.pro_moe import convert


def state_of(model):
    return {n: p.asnumpy() for n, p in model.parameters_and_names()}


def tiny(**kw):
    kw.setdefault("attention_impl", "reference")
    return models.get_config("pangu_pro_moe", "tiny", **kw)


def _np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ----------------------------------------------------------------------------- router
def test_moge_router_cell_matches_numpy():
    rng = np.random.default_rng(0)
    t, h, e, g = 24, 16, 8, 4
    router = MoGERouter(h, e, g)
    w = rng.normal(size=(e, h)).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, size=(1, e)).astype(np.float32)
    router.weight.set_data(Tensor(w))
    router.router_scale.set_data(Tensor(scale))
    x = rng.normal(size=(t, h)).astype(np.float32)
    weights, experts, probs = router(Tensor(x))
    p = _np_softmax(x.astype(np.float64) @ w.T.astype(np.float64))
    local = p.reshape(t, g, e // g).argmax(-1)
    ex = local + np.arange(g) * (e // g)
    np.testing.assert_array_equal(experts.asnumpy(), ex)
    np.testing.assert_allclose(weights.asnumpy(), np.take_along_axis(p, ex, 1) * scale[0, ex],
                               rtol=1e-5)
    np.testing.assert_allclose(probs.asnumpy(), p, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- experts
def _moe_layers(router_kind, impls=("loop", "batched", "grouped")):
    """One MoE layer per expert_impl, identical weights."""
    h, inter, e, k = 16, 8, 8, 4
    layers = []
    for impl in impls:
        router = (MoGERouter(h, e, k) if router_kind == "moge"
                  else TopKRouter(h, e, 2, "sigmoid", True, True, 2.5))
        kk = k if router_kind == "moge" else 2
        layers.append(MoE(h, inter, e, kk, router, 12 if router_kind == "moge" else 0, impl))
    for m in layers:
        init_normal(m, 0.5, seed=7)
        if router_kind == "moge":
            m.gate.router_scale.set_data(Tensor(np.linspace(0.5, 1.5, e, dtype=np.float32)[None]))
    return layers


@pytest.mark.parametrize("router_kind", ["moge", "topk"])
def test_loop_vs_batched_vs_grouped_outputs_and_grads(router_kind):
    loop, batched, grouped = _moe_layers(router_kind)
    assert grouped.experts.gmm_impl == ("fast" if shutil.which("g++") else "reference")
    rng = np.random.default_rng(1)
    x = Tensor(rng.normal(size=(2, 9, 16)).astype(np.float32))
    ct = Tensor(rng.normal(size=(2, 9, 16)).astype(np.float32))

    def run(m):
        def f(x_):
            y, bal, _ = m(x_)
            return (y * ct).sum() + bal
        grad_fn = ms.value_and_grad(f, 0, m.trainable_params())
        val, (gx, gp) = grad_fn(x)
        return m(x)[0].asnumpy(), gx.asnumpy(), [g.asnumpy() for g in gp]

    y_l, gx_l, gp_l = run(loop)
    names = [p.name for p in loop.trainable_params()]
    for impl, m in (("batched", batched), ("grouped", grouped)):
        y, gx, gp = run(m)
        np.testing.assert_allclose(y, y_l, atol=1e-5, rtol=1e-5, err_msg=impl)
        np.testing.assert_allclose(gx, gx_l, atol=1e-5, rtol=1e-5, err_msg=impl)
        for name, a, b in zip(names, gp, gp_l):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=f"{impl}: {name}")
    assert any(np.abs(g).max() > 0 for g in gp_l)


# ----------------------------------------------------------------------------- counts
def test_full_preset_parameter_count_matches_published():
    total, active = count_parameters(PRESETS["full"]())
    assert abs(total / 1e9 - 71.99) < 0.01, total
    assert abs(active / 1e9 - 16.50) < 0.01, active


@pytest.mark.parametrize("tie", [False, True])
def test_counter_equals_instantiated_tiny(tie):
    cfg = tiny(tie_word_embeddings=tie)
    model = build_model(cfg, seed=0)
    real = sum(p.size for p in model.get_parameters())
    total, active = models.count_parameters(cfg)
    assert total == real
    expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
    unused = cfg.num_hidden_layers * (cfg.num_experts - cfg.num_experts_per_tok) * expert
    assert active == real - unused


def test_parameter_names_are_serving_layout():
    model = build_model(tiny(), seed=0)
    names = {n for n, _ in model.parameters_and_names()}
    for n in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
              "model.layers.1.input_layernorm.weight",
              "model.layers.1.post_attention_layernorm.weight",
              "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.o_proj.bias",
              "model.layers.0.mlp.gate.weight",
              "model.layers.0.mlp.shared_expert.down_proj.weight"):
        assert n in names, n
    hf = convert.to_hf(state_of(model))
    assert hf["model.layers.0.mlp.gate.weight"].shape == (8, 64)
    assert hf["model.layers.0.mlp.router_scale"].shape == (1, 8)
    assert hf["model.layers.0.mlp.experts.7.down_proj.weight"].shape == (64, 32)
    assert hf["model.layers.0.mlp.experts.0.gate_proj.weight"].shape == (32, 64)
    axes = {p.name: p.axes for p in SPEC.parameters(tiny())}     # declared where each parameter is made
    assert set(axes) == names
    assert axes["model.layers.0.mlp.experts.gate_proj"] == ("expert", "expert_mlp", "embed")
    assert axes["model.layers.0.mlp.gate.weight"] == ("router", "embed")
    assert axes["model.layers.0.mlp.shared_expert.down_proj.weight"] == ("embed", "mlp")
    assert axes["model.layers.0.self_attn.k_proj.bias"] == ("kv_heads",)


def test_convert_round_trip():
    model = build_model(tiny(), seed=3)
    ours = state_of(model)
    hf = convert.to_hf(ours)
    assert not any(k.endswith("experts.gate_proj") for k in hf)
    back = convert.from_hf(hf)
    assert set(back) == set(ours)
    for k in ours:
        np.testing.assert_array_equal(back[k], ours[k])
    cfg_json = convert.hf_config(tiny())
    assert cfg_json["model_type"] == "PanguProMoE" and cfg_json["num_experts_per_tok"] == 4


def test_init_is_deterministic_and_follows_rules():
    cfg = tiny()
    ms.set_seed(11)
    a = state_of(build_model(cfg))
    ms.set_seed(11)
    b = state_of(build_model(cfg))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert (a["model.layers.0.mlp.gate.router_scale"] == 1).all()
    assert (a["model.layers.0.self_attn.q_proj.bias"] == 0).all()
    assert (a["model.norm.weight"] == 1).all()
    assert abs(a["model.embed_tokens.weight"].std() - cfg.initializer_range) < 2e-3


# ----------------------------------------------------------------------------- masking
def test_packed_documents_equal_separate_forwards():
    cfg = tiny()
    model = build_model(cfg, seed=1)
    rng = np.random.default_rng(5)
    l1, l2, s = 5, 7, 16
    d1 = rng.integers(1, cfg.vocab_size, l1).astype(np.int32)
    d2 = rng.integers(1, cfg.vocab_size, l2).astype(np.int32)
    ids = np.zeros((1, s), np.int32)
    ids[0, :l1], ids[0, l1:l1 + l2] = d1, d2
    pos = np.zeros((1, s), np.int32)
    pos[0, :l1], pos[0, l1:l1 + l2] = np.arange(l1), np.arange(l2)
    seg = np.zeros((1, s), np.int32)
    seg[0, :l1], seg[0, l1:l1 + l2] = 1, 2
    packed = model(Tensor(ids), Tensor(pos), Tensor(seg)).asnumpy()[0]
    assert np.isfinite(packed).all()                                  # padding rows: no NaN

    def alone(d):
        n = len(d)
        return model(Tensor(d[None]), Tensor(np.arange(n, dtype=np.int32)[None]),
                     Tensor(np.ones((1, n), np.int32))).asnumpy()[0]
    np.testing.assert_allclose(packed[:l1], alone(d1), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(packed[l1:l1 + l2], alone(d2), atol=1e-5, rtol=1e-5)


def test_causal():
    cfg = tiny()
    model = build_model(cfg, seed=2)
    ids = np.arange(1, 9, dtype=np.int32)[None]
    pos, seg = np.arange(8, dtype=np.int32)[None], np.ones((1, 8), np.int32)
    a = model(Tensor(ids), Tensor(pos), Tensor(seg)).asnumpy()
    ids2 = ids.copy()
    ids2[0, 5:] = 100
    b = model(Tensor(ids2), Tensor(pos), Tensor(seg)).asnumpy()
    np.testing.assert_allclose(a[0, :5], b[0, :5], atol=1e-6)
    assert np.abs(a[0, 5:] - b[0, 5:]).max() > 1e-4


# ----------------------------------------------------------------------------- loss + graph
def test_loss_is_masked_mean_ce():
    cfg = tiny(router_aux_loss_coef=0.0)
    model = build_model(cfg, seed=4)
    rng = np.random.default_rng(6)
    ids = rng.integers(0, cfg.vocab_size, (2, 8)).astype(np.int32)
    labels = rng.integers(0, cfg.vocab_size, (2, 8)).astype(np.int32)
    mask = (rng.uniform(size=(2, 8)) > 0.3).astype(np.float32)
    pos = np.tile(np.arange(8, dtype=np.int32), (2, 1))
    seg = np.ones((2, 8), np.int32)
    total, (lm, aux, imb) = model.loss(*(Tensor(a) for a in (ids, labels, mask, pos, seg)))
    logits = model(Tensor(ids), Tensor(pos), Tensor(seg)).asnumpy().astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                                                              keepdims=True)) \
        - logits.max(-1, keepdims=True)
    nll = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    assert float(lm.asnumpy()) == pytest.approx((nll * mask).sum() / mask.sum(), rel=1e-5)
    assert float(total.asnumpy()) == pytest.approx(float(lm.asnumpy()), rel=1e-6)
    assert float(imb.asnumpy()) == 0.0                     # MoGE: balanced across devices
    assert model.METRIC_NAMES == ("lm_loss", "aux_loss", "imbalance")


def test_graph_mode_jit_train_step():
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        cfg = tiny()
        model = build_model(cfg, seed=0)
        opt = nn.AdamWeightDecay(model.trainable_params(), 1e-2)
        grad_fn = ms.value_and_grad(model.loss, None, opt.parameters, has_aux=True)

        @ms.jit
        def step(ids, labels, mask, pos, seg):
            (loss, metrics), grads = grad_fn(ids, labels, mask, pos, seg)
            opt(grads)
            return loss, metrics

        rng = np.random.default_rng(0)
        ids = Tensor(rng.integers(0, cfg.vocab_size, (2, 16)).astype(np.int32))
        pos = Tensor(np.tile(np.arange(16, dtype=np.int32), (2, 1)))
        seg = Tensor(np.ones((2, 16), np.int32))
        mask = Tensor(np.ones((2, 16), np.float32))
        losses = [float(step(ids, ids, mask, pos, seg)[0].asnumpy()) for _ in range(4)]
        assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("overrides,msg", [
    (dict(num_experts=10), r"^num_experts: 10 is not divisible by num_experts_per_tok=4"),
    (dict(num_key_value_heads=3), r"^num_key_value_heads: num_attention_heads=4 is not"),
    (dict(head_dim=15), r"^head_dim: 15 is odd; "),
    (dict(compute_dtype="fp16"), r"^compute_dtype: unknown value 'fp16'; use one of"),
    (dict(expert_impl="padded"), r"^expert_impl: unknown value"),
    (dict(hidden_size=0), r"^hidden_size: must be a positive integer"),
    (dict(rms_norm_eps=0.0), r"^rms_norm_eps: must be > 0"),
])
def test_config_validation_messages(overrides, msg):
    with pytest.raises(ValueError, match=msg):
        models.get_config("pangu_pro_moe", "tiny", **overrides)


def test_config_presets_and_registry():
    full = PRESETS["full"]()
    assert full.num_attention_heads * full.head_dim == full.hidden_size == 5120
    assert models.get_config("pangu_pro_moe", "tiny", hidden_size=64,
                               num_attention_heads=2, head_dim=48).validate()  # N*D != H ok
    bench = models.get_config("pangu_pro_moe", "bench")
    assert (bench.hidden_size, bench.num_hidden_layers, bench.num_experts,
            bench.num_experts_per_tok) == (512, 4, 16, 4)
    assert bench.max_position_embeddings >= 512
    with pytest.raises(ValueError, match="^num_expert: unknown config field; valid neighbours"):
        models.get_config("pangu_pro_moe", "tiny", num_expert=4)
    with pytest.raises(ValueError, match=r"^model.arch: unknown architecture 'nope'; use one of \["):
        models.get_config("nope", "tiny")
    assert models.SPECS["pangu_pro_moe"] is SPEC
    assert isinstance(models.build_model(tiny()), PanguProMoEForCausalLM)
    assert isinstance(full, PanguProMoEConfig)
