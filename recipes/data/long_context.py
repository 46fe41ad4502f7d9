"""Long-context key-value recall for the XL3M evaluation (recipes/eval_long.py), built on the `lookup`
task of the built-in corpus (recipes/data/synthetic.py).

An example asks one key ("... ? fc=", answer "9") over a context of `pairs` two-letter key=digit
pairs. The asked key occurs exactly once, at a random place; every other pair is a distractor whose
key is one of the other 63 (they repeat once the context holds more than 63 pairs, each time with a
new digit, so only the planted pair answers the question). Seeded per (seed, multiple, index), so an
example does not depend on how many are drawn.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from recipes.data.synthetic import GENERATOR_VERSION, lookup_pairs

LONG_VERSION = 1


@dataclass(frozen=True)
class LongExample:
    context: str     # "ab=3 fc=9 ..." (no trailing space)
    question: str    # " ? fc="
    answer: str      # "9"
    position: float  # where the planted pair sits, 0 (start) .. 1 (end)

    @property
    def prompt(self) -> str:
        return self.context + self.question


def long_lookup(pairs: int, seed: int, multiple: int, index: int) -> LongExample:
    """One recall example over `pairs` pairs (>= 1); `multiple` only names the stream."""
    if pairs < 1:
        raise ValueError(f"pairs: {pairs} must be >= 1")
    digest = hashlib.sha256(f"pangu-long/v{LONG_VERSION}/g{GENERATOR_VERSION}/{seed}/{multiple}/{index}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "little"))
    (key, value), = lookup_pairs(rng, 1)
    items = lookup_pairs(rng, pairs - 1, avoid=(key,))
    at = rng.randint(0, pairs - 1)
    items.insert(at, (key, value))
    context = " ".join(f"{k}={v}" for k, v in items)
    return LongExample(context, f" ? {key}=", str(value), at / max(1, pairs - 1))
