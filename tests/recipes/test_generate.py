"""Generation (pangu/generate.py) and exact-match evaluation (recipes/evaluate.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from pangu.common.kv_cache import decode_attention, kv_cache_write
from pangu.generate import generate, sample_next
from recipes.evaluate import is_exact_match, score

V = 16


class Successor(nn.Cell):
    """Logits prefer (token + 1) mod V: greedy output after token t is t+1, t+2, ..."""

    def construct(self, input_ids, position_ids, segment_ids):
        return ops.one_hot((input_ids + 1) % V, V, Tensor(10.0, ms.float32), Tensor(0.0, ms.float32))


class ToyAttentionLM(nn.Cell):
    """One attention layer over embeddings (no RoPE), with prefill/decode_step via the cache helpers."""

    def __init__(self, h=8, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        w = lambda *s: Parameter(Tensor(rng.normal(0, 1.0, s).astype(np.float32)))  # noqa: E731
        self.emb, self.wq, self.wk, self.wv, self.wo = w(V, h), w(h, h), w(h, h), w(h, h), w(h, V)

    def _qkv(self, input_ids):
        x = self.emb[input_ids]  # [B, S, H]
        return x, (x @ self.wq)[:, None], (x @ self.wk)[:, None], (x @ self.wv)[:, None]  # [B, 1, S, H]

    def construct(self, input_ids, position_ids, segment_ids):
        x, q, k, v = self._qkv(input_ids)
        s = input_ids.shape[1]
        scores = ops.matmul(q, k.swapaxes(-1, -2)) * (q.shape[-1] ** -0.5)
        causal = ops.arange(s)[:, None] >= ops.arange(s)[None, :]
        same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] != 0)
        scores = ops.where((causal[None] & same)[:, None], scores, ops.full_like(scores, -1e30))
        o = ops.matmul(ops.softmax(scores, -1), v)[:, 0]
        return (x + o) @ self.wo

    def prefill(self, input_ids, position_ids, segment_ids):
        _, _, k, v = self._qkv(input_ids)
        return self(input_ids, position_ids, segment_ids), (k, v, segment_ids)

    def decode_step(self, input_ids, position_ids, index, cache):
        k_cache, v_cache, seg = cache
        x, q, k, v = self._qkv(input_ids)
        k_cache, v_cache = kv_cache_write(k_cache, k, index), kv_cache_write(v_cache, v, index)
        seg = kv_cache_write(seg[:, None, :, None], ops.ones_like(index)[:, None, None, None], index)[:, 0, :, 0]
        o = decode_attention(q, k_cache, v_cache, seg)[:, 0]
        return (x + o) @ self.wo, (k_cache, v_cache, seg)


def test_greedy_with_a_known_model_stops_and_batches():
    out = generate(Successor(), [[3], [7, 8, 9], [14]], max_new_tokens=5, stop_ids=[12])
    assert out == [[4, 5, 6, 7, 8], [10, 11], [15, 0, 1, 2, 3]]
    assert generate(Successor(), [[3]], 5, stop_ids=[4]) == [[]]
    with pytest.raises(ValueError, match="top_p"):
        generate(Successor(), [[3]], 5, top_p=0)
    with pytest.raises(ValueError, match="use_cache"):
        generate(Successor(), [[3]], 5, use_cache=True)


def test_recompute_path_equals_a_manual_argmax_loop():
    model = ToyAttentionLM()
    prompts = [[1, 2, 3, 4], [5], [9, 9]]
    manual = []
    for p in prompts:  # one unpadded sequence at a time, growing by one token per step
        seq = list(p)
        for _ in range(4):
            n = len(seq)
            logits = model(Tensor([seq], ms.int32), Tensor([list(range(n))], ms.int32), Tensor([[1] * n], ms.int32))
            seq.append(int(np.argmax(logits.asnumpy()[0, -1])))
        manual.append(seq[len(p):])
    assert generate(model, prompts, 4, use_cache=False) == manual
    assert generate(model, prompts, 4, use_cache=False, batch_size=2) == manual


def test_kv_cache_path_matches_recompute_greedy_and_sampled():
    model = ToyAttentionLM(seed=1)
    prompts = [[1, 2, 3, 4, 5], [6], [7, 8]]
    greedy = generate(model, prompts, 5, use_cache=False)
    assert generate(model, prompts, 5, use_cache=True) == greedy
    kw = dict(temperature=1.0, top_p=0.9, seed=3)
    sampled = generate(model, prompts, 5, use_cache=False, **kw)
    assert generate(model, prompts, 5, use_cache="auto", **kw) == sampled  # cached, and reproducible under the seed


def test_sampling_top_p_and_temperature():
    logits = np.array([0.0, 5.0, 4.0, -3.0])
    rng = np.random.default_rng(0)
    assert sample_next(logits, 0.0, 1.0, rng) == 1
    draws = [sample_next(logits, 1.0, 0.5, rng) for _ in range(50)]
    assert set(draws) == {1}  # token 1 alone holds > 50% of the mass
    draws = [sample_next(logits, 1.0, 0.99, rng) for _ in range(400)]
    assert set(draws) == {1, 2} and 0.6 < draws.count(1) / 400 < 0.85  # softmax(5, 4) ~ (0.73, 0.27)
    hot = [sample_next(logits, 100.0, 1.0, rng) for _ in range(400)]
    assert set(hot) == {0, 1, 2, 3}


def test_cache_write_and_decode_attention_shapes():
    cache = Tensor(np.zeros((2, 1, 4, 3), np.float32))
    new = Tensor(np.ones((2, 1, 1, 3), np.float32))
    out = kv_cache_write(cache, new, Tensor([1, 3], ms.int32)).asnumpy()
    assert out[0, 0, 1].tolist() == [1, 1, 1] and out[1, 0, 3].tolist() == [1, 1, 1] and out.sum() == 6
    q = Tensor(np.ones((2, 2, 1, 3), np.float32))  # 2 query heads share the 1 kv head
    v = Tensor(np.arange(24, dtype=np.float32).reshape(2, 1, 4, 3))
    o = decode_attention(q, cache, v, Tensor([[1, 0, 0, 0], [1, 1, 0, 0]], ms.int32)).asnumpy()
    np.testing.assert_allclose(o[0, :, 0], [[0, 1, 2]] * 2)
    np.testing.assert_allclose(o[1, :, 0], [[13.5, 14.5, 15.5]] * 2)  # mean of the two valid rows


def test_exact_match_scoring():
    assert is_exact_match(" a b ", " a b") and not is_exact_match("a b c", " a b")
    r = score(["copy", "copy", "arith"], ["a b", "x", "82"], [" a b", " a b", "82"])
    assert r["num_examples"] == 3 and r["num_correct"] == 2 and r["accuracy"] == pytest.approx(2 / 3)
    assert r["per_task"] == {"arith": {"n": 1, "correct": 1, "accuracy": 1.0},
                             "copy": {"n": 2, "correct": 1, "accuracy": 0.5}}


def test_evaluate_and_generate_cli_on_a_saved_tiny_run(tmp_path, capsys):
    import models
    from recipes.io import checkpoint as ckpt_lib
    from recipes.engine.config import dump_yaml, resolve
    from recipes.io.load import load_model
    from recipes.evaluate import main as evaluate_main
    from recipes.generate import main as generate_main
    from recipes.data import build_dataset

    raw = {"model": {"arch": "pangu_pro_moe", "preset": "tiny", "num_hidden_layers": 1},
           "data": {"source": "sft", "num_documents": 200, "num_val_documents": 12, "seq_length": 32,
                    "cache_dir": str(tmp_path / "cache")}}
    recipe, model_cfg = resolve(raw, "sft_test")
    vocab = build_dataset(recipe.data, "train").tokenizer.vocab_size
    import dataclasses
    model_cfg = dataclasses.replace(model_cfg, vocab_size=vocab)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dump_yaml(recipe, model_cfg, str(run_dir / "config.yaml"))
    model = models.build_model(model_cfg, seed=0)
    params = {p.name: p.asnumpy() for p in model.get_parameters()}
    ckpt_lib.save(str(run_dir / "checkpoints"), 7, params, None, {"step": 7}, keep_last=1)

    run = load_model(str(run_dir))
    assert run.step == 7 and run.tokenizer.user_id == 4
    # the real model: the batched recompute path equals one-prompt-at-a-time decoding
    prompts = [run.tokenizer.encode(p) for p in ("<|user|>copy: a b -><|assistant|>", "<|user|>1+2=<|assistant|>")]
    batched = generate(run.model, prompts, 4, use_cache=False)
    assert batched == [generate(run.model, [p], 4, use_cache=False)[0] for p in prompts]

    assert evaluate_main([str(run_dir), "--limit", "5"]) == 0
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["num_examples"] == 5 and result["step"] == 7 and 0 <= result["accuracy"] <= 1
    assert sum(t["n"] for t in result["per_task"].values()) == 5 and len(result["examples"]) == 5
    assert "overall" in capsys.readouterr().out
    ckpt = os.path.join(run_dir, "checkpoints", "step_00000007")
    assert generate_main([ckpt, "--prompt", "copy: a b ->", "--temperature", "0.8", "--top-p", "0.9",
                          "--max-new-tokens", "3"]) == 0
    assert evaluate_main([str(tmp_path / "nowhere")]) == 2
    assert "nowhere: not found; give a run directory" in capsys.readouterr().err
