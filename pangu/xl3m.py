"""XL3M: answer over inputs far longer than the training length with segment-wise inference (no training).

Legend: L input tokens, S segment tokens, M question tokens (the last M of the input), W the model's
training length, B segments scored together, V vocab.

The input is `context + question`. The context is cut into segments of at most S tokens (at word
starts when `boundary_ids` is given, so a segment never ends inside a word); each sub-context is one
segment followed by the question. The model's certainty when predicting the question from a
sub-context measures how relevant the segment is:

- `logprob` (default): mean log-probability of the M question tokens, teacher-forced;
- `entropy`: minus the mean entropy of the predicted distributions at those M positions.

The most relevant segments (`top_k`, or every segment scoring at least `threshold`), spliced in their
original order and followed by the question, form the key context, at most W tokens: the model
answers from it with the KV cache of `pangu.generate`. Sub-contexts are scored in batches of B rows
of a fixed [B, S + M] buffer (one graph compilation), so memory does not grow with L beyond one batch
of segments and the answer's prefill is at most W tokens. An input that already fits in W tokens is
answered as is.

Limits, refused in one line: S + M > W (a sub-context longer than the training length), M >= S
(a question longer than a segment), top_k * S + M > W (a key context longer than the training
length). With `threshold`, the key context keeps the best-scoring qualifying segments that fit in W
(and the best segment when none qualifies); `select_segments` says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

MEASURES = ("logprob", "entropy")


@dataclass(frozen=True)
class XL3MConfig:
    train_length: int          # W: the sequence length the model was trained on
    segment_tokens: int        # S
    question_tokens: int       # M
    top_k: int | None = None   # keep the K most relevant segments ...
    threshold: float | None = None  # ... or those scoring >= threshold (mean log-prob / minus entropy)
    measure: str = "logprob"
    batch_size: int = 16       # B: sub-contexts per forward pass

    def __post_init__(self):
        w, s, m = self.train_length, self.segment_tokens, self.question_tokens
        if w < 2:
            raise ValueError(f"train_length: {w} must be >= 2")
        if m < 1:
            raise ValueError(f"question_tokens: {m} must be >= 1")
        if s < 1:
            raise ValueError(f"segment_tokens: {s} must be >= 1")
        if s + m > w:
            raise ValueError(f"segment_tokens: a segment of {s} + question of {m} tokens is longer than the training "
                             f"length {w}; use --segment-tokens <= {w - m}")
        if m >= s:
            raise ValueError(f"question_tokens: the question ({m} tokens) must be shorter than a segment ({s}); "
                             f"use --question-tokens < {s} or a longer --segment-tokens")
        if (self.top_k is None) == (self.threshold is None):
            raise ValueError("xl3m: give exactly one of top_k (--top-k K) or threshold (--threshold T)")
        if self.top_k is not None:
            if self.top_k < 1:
                raise ValueError(f"top_k: {self.top_k} must be >= 1")
            if self.top_k * s + m > w:
                raise ValueError(f"top_k: {self.top_k} segments of {s} tokens + the question exceed the training "
                                 f"length {w}; use --top-k <= {(w - m) // s}")
        if self.measure not in MEASURES:
            raise ValueError(f"measure: {self.measure!r} is not one of {', '.join(MEASURES)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: {self.batch_size} must be >= 1")

    @property
    def max_segments(self) -> int:
        """Segments that fit in a key context of at most W tokens."""
        return (self.train_length - self.question_tokens) // self.segment_tokens


@dataclass
class KeyContext:
    ids: list[int]                         # key context + question: the prompt the model answers from
    segments: list[tuple[int, int]] = field(default_factory=list)  # [start, end) of every segment
    scores: np.ndarray | None = None       # relevance per segment (None: the input fitted, not split)
    chosen: list[int] = field(default_factory=list)  # indices of the kept segments, ascending


def split_segments(ids: Sequence[int], segment_tokens: int, boundary_ids: Sequence[int] = ()) -> list[tuple[int, int]]:
    """[start, end) spans of at most `segment_tokens` covering `ids` in order. With `boundary_ids` (the
    tokens that start a word), a span ends before the last word start that fits, unless that would
    leave it empty (a word longer than a segment is cut)."""
    starts = set(int(b) for b in boundary_ids)
    spans, start, n = [], 0, len(ids)
    while start < n:
        end = min(start + segment_tokens, n)
        if end < n and starts:
            cut = next((j for j in range(end, start, -1) if int(ids[j]) in starts), None)
            if cut is not None:
                end = cut
        spans.append((start, end))
        start = end
    return spans


def question_scores(logits_BTV: np.ndarray, ids_BT: np.ndarray, first_B: np.ndarray, m: int, measure: str) -> np.ndarray:
    """Certainty of the question in each row: its tokens sit at columns first_B .. first_B + m - 1 and are
    predicted by the logits one column earlier."""
    b = logits_BTV.shape[0]
    cols_BM = first_B[:, None] + np.arange(m)[None, :]
    pred_BMV = logits_BTV[np.arange(b)[:, None], cols_BM - 1].astype(np.float64)
    z_BMV = pred_BMV - pred_BMV.max(-1, keepdims=True)
    logp_BMV = z_BMV - np.log(np.exp(z_BMV).sum(-1, keepdims=True))
    if measure == "logprob":
        target_BM = ids_BT[np.arange(b)[:, None], cols_BM]
        return np.take_along_axis(logp_BMV, target_BM[..., None], -1)[..., 0].mean(-1)
    return (np.exp(logp_BMV) * logp_BMV).sum(-1).mean(-1)  # minus the entropy


def score_segments(model, ids: Sequence[int], spans: Sequence[tuple[int, int]], question: Sequence[int],
                   cfg: XL3MConfig, pad_id: int = 0) -> np.ndarray:
    """Relevance of every segment: `model(ids, positions, segment_ids) -> logits [B, T, V]` on batches of
    B sub-contexts (segment + question, left-aligned in a fixed [B, S + M] buffer)."""
    from mindspore import Tensor

    m, t, b = len(question), cfg.segment_tokens + len(question), cfg.batch_size
    ids = np.asarray(ids, dtype=np.int32)
    q = np.asarray(question, dtype=np.int32)
    pos_BT = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
    out = []
    for first in range(0, len(spans), b):
        chunk = spans[first : first + b]
        ids_BT = np.full((b, t), pad_id, dtype=np.int32)
        seg_BT = np.zeros((b, t), dtype=np.int32)
        seg_BT[:, 0] = 1  # unused rows (last batch): one pad token, never read
        qstart_B = np.ones(b, dtype=np.int64)
        for r, (s, e) in enumerate(chunk):
            n = e - s
            ids_BT[r, :n], ids_BT[r, n : n + m] = ids[s:e], q
            seg_BT[r, : n + m] = 1
            qstart_B[r] = n
        logits = model(Tensor(ids_BT), Tensor(pos_BT), Tensor(seg_BT))
        logits_BTV = np.array(logits.asnumpy(), dtype=np.float32)
        out.append(question_scores(logits_BTV, ids_BT, qstart_B, m, cfg.measure)[: len(chunk)])
    return np.concatenate(out)


def select_segments(scores: np.ndarray, cfg: XL3MConfig) -> list[int]:
    """Indices of the kept segments in their original (ascending) order: the top_k best, or the best
    of those >= threshold that fit in the training length (the single best when none qualifies)."""
    order = np.argsort(-scores, kind="stable")
    if cfg.top_k is not None:
        keep = order[: cfg.top_k]
    else:
        keep = [i for i in order if scores[i] >= cfg.threshold][: cfg.max_segments] or order[:1]
    return sorted(int(i) for i in keep)


def key_context(model, ids: Sequence[int], cfg: XL3MConfig, boundary_ids: Sequence[int] = (), pad_id: int = 0) -> KeyContext:
    """The prompt XL3M answers `ids` from (the input itself when it fits in the training length)."""
    ids = [int(i) for i in ids]
    if len(ids) <= cfg.train_length:
        return KeyContext(ids)
    m = cfg.question_tokens
    context, question = ids[:-m], ids[-m:]
    spans = split_segments(context, cfg.segment_tokens, boundary_ids)
    scores = score_segments(model, context, spans, question, cfg, pad_id)
    chosen = select_segments(scores, cfg)
    key = [t for i in chosen for t in context[spans[i][0] : spans[i][1]]] + question
    return KeyContext(key, spans, scores, chosen)


def generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, cfg: XL3MConfig,
             boundary_ids: Sequence[int] = (), pad_id: int = 0, **generate_kwargs) -> tuple[list[list[int]], list[KeyContext]]:
    """XL3M answers: each prompt is replaced by its key context, then `pangu.generate.generate` decodes
    them (KV cache when the model has one). `model` is used for both scoring and decoding (pass a
    `pangu.generate.Compiled`). Returns (new tokens per prompt, key contexts)."""
    from pangu import generate as gen

    keys = [key_context(model, p, cfg, boundary_ids, pad_id) for p in prompts]
    new = gen.generate(model, [k.ids for k in keys], max_new_tokens, pad_id=pad_id, **generate_kwargs)
    return new, keys
