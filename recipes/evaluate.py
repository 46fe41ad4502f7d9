"""Exact-match evaluation of a run on held-out prompts: `python -m recipes.evaluate RUN_DIR_OR_CKPT
[--split val] [--limit N] [--batch-size 32] [--max-new-tokens N]`.

Each held-out conversation's prompt (everything up to the last `<|assistant|>`) is decoded greedily
until `<eod>` / `<|user|>`; the answer is correct when the decoded text equals the reference answer
(both stripped of surrounding whitespace). Accuracy is reported per task and overall and written to
`<run>/eval.json`. User errors print one line and exit with status 2 (`--debug` for the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence
from recipes.cli import run_command

os.environ.setdefault("GLOG_v", "3")


@dataclass
class LoadedRun:
    run_dir: str
    checkpoint: str  # checkpoint directory the weights came from
    step: int
    recipe: object  # RecipeConfig
    model_cfg: object
    model: object
    tokenizer: object  # recipes.data.Tokenizer


def load_run(path: str, log=print) -> LoadedRun:
    """Model + tokenizer of a run directory (newest valid checkpoint) or of one checkpoint directory."""
    import yaml

    from pangu import registry
    from recipes import checkpoint as ckpt_lib
    from recipes.config import ConfigError, resolve
    from recipes.data import build_dataset

    path = os.path.normpath(path)
    if os.path.isfile(os.path.join(path, ckpt_lib.MANIFEST_FILE)):
        ckpt_lib.verify(path)
        ckpt_path, run_dir = path, os.path.dirname(os.path.dirname(path))
    else:
        run_dir = path
        found = ckpt_lib.latest_valid(os.path.join(run_dir, "checkpoints"), warn=log)
        if found is None:
            raise ConfigError(f"{path}: no valid checkpoint under {path}/checkpoints; give a run directory that "
                              "finished a checkpoint, or a step_* directory")
        ckpt_path = found.path
    config_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(config_path):
        raise ConfigError(f"{config_path}: not found; evaluate a run directory made by recipes.run (or its checkpoints)")
    with open(config_path) as f:
        raw = yaml.safe_load(f) or {}
    raw["init_from"] = None  # the previous stage may be gone; its weights are in this checkpoint anyway
    recipe, model_cfg = resolve(raw, default_run_name=os.path.basename(run_dir))
    tokenizer = build_dataset(recipe.data, "train").tokenizer
    model = registry.build_model(model_cfg)
    params = {p.name: p for p in model.get_parameters()}
    tensors = ckpt_lib.load_tensors(ckpt_path, ckpt_lib.MODEL_FILE)
    ckpt_lib.check_compatible({n: p.shape for n, p in params.items()}, tensors, ckpt_path)
    from mindspore import Tensor

    for name, param in params.items():
        param.set_data(Tensor(tensors[name]).astype(param.dtype))
    model.set_train(False)
    step = int(ckpt_lib.verify(ckpt_path).get("step", 0))
    return LoadedRun(run_dir, ckpt_path, step, recipe, model_cfg, model, tokenizer)


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


def evaluate(run: LoadedRun, split: str = "val", limit: int | None = None, batch_size: int = 32,
             max_new_tokens: int | None = None, num_shown: int = 8) -> dict:
    """Exact-match accuracy of greedy answers on the conversations of `split`; the eval.json content."""
    from pangu.generate import generate
    from recipes.data import build_conversations

    tok = run.tokenizer
    convs = build_conversations(run.recipe.data, split)
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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m recipes.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="run directory (newest valid checkpoint) or a checkpoints/step_* directory")
    parser.add_argument("--split", default="val", choices=("val", "train"), help="conversations to score")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N conversations")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts decoded together")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: longest reference + 1")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def body():
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit: {args.limit} must be >= 1")
        run = load_run(args.path)
        result = evaluate(run, args.split, args.limit, args.batch_size, args.max_new_tokens)
        out = os.path.join(run.run_dir, "eval.json")
        with open(out + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(out + ".tmp", out)
        for task, r in result["per_task"].items():
            print(f"{task:>10}: {r['correct']:4d}/{r['n']:<4d} = {r['accuracy']:.3f}")
        print(f"{'overall':>10}: {result['num_correct']:4d}/{result['num_examples']:<4d} = {result['accuracy']:.3f} "
              f"({args.split}, step {run.step}); wrote {out}")

    return run_command(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
