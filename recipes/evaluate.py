"""Exact-match evaluation of a run on held-out prompts: `python -m recipes.evaluate RUN_DIR_OR_CKPT
[--split val] [--limit N] [--batch-size 32] [--max-new-tokens N]`.

Text models: each held-out conversation's prompt (everything up to the last `<|assistant|>`) is decoded
greedily until `<eod>` / `<|user|>`; the answer is correct when the decoded text equals the reference
answer (both stripped of surrounding whitespace). An architecture with its own `evaluate` hook
(MindVL: exact match of the answer under teacher forcing) is scored by that hook on the validation
split. Accuracy is reported per task and overall and written to `<run>/eval.json`.

MindVL test-time resolution search: `python -m recipes.evaluate RUN --resolution-search [--budgets
784,3136,12544]` scores the validation split with every image resized to about each pixel budget and
writes the best processor (preprocessor_config.json with the search record) into the run directory, so
an export carries it. `--data-from RECIPE` scores on another recipe's data (e.g. the SFT chat prompts).
User errors print one line and exit with status 2 (`--debug` for the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from typing import Sequence

from recipes.cli import run_command

os.environ.setdefault("GLOG_v", "3")


def stop_ids(tokenizer) -> list[int]:
    """Tokens that end an answer: eod, and `<|user|>` (the start of the next turn)."""
    return [tokenizer.eod_id] + ([tokenizer.user_id] if tokenizer.user_id is not None else [])


def is_exact_match(generated: str, reference: str) -> bool:
    return generated.strip() == reference.strip()


def score(tasks: Sequence[str], generated: Sequence[str], references: Sequence[str]) -> dict:
    """{"accuracy", "num_examples", "per_task": {task: {"n", "correct", "accuracy"}}} (tasks sorted)."""
    per = defaultdict(lambda: [0, 0])
    for task, gen, ref in zip(tasks, generated, references):
        per[task][0] += 1
        per[task][1] += int(is_exact_match(gen, ref))
    n = sum(v[0] for v in per.values())
    correct = sum(v[1] for v in per.values())
    return {
        "accuracy": correct / n if n else 0.0,
        "num_examples": n,
        "num_correct": correct,
        "per_task": {t: {"n": v[0], "correct": v[1], "accuracy": v[1] / v[0]} for t, v in sorted(per.items())},
    }


def evaluate(run, split: str = "val", limit: int | None = None, batch_size: int = 32,
             max_new_tokens: int | None = None, num_shown: int = 8, data=None) -> dict:
    """Exact-match accuracy of greedy answers on the conversations of `split` of a loaded text run
    (recipes.io.load.LoadedModel; `data`: another recipe's data config instead of the run's own);
    the eval.json content."""
    from pangu.generate import generate
    from recipes.data import build_conversations

    tok = run.tokenizer
    convs = build_conversations(data or run.recipe.data, split)
    if limit is not None:
        convs = convs[:limit]
    prompts = tok.encode_batch([c.prompt for c in convs])
    if max_new_tokens is None:  # room for the longest reference answer and its stop token
        max_new_tokens = max(len(ids) for ids in tok.encode_batch([c.answer for c in convs])) + 1
    new = generate(run.model, prompts, max_new_tokens, stop_ids=stop_ids(tok), batch_size=batch_size,
                   pad_id=tok.pad_id)
    generated = [tok.decode(ids) for ids in new]
    result = score([c.task for c in convs], generated, [c.answer for c in convs])
    result.update({
        "run_dir": run.run_dir,
        "checkpoint": run.checkpoint,
        "step": run.step,
        "split": split,
        "decoding": "greedy",
        "max_new_tokens": max_new_tokens,
        "examples": [
            {"task": c.task, "prompt": c.prompt, "reference": c.answer, "generated": g,
             "correct": is_exact_match(g, c.answer)}
            for c, g in list(zip(convs, generated))[:num_shown]
        ],
    })
    return result


def resolution_search(run, budgets, data=None, log=print) -> str:
    """MindVL: the validation accuracy at every pixel budget; writes the chosen processor (with the
    record of all scores) into the run directory and returns its path."""
    import mindvl.evaluate as vl_eval

    if run.spec.data_config_cls is None:   # MindVL (mindvl, mindvl_pangu): the image data hooks
        raise ValueError(f"--resolution-search: {run.run_dir} is a {run.spec.name} run; the search needs a "
                         "MindVL run (e.g. runs/sft_tiny)")
    data = data or run.recipe.data
    val = run.spec.build_dataset(data, "val")
    chosen, scores = vl_eval.resolution_search(run.model, val.examples, val.processor, val.tokenizer, budgets,
                                               data.seq_length, data.max_patches, data.template)
    for budget, s in scores.items():
        side = int(round(budget ** 0.5))
        log(f"{budget} px per image (~{side}x{side}): " + ", ".join(f"{k} {v:.3f}" for k, v in s.items() if k != "n"))
    path = chosen.save(run.run_dir)
    log(f"chosen {chosen.extra['resolution_search']['chosen_max_pixels']} px per image (trained with "
        f"min_pixels {data.min_pixels}, max_pixels {data.max_pixels}); wrote {path}")
    log(json.dumps(chosen.extra["resolution_search"]))
    return path


def arch_scores(run, split: str = "val", limit: int | None = None, data=None) -> dict:
    """An architecture's own `evaluate` hook (MindVL) on `split` of the run's data (or `data`), in
    evaluate()'s format."""
    import copy

    dataset = run.spec.build_dataset(data or run.recipe.data, split)
    scored = dataset
    if limit is not None:  # the hook scores `examples`: hand it a view with the first `limit`
        scored = copy.copy(dataset)
        scored.examples = [dataset.examples[i] for i in range(min(limit, len(dataset.examples)))]
    scores = run.spec.evaluate(run.model, scored)
    prefix = "val_accuracy_"
    return {"accuracy": float(scores["val_accuracy"]), "num_examples": len(scored.examples),
            "per_task": {k[len(prefix):]: {"accuracy": float(v)} for k, v in sorted(scores.items())
                         if k.startswith(prefix)}}


def parse_budgets(text: str) -> list[int]:
    try:
        budgets = [int(b) for b in text.split(",")]
    except ValueError:
        raise ValueError(f"--budgets: {text!r} is not a comma-separated list of pixel counts; "
                         "use e.g. 784,3136,12544") from None
    if not budgets or min(budgets) <= 0:
        raise ValueError(f"--budgets: {text!r} must list positive pixel counts; use e.g. 784,3136,12544")
    return budgets


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m recipes.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="run directory (newest valid checkpoint) or a checkpoints/step_* directory")
    parser.add_argument("--split", default="val", choices=("val", "train"), help="conversations to score")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N conversations")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts decoded together")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: longest reference + 1")
    parser.add_argument("--data-from", default=None, metavar="RECIPE",
                        help="score on this recipe's data instead of the run's own (e.g. the SFT chat prompts)")
    parser.add_argument("--resolution-search", action="store_true",
                        help="MindVL: search the pixel budget per image (--budgets) and write it into the run")
    parser.add_argument("--budgets", default="784,1568,3136,7056,12544",
                        help="pixels per image for --resolution-search, comma-separated")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def body():
        import mindspore as ms

        from recipes.io.load import load_model

        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit: {args.limit} must be >= 1")
        budgets = parse_budgets(args.budgets) if args.resolution_search else None
        data = None
        if args.data_from is not None:
            from recipes.engine.config import load_recipe

            data = load_recipe(args.data_from, ["init_from=null"])[0].data
        from recipes.io.rundir import check_unlocked

        path = os.path.normpath(args.path)   # a run, or a step_* directory of one (run/checkpoints/step_*)
        parent = os.path.dirname(path)
        for run_dir in (path, os.path.dirname(parent)) if os.path.basename(parent) == "checkpoints" else (path,):
            check_unlocked(run_dir, "eval")   # eval.json goes into the run directory, which a live run owns
        run = load_model(args.path)
        if run.recipe is None:
            raise ValueError(f"{args.path}: a serving directory has no held-out data; evaluate the run directory "
                             "it was exported from (or import it with recipes.import_hf)")
        if budgets is not None or run.spec.evaluate is not None:
            ms.set_context(mode=ms.GRAPH_MODE)   # teacher-forced scoring of whole batches, compiled
        if budgets is not None:
            resolution_search(run, budgets, data)
            return
        if run.spec.evaluate is not None:
            result = arch_scores(run, args.split, args.limit, data)
        else:
            result = evaluate(run, args.split, args.limit, args.batch_size, args.max_new_tokens, data=data)
        out = os.path.join(run.run_dir, "eval.json")
        with open(out + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(out + ".tmp", out)
        for task, r in result["per_task"].items():
            counts = f"{r['correct']:4d}/{r['n']:<4d} = " if "n" in r else ""
            print(f"{task:>10}: {counts}{r['accuracy']:.3f}")
        counts = f"{result['num_correct']:4d}/{result['num_examples']:<4d} = " if "num_correct" in result else ""
        print(f"{'overall':>10}: {counts}{result['accuracy']:.3f} ({args.split}, step {run.step}); wrote {out}")

    return run_command(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
