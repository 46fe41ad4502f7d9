"""Shared parity helpers for tests/ops: fast path vs reference, forward and every input gradient.

Error metric (as in test_attention.py): rel(a, b) = max|a - b| / max|b| with b the reference,
required <= 1e-5 in fp32; where the reference is identically ~0 (max|b| < 1e-6) the absolute error
is checked instead. Inputs are fresh random draws every run; the seed is printed on failure.
"""
import numpy as np
import mindspore as ms
from mindspore import Tensor

TOL = 1e-5


def fresh_rng():
    """(seed, Generator) with a new seed every call (printed in failure messages)."""
    seed = int(np.random.SeedSequence().entropy % (2 ** 32))
    return seed, np.random.default_rng(seed)


def rel(a, b):
    den = np.abs(b).max() if b.size else 0.0
    return float(np.abs(a - b).max() / (den if den > 1e-6 else 1.0)) if b.size else 0.0


def value_and_grads(fn, args, cot, grad_positions):
    """fn(*args) (one tensor) and d<fn, cot>/d args[i] for i in grad_positions, as numpy."""
    tensors = [Tensor(a) for a in args]

    def loss(*xs):
        return (fn(*xs) * Tensor(cot)).sum()

    out = fn(*tensors).asnumpy()
    grads = ms.grad(loss, grad_position=tuple(grad_positions))(*tensors)
    if not isinstance(grads, (tuple, list)):
        grads = (grads,)
    return [out] + [g.asnumpy() for g in grads]


def assert_parity(fast, ref, args, grad_positions, seed, tol=TOL, rng=None):
    """Forward and the gradients w.r.t. args[grad_positions] of `fast` match `ref` to `tol`."""
    rng = rng or np.random.default_rng(seed)
    out_shape = ref(*[Tensor(a) for a in args]).shape
    cot = rng.normal(size=out_shape).astype(np.float32)
    got = value_and_grads(fast, args, cot, grad_positions)
    want = value_and_grads(ref, args, cot, grad_positions)
    names = ["out"] + [f"grad[{i}]" for i in grad_positions]
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape, (name, a.shape, b.shape, f"seed={seed}")
        err = rel(a, b)
        assert err <= tol, f"{name}: rel err {err:.2e} > {tol} (seed={seed}, shapes {[x.shape for x in args]})"
