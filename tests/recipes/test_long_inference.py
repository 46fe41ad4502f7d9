"""Long-context data, the XL3M / TrimR command lines and their one-line refusals."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from recipes.data.long_context import long_lookup
from recipes.data.synthetic import generate_corpus


def test_lookup_task_and_long_examples_plant_the_asked_key_once():
    (doc,) = generate_corpus(1, seed=3, tasks=("lookup",))
    pairs, *queries = doc.split(" ? ")
    table = {p[:2]: p[2:] for p in pairs.split()}
    assert queries and all(table[q[:2]] == q[2:] for q in queries)
    ex = long_lookup(300, seed=0, multiple=16, index=4)
    assert ex == long_lookup(300, seed=0, multiple=16, index=4) != long_lookup(300, seed=0, multiple=16, index=5)
    items = [(p[:2], p[2:]) for p in ex.context.split()]
    key = re.fullmatch(r" \? ([a-h][a-h])", ex.question).group(1)
    assert len(items) == 300 and [v for k, v in items if k == key] == [ex.answer]
    assert len({k for k, _ in items}) == 64  # distractors use every other key, repeatedly


@pytest.fixture(scope="module")
def lookup_run(tmp_path_factory):
    """A saved (untrained) 1-layer tiny run on the lookup task at 32 tokens."""
    import models
    from recipes.data import build_dataset
    from recipes.engine.config import dump_yaml, resolve
    from recipes.io import checkpoint as ckpt_lib

    tmp = tmp_path_factory.mktemp("long")
    raw = {"model": {"arch": "pangu_pro_moe", "preset": "tiny", "num_hidden_layers": 1},
           "data": {"source": "synthetic", "tasks": ["lookup"], "num_documents": 50, "num_val_documents": 5,
                    "seq_length": 32, "cache_dir": str(tmp / "cache")}}
    recipe, model_cfg = resolve(raw, "lookup_test")
    model_cfg = dataclasses.replace(model_cfg, vocab_size=build_dataset(recipe.data, "train").tokenizer.vocab_size)
    run_dir = tmp / "run"
    run_dir.mkdir()
    dump_yaml(recipe, model_cfg, str(run_dir / "config.yaml"))
    model = models.build_model(model_cfg, seed=0)
    ckpt_lib.save(str(run_dir / "checkpoints"), 1, {p.name: p.asnumpy() for p in model.get_parameters()}, None,
                  {"step": 1}, keep_last=1)
    return str(run_dir)


def test_generate_cli_answers_a_long_prompt_with_xl3m(lookup_run, tmp_path, capsys):
    from recipes.generate import main

    prompt = tmp_path / "long.txt"
    prompt.write_text(long_lookup(80, 0, 8, 0).prompt)  # ~240 tokens, 8x the training length
    assert main([lookup_run, "--prompt", "", "--prompt-file", str(prompt), "--xl3m", "--segment-tokens", "12",
                 "--question-tokens", "4", "--top-k", "2", "--max-new-tokens", "1"]) == 0
    err = capsys.readouterr().err
    kept = re.search(r"xl3m: (\d+) tokens -> (\d+) segments, kept \[(\d+), (\d+)\] \((\d+) tokens\)", err)
    assert kept and int(kept.group(1)) > 200 and int(kept.group(2)) >= 16
    assert int(kept.group(3)) < int(kept.group(4)) and int(kept.group(5)) <= 28


@pytest.mark.parametrize("args, message", [
    (["--xl3m", "--segment-tokens", "30", "--question-tokens", "4"], "longer than the training length 32"),
    (["--xl3m", "--segment-tokens", "8", "--question-tokens", "8"], "must be shorter than a segment"),
    (["--xl3m", "--top-k", "1", "--threshold", "-1"], "pick one"),
    (["--top-k", "2"], "--top-k is an XL3M option; add --xl3m"),
    (["--verifier", "runs/x"], "--verifier is a TrimR option; add --trimr"),
    (["--trimr"], "--trimr needs --verifier RUN"),
    (["--trimr", "--xl3m", "--verifier", "x"], "one at a time"),
    (["--prompt-file", "long.txt"], "give exactly one of --prompt TEXT or --prompt-file PATH"),
    (["--xl3m", "--speculative", "mtp"], "speculative decoding is not combined with --xl3m or --trimr"),
])
def test_generate_cli_refuses_bad_settings_in_one_line(lookup_run, capsys, args, message):
    from recipes.generate import main

    assert main([lookup_run, "--prompt", long_lookup(60, 0, 8, 0).prompt, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_trimr_refuses_a_verifier_with_a_different_tokenizer(lookup_run, tmp_path):
    from types import SimpleNamespace

    from recipes.data.tokenizer import train_tokenizer
    from recipes.generate import same_tokenizer, trimr_setup
    from recipes.io.load import load_model

    run = load_model(lookup_run)
    other = train_tokenizer(["ab ba abba"] * 50, 16, tmp_path / "other.model")
    args = SimpleNamespace(verifier="runs/other", path=lookup_run, think_start=None, think_end=None,
                           thought_boundary=None, repeats=None, max_thoughts=None)
    assert same_tokenizer(run.tokenizer, run.tokenizer) and not same_tokenizer(run.tokenizer, other)
    with pytest.raises(ValueError, match="runs/other has a different tokenizer than .*same tokenizer$"):
        trimr_setup(run, SimpleNamespace(tokenizer=other, model=None), args, [3])
    # the built-in tokenizer cannot spell <think>: refused, not silently mis-tokenized
    with pytest.raises(ValueError, match="--think-start: '<think>' has characters the tokenizer does not know"):
        trimr_setup(run, run, args, [3])


def test_eval_long_json(lookup_run, capsys):
    from recipes.eval_long import main

    assert main([lookup_run, "--multiples", "4", "--limit", "2", "--segment-tokens", "12", "--top-k", "2",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out["full"]) == set(out["truncate"]) == set(out["xl3m"]) == {"4"}
    assert all(0 <= out[m]["4"] <= 1 for m in ("full", "truncate", "xl3m")) and 0 <= out["short"] <= 1
    assert set(out["kept_planted"]) == {"truncate", "xl3m"} and 0 <= out["kept_planted"]["xl3m"]["4"] <= 1
    assert out["context_tokens"]["4"] > 100 and out["forward_tokens"]["xl3m"]["4"] < out["forward_tokens"]["full"]["4"]
    assert main([lookup_run, "--multiples", "1"]) == 2
