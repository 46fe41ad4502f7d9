"""The trainer end to end on the tiny preset: learning, run directory, determinism, exact resume."""

import json
import os

import numpy as np
import pytest

from recipes.io import checkpoint as ck
from recipes.engine.config import ConfigError, load_recipe
from recipes.engine.trainer import Trainer

RECIPE = "recipes/pangu_pro_moe/pretrain_tiny.yaml"
SMALL = ["data.seq_length=64", "train.micro_batch_size=4", "schedule.warmup_steps=1", "train.eval_batches=1"]


def make(tmp_path, name, steps, extra=(), resume=False):
    recipe, model_cfg = load_recipe(
        RECIPE, SMALL + [f"train.steps={steps}", f"run.root={tmp_path}", f"run.name={name}", *extra]
    )
    return Trainer(recipe, model_cfg, resume=resume, log=lambda *_: None)


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


def weights(run_dir):
    newest = ck.latest_valid(os.path.join(run_dir, "checkpoints"))
    return ck.load_tensors(newest.path, ck.MODEL_FILE), ck.load_tensors(newest.path, ck.OPTIMIZER_FILE)


class Interrupted(Exception):
    pass


def test_run_directory_and_learning(tmp_path):
    result = make(tmp_path, "full", 12, ["checkpoint.every=5", "checkpoint.keep_last=2"]).train()
    run = result.run_dir
    assert sorted(os.listdir(run)) == [".lock", "checkpoints", "config.yaml", "loss.png", "metrics.jsonl"]
    assert [c.step for c in ck.list_checkpoints(os.path.join(run, "checkpoints"))] == [10, 12]
    records = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    assert [r["step"] for r in records] == list(range(1, 13))
    for key in ("loss", "lm_loss", "aux_loss", "imbalance", "grad_norm", "lr", "tokens_per_s"):
        assert all(np.isfinite(r[key]) for r in records), key
    assert all(r["imbalance"] == 0.0 for r in records)  # MoGE balances devices by construction
    assert records[0]["loss"] == pytest.approx(np.log(result_vocab(run)), abs=0.5)  # starts near ln(V)
    assert records[-1]["loss"] < records[0]["loss"] - 0.5  # and learns
    assert "val_loss" in records[-1]
    assert records[0]["lr"] == pytest.approx(3e-3)  # a 1-step warm-up reaches the peak at once
    with open(os.path.join(run, "loss.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def result_vocab(run_dir):
    import yaml

    return yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))["model"]["vocab_size"]


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, monkeypatch):
    straight = make(tmp_path, "straight", 8, ["checkpoint.every=3"]).train()

    original = Trainer.save_checkpoint

    def save_then_die(self):
        path = original(self)
        if self.step == 6:
            raise Interrupted
        return path

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupted):
        make(tmp_path, "resumed", 8, ["checkpoint.every=3"]).train()
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    resumed = make(tmp_path, "resumed", 8, ["checkpoint.every=3"], resume=True)
    assert resumed.step == 6
    resumed.train()

    assert losses(straight.run_dir) == losses(resumed.run_dir)  # bitwise: floats compared exactly
    (w1, o1), (w2, o2) = weights(straight.run_dir), weights(resumed.run_dir)
    assert w1.keys() == w2.keys() and o1.keys() == o2.keys()
    for name in w1:
        np.testing.assert_array_equal(w1[name], w2[name])
    for name in o1:
        np.testing.assert_array_equal(o1[name], o2[name])


def test_gradient_accumulation_matches_big_batch(tmp_path):
    big = make(tmp_path, "big", 2, ["train.micro_batch_size=4"]).train()
    acc = make(tmp_path, "acc", 2, ["train.micro_batch_size=2", "train.grad_accum_steps=2"]).train()
    big_lm, acc_lm = lm_losses(big.run_dir), lm_losses(acc.run_dir)
    assert acc_lm[0] == pytest.approx(big_lm[0], rel=1e-6)  # token-weighted: same loss as one batch
    # The balance loss is per micro-batch (a nonlinear statistic), so later steps agree closely, not exactly.
    assert acc_lm[1] == pytest.approx(big_lm[1], rel=1e-4)


def lm_losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["lm_loss"] for line in f]


def test_existing_run_and_resume_errors(tmp_path):
    make(tmp_path, "once", 2).train()
    with pytest.raises(ConfigError) as err:
        make(tmp_path, "once", 2)
    assert str(err.value) == (
        f"run.name: {tmp_path}/once already holds a run (checkpoint at step 2); pass --resume to continue it, "
        "or --set run.name=<new name> for a new run"
    )
    with pytest.raises(ConfigError) as err:
        make(tmp_path, "never", 2, resume=True)
    assert str(err.value).startswith(f"--resume: no valid checkpoint under {tmp_path}/never/checkpoints")
    with pytest.raises(ConfigError) as err:
        make(tmp_path, "once", 4, ["optimizer.lr=1e-3"], resume=True)
    assert str(err.value).startswith("--resume: the recipe differs from the checkpointed run at optimizer.lr")


def test_init_from_previous_stage(tmp_path):
    first = make(tmp_path, "stage1", 2).train()
    second = make(tmp_path, "stage2", 2, [f"init_from={first.run_dir}"])
    stage1, _ = weights(first.run_dir)
    for p in second.model.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), stage1[p.name])


def test_freeze_keeps_parameters(tmp_path):
    trainer = make(tmp_path, "frozen", 2, ["train.freeze=[embed_tokens]"])
    before = {p.name: p.asnumpy().copy() for p in trainer.model.get_parameters()}
    trainer.train()
    after = {p.name: p.asnumpy() for p in trainer.model.get_parameters()}
    frozen = [n for n in before if "embed_tokens" in n]
    assert frozen
    for name in before:
        same = np.array_equal(before[name], after[name])
        assert same == (name in frozen), name


def test_expert_bias_update_every_step_in_graph_mode(tmp_path):
    """Ultra with aux-loss-free balancing, default GRAPH trainer, a checkpoint every step: every
    checkpoint's bias is the previous one moved by the update rule applied to the loads it saved, the
    loads are the step's real counts, and the bias the compiled forward uses is the one saved."""
    from mindspore import Tensor

    from pangu.common.routers import expert_bias_update

    rate, steps = 0.01, 7
    recipe, model_cfg = load_recipe(
        "recipes/pangu_ultra_moe/pretrain_tiny.yaml",
        SMALL + [f"train.steps={steps}", f"run.root={tmp_path}", "run.name=bias", "checkpoint.every=1",
                 f"checkpoint.keep_last={steps}", f"model.router_bias_update_rate={rate}"],
    )
    trainer = Trainer(recipe, model_cfg, log=lambda *_: None)
    assert trainer.recipe.train.mode == "graph" and trainer.fused
    trainer.train()
    ckpts = ck.list_checkpoints(os.path.join(trainer.run_dir, "checkpoints"))
    assert [c.step for c in ckpts] == list(range(1, steps + 1))
    states = [ck.load_tensors(c.path, ck.MODEL_FILE) for c in ckpts]
    names = sorted(n for n in states[0] if n.endswith("e_score_correction_bias"))
    assert len(names) == 3                                  # 2 MoE layers + the MTP layer
    tokens_per_step = recipe.train.micro_batch_size * recipe.data.seq_length
    moved = 0
    for name in names:
        load_name = name.replace("e_score_correction_bias", "expert_load")
        previous = np.zeros_like(states[0][name])
        for state in states:
            load = state[load_name]
            assert load.sum() == tokens_per_step * model_cfg.num_experts_per_tok   # every assignment counted
            np.testing.assert_allclose(state[name], expert_bias_update(previous, load, rate), atol=1e-6)
            moved += int(not np.array_equal(state[name], previous))
            previous = state[name]
    assert moved >= 3 * (steps - 1)                         # it changes at (nearly) every step
    # the bias in the compiled forward = the one saved: the trainer's compiled eval step and a model built
    # from the last checkpoint in PyNative mode give the same loss on a batch
    import mindspore as ms

    import models

    batch = next(trainer.val_data.eval_batches(2, 1))
    inputs = [Tensor(batch[k][:2]) for k in trainer.batch_keys]
    graph_loss = float(trainer._eval_step(*inputs).asnumpy())
    ms.set_context(mode=ms.PYNATIVE_MODE)
    fresh = models.build_model(trainer.model_cfg, seed=1)
    ck.load_into(fresh, states[-1], "last checkpoint")
    fresh.set_train(False)
    assert float(fresh.loss(*inputs)[0].asnumpy()) == pytest.approx(graph_loss, rel=1e-5)


def test_resume_refuses_edited_data_fewer_steps_and_settings_that_report_nothing(tmp_path, capsys):
    data = tmp_path / "corpus.jsonl"
    data.write_text("".join(json.dumps({"text": f"line {i}: the quick brown fox {i * 7 % 13} jumps"}) + "\n"
                            for i in range(200)))
    extra = ["data.source=jsonl", f"data.path={data}", "data.num_val_documents=8"]
    first = make(tmp_path, "edit", 3, extra)
    assert set(first.fingerprint["content"]) == {"path"}
    first.train()
    with pytest.raises(ConfigError, match=r"--resume: .*step_00000003 is at step 3 but train.steps is 2; set "
                                          r"train.steps above 3"):
        make(tmp_path, "edit", 2, extra, resume=True)
    assert make(tmp_path, "edit", 4, extra, resume=True).step == 3          # the same files: resumes
    from recipes import run as run_cli

    sets = [f"--set={s}" for s in SMALL + ["train.steps=3", f"run.root={tmp_path}", "run.name=edit", *extra]]
    assert run_cli.main([RECIPE, "--resume", *sets]) == 0
    assert f"done: nothing trained (the run is complete at step 3); run dir {tmp_path}/edit" in capsys.readouterr().out
    data.write_text(data.read_text().replace("fox 1 ", "cat 1 "))
    with pytest.raises(ConfigError, match=r"--resume: the content of data.path changed since the checkpoint"):
        make(tmp_path, "edit", 4, extra, resume=True)
    with pytest.raises(ConfigError, match=r"train.eval_batches: 0 must be >= 1"):
        load_recipe(RECIPE, ["train.eval_batches=0"])
    for lr in ("inf", "nan"):
        with pytest.raises(ConfigError, match=rf"optimizer.lr: {lr} must be a finite number > 0"):
            load_recipe(RECIPE, [f"optimizer.lr={lr}"])
