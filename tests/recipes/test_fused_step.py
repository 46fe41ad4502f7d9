"""The fused train step (grad_accum_steps == 1: forward+backward, guard, clip and AdamW in one graph)
equals the separate grad / guard / update graphs bit for bit, and skips a non-finite step in-graph."""

import numpy as np
from mindspore import Tensor

from recipes.engine.config import load_recipe
from recipes.engine.trainer import Trainer

RECIPE = "recipes/pangu_pro_moe/pretrain_tiny.yaml"
SMALL = ["data.seq_length=64", "train.micro_batch_size=4", "data.num_documents=200"]


def make(tmp_path, name, fused):
    recipe, model_cfg = load_recipe(RECIPE, SMALL + [f"run.root={tmp_path}", f"run.name={name}"])
    trainer = Trainer(recipe, model_cfg, log=lambda *_: None)
    trainer.fused = fused
    return trainer


def run_steps(trainer, n):
    stream = trainer.train_data.batches(4, start=0, seed=1)
    return [trainer.optimizer_step([next(stream)], np.array([1.0]), 1e-3) for _ in range(n)]


def state(trainer):
    tensors = {p.name: p.asnumpy() for p in trainer.model.get_parameters()}
    tensors.update({p.name: p.asnumpy() for p in trainer.optimizer.state_parameters()})
    return tensors


def test_fused_step_equals_separate_graphs(tmp_path):
    fused, separate = make(tmp_path, "fused", True), make(tmp_path, "separate", False)
    out_f, out_s = run_steps(fused, 3), run_steps(separate, 3)
    for (lf, mf, nf, af), (ls, ms_, ns, as_) in zip(out_f, out_s):
        assert (lf, nf, af) == (ls, ns, as_) and af
        np.testing.assert_array_equal(mf, ms_)
    a, b = state(fused), state(separate)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_fused_step_skips_non_finite_update(tmp_path):
    trainer = make(tmp_path, "nan", True)
    poisoned = trainer.params[3]
    poisoned.set_data(Tensor(np.full(poisoned.shape, np.nan, np.float32)))
    before = state(trainer)
    loss, _, norm, applied = run_steps(trainer, 1)[0]
    assert not applied and not np.isfinite(norm)
    after = state(trainer)
    for name in before:  # weights, moments and the AdamW step count all untouched
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)
