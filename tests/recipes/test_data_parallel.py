"""A real 2-worker `msrun` data-parallel run on CPU equals one process with the same global batch.

Launched through `python -m parallel_strategies launch` with the shipped `tiny_cpu_dp2` strategy, so
the launcher, the strategy check and the trainer's AllReduce path are all exercised. Tolerance: the
two workers' gradients are summed by AllReduce instead of inside one matmul, so the numbers differ by
float32 rounding (and the MoE balance loss is a per-micro-batch statistic). AdamW divides by
sqrt(v) + eps, which turns a rounding-level difference in a near-zero gradient (a token that is rare
in the batch) into an lr-sized update difference; with eps=1e-8 we measured up to 9.5e-3 on such
embedding rows after 4 steps. The test therefore runs both sides with eps=1e-3, which keeps AdamW
(and the data-parallel arithmetic) but makes the update smooth in the gradient. Required: losses equal
to 2e-5 relative and every weight to 3e-5 absolute (measured: max 1.1e-5, in a router gate, where
the per-rank balance-loss statistic differs from the whole batch's).
"""

import json
import os

import numpy as np
import pytest

from recipes.io import checkpoint as ck
from tests.msrun_jobs import final, launch, single

SETS = ["data.seq_length=64", "train.steps=4", "schedule.warmup_steps=1", "train.eval_batches=1",
        "checkpoint.every=0", "optimizer.eps=1e-3"]


def single_and_dp2(tmp_path, recipe, sets=()):
    """Train `recipe` in one process (4 rows per step) and under msrun with 2 workers (2 rows each)."""
    one = single(tmp_path, recipe, "single", [*SETS, *sets, "train.micro_batch_size=4"])
    assert one.returncode == 0, one.stderr[-2000:]
    dp2 = launch(tmp_path, recipe, "tiny_cpu_dp2", "dp2", [*SETS, *sets, "train.micro_batch_size=2"])
    assert dp2.returncode == 0, dp2.stdout[-1500:] + dp2.stderr[-3000:]
    assert "msrun --worker_num=2 --local_worker_num=2" in dp2.stdout  # the command is printed first
    return final(tmp_path / "single"), final(tmp_path / "dp2")


def val_loss(run_dir):
    return [json.loads(line)["val_loss"] for line in open(os.path.join(run_dir, "metrics.jsonl"))
            if "val_loss" in line]


@pytest.mark.integration
def test_msrun_data_parallel_equals_single_process(tmp_path):
    (single_losses, single_weights), (dp_losses, dp_weights) = single_and_dp2(
        tmp_path, "recipes/pangu_pro_moe/pretrain_tiny.yaml")
    # validation: each rank evaluates its 2 rows of the 4-row global batch, sums added over ranks
    np.testing.assert_allclose(val_loss(tmp_path / "dp2"), val_loss(tmp_path / "single"), rtol=2e-5)
    assert len(dp_losses) == len(single_losses) == 4
    np.testing.assert_allclose(dp_losses, single_losses, rtol=2e-5)
    assert dp_losses[-1] < dp_losses[0]
    assert dp_weights.keys() == single_weights.keys()
    for name in single_weights:
        np.testing.assert_allclose(dp_weights[name], single_weights[name], rtol=0, atol=3e-5, err_msg=name)


@pytest.mark.integration
def test_msrun_aux_loss_free_bias_update_is_the_single_process_one(tmp_path):
    """Ultra with router_bias_update_rate > 0: the expert loads are summed over the ranks before the
    bias step, so both ranks apply the single process's update (each rank alone sees half the load)."""
    (single_losses, single_weights), (dp_losses, dp_weights) = single_and_dp2(
        tmp_path, "recipes/pangu_ultra_moe/pretrain_tiny.yaml",
        ["model.router_bias_update_rate=0.01", "checkpoint.every=1", "checkpoint.keep_last=4"])
    biases = [n for n in single_weights if n.endswith("e_score_correction_bias")]
    assert len(biases) == 3                                        # the tiny preset's MoE layers
    # every step's checkpoint: the bias moved at that step, identically in both runs (loads summed over ranks)
    previous = {name: 0.0 for name in biases}
    for step in range(1, 5):
        single, dp = (ck.load_tensors(os.path.join(tmp_path, run, "checkpoints", f"step_{step:08d}"), ck.MODEL_FILE)
                      for run in ("single", "dp2"))
        for name in biases:
            assert not np.array_equal(single[name], previous[name]), (step, name)
            np.testing.assert_array_equal(dp[name], single[name], err_msg=f"step {step} {name}")
            load = name.replace("e_score_correction_bias", "expert_load")
            # the loads are the global batch's (4 rows x 64 tokens x top-2), not one rank's half; a token
            # whose top-k is a near tie may route differently, as the weights differ by fp reassociation
            # (measured: 1 of 512 assignments at step 2)
            assert dp[load].sum() == single[load].sum() == 4 * 64 * 2, (step, load)
            assert np.abs(dp[load] - single[load]).max() <= 2, (step, load, dp[load], single[load])
            previous[name] = single[name]
    # the training loss's balance term is each rank's statistic too, and one routing flip (above) moves it:
    # measured 1.6e-4 relative apart at most
    np.testing.assert_allclose(dp_losses, single_losses, rtol=5e-4)
    # Ultra's validation loss includes the balance term, a statistic of each rank's 2 rows rather than
    # of all 4 (measured: 1.0e-4 relative apart; evaluating 2 rows per rank without the sum: 1 % apart)
    np.testing.assert_allclose(val_loss(tmp_path / "dp2"), val_loss(tmp_path / "single"), rtol=1e-3)
