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


# ----------------------------------------------------------------------------- fast path parity
import shutil  # noqa: E402

import mindspore as ms  # noqa: E402

import ops.rope as rope_ops  # noqa: E402
from ops.rope import mrope_tables, reference as rope_ref, rotary_tables_2d  # noqa: E402
from _parity import assert_parity, fresh_rng, rel  # noqa: E402

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ missing: no CPU kernel")


@needs_gxx
@pytest.mark.parametrize("layout", ["rotate_half", "interleaved"])
@pytest.mark.parametrize("shape,table_batch", [((1, 1, 1, 2), 1), ((2, 3, 7, 6), 2), ((3, 5, 13, 18), 1),
                                               ((2, 1, 33, 64), 2), ((1, 4, 9, 128), 1)])
def test_fast_matches_reference_fwd_and_grads(layout, shape, table_batch):
    """x, cos and sin gradients (arbitrary random tables, so the table gradients are exercised)."""
    seed, rng = fresh_rng()
    from ops.rope import fast_cpu
    b, n, s, d = shape
    x = rng.normal(size=shape).astype(np.float32)
    cos = rng.normal(size=(table_batch, 1, s, d)).astype(np.float32)
    sin = rng.normal(size=(table_batch, 1, s, d)).astype(np.float32)
    assert_parity(lambda a, c, t: fast_cpu.apply_rope(a, c, t, layout),
                  lambda a, c, t: rope_ref.apply_rope(a, c, t, layout), [x, cos, sin], (0, 1, 2), seed)


@needs_gxx
def test_fast_in_graph_mode_with_real_tables():
    seed, rng = fresh_rng()
    x = rng.normal(size=(2, 3, 11, 16)).astype(np.float32)
    pos = Tensor(rng.integers(0, 100, size=(2, 11)).astype(np.int32))
    impl = rope_ops.resolve_impl("fast")
    assert impl == "fast"
    for layout in ("rotate_half", "interleaved"):
        cos, sin = rotary_tables(pos, 16, 1e4, layout)

        def loss(a):
            return (apply_rope(a, cos, sin, layout, impl) ** 2).sum()

        def loss_ref(a):
            return (apply_rope(a, cos, sin, layout, "reference") ** 2).sum()

        got = ms.jit(ms.value_and_grad(loss))(Tensor(x))
        want = ms.value_and_grad(loss_ref)(Tensor(x))
        assert rel(got[0].asnumpy(), want[0].asnumpy()) <= 1e-5, seed
        assert rel(got[1].asnumpy(), want[1].asnumpy()) <= 1e-5, seed


# ----------------------------------------------------------------------------- 2-D and M-RoPE tables
def test_rotary_tables_2d_matches_numpy():
    """First D/4 pairs rotate by the row, last D/4 by the column (Qwen2.5-VL vision RoPE)."""
    _, rng = fresh_rng()
    d, theta = 16, 1e4
    rows = rng.integers(0, 20, size=(2, 9)).astype(np.int32)
    cols = rng.integers(0, 20, size=(2, 9)).astype(np.int32)
    cos, sin = rotary_tables_2d(Tensor(rows), Tensor(cols), d, theta)
    f = 1.0 / theta ** (np.arange(0, d // 2, 2) / (d // 2))                          # [D/4]
    ang = np.concatenate([rows[..., None] * f, cols[..., None] * f], -1)              # [B, P, D/2]
    ang = np.concatenate([ang, ang], -1)[:, None]
    np.testing.assert_allclose(cos.asnumpy(), np.cos(ang), atol=2e-6)
    np.testing.assert_allclose(sin.asnumpy(), np.sin(ang), atol=2e-6)
    with pytest.raises(ValueError, match="dim: 2-D rotary dim 6"):
        rotary_tables_2d(Tensor(rows), Tensor(cols), 6, theta)


@pytest.mark.parametrize("layout", ["rotate_half", "interleaved"])
def test_mrope_equal_streams_is_1d_rope_and_sections_pick_streams(layout):
    _, rng = fresh_rng()
    d, theta, sections = 16, 1e4, (2, 3, 3)
    pos = rng.integers(0, 50, size=(2, 7)).astype(np.int32)
    c3, s3 = mrope_tables(Tensor(np.repeat(pos[:, None], 3, 1)), d, theta, sections, layout)
    c1, s1 = rotary_tables(Tensor(pos), d, theta, layout)
    np.testing.assert_array_equal(c3.asnumpy(), c1.asnumpy())
    np.testing.assert_array_equal(s3.asnumpy(), s1.asnumpy())
    # distinct streams: pair k uses stream t < 2, row 2 <= k < 5, column k >= 5
    ids = rng.integers(0, 50, size=(1, 3, 5)).astype(np.int32)
    c, _ = mrope_tables(Tensor(ids), d, theta, sections, layout)
    f = 1.0 / theta ** (np.arange(0, d, 2) / d)
    stream = np.repeat(np.arange(3), sections)
    ang_h = ids[0][stream].T * f                                                     # [S, D/2]
    ang = np.concatenate([ang_h, ang_h], -1) if layout == "rotate_half" else np.repeat(ang_h, 2, -1)
    np.testing.assert_allclose(c.asnumpy()[0, 0], np.cos(ang), atol=2e-6)
    with pytest.raises(ValueError, match="sections:"):
        mrope_tables(Tensor(ids), d, theta, (2, 2, 2))


def test_mindvl_uses_the_ops_tables():
    """MindVL's table helpers are the ops.rope ones (moved there; no copy)."""
    mindvl_model = pytest.importorskip("mindvl.model")
    vision = pytest.importorskip("mindvl.vision")
    assert mindvl_model.mrope_tables is mrope_tables
    pos = Tensor(np.random.default_rng().integers(0, 9, size=(1, 6, 2)).astype(np.int32))
    c, _ = vision.vision_rotary_tables(pos, 16, 1e4)
    c2, _ = rotary_tables_2d(pos[:, :, 0], pos[:, :, 1], 16, 1e4)
    np.testing.assert_array_equal(c.asnumpy(), c2.asnumpy())


@pytest.mark.ascend
@pytest.mark.skipif(ms.get_context("device_target") != "Ascend",
                    reason="needs an Ascend NPU (fused ops.rotary_position_embedding)")
@pytest.mark.parametrize("layout", ["rotate_half", "interleaved"])
def test_ascend_matches_reference(layout):
    rng = np.random.default_rng()
    x = rng.normal(size=(2, 4, 8, 64)).astype(np.float32)
    cos, sin = rotary_tables(Tensor(np.tile(np.arange(8, dtype=np.int32), (2, 1))), 64, 1e4, layout)
    got = apply_rope(Tensor(x), cos, sin, layout, "ascend").asnumpy()
    assert rel(got, rope_ref.apply_rope(Tensor(x), cos, sin, layout).asnumpy()) <= 1e-4
