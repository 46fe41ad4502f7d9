"""Validation accuracy and test-time resolution search.

Accuracy = exact match of the answer: a sample counts as correct when the argmax prediction at
every target position (answer tokens, closing <|im_end|> / eod) equals the label. Under teacher
forcing that is exactly "greedy decoding reproduces the answer and stops", from one forward pass.

Resolution search (MindVL): evaluate the validation accuracy with every image resized to about N
pixels for several budgets N (min_pixels = max_pixels = N: small images are upscaled, large ones
downscaled, aspect kept), pick the best (ties -> the smaller, cheaper budget), record the choice and
all scores in the processor config (preprocessor_config.json) that export writes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mindvl.data import collate, encode_example, pack
from mindvl.model import batch_args


def accuracy(model, samples, tokenizer, seq_len: int, max_patches: int, rows_per_batch: int = 4,
             forward=None) -> dict:
    """{"accuracy": overall, "<task>": per-task accuracy, "n": samples} over processed samples."""
    forward = forward or model
    rows = pack(samples, seq_len, max_patches)
    merge = model.vision_config.spatial_merge_size
    correct = np.zeros(len(samples), bool)
    for start in range(0, len(rows), rows_per_batch):
        chunk = rows[start:start + rows_per_batch]
        chunk = chunk + [[] for _ in range(rows_per_batch - len(chunk))]   # fixed shapes for graph mode
        batch = collate(samples, chunk, seq_len, max_patches, tokenizer, merge,
                        model.vision_config.window_merged, model.vision_config.patch_dim)
        pred = forward(*batch_args(model, batch)).asnumpy().argmax(-1)
        for b, row in enumerate(chunk):
            t = 0
            for i in row:
                L = len(samples[i].ids)
                m = batch["loss_mask"][b, t:t + L] > 0
                correct[i] = bool((pred[b, t:t + L][m] == batch["labels"][b, t:t + L][m]).all())
                t += L
    out = {"accuracy": float(correct.mean()) if len(samples) else 0.0, "n": len(samples)}
    for task in sorted({s.task for s in samples}):
        sel = np.array([s.task == task for s in samples])
        out[task] = float(correct[sel].mean())
    return out


def evaluate_dataset(model, dataset, rows_per_batch: int = 4) -> dict:
    """The trainer's evaluation hook (registry spec `evaluate`): exact-match accuracy over the whole
    validation split of a `MultimodalPackedDataset`, as {"val_accuracy": overall,
    "val_accuracy_<task>": per task}. The processed samples are cached on the dataset."""
    samples = getattr(dataset, "_eval_samples", None)
    if samples is None:
        samples = [encode_example(ex, dataset.processor, dataset.tokenizer, dataset.cfg.template)
                   for ex in dataset.examples]
        dataset._eval_samples = samples
    acc = accuracy(model, samples, dataset.tokenizer, dataset.cfg.seq_length, dataset.cfg.max_patches,
                   rows_per_batch)
    out = {"val_accuracy": acc["accuracy"]}
    out.update({f"val_accuracy_{k}": v for k, v in acc.items() if k not in ("accuracy", "n")})
    return out


def at_budget(processor, budget: int):
    """`processor` resizing every image to about `budget` pixels (min_pixels = max_pixels = budget)."""
    proc = dataclasses.replace(processor, min_pixels=int(budget), max_pixels=int(budget), extra={})
    proc.validate()
    return proc


def resolution_search(model, examples, processor, tokenizer, budgets, seq_len: int, max_patches: int,
                      template: str = "chat", rows_per_batch: int = 4, forward=None):
    """Evaluate `examples` (raw dataset items) with every image resized to about each budget's pixels.

    Returns (best processor (`at_budget`) with the choice recorded in `extra["resolution_search"]`,
    scores). Samples that do not fit seq_len/max_patches at a budget raise (size them for the largest).
    """
    scores = {}
    for budget in sorted(int(b) for b in budgets):
        proc = at_budget(processor, budget)
        samples = [encode_example(ex, proc, tokenizer, template) for ex in examples]
        scores[budget] = accuracy(model, samples, tokenizer, seq_len, max_patches, rows_per_batch, forward)
    best = max(scores, key=lambda b: (scores[b]["accuracy"], -b))
    chosen = at_budget(processor, best)
    chosen.extra = dict(processor.extra, resolution_search={
        "metric": "validation exact-match accuracy", "chosen_max_pixels": best,
        "scores": {str(b): s["accuracy"] for b, s in scores.items()}, "num_samples": len(examples)})
    return chosen, scores


def main(argv=None) -> int:
    """`python -m mindvl.evaluate RECIPE.yaml [--run DIR] [--budgets 784,3136,...] [--set k=v]`:
    validation accuracy of a trained run with images resized to several pixel budgets (test-time
    resolution search);
    writes the chosen processor (preprocessor_config.json with the search record) into the run dir."""
    import argparse

    from recipes.cli import run_command

    ap = argparse.ArgumentParser(prog="python -m mindvl.evaluate", description=main.__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("--run", default=None, help="run dir or checkpoint (default: the recipe's run dir)")
    ap.add_argument("--budgets", default="784,1568,3136,7056,12544",
                    help="pixels per image (each image is resized to about this area), comma-separated")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    args = ap.parse_args(argv)
    return run_command(lambda: _search(args), args.debug)


def _search(args) -> int:
    """The body of `main`: load the run, search, write the chosen processor next to its checkpoints."""
    import json
    import os

    import mindspore as ms

    from pangu import registry
    from recipes import checkpoint as ckpt_lib
    from recipes.config import load_recipe
    from recipes.trainer import run_dir_of
    from mindvl.dataset import MultimodalPackedDataset

    try:
        budgets = [int(b) for b in args.budgets.split(",")]
    except ValueError:
        raise ValueError(f"--budgets: {args.budgets!r} is not a comma-separated list of pixel counts; "
                         "use e.g. 784,3136,12544") from None
    recipe, cfg = load_recipe(args.recipe, args.overrides)
    if recipe.model.arch != "mindvl":
        raise ValueError(f"{args.recipe}: model.arch is {recipe.model.arch!r}; the resolution search needs a "
                         "MindVL recipe (e.g. recipes/mindvl/sft_tiny.yaml)")
    ms.set_context(mode=ms.GRAPH_MODE)
    val = MultimodalPackedDataset(recipe.data, "val")
    cfg = dataclasses.replace(cfg, vocab_size=val.tokenizer.vocab_size)
    model = registry.build_model(cfg, seed=recipe.train.seed)
    source = ckpt_lib.resolve_init_from(args.run or run_dir_of(recipe))
    tensors = ckpt_lib.load_tensors(source, ckpt_lib.MODEL_FILE)
    for p in model.get_parameters():
        p.set_data(ms.Tensor(tensors[p.name]).astype(p.dtype))
    model.set_train(False)
    chosen, scores = resolution_search(model, val.examples, val.processor, val.tokenizer,
                                       budgets, recipe.data.seq_length,
                                       recipe.data.max_patches, recipe.data.template)
    for budget, s in scores.items():
        side = int(round(budget ** 0.5))
        print(f"{budget} px per image (~{side}x{side}): " + ", ".join(f"{k} {v:.3f}" for k, v in s.items() if k != "n"))
    out = os.path.dirname(source.rstrip("/")) if os.path.basename(os.path.dirname(source.rstrip("/"))) == "checkpoints" else source
    out = os.path.dirname(out) if os.path.basename(out) == "checkpoints" else out
    path = chosen.save(out)
    print(f"chosen {chosen.extra['resolution_search']['chosen_max_pixels']} px per image (trained with "
          f"min_pixels {recipe.data.min_pixels}, max_pixels {recipe.data.max_pixels}); wrote {path}")
    print(json.dumps(chosen.extra["resolution_search"]))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
