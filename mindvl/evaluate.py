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
