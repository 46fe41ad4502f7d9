"""Generate from a trained run or a serving directory: `python -m recipes.generate RUN_DIR_OR_HF_DIR
--prompt "..." [--top-p 0.9 --temperature 0.8 --seed 0 --max-new-tokens 64] [--raw]
[--speculative mtp | --draft RUN2] [-k 2]`.

For runs trained on chat data (data.source sft | chat_jsonl; a serving directory whose tokenizer has the
chat tokens) the prompt is wrapped in the chat template (`<|user|>PROMPT<|assistant|>`) unless `--raw`;
pretraining runs get the prompt as is.
Temperature 0 is greedy. Prints the generated text (up to eod / `<|user|>`).

Long inputs (docs/inference.md): `--xl3m [--segment-tokens S --question-tokens M --top-k K | --threshold T]`
answers a prompt far longer than the training length from its XL3M key context (pangu/xl3m.py);
`--prompt-file PATH` reads a long prompt from a file.
Reasoning runs: `--trimr --verifier RUN2` closes the thinking (`<think>` ... `</think>`) once the verifier's
answer is stable over `--repeats` thoughts (pangu/trimr.py); the verifier must share the tokenizer.

Speculative decoding (pangu.speculative, docs/benchmarks.md): `--speculative mtp` drafts with the model's
own MTP layers (Pangu Ultra), `--draft RUN2` with a smaller model of the same tokenizer; `-k` tokens per
round. Greedy output is the same as without it; sampling keeps the model's distribution.
"""

from __future__ import annotations

import argparse
import os
import sys
from recipes.cli import run_command

os.environ.setdefault("GLOG_v", "3")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m recipes.generate", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="run directory (newest valid checkpoint) or a checkpoints/step_* directory")
    parser.add_argument("--prompt", default=None, help="text to continue (or the user message for chat runs)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with temperature > 0)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--raw", action="store_true", help="do not wrap the prompt in the chat template")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    add_long_context_options(parser)
    add_trimr_options(parser)
    add_speculative_args(parser)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------------------------
# Long-context inference (XL3M, issue 18): options, checks and the generate call


def add_long_context_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("long context (XL3M, docs/inference.md)")
    g.add_argument("--prompt-file", default=None, help="read the prompt from this UTF-8 file (instead of --prompt)")
    g.add_argument("--xl3m", action="store_true", help="answer from the XL3M key context of the prompt")
    g.add_argument("--segment-tokens", type=int, default=None, help="XL3M segment length (default: training length / 4)")
    g.add_argument("--question-tokens", type=int, default=None,
                   help="XL3M: the last M prompt tokens are the question (default: min(8, segment - 1))")
    g.add_argument("--top-k", type=int, default=None,
                   help="XL3M: keep the K most relevant segments (default: as many as fit in the training length)")
    g.add_argument("--threshold", type=float, default=None,
                   help="XL3M: keep segments whose mean question log-probability is >= T (instead of --top-k)")
    g.add_argument("--measure", default=None, choices=("logprob", "entropy"), help="XL3M relevance measure (default logprob)")


def check_long_context_options(args) -> None:
    """One-line refusals of XL3M options given without --xl3m, and of --prompt / --prompt-file misuse."""
    if (not args.prompt) == (args.prompt_file is None):  # `make generate` passes --prompt "" with no PROMPT
        raise ValueError("give exactly one of --prompt TEXT or --prompt-file PATH (make generate: PROMPT=... or "
                         "ARGS=\"--prompt-file PATH\")")
    if not args.xl3m:
        given = [f"--{k.replace('_', '-')}" for k in ("segment_tokens", "question_tokens", "top_k", "threshold", "measure")
                 if getattr(args, k) is not None]
        if given:
            raise ValueError(f"{given[0]} is an XL3M option; add --xl3m (or drop {given[0]})")


def prompt_text(args) -> str:
    if args.prompt_file is None:
        return args.prompt
    with open(args.prompt_file, encoding="utf-8") as f:
        return f.read()


def xl3m_config(args, train_length: int):
    from pangu.xl3m import XL3MConfig

    s = args.segment_tokens if args.segment_tokens is not None else max(2, train_length // 4)
    m = args.question_tokens if args.question_tokens is not None else max(1, min(8, s - 1))
    top_k = args.top_k
    if top_k is None and args.threshold is None:
        top_k = max(1, (train_length - m) // s)
    elif top_k is not None and args.threshold is not None:
        raise ValueError("--top-k and --threshold both given; XL3M keeps the top K or those >= T, pick one")
    return XL3MConfig(train_length, s, m, top_k=top_k, threshold=args.threshold, measure=args.measure or "logprob")


def train_length_of(run) -> int:
    """The sequence length the model was trained on: the recipe's data.seq_length (a serving directory:
    max_position_embeddings of its config)."""
    if run.recipe is not None:
        return int(run.recipe.data.seq_length)
    return int(run.model_cfg.max_position_embeddings)


def generate_xl3m(run, ids: list[int], args, stop: list[int]) -> list[int]:
    """New tokens answering `ids` from its XL3M key context (compiled model, KV cache)."""
    import mindspore as ms

    from pangu import xl3m
    from pangu.generate import Compiled
    from recipes.eval_long import word_start_ids

    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = xl3m_config(args, train_length_of(run))
    tok = run.tokenizer
    (new,), (key,) = xl3m.generate(Compiled(run.model), [ids], args.max_new_tokens, cfg, word_start_ids(tok),
                                   pad_id=tok.pad_id, stop_ids=stop, temperature=args.temperature,
                                   top_p=args.top_p, seed=args.seed)
    if key.scores is not None:
        print(f"xl3m: {len(ids)} tokens -> {len(key.segments)} segments, kept {key.chosen} "
              f"({len(key.ids)} tokens)", file=sys.stderr)
    return new


# --------------------------------------------------------------------------------------------------
# Thinking compression (TrimR, issue 18): options, checks and the generate call


def add_trimr_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("thinking compression (TrimR, docs/inference.md)")
    g.add_argument("--trimr", action="store_true", help="close the thinking once a verifier finds it settled")
    g.add_argument("--verifier", default=None, metavar="RUN", help="TrimR verifier: a run or serving directory "
                   "with the same tokenizer (an instruction-tuned model, not trained for this)")
    g.add_argument("--repeats", type=int, default=None, help="TrimR: trim when the verifier's answer is the same "
                   "after this many thoughts in a row (default 2)")
    g.add_argument("--max-thoughts", type=int, default=None, help="TrimR: close the thinking after N thoughts")
    g.add_argument("--think-start", default=None, help="TrimR: the text that opens the thinking (default <think>)")
    g.add_argument("--think-end", default=None, help="TrimR: the text that closes it (default ' </think>')")
    g.add_argument("--thought-boundary", default=None, help="TrimR: the one-token text that ends a thought (default ' ;')")


def check_trimr_options(args) -> None:
    if args.trimr and args.xl3m:
        raise ValueError("--trimr and --xl3m both given; run them one at a time")
    if args.trimr and args.verifier is None:
        raise ValueError("--trimr needs --verifier RUN (a run or serving directory with the same tokenizer)")
    if not args.trimr:
        given = [f"--{k.replace('_', '-')}" for k in ("verifier", "repeats", "max_thoughts", "think_start",
                                                     "think_end", "thought_boundary") if getattr(args, k) is not None]
        if given:
            raise ValueError(f"{given[0]} is a TrimR option; add --trimr (or drop {given[0]})")


def same_tokenizer(a, b) -> bool:
    """Two tokenizers map every id to the same piece."""
    return a.vocab_size == b.vocab_size and all(a.id_to_piece(i) == b.id_to_piece(i) for i in range(a.vocab_size))


def marker_ids(tok, text: str, option: str, one_token: bool = False) -> list[int]:
    """The ids of a marker text as it is spelled after other text (no sentencepiece word-start prefix
    of its own), refused when the tokenizer cannot spell it."""
    probe = tok.encode("0")
    ids = tok.encode("0" + text)
    ids = ids[len(probe):] if ids[: len(probe)] == probe else tok.encode(text)
    if not ids or tok.unk_id in ids or (one_token and len(ids) != 1):
        what = f"is {len(ids)} tokens" if tok.unk_id not in ids else "has characters the tokenizer does not know"
        raise ValueError(f"{option}: {text!r} {what} in this tokenizer; give a text it spells"
                         f"{' as one token' if one_token else ''} (a run trained with these markers)")
    return ids


def trimr_setup(run, verifier_run, args, stop: list[int]):
    """(TrimRConfig, ModelVerifier) for `run` judged by `verifier_run`; refuses a verifier whose tokenizer differs."""
    from pangu import trimr
    from pangu.generate import Compiled

    tok = run.tokenizer
    if verifier_run.tokenizer is None or not same_tokenizer(tok, verifier_run.tokenizer):
        raise ValueError(f"--verifier: {args.verifier} has a different tokenizer than {args.path}; TrimR hands the "
                         "thoughts over as token ids: use a verifier trained with the same tokenizer")
    start = marker_ids(tok, args.think_start or "<think>", "--think-start")
    end = marker_ids(tok, args.think_end or " </think>", "--think-end")
    boundary = marker_ids(tok, args.thought_boundary or " ;", "--thought-boundary", one_token=True)
    cfg = trimr.TrimRConfig(tuple(start), tuple(end), frozenset(boundary), repeats=args.repeats or 2,
                            max_thoughts=args.max_thoughts)
    verifier = trimr.ModelVerifier(Compiled(verifier_run.model), end, max_answer_tokens=16, stop_ids=stop,
                                   pad_id=tok.pad_id)
    return cfg, verifier


def generate_trimr(run, ids: list[int], args, stop: list[int]) -> list[int]:
    import mindspore as ms

    from pangu import trimr
    from pangu.generate import Compiled
    from recipes.io.load import load_model

    ms.set_context(mode=ms.GRAPH_MODE)
    cfg, verifier = trimr_setup(run, load_model(args.verifier), args, stop)
    (new,), (state,) = trimr.generate(Compiled(run.model), [ids], args.max_new_tokens, cfg, verifier, stop_ids=stop,
                                      temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                                      pad_id=run.tokenizer.pad_id)
    print(f"trimr: {state.think_tokens} thinking tokens, {len(state.thoughts)} thoughts, "
          f"{'trimmed (' + state.trimmed + ')' if state.trimmed else 'not trimmed'}", file=sys.stderr)
    return new


# ---- speculative decoding options (issue 17) ------------------------------------------------------
def add_speculative_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("speculative decoding")
    g.add_argument("--speculative", choices=("mtp",), default=None,
                   help="mtp: draft with the model's own MTP layers (Pangu Ultra)")
    g.add_argument("--draft", default=None, metavar="RUN2",
                   help="draft with this run / serving directory (a smaller model of the same tokenizer)")
    g.add_argument("-k", type=int, default=None, help="tokens drafted per round (default: MTP layers, or 3)")


def speculative_generate_fn(args, run):
    """None for plain decoding, else a `generate`-compatible function that decodes speculatively."""
    if args.speculative is None and args.draft is None:
        if args.k is not None:
            raise ValueError("-k: drafted tokens per round need --speculative mtp or --draft RUN2")
        return None
    if args.speculative is not None and args.draft is not None:
        raise ValueError("--speculative mtp and --draft: choose one drafter")
    from pangu.speculative import speculative_generate
    from recipes.io.load import load_model

    if args.draft is not None:
        draft = load_model(args.draft)
        if draft.tokenizer is not None and run.tokenizer is not None and \
                draft.tokenizer.vocab_size != run.tokenizer.vocab_size:
            raise ValueError(f"--draft {args.draft}: its tokenizer has {draft.tokenizer.vocab_size} tokens, the "
                             f"model's {run.tokenizer.vocab_size}; use a draft trained with the model's tokenizer")
        drafter, k = draft.model, args.k or 3
    else:
        drafter, k = "mtp", args.k or int(getattr(run.model_cfg, "num_mtp_layers", 0) or 1)

    def fn(model, prompts, max_new_tokens, **kw):
        return speculative_generate(model, prompts, max_new_tokens, drafter=drafter, k=k, **kw)

    return fn
# ---------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)

    def body():
        check_long_context_options(args)
        check_trimr_options(args)
        if (args.xl3m or args.trimr) and (args.speculative or args.draft):
            raise ValueError("--speculative / --draft: speculative decoding is not combined with --xl3m or --trimr; "
                             "drop one of them")
        from pangu.generate import generate
        from recipes.data import render
        from recipes.data.tokenizer import ASSISTANT_TOKEN
        from recipes.evaluate import stop_ids
        from recipes.io.load import load_model

        run = load_model(args.path)
        if run.spec.build_dataset is not None:
            raise ValueError(f"{args.path}: a {run.spec.name} model takes more than text; recipes.generate decodes "
                             "text models (score MindVL with python -m recipes.evaluate)")
        if run.tokenizer is None:
            raise ValueError(f"{args.path}: no tokenizer.model in the serving directory; export the run with "
                             "recipes.export (it writes the tokenizer) or copy the tokenizer files in")
        trained_on_chat = (run.recipe.data.source in ("sft", "chat_jsonl") if run.recipe is not None
                           else run.tokenizer.assistant_id is not None)
        chat = trained_on_chat and not args.raw
        prompt = prompt_text(args)
        text = render([("user", prompt)]) + ASSISTANT_TOKEN if chat else prompt
        tok = run.tokenizer
        if args.xl3m:
            new = generate_xl3m(run, tok.encode(text), args, stop_ids(tok))
        elif args.trimr:
            new = generate_trimr(run, tok.encode(text), args, stop_ids(tok))
        else:
            decode = speculative_generate_fn(args, run) or generate
            (new,) = decode(run.model, [tok.encode(text)], args.max_new_tokens, stop_ids=stop_ids(tok),
                            temperature=args.temperature, top_p=args.top_p, seed=args.seed, pad_id=tok.pad_id)
        print(tok.decode(new))

    return run_command(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
