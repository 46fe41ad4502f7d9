"""The tiny Pro MoE recipe trained from token shards: the same losses as from JSONL, and an exact resume."""

from __future__ import annotations

import json
import os

import pytest

from recipes.engine.config import load_recipe  # the public entry points this file drives (one place to repoint)
from recipes.data import BATCH_KEYS, DataConfig, build_dataset, generate_corpus, load_tokenizer
from recipes.data.prepare import main as prepare_main
from recipes.data.prepare import prepare
from recipes.engine.trainer import Trainer

RECIPE = "recipes/pangu_pro_moe/pretrain_tiny.yaml"
SMALL = ["data.seq_length=64", "train.micro_batch_size=4", "schedule.warmup_steps=1", "train.eval_batches=2",
         "train.mode=pynative", "checkpoint.keep_last=5"]
N_VAL = 24


def make(tmp_path, name, steps, data, extra=(), resume=False):
    recipe, model_cfg = load_recipe(
        RECIPE, SMALL + data + [f"train.steps={steps}", f"run.root={tmp_path}/runs", f"run.name={name}", *extra])
    return Trainer(recipe, model_cfg, resume=resume, log=lambda *_: None)


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def shard_data(fmt, out, cache):
    return [f"data.source={fmt}", f"data.paths=[{out}/train_*]", f"data.val_paths=[{out}/val_*]",
            f"data.num_val_documents={N_VAL}", f"data.tokenizer_model={out}/tokenizer.model", f"data.cache_dir={cache}"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The built-in corpus as JSONL, its built-in tokenizer, and both shard formats prepared from it."""
    root = tmp_path_factory.mktemp("shard_training")
    cache = str(root / "cache")
    path = root / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in generate_corpus(240, seed=11)))
    tokenizer = load_tokenizer(DataConfig(cache_dir=cache))
    text_cfg = DataConfig(source="jsonl", path=str(path), tokenizer_model=str(tokenizer.model_path),
                          num_val_documents=N_VAL, cache_dir=cache)
    out = {fmt: str(root / fmt) for fmt in ("megatron", "mindrecord")}
    for fmt, d in out.items():
        prepare(fmt, d, text_cfg, record_tokens=65, shard_tokens=2500, log=lambda *_: None)
    jsonl = [f"data.source=jsonl", f"data.path={path}", f"data.tokenizer_model={tokenizer.model_path}",
             f"data.num_val_documents={N_VAL}", f"data.cache_dir={cache}"]
    return {"root": root, "cache": cache, "jsonl": jsonl, **out}


@pytest.mark.integration
def test_shards_train_to_the_same_losses_as_jsonl(corpus, tmp_path):
    runs = {}
    for name in ("jsonl", "megatron", "mindrecord"):
        data = corpus["jsonl"] if name == "jsonl" else shard_data(name, corpus[name], corpus["cache"])
        runs[name] = metrics(make(tmp_path, name, 4, data).train().run_dir)
    reference = [(r["loss"], r.get("val_loss")) for r in runs["jsonl"]]
    assert len(reference) == 4 and reference[-1][1] is not None
    assert reference[-1][0] < reference[0][0]  # it trains
    for name in ("megatron", "mindrecord"):
        assert [(r["loss"], r.get("val_loss")) for r in runs[name]] == reference, name


class Interrupted(Exception):
    pass


@pytest.mark.integration
def test_resume_from_mixed_shards_is_exact(corpus, tmp_path, monkeypatch):
    meg = shard_data("megatron", corpus["megatron"], corpus["cache"])
    second = str(corpus["root"] / "second")
    prepare("megatron", second, DataConfig(num_documents=120, num_val_documents=0, seed=4, cache_dir=corpus["cache"]),
            log=lambda *_: None)
    mixed = [s for s in meg if not s.startswith("data.paths=")]
    mixed += [f"data.paths=[{corpus['megatron']}/train_*, {second}/train_*]", "data.weights=[0.6, 0.4]"]
    straight = metrics(make(tmp_path, "straight", 5, mixed, ["checkpoint.every=2"]).train().run_dir)

    original = Trainer.save_checkpoint

    def save_then_die(self):
        path = original(self)
        if self.step == 2:
            raise Interrupted
        return path

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupted):
        make(tmp_path, "resumed", 5, mixed, ["checkpoint.every=2"]).train()
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    resumed = make(tmp_path, "resumed", 5, mixed, ["checkpoint.every=2"], resume=True)
    assert resumed.step == 2 and resumed.data_position == 2 * 4
    run_dir = resumed.train().run_dir
    assert [r["loss"] for r in metrics(run_dir)] == [r["loss"] for r in straight]


def test_shards_recipe_on_default_prepare_output_is_pretrain_tiny_data(tmp_path):
    """`make prepare-data` with its defaults + pretrain_tiny_shards.yaml = pretrain_tiny.yaml's rows and order."""
    out, cache = str(tmp_path / "megatron"), str(tmp_path / "cache")
    assert prepare_main(["--format", "megatron", "--out", out, "--cache-dir", cache]) == 0
    tiny, _ = load_recipe(RECIPE, [f"data.cache_dir={cache}"])
    shards, _ = load_recipe("recipes/pangu_pro_moe/pretrain_tiny_shards.yaml", [
        f"data.cache_dir={cache}", f"data.paths=[{out}/train_*]", f"data.val_paths=[{out}/val_*]",
        f"data.tokenizer_model={out}/tokenizer.model"])
    as_shipped, _ = load_recipe("recipes/pangu_pro_moe/pretrain_tiny_shards.yaml")
    assert as_shipped.data.paths == ("data/megatron/train_*",)  # where `make prepare-data` writes by default
    a, b = build_dataset(tiny.data), build_dataset(shards.data)
    for x, y in zip(a.batches(16, num_batches=30, seed=1234), b.batches(16, num_batches=30, seed=1234)):
        for k in BATCH_KEYS:
            assert (x[k] == y[k]).all(), k
    assert (build_dataset(tiny.data, "val").rows["labels"] == build_dataset(shards.data, "val").rows["labels"]).all()
