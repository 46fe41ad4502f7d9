"""Autoregressive generation for any causal LM of the model contract: greedy or top-p sampling.

Legend: B prompts in a batch, T = longest prompt + max_new_tokens rounded up to a multiple of 32 (fixed
for the whole call),
V vocab, N heads, Nkv kv heads, D head dim.

Layout. Every call works on one fixed [B, T] buffer: prompt b is written left-aligned at columns
0..len_b-1, position ids are the column index, segment ids are 1 on written tokens and 0 on the
unwritten tail. A causal model's logits at column len_b-1 do not depend on later columns, and the
zero segment keeps the tail out of every attention anyway, so rows of different lengths share one
shape (one compilation in graph mode) and need no left padding.

Two paths, same results:
- recompute (any model with `construct(input_ids, position_ids, segment_ids) -> logits [B,T,V]`):
  the whole buffer is run again for every new token. Correct and simple; O(T) times the work.
- KV cache (models that also define `prefill` and `decode_step`, see `KVCacheModel`): the prompt
  is run once and each new token costs one column. `pangu.common.kv_cache` holds the static-shape
  pieces an attention layer needs for it; the tests drive them with a toy model and check the two
  paths agree.

Sampling runs on the host in float64 numpy. Each prompt has its own random stream
`default_rng([seed, index])`, so a prompt's sample does not depend on the batch it is in.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import mindspore as ms
import numpy as np
from mindspore import ops


class KVCacheModel(Protocol):
    """What a model provides for the KV-cache path (the recompute path needs only `construct`).

    prefill(input_ids_BT, position_ids_BT, segment_ids_BT) -> (logits_BTV, cache)
        Runs the whole [B, T] buffer (layout above) and returns a cache of capacity T: per layer
        K [B, Nkv, T, D] and V [B, Nkv, T, Dv] of every column (after RoPE), plus the segment ids.
    decode_step(input_ids_B1, position_ids_B1, index_B, cache) -> (logits_B1V, cache)
        Token b goes to column index_B[b] of row b (its position id is index_B[b]): compute its
        q/k/v, `kv_cache_write` k and v at that column, `mark_valid` the column, and attend with
        `decode_attention` over the valid columns (pangu.common.kv_cache). Shapes never change, so a graph
        compiles once.
    """

    def prefill(self, input_ids, position_ids, segment_ids): ...

    def decode_step(self, input_ids, position_ids, index, cache): ...


# --------------------------------------------------------------------------------------------------
# Compiled model


class Compiled:
    """`model`'s construct / prefill / decode_step compiled with `ms.jit` (GRAPH mode context): pass it
    to `generate` instead of the model. Shapes are fixed per call, so each compiles once per batch
    shape; on CPU this is several times faster than running the ops one by one."""

    def __init__(self, model):
        self.model = model

        def forward(input_ids, position_ids, segment_ids):
            return model(input_ids, position_ids, segment_ids)

        self._forward = ms.jit(forward)
        if hasattr(model, "prefill") and hasattr(model, "decode_step"):
            def prefill(input_ids, position_ids, segment_ids):
                return model.prefill(input_ids, position_ids, segment_ids)

            def decode_step(input_ids, position_ids, index, cache):
                return model.decode_step(input_ids, position_ids, index, cache)

            self._prefill, self._decode_step = ms.jit(prefill), ms.jit(decode_step)
            self.prefill = lambda *args: self._prefill(*args)
            # mutable: a tuple argument is otherwise a compile-time constant (a recompile per call)
            self.decode_step = lambda ids, pos, index, cache: self._decode_step(ids, pos, index, ms.mutable(cache))

    def __call__(self, input_ids, position_ids, segment_ids):
        return self._forward(input_ids, position_ids, segment_ids)


# --------------------------------------------------------------------------------------------------
# Sampling


def sample_next(logits_V: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Greedy (temperature 0) or nucleus sampling from one row of logits."""
    if temperature <= 0:
        return int(np.argmax(logits_V))
    p = sampling_probs(logits_V, temperature, top_p)
    return int(rng.choice(len(p), p=p))


def sampling_probs(logits_V: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    """The float64 distribution `sample_next` draws from (temperature > 0, then the top-p nucleus)."""
    z = logits_V.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, top_p) + 1)]  # smallest prefix reaching top_p
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return p


def bucket(columns: int, multiple: int = 32) -> int:
    """Buffer width rounded up to a multiple of 32: calls whose prompts differ by a few tokens share one
    compiled shape (the unwritten tail columns are masked, so results do not change)."""
    return -(-columns // multiple) * multiple


def check_args(prompts, max_new_tokens, temperature, top_p):
    """One-line refusals of the decoding arguments (shared with pangu.speculative)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: {max_new_tokens} must be >= 1")
    if temperature < 0:
        raise ValueError(f"temperature: {temperature} must be >= 0 (0: greedy)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p: {top_p} must be in (0, 1]")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("prompt: empty prompt; give at least one token")


# --------------------------------------------------------------------------------------------------
# Generation


def generate(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    stop_ids: Sequence[int] = (),
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    pad_id: int = 0,
    batch_size: int = 32,
    use_cache: bool | str = "auto",
) -> list[list[int]]:
    """New tokens for each prompt (token ids), stopping at the first of `stop_ids` (not included)
    or after `max_new_tokens`.

    `use_cache`: "auto" uses the KV-cache path when the model has `prefill` and `decode_step`;
    True requires it; False always recomputes. Prompts run in batches of `batch_size`.
    """
    prompts = [list(map(int, p)) for p in prompts]
    check_args(prompts, max_new_tokens, temperature, top_p)
    has_cache = hasattr(model, "prefill") and hasattr(model, "decode_step")
    if use_cache is True and not has_cache:
        raise ValueError(f"use_cache: {type(model).__name__} has no prefill/decode_step; use use_cache=False")
    cached = has_cache if use_cache == "auto" else bool(use_cache)
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        rngs = [np.random.default_rng([seed, start + i]) for i in range(len(chunk))]
        out += _generate_batch(model, chunk, rngs, max_new_tokens, set(stop_ids), temperature, top_p, pad_id, cached)
    return out


class BatchDecoder:
    """One batch of prompts being decoded: padded buffers [B, T] (T = longest prompt + max_new_tokens,
    bucketed), the KV cache when `cached`, and the fp32 logits [B, V] of each row's next token.

    start()                 runs the prompts -> logits of each row's first new token
    advance(tokens_B, cols) writes one token per row at column cols[b] (finished rows write harmlessly)
                            -> logits of the token after it
    """

    def __init__(self, model, prompts, max_new_tokens: int, pad_id: int, cached: bool):
        b = len(prompts)
        self.model, self.cached, self.b = model, cached, b
        self.lengths = np.array([len(p) for p in prompts], dtype=np.int32)
        t = bucket(int(self.lengths.max()) + max_new_tokens)
        self.ids_BT = np.full((b, t), pad_id, dtype=np.int32)
        self.seg_BT = np.zeros((b, t), dtype=np.int32)
        for i, p in enumerate(prompts):
            self.ids_BT[i, : len(p)] = p
            self.seg_BT[i, : len(p)] = 1
        self.pos_BT = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
        self.cache = None

    def _last(self, logits_BTV, cols_B):
        import mindspore as ms
        from mindspore import Tensor, ops

        index = Tensor(np.broadcast_to(cols_B[:, None, None], (self.b, 1, logits_BTV.shape[-1])).astype(np.int32))
        return ops.gather_elements(logits_BTV, 1, index)[:, 0].astype(ms.float32).asnumpy()

    def _inputs(self):
        from mindspore import Tensor

        return Tensor(self.ids_BT), Tensor(self.pos_BT), Tensor(self.seg_BT)

    def start(self) -> np.ndarray:
        if self.cached:
            logits, self.cache = self.model.prefill(*self._inputs())
        else:
            logits = self.model(*self._inputs())
        return self._last(logits, self.lengths - 1)

    def advance(self, tokens_B, cols_B) -> np.ndarray:
        import mindspore as ms
        from mindspore import Tensor

        rows = np.arange(self.b)
        self.ids_BT[rows, cols_B] = tokens_B
        self.seg_BT[rows, cols_B] = 1
        if not self.cached:
            return self._last(self.model(*self._inputs()), cols_B)
        logits, self.cache = self.model.decode_step(Tensor(tokens_B[:, None]), Tensor(cols_B[:, None].astype(np.int32)),
                                                    Tensor(cols_B.astype(np.int32)), self.cache)
        return logits[:, 0].astype(ms.float32).asnumpy()


def _generate_batch(model, prompts, rngs, max_new_tokens, stop, temperature, top_p, pad_id, cached):
    b = len(prompts)
    batch = BatchDecoder(model, prompts, max_new_tokens, pad_id, cached)
    logits_BV = batch.start()
    new = [[] for _ in range(b)]
    done = np.zeros(b, dtype=bool)
    for step in range(max_new_tokens):
        tokens = np.zeros(b, dtype=np.int32)
        for i in range(b):
            if done[i]:
                continue
            tok = sample_next(logits_BV[i], temperature, top_p, rngs[i])
            if tok in stop:
                done[i] = True
                continue
            new[i].append(tok)
            tokens[i] = tok
        if done.all() or step == max_new_tokens - 1:
            break
        logits_BV = batch.advance(tokens, batch.lengths + step)  # where each row's new token goes
    return new
