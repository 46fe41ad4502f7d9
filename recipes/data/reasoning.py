"""Reasoning conversations with thinking traces, for SFT of a thinking model and for TrimR
(pangu/trimr.py, docs/inference.md): `python -m recipes.data.reasoning --out data/reasoning.jsonl`
writes chat JSONL for `data.source: chat_jsonl` (its tokenizer is trained on the file, so it spells
`<think>`; the built-in tokenizer cannot).

A question sums 2..4 numbers ("37+45+18=?"); the answer is the sum. The assistant's target is

    <think> try 45+1 ; 37+45=82 ; 82+18=100 ; so 100 ; check 37+45=82 ; check 82+18=100 ; so 100 ; </think> 100

thoughts separated by " ;" (the thought boundary), with the two kinds of redundancy TrimR targets:
- abandoned partial attempts (underthinking): with probability 1/2 a "try a+b" that stops after the
  first digit of b, before the real work;
- re-verification after the answer is found (overthinking): 1..3 loops of "check" every step, then
  "so <answer>" again.
Seeded per (seed, index), stable across platforms.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass

REASONING_VERSION = 1
THINK_START, THINK_END, THOUGHT_SEP = "<think>", "</think>", " ;"


@dataclass(frozen=True)
class ThinkingExample:
    question: str          # "37+45+18=?"
    thoughts: tuple[str, ...]
    answer: str            # "100"
    solved_at: int         # thoughts[:solved_at] reach the answer (the first "so <answer>")

    @property
    def response(self) -> str:
        body = "".join(f" {t}{THOUGHT_SEP}" for t in self.thoughts)
        return f"{THINK_START}{body} {THINK_END} {self.answer}"


def thinking_example(seed: int, index: int) -> ThinkingExample:
    digest = hashlib.sha256(f"pangu-reasoning/v{REASONING_VERSION}/{seed}/{index}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "little"))
    nums = [rng.randint(0, 99) for _ in range(rng.randint(2, 4))]
    steps, total = [], nums[0]
    for n in nums[1:]:
        steps.append(f"{total}+{n}={total + n}")
        total += n
    thoughts = []
    if rng.random() < 0.5:
        a, b = rng.sample(nums, 2)
        thoughts.append(f"try {a}+{str(b)[0]}")
    thoughts += steps + [f"so {total}"]
    solved_at = len(thoughts)
    for _ in range(rng.randint(1, 3)):
        thoughts += [f"check {s}" for s in steps] + [f"so {total}"]
    return ThinkingExample("+".join(map(str, nums)) + "=?", tuple(thoughts), str(total), solved_at)


def write_reasoning_corpus(path: str, num: int = 20000, seed: int = 0) -> int:
    """`num` conversations as chat JSONL lines; returns the count."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(num):
            ex = thinking_example(seed, i)
            f.write(json.dumps({"messages": [{"role": "user", "content": ex.question},
                                             {"role": "assistant", "content": ex.response}]}) + "\n")
    os.replace(tmp, path)
    return num


def main(argv=None) -> int:
    import argparse

    from recipes.cli import run_command

    parser = argparse.ArgumentParser(prog="python -m recipes.data.reasoning",
                                     description="write the thinking-trace reasoning corpus (chat JSONL)")
    parser.add_argument("--out", default="data/reasoning.jsonl")
    parser.add_argument("--conversations", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    args = parser.parse_args(argv)

    def body():
        if args.conversations < 1:
            raise ValueError(f"--conversations: {args.conversations} must be >= 1")
        n = write_reasoning_corpus(args.out, args.conversations, args.seed)
        print(f"wrote {n} reasoning conversations to {args.out}")

    return run_command(body, args.debug)


if __name__ == "__main__":
    import sys

    sys.exit(main())
