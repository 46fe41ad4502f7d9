"""TrimR: verifier-based, training-free thinking compression for batched generation.

Legend: B prompts in a batch, T = longest prompt + max_new_tokens, V vocab.

A reasoning model writes `<think> thought ; thought ; ... </think> answer`. Thoughts end at boundary
tokens (`boundary_ids`). Each time a row completes a thought, a verifier (another model, not trained
for this) is asked what the answer is given the question and the thoughts so far (`Verifier.answers`).
When its answer has been the same, and not empty, after the last `repeats` thoughts, the thoughts
already settle the answer and the later ones only re-check it (overthinking): the row's thinking is
closed by forcing the `think_end` tokens, and the model writes its answer at once. A row that has
written `max_thoughts` thoughts is closed the same way (underthinking: hopping between unfinished
attempts). A row that closes its thinking itself is left alone.

Batching and overlap. All rows decode together in one fixed [B, T] buffer (the layout of
`pangu.generate`, KV cache when the model has one). The checks of all rows that finished a thought at
a step go to the verifier as one batch, on a worker thread when `overlap` is on: decoding goes on
while the verifier reads, and a verdict applies when it arrives (a row keeps thinking meanwhile), so a
slow verifier never stalls the batch; with `overlap=False` each check is applied before the next step
(deterministic; what the tests use).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from pangu.generate import BatchDecoder, sample_next


class Verifier(Protocol):
    """answers(questions, thoughts) -> one answer (token ids, empty: none yet) per request, where
    thoughts[i] is the list of thoughts (token ids each) of request i so far."""

    def answers(self, questions: Sequence[Sequence[int]], thoughts: Sequence[Sequence[Sequence[int]]]) -> list[tuple[int, ...]]: ...


@dataclass(frozen=True)
class TrimRConfig:
    think_start: tuple[int, ...]       # tokens that open the thinking (`<think>`)
    think_end: tuple[int, ...]         # tokens forced to close it (`</think>`)
    boundary_ids: frozenset[int]       # a thought ends with one of these tokens
    repeats: int = 2                   # trim once the verifier's answer is stable over this many thoughts
    max_thoughts: int | None = None    # trim after this many thoughts regardless (None: no cap)

    def __post_init__(self):
        if not self.think_end:
            raise ValueError("think_end: empty; give the token ids of the end-of-thinking marker (</think>)")
        if not self.boundary_ids:
            raise ValueError("boundary_ids: empty; give the tokens that end a thought (e.g. ' ;' or a blank line)")
        if self.repeats < 2:
            raise ValueError(f"repeats: {self.repeats} must be >= 2 (an answer repeated once is no redundancy)")
        if self.max_thoughts is not None and self.max_thoughts < 1:
            raise ValueError(f"max_thoughts: {self.max_thoughts} must be >= 1")


@dataclass
class RowState:
    thinking: bool = False
    thought_start: int = 0                         # index in `new` where the current thought starts
    thoughts: list[list[int]] = field(default_factory=list)
    answers: list[tuple[int, ...]] = field(default_factory=list)  # verifier answer after each checked thought
    forced: list[int] = field(default_factory=list)               # tokens to write next instead of sampling
    trimmed: str | None = None                     # "settled" | "max_thoughts" when TrimR closed the thinking
    think_tokens: int = 0                          # tokens written inside the thinking


def settled(answers: Sequence[tuple[int, ...]], repeats: int) -> bool:
    """The last `repeats` verifier answers are equal and not empty."""
    last = list(answers[-repeats:])
    return len(last) == repeats and len(last[0]) > 0 and all(a == last[0] for a in last)


def generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, cfg: TrimRConfig, verifier: Verifier | None,
             *, stop_ids: Sequence[int] = (), temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
             pad_id: int = 0, overlap: bool = True) -> tuple[list[list[int]], list[RowState]]:
    """New tokens for every prompt (one batch) and each row's TrimR record. `verifier=None` decodes the
    same way without trimming (the untrimmed baseline). A prompt that ends inside `<think>` (or a row
    that writes it) is thinking."""
    prompts = [list(map(int, p)) for p in prompts]
    if max_new_tokens < 1 or not prompts or min(map(len, prompts)) == 0:
        raise ValueError(f"trimr.generate: needs max_new_tokens >= 1 (got {max_new_tokens}) and non-empty prompts")
    b = len(prompts)
    rngs = [np.random.default_rng([seed, i]) for i in range(b)]
    stop = set(int(s) for s in stop_ids)
    cached = hasattr(model, "prefill") and hasattr(model, "decode_step")
    batch = BatchDecoder(model, prompts, max_new_tokens, pad_id, cached)
    k = len(cfg.think_start)
    states = [RowState(thinking=k > 0 and p[-k:] == list(cfg.think_start)) for p in prompts]
    logits_BV = batch.start()

    pool = ThreadPoolExecutor(max_workers=1) if overlap and verifier is not None else None
    pending: list[tuple[Future | list, list[int]]] = []  # (verdicts or their future, rows), oldest first

    def apply(verdicts, rows):
        for r, ans in zip(rows, verdicts):
            st = states[r]
            if not st.thinking or st.forced:
                continue
            st.answers.append(tuple(int(a) for a in ans))
            if settled(st.answers, cfg.repeats):
                st.forced, st.trimmed = list(cfg.think_end), "settled"

    new = [[] for _ in range(b)]
    done = np.zeros(b, dtype=bool)
    end = list(cfg.think_end)
    try:
        for step in range(max_new_tokens):
            while pending and (isinstance(pending[0][0], list) or pending[0][0].done()):  # in order
                verdicts, rows = pending.pop(0)
                apply(verdicts if isinstance(verdicts, list) else verdicts.result(), rows)
            tokens = np.zeros(b, dtype=np.int32)
            ask_rows: list[int] = []
            for i in range(b):
                if done[i]:
                    continue
                st = states[i]
                if st.forced:
                    tok = st.forced.pop(0)
                else:
                    tok = sample_next(logits_BV[i], temperature, top_p, rngs[i])
                    if tok in stop:
                        done[i] = True
                        continue
                new[i].append(tok)
                tokens[i] = tok
                if not st.thinking:
                    if k and st.trimmed is None and new[i][-k:] == list(cfg.think_start):
                        st.thinking, st.thought_start = True, len(new[i])
                    continue
                st.think_tokens += 1
                if new[i][-len(end):] == end:
                    st.thinking, st.forced = False, []  # closed (by the model, or the forced tokens are out)
                elif tok in cfg.boundary_ids and st.trimmed is None:
                    st.thoughts.append(new[i][st.thought_start :])
                    st.thought_start = len(new[i])
                    if cfg.max_thoughts is not None and len(st.thoughts) >= cfg.max_thoughts:
                        st.forced, st.trimmed = list(end), "max_thoughts"
                    elif verifier is not None:
                        ask_rows.append(i)
            if ask_rows:
                questions = [prompts[r] for r in ask_rows]
                thoughts = [list(states[r].thoughts) for r in ask_rows]
                if pool is not None:
                    pending.append((pool.submit(verifier.answers, questions, thoughts), ask_rows))
                else:
                    pending.append((list(verifier.answers(questions, thoughts)), ask_rows))
            if done.all() or step == max_new_tokens - 1:
                break
            logits_BV = batch.advance(tokens, batch.lengths + step)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return new, states


class ModelVerifier:
    """A verifier model asked for the answer the thoughts so far lead to: its prompt is the reasoning
    prompt, the thoughts, the `think_end` tokens (and `answer_prefix`), decoded greedily for at most
    `max_answer_tokens` (up to a stop token). The verifier must share the reasoning model's tokenizer
    (the caller checks that). Batched: one `pangu.generate.generate` call per check batch."""

    def __init__(self, model, think_end: Sequence[int], max_answer_tokens: int, stop_ids: Sequence[int] = (),
                 pad_id: int = 0, answer_prefix: Sequence[int] = (), batch_size: int = 32):
        if max_answer_tokens < 1:
            raise ValueError(f"max_answer_tokens: {max_answer_tokens} must be >= 1")
        self.model, self.think_end, self.answer_prefix = model, list(think_end), list(answer_prefix)
        self.max_answer_tokens, self.stop_ids, self.pad_id, self.batch_size = max_answer_tokens, list(stop_ids), pad_id, batch_size

    def prompt(self, question: Sequence[int], thoughts: Sequence[Sequence[int]]) -> list[int]:
        return list(question) + [t for th in thoughts for t in th] + self.think_end + self.answer_prefix

    def answers(self, questions, thoughts):
        from pangu.generate import generate as gen

        prompts = [self.prompt(q, th) for q, th in zip(questions, thoughts)]
        out = gen(self.model, prompts, self.max_answer_tokens, stop_ids=self.stop_ids, pad_id=self.pad_id,
                  batch_size=self.batch_size)
        return [tuple(a) for a in out]
