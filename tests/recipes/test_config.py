"""Recipe config: inheritance, typed overrides, and the exact one-line errors users see."""

import os
import textwrap

import pytest

from recipes.engine.config import ConfigError, load_recipe, resolve

TINY = "recipes/pangu_pro_moe/pretrain_tiny.yaml"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_shipped_recipe_resolves():
    recipe, model_cfg = load_recipe(TINY)
    assert recipe.model.arch == "pangu_pro_moe"
    assert recipe.model.preset == "tiny"
    assert recipe.run.name == "pretrain_tiny"
    assert recipe.optimizer.beta1 == 0.9 and recipe.optimizer.beta2 == 0.95
    assert recipe.optimizer.eps == 1e-8 and recipe.optimizer.weight_decay == 0.1
    assert recipe.optimizer.grad_clip == 1.0
    assert model_cfg.num_experts % model_cfg.num_experts_per_tok == 0


def test_every_shipped_recipe_has_its_own_run_name_and_a_short_run_needs_only_train_steps():
    import glob

    names = {}
    for path in sorted(glob.glob("recipes/**/*.yaml", recursive=True)):
        if os.path.basename(path).startswith("pipeline"):      # a stage list, not a recipe
            continue
        recipe, _ = load_recipe(path, ["init_from=null"])
        assert recipe.run.name not in names, f"{path} and {names.get(recipe.run.name)} both write runs/{recipe.run.name}"
        names[recipe.run.name] = path
        if recipe.schedule.warmup_steps is None:                # warm-up follows train.steps
            short, _ = load_recipe(path, ["init_from=null", "train.steps=30"])
            assert short.schedule.warmup(30) == 3
    assert len(names) >= 15
    recipe, _ = load_recipe(TINY, ["train.steps=30"])
    assert recipe.schedule.warmup(recipe.train.steps) == 3


def test_base_inheritance_and_overrides(tmp_path):
    base = write(tmp_path, "base.yaml", """
        model: {arch: pangu_pro_moe, preset: tiny, num_hidden_layers: 3}
        train: {steps: 40, micro_batch_size: 4}
        schedule: {warmup_steps: 2}
        optimizer: {lr: 1.0e-3}
    """)
    child = write(tmp_path, "child.yaml", """
        base: base.yaml
        train: {steps: 10}
    """)
    recipe, model_cfg = load_recipe(child, ["optimizer.lr=2e-3", "model.num_hidden_layers=1", "train.seed=7"])
    assert recipe.train.steps == 10  # child overrides base
    assert recipe.train.micro_batch_size == 4  # inherited from base
    assert recipe.optimizer.lr == 2e-3  # "2e-3" (a YAML string) accepted for a float field
    assert recipe.train.seed == 7
    assert model_cfg.num_hidden_layers == 1
    assert recipe.run.name == "child"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.stepz=5"], "train.stepz: unknown key; did you mean train.steps?"),
        (["train.steps=fifty"], "train.steps: expected an integer, got 'fifty' (str)"),
        (["train.steps=0"], "train.steps: 0 must be >= 1"),
        (["optimizer.beta2=1.5"], "optimizer.beta2: 1.5 must be in [0, 1)"),
        (["schedule.decay=cosin"], "schedule.decay: 'cosin' is not one of 'cosine', 'linear', 'constant'; did you mean cosine?"),
        (["checkpoint.save_optimizer=maybe"], "checkpoint.save_optimizer: expected true or false, got 'maybe' (str)"),
        (["train.steps"], "--set train.steps: expected key=value (e.g. --set train.steps=50)"),
        (["train.steps.x=1"], "--set train.steps.x: train.steps is a value, not a section; set train.steps=... directly"),
        (["model.arch=pangu_pro"], "model.arch: unknown architecture 'pangu_pro'; did you mean pangu_pro_moe or pangu_ultra_moe?"),
        (["model.preset=huge"], "model.preset: unknown preset 'huge' for pangu_pro_moe; valid keys: tiny, bench, full"),
        (["model.num_expert=8"], "model.num_expert: unknown key; did you mean model.num_experts or model.num_experts_per_tok or model.expert_impl?"),
        (["schedule.warmup_steps=500", "train.steps=100"], "schedule.warmup_steps: 500 must be < train.steps=100; set a shorter warm-up (e.g. schedule.warmup_steps=10) "
             "or schedule.warmup_steps=null to let schedule.warmup_fraction follow train.steps"),
        (["schedule.min_lr=1.0"], "schedule.min_lr: 1.0 must be between 0 and optimizer.lr=0.003"),
        (["init_from=runs/does-not-exist"], "init_from: runs/does-not-exist does not exist; run the previous stage first or fix the path"),
        (["data.source=csv"], "data.source: 'csv' is not one of 'synthetic', 'jsonl', 'sft', 'chat_jsonl', 'megatron', 'mindrecord'"),
        (["train.dtype=fp16"], "train.dtype: 'fp16' is not one of 'float32', 'bfloat16'; did you mean bfloat16?"),
    ],
)
def test_bad_config_messages(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_recipe(TINY, overrides)
    assert str(err.value) == message
    assert "\n" not in str(err.value)


def test_model_validation_message():
    # MoGE needs the experts to split evenly into one group per selected expert.
    with pytest.raises(ConfigError) as err:
        load_recipe(TINY, ["model.num_experts=30"])
    text = str(err.value)
    assert text.startswith("model.num_experts: ") and "divisible" in text and "\n" not in text


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_recipe(str(tmp_path / "missing.yaml"))
    assert str(err.value) == f"{tmp_path / 'missing.yaml'}: recipe file not found; check the path (recipes live under recipes/<model>/)"

    broken = write(tmp_path, "broken.yaml", "train: {steps: 3\nmodel: x\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(broken)
    assert str(err.value).startswith(f"{broken}:") and "invalid YAML" in str(err.value)

    a = write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(a)
    assert "inheritance cycle" in str(err.value)

    orphan = write(tmp_path, "orphan.yaml", "base: nowhere.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(orphan)
    assert str(err.value) == f"{orphan}: base: {os.path.join(str(tmp_path), 'nowhere.yaml')} not found; base paths are relative to the recipe file"


def test_section_must_be_mapping():
    with pytest.raises(ConfigError) as err:
        resolve({"train": 5})
    assert str(err.value) == "train: expected a mapping, got 5 (int)"


def test_yaml_is_safe_loaded(tmp_path):
    evil = write(tmp_path, "evil.yaml", "description: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(evil)
    assert "invalid YAML" in str(err.value)
