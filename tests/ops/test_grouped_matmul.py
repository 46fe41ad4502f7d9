"""ops.grouped_matmul: reference vs numpy; dnnl_sgemm CPU kernel vs reference (forward, dx, dw) on
fresh random uneven counts (empty experts, rows past sum(counts), one expert, strided inputs),
PyNative and GRAPH; thread splitting; shape errors."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

import ops.grouped_matmul as gm
from ops.grouped_matmul import grouped_matmul, reference as ref
from _parity import assert_parity, fresh_rng, rel

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ missing: no CPU kernel")


def _np_gmm(x, w, counts):
    y = np.zeros((x.shape[0], w.shape[1]), np.float64)
    o = 0
    for e, c in enumerate(counts):
        y[o:o + c] = x[o:o + c].astype(np.float64) @ w[e].T.astype(np.float64)
        o += c
    return y


def _inputs(rng, a, k, n, counts):
    x = rng.normal(size=(a, k)).astype(np.float32)
    w = rng.normal(size=(len(counts), n, k)).astype(np.float32)
    return x, w, np.asarray(counts, np.int32)


def _random_counts(rng, a, e):
    """Uneven counts summing to <= a, with some empty experts."""
    used = int(rng.integers(a // 2, a + 1))
    p = rng.dirichlet(np.full(e, 0.5))
    p[rng.random(e) < 0.3] = 0
    if p.sum() == 0:
        p[0] = 1
    counts = np.floor(p / p.sum() * used).astype(np.int32)
    return counts


def test_reference_matches_numpy():
    rng = np.random.default_rng(0)
    x, w, c = _inputs(rng, 13, 6, 5, [4, 0, 6, 1])      # rows 11, 12 belong to no expert
    got = ref.grouped_matmul(Tensor(x), Tensor(w), Tensor(c)).asnumpy()
    np.testing.assert_allclose(got, _np_gmm(x, w, c), rtol=1e-5, atol=1e-5)
    assert not got[11:].any()


@needs_gxx
@pytest.mark.parametrize("a,k,n,counts", [
    (1, 1, 1, [1]),                            # single expert, single row
    (37, 9, 5, [37]),                          # single expert, all rows
    (40, 16, 24, [0, 7, 0, 20, 5, 0]),         # empty experts + 8 rows past the sum
    (25, 8, 8, [0, 0, 0]),                     # no rows at all: y, dx, dw all 0
    (64, 33, 17, None),                        # random uneven counts
    (700, 96, 80, None),                       # big enough to be split over threads
])
def test_fast_matches_reference_fwd_and_grads(a, k, n, counts):
    seed, rng = fresh_rng()
    from ops.grouped_matmul import fast_cpu
    counts = _random_counts(rng, a, 8) if counts is None else counts
    x, w, c = _inputs(rng, a, k, n, counts)

    def fast(x_, w_):
        return fast_cpu.grouped_matmul(x_, w_, Tensor(c))

    def slow(x_, w_):
        return ref.grouped_matmul(x_, w_, Tensor(c))

    assert_parity(fast, slow, [x, w], (0, 1), seed)
    y = fast(Tensor(x), Tensor(w)).asnumpy()
    np.testing.assert_allclose(y, _np_gmm(x, w, c), rtol=1e-4, atol=1e-4 * max(1, np.abs(y).max()))
    assert not y[int(c.sum()):].any()                    # rows past sum(counts) are exactly 0


@needs_gxx
def test_rows_past_sum_get_zero_dx_and_empty_experts_zero_dw():
    seed, rng = fresh_rng()
    x, w, c = _inputs(rng, 30, 12, 10, [5, 0, 9, 0])
    dx, dw = ms.grad(lambda a, b: (grouped_matmul(a, b, Tensor(c), "fast") ** 2).sum(),
                     grad_position=(0, 1))(Tensor(x), Tensor(w))
    dx, dw = dx.asnumpy(), dw.asnumpy()
    assert not dx[14:].any() and np.abs(dx[:14]).min(1).all(), seed
    assert not dw[1].any() and not dw[3].any() and dw[0].any() and dw[2].any(), seed


@needs_gxx
def test_strided_inputs_and_bfloat16():
    """Non-contiguous views (a transposed x, a strided slice of w) and bf16 compute in fp32."""
    seed, rng = fresh_rng()
    c = np.array([3, 0, 11, 6], np.int32)
    x_ka = rng.normal(size=(14, 23)).astype(np.float32)
    w_big = rng.normal(size=(4, 18, 14)).astype(np.float32)
    x_t, w_t = Tensor(x_ka).T, Tensor(w_big)[:, ::2]            # [23, 14], [4, 9, 14]
    want = _np_gmm(x_ka.T, w_big[:, ::2], c)
    for impl in ("fast", "reference"):
        got = grouped_matmul(x_t, w_t, Tensor(c), impl).asnumpy()
        assert rel(got, want) <= 1e-5, (impl, seed)
    y16 = grouped_matmul(x_t.astype(ms.bfloat16), w_t.astype(ms.bfloat16), Tensor(c), "fast")
    r16 = grouped_matmul(x_t.astype(ms.bfloat16), w_t.astype(ms.bfloat16), Tensor(c), "reference")
    assert y16.dtype == ms.bfloat16
    assert rel(y16.astype(ms.float32).asnumpy(), r16.astype(ms.float32).asnumpy()) <= 1e-2


@needs_gxx
def test_fast_in_graph_mode():
    seed, rng = fresh_rng()
    x, w, c = _inputs(rng, 50, 20, 12, [10, 0, 25, 9, 0])
    impl = gm.resolve_impl("fast")
    assert impl == "fast"

    def loss(a, b, cnt):
        return (grouped_matmul(a, b, cnt, impl) ** 2).sum()

    def loss_ref(a, b, cnt):
        return (grouped_matmul(a, b, cnt, "reference") ** 2).sum()

    args = (Tensor(x), Tensor(w), Tensor(c))
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        got = ms.jit(ms.value_and_grad(loss, grad_position=(0, 1)))(*args)
        want = ms.jit(ms.value_and_grad(loss_ref, grad_position=(0, 1)))(*args)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert rel(got[0].asnumpy(), want[0].asnumpy()) <= 1e-5, seed
    for a, b in zip(got[1], want[1]):
        assert rel(a.asnumpy(), b.asnumpy()) <= 1e-5, seed


_SPLIT_CHECK = """
import numpy as np, mindspore as ms
from mindspore import Tensor
from ops.grouped_matmul import fast_cpu, reference as ref
rng = np.random.default_rng(3)
c = np.array([301, 0, 7, 190, 1, 0, 260], np.int32)          # 759 of 800 rows
x, w = rng.normal(size=(800, 192)).astype(np.float32), rng.normal(size=(7, 160, 192)).astype(np.float32)
cot = Tensor(rng.normal(size=(800, 160)).astype(np.float32))
def run(f):
    g = ms.grad(lambda a, b: (f(a, b, Tensor(c)) * cot).sum(), grad_position=(0, 1))
    return [f(Tensor(x), Tensor(w), Tensor(c)).asnumpy()] + [t.asnumpy() for t in g(Tensor(x), Tensor(w))]
for a, b in zip(run(fast_cpu.grouped_matmul), run(ref.grouped_matmul)):
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max(), np.abs(a - b).max()
print("ok")
"""


@needs_gxx
def test_uneven_split_over_many_threads():
    """PANGU_GMM_THREADS=5: ~11 (fwd) / ~20 (bwd) equal-FLOP parts whose cuts fall inside experts
    (rows of x / dx and output rows of dw), taken by 5 threads."""
    env = dict(os.environ, PANGU_GMM_THREADS="5")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", _SPLIT_CHECK], env=env, cwd=root,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


@pytest.mark.parametrize("xs,ws,cs", [((6, 4), (3, 5, 8), (3,)), ((6, 4), (3, 5, 4), (2,)),
                                      ((2, 6, 4), (3, 5, 4), (3,)), ((6, 4), (5, 4), (3,))])
def test_shape_mismatch_is_one_line_value_error(xs, ws, cs):
    with pytest.raises(ValueError, match=r"^grouped_matmul: shapes x .* do not match; need x \[A, K\]") as e:
        grouped_matmul(Tensor(np.zeros(xs, np.float32)), Tensor(np.zeros(ws, np.float32)),
                       Tensor(np.zeros(cs, np.int32)), "reference")
    assert "\n" not in str(e.value)


def test_missing_dnnl_fails_build_with_one_line_message_and_auto_falls_back(monkeypatch):
    from ops import _build
    missing = _build.mindspore_lib("libdnnl_missing.so.9", "dnnl_sgemm")
    kernel = _build.Kernel("gmm_probe", _build.KERNELS["grouped_matmul"].source, link=missing)
    assert not kernel.is_built()
    with pytest.raises(RuntimeError, match=r"^libdnnl_missing.so.9 not found in mindspore's lib "
                                           r"directory .*; reinstall .* or use impl=reference$"):
        kernel.ensure_built()
    with pytest.raises(RuntimeError, match=r"does not provide no_such_symbol"):
        _build.mindspore_lib("libdnnl.so.3", "no_such_symbol")()
    # the op's auto/fast then resolve to the reference (with a warning), as when g++ is missing
    monkeypatch.setattr(_build.KERNELS["grouped_matmul"], "link", missing)
    monkeypatch.delitem(sys.modules, "ops.grouped_matmul.fast_cpu", raising=False)
    monkeypatch.setattr(gm.FAST, "ready", False)
    monkeypatch.setattr(gm.FAST, "_tried", False)
    with pytest.warns(UserWarning, match="libdnnl_missing.so.9 not found"):
        assert gm.resolve_impl("auto") == "reference"
    assert gm.resolve_impl("fast") == "reference"
