"""Run a recipe: `python -m recipes.run RECIPE.yaml [--set key=value ...] [--resume] [--debug]`.

User errors (bad keys, wrong types, impossible shapes, missing files, corrupted checkpoints) print
one line naming the problem and the fix and exit with status 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from recipes.cli import run_command

os.environ.setdefault("GLOG_v", "3")  # MindSpore: errors only; its warnings drown the progress bar


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m recipes.run", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="recipe YAML, e.g. recipes/pangu_pro_moe/pretrain_tiny.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key (repeatable), e.g. --set train.steps=50")
    parser.add_argument("--resume", action="store_true", help="continue the run from its newest valid checkpoint")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser.parse_args(argv)


def split_overrides(values: list[str]) -> list[str]:
    """`--set "a=1 b=2"` (as the Makefile's SET variable passes them) is the same as two --set flags."""
    out = []
    for value in values:
        out.extend(value.split())
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_command(lambda: _run(args), args.debug)


def _run(args) -> int:
    from recipes.engine.config import load_recipe
    from recipes.engine.trainer import Trainer

    recipe, model_cfg = load_recipe(args.recipe, split_overrides(args.overrides))
    start = time.perf_counter()
    if recipe.description:
        print(recipe.description)
    trainer = Trainer(recipe, model_cfg, resume=args.resume)
    n_params = sum(p.size for p in trainer.model.get_parameters())
    print(f"{recipe.model.arch}/{recipe.model.preset}: {n_params / 1e6:.2f}M parameters, "
          f"vocab {trainer.model_cfg.vocab_size}, {trainer.train_data.num_rows} training rows "
          f"of {recipe.data.seq_length} tokens, device {trainer.device}, run dir {trainer.run_dir}")
    start_step = trainer.step
    result = trainer.train()
    if result.steps_done == start_step:   # --resume of a finished run: no loss to report
        print(f"done: nothing trained (the run is complete at step {start_step}); run dir {result.run_dir}")
        return 0
    val = f", validation loss {result.val_loss:.3f}" if result.val_loss is not None else ""
    val += "".join(f", {k} {v:.3f}" for k, v in getattr(trainer, "val_metrics", {}).items())  # arch metrics
    print(f"done: {result.steps_done} steps in {time.perf_counter() - start:.0f} s; loss "
          f"{result.first_loss:.3f} -> {result.final_loss:.3f}{val}; run dir {result.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
