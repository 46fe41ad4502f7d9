"""XL3M segment-wise inference: scoring picks the planted segment, splicing keeps order, limits refused."""

import numpy as np
import pytest
from mindspore import Tensor

from pangu import xl3m

V = 64


class BagModel:
    """A causal toy LM: at column t it predicts, with logit 6, every token already seen in its row's
    segment (columns <= t with segment id 1), else logit 0. A question is predicted well exactly from a
    sub-context whose segment contains the question's tokens."""

    def __init__(self):
        self.calls = []

    def __call__(self, ids, pos, seg):
        ids, seg = ids.asnumpy(), seg.asnumpy()
        self.calls.append(ids.shape)
        b, t = ids.shape
        logits = np.zeros((b, t, V), np.float32)
        for r in range(b):
            seen = np.zeros(V, bool)
            for c in range(t):
                if seg[r, c]:
                    seen[ids[r, c]] = True
                logits[r, c, seen] = 6.0
        return Tensor(logits)


def planted_input(n_segments=12, s=8, planted=(5,), question=(60, 61, 62), seed=0):
    rng = np.random.default_rng(seed)
    ctx = rng.integers(3, 50, size=n_segments * s).tolist()  # never a question token
    for k, seg in enumerate(planted):
        ctx[seg * s + 2 : seg * s + 2 + len(question) - k] = question[: len(question) - k]  # decreasing strength
    return ctx + list(question)


def test_scoring_picks_the_planted_segment_batched_over_segments():
    ids = planted_input()
    cfg = xl3m.XL3MConfig(train_length=32, segment_tokens=8, question_tokens=3, top_k=1, batch_size=5)
    model = BagModel()
    key = xl3m.key_context(model, ids, cfg)
    assert len(key.segments) == 12 and key.chosen == [5]
    assert int(np.argmax(key.scores)) == 5 and key.scores[5] > np.sort(key.scores)[-2] + 1.0
    assert key.ids == ids[40:48] + [60, 61, 62]
    assert model.calls == [(5, 11)] * 3  # 12 segments in 3 batches of one fixed [B, S + M] shape


def test_splicing_keeps_the_original_order_not_the_score_order():
    ids = planted_input(planted=(9, 2, 6))  # segment 9 scores best, then 2, then 6
    cfg = xl3m.XL3MConfig(train_length=32, segment_tokens=8, question_tokens=3, top_k=3)
    key = xl3m.key_context(BagModel(), ids, cfg)
    assert list(np.argsort(-key.scores)[:3]) == [9, 2, 6]
    assert key.chosen == [2, 6, 9]
    assert key.ids == ids[16:24] + ids[48:56] + ids[72:80] + [60, 61, 62]


def test_threshold_keeps_qualifying_segments_within_the_training_length():
    ids = planted_input(planted=(9, 2, 6))
    cfg = xl3m.XL3MConfig(train_length=20, segment_tokens=8, question_tokens=3, threshold=-7.0)
    scores = xl3m.key_context(BagModel(), ids, cfg).scores
    assert (scores[[2, 6, 9]] >= -7.0).all() and (np.delete(scores, [2, 6, 9]) < -7.0).all()
    assert xl3m.select_segments(scores, cfg) == [2, 9]  # 3 qualify, 2 fit in 20 tokens: the best two
    none = xl3m.XL3MConfig(train_length=20, segment_tokens=8, question_tokens=3, threshold=0.0)
    assert xl3m.select_segments(scores, none) == [9]  # none qualifies: the best one


def test_an_input_within_the_training_length_is_answered_as_is():
    cfg = xl3m.XL3MConfig(train_length=32, segment_tokens=8, question_tokens=3, top_k=1)
    model = BagModel()
    key = xl3m.key_context(model, list(range(3, 35)), cfg)
    assert key.ids == list(range(3, 35)) and key.scores is None and model.calls == []


def test_generate_answers_from_the_key_context():
    ids = planted_input()
    cfg = xl3m.XL3MConfig(train_length=32, segment_tokens=8, question_tokens=3, top_k=1)
    new, keys = xl3m.generate(BagModel(), [ids, ids[:20]], 3, cfg, use_cache=False)
    assert keys[0].ids == ids[40:48] + [60, 61, 62] and keys[1].ids == ids[:20]
    assert [len(n) for n in new] == [3, 3]
    assert new[0][0] == min(set(keys[0].ids))  # the bag model's argmax: lowest seen id


def test_split_segments_covers_the_input_and_cuts_at_word_starts():
    ids = [10, 1, 1, 10, 1, 1, 1, 10, 1, 10, 1, 1, 1, 1, 1, 1, 1]
    assert xl3m.split_segments(ids, 4) == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 17)]
    spans = xl3m.split_segments(ids, 4, boundary_ids=[10])
    assert spans == [(0, 3), (3, 7), (7, 9), (9, 13), (13, 17)]  # the last word is longer than 4: cut
    assert [t for s, e in spans for t in ids[s:e]] == ids


def test_entropy_measure_prefers_peaked_predictions():
    logits = np.zeros((2, 3, 8), np.float32)
    logits[0, :, 5] = 10.0  # row 0 certain, row 1 uniform
    ids = np.zeros((2, 3), np.int64)
    s = xl3m.question_scores(logits, ids, np.array([1, 1]), 2, "entropy")
    assert s[0] > -0.01 and s[1] == pytest.approx(-np.log(8))
    lp = xl3m.question_scores(logits, ids, np.array([1, 1]), 2, "logprob")  # targets are token 0
    assert lp[0] < -9.9 and lp[1] == pytest.approx(-np.log(8))


@pytest.mark.parametrize("kwargs, message", [
    (dict(train_length=128, segment_tokens=128, question_tokens=4, top_k=1), "longer than the training length 128"),
    (dict(train_length=128, segment_tokens=4, question_tokens=8, top_k=1), "question (8 tokens) must be shorter"),
    (dict(train_length=128, segment_tokens=32, question_tokens=4, top_k=4), "use --top-k <= 3"),
    (dict(train_length=128, segment_tokens=32, question_tokens=4, top_k=1, threshold=-1.0), "exactly one of"),
    (dict(train_length=128, segment_tokens=32, question_tokens=4), "exactly one of"),
    (dict(train_length=128, segment_tokens=32, question_tokens=4, top_k=1, measure="ppl"), "measure"),
])
def test_bad_parameters_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match="^[^\n]*$") as err:
        xl3m.XL3MConfig(**kwargs)
    assert message in str(err.value)


def test_batching_does_not_change_the_scores_of_a_real_model():
    import models

    cfg = models.get_config("pangu_pro_moe", "tiny", vocab_size=V)
    model = models.build_model(cfg)
    model.set_train(False)
    ids = planted_input(n_segments=5)
    spans = xl3m.split_segments(ids[:-3], 8)
    one = xl3m.score_segments(model, ids[:-3], spans, ids[-3:], xl3m.XL3MConfig(32, 8, 3, top_k=1, batch_size=1))
    four = xl3m.score_segments(model, ids[:-3], spans, ids[-3:], xl3m.XL3MConfig(32, 8, 3, top_k=1, batch_size=4))
    np.testing.assert_allclose(one, four, rtol=1e-5, atol=1e-5)
