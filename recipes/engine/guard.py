"""Numerical guard of the training loop: skip non-finite steps, stop after too many in a row, flag spikes.

A step whose loss or gradient norm is NaN/inf is *skipped*: the optimiser is not called, so weights
and AdamW moments stay those of the last good step (the data of that step is consumed all the same).
`train.max_bad_steps` consecutive skipped steps stop the run. A finite loss above
`train.spike_threshold` times the running mean of recent good losses is a *spike*: logged, not skipped.

All of the guard's state is a few numbers saved in trainer_state.json (`state_dict`), so a resumed
run makes exactly the decisions the uninterrupted run would have made.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

EMA_DECAY = 0.9  # running mean of the loss: mean <- 0.9 * mean + 0.1 * loss (good, non-spike steps only)
SPIKE_WARMUP = 5  # good steps before spikes are looked for (the first losses fall fast)


class TrainingDiverged(FloatingPointError):
    """Too many consecutive non-finite steps; the message is one line saying what was saved and what to do."""


@dataclass
class StepGuard:
    max_bad_steps: int = 5
    spike_threshold: float = 3.0
    skipped: int = 0  # steps skipped so far in the run
    streak: int = 0  # consecutive skipped steps ending at the latest step
    last_good_step: int = 0  # latest step whose update was applied (0: none yet)
    loss_mean: float | None = None  # running mean of good, non-spike losses
    good_steps: int = 0  # steps that updated the mean

    @staticmethod
    def finite(*values: float) -> bool:
        return all(math.isfinite(v) for v in values)

    def observe(self, step: int, loss: float, grad_norm: float, applied: bool) -> tuple[dict, str | None]:
        """Account for `step` (after it ran). Returns (fields for its metrics record, warning line or None).

        `applied` says whether the optimiser update ran (False: the step was skipped).
        """
        if not applied:
            self.skipped += 1
            self.streak += 1
            what = "loss" if not math.isfinite(loss) else "gradient norm"
            value = loss if not math.isfinite(loss) else grad_norm
            warning = (
                f"warning: step {step}: non-finite {what} ({value}); update skipped "
                f"({self.streak} in a row, {self.skipped} in the run, limit train.max_bad_steps={self.max_bad_steps})"
            )
            return {"skipped": True, "skipped_steps": self.skipped}, warning
        self.streak = 0
        self.last_good_step = step
        fields: dict = {"skipped_steps": self.skipped}
        warning = None
        mean = self.loss_mean
        if (self.spike_threshold > 0 and mean is not None and self.good_steps >= SPIKE_WARMUP
                and loss > self.spike_threshold * mean):
            fields["spike"] = True
            warning = (
                f"warning: step {step}: loss spike {loss:.4f} = {loss / mean:.1f}x the running mean {mean:.4f} "
                f"(train.spike_threshold={self.spike_threshold})"
            )
        else:
            self.loss_mean = loss if mean is None else EMA_DECAY * mean + (1 - EMA_DECAY) * loss
            self.good_steps += 1
        return fields, warning

    @property
    def should_stop(self) -> bool:
        return self.streak >= self.max_bad_steps

    def stop_message(self, step: int, checkpoint: str) -> str:
        good = f"the weights of step {self.last_good_step}" if self.last_good_step else "the initial weights"
        return (
            f"step {step}: {self.streak} consecutive steps with a non-finite loss or gradient norm "
            f"(train.max_bad_steps={self.max_bad_steps}); stopped with {good} saved in {checkpoint}; "
            "lower optimizer.lr or check the data, then continue with --resume"
        )

    def state_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("max_bad_steps", "spike_threshold")}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
