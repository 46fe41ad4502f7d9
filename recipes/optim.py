"""AdamW with decoupled weight decay and the warm-up + decay learning-rate schedule.

Written out rather than taken from `mindspore.nn` so that its whole state (moments and step) lives
in named Parameters that a checkpoint saves and restores bit for bit, and so that the learning rate
is an input of the compiled step (the schedule stays plain Python, easy to read and to resume).
"""

from __future__ import annotations

import math

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from recipes.config import OptimizerConfig, ScheduleConfig


def learning_rate(step: int, total_steps: int, opt: OptimizerConfig, sched: ScheduleConfig) -> float:
    """LR for optimiser step `step` (0-based): linear warm-up, then cosine/linear decay to min_lr."""
    if sched.warmup_steps > 0 and step < sched.warmup_steps:
        return opt.lr * (step + 1) / sched.warmup_steps
    if sched.decay == "constant":
        return opt.lr
    span = max(1, total_steps - 1 - sched.warmup_steps)
    progress = min(1.0, (step - sched.warmup_steps) / span)
    if sched.decay == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        factor = 1.0 - progress
    return sched.min_lr + (opt.lr - sched.min_lr) * factor


def decays(name: str, shape: tuple) -> bool:
    """Weight decay applies to matrices only: not to norms, biases, router scales or expert biases."""
    return len(shape) >= 2 and "norm" not in name and "router_scale" not in name


class AdamW(nn.Cell):
    """AdamW (Loshchilov & Hutter) with bias correction; `construct(grads, lr)` updates in place."""

    def __init__(self, params, cfg: OptimizerConfig):
        super().__init__(auto_prefix=False)
        self.params = ms.ParameterTuple(params)
        self.exp_avg = self.params.clone(prefix="adam_m", init="zeros")
        self.exp_avg_sq = self.params.clone(prefix="adam_v", init="zeros")
        self.step = Parameter(Tensor(0, ms.int32), name="adam_step", requires_grad=False)
        self.beta1 = cfg.beta1
        self.beta2 = cfg.beta2
        self.eps = cfg.eps
        self.wd_mask = tuple(cfg.weight_decay if decays(p.name, p.shape) else 0.0 for p in self.params)
        self.hyper_map = ops.HyperMap()

    def state_parameters(self) -> list[Parameter]:
        """Everything a checkpoint must hold to resume the optimiser exactly."""
        return list(self.exp_avg) + list(self.exp_avg_sq) + [self.step]

    def construct(self, grads, lr):
        step = self.step + 1
        ops.assign(self.step, step)
        t = ops.cast(step, ms.float32)
        bias1 = 1.0 - ops.pow(self.beta1, t)
        bias2 = 1.0 - ops.pow(self.beta2, t)
        return self.hyper_map(
            ops.partial(_adamw_update, self.beta1, self.beta2, self.eps, lr, bias1, bias2),
            self.params, self.exp_avg, self.exp_avg_sq, grads, self.wd_mask,
        )

    def update_if(self, applied, grads, lr, grad_scale):
        """`construct(grads * grad_scale, lr)` when the bool tensor `applied` is true, else leave
        every parameter and moment (and the step count) untouched. For use inside one compiled
        train step: the scale (gradient clipping) is folded into the update instead of a pass
        over all gradients, and the skip needs no trip to the host."""
        if applied:
            step = self.step + 1
            ops.assign(self.step, step)
            t = ops.cast(step, ms.float32)
            bias1 = 1.0 - ops.pow(self.beta1, t)
            bias2 = 1.0 - ops.pow(self.beta2, t)
            self.hyper_map(
                ops.partial(_adamw_update_scaled, self.beta1, self.beta2, self.eps, lr, bias1, bias2, grad_scale),
                self.params, self.exp_avg, self.exp_avg_sq, grads, self.wd_mask,
            )
        return applied


def _adamw_update_scaled(beta1, beta2, eps, lr, bias1, bias2, scale, param, m, v, grad, wd):
    return _adamw_update(beta1, beta2, eps, lr, bias1, bias2, param, m, v, ops.cast(grad, ms.float32) * scale, wd)


def _adamw_update(beta1, beta2, eps, lr, bias1, bias2, param, m, v, grad, wd):
    grad = ops.cast(grad, ms.float32)
    m_new = beta1 * m + (1.0 - beta1) * grad
    v_new = beta2 * v + (1.0 - beta2) * grad * grad
    update = (m_new / bias1) / (ops.sqrt(v_new / bias2) + eps) + wd * param
    ops.assign(m, m_new)
    ops.assign(v, v_new)
    ops.assign(param, param - lr * update)
    return True
