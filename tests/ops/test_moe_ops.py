"""ops.moe: routing vs independent numpy formulas, permutation round trip, balance/imbalance."""
import numpy as np
import pytest
from mindspore import Tensor

import ops.moe as moe


def _np_softmax(x):
    x = x.astype(np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_moge(logits, groups, scale):
    p = _np_softmax(logits)
    t, e = p.shape
    m = e // groups
    local = p.reshape(t, groups, m).argmax(-1)                     # numpy: lowest index on ties
    experts = local + np.arange(groups) * m
    weights = np.take_along_axis(p, experts, 1) * scale.reshape(-1)[experts]
    return weights, experts, p


def test_moge_route_matches_numpy_with_ties_and_scale():
    rng = np.random.default_rng(0)
    t, e, g = 32, 16, 4
    logits = rng.normal(size=(t, e)).astype(np.float32)
    # exact ties inside groups: the lowest index must win
    logits[0, 1] = logits[0, 2] = logits[0, 3] = logits[0, 0] = 5.0            # whole group 0
    logits[1, 6] = logits[1, 5] = 4.0                                          # group 1: 5 wins
    logits[2, 12:16] = 0.0                                                     # all-equal group
    scale = rng.uniform(0.5, 1.5, size=(1, e)).astype(np.float32)
    w, ex, p = moe.moge_route(Tensor(logits), g, Tensor(scale))
    w_np, ex_np, p_np = _np_moge(logits, g, scale)
    np.testing.assert_array_equal(ex.asnumpy(), ex_np)
    assert ex.asnumpy()[0, 0] == 0 and ex.asnumpy()[1, 1] == 5 and ex.asnumpy()[2, 3] == 12
    np.testing.assert_allclose(w.asnumpy(), w_np, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p.asnumpy(), p_np, rtol=1e-5, atol=1e-7)
    # no renormalisation: weights are raw global-softmax probabilities (x scale)
    assert (w.asnumpy() / scale[0, ex_np]).sum(-1).max() < 1.0


@pytest.mark.parametrize("score_func", ["softmax", "sigmoid"])
def test_topk_route_bias_selects_but_does_not_weight(score_func):
    rng = np.random.default_rng(1)
    t, e, k = 20, 8, 2
    logits = rng.normal(size=(t, e)).astype(np.float32)
    bias = np.zeros(e, np.float32)
    bias[7] = 100.0                                                            # always chosen
    w, ex, p = moe.topk_route(Tensor(logits), k, score_func, Tensor(bias), norm_topk_prob=False,
                              scaling_factor=2.5)
    s = _np_softmax(logits) if score_func == "softmax" else 1 / (1 + np.exp(-logits.astype(
        np.float64)))
    ex = ex.asnumpy()
    assert (ex == 7).any(-1).all()
    sel = np.argsort(-(s + bias), -1, kind="stable")[:, :k]
    np.testing.assert_array_equal(np.sort(ex, -1), np.sort(sel, -1))
    np.testing.assert_allclose(w.asnumpy(), 2.5 * np.take_along_axis(s, ex, 1), rtol=1e-5)
    np.testing.assert_allclose(p.asnumpy().sum(-1), 1.0, rtol=1e-5)
    wn, _, _ = moe.topk_route(Tensor(logits), k, score_func, None, norm_topk_prob=True)
    np.testing.assert_allclose(wn.asnumpy().sum(-1), 1.0, rtol=1e-5)


def test_permute_unpermute_roundtrip():
    rng = np.random.default_rng(2)
    t, h, e, k = 13, 4, 6, 3
    x = rng.normal(size=(t, h)).astype(np.float32)
    experts = np.stack([rng.choice(e, k, replace=False) for _ in range(t)]).astype(np.int32)
    w = rng.uniform(size=(t, k)).astype(np.float32)
    blk = moe.default_block(t * k, e)
    dest, slot_src, block_expert = moe.permute_plan(Tensor(experts), e, blk)
    x_p = moe.permute(Tensor(x), slot_src).asnumpy()
    dest, be = dest.asnumpy(), block_expert.asnumpy()
    assert len(set(dest.tolist())) == t * k                                    # dropless, 1:1
    for a, (tok, kk) in enumerate(np.ndindex(t, k)):
        np.testing.assert_array_equal(x_p[dest[a]], x[tok])
        assert be[dest[a] // blk] == experts[tok, kk]                          # right block owner
    y = moe.unpermute(Tensor(x_p), Tensor(dest), Tensor(w)).asnumpy()
    np.testing.assert_allclose(y, x * w.sum(-1, keepdims=True), rtol=1e-5)


def test_balance_loss_matches_formula():
    rng = np.random.default_rng(3)
    t, e, k = 10, 8, 2
    probs = _np_softmax(rng.normal(size=(t, e))).astype(np.float32)
    experts = np.stack([rng.choice(e, k, replace=False) for _ in range(t)]).astype(np.int32)
    want = (e / (k * t) * np.bincount(experts.ravel(), minlength=e) * probs.mean(0)).sum()
    got = float(moe.balance_loss(Tensor(probs), Tensor(experts), e, k).asnumpy())
    assert abs(got - want) < 1e-6


def test_imbalance_score_paper_setting():
    """64 experts, 8 groups, top-8, 16 tokens, 8 devices: MoGE 0, plain top-8 > 0."""
    rng = np.random.default_rng(4)
    logits = Tensor(rng.normal(size=(16, 64)).astype(np.float32) * 2)
    _, ex_moge, _ = moe.moge_route(logits, 8)
    _, ex_topk, _ = moe.topk_route(logits, 8)
    assert float(moe.imbalance_score(ex_moge, 64, 8).asnumpy()) == 0.0
    score = float(moe.imbalance_score(ex_topk, 64, 8).asnumpy())
    assert score > 0
    assert score == pytest.approx(moe.imbalance_score_np(ex_topk.asnumpy(), 64, 8))
    # hand example: all 16 tokens send 8 choices to device 0 -> (128 - 0) / 16
    assert moe.imbalance_score_np(np.tile(np.arange(8), (16, 1)), 64, 8) == 8.0
