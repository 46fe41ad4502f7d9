"""Long-context key-value recall for the XL3M evaluation (recipes/eval_long.py), built on the `lookup`
task of the built-in corpus (recipes/data/synthetic.py).

An example asks one key ("... ? fc", answer "9") over a context of `pairs` pairs of a two-letter key
and a digit ("ab3"). The asked key occurs exactly once, at a random place; every other pair is a distractor whose
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
    context: str     # "ab3 fc9 ..." (no trailing space)
    question: str    # " ? fc"
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
    context = " ".join(f"{k}{v}" for k, v in items)
    return LongExample(context, f" ? {key}", str(value), at / max(1, pairs - 1))


def write_lookup_corpus(path: str, num_documents: int = 20000, seed: int = 0) -> int:
    """The `lookup` task documents as JSONL (`{"text": ...}` lines) for `data.source: jsonl`: a tokenizer
    trained on them spells every two-letter key as one piece, which a tiny model learns to look up in
    minutes (the built-in tokenizer spells most keys as two pieces). Returns the document count."""
    import json
    import os

    from recipes.data.synthetic import generate_corpus

    docs = generate_corpus(num_documents, seed, "train", tasks=("lookup",), max_examples_per_document=1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    os.replace(tmp, path)
    return len(docs)


def main(argv=None) -> int:
    import argparse

    from recipes.cli import run_command

    parser = argparse.ArgumentParser(prog="python -m recipes.data.long_context",
                                     description="write the lookup corpus (JSONL) the long-context model trains on")
    parser.add_argument("--out", default="data/lookup.jsonl")
    parser.add_argument("--documents", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    args = parser.parse_args(argv)

    def body():
        if args.documents < 1:
            raise ValueError(f"--documents: {args.documents} must be >= 1")
        n = write_lookup_corpus(args.out, args.documents, args.seed)
        print(f"wrote {n} lookup documents to {args.out}")

    return run_command(body, args.debug)


if __name__ == "__main__":
    import sys

    sys.exit(main())
