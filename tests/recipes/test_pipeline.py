"""recipes/pipeline.py: spec validation, a 2-stage mini pipeline (stage 2 init_from stage 1, with an
exact-match evaluation, then an average stage), and resuming (a re-run skips completed stages)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import pytest
import yaml

from recipes.pipeline import PipelineError, format_table, load_spec, main, run_pipeline

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRO_TINY = os.path.join(REPO, "recipes", "pangu_pro_moe", "pretrain_tiny.yaml")


def _write(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def test_spec_errors_are_one_line(tmp_path, capsys, monkeypatch):
    recipe = _write(tmp_path / "a.yaml", {"base": PRO_TINY})
    bad_type = _write(tmp_path / "p1.yaml", {"stages": [{"name": "x", "type": "distill", "recipe": "a.yaml"}]})
    with pytest.raises(PipelineError, match=r"stage 'x': type: unknown stage type 'distill'; use one of train"):
        load_spec(bad_type)
    missing = _write(tmp_path / "p2.yaml", {"stages": [{"name": "x", "type": "train", "recipe": "nope.yaml"}]})
    with pytest.raises(PipelineError, match=r"stage 'x': recipe: .*nope.yaml not found"):
        load_spec(missing)
    forward = _write(tmp_path / "p3.yaml", {"stages": [
        {"name": "a", "type": "train", "recipe": "a.yaml", "init_from": "b"},
        {"name": "b", "type": "train", "recipe": "a.yaml"}]})
    with pytest.raises(PipelineError, match=r"init_from: 'b' is not an earlier stage"):
        load_spec(forward)
    typo = _write(tmp_path / "p4.yaml", {"stages": [{"name": "a", "type": "train", "recipe": "a.yaml", "recpie": 1}]})
    with pytest.raises(PipelineError, match=r"unknown key 'recpie'"):
        load_spec(typo)
    assert main([bad_type]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    ok = _write(tmp_path / "ok.yaml", {"stages": [{"name": "a", "type": "train", "recipe": "a.yaml"}]})
    assert load_spec(ok).stages[0].recipe == recipe
    import recipes.pipeline as pipeline_mod                                  # a stage that fails when run
    real = pipeline_mod._subprocess
    monkeypatch.setattr(pipeline_mod, "_subprocess",
                        lambda cmd, log: real([sys.executable, "-c", "raise SystemExit(3)"], log))
    assert main([ok, "--root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: stage command failed with status 3: ") and err.count("\n") == 1


def test_two_stage_pipeline_chains_evaluates_and_resumes(tmp_path):
    common = {"model": {"num_hidden_layers": 1},
              "data": {"num_documents": 200, "num_val_documents": 12, "seq_length": 32,
                       "cache_dir": str(tmp_path / "cache")},
              "train": {"steps": 2, "micro_batch_size": 2, "mode": "pynative", "eval_batches": 1},
              "schedule": {"warmup_steps": 1}, "checkpoint": {"every": 0}}
    _write(tmp_path / "s1.yaml", {"base": PRO_TINY, **common, "run": {"name": "mini_pre"}})
    _write(tmp_path / "s2.yaml", {"base": "s1.yaml", "data": {"source": "sft"}, "run": {"name": "mini_sft"}})
    spec = _write(tmp_path / "pipeline.yaml", {
        "eval": {"data_from": "s2.yaml", "limit": 3},
        "stages": [{"name": "pre", "type": "train", "recipe": "s1.yaml"},
                   {"name": "sft", "type": "train", "recipe": "s2.yaml", "init_from": "pre", "evaluate": True},
                   {"name": "avg", "type": "average", "from": "sft", "args": ["--last", "1"]}]})
    root = str(tmp_path / "runs")
    rows = run_pipeline(spec, root, log=lambda *_: None)
    assert [(r["stage"], r["status"], r["steps"]) for r in rows] == [("pre", "ran", 2), ("sft", "ran", 2), ("avg", "ran", 2)]
    assert rows[2]["output"] == os.path.join(root, f"{tmp_path.name}_avg")
    with open(os.path.join(root, "mini_sft", "config.yaml")) as f:
        assert yaml.safe_load(f)["init_from"] == os.path.join(root, "mini_pre")
    sft = rows[1]
    assert sft["eval_n"] == 3 and 0.0 <= sft["exact_match"] <= 1.0 and sft["chat_val_loss"] > 0
    assert "exact_match" not in rows[0] and rows[0]["train_loss"] > 0
    table = format_table(rows).splitlines()
    assert [line.split()[0] for line in table[2:]] == ["pre", "sft", "avg"]
    with open(os.path.join(root, "mini_sft", "pipeline_eval.json")) as f:
        assert json.load(f)["num_examples"] == 3

    again = run_pipeline(spec, root, log=lambda *_: None)  # resumable: nothing runs twice
    assert [r["status"] for r in again] == ["skipped (complete)"] * 3
    assert again[1]["exact_match"] == sft["exact_match"] and again[1]["steps"] == 2
    summary = json.load(open(os.path.join(root, f"{os.path.basename(str(tmp_path))}_pipeline.json")))
    assert [r["stage"] for r in summary["rows"]] == ["pre", "sft", "avg"]


def _train_recipe(stage):
    from recipes.engine.config import load_recipe

    return load_recipe(stage.recipe, ["init_from=null", *stage.overrides])[0]


@pytest.mark.parametrize("model", ["pangu_pro_moe", "pangu_ultra_moe"])
def test_model_pipeline_specs_chain(model):
    """recipes/<model>/pipeline.yaml: train stages chained by init_from, then average <- last train stage,
    export <- average; recipes resolve with the stage overrides; distinct run names; the averaged run keeps
    at least the `--last K` checkpoints the average asks for."""
    spec = load_spec(os.path.join(REPO, "recipes", model, "pipeline.yaml"))
    train = [s for s in spec.stages if s.type == "train"]
    after = ["average", "search", "export"] if model == "mindvl" else ["average", "export"]
    assert [s.type for s in spec.stages] == ["train"] * len(train) + after
    assert train[0].init_from is None
    assert [s.init_from for s in train[1:]] == [s.name for s in train[:-1]]
    average, exported = spec.stages[len(train)], spec.stages[-1]
    assert average.source == train[-1].name
    assert [s.source for s in spec.stages[len(train) + 1:]] == [s.name for s in spec.stages[len(train):-1]]
    recipes = [_train_recipe(s) for s in train]
    assert len({r.run.name for r in recipes}) == len(train)
    last = int(average.args[average.args.index("--last") + 1])
    sft = recipes[-1]
    assert sft.checkpoint.keep_last >= last and sft.train.steps // sft.checkpoint.every >= last
    assert spec.eval_data_from and os.path.isfile(spec.eval_data_from)


@pytest.mark.parametrize("name, text", [("pipeline.yaml", True), ("pipeline_scratch.yaml", False)])
def test_mindvl_pipeline_is_scored_by_the_arch_hook(name, text):
    """MindVL: the Qwen2 decoder pre-trained on text first (pipeline.yaml; pipeline_scratch.yaml is the control
    without it), warm-up from it, multitask, SFT at two sequence lengths from the same multitask model, their
    uniform average; its own run names (never the hand-run runs/*_tiny), scored through its ModelSpec's
    `evaluate` hook on the SFT recipe's validation split."""
    import models
    from recipes.engine.config import load_recipe

    spec = load_spec(os.path.join(REPO, "recipes", "mindvl", name))
    stages = ["warmup", "multitask", "sft", "sft_384", "average"]
    assert [s.name for s in spec.stages] == (["text"] if text else []) + stages + (["search", "export"] if text else [])
    assert [s.name for s in spec.stages if s.evaluate] == ["multitask", "sft", "sft_384", "average"]
    train = {s.name: s for s in spec.stages if s.type == "train"}
    assert [train[n].init_from for n in stages[:4]] == ["text" if text else None, "warmup", "multitask", "multitask"]
    recipes = {n: _train_recipe(s) for n, s in train.items()}
    assert len({r.run.name for r in recipes.values()}) == len(train)
    assert (recipes["sft"].data.seq_length, recipes["sft_384"].data.seq_length) == (512, 384)
    average = spec.stages[[s.name for s in spec.stages].index("average")]
    assert average.args == ["{sft}", "{sft_384}", "--method", "uniform"]
    if text:   # the text stage trains the warm-up's decoder: same arch and sizes, MindVL's token ids
        _, text_cfg = load_recipe(train["text"].recipe)
        _, vl_cfg = load_recipe(train["warmup"].recipe, ["init_from=null"])
        assert models.spec_of(text_cfg).name == "qwen2"
        assert dataclasses.replace(text_cfg, vocab_size=0) == dataclasses.replace(vl_cfg.text_config(), vocab_size=0)
    recipe, _ = load_recipe(spec.eval_data_from, ["init_from=null"])
    assert recipe.model.arch == "mindvl" and recipe.data.template == "chat"
    assert models.get_spec("mindvl").evaluate.__name__ == "evaluate_dataset"


def _untrained_vl_run(run, recipe, cfg):
    """A MindVL run directory as 3 training steps would leave it (config.yaml + a step-3 checkpoint),
    holding an untrained model; returns (run, model)."""
    import models
    from recipes.io import checkpoint as ck
    from recipes.engine.config import dump_yaml

    os.makedirs(run)
    dump_yaml(recipe, cfg, str(run / "config.yaml"))
    model = models.build_model(cfg, seed=4)
    ck.save(str(run / "checkpoints"), 3, {n: p.asnumpy() for n, p in model.parameters_and_names()}, None,
            {"step": 3}, keep_last=1)
    return run, model


def test_arch_evaluator_scores_mindvl_run_per_task(tmp_path):
    """Evaluator on a (untrained) MindVL run: the registry hook's accuracy per task and overall on the first
    `limit` validation examples, the loss on the validation rows, cached; and the per-task table."""
    import numpy as np

    from mindvl.config import PRESETS
    from mindvl.evaluate import evaluate_dataset
    from mindvl.dataset import MultimodalPackedDataset
    from recipes.engine.config import load_recipe
    from recipes.pipeline import Evaluator, format_task_table

    small = {"num_val_samples": 6, "num_samples": 4, "seq_length": 256, "max_patches": 96}
    eval_recipe = _write(tmp_path / "eval.yaml", {"base": os.path.join(REPO, "recipes", "mindvl", "sft_tiny.yaml"),
                                                   "data": small, "train": {"micro_batch_size": 2}})
    spec = _write(tmp_path / "pipeline.yaml", {"eval": {"data_from": "eval.yaml", "limit": 4}, "stages": [
        {"name": "sft", "type": "train", "recipe": "eval.yaml", "evaluate": True}]})
    recipe, _ = load_recipe(eval_recipe, ["init_from=null", f"run.root={tmp_path}", "run.name=vl"])
    cfg = PRESETS["tiny"]()
    cfg.vocab_size = 263
    run, model = _untrained_vl_run(tmp_path / "vl", recipe, cfg)

    out = str(run / "pipeline_eval.json")
    result = Evaluator(load_spec(spec), None, lambda *_: None)(str(run), out)
    val = MultimodalPackedDataset(recipe.data, "val")
    first = [val.examples[i] for i in range(4)]
    assert result["num_examples"] == 4
    assert set(result["per_task"]) == {ex["task"] for ex in first}
    model.set_train(False)
    val.examples = first
    want = evaluate_dataset(model, val)
    assert result["accuracy"] == want["val_accuracy"] and all(
        result["per_task"][t]["accuracy"] == want[f"val_accuracy_{t}"] for t in result["per_task"])
    assert np.isfinite(result["chat_val_loss"]) and result["chat_val_loss"] > 0
    with open(out) as f:
        assert json.load(f)["accuracy"] == result["accuracy"]

    row = {"stage": "sft", "exact_match": 0.5, "eval_n": 4, "per_task": {"ocr": 0.25, "vqa_count": 1.0}}
    table = format_task_table([{"stage": "warmup"}, row]).splitlines()
    assert table[0] == "exact match per task" and table[1].split() == ["stage", "ocr", "vqa_count", "overall", "n"]
    assert table[3].split() == ["sft", "0.250", "1.000", "0.500", "4"] and len(table) == 4
    assert format_task_table([{"stage": "warmup"}]) == ""


def test_search_stage_records_the_resolution_the_export_carries(tmp_path):
    """A search stage runs the resolution search (recipes.evaluate) on its source run in place (preprocessor_config.json with the
    record); the export from it carries the chosen budget; a re-run skips both; it needs eval.data_from."""
    import dataclasses

    from recipes.engine.config import load_recipe

    small = {"num_val_samples": 6, "num_samples": 4, "seq_length": 256, "max_patches": 96}
    eval_recipe = _write(tmp_path / "eval.yaml", {"base": os.path.join(REPO, "recipes", "mindvl", "sft_tiny.yaml"),
                                                   "data": small, "train": {"micro_batch_size": 2, "steps": 3},
                                                   "schedule": {"warmup_steps": 1}})
    recipe, cfg = load_recipe(eval_recipe, ["init_from=null", f"run.root={tmp_path}", "run.name=vl"])
    run, _ = _untrained_vl_run(tmp_path / "vl", recipe, dataclasses.replace(cfg, vocab_size=263))
    stages = [{"name": "sft", "type": "train", "recipe": "eval.yaml", "set": ["run.name=vl"]},
              {"name": "search", "type": "search", "from": "sft", "args": ["--budgets", "784,3136"]},
              {"name": "export", "type": "export", "from": "search"}]
    with pytest.raises(PipelineError, match="eval.data_from: required by a search stage"):
        load_spec(_write(tmp_path / "nodata.yaml", {"stages": stages}))
    spec = _write(tmp_path / "pipeline.yaml", {"eval": {"data_from": "eval.yaml"}, "stages": stages})

    rows = run_pipeline(spec, str(tmp_path), log=lambda *_: None)
    assert [r["status"] for r in rows] == ["skipped (complete)", "ran", "ran"]
    chosen = rows[1]["resolution"]["chosen_max_pixels"]
    assert chosen in (784, 3136) and set(rows[1]["resolution"]["scores"]) == {"784", "3136"}
    with open(run / "preprocessor_config.json") as f:
        assert json.load(f)["extra"]["resolution_search"]["chosen_max_pixels"] == chosen
    with open(os.path.join(rows[2]["output"], "preprocessor_config.json")) as f:
        exported = json.load(f)
    assert exported["min_pixels"] == exported["max_pixels"] == chosen
    assert exported["extra"]["resolution_search"]["chosen_max_pixels"] == chosen
    again = run_pipeline(spec, str(tmp_path), log=lambda *_: None)
    assert [r["status"] for r in again] == ["skipped (complete)"] * 3
    assert again[1]["resolution"] == rows[1]["resolution"]
