"""ops.rope: tables and rotation vs a hand (numpy) computation, both layouts."""
import numpy as np
import pytest
from mindspore import Tensor

from ops.rope import apply_rope, rotary_tables


def _np_rope(x, pos, theta, layout):
    """Rotate each pair (a, b) by angle pos * theta^(-2i/d): (a cos - b sin, b cos + a sin)."""
    d = x.shape[-1]
    freqs = 1.0 / theta ** (np.arange(0, d, 2) / d)
    out = np.empty_like(x, dtype=np.float64)
    for i in range(d // 2):
        ia, ib = (i, i + d // 2) if layout == "rotate_half" else (2 * i, 2 * i + 1)
        ang = pos[:, None, :] * freqs[i]                                     # [B, 1, S]
        a, b = x[..., ia], x[..., ib]
        out[..., ia] = a * np.cos(ang) - b * np.sin(ang)
        out[..., ib] = b * np.cos(ang) + a * np.sin(ang)
    return out


@pytest.mark.parametrize("layout", ["rotate_half", "interleaved"])
def test_apply_rope_matches_hand_computation(layout):
    rng = np.random.default_rng(0)
    b, n, s, d, theta = 2, 3, 7, 8, 1e4
    x = rng.normal(size=(b, n, s, d)).astype(np.float32)
    pos = np.stack([np.arange(s), np.array([0, 1, 2, 0, 1, 2, 3])]).astype(np.int32)
    cos, sin = rotary_tables(Tensor(pos), d, theta, layout)
    assert cos.shape == (b, 1, s, d)
    got = apply_rope(Tensor(x), cos, sin, layout, impl="reference").asnumpy()
    np.testing.assert_allclose(got, _np_rope(x, pos.astype(np.float64), theta, layout),
                               atol=2e-5, rtol=1e-5)
    fast = apply_rope(Tensor(x), cos, sin, layout, impl="auto").asnumpy()
    np.testing.assert_allclose(fast, got, atol=1e-6)


def test_table_layouts():
    pos = Tensor(np.arange(4, dtype=np.int32)[None])
    cos_h, _ = rotary_tables(pos, 8, 100.0, "rotate_half")
    cos_i, _ = rotary_tables(pos, 8, 100.0, "interleaved")
    ch, ci = cos_h.asnumpy()[0, 0], cos_i.asnumpy()[0, 0]
    np.testing.assert_allclose(ch[:, :4], ch[:, 4:])                        # [f0..f3, f0..f3]
    np.testing.assert_allclose(ci[:, 0::2], ci[:, 1::2])                    # [f0, f0, f1, f1..]
    np.testing.assert_allclose(ch[:, :4], ci[:, 0::2])


def test_relative_position_property():
    """<rope(q, m), rope(k, n)> depends only on m - n."""
    rng = np.random.default_rng(1)
    q = rng.normal(size=(1, 1, 1, 16)).astype(np.float32)
    k = rng.normal(size=(1, 1, 1, 16)).astype(np.float32)

    def dot(m, n):
        cm, sm = rotary_tables(Tensor(np.array([[m]], np.int32)), 16, 1e4)
        cn, sn = rotary_tables(Tensor(np.array([[n]], np.int32)), 16, 1e4)
        return float((apply_rope(Tensor(q), cm, sm).asnumpy()
                      * apply_rope(Tensor(k), cn, sn).asnumpy()).sum())
    assert abs(dot(5, 2) - dot(13, 10)) < 1e-4


def test_bad_layout_message():
    with pytest.raises(ValueError, match="layout: unknown rope layout"):
        rotary_tables(Tensor(np.zeros((1, 2), np.int32)), 8, 1e4, "bogus")
