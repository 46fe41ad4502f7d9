"""Speculative decoding (pangu/speculative.py): one-pass verification equals plain greedy, the sampling
acceptance rule keeps the target distribution, refusals are one line."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor

import models
from pangu.common.kv_cache import chunk_mask, kv_cache_write, mark_valid_columns
from pangu.generate import Compiled, generate
from pangu.speculative import accept_sampled, check_drafter, speculative_generate

PROMPTS = [[3, 9, 4, 1, 7, 2, 8], [5, 6], [1, 1, 2, 3, 5, 8, 13, 21, 34]]


def _tiny(arch, seed, **overrides):
    cfg = models.get_config(arch, "tiny", **{"vocab_size": 48, **overrides})
    model = models.build_model(cfg, seed=seed)
    model.set_train(False)
    return model


@pytest.fixture(scope="module")
def ultra():
    return _tiny("pangu_ultra_moe", 0, num_mtp_layers=2)


@pytest.fixture(scope="module")
def pro():
    return _tiny("pangu_pro_moe", 1)


# ----------------------------------------------------------------------------------------- cache pieces
def test_multi_column_write_and_chunk_mask():
    cache = np.arange(2 * 1 * 6 * 2, dtype=np.float32).reshape(2, 1, 6, 2)
    new = -np.arange(1, 2 * 1 * 2 * 2 + 1, dtype=np.float32).reshape(2, 1, 2, 2)
    index = np.array([[1, 2], [4, 5]], np.int32)
    got = kv_cache_write(Tensor(cache), Tensor(new), Tensor(index)).asnumpy()
    want = cache.copy()
    for b in range(2):
        for s in range(2):
            want[b, :, index[b, s]] = new[b, :, s]
    np.testing.assert_array_equal(got, want)
    valid = np.array([[1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]], np.int32)
    marked = mark_valid_columns(Tensor(valid), Tensor(index)).asnumpy()
    np.testing.assert_array_equal(marked, [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    mask = chunk_mask(Tensor(marked), Tensor(index)).asnumpy()
    np.testing.assert_array_equal(mask[0], [[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(mask[1], [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])


# ------------------------------------------------------------------------------ greedy == plain greedy
@pytest.mark.parametrize("k", [1, 2])
def test_mtp_greedy_equals_plain_greedy_on_ragged_batch(ultra, k):
    plain = generate(ultra, PROMPTS, 8)
    stats = {}
    spec = speculative_generate(ultra, PROMPTS, 8, drafter="mtp", k=k, stats=stats, jit=False)
    assert spec == plain
    assert stats["drafted"] > 0 and 0 <= stats["accepted"] <= stats["drafted"]
    assert stats["target_calls"] == stats["rounds"] + 1


def test_draft_model_greedy_equals_plain_greedy_with_stops(ultra):
    """A 1-layer Pro drafts for an Ultra (any model of the same vocabulary); rows stop at different steps."""
    draft = _tiny("pangu_pro_moe", 5, num_hidden_layers=1)
    plain = generate(ultra, PROMPTS, 8, stop_ids=[7, 30])
    spec = speculative_generate(ultra, PROMPTS, 8, drafter=draft, k=3, stop_ids=[7, 30], jit=False)
    assert spec == plain


def test_self_draft_accepts_everything(pro):
    """The target as its own draft: every greedy draft is the target's argmax."""
    stats = {}
    spec = speculative_generate(pro, PROMPTS[:2], 7, drafter=pro, k=2, stats=stats, jit=False)
    assert spec == generate(pro, PROMPTS[:2], 7)
    assert stats["accepted"] == stats["drafted"]


# ---------------------------------------------------------------------------------- sampling acceptance
def test_acceptance_rule_keeps_the_target_distribution():
    """k = 2 drafts from q, verified against p: the (first, second) token pair's distribution equals the
    target's ancestral p(x1) p(x2 | x1) (chi-square over the 16 pairs, fixed seed)."""
    rng = np.random.default_rng(0)
    v, n = 4, 20000
    p1 = np.array([0.5, 0.2, 0.2, 0.1])
    p2 = rng.dirichlet(np.ones(v), size=v)           # p(x2 | x1)
    q1 = np.array([0.1, 0.1, 0.4, 0.4])
    q2 = rng.dirichlet(np.ones(v), size=v)           # draft's q(x2 | x1), far from p
    counts = np.zeros((v, v))
    for _ in range(n):
        g1 = rng.choice(v, p=q1)
        g2 = rng.choice(v, p=q2[g1])
        p_rows = np.stack([p1, p2[g1], np.full(v, 1.0 / v)])
        a, nxt = accept_sampled([g1, g2], p_rows, np.stack([q1, q2[g1]]), rng)
        if a == 0:
            x1 = nxt
            x2 = rng.choice(v, p=p2[x1])                # the next round would sample from p(. | x1)
        else:
            x1, x2 = g1, (g2 if a == 2 else nxt)
        counts[x1, x2] += 1
    expected = n * p1[:, None] * p2
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 37.7                               # 15 degrees of freedom, p = 0.001
    # a wrong rule (accepting every draft) is far outside that bound
    wrong = n * q1[:, None] * q2
    assert ((wrong - expected) ** 2 / expected).sum() > 500


def test_sampled_speculative_decoding_is_reproducible_and_in_vocab(pro):
    draft = _tiny("pangu_pro_moe", 5, num_hidden_layers=1)
    kw = dict(drafter=draft, k=2, temperature=0.9, top_p=0.95, seed=3, jit=False)
    a = speculative_generate(pro, PROMPTS[:2], 6, **kw)
    b = speculative_generate(pro, PROMPTS[:2], 6, **kw)
    assert a == b and all(len(x) == 6 and all(0 <= t < 48 for t in x) for x in a)


# --------------------------------------------------------------------------------------------- refusals
def test_refusals_are_one_line(ultra, pro):
    cases = [
        (pro, "mtp", 1, "has no MTP layers; use a draft model"),
        (ultra, "mtp", 3, "k: 3 > the model's 2 MTP layer(s)"),
        (ultra, "mtp", 0, "k: 0 must be >= 1"),
        (pro, _tiny("pangu_pro_moe", 2, vocab_size=64), 2, "vocab_size 64 != the target's 48"),
    ]
    for target, drafter, k, text in cases:
        with pytest.raises(ValueError, match=text.replace("(", r"\(").replace(")", r"\)")) as err:
            check_drafter(target, drafter, k)
        assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------- trained tiny models
def _train(root, recipe, name, *overrides):
    from recipes.run import main as run_main

    sets = ["init_from=null", "train.steps=120", "optimizer.lr=3e-3", "checkpoint.every=0",
            "train.eval_every=0", f"run.root={root}", f"run.name={name}", *overrides]
    assert run_main([recipe] + [a for s in sets for a in ("--set", s)]) == 0
    ms.set_context(mode=ms.PYNATIVE_MODE)
    from recipes.io.load import load_model

    return load_model(str(root / name), log=lambda *a: None)


@pytest.mark.integration
def test_trained_tiny_models_speculative_greedy_equals_plain(tmp_path):
    """SFT-trained tiny Ultra (2 MTP layers), Pro and a 1-layer Pro draft: on held-out prompts the MTP and
    the draft-model decoders give the plain greedy tokens, and the trained drafters are accepted often."""
    from recipes.data import build_conversations
    from recipes.evaluate import stop_ids

    ultra_run = _train(tmp_path, "recipes/pangu_ultra_moe/sft_tiny.yaml", "u", "model.num_mtp_layers=2")
    pro_run = _train(tmp_path, "recipes/pangu_pro_moe/sft_tiny.yaml", "p")
    draft_run = _train(tmp_path, "recipes/pangu_pro_moe/sft_tiny.yaml", "d", "model.num_hidden_layers=1")
    tok = ultra_run.tokenizer
    prompts = tok.encode_batch([c.prompt for c in build_conversations(ultra_run.recipe.data, "val")[:8]])
    kw = dict(stop_ids=stop_ids(tok), pad_id=tok.pad_id)
    # random drafts over 112 tokens would be accepted ~1 % of the time
    for target, drafter, k, floor in ((ultra_run.model, "mtp", 2, 0.4), (pro_run.model, draft_run.model, 3, 0.1),
                                      (ultra_run.model, draft_run.model, 2, 0.1)):
        plain = generate(Compiled(target), prompts, 16, **kw)
        stats = {}
        assert speculative_generate(target, prompts, 16, drafter=drafter, k=k, stats=stats, **kw) == plain
        assert stats["acceptance_rate"] > floor, stats
