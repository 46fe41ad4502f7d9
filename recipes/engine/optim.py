"""AdamW with decoupled weight decay and the warm-up + decay learning-rate schedule.

Written out rather than taken from `mindspore.nn` so that its whole state (moments and step) lives
in named Parameters that a checkpoint saves and restores bit for bit, and so that the learning rate
is an input of the compiled step (the schedule stays plain Python, easy to read and to resume).
"""

from __future__ import annotations

import math

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

import ops.adamw as adamw_ops
from recipes.engine.config import OptimizerConfig, ScheduleConfig


def learning_rate(step: int, total_steps: int, opt: OptimizerConfig, sched: ScheduleConfig) -> float:
    """LR for optimiser step `step` (0-based): linear warm-up, then cosine/linear decay to min_lr."""
    warmup = sched.warmup(total_steps)
    if warmup > 0 and step < warmup:
        return opt.lr * (step + 1) / warmup
    if sched.decay == "constant":
        return opt.lr
    span = max(1, total_steps - 1 - warmup)
    progress = min(1.0, (step - warmup) / span)
    if sched.decay == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        factor = 1.0 - progress
    return sched.min_lr + (opt.lr - sched.min_lr) * factor


def decays(name: str, shape: tuple) -> bool:
    """Weight decay applies to matrices only: not to norms, biases, router scales or expert biases."""
    return len(shape) >= 2 and "norm" not in name and "router_scale" not in name


class AdamW(nn.Cell):
    """AdamW (Loshchilov & Hutter) with bias correction; `construct(grads, lr)` updates in place.

    The per-parameter update is `ops.adamw.adamw_update` (one-pass CPU kernel when built, else the
    plain composition; `optimizer.impl` picks), its results assigned to the parameter and moments.
    """

    def __init__(self, params, cfg: OptimizerConfig):
        super().__init__(auto_prefix=False)
        self.params = ms.ParameterTuple(params)
        self.exp_avg = self.params.clone(prefix="adam_m", init="zeros")
        self.exp_avg_sq = self.params.clone(prefix="adam_v", init="zeros")
        self.step = Parameter(Tensor(0, ms.int32), name="adam_step", requires_grad=False)
        self.beta1 = cfg.beta1
        self.beta2 = cfg.beta2
        self.decays = tuple(decays(p.name, p.shape) for p in self.params)
        # hyper = [lr, bias1, bias2, grad_scale | beta1, beta2, eps, weight_decay]: the constant tail,
        # with and without decay, joins the per-step head once per step.
        self.tail_decay = Tensor([cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay], ms.float32)
        self.tail_plain = Tensor([cfg.beta1, cfg.beta2, cfg.eps, 0.0], ms.float32)
        self.impl = adamw_ops.resolve_impl(cfg.impl)   # resolved once, at build
        self.hyper_map = ops.HyperMap()

    def state_parameters(self) -> list[Parameter]:
        """Everything a checkpoint must hold to resume the optimiser exactly."""
        return list(self.exp_avg) + list(self.exp_avg_sq) + [self.step]

    def construct(self, grads, lr):
        self._update(grads, lr, ops.ones((), ms.float32))
        return True

    def update_if(self, applied, grads, lr, grad_scale):
        """`construct(grads * grad_scale, lr)` when the bool tensor `applied` is true, else leave
        every parameter and moment (and the step count) untouched. For use inside one compiled
        train step: the scale (gradient clipping) is folded into the update instead of a pass
        over all gradients, and the skip needs no trip to the host."""
        if applied:
            self._update(grads, lr, grad_scale)
        return applied

    def _update(self, grads, lr, grad_scale):
        step = self.step + 1
        ops.assign(self.step, step)
        t = ops.cast(step, ms.float32)
        head = ops.stack([ops.cast(lr, ms.float32), 1.0 - ops.pow(self.beta1, t), 1.0 - ops.pow(self.beta2, t),
                          ops.cast(grad_scale, ms.float32)])
        with_decay = ops.concat((head, self.tail_decay))
        without = ops.concat((head, self.tail_plain))
        hypers = tuple([with_decay if d else without for d in self.decays])
        return self.hyper_map(ops.partial(_adamw_apply, self.impl), self.params, self.exp_avg,
                              self.exp_avg_sq, grads, hypers)


def _adamw_apply(impl, param, m, v, grad, hyper):
    param_new, m_new, v_new = adamw_ops.adamw_update(param, m, v, grad, hyper, impl)
    ops.assign(m, m_new)
    ops.assign(v, v_new)
    ops.assign(param, param_new)
    return True
