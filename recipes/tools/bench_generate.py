"""`make bench-generate`: decode speed with and without speculative decoding on trained tiny models.

    python -m recipes.tools.bench_generate [--mtp-run RUN] [--target RUN --draft RUN] [--mtp-k 2]
                                           [--draft-k 3] [--prompts 16] [--max-new-tokens 32]
                                           [--repeats 5] [--json]

Two comparisons, each on the held-out prompts of the run's own data (`--prompts` of them, one batch):
  * mtp   : a Pangu Ultra run decodes with its own MTP layers drafting `--mtp-k` tokens per round;
  * draft : `--target` decodes with `--draft` (a smaller model of the same tokenizer) drafting `--draft-k`.
Plain = pangu.generate.generate on the compiled model (KV cache, one token per step), the strongest
baseline we have. Every row decodes exactly --max-new-tokens tokens (stop tokens ignored, as serving
benchmarks do with ignore_eos) so both sides do the same work; the speculative output is checked equal
to the plain greedy output first. Plain and speculative calls alternate (`--repeats` pairs, after one
compile/warm-up call each); speedup = median of the per-pair time ratios, tokens/s from median times,
latency = median batch time / tokens per row. Acceptance rate = accepted drafts / drafted tokens.

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


def held_out_prompts(run, n: int) -> list[list[int]]:
    from recipes.data import build_conversations

    convs = build_conversations(run.recipe.data, "val")[:n]
    return run.tokenizer.encode_batch([c.prompt for c in convs])


def compare(target, drafter, k: int, prompts, max_new: int, repeats: int) -> dict:
    """Interleaved plain vs speculative greedy decoding of one batch (module docstring)."""
    from pangu.generate import Compiled, generate
    from pangu.speculative import speculative_generate

    plain_model = Compiled(target)
    runners: dict = {}
    stats: dict = {}

    def plain():
        return generate(plain_model, prompts, max_new, batch_size=len(prompts))

    def spec():
        stats.clear()
        return speculative_generate(target, prompts, max_new, drafter=drafter, k=k, batch_size=len(prompts),
                                    stats=stats, runners=runners)

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
    return {
        "k": k,
        "batch": len(prompts),
        "tokens": tokens,
        "plain_tokens_per_s": tokens / tp,
        "spec_tokens_per_s": tokens / ts,
        "speedup": statistics.median(a / b for a, b in zip(t_plain, t_spec)),
        "acceptance_rate": stats["acceptance_rate"],
        "tokens_per_target_call": tokens / len(prompts) / stats["target_calls"],
        "plain_ms_per_token": 1e3 * tp / max_new,
        "spec_ms_per_token": 1e3 * ts / max_new,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m recipes.tools.bench_generate", description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="runs", help="where the default runs live / are trained")
    ap.add_argument("--mtp-run", default=None, help="Ultra run with MTP layers (default: ROOT/bench_gen_ultra)")
    ap.add_argument("--target", default=None, help="target run of the draft-model comparison (ROOT/bench_gen_pro)")
    ap.add_argument("--draft", default=None, help="draft run of the same tokenizer (ROOT/bench_gen_draft)")
    ap.add_argument("--mtp-k", type=int, default=2, help="tokens drafted per round by the MTP layers")
    ap.add_argument("--draft-k", type=int, default=3, help="tokens drafted per round by the draft model")
    ap.add_argument("--prompts", type=int, default=16, help="held-out prompts (one batch)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved plain/speculative pairs")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)
    os.environ.setdefault("GLOG_v", "3")
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
    mtp = compare(ultra.model, "mtp", args.mtp_k, held_out_prompts(ultra, args.prompts), args.max_new_tokens,
                  args.repeats)
    dm = compare(target.model, draft.model, args.draft_k, held_out_prompts(target, args.prompts),
                 args.max_new_tokens, args.repeats)
    result = {
        "mtp_run": mtp_path, "target_run": target_path, "draft_run": draft_path,
        "mtp_speedup": mtp["speedup"], "mtp_acceptance_rate": mtp["acceptance_rate"],
        "draft_speedup": dm["speedup"], "draft_acceptance_rate": dm["acceptance_rate"],
        "plain_tokens_per_s": {"mtp": mtp["plain_tokens_per_s"], "draft": dm["plain_tokens_per_s"]},
        "speculative_tokens_per_s": {"mtp": mtp["spec_tokens_per_s"], "draft": dm["spec_tokens_per_s"]},
        "mtp": mtp, "draft": dm,
        "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
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
