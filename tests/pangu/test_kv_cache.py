"""KV-cache decoding of the Pro (GQA) and Ultra (MLA, compressed latent cache) models: the cached
path (prefill + decode_step) gives the recompute path's logits and greedy tokens."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from mindspore import Tensor

import models
from pangu.generate import generate

V = 48
PROMPTS = [[5, 9, 11, 30, 7, 2, 40], [17, 3], [8, 8, 21, 33, 12]]


@pytest.fixture(scope="module", params=["pangu_pro_moe", "pangu_ultra_moe"])
def model(request):
    cfg = dataclasses.replace(models.get_config(request.param, "tiny"), vocab_size=V)
    m = models.build_model(cfg, seed=3)
    m.set_train(False)
    return m


def test_prefill_then_decode_steps_match_the_full_forward_logits(model):
    new = 3
    b, t = len(PROMPTS), max(map(len, PROMPTS)) + new
    ids = np.zeros((b, t), np.int32)
    seg = np.zeros((b, t), np.int32)
    for i, p in enumerate(PROMPTS):
        ids[i, :len(p)], seg[i, :len(p)] = p, 1
    pos = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
    lengths = np.array(list(map(len, PROMPTS)))
    logits, cache = model.prefill(Tensor(ids), Tensor(pos), Tensor(seg))
    full = model(Tensor(ids), Tensor(pos), Tensor(seg)).asnumpy()
    np.testing.assert_allclose(logits.asnumpy(), full, atol=1e-5, rtol=0)
    step_logits = full[np.arange(b), lengths - 1]
    for step in range(new):
        cols = (lengths + step).astype(np.int32)
        tokens = step_logits.argmax(-1).astype(np.int32)
        ids[np.arange(b), cols], seg[np.arange(b), cols] = tokens, 1
        out, cache = model.decode_step(Tensor(tokens[:, None]), Tensor(cols[:, None]), Tensor(cols), cache)
        step_logits = out.asnumpy()[:, 0]
        full = model(Tensor(ids), Tensor(pos), Tensor(seg)).asnumpy()[np.arange(b), cols]
        np.testing.assert_allclose(step_logits, full, atol=1e-5, rtol=0)


def test_generate_with_cache_equals_recompute(model):
    greedy = generate(model, PROMPTS, 3, use_cache=False)
    assert generate(model, PROMPTS, 3, use_cache=True) == greedy
    assert all(len(g) == 3 for g in greedy)


def test_mla_cache_holds_the_compressed_latent():
    cfg = dataclasses.replace(models.get_config("pangu_ultra_moe", "tiny"), vocab_size=V)
    m = models.build_model(cfg, seed=0)
    ids = Tensor(np.ones((2, 6), np.int32))
    pos = Tensor(np.tile(np.arange(6, dtype=np.int32), (2, 1)))
    _, (cs, ks, valid) = m.prefill(ids, pos, Tensor(np.ones((2, 6), np.int32)))
    assert len(cs) == len(ks) == cfg.num_hidden_layers  # MTP layers are not decoded
    assert cs[0].shape == (2, 1, 6, cfg.attention_kv_lora_dim)
    assert ks[0].shape == (2, 1, 6, cfg.attention_qk_rope_dim)
    assert valid.shape == (2, 6)
