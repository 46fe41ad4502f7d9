"""The config switch `ops_impl` reaches every op call, and the fast ops train like the references.

Tiny Pro and tiny Ultra: with ops_impl="fast" every op-dispatching cell resolves to its fast path
(FastAttention, fused RMSNorm / SwiGLU / RoPE kernels, fast MoE routing and permutation, the
grouped-matmul kernel of the default expert_impl "grouped"), with
ops_impl="reference" to the reference; the training loss and the loss after 3 SGD steps agree to
1e-5 (relative). Fresh random data each run (the model init seed is fixed: both runs must start from
the same weights).
"""
import shutil

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

import models

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ missing: no CPU kernels")

IMPL_ATTRS = ("impl", "act_impl", "attn_impl", "attention_impl", "rope_impl", "route_impl", "plan_impl",
              "sort_impl", "unsort_impl", "gmm_impl")


def resolved_impls(model):
    """{cell.attr: impl} of every op switch resolved inside `model`."""
    out = {}
    for name, cell in model.cells_and_names():
        for attr in IMPL_ATTRS:
            val = cell.__dict__.get(attr)
            if isinstance(val, str):
                out[f"{name}.{attr}"] = val
    return out


def batch(rng, vocab, b=2, s=12):
    ids = rng.integers(1, vocab, size=(b, s)).astype(np.int32)
    seg = np.ones((b, s), np.int32)
    seg[0, 7:] = 2                                              # two documents in row 0
    seg[1, 10:] = 0                                             # padding in row 1
    pos = np.zeros((b, s), np.int32)
    for r in range(b):
        for t in range(1, s):
            pos[r, t] = pos[r, t - 1] + 1 if seg[r, t] == seg[r, t - 1] else 0
    labels = np.roll(ids, -1, 1)
    mask = ((seg == np.roll(seg, -1, 1)) & (seg > 0)).astype(np.float32)
    mask[:, -1] = 0
    labels = (labels * mask).astype(np.int32)
    return [Tensor(a) for a in (ids, labels, mask, pos, seg)]


def train_losses(arch, ops_impl, data, steps=3):
    cfg = models.get_config(arch, "tiny", ops_impl=ops_impl)
    model = models.build_model(cfg, seed=1234)
    impls = set(resolved_impls(model).values())
    opt = nn.SGD(model.trainable_params(), learning_rate=0.1)  # small enough to descend on any batch

    def loss_fn(*b):
        return model.loss(*b)[0]

    grad_fn = ms.value_and_grad(loss_fn, None, opt.parameters)
    losses = []
    for _ in range(steps):
        loss, grads = grad_fn(*data)
        opt(grads)
        losses.append(float(loss.asnumpy()))
    losses.append(float(loss_fn(*data).asnumpy()))
    return impls, losses


@pytest.mark.parametrize("arch", ["pangu_pro_moe", "pangu_ultra_moe"])
def test_fast_ops_train_like_reference(arch):
    seed = int(np.random.SeedSequence().entropy % 2 ** 32)
    data = batch(np.random.default_rng(seed), models.get_config(arch, "tiny").vocab_size)
    fast_impls, fast = train_losses(arch, "fast", data)
    ref_impls, ref = train_losses(arch, "reference", data)
    assert fast_impls == {"fast"}, fast_impls
    assert ref_impls == {"reference"}, ref_impls
    assert fast[-1] < fast[0]                                   # it trains
    np.testing.assert_allclose(fast, ref, rtol=1e-5, err_msg=f"seed={seed}")


def test_ops_impl_is_validated():
    with pytest.raises(ValueError, match="ops_impl"):
        models.get_config("pangu_pro_moe", "tiny", ops_impl="fastest")
    with pytest.raises(ValueError, match="ops_impl"):
        models.get_config("pangu_ultra_moe", "tiny", ops_impl="fastest")


def test_per_op_field_overrides_ops_impl():
    cfg = models.get_config("pangu_pro_moe", "tiny", ops_impl="reference", attention_impl="fast")
    impls = resolved_impls(models.build_model(cfg, seed=0))
    attn = {v for k, v in impls.items() if k.endswith("attn_impl")}
    rest = {v for k, v in impls.items() if not k.endswith("attn_impl")}
    assert attn == {"fast"} and rest == {"reference"}
