"""Interleaved A/B of train-step variants in ONE process (how docs/benchmarks.md measures a change).

    python -m recipes.tools.bench_ab pangu_pro_moe 'old|PANGU_OPS_THREADS=2|' 'new||'
    python -m recipes.tools.bench_ab pangu_pro_moe 'ref||optimizer.impl=reference' 'kernel||' --rounds 16

Each variant is `NAME|ENV|OVERRIDES`: ENV = comma-separated VAR=VALUE set around each of its steps
(variables read at run time, e.g. PANGU_OPS_THREADS, PANGU_GMM_THREADS), OVERRIDES = space-separated
recipe overrides (as `--set`). One Trainer per variant is built from the arch's bench recipe
(`recipes.tools.bench`: bench preset, batch 4 x seq 512), compiled and warmed up; then the variants take
turns, one step each, for --rounds rounds (the order reversed every other round), so load from other
processes on a shared machine hits all of them alike. Prints each variant's median step time and its
speed relative to the first variant, with the load average.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np


def parse_variant(spec: str) -> dict:
    """'name|VAR=V,VAR2=W|key=value key2=value2' -> {"name", "env", "overrides"}."""
    parts = spec.split("|")
    if len(parts) != 3 or not parts[0]:
        raise ValueError(f"variant {spec!r}: use NAME|ENV|OVERRIDES, e.g. 'ref||optimizer.impl=reference'")
    env = {}
    for item in filter(None, parts[1].split(",")):
        if "=" not in item:
            raise ValueError(f"variant {spec!r}: env item {item!r} is not VAR=VALUE")
        key, value = item.split("=", 1)
        env[key] = value
    return {"name": parts[0], "env": env, "overrides": parts[2].split()}


def main(argv=None) -> list:
    from recipes.tools.bench import ARCHS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arch", choices=sorted(ARCHS))
    ap.add_argument("variants", nargs="+", help="NAME|ENV|OVERRIDES (see the module docstring)")
    ap.add_argument("--rounds", type=int, default=8, help="timed steps per variant (interleaved)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant after its compile")
    args = ap.parse_args(argv)
    try:
        variants = [parse_variant(v) for v in args.variants]
    except ValueError as exc:
        ap.error(str(exc))

    import mindspore as ms

    from recipes.tools.bench import bench_recipe
    from recipes.engine.trainer import Trainer

    ms.set_context(mode=ms.GRAPH_MODE)
    root = tempfile.mkdtemp(prefix="bench_ab_")
    load_start = os.getloadavg()
    for v in variants:
        recipe, model_cfg = bench_recipe(args.arch, os.path.join(root, v["name"]), v["overrides"])
        v["trainer"] = Trainer(recipe, model_cfg, log=lambda *a: None)
        v["stream"] = v["trainer"].train_data.batches(recipe.train.micro_batch_size, start=0, seed=0)
        v["times"] = []

    def step(v) -> float:
        saved = {k: os.environ.get(k) for k in v["env"]}
        os.environ.update(v["env"])
        try:
            batch = next(v["stream"])
            t0 = time.perf_counter()
            v["trainer"].optimizer_step([batch], np.array([1.0]), 1e-4)
            return time.perf_counter() - t0
        finally:
            for k, old in saved.items():
                if old is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = old

    for v in variants:
        compile_s = step(v)
        for _ in range(args.warmup):
            step(v)
        print(f"{v['name']}: compiled in {compile_s:.1f} s", flush=True)
    for r in range(args.rounds):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            v["times"].append(step(v))
    shutil.rmtree(root, ignore_errors=True)
    base = statistics.median(variants[0]["times"])
    print(f"{args.arch}, {args.rounds} interleaved rounds, load average {load_start[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    rows = []
    for v in variants:
        med = statistics.median(v["times"])
        rows.append({"name": v["name"], "median_s": med, "min_s": min(v["times"]), "speedup": base / med})
        print(f"  {v['name']:>16}: median {med:.3f} s (min {min(v['times']):.3f})  {base / med:.2f}x vs {variants[0]['name']}")
    return rows


if __name__ == "__main__":
    main()
