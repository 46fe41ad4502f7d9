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


# ----------------------------------------------------------------------------- fast vs reference
import mindspore as ms  # noqa: E402

from ops._dispatch import impl_scope  # noqa: E402
from ops.moe import fast as moe_fast, reference as moe_ref  # noqa: E402
from _parity import assert_parity, fresh_rng, rel  # noqa: E402


def _random_experts(rng, t, e, k):
    return np.stack([rng.choice(e, k, replace=False) for _ in range(t)]).astype(np.int32)


@pytest.mark.parametrize("t,e,g", [(1, 4, 2), (37, 16, 4), (129, 64, 8)])
def test_fast_moge_route_parity(t, e, g):
    """Same experts, weights, probs and logit/scale gradients (weights and probs both feed the loss)."""
    seed, rng = fresh_rng()
    logits = (rng.normal(size=(t, e)) * 2).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, size=(1, e)).astype(np.float32)
    w_f, ex_f, _ = moe.moge_route(Tensor(logits), g, Tensor(scale), impl="fast")
    w_r, ex_r, _ = moe.moge_route(Tensor(logits), g, Tensor(scale), impl="reference")
    np.testing.assert_array_equal(ex_f.asnumpy(), ex_r.asnumpy())

    def run(route):
        def fn(lg, sc):
            w, _, p = route(lg, g, sc)
            return ops_concat(w, p)
        return fn
    assert_parity(run(moe_fast.moge_route), run(moe_ref.moge_route), [logits, scale], (0, 1), seed)


def ops_concat(w_TK, p_TE):
    from mindspore import ops
    return ops.concat((w_TK, p_TE), -1)


@pytest.mark.parametrize("score_func,bias,norm,scale", [("softmax", False, False, 1.0),
                                                        ("softmax", False, True, 1.0),
                                                        ("sigmoid", True, True, 2.5),
                                                        ("sigmoid", False, False, 1.5)])
def test_fast_topk_route_parity(score_func, bias, norm, scale):
    seed, rng = fresh_rng()
    t, e, k = int(rng.integers(1, 70)), 16, 4
    logits = rng.normal(size=(t, e)).astype(np.float32)
    bias_np = rng.normal(size=(e,)).astype(np.float32) if bias else None
    b = Tensor(bias_np) if bias else None
    _, ex_f, _ = moe.topk_route(Tensor(logits), k, score_func, b, norm, scale, impl="fast")
    _, ex_r, _ = moe.topk_route(Tensor(logits), k, score_func, b, norm, scale, impl="reference")
    np.testing.assert_array_equal(ex_f.asnumpy(), ex_r.asnumpy())

    def run(route):
        def fn(lg):
            w, _, p = route(lg, k, score_func, b, norm, scale)
            return ops_concat(w, p)
        return fn
    assert_parity(run(moe_fast.topk_route), run(moe_ref.topk_route), [logits], (0,), seed)


@pytest.mark.parametrize("t,e,k", [(1, 4, 1), (13, 6, 3), (200, 8, 4), (77, 64, 8)])
def test_fast_permute_plan_and_counts_identical(t, e, k):
    _, rng = fresh_rng()
    experts = _random_experts(rng, t, e, k)
    if t > 50:
        experts[: t // 2] = experts[0]                      # heavy skew: some experts empty
    blk = moe.default_block(t * k, e)
    got = moe.permute_plan(Tensor(experts), e, blk, impl="fast")
    want = moe.permute_plan(Tensor(experts), e, blk, impl="reference")
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    np.testing.assert_array_equal(moe.expert_counts(Tensor(experts), e, impl="fast").asnumpy(),
                                  np.bincount(experts.ravel(), minlength=e))


def permute_square_unpermute(perm, unperm, experts_t, num_experts):
    """(x, w) -> unperm(perm(x)², w): a permutation round trip with a non-linear "expert" between."""
    def fn(xx, ww):
        rows, order, _ = perm(xx, experts_t, num_experts)
        return unperm(rows * rows, order, ww)
    return fn


@pytest.mark.parametrize("t,e,k,h", [(1, 4, 2, 3), (19, 8, 4, 5), (64, 16, 2, 33)])
def test_sort_permute_unpermute_parity(t, e, k, h):
    """Expert-major rows (token order inside an expert), counts, the inverse + weighted combine,
    and gradients w.r.t. tokens and weights, fast vs the one-hot-matmul reference."""
    seed, rng = fresh_rng()
    experts = _random_experts(rng, t, e, k)
    x = rng.normal(size=(t, h)).astype(np.float32)
    w = rng.uniform(size=(t, k)).astype(np.float32)
    x_f, order_f, cnt_f = moe.sort_permute(Tensor(x), Tensor(experts), e, impl="fast")
    x_r, order_r, cnt_r = moe.sort_permute(Tensor(x), Tensor(experts), e, impl="reference")
    np.testing.assert_array_equal(order_f.asnumpy(), order_r.asnumpy())
    np.testing.assert_array_equal(cnt_f.asnumpy(), np.bincount(experts.ravel(), minlength=e))
    np.testing.assert_array_equal(cnt_r.asnumpy(), cnt_f.asnumpy())
    flat = experts.ravel()
    order = order_f.asnumpy()
    assert (np.diff(flat[order]) >= 0).all()                                  # grouped by expert
    np.testing.assert_array_equal(x_f.asnumpy(), x[order // k])
    ex_t = Tensor(experts)
    assert_parity(permute_square_unpermute(moe_fast.sort_permute, moe_fast.sort_unpermute, ex_t, e),
                  permute_square_unpermute(moe_ref.sort_permute, moe_ref.sort_unpermute, ex_t, e),
                  [x, w], (0, 1), seed)


def test_moe_resolve_impl_and_scope():
    assert moe.resolve_impl("permute_plan", "reference") == "reference"
    with impl_scope("reference"):
        assert all(moe.resolve_impl(op) == "reference" for op in moe.OPS)
    with impl_scope("fast"):
        assert all(moe.resolve_impl(op) == "fast" for op in moe.OPS)
    if ms.get_context("device_target") == "CPU":
        for op in moe.OPS:
            assert moe.resolve_impl(op) == ("fast" if moe.AUTO_FAST[op] else "reference")
    with pytest.raises(ValueError, match="op: unknown MoE op"):
        moe.resolve_impl("nope")
    with pytest.raises(ValueError, match="impl: unknown value"):
        moe.moge_route(Tensor(np.zeros((2, 4), np.float32)), 2, impl="bogus")


@pytest.mark.ascend
@pytest.mark.skipif(ms.get_context("device_target") != "Ascend",
                    reason="needs an Ascend NPU (moe_token_permute / moe_token_unpermute)")
def test_ascend_sort_permute_matches_reference():
    rng = np.random.default_rng()
    t, e, k, h = 32, 8, 2, 16
    experts, x = _random_experts(rng, t, e, k), rng.normal(size=(t, h)).astype(np.float32)
    w = rng.uniform(size=(t, k)).astype(np.float32)
    x_a, order_a, _ = moe.sort_permute(Tensor(x), Tensor(experts), e, impl="ascend")
    x_r, order_r, _ = moe.sort_permute(Tensor(x), Tensor(experts), e, impl="reference")
    np.testing.assert_allclose(x_a.asnumpy(), x_r.asnumpy(), rtol=1e-5)
    y_a = moe.sort_unpermute(x_a, order_a, Tensor(w), impl="ascend").asnumpy()
    y_r = moe.sort_unpermute(x_r, order_r, Tensor(w), impl="reference").asnumpy()
    np.testing.assert_allclose(y_a, y_r, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- CPU permutation kernels
needs_kernels = pytest.mark.skipif(not moe.kernels_available(),
                                   reason="ops.moe CPU kernels unavailable (no g++?)")


def _kernels():
    from ops.moe import fast_cpu
    return fast_cpu


@needs_kernels
@pytest.mark.parametrize("t,e,k,h", [(1, 4, 1, 1), (1, 4, 4, 3), (19, 8, 4, 5), (64, 16, 2, 33),
                                     (40, 64, 4, 16)])
def test_kernel_sort_permute_unpermute_parity(t, e, k, h):
    """Counting-sort plan == the reference's order/counts (incl. experts nobody chose: (40, 64, 4)
    leaves most of 64 experts empty, T=1 leaves all but K empty); permute / unpermute forward and
    gradients (tokens, weights) match the one-hot-matmul reference (PyNative)."""
    kern = _kernels()
    seed, rng = fresh_rng()
    experts = _random_experts(rng, t, e, k)
    x = rng.normal(size=(t, h)).astype(np.float32)
    w = rng.uniform(size=(t, k)).astype(np.float32)
    x_k, order_k, cnt_k = kern.sort_permute(Tensor(x), Tensor(experts), e)
    _, order_r, cnt_r = moe_ref.sort_permute(Tensor(x), Tensor(experts), e)
    np.testing.assert_array_equal(order_k.asnumpy(), order_r.asnumpy())
    np.testing.assert_array_equal(cnt_k.asnumpy(), cnt_r.asnumpy())
    np.testing.assert_array_equal(x_k.asnumpy(), x[order_k.asnumpy() // k])
    ex_t = Tensor(experts)
    assert_parity(permute_square_unpermute(kern.sort_permute, kern.sort_unpermute, ex_t, e),
                  permute_square_unpermute(moe_ref.sort_permute, moe_ref.sort_unpermute, ex_t, e),
                  [x, w], (0, 1), seed)


@needs_kernels
def test_kernel_permute_graph_mode_and_dispatch():
    """GRAPH mode (the training path): moe.sort_permute/sort_unpermute with impl "fast" (the kernels)
    vs the reference, loss and gradients; use_kernels(False) switches "fast" to the composition."""
    seed, rng = fresh_rng()
    t, e, k, h = 33, 16, 4, 20
    ex_t = Tensor(_random_experts(rng, t, e, k))
    x = Tensor(rng.normal(size=(t, h)).astype(np.float32))
    w = Tensor(rng.uniform(size=(t, k)).astype(np.float32))

    def make(impl):
        def loss(xx, ww):
            rows, od, cnt = moe.sort_permute(xx, ex_t, e, impl)
            y = moe.sort_unpermute(rows * rows + cnt.astype(ms.float32)[0], od, ww, impl)
            return (y * y).sum()
        return loss
    want = ms.value_and_grad(make("reference"), grad_position=(0, 1))(x, w)
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        got = ms.jit(ms.value_and_grad(make("fast"), grad_position=(0, 1)))(x, w)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert rel(got[0].asnumpy(), want[0].asnumpy()) <= 1e-5, seed
    for a, b in zip(got[1], want[1]):
        assert rel(a.asnumpy(), b.asnumpy()) <= 1e-5, seed
    moe.use_kernels(False)
    try:
        rows, order, cnt = moe.sort_permute(x, ex_t, e, "fast")
        assert not moe.kernels_available()
    finally:
        moe.use_kernels(True)
    assert moe.kernels_available()
    np.testing.assert_array_equal(order.asnumpy(), moe_ref.sort_permute(x, ex_t, e)[1].asnumpy())


@needs_kernels
def test_kernel_permute_bfloat16_and_bad_order():
    """Non-fp32 inputs are computed in fp32 and cast back; a non-permutation `order` is an error."""
    kern = _kernels()
    rng = np.random.default_rng(3)
    t, e, k, h = 6, 4, 2, 8
    experts = _random_experts(rng, t, e, k)
    x = Tensor(rng.normal(size=(t, h)).astype(np.float32))
    rows, order, _ = kern.sort_permute(x.astype(ms.bfloat16), Tensor(experts), e)
    assert rows.dtype == ms.bfloat16
    y = kern.sort_unpermute(rows, order, Tensor(np.ones((t, k), np.float32)))
    assert y.dtype == ms.bfloat16
    np.testing.assert_allclose(y.astype(ms.float32).asnumpy(),
                               k * x.astype(ms.bfloat16).astype(ms.float32).asnumpy(), rtol=1e-2)
    with pytest.raises(Exception):
        kern.sort_unpermute(rows.astype(ms.float32), Tensor(np.zeros(t * k, np.int32)),
                            Tensor(np.ones((t, k), np.float32))).asnumpy()
