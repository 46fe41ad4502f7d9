"""recipes/pipeline.py: spec validation, a 2-stage mini pipeline (stage 2 init_from stage 1, with an
exact-match evaluation, then an average stage), and resuming (a re-run skips completed stages)."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from recipes.pipeline import PipelineError, format_table, load_spec, main, run_pipeline

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRO_TINY = os.path.join(REPO, "recipes", "pangu_pro_moe", "pretrain_tiny.yaml")


def _write(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def test_spec_errors_are_one_line(tmp_path, capsys):
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
