"""Parity tests: FastAttention CPU custom op (ops/attention/fast_cpu.py) vs a float64 numpy reference
and vs ops/attention/reference.py, forward and all input gradients, PyNative and GRAPH mode.

Inputs are fresh random draws every run (the seed is printed in failure messages to reproduce).
Error metric: rel(a, b) = max|a - b| / max|b| (b = reference), required <= 1e-5 in fp32.
Where the exact gradient is identically 0 (max|b| < 1e-6, e.g. dq, dk for S = 1: dS = P * (dP - D)
cancels exactly) the absolute error max|a| is checked instead (fp32 leaves ~1e-7 of rounding).

Legend: B batch, N query heads, K kv heads, S sequence, D qk head dim, E v head dim.
"""
import shutil

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

pytest.importorskip("ops.attention.build")
if shutil.which("g++") is None:
    pytest.skip("g++ not available: the fast attention kernel cannot be built", allow_module_level=True)

from ops.attention import build as fa_build  # noqa: E402
from ops.attention import fast_cpu  # noqa: E402

TOL = 1e-5


def rel(a, b):
    den = np.abs(b).max()
    return float(np.abs(a - b).max() / (den if den > 1e-6 else 1.0))


def random_segments(rng, B, S, max_docs=7):
    """[B, S] int32: 1..n documents (n in 1..max_docs) packed left to right, then 0-padding."""
    seg = np.zeros((B, S), np.int32)
    for b in range(B):
        pad = int(rng.integers(0, S // 4 + 1)) if S > 1 else 0
        used = S - pad
        n = int(rng.integers(1, min(max_docs, used) + 1))
        cuts = np.sort(rng.choice(np.arange(1, used), size=n - 1, replace=False)) if n > 1 else []
        bounds = [0, *cuts, used]
        for d in range(n):
            seg[b, bounds[d]:bounds[d + 1]] = d + 1
    return seg


def numpy_attention(q_BNSD, k_BKSD, v_BKSE, seg_BS, causal, scale, do_BNSE):
    """float64 forward and backward (explicit softmax) -> out, dq, dk, dv."""
    q, k, v, do = (x.astype(np.float64) for x in (q_BNSD, k_BKSD, v_BKSE, do_BNSE))
    B, N, S, _ = q.shape
    K = k.shape[1]
    G = N // K
    kk, vv = np.repeat(k, G, 1), np.repeat(v, G, 1)
    seg = np.ones((B, S), np.int32) if seg_BS is None else seg_BS
    allowed = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] != 0)
    if causal:
        allowed &= np.tril(np.ones((S, S), bool))
    allowed = allowed[:, None]                                                # [B, 1, S, S]
    s = np.where(allowed, np.einsum("bnid,bnjd->bnij", q, kk) * scale, -np.inf)
    m = s.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(s - m)
    den = p.sum(-1, keepdims=True)
    p = np.where(den > 0, p / np.where(den > 0, den, 1.0), 0.0)
    out = np.einsum("bnij,bnje->bnie", p, vv)
    dv = np.einsum("bnij,bnie->bnje", p, do)
    dp = np.einsum("bnie,bnje->bnij", do, vv)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    dq = np.einsum("bnij,bnjd->bnid", ds, kk) * scale
    dk = np.einsum("bnij,bnid->bnjd", ds, q) * scale
    dk = dk.reshape(B, K, G, S, -1).sum(2)
    dv = dv.reshape(B, K, G, S, -1).sum(2)
    return out, dq, dk, dv


def make_inputs(seed, B, N, K, S, D, E, docs=True):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, N, S, D)).astype(np.float32)
    k = rng.standard_normal((B, K, S, D)).astype(np.float32)
    v = rng.standard_normal((B, K, S, E)).astype(np.float32)
    do = rng.standard_normal((B, N, S, E)).astype(np.float32)
    seg = random_segments(rng, B, S) if docs else None
    return q, k, v, seg, do


def fast_fwd_bwd(q, k, v, seg, do, causal, scale, block_q, block_k, jit=False):
    def loss(q_, k_, v_, seg_, do_):
        out = fast_cpu.fast_attention(q_, k_, v_, seg_, causal, scale, block_q, block_k)
        return (out * do_).sum(), out

    grad_fn = ms.value_and_grad(loss, grad_position=(0, 1, 2), has_aux=True)
    if jit:
        grad_fn = ms.jit(grad_fn)
    seg_t = None if seg is None else Tensor(seg)
    (_, out), (dq, dk, dv) = grad_fn(Tensor(q), Tensor(k), Tensor(v), seg_t, Tensor(do))
    return out.asnumpy(), dq.asnumpy(), dk.asnumpy(), dv.asnumpy()


def check_parity(shape, causal, docs=True, block_q=64, block_k=64, jit=False, scale=None):
    B, N, K, S, D, E = shape
    seed = int(np.random.default_rng().integers(2 ** 31))
    q, k, v, seg, do = make_inputs(seed, B, N, K, S, D, E, docs)
    scale = D ** -0.5 if scale is None else scale
    got = fast_fwd_bwd(q, k, v, seg, do, causal, scale, block_q, block_k, jit)
    want = numpy_attention(q, k, v, seg, causal, scale, do)
    errs = {name: rel(g, w) for name, g, w in zip(("out", "dq", "dk", "dv"), got, want)}
    msg = f"seed={seed} shape={shape} causal={causal} blocks={block_q}/{block_k} seg={seg} errs={errs}"
    assert all(e <= TOL for e in errs.values()), msg
    return errs


# Odd lengths, causal and not, 1-7 documents plus padding; a mix of outer tile sizes (smaller than,
# equal to and larger than S) so that skipped, full and partial tiles all occur.
@pytest.mark.parametrize("S", [1, 7, 33, 130])
@pytest.mark.parametrize("causal", [True, False])
def test_parity_lengths_and_documents(S, causal):
    check_parity((2, 2, 2, S, 32, 32), causal, block_q=16, block_k=32)


@pytest.mark.parametrize("N,K", [(4, 2), (4, 1)])
def test_parity_gqa(N, K):
    check_parity((1, N, K, 97, 64, 64), causal=True, block_q=32, block_k=16)


def test_parity_mla_head_dims():
    check_parity((1, 2, 1, 65, 192, 128), causal=True, block_q=64, block_k=64)


def test_parity_no_segments_default_blocks():
    check_parity((2, 2, 1, 200, 24, 40), causal=True, docs=False)
    check_parity((1, 1, 1, 150, 16, 16), causal=False, docs=False, block_q=128, block_k=256, scale=0.3)


@pytest.mark.parametrize("threads", ["2", "3"])
def test_parity_with_several_kernel_threads(threads, monkeypatch):
    """PANGU_OPS_THREADS > 1: the work splits over an OpenMP team; with fewer (batch, kv head) pairs
    than threads the backward splits key tiles and sums per-thread dQ buffers (default is 1 thread)."""
    monkeypatch.setenv("PANGU_OPS_THREADS", threads)
    check_parity((1, 2, 1, 130, 32, 32), causal=True, block_q=16, block_k=32)     # 1 pair < threads
    check_parity((2, 4, 2, 65, 32, 24), causal=False, block_q=32, block_k=16)     # 4 pairs


def test_parity_graph_mode_jit_grad():
    """Forward + grads of a jit'd value_and_grad in GRAPH mode (GQA, documents, both mask kinds)."""
    prev = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        check_parity((2, 4, 2, 45, 32, 16), causal=True, block_q=16, block_k=16, jit=True)
        check_parity((1, 2, 1, 31, 192, 128), causal=False, block_q=8, block_k=64, jit=True)
    finally:
        ms.set_context(mode=prev)


def test_fully_masked_rows_are_zero_with_zero_grads():
    B, N, K, S, D = 1, 2, 1, 40, 16
    q, k, v, _, do = make_inputs(1, B, N, K, S, D, D)
    seg = np.zeros((B, S), np.int32)
    seg[0, :25] = 1
    seg[0, 25:30] = 2                                                         # rows 30.. are padding
    out, dq, dk, dv = fast_fwd_bwd(q, k, v, seg, do, True, D ** -0.5, 16, 16)
    assert np.isfinite(out).all() and np.isfinite(dq).all()
    assert (out[:, :, 30:] == 0).all() and (dq[:, :, 30:] == 0).all()
    assert (dk[:, :, 30:] == 0).all() and (dv[:, :, 30:] == 0).all()
    assert np.abs(out[:, :, :30]).max() > 0


def test_matches_project_reference_and_dispatcher():
    """Same numbers as ops/attention/reference.py (forward and grads) and via attention(impl="fast")."""
    reference = pytest.importorskip("ops.attention.reference")
    import ops.attention as attn
    seed = int(np.random.default_rng().integers(2 ** 31))
    q, k, v, seg, do = make_inputs(seed, 2, 4, 2, 77, 32, 32)

    def grads(fn):
        def loss(q_, k_, v_):
            out = fn(q_, k_, v_, Tensor(seg), True, None)
            return (out * Tensor(do)).sum(), out
        (_, out), g = ms.value_and_grad(loss, grad_position=(0, 1, 2), has_aux=True)(
            Tensor(q), Tensor(k), Tensor(v))
        return [out.asnumpy()] + [x.asnumpy() for x in g]

    want = grads(reference.attention)
    for fn in (fast_cpu.attention,
               lambda *a: attn.attention(*a[:4], causal=a[4], scale=a[5], impl="fast")):
        got = grads(fn)
        errs = [rel(g, w) for g, w in zip(got, want)]
        assert max(errs) <= TOL, f"seed={seed} errs(out,dq,dk,dv)={errs}"


def test_bf16_input_returns_input_dtype():
    q, k, v, seg, _ = make_inputs(3, 1, 2, 2, 9, 8, 8)
    out = fast_cpu.fast_attention(Tensor(q).astype(ms.float16), Tensor(k).astype(ms.float16),
                                  Tensor(v).astype(ms.float16), Tensor(seg))
    assert out.dtype == ms.float16 and out.shape == (1, 2, 9, 8)


def test_bad_head_counts_raise():
    q, k, v, _, _ = make_inputs(0, 1, 3, 2, 5, 8, 8)
    with pytest.raises(ValueError, match="multiple of Nkv"):
        fast_cpu.fast_attention(Tensor(q), Tensor(k), Tensor(v))


def test_missing_gxx_gives_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setattr(fa_build, "BUILD_DIR", tmp_path)
    monkeypatch.setattr(fa_build.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError) as err:
        fa_build.ensure_built(force=True)
    assert str(err.value) == fa_build.GXX_MISSING


def test_library_name_tracks_source_hash():
    path = fa_build.library_path()
    assert path.is_file() and path.parent == fa_build.BUILD_DIR
    assert str(path) == fast_cpu.library_path()
