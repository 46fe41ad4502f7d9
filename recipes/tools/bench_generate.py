"""`make bench-generate`: decode speed with and without speculative decoding on trained tiny models.

    python -m recipes.tools.bench_generate [--mtp-run RUN] [--target RUN --draft RUN] [--mtp-k 2]
                                           [--draft-k 3] [--prompts 16] [--tasks copy,reverse]
                                           [--max-new-tokens 32] [--batch-size 1] [--ignore-eos]
                                           [--repeats 3] [--json]

Two comparisons, each on held-out prompts of the run's own data (the first `--prompts` of `--tasks`):
  * mtp   : a Pangu Ultra run decodes with its own MTP layers drafting `--mtp-k` tokens per round;
  * draft : `--target` decodes with `--draft` (a smaller model of the same tokenizer) drafting `--draft-k`.
Plain = pangu.generate.generate on the compiled model (KV cache, one token per step), the strongest
baseline we have. Prompts go `--batch-size` at a time (1: the latency case speculative decoding is for);
answers stop at eod / <|user|> as in serving (`--ignore-eos`: every row decodes --max-new-tokens).
The speculative output is checked equal to the plain greedy output first. Plain and speculative passes
over all prompts alternate (`--repeats` pairs, after one compile/warm-up pass each); speedup = median of
the per-pair time ratios, tokens/s from median times (prefill included), latency = median time per
generated token of a row. Acceptance rate = accepted drafts / drafted tokens.

A default run directory that does not exist is trained first (DEFAULT_RUNS: the tiny SFT recipes with
the overrides listed there, a few minutes on CPU each).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

DEFAULT_RUNS = {  # name -> (recipe, overrides) trained when --mtp-run / --target / --draft is left default
    "bench_gen_ultra": ("recipes/pangu_ultra_moe/sft_tiny.yaml", ["model.num_mtp_layers=2"]),
    "bench_gen_pro": ("recipes/pangu_pro_moe/sft_tiny.yaml", []),
    "bench_gen_draft": ("recipes/pangu_pro_moe/sft_tiny.yaml", ["model.num_hidden_layers=1"]),
}
TRAIN_OVERRIDES = ["init_from=null", "train.steps=300", "optimizer.lr=3e-3"]


def train_default(root: str, name: str, log=print) -> str:
    """runs/<name> from DEFAULT_RUNS, trained with recipes.run when it is not there yet."""
    path = os.path.join(root, name)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return path
    recipe, extra = DEFAULT_RUNS[name]
    cmd = [sys.executable, "-m", "recipes.run", recipe]
    for s in TRAIN_OVERRIDES + extra + [f"run.name={name}", f"run.root={root}"]:
        cmd += ["--set", s]
    log("training " + " ".join(cmd[1:]))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return path


def held_out_prompts(run, n: int, tasks) -> list[list[int]]:
    from recipes.data import build_conversations

    convs = [c for c in build_conversations(run.recipe.data, "val") if not tasks or c.task in tasks][:n]
    return run.tokenizer.encode_batch([c.prompt for c in convs])


def compare(target, drafter, k: int, prompts, max_new: int, repeats: int, batch_size: int, stops) -> dict:
    """Interleaved plain vs speculative greedy decoding of the prompts (module docstring)."""
    from pangu.generate import Compiled, generate
    from pangu.speculative import speculative_generate

    plain_model = Compiled(target)
    runners: dict = {}
    totals = {"rounds": 0, "drafted": 0, "accepted": 0, "target_calls": 0}

    def plain():
        return generate(plain_model, prompts, max_new, batch_size=batch_size, stop_ids=stops)

    def spec():
        stats: dict = {}
        out = speculative_generate(target, prompts, max_new, drafter=drafter, k=k, batch_size=batch_size,
                                   stop_ids=stops, stats=stats, runners=runners)
        for key in totals:
            totals[key] = stats[key]
        return out

    want, got = plain(), spec()          # compile + warm-up, and the equality check
    if got != want:
        raise RuntimeError("speculative greedy output differs from plain greedy; not timing a wrong decoder")
    t_plain, t_spec = [], []
    for _ in range(repeats):
        for fn, times in ((plain, t_plain), (spec, t_spec)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    tokens = sum(map(len, want))
    tp, ts = statistics.median(t_plain), statistics.median(t_spec)
    per_row = tokens / batch_size       # tokens one batch slot decodes over the pass
    return {
        "k": k,
        "batch": batch_size,
        "prompts": len(prompts),
        "tokens": tokens,
        "plain_tokens_per_s": tokens / tp,
        "spec_tokens_per_s": tokens / ts,
        "speedup": statistics.median(a / b for a, b in zip(t_plain, t_spec)),
        "acceptance_rate": totals["accepted"] / max(totals["drafted"], 1),
        "tokens_per_target_call": tokens / totals["target_calls"] / batch_size,
        "plain_ms_per_token": 1e3 * tp / per_row,
        "spec_ms_per_token": 1e3 * ts / per_row,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m recipes.tools.bench_generate", description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="runs", help="where the default runs live / are trained")
    ap.add_argument("--mtp-run", default=None, help="Ultra run with MTP layers (default: ROOT/bench_gen_ultra)")
    ap.add_argument("--target", default=None, help="target run of the draft-model comparison (ROOT/bench_gen_pro)")
    ap.add_argument("--draft", default=None, help="draft run of the same tokenizer (ROOT/bench_gen_draft)")
    ap.add_argument("--mtp-k", type=int, default=2, help="tokens drafted per round by the MTP layers")
    ap.add_argument("--draft-k", type=int, default=3, help="tokens drafted per round by the draft model")
    ap.add_argument("--prompts", type=int, default=16, help="held-out prompts")
    ap.add_argument("--tasks", default="copy,reverse", help="held-out tasks to draw prompts from ('' = all)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=1, help="prompts decoded together")
    ap.add_argument("--ignore-eos", action="store_true", help="decode --max-new-tokens per row (no stops)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved plain/speculative pairs")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)
    os.environ.setdefault("GLOG_v", "3")
    from recipes.evaluate import stop_ids
    from recipes.io.load import load_model

    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    quiet = lambda *a: None  # noqa: E731
    mtp_path = args.mtp_run or train_default(args.root, "bench_gen_ultra", log)
    target_path = args.target or train_default(args.root, "bench_gen_pro", log)
    draft_path = args.draft or train_default(args.root, "bench_gen_draft", log)
    ultra, target, draft = (load_model(p, log=quiet) for p in (mtp_path, target_path, draft_path))
    if draft.tokenizer is not None and target.tokenizer is not None and \
            draft.tokenizer.vocab_size != target.tokenizer.vocab_size:
        raise SystemExit(f"--draft {draft_path}: tokenizer of {draft.tokenizer.vocab_size} tokens != the target's "
                         f"{target.tokenizer.vocab_size}; use a draft trained with the target's tokenizer")
    tasks = [t for t in args.tasks.split(",") if t]
    common = dict(max_new=args.max_new_tokens, repeats=args.repeats, batch_size=args.batch_size)
    mtp = compare(ultra.model, "mtp", args.mtp_k, held_out_prompts(ultra, args.prompts, tasks),
                  stops=() if args.ignore_eos else stop_ids(ultra.tokenizer), **common)
    dm = compare(target.model, draft.model, args.draft_k, held_out_prompts(target, args.prompts, tasks),
                 stops=() if args.ignore_eos else stop_ids(target.tokenizer), **common)
    result = {
        "mtp_run": mtp_path, "target_run": target_path, "draft_run": draft_path,
        "mtp_speedup": mtp["speedup"], "mtp_acceptance_rate": mtp["acceptance_rate"],
        "draft_speedup": dm["speedup"], "draft_acceptance_rate": dm["acceptance_rate"],
        "plain_tokens_per_s": {"mtp": mtp["plain_tokens_per_s"], "draft": dm["plain_tokens_per_s"]},
        "speculative_tokens_per_s": {"mtp": mtp["spec_tokens_per_s"], "draft": dm["spec_tokens_per_s"]},
        "mtp": mtp, "draft": dm,
        "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "tasks": tasks,
        "ignore_eos": args.ignore_eos,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(table(result))
    return result


def table(result: dict) -> str:
    rows = ["| drafter | k | batch | plain tok/s | speculative tok/s | speedup | acceptance | tokens / target call "
            "| ms/token plain → spec |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in (("MTP (Ultra's own layers)", result["mtp"]), ("draft model", result["draft"])):
        rows.append(f"| {name} | {r['k']} | {r['batch']} | {r['plain_tokens_per_s']:.0f} | "
                    f"{r['spec_tokens_per_s']:.0f} | {r['speedup']:.2f}× | {100 * r['acceptance_rate']:.0f} % | "
                    f"{r['tokens_per_target_call']:.2f} | {r['plain_ms_per_token']:.1f} → {r['spec_ms_per_token']:.1f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
