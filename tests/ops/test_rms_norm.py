"""ops.rms_norm reference vs numpy."""
import numpy as np
import pytest
from mindspore import Tensor

from ops.rms_norm import rms_norm


@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_rms_norm_matches_numpy(eps):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 16)).astype(np.float32)
    w = rng.normal(size=(16,)).astype(np.float32)
    want = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps) * w
    got = rms_norm(Tensor(x), Tensor(w), eps, impl="auto").asnumpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_unknown_impl():
    with pytest.raises(ValueError, match="impl: unknown value"):
        rms_norm(Tensor(np.ones((2, 4), np.float32)), Tensor(np.ones(4, np.float32)), impl="x")
