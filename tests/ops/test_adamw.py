"""ops.adamw: the reference update vs a float64 numpy AdamW; the one-pass CPU kernels vs the reference
(several steps, with and without weight decay and clipping scale, sizes below and above the
kernel's threading threshold, 1 and 2 kernel threads); sum_squares vs numpy; the optimiser picks
the kernel by `optimizer.impl` and trains identically with either."""
import shutil

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

import ops.adamw as adamw
from ops.adamw import reference as ref

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ missing: no CPU kernel")


def _hyper(lr, step, scale, beta1=0.9, beta2=0.95, eps=1e-8, wd=0.1):
    return np.array([lr, 1 - beta1 ** step, 1 - beta2 ** step, scale, beta1, beta2, eps, wd], np.float32)


def _numpy_adamw(p, m, v, g, h):
    lr, b1c, b2c, scale, beta1, beta2, eps, wd = (float(x) for x in h)
    g = g.astype(np.float64) * scale
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    return p - lr * ((m / b1c) / (np.sqrt(v / b2c) + eps) + wd * p), m, v


def test_reference_matches_numpy_over_steps():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(33, 17)).astype(np.float32)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    want = (p.astype(np.float64), m.astype(np.float64), v.astype(np.float64))
    got = (p, m, v)
    for step in range(1, 6):
        g = rng.normal(size=p.shape).astype(np.float32)
        h = _hyper(1e-2, step, scale=0.5 if step % 2 else 1.0, wd=0.1 if step < 4 else 0.0)
        want = _numpy_adamw(*want, g, h)
        got = tuple(t.asnumpy() for t in ref.adamw_update(*(Tensor(x) for x in got), Tensor(g), Tensor(h)))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)


@needs_gxx
@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("shape", [(1,), (7,), (129, 67), (40000,), (3, 257, 129)])
def test_fast_matches_reference(shape, threads, monkeypatch):
    monkeypatch.setenv("PANGU_OPS_THREADS", threads)
    from ops.adamw import fast_cpu
    rng = np.random.default_rng(sum(shape))
    p = rng.normal(size=shape).astype(np.float32)
    states = {"fast": (p, np.zeros_like(p), np.zeros_like(p)), "ref": (p, np.zeros_like(p), np.zeros_like(p))}
    for step in range(1, 5):
        g = (rng.normal(size=shape) * rng.choice([1e-4, 1.0, 30.0])).astype(np.float32)
        h = Tensor(_hyper(3e-3, step, scale=0.25 if step == 2 else 1.0, wd=0.0 if step == 3 else 0.1))
        for name, fn in (("fast", fast_cpu.adamw_update), ("ref", ref.adamw_update)):
            states[name] = tuple(t.asnumpy() for t in fn(*(Tensor(x) for x in states[name]), Tensor(g), h))
    for a, b in zip(states["fast"], states["ref"]):  # (param, m, v): float32 rounding of each tensor's scale
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.abs(b).max()))


@needs_gxx
@pytest.mark.parametrize("shape", [(1,), (1000,), (70001,), (64, 513)])
def test_sum_squares(shape):
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    want = float((x.astype(np.float64) ** 2).sum())
    for impl in ("reference", "fast"):
        got = adamw.sum_squares(Tensor(x), adamw.resolve_impl(impl))
        assert got.shape == ()
        assert abs(float(got.asnumpy()) - want) <= 1e-5 * want


def test_unknown_impl_is_one_line_error():
    with pytest.raises(ValueError, match="impl: unknown value 'fastest'"):
        adamw.resolve_impl("fastest")


@needs_gxx
def test_optimizer_trains_identically_with_kernel_and_reference():
    """The AdamW cell (GRAPH mode, update_if with a clip scale) with optimizer.impl fast vs reference."""
    from mindspore import Parameter
    from recipes.engine.config import OptimizerConfig
    from recipes.engine.optim import AdamW

    rng = np.random.default_rng(2)
    init = {"w": rng.normal(size=(48, 40)).astype(np.float32), "norm": rng.normal(size=(40,)).astype(np.float32)}
    grads = [tuple(rng.normal(size=a.shape).astype(np.float32) for a in init.values()) for _ in range(4)]
    finals = {}
    for impl in ("fast", "reference"):
        params = [Parameter(Tensor(a.copy()), name=n) for n, a in init.items()]
        opt = AdamW(params, OptimizerConfig(lr=1e-2, impl=impl))
        assert opt.impl == impl

        @ms.jit
        def step(gs, lr, scale):
            return opt.update_if(Tensor(True), gs, lr, scale)

        for i, gs in enumerate(grads):
            step(tuple(Tensor(g) for g in gs), Tensor(1e-2, ms.float32), Tensor(0.5 if i % 2 else 1.0, ms.float32))
        finals[impl] = [p.asnumpy() for p in params] + [int(opt.step.asnumpy())]
    assert finals["fast"][-1] == finals["reference"][-1] == 4
    for a, b in zip(finals["fast"][:-1], finals["reference"][:-1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(finals["fast"][1], init["norm"])  # the update ran (norms: no decay, still moved)
