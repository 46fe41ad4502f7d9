"""Speculative decoding: a cheap drafter proposes k tokens, the target checks them in ONE KV-cache pass.

Legend: B rows, T cache columns (fixed per call), k drafted tokens per round, W MTP window columns,
V vocab, H hidden. Buffer layout as in pangu.generate (prompt b left-aligned, position = column).

Drafters
- "mtp": Pangu Ultra's own MTP modules (k <= num_mtp_layers). Depth d at column t reads the depth d-1
  hidden state at t and the token t+d, exactly as in training (pangu.common.mtp), so the draft for
  column f+d comes from depth d at column f-1 and the chain g_1..g_k is one call. Each depth keeps
  its own MLA cache; every round rewrites a window of W = 2k columns ending at the newest column,
  which covers the columns whose tokens were still drafts the round before. MTP drafts are the argmax
  of the depth's logits (a deterministic draft, q = one-hot, in the sampling rule below).
- a draft model: any causal LM of the family with the target's vocabulary (e.g. a 1-layer Pro for a
  Pro or an Ultra). It keeps its own KV cache: each round re-decodes the last two columns in one pass,
  then k-1 single steps; drafts are sampled from its own distribution q (argmax when greedy).

Round, per row b (f_b = columns in the target cache, x = the newest token, not yet in it):
  1. the drafter proposes g_1..g_k;
  2. the target decodes [x, g_1..g_k] at columns f..f+k in one pass (`decode_chunk`: query j sees
     the valid columns up to f+j) -> distributions p_0..p_k;
  3. acceptance, token by token: greedy keeps g_j while g_j == argmax p_{j-1}; sampling keeps g_j
     with probability min(1, p_{j-1}(g_j) / q_j(g_j)) and on the first rejection draws from
     norm(max(p_{j-1} - q_j, 0)) (Leviathan et al. 2023, "Fast Inference from Transformers via
     Speculative Decoding", Alg. 1; Chen et al. 2023), which leaves the output distributed as the
     target's own samples. After a accepted drafts the target's p_a gives one more token;
  4. rollback: f' = f + a + 1 and every cache's valid mask becomes "column < f'"; the rejected
     columns hold stale entries that no query sees and the next round overwrites.
Greedy output is the plain greedy output token for token (tests hold it on trained tiny models).
"""

from __future__ import annotations

from typing import Sequence

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

from pangu.common.kv_cache import chunk_mask, mark_valid_columns
from pangu.generate import Compiled, bucket, check_args, sampling_probs

MTP = "mtp"


# --------------------------------------------------------------------------------------------------
# Model entry points (compiled once per shape by _Runner)


def decode_chunk(model, ids_BS, position_ids_BS, index_BS, cache):
    """S new columns per row at index_BS in one pass -> (logits [B,S,V], normed hidden [B,S,H], cache)."""
    a, b, valid_BT = cache
    valid_BT = mark_valid_columns(valid_BT, index_BS)
    h, a, b = model.model.decode(ids_BS, position_ids_BS, index_BS, a, b, chunk_mask(valid_BT, index_BS))
    return model.logits(h), h, (a, b, valid_BT)


def prefill_hidden(model, ids_BT, position_ids_BT, segment_ids_BT):
    """CausalLM.prefill that also returns the normed hidden states (the MTP drafter's input)."""
    h, a, b = model.model.prefill(ids_BT, position_ids_BT, segment_ids_BT)
    return model.logits(h), h, (a, b, (segment_ids_BT != 0).astype(ms.int32))


def mtp_draft(model, h0_BWH, seq_BX, pos_BW, index_BW, f_rel_B, caches, valid_BT, k):
    """Depths 1..k over a window of W columns, chained in one call -> (drafts [B,k] int32, caches).

    seq_BX [B, W+k]: seq_BX[b, w] is the token of column start_b + 1 + w where known (0 after);
    f_rel_B: column f' - start_b of the newest token x (its column f' is not in the window).
    Depth d at window column w reads the token of column start+w+d: known when start+w+d <= f',
    else the draft g_{start+w+d-f'} made by an earlier depth of this call.
    """
    b, w_cols = index_BW.shape
    rel_BW = ops.arange(w_cols, dtype=ms.int32)[None, :] - f_rel_B[:, None]     # column - f'
    out_B = f_rel_B - 1                                                          # window index of f'-1
    mask = chunk_mask(mark_valid_columns(valid_BT, index_BW), index_BW)
    drafts, new_caches, h = [], [], h0_BWH
    for d in range(1, k + 1):
        ids = seq_BX[:, d - 1 : d - 1 + w_cols]
        for e in range(1, d):
            ids = ops.where(rel_BW + d == e, drafts[e - 1][:, None], ids)
        c, kr = caches[d - 1]
        logits, h, c, kr = model.mtp_decode(h, ids, pos_BW, index_BW, c, kr, mask, d)
        gather = ops.broadcast_to(out_B[:, None, None], (b, 1, logits.shape[-1])).astype(ms.int32)
        g = ops.argmax(ops.gather_elements(logits, 1, gather)[:, 0], -1).astype(ms.int32)
        drafts.append(g)
        new_caches.append((c, kr))
    return ops.stack(drafts, 1), tuple(new_caches)


class _Runner:
    """The model's entry points, compiled with ms.jit (or eager with jit=False)."""

    def __init__(self, model, jit=True):
        self.model = model.model if isinstance(model, Compiled) else model
        m = self.model
        self._wrap = ms.jit if jit else (lambda fn: fn)

        def prefill(ids, pos, seg):
            return prefill_hidden(m, ids, pos, seg)

        def chunk(ids, pos, index, cache):
            return decode_chunk(m, ids, pos, index, cache)

        def step(ids, pos, index, cache):
            return m.decode_step(ids, pos, index, cache)

        self._prefill, self._chunk, self._step = self._wrap(prefill), self._wrap(chunk), self._wrap(step)
        self._mtp_prefill = {}
        self._mtp_draft = {}

    def prefill(self, ids, pos, seg):
        return self._prefill(Tensor(ids), Tensor(pos), Tensor(seg))

    def chunk(self, ids, pos, index, cache):
        return self._chunk(Tensor(ids), Tensor(pos), Tensor(index), ms.mutable(cache))

    def step(self, ids, pos, index, cache):
        return self._step(Tensor(ids), Tensor(pos), Tensor(index), ms.mutable(cache))

    def mtp_prefill(self, h, ids, pos, seg, depth):
        if depth not in self._mtp_prefill:
            m = self.model

            def mtp_prefill_d(h_, ids_, pos_, seg_):
                return m.mtp_prefill(h_, ids_, pos_, seg_, depth)

            self._mtp_prefill[depth] = self._wrap(mtp_prefill_d)
        return self._mtp_prefill[depth](h, Tensor(ids), Tensor(pos), Tensor(seg))

    def mtp_draft(self, h0, seq, pos, index, f_rel, caches, valid, k):
        if k not in self._mtp_draft:
            m = self.model

            def mtp_draft_k(h0_, seq_, pos_, index_, f_rel_, caches_, valid_):
                return mtp_draft(m, h0_, seq_, pos_, index_, f_rel_, caches_, valid_, k)

            self._mtp_draft[k] = self._wrap(mtp_draft_k)
        return self._mtp_draft[k](Tensor(h0), Tensor(seq), Tensor(pos), Tensor(index), Tensor(f_rel),
                                  ms.mutable(caches), Tensor(valid))


# --------------------------------------------------------------------------------------------------
# Checks


def _num_mtp(model) -> int:
    return int(getattr(model, "num_mtp", 0)) if hasattr(model, "mtp_decode") else 0


def check_drafter(target, drafter, k: int) -> None:
    """One-line refusals of combinations that cannot work (k range, MTP without MTP layers, vocab)."""
    target = target.model if isinstance(target, Compiled) else target
    if not (hasattr(target, "model") and hasattr(target.model, "decode") and hasattr(target, "logits")):
        raise ValueError(f"speculative: {type(target).__name__} has no KV-cache decoder (model.decode); "
                         "speculative decoding needs a pangu causal LM target")
    if k < 1:
        raise ValueError(f"k: {k} must be >= 1 (tokens drafted per round)")
    name = type(target).__name__
    if drafter == MTP:
        n = _num_mtp(target)
        if n == 0:
            raise ValueError(f"speculative mtp: {name} has no MTP layers; use a draft model (--draft RUN) "
                             "of the same tokenizer")
        if k > n:
            raise ValueError(f"k: {k} > the model's {n} MTP layer(s) (one depth drafts one token); use -k {n} "
                             f"or train with model.num_mtp_layers={k}")
        return
    if isinstance(drafter, str):
        raise ValueError(f"speculative: unknown drafter {drafter!r}; use 'mtp' or a draft model")
    draft = drafter.model if isinstance(drafter, Compiled) else drafter
    if not (hasattr(draft, "decode_step") and hasattr(draft, "model") and hasattr(draft.model, "decode")):
        raise ValueError(f"draft: {type(draft).__name__} has no KV-cache decoder; use a pangu causal LM draft")
    tv, dv = target.config.vocab_size, draft.config.vocab_size
    if tv != dv:
        raise ValueError(f"draft: vocab_size {dv} != the target's {tv}; the draft model must use the "
                         "target's tokenizer")


# --------------------------------------------------------------------------------------------------
# Acceptance


def accept_greedy(drafts: Sequence[int], target_logits_JV: np.ndarray) -> tuple[int, int]:
    """(number of drafts kept, the next token): keep g_j while it is the target's argmax."""
    a = 0
    while a < len(drafts) and int(np.argmax(target_logits_JV[a])) == int(drafts[a]):
        a += 1
    return a, int(np.argmax(target_logits_JV[a]))


def accept_sampled(drafts, p_JV: np.ndarray, q_KV: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """Speculative sampling (Leviathan et al. 2023, Alg. 1): p_JV the target distributions at the k+1
    verified columns, q_KV the draft distributions the k drafts were drawn from -> (kept, next token).
    The returned sequence is distributed as k+1 ancestral samples from p."""
    for j, g in enumerate(drafts):
        g = int(g)
        if rng.random() * q_KV[j, g] < p_JV[j, g]:      # u < p/q without dividing by a zero q
            continue
        residual = np.maximum(p_JV[j] - q_KV[j], 0.0)
        total = residual.sum()
        # total == 0 only when p == q (then the rejection had probability 0); fall back to p
        residual = residual / total if total > 0 else p_JV[j]
        return j, int(rng.choice(len(residual), p=residual))
    k = len(drafts)
    return k, int(rng.choice(p_JV.shape[1], p=p_JV[k]))


def _host(x) -> np.ndarray:
    """fp32 numpy copy of a Tensor (asnumpy may return a view)."""
    return np.array(x.astype(ms.float32).asnumpy())


def _one_hot(ids, v):
    q = np.zeros((len(ids), v))
    q[np.arange(len(ids)), ids] = 1.0
    return q


# --------------------------------------------------------------------------------------------------
# Generation


def speculative_generate(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    drafter=MTP,
    k: int = 1,
    stop_ids: Sequence[int] = (),
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    pad_id: int = 0,
    batch_size: int = 32,
    stats: dict | None = None,
    jit: bool = True,
    runners: dict | None = None,
) -> list[list[int]]:
    """`pangu.generate.generate` with speculative decoding: `drafter` is "mtp" (the model's own MTP
    layers) or a draft model of the same vocabulary; k tokens drafted per round. Greedy output equals
    plain greedy; sampled output has the target's distribution (module docstring).

    `stats` (a dict, optional) receives rounds, drafted, accepted, acceptance_rate and target_calls.
    `runners` (a dict, optional) keeps the compiled graphs across calls (the benchmark reuses it).
    """
    prompts = [list(map(int, p)) for p in prompts]
    check_args(prompts, max_new_tokens, temperature, top_p)
    check_drafter(model, drafter, k)
    runners = {} if runners is None else runners
    if "target" not in runners:
        runners["target"] = _Runner(model, jit)
    if drafter != MTP and "draft" not in runners:
        runners["draft"] = _Runner(drafter, jit)
    counts = {"rounds": 0, "drafted": 0, "accepted": 0, "target_calls": 0}
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        rngs = [np.random.default_rng([seed, start + i]) for i in range(len(chunk))]
        out += _Batch(runners, drafter == MTP, chunk, rngs, max_new_tokens, set(stop_ids), temperature,
                      top_p, pad_id, k, counts).run()
    if stats is not None:
        stats.update(counts)
        stats["acceptance_rate"] = counts["accepted"] / max(counts["drafted"], 1)
    return out


class _Batch:
    """One batch of prompts through prefill and the draft / verify rounds (host-side bookkeeping)."""

    def __init__(self, runners, use_mtp, prompts, rngs, max_new, stop, temperature, top_p, pad_id, k, counts):
        self.target, self.draft = runners["target"], runners.get("draft")
        self.use_mtp, self.k, self.rngs, self.counts = use_mtp, k, rngs, counts
        self.max_new, self.stop, self.temperature, self.top_p = max_new, stop, temperature, top_p
        b = len(prompts)
        self.b = b
        self.lengths = np.array([len(p) for p in prompts], dtype=np.int32)
        # room for the last verify chunk (k+1 columns) and the MTP window past the newest token
        self.t = bucket(int(self.lengths.max()) + max_new + 2 * k + 2)
        self.seq = np.full((b, self.t + 2 * k + 2), pad_id, dtype=np.int32)   # tokens by column
        for i, p in enumerate(prompts):
            self.seq[i, : len(p)] = p
        self.f = self.lengths.copy()            # columns in the target cache; seq[f] is the newest token
        self.new = [[] for _ in range(b)]
        self.done = np.zeros(b, dtype=bool)
        self.cols = np.arange(self.t, dtype=np.int32)

    # -- helpers --
    def _valid(self, upto_B):
        return (self.cols[None, :] < upto_B[:, None]).astype(np.int32)

    def _probs(self, logits_V):
        return sampling_probs(logits_V, self.temperature, self.top_p)

    def _emit(self, i, tok) -> bool:
        """Append one token to row i; True when the row goes on."""
        if tok in self.stop:
            self.done[i] = True
            return False
        self.new[i].append(tok)
        if len(self.new[i]) >= self.max_new:
            self.done[i] = True
            return False
        return True

    def _first_token(self, logits_BV):
        for i in range(self.b):
            if self.temperature <= 0:
                tok = int(np.argmax(logits_BV[i]))
            else:
                tok = int(self.rngs[i].choice(logits_BV.shape[1], p=self._probs(logits_BV[i])))
            self.seq[i, self.f[i]] = tok
            self._emit(i, tok)

    # -- phases --
    def run(self):
        b, t = self.b, self.t
        seg = (self.cols[None, :] < self.lengths[:, None]).astype(np.int32)
        pos = np.broadcast_to(self.cols, (b, t)).copy()
        logits, h0, self.cache = self.target.prefill(self.seq[:, :t], pos, seg)
        self.counts["target_calls"] += 1
        rows = np.arange(b)
        self._first_token(_host(logits)[rows, self.lengths - 1])
        if self.use_mtp:
            self.h0 = _host(h0)                                              # [B, T, H], by column
            drafts = self._mtp_prefill(pos, seg)
        else:
            _, _, self.dcache = self.draft.prefill(self.seq[:, :t], pos, seg)
        while not self.done.all():
            if self.use_mtp:
                q = None
            else:
                drafts, q = self._draft_model()
            self._verify(drafts, q)
            if self.done.all():
                break
            if self.use_mtp:
                drafts = self._mtp_round()
        return self.new

    def _mtp_prefill(self, pos, seg):
        """Every depth over the prompt buffer: drafts g_1..g_k for the first round."""
        b, t, k = self.b, self.t, self.k
        rows = np.arange(b)
        h = Tensor(self.h0)
        self.mtp_caches = []
        drafts = np.zeros((b, k), dtype=np.int32)
        for d in range(1, k + 1):
            ids = self.seq[:, d : d + t]
            logits, h, c, kr = self.target.mtp_prefill(h, ids, pos, seg, d)
            self.mtp_caches.append((c, kr))
            g = np.argmax(_host(logits)[rows, self.f - 1], -1)
            drafts[:, d - 1] = g
            self.seq[rows, self.f + d] = np.where(self.done, self.seq[rows, self.f + d], g)
        self.mtp_caches = tuple(self.mtp_caches)
        return drafts

    def _mtp_round(self):
        """The window of W = 2k columns ending at column f-1 (f = newest token's column) through all
        depths in one call -> drafts [B, k]."""
        k, w = self.k, 2 * self.k
        start = np.maximum(self.f - w, 0).astype(np.int32)
        index = start[:, None] + np.arange(w, dtype=np.int32)[None, :]
        rows = np.arange(self.b)[:, None]
        h0 = self.h0[rows, np.minimum(index, self.t - 1)]
        seq = self.seq[rows, start[:, None] + 1 + np.arange(w + k)[None, :]].copy()
        rel = index[:, :1] + 1 + np.arange(w + k)[None, :]
        seq[rel > self.f[:, None]] = 0                     # only tokens up to column f are known
        drafts, self.mtp_caches = self.target.mtp_draft(
            h0, seq, index, index, (self.f - start).astype(np.int32), self.mtp_caches, self._valid(start), k)
        return np.array(drafts.asnumpy())

    def _draft_model(self):
        """Draft model: the last two columns in one pass, then k-1 single steps -> (drafts, q or None)."""
        b, k = self.b, self.k
        rows = np.arange(b)
        index = (self.f - 1)[:, None] + np.arange(2, dtype=np.int32)[None, :]
        ids = self.seq[rows[:, None], index]
        self.dcache = self.dcache[:2] + (Tensor(self._valid(self.f - 1)),)
        logits, _, self.dcache = self.draft.chunk(ids, index, index, self.dcache)
        logits_BV = _host(logits)[:, 1]
        drafts = np.zeros((b, k), dtype=np.int32)
        q = None if self.temperature <= 0 else np.zeros((b, k, logits_BV.shape[1]))
        for j in range(k):
            for i in range(b):
                if q is None:
                    drafts[i, j] = int(np.argmax(logits_BV[i]))
                else:
                    q[i, j] = self._probs(logits_BV[i])
                    drafts[i, j] = int(self.rngs[i].choice(q.shape[2], p=q[i, j]))
            if j == k - 1:
                break
            col = (self.f + 1 + j).astype(np.int32)
            logits, self.dcache = self.draft.step(drafts[:, j : j + 1], col[:, None], col, self.dcache)
            logits_BV = _host(logits)[:, 0]
        return drafts, q

    def _verify(self, drafts, q):
        """Target pass over [x, g_1..g_k] at columns f..f+k, acceptance, rollback."""
        b, k = self.b, self.k
        rows = np.arange(b)
        index = self.f[:, None] + np.arange(k + 1, dtype=np.int32)[None, :]
        ids = np.concatenate([self.seq[rows, self.f][:, None], drafts.astype(np.int32)], 1)
        self.cache = self.cache[:2] + (Tensor(self._valid(self.f)),)
        logits, h, self.cache = self.target.chunk(ids, index, index, self.cache)
        self.counts["target_calls"] += 1
        self.counts["rounds"] += 1
        logits = _host(logits)
        if self.use_mtp:
            self.h0[rows[:, None], np.minimum(index, self.t - 1)] = _host(h)
        for i in range(b):
            if self.done[i]:
                continue
            if self.temperature <= 0:
                a, nxt = accept_greedy(drafts[i], logits[i])
            else:
                p = np.stack([self._probs(row) for row in logits[i]])
                qi = q[i] if q is not None else _one_hot(drafts[i], p.shape[1])
                a, nxt = accept_sampled(drafts[i], p, qi, self.rngs[i])
            self.counts["drafted"] += k
            self.counts["accepted"] += a
            for tok in list(map(int, drafts[i, :a])) + [nxt]:
                if not self._emit(i, tok):
                    break
            self.seq[i, self.f[i] + 1 : self.f[i] + 1 + a] = drafts[i, :a]
            self.seq[i, self.f[i] + 1 + a] = nxt
            self.f[i] += a + 1
