"""Generate from a trained run or a serving directory: `python -m recipes.generate RUN_DIR_OR_HF_DIR
--prompt "..." [--top-p 0.9 --temperature 0.8 --seed 0 --max-new-tokens 64] [--raw]
[--speculative mtp | --draft RUN2] [-k 2]`.

For runs trained on chat data (data.source sft | chat_jsonl; a serving directory whose tokenizer has the
chat tokens) the prompt is wrapped in the chat template (`<|user|>PROMPT<|assistant|>`) unless `--raw`;
pretraining runs get the prompt as is.
Temperature 0 is greedy. Prints the generated text (up to eod / `<|user|>`).
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
    parser.add_argument("--prompt", required=True, help="text to continue (or the user message for chat runs)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with temperature > 0)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--raw", action="store_true", help="do not wrap the prompt in the chat template")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    add_speculative_args(parser)
    return parser.parse_args(argv)


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
        text = render([("user", args.prompt)]) + ASSISTANT_TOKEN if chat else args.prompt
        tok = run.tokenizer
        decode = speculative_generate_fn(args, run) or generate
        (new,) = decode(run.model, [tok.encode(text)], args.max_new_tokens, stop_ids=stop_ids(tok),
                        temperature=args.temperature, top_p=args.top_p, seed=args.seed, pad_id=tok.pad_id)
        print(tok.decode(new))

    return run_command(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
