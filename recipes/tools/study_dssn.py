"""DSSN + TinyInit vs plain pre-norm + std 0.02 on Pangu Ultra MoE, same data and seed.

    python -m recipes.tools.study_dssn [--steps 300] [--preset tiny] [--lr 3e-3] [--out docs/ultra_dssn_study]

Trains the two variants of `recipes/pangu_ultra_moe/pretrain_tiny.yaml` (everything else equal),
then writes a plot of loss and gradient norm per step and prints a Markdown table: final and best losses,
validation loss, and gradient-norm spikes. A spike is a step whose gradient norm exceeds
`SPIKE_RATIO` times the median of the previous `SPIKE_WINDOW` steps (counted after warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

os.environ.setdefault("GLOG_v", "3")

RECIPE = "recipes/pangu_ultra_moe/pretrain_tiny.yaml"
SPIKE_RATIO = 2.0
SPIKE_WINDOW = 20
VARIANTS = {
    "DSSN + TinyInit": ["model.sandwich_norm=true", "model.tiny_init=true"],
    "pre-norm + std 0.02": ["model.sandwich_norm=false", "model.tiny_init=false", "model.initializer_range=0.02"],
}


def count_spikes(grad_norms: list[float], skip: int) -> int:
    """Steps (after `skip`) whose grad norm exceeds SPIKE_RATIO x the trailing-window median."""
    spikes = 0
    for i in range(max(skip, SPIKE_WINDOW), len(grad_norms)):
        if grad_norms[i] > SPIKE_RATIO * statistics.median(grad_norms[i - SPIKE_WINDOW:i]):
            spikes += 1
    return spikes


def run_variant(name: str, sets: list[str], args) -> list[dict]:
    from recipes.engine.config import load_recipe
    from recipes.engine.trainer import Trainer

    run_name = "study_" + ("dssn" if "DSSN" in name else "prenorm")
    recipe, model_cfg = load_recipe(RECIPE, [
        *sets, f"model.preset={args.preset}", f"train.steps={args.steps}", f"optimizer.lr={args.lr}",
        f"schedule.min_lr={args.lr / 10}", f"run.root={args.runs}", f"run.name={run_name}",
        "checkpoint.every=0", "checkpoint.keep_last=1",
    ])
    Trainer(recipe, model_cfg, log=lambda *_: None).train()
    with open(os.path.join(args.runs, run_name, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--runs", default="runs/study_dssn")
    parser.add_argument("--out", default="docs/ultra_dssn_study")
    args = parser.parse_args(argv)

    results = {name: run_variant(name, sets, args) for name, sets in VARIANTS.items()}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_norm) = plt.subplots(1, 2, figsize=(11, 4))
    rows = []
    for name, records in results.items():
        steps = [r["step"] for r in records]
        ax_loss.plot(steps, [r["lm_loss"] for r in records], label=name, linewidth=1)
        ax_norm.plot(steps, [r["grad_norm"] for r in records], label=name, linewidth=1)
        norms = [r["grad_norm"] for r in records]
        warmup = 30
        rows.append((
            name, records[-1]["lm_loss"], min(r["lm_loss"] for r in records),
            records[-1].get("val_loss", float("nan")), max(norms[warmup:]) if len(norms) > warmup else max(norms),
            count_spikes(norms, warmup),
        ))
    ax_loss.set(xlabel="step", ylabel="LM loss", title=f"Ultra MoE {args.preset}: loss")
    ax_norm.set(xlabel="step", ylabel="gradient norm (before clipping)", yscale="log", title="gradient norm")
    for ax in (ax_loss, ax_norm):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out + ".png", dpi=110)

    header = ("| variant | final LM loss | best LM loss | validation loss | max grad norm after warm-up "
              f"| grad-norm spikes (> {SPIKE_RATIO}x median of previous {SPIKE_WINDOW}) |\n|---|---|---|---|---|---|\n")
    table = header + "".join(f"| {n} | {a:.4f} | {b:.4f} | {c:.4f} | {d:.3f} | {e} |\n" for n, a, b, c, d, e in rows)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
