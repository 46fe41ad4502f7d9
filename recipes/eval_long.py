"""Long-context evaluation: `python -m recipes.eval_long RUN [--multiples 4,16,64] [--limit 100] [--json]`.

Key-value recall (recipes/data/long_context.py) over contexts of 1x (the short-context reference) and
each multiple of the run's training length W (data.seq_length), answered three ways, greedy:

- full:     the whole prompt (positions up to multiple x W: the model never saw them);
- truncate: the last W tokens of the prompt;
- xl3m:     the key context of pangu.xl3m (segments of --segment-tokens, --top-k of them).

An answer is correct when the decoded text (stripped) equals the digit. Prints a table (accuracy,
seconds, the largest forward pass in tokens) or, with --json, one object:
{"short": acc, "full": {multiple: acc}, "truncate": {...}, "xl3m": {...}, "seconds": {...},
"forward_tokens": {...}, "kept_planted": {mode: {multiple: fraction of prompts whose answered context
still holds the planted pair}}, "peak_rss_mb": ..., ...} (peak_rss_mb: the whole process; run one mode per
process with --modes to compare their memory). The run should know the `lookup` task
(recipes/pangu_pro_moe/pretrain_lookup_tiny.yaml).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from recipes.cli import run_command

os.environ.setdefault("GLOG_v", "3")

MODES = ("full", "truncate", "xl3m")


def word_start_ids(tokenizer) -> list[int]:
    """Pieces that start a word (sentencepiece's "▁" prefix): where XL3M may cut segments."""
    return [i for i in range(tokenizer.vocab_size) if tokenizer.id_to_piece(i).startswith("\u2581")]


def build_prompts(tokenizer, train_length: int, multiple: int, limit: int, seed: int):
    """(prompts as token ids, answers, XL3M question tokens, the planted pairs' text) for contexts of about multiple x W tokens
    (1x: the longest that fits in W). The question tokens are the fewest any prompt's question has
    (" ? ab=" is 3 or 4 tokens): the last 3 always hold the key and "="."""
    from recipes.data.long_context import long_lookup

    def encode(ex):
        ids, ctx = tokenizer.encode(ex.prompt), tokenizer.encode(ex.context)
        if ids[: len(ctx)] != ctx:
            raise ValueError("long_lookup: the question does not start a new token; check the tokenizer")
        return ids, len(ids) - len(ctx)

    per_pair = len(tokenizer.encode(long_lookup(64, seed, 0, 0).context)) / 64
    pairs = max(1, int((multiple * train_length - 4) / per_pair))
    prompts, answers, q_lens, needles = [], [], [], []
    for i in range(limit):
        ex = long_lookup(pairs, seed, multiple, i)
        ids, q = encode(ex)
        while multiple == 1 and len(ids) > train_length:  # the short reference must fit in W
            pairs -= 1
            ex = long_lookup(pairs, seed, multiple, i)
            ids, q = encode(ex)
        prompts.append(ids)
        answers.append(ex.answer)
        q_lens.append(q)
        needles.append(ex.question.split()[-1] + ex.answer)
    return prompts, answers, min(q_lens), needles  # a key is one or two tokens: the shortest question is in every prompt


def evaluate_long(run, multiples=(4, 16, 64), limit: int = 100, seed: int = 0, segment_tokens: int = 32,
                  top_k: int = 2, threshold: float | None = None, measure: str = "logprob",
                  batch_size: int = 16, modes=MODES, log=print) -> dict:
    """Accuracy per mode and multiple (plus the 1x short-context reference) on a loaded text run."""
    from pangu import xl3m
    from pangu.generate import Compiled, generate

    tok, w = run.tokenizer, run.recipe.data.seq_length
    model = Compiled(run.model)
    boundary = word_start_ids(tok)
    result = {"train_length": w, "limit": limit, "segment_tokens": segment_tokens, "top_k": top_k,
              "threshold": threshold, "measure": measure, "seconds": {}, "forward_tokens": {},
              "context_tokens": {}, "kept_planted": {}}

    def accuracy(new, answers):
        return sum(tok.decode(n).strip() == a for n, a in zip(new, answers)) / len(answers)

    prompts, answers, q_len, _ = build_prompts(tok, w, 1, limit, seed)
    t0 = time.perf_counter()
    result["short"] = accuracy(generate(model, prompts, 1, stop_ids=[tok.eod_id], pad_id=tok.pad_id,
                                        batch_size=batch_size), answers)
    result["seconds"]["short"] = round(time.perf_counter() - t0, 2)
    log(f"1x ({max(map(len, prompts))} tokens): short-context accuracy {result['short']:.3f}")
    cfg = xl3m.XL3MConfig(w, segment_tokens, q_len, top_k=None if threshold is not None else top_k,
                          threshold=threshold, measure=measure, batch_size=batch_size)
    for mode in modes:
        result[mode] = {}
        result["seconds"][mode] = {}
        result["forward_tokens"][mode] = {}
        if mode != "full":
            result["kept_planted"][mode] = {}
    for mult in multiples:
        prompts, answers, _, needles = build_prompts(tok, w, mult, limit, seed)
        longest = max(map(len, prompts))
        result["context_tokens"][mult] = longest
        for mode in modes:
            t0 = time.perf_counter()
            if mode == "xl3m":
                new, keys = xl3m.generate(model, prompts, 1, cfg, boundary, pad_id=tok.pad_id,
                                          stop_ids=[tok.eod_id], batch_size=batch_size)
                fwd = max(batch_size * (segment_tokens + q_len), max(len(k.ids) for k in keys))
                kept = [k.ids for k in keys]
            else:
                rows = prompts if mode == "full" else [p[-w:] for p in prompts]
                bs = batch_size if mode == "truncate" else max(1, batch_size * w // longest)
                new = generate(model, rows, 1, stop_ids=[tok.eod_id], pad_id=tok.pad_id, batch_size=bs)
                fwd = bs * (max(map(len, rows)) + 1)
                kept = rows
            acc = accuracy(new, answers)
            if mode != "full":  # does the prompt the model answers from still hold the planted pair?
                result["kept_planted"][mode][mult] = sum(n in tok.decode(k).split() for n, k in zip(needles, kept)) / limit
            secs = round(time.perf_counter() - t0, 2)
            result[mode][mult], result["seconds"][mode][mult], result["forward_tokens"][mode][mult] = acc, secs, fwd
            held = f", planted pair kept {result['kept_planted'][mode][mult]:.3f}" if mode != "full" else ""
            log(f"{mult}x ({longest} tokens) {mode:>8}: accuracy {acc:.3f}{held}, {secs:.1f} s, largest forward {fwd} tokens")
    import resource

    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # whole process
    return result


def parse_multiples(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--multiples: {text!r} is not a comma-separated list of integers; use e.g. 4,16,64") from None
    if not values or min(values) < 2:
        raise ValueError(f"--multiples: {text!r} must list integers >= 2 (1x is always the short reference)")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m recipes.eval_long", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="run directory trained on the lookup task (e.g. runs/pro_lookup_dense)")
    parser.add_argument("--multiples", default="4,16,64", help="context lengths as multiples of the training length")
    parser.add_argument("--limit", type=int, default=100, help="examples per multiple")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--segment-tokens", type=int, default=32, help="XL3M segment length")
    parser.add_argument("--top-k", type=int, default=None, help="XL3M: segments kept (default 2)")
    parser.add_argument("--threshold", type=float, default=None, help="XL3M: keep segments scoring >= T instead of top-k")
    parser.add_argument("--measure", default="logprob", choices=("logprob", "entropy"), help="XL3M relevance measure")
    parser.add_argument("--batch-size", type=int, default=16, help="sub-contexts / prompts per forward pass")
    parser.add_argument("--modes", default=",".join(MODES), help="subset of full,truncate,xl3m")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def body():
        import mindspore as ms

        from recipes.io.load import load_model

        multiples = parse_multiples(args.multiples)
        modes = tuple(args.modes.split(","))
        bad = [m for m in modes if m not in MODES]
        if bad:
            raise ValueError(f"--modes: unknown mode {bad[0]!r}; choose from {','.join(MODES)}")
        if args.limit < 1:
            raise ValueError(f"--limit: {args.limit} must be >= 1")
        if args.top_k is not None and args.threshold is not None:
            raise ValueError("--top-k and --threshold both given; XL3M keeps the top K or those >= T, pick one")
        run = load_model(args.path, log=(lambda *a: None) if args.json else print)
        if run.recipe is None or run.tokenizer is None:
            raise ValueError(f"{args.path}: needs a run directory (its training length and tokenizer); "
                             "import a serving directory with recipes.import_hf first")
        if run.spec.build_dataset is not None:
            raise ValueError(f"{args.path}: a {run.spec.name} model takes more than text; eval_long scores text models")
        ms.set_context(mode=ms.GRAPH_MODE)
        log = (lambda *a: None) if args.json else print
        result = evaluate_long(run, multiples, args.limit, args.seed, args.segment_tokens,
                               args.top_k if args.top_k is not None else 2, args.threshold, args.measure,
                               args.batch_size, modes, log)
        if args.json:
            print(json.dumps(result))

    return run_command(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
