"""Security guarantees: no pickle anywhere, YAML only through safe_load, no eval/exec, checkpoints are
safetensors + JSON only, and the files a run writes stay inside its run directory."""

import json
import os
import re

import numpy as np
import pytest

from recipes.io import checkpoint as ck
from recipes.engine.config import ConfigError, load_recipe

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE_DIRS = ("pangu", "mindvl", "ops", "parallel_strategies", "recipes", "tests", "scripts")
THIS_FILE = os.path.abspath(__file__)
FORBIDDEN = {
    "pickle": re.compile(r"\b(c?pickle|dill|joblib|cloudpickle)\b"),
    "np.load(allow_pickle=True)": re.compile(r"allow_pickle\s*=\s*True"),
    "torch.load": re.compile(r"\btorch\.load\("),
    "eval(": re.compile(r"(?<![\w.])eval\("),
    "exec(": re.compile(r"(?<![\w.])exec\("),
    "yaml.load( (unsafe)": re.compile(r"\byaml\.(load|load_all|unsafe_load|full_load)\(|yaml\.(Unsafe|Full)?Loader\b"),
    "marshal": re.compile(r"\bmarshal\.loads?\("),
    "shelve": re.compile(r"\bshelve\.open\("),
}


def source_files():
    for top in SOURCE_DIRS:
        for root, dirs, files in os.walk(os.path.join(REPO, top)):
            dirs[:] = [d for d in dirs if d not in ("__pycache__", ".venv", "build")]
            for name in files:
                path = os.path.join(root, name)
                if name.endswith((".py", ".sh", ".yaml", ".yml")) and os.path.abspath(path) != THIS_FILE:
                    yield path


def test_no_unsafe_deserialisation_or_eval_in_source():
    hits = []
    files = list(source_files())
    assert len(files) > 50  # the walk really sees the tree
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, start=1):
                for what, pattern in FORBIDDEN.items():
                    if pattern.search(line):
                        hits.append(f"{os.path.relpath(path, REPO)}:{lineno}: {what}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_checkpoint_is_safetensors_and_json_only(tmp_path):
    path = ck.save(str(tmp_path), 1, {"w": np.ones((2, 2), np.float32)}, {"m": np.zeros(2, np.float32)},
                   {"step": 1}, keep_last=1)
    assert sorted(os.listdir(path)) == ["manifest.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"]
    with open(os.path.join(path, ck.MODEL_FILE), "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        assert f.read(1) == b"{" and header_len < 10_000  # a safetensors JSON header, not a pickle stream


@pytest.mark.parametrize("name", ["../x", "a/../../b", "/etc", "..", ".", "a\\b", "a\0b"])
def test_run_name_cannot_leave_the_run_root(name):
    with pytest.raises(ConfigError) as err:
        load_recipe("recipes/pangu_pro_moe/pretrain_tiny.yaml", [f"run.name={name}"])
    assert str(err.value).startswith("run.name: ")


def test_run_files_stay_in_run_dir(tmp_path):
    """Everything a run writes is under run.root/run.name: config, log, plot, checkpoints."""
    from recipes.engine.trainer import Trainer, run_dir_of

    recipe, model_cfg = load_recipe("recipes/pangu_pro_moe/pretrain_tiny.yaml", [
        "data.seq_length=32", "train.micro_batch_size=2", "train.steps=1", "schedule.warmup_steps=0",
        "train.eval_batches=1", "train.mode=pynative", f"run.root={tmp_path}/root", "run.name=r"])
    outside_before = set(os.listdir(tmp_path))
    Trainer(recipe, model_cfg, log=lambda *_: None).train()
    assert set(os.listdir(tmp_path)) == outside_before | {"root"}
    assert os.listdir(os.path.join(tmp_path, "root")) == ["r"]
    run = run_dir_of(recipe)
    for root, _, files in os.walk(run):
        for name in files:
            real = os.path.realpath(os.path.join(root, name))
            assert real.startswith(os.path.realpath(run) + os.sep)
            if name == ".lock":   # the run's owner (recipes.io.rundir.lock_run): JSON pid + host
                with open(os.path.join(root, name)) as f:
                    assert sorted(json.load(f)) == ["host", "pid"]
                continue
            assert name.endswith((".safetensors", ".json", ".jsonl", ".yaml", ".png")), name
