"""ops.rms_norm: reference vs numpy; fused CPU kernel vs reference (forward + dx + dw, fresh random
inputs, odd shapes, PyNative and GRAPH); dispatch and the ops_impl scope."""
import shutil

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

import ops.rms_norm as rn
from ops._dispatch import impl_scope
from ops.rms_norm import reference as ref, rms_norm
from _parity import assert_parity, fresh_rng, rel

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ missing: no CPU kernel")


@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_rms_norm_matches_numpy(eps):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 16)).astype(np.float32)
    w = rng.normal(size=(16,)).astype(np.float32)
    want = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps) * w
    for impl in ("reference", "fast", "auto"):
        got = rms_norm(Tensor(x), Tensor(w), eps, impl=impl).asnumpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@needs_gxx
@pytest.mark.parametrize("shape", [(1, 8), (3, 5, 37), (2, 7, 129), (257, 64), (4, 1000)])
def test_fast_matches_reference_fwd_and_grads(shape):
    seed, rng = fresh_rng()
    from ops.rms_norm import fast_cpu
    eps = float(rng.choice([1e-6, 1e-5, 1e-2]))
    x = (rng.normal(size=shape) * rng.uniform(0.1, 10)).astype(np.float32)
    w = rng.normal(size=shape[-1:]).astype(np.float32)
    assert_parity(lambda a, b: fast_cpu.rms_norm(a, b, eps), lambda a, b: ref.rms_norm(a, b, eps),
                  [x, w], (0, 1), seed)


@needs_gxx
@pytest.mark.parametrize("threads", ["2", "3"])
def test_fast_matches_reference_with_several_kernel_threads(threads, monkeypatch):
    """PANGU_OPS_THREADS > 1 (default 1): rows split over threads, dw summed over per-thread parts."""
    monkeypatch.setenv("PANGU_OPS_THREADS", threads)
    seed, rng = fresh_rng()
    from ops.rms_norm import fast_cpu
    x = rng.normal(size=(37, 65)).astype(np.float32)
    w = rng.normal(size=(65,)).astype(np.float32)
    assert_parity(lambda a, b: fast_cpu.rms_norm(a, b, 1e-6), lambda a, b: ref.rms_norm(a, b, 1e-6),
                  [x, w], (0, 1), seed)


@needs_gxx
def test_fast_in_graph_mode():
    seed, rng = fresh_rng()
    x = rng.normal(size=(6, 33)).astype(np.float32)
    w = rng.normal(size=(33,)).astype(np.float32)
    impl = rn.resolve_impl("fast")                      # load outside the graph
    assert impl == "fast"

    def loss(a, b):
        return (rms_norm(a, b, 1e-5, impl) ** 2).sum()

    def loss_ref(a, b):
        return (rms_norm(a, b, 1e-5, "reference") ** 2).sum()

    got = ms.jit(ms.value_and_grad(loss, grad_position=(0, 1)))(Tensor(x), Tensor(w))
    want = ms.value_and_grad(loss_ref, grad_position=(0, 1))(Tensor(x), Tensor(w))
    assert rel(got[0].asnumpy(), want[0].asnumpy()) <= 1e-5, seed
    for g, h in zip(got[1], want[1]):
        assert rel(g.asnumpy(), h.asnumpy()) <= 1e-5, seed


def test_impl_scope_and_resolution():
    assert rn.resolve_impl("reference") == "reference"
    with impl_scope("reference"):
        assert rn.resolve_impl("auto") == "reference"
        assert rn.resolve_impl("fast") in ("fast", "reference")      # explicit wins over the scope
    if shutil.which("g++"):
        assert rn.resolve_impl("auto") == ("fast" if rn.AUTO_FAST else "reference")


def test_unknown_impl():
    with pytest.raises(ValueError, match="impl: unknown value"):
        rms_norm(Tensor(np.ones((2, 4), np.float32)), Tensor(np.ones(4, np.float32)), impl="x")


@pytest.mark.ascend
@pytest.mark.skipif(ms.get_context("device_target") != "Ascend", reason="needs an Ascend NPU (fused ops.rms_norm)")
def test_ascend_matches_reference():
    rng = np.random.default_rng()
    x, w = rng.normal(size=(4, 64)).astype(np.float32), rng.normal(size=64).astype(np.float32)
    got = rms_norm(Tensor(x), Tensor(w), 1e-5, "ascend").asnumpy()
    assert rel(got, ref.rms_norm(Tensor(x), Tensor(w), 1e-5).asnumpy()) <= 1e-4
