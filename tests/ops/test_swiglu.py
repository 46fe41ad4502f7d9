"""ops.swiglu reference vs numpy."""
import numpy as np
from mindspore import Tensor

from ops.swiglu import swiglu


def test_swiglu_matches_numpy():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(4, 6)).astype(np.float32) * 3
    u = rng.normal(size=(4, 6)).astype(np.float32)
    want = g / (1 + np.exp(-g.astype(np.float64))) * u
    got = swiglu(Tensor(g), Tensor(u)).asnumpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
