"""ops.swiglu: reference vs numpy; fused CPU kernel vs reference (forward + both gradients, fresh
random inputs incl. saturated gates, odd sizes, PyNative and GRAPH)."""
import shutil

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

import ops.swiglu as sw
from ops.swiglu import reference as ref, swiglu
from _parity import assert_parity, fresh_rng, rel

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ missing: no CPU kernel")


def test_swiglu_matches_numpy():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(4, 6)).astype(np.float32) * 3
    u = rng.normal(size=(4, 6)).astype(np.float32)
    want = g / (1 + np.exp(-g.astype(np.float64))) * u
    for impl in ("reference", "fast", "auto"):
        got = swiglu(Tensor(g), Tensor(u), impl).asnumpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@needs_gxx
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5, 37), (129, 67), (2, 3, 4, 1001)])
def test_fast_matches_reference_fwd_and_grads(shape):
    seed, rng = fresh_rng()
    from ops.swiglu import fast_cpu
    g = (rng.normal(size=shape) * rng.choice([1.0, 5.0, 30.0])).astype(np.float32)
    u = rng.normal(size=shape).astype(np.float32)
    assert_parity(fast_cpu.swiglu, ref.swiglu, [g, u], (0, 1), seed)


@needs_gxx
def test_fast_in_graph_mode():
    seed, rng = fresh_rng()
    g, u = (rng.normal(size=(5, 19)).astype(np.float32) for _ in range(2))
    impl = sw.resolve_impl("fast")
    assert impl == "fast"

    def loss(a, b):
        return (swiglu(a, b, impl) ** 2).sum()

    def loss_ref(a, b):
        return (swiglu(a, b, "reference") ** 2).sum()

    got = ms.jit(ms.value_and_grad(loss, grad_position=(0, 1)))(Tensor(g), Tensor(u))
    want = ms.value_and_grad(loss_ref, grad_position=(0, 1))(Tensor(g), Tensor(u))
    assert rel(got[0].asnumpy(), want[0].asnumpy()) <= 1e-5, seed
    for a, b in zip(got[1], want[1]):
        assert rel(a.asnumpy(), b.asnumpy()) <= 1e-5, seed


@pytest.mark.ascend
@pytest.mark.skipif(ms.get_context("device_target") != "Ascend", reason="needs an Ascend NPU (fused ops.swiglu)")
def test_ascend_matches_reference():
    rng = np.random.default_rng()
    g, u = (rng.normal(size=(4, 64)).astype(np.float32) for _ in range(2))
    got = swiglu(Tensor(g), Tensor(u), "ascend").asnumpy()
    assert rel(got, ref.swiglu(Tensor(g), Tensor(u)).asnumpy()) <= 1e-4
