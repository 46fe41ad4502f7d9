"""Real `msrun` jobs on CPU: tensor, expert and data parallel layouts train the tiny Pro and Ultra
recipes exactly like one process on the same global batch (4 rows of 64 tokens per step).

Each layout runs 20 steps through `python -m parallel_strategies launch` with a shipped strategy file
(tiny_cpu_tp2 / tiny_cpu_ep2 on 2 workers, tiny_cpu_dp2tp2 / tiny_cpu_dp2ep2 on 4); its per-step loss
must equal the single process's to 1e-5 relative and its final checkpoint (full tensors, gathered
over the shards) every weight to 1e-5. The differences are float32 reassociation only (partial sums
over ranks). Both sides use AdamW eps=1e-3, as in tests/recipes/test_data_parallel.py: with 1e-8 a
rounding-level gradient difference on a rare token's embedding row becomes an lr-sized update.

Ultra: with data-parallel rows (EP, DP) the balance statistic is aggregated over aux_loss_scope's
group, so those runs use aux_loss_scope=global (the whole batch, as one process sees it); and the MTP
loss is a mean over each rank's own MTP targets (weighted by the rank's share of the main targets, not
of the MTP targets), so they also run without MTP layers. TP keeps the rows whole: the TP2 Ultra run
keeps its MTP layer and the default ep_group scope.
"""
import json
import os
import shutil

import numpy as np
import pytest

from recipes.io import checkpoint as ck
from tests.msrun_jobs import final, launch, single

PRO = "recipes/pangu_pro_moe/pretrain_tiny.yaml"
ULTRA = "recipes/pangu_ultra_moe/pretrain_tiny.yaml"
SETS = ["data.seq_length=64", "train.steps=20", "schedule.warmup_steps=2", "train.eval_batches=1",
        "checkpoint.every=10", "checkpoint.keep_last=2", "optimizer.eps=1e-3"]
ROWS = {"tiny_cpu_tp2": 4, "tiny_cpu_ep2": 2, "tiny_cpu_dp2tp2": 2, "tiny_cpu_dp2ep2": 1}  # per data rank
ULTRA_ROWS_SPLIT = ["model.aux_loss_scope=global", "model.num_mtp_layers=0"]
ULTRA_BIAS = ["model.router_bias_update_rate=0.01"]         # the aux-loss-free bias moves (loads summed over ranks)


def _single(root, recipe, name, sets=()):
    out = single(root, recipe, name, [*SETS, *sets, "train.micro_batch_size=4"])
    assert out.returncode == 0, out.stderr[-2000:]
    return final(os.path.join(root, name))


def _sharded(root, recipe, strategy, sets=(), resume=False, name=None):
    name = name or strategy
    out = launch(root, recipe, strategy, name, [*SETS, *sets, f"train.micro_batch_size={ROWS[strategy]}"], resume)
    assert out.returncode == 0, out.stdout[-1500:] + out.stderr[-4000:]
    return final(os.path.join(root, name))


def assert_same_run(got, want):
    (losses, weights), (ref_losses, ref_weights) = got, want
    assert len(losses) == len(ref_losses) == 20
    print(f"loss max rel diff {max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses)):.2e}, weight max abs "
          f"diff {max(float(abs(weights[n] - ref_weights[n]).max()) for n in ref_weights):.2e}")
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert losses[-1] < losses[0] - 0.5                         # it trained
    assert weights.keys() == ref_weights.keys()
    for name in ref_weights:
        assert weights[name].shape == ref_weights[name].shape, name
        np.testing.assert_allclose(weights[name], ref_weights[name], rtol=0, atol=1e-5, err_msg=name)


@pytest.fixture(scope="module")
def pro_single(tmp_path_factory):
    root = tmp_path_factory.mktemp("pro")
    return root, _single(root, PRO, "single")


@pytest.mark.integration
@pytest.mark.parametrize("strategy", ["tiny_cpu_tp2", "tiny_cpu_ep2", "tiny_cpu_dp2tp2", "tiny_cpu_dp2ep2"])
def test_pro_layouts_train_like_one_process(pro_single, strategy):
    root, reference = pro_single
    assert_same_run(_sharded(root, PRO, strategy), reference)
    if strategy == "tiny_cpu_tp2":
        # a TP2 checkpoint resumes in one process (and a one-process checkpoint under TP2): full tensors
        for source, target in (("tiny_cpu_tp2", "resumed_tp1"), ("single", "resumed_tp2")):
            shutil.copytree(root / source, root / target, ignore=shutil.ignore_patterns("step_00000020"))
            if target == "resumed_tp1":
                out = single(root, PRO, target, [*SETS, "train.micro_batch_size=4", "parallel.strategy="],
                             resume=True)
                assert out.returncode == 0, out.stderr[-2000:]
                resumed = final(root / target)
            else:
                resumed = _sharded(root, PRO, "tiny_cpu_tp2", resume=True, name=target)
            assert_same_run(resumed, reference)
            steps = [json.loads(line)["step"] for line in open(root / target / "metrics.jsonl")]
            assert steps == list(range(1, 21))


@pytest.mark.integration
def test_ultra_tensor_parallel_with_mtp_trains_like_one_process(tmp_path):
    assert_same_run(_sharded(tmp_path, ULTRA, "tiny_cpu_tp2"), _single(tmp_path, ULTRA, "single"))


@pytest.mark.integration
def test_ultra_data_and_expert_parallel_trains_like_one_process(tmp_path):
    got = _sharded(tmp_path, ULTRA, "tiny_cpu_dp2ep2", ULTRA_ROWS_SPLIT + ULTRA_BIAS)
    want = _single(tmp_path, ULTRA, "single", ULTRA_ROWS_SPLIT + ULTRA_BIAS)
    assert_same_run(got, want)
    biases = [n for n in want[1] if n.endswith("e_score_correction_bias")]
    assert len(biases) == 2 and all(np.abs(want[1][n]).max() > 0 for n in biases)   # it moved, and matched
