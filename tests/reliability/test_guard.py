"""The NaN/inf guard: non-finite steps are skipped and counted, N in a row stop the run with a
checkpoint of the last good weights, loss spikes are logged, and the guard's state resumes exactly."""

import json
import math
import os

import numpy as np
import pytest

from recipes.io import checkpoint as ck
from recipes.engine.config import load_recipe
from recipes.engine.guard import SPIKE_WARMUP, StepGuard, TrainingDiverged
from recipes.engine.trainer import Trainer

RECIPE = "recipes/pangu_pro_moe/pretrain_tiny.yaml"
SMALL = ["data.seq_length=64", "train.micro_batch_size=4", "schedule.warmup_steps=1", "train.eval_batches=1"]


def make(tmp_path, name, steps, extra=(), resume=False):
    recipe, model_cfg = load_recipe(
        RECIPE, SMALL + [f"train.steps={steps}", f"run.root={tmp_path}", f"run.name={name}", *extra]
    )
    return Trainer(recipe, model_cfg, resume=resume, log=lambda *_: None)


def inject(trainer, nan_loss=(), nan_grads=(), scale_loss=None, seen=None):
    """Wrap the compiled gradient step: NaN loss / NaN gradients / a scaled (reported) loss at given steps.

    `seen[step]` records a checksum of the weights at the start of each step."""
    trainer.fused = False  # the host-side guard path (grad step + update); the fused graph is tested below
    inner = trainer._grad_step

    def grad_step(*inputs):
        step = trainer.step + 1  # the step being computed
        if seen is not None:
            seen[step] = np.concatenate([p.asnumpy().ravel() for p in trainer.params]).copy()
        loss, metrics, grads = inner(*inputs)
        if step in nan_loss:
            loss = loss * float("nan")
        if step in nan_grads:
            grads = (grads[0] * float("inf"),) + tuple(grads[1:])
        if scale_loss and step in scale_loss:
            loss = loss * scale_loss[step]
        return loss, metrics, grads

    trainer._grad_step = grad_step


def records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_bad_steps_skipped_counted_and_spike_logged(tmp_path, capsys):
    trainer = make(tmp_path, "skip", 8, ["checkpoint.every=100", "train.max_bad_steps=2"])
    seen = {}
    inject(trainer, nan_loss={3}, nan_grads={5}, scale_loss={8: 50.0}, seen=seen)
    trainer.train()
    out = capsys.readouterr().out
    recs = records(trainer.run_dir)
    assert [r["step"] for r in recs] == list(range(1, 9))
    assert [r.get("skipped", False) for r in recs] == [False, False, True, False, True, False, False, False]
    assert [r["skipped_steps"] for r in recs] == [0, 0, 1, 1, 2, 2, 2, 2]
    assert math.isnan(recs[2]["loss"]) and not math.isfinite(recs[4]["grad_norm"])
    # Skipped steps leave the weights alone: start of step 4 == start of step 3, 6 == 5.
    np.testing.assert_array_equal(seen[4], seen[3])
    np.testing.assert_array_equal(seen[6], seen[5])
    assert not np.array_equal(seen[3], seen[2])
    assert int(trainer.optimizer.step.asnumpy()) == 6  # AdamW ran 8 - 2 times
    assert "warning: step 3: non-finite loss (nan); update skipped (1 in a row, 1 in the run" in out
    assert "warning: step 5: non-finite gradient norm (nan); update skipped (1 in a row, 2 in the run" in out
    assert [r.get("spike", False) for r in recs] == [False] * 7 + [True]
    assert "warning: step 8: loss spike" in out and "(train.spike_threshold=3.0)" in out
    state = json.load(open(os.path.join(trainer.ckpt_root, ck.step_dir_name(8), ck.STATE_FILE)))
    assert state["guard"]["skipped"] == 2 and state["guard"]["streak"] == 0 and state["guard"]["last_good_step"] == 8


def test_consecutive_bad_steps_stop_with_last_good_checkpoint(tmp_path):
    trainer = make(tmp_path, "stop", 10, ["checkpoint.every=100", "train.max_bad_steps=3"])
    seen = {}
    inject(trainer, nan_loss={4, 5, 6, 7}, seen=seen)
    with pytest.raises(TrainingDiverged) as err:
        trainer.train()
    path = os.path.join(trainer.ckpt_root, ck.step_dir_name(6))
    assert str(err.value) == (
        f"step 6: 3 consecutive steps with a non-finite loss or gradient norm (train.max_bad_steps=3); "
        f"stopped with the weights of step 3 saved in {path}; lower optimizer.lr or check the data, "
        "then continue with --resume"
    )
    state = ck.verify(path)
    assert state["step"] == 6 and state["guard"]["streak"] == 3
    saved = ck.load_tensors(path, ck.MODEL_FILE)
    flat = np.concatenate([saved[p.name].ravel() for p in trainer.params])
    np.testing.assert_array_equal(flat, seen[4])  # the weights after step 3, the last good one
    assert [r["step"] for r in records(trainer.run_dir)] == [1, 2, 3, 4, 5, 6]


def test_guard_state_resumes_exactly(tmp_path, monkeypatch):
    """Skip counters and the running mean live in trainer_state.json: resumed == uninterrupted."""
    extra = ["checkpoint.every=3"]
    straight = make(tmp_path, "straight", 6, extra)
    inject(straight, nan_loss={2, 5})
    straight.train()

    class Interrupted(Exception):
        pass

    original = Trainer.save_checkpoint

    def save_then_die(self):
        path = original(self)
        if self.step == 3:
            raise Interrupted
        return path

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)
    first = make(tmp_path, "resumed", 6, extra)
    inject(first, nan_loss={2, 5})
    with pytest.raises(Interrupted):
        first.train()
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    resumed = make(tmp_path, "resumed", 6, extra, resume=True)
    assert resumed.guard.skipped == 1 and resumed.guard.last_good_step == 3 and resumed.guard.loss_mean is not None
    inject(resumed, nan_loss={2, 5})
    resumed.train()
    strip = lambda rs: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rs]
    a, b = strip(records(straight.run_dir)), strip(records(resumed.run_dir))
    assert [r["skipped_steps"] for r in b] == [0, 1, 1, 1, 2, 2]
    assert json.dumps(a) == json.dumps(b)  # exact, NaN-safe comparison of the whole log
    assert straight.guard == resumed.guard


def test_fused_step_skips_non_finite(tmp_path, monkeypatch):
    """The fused (one-graph) step guards inside the graph: a NaN loss weight at step 2 skips it."""
    import recipes.engine.trainer as trainer_mod

    trainer = make(tmp_path, "fused", 4, ["checkpoint.every=100"])
    if not trainer.fused:
        pytest.skip("this trainer has no fused step")
    original = trainer_mod._target_shares

    def shares(masks, mine):
        out = original(masks, mine)
        return out * float("nan") if trainer.step + 1 == 2 else out

    monkeypatch.setattr(trainer_mod, "_target_shares", shares)
    trainer.train()
    recs = records(trainer.run_dir)
    assert [r.get("skipped", False) for r in recs] == [False, True, False, False]
    assert int(trainer.optimizer.step.asnumpy()) == 3


def test_step_guard_unit():
    guard = StepGuard(max_bad_steps=2, spike_threshold=2.0)
    for step in range(1, SPIKE_WARMUP + 1):
        assert guard.observe(step, 4.0, 1.0, applied=True) == ({"skipped_steps": 0}, None)
    fields, warning = guard.observe(6, 8.5, 1.0, applied=True)
    assert fields == {"skipped_steps": 0, "spike": True}
    assert warning == "warning: step 6: loss spike 8.5000 = 2.1x the running mean 4.0000 (train.spike_threshold=2.0)"
    assert guard.loss_mean == 4.0  # a spike does not move the running mean
    guard.observe(7, float("inf"), float("nan"), applied=False)
    assert not guard.should_stop
    guard.observe(8, 4.0, float("nan"), applied=False)
    assert guard.should_stop and guard.skipped == 2 and guard.last_good_step == 6
    restored = StepGuard(2, 2.0)
    restored.load_state_dict(json.loads(json.dumps(guard.state_dict())))
    assert restored == guard
    off = StepGuard(5, 0.0)
    for step in range(1, 10):
        assert "spike" not in off.observe(step, 4.0 * step ** 3, 1.0, applied=True)[0]
