"""A seeded synthetic corpus of small algorithmic tasks, designed for a tiny LM to learn in a few hundred steps.

Each document holds 1..N examples of one task, separated by " ; ", so a document is also a few-shot
prompt for its task. The answer of every example is a deterministic function of its prompt, so the
loss on answer tokens can approach 0, while the random payloads (operands, letter strings) keep an
irreducible entropy, so the loss floor is well above 0.

Tasks (payload symbols are separated by spaces so the tokenizer keeps them one piece each, which is
what makes copy/reverse/count learnable token by token):

    arith     "37+45=82"   "61-18=43"                     (operands 0..99, results >= 0)
    copy      "copy: c a h -> c a h"
    reverse   "reverse: c a h -> h a c"
    recall    "a=3 f=9 c=1 ? f -> 9"
    brackets  "balanced: ( ( ) ) -> yes"   "balanced: ( ) ) ( -> no"
    count     "count b: a b d b -> 2"

Not in the default mix (name them in `data.tasks`):

    lookup    "ab3 fc9 hd1 ? fc9 ? ab3"             2..24 key-digit pairs, two-letter keys (64 possible),
              then 1..all of its keys queried in random order; the long-context evaluation
              (recipes/eval_long.py) asks the same question over contexts many times longer

The alphabet is digits, a-h, `+-=:;?()>`, space and the letters of the task words, so the trained
tokenizer is small (110 pieces for the default corpus, for any vocab_size above that). Generation
uses `random.Random` seeded from a SHA-256 of (seed, split), which is stable across Python versions
and platforms: the same seed gives a byte-identical corpus, and the validation split comes from an
independent stream (and never repeats a training document).
"""

from __future__ import annotations

import hashlib
import random
from typing import Callable, Sequence

# Bump when the generated text changes for a given seed: it is part of every cache key.
GENERATOR_VERSION = 1

LETTERS = "abcdefgh"
COUNT_LETTERS = "abcd"  # a smaller alphabet makes counts other than 0/1 common
EXAMPLE_SEPARATOR = " ; "


def _arith(rng: random.Random) -> str:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    if rng.random() < 0.5:
        return f"{a}+{b}={a + b}"
    a, b = max(a, b), min(a, b)
    return f"{a}-{b}={a - b}"


def _letters(rng: random.Random, low: int, high: int, alphabet: str = LETTERS) -> list[str]:
    return [rng.choice(alphabet) for _ in range(rng.randint(low, high))]


def _copy(rng: random.Random) -> str:
    s = " ".join(_letters(rng, 2, 6))
    return f"copy: {s} -> {s}"


def _reverse(rng: random.Random) -> str:
    chars = _letters(rng, 2, 6)
    return f"reverse: {' '.join(chars)} -> {' '.join(reversed(chars))}"


def _recall(rng: random.Random) -> str:
    keys = rng.sample(LETTERS, rng.randint(2, 5))
    values = [rng.randint(0, 9) for _ in keys]
    query = rng.randrange(len(keys))
    pairs = " ".join(f"{k}={v}" for k, v in zip(keys, values))
    return f"{pairs} ? {keys[query]} -> {values[query]}"


LOOKUP_KEYS = tuple(a + b for a in LETTERS for b in LETTERS)


def lookup_pairs(rng: random.Random, n: int, avoid: Sequence[str] = ()) -> list[tuple[str, int]]:
    """`n` (key, digit) pairs with distinct two-letter keys not in `avoid` (keys may repeat once n > 64)."""
    pool = [k for k in LOOKUP_KEYS if k not in avoid]
    keys = rng.sample(pool, n) if n <= len(pool) else [rng.choice(pool) for _ in range(n)]
    return [(k, rng.randint(0, 9)) for k in keys]


def _lookup(rng: random.Random) -> str:
    pairs = lookup_pairs(rng, rng.randint(2, 24))
    queries = rng.sample(pairs, rng.randint(1, len(pairs)))  # dense: every query's digit is a lookup
    return " ".join(f"{k}{v}" for k, v in pairs) + "".join(f" ? {k}{v}" for k, v in queries)


def _is_balanced(brackets: Sequence[str]) -> bool:
    depth = 0
    for b in brackets:
        depth += 1 if b == "(" else -1
        if depth < 0:
            return False
    return depth == 0


def _brackets(rng: random.Random) -> str:
    # Half the examples are balanced by construction; the rest flip one bracket of a balanced string,
    # which changes the (-) count and so is always unbalanced. The answer is recomputed anyway.
    pairs = rng.randint(1, 4)
    seq: list[str] = []
    opened = closed = 0
    while closed < pairs:
        if opened < pairs and (opened == closed or rng.random() < 0.5):
            seq.append("(")
            opened += 1
        else:
            seq.append(")")
            closed += 1
    if rng.random() < 0.5:
        i = rng.randrange(len(seq))
        seq[i] = "(" if seq[i] == ")" else ")"
    answer = "yes" if _is_balanced(seq) else "no"
    return f"balanced: {' '.join(seq)} -> {answer}"


def _count(rng: random.Random) -> str:
    chars = _letters(rng, 3, 8, COUNT_LETTERS)
    target = rng.choice(COUNT_LETTERS)
    return f"count {target}: {' '.join(chars)} -> {chars.count(target)}"


TASK_FNS: dict[str, Callable[[random.Random], str]] = {
    "arith": _arith,
    "copy": _copy,
    "reverse": _reverse,
    "recall": _recall,
    "brackets": _brackets,
    "count": _count,
}
TASKS: tuple[str, ...] = tuple(TASK_FNS)  # the default mix
TASK_FNS["lookup"] = _lookup


def _stream(seed: int, split: str) -> random.Random:
    """An independent, platform-stable random stream per (seed, split)."""
    digest = hashlib.sha256(f"pangu-synthetic/v{GENERATOR_VERSION}/{seed}/{split}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _document(rng: random.Random, tasks: Sequence[str], max_examples: int) -> str:
    fn = TASK_FNS[rng.choice(tasks)]
    return EXAMPLE_SEPARATOR.join(fn(rng) for _ in range(rng.randint(1, max_examples)))


def generate_corpus(
    num_documents: int,
    seed: int,
    split: str = "train",
    tasks: Sequence[str] = TASKS,
    max_examples_per_document: int = 4,
    exclude: frozenset[str] | set[str] = frozenset(),
) -> list[str]:
    """`num_documents` task documents from the (seed, split) stream, skipping any text in `exclude`.

    `exclude` is how the validation split is kept disjoint from the training split: documents that
    happen to equal a training document are drawn again (from the same stream, so still deterministic).
    """
    unknown = [t for t in tasks if t not in TASK_FNS]
    if unknown:
        raise ValueError(f"tasks: unknown task {unknown[0]!r}; choose from {', '.join(TASK_FNS)}")
    rng = _stream(seed, split)
    docs: list[str] = []
    attempts = 0
    while len(docs) < num_documents:
        attempts += 1
        if attempts > 20 * num_documents + 1000:
            raise ValueError(
                f"num_val_documents: could only draw {len(docs)} documents not already in the training split; "
                "lower num_val_documents or add tasks / max_examples_per_document"
            )
        doc = _document(rng, tasks, max_examples_per_document)
        if doc not in exclude:
            docs.append(doc)
    return docs
