"""AdamW update and sum of squares as plain MindSpore compositions (fp32; GRAPH-mode friendly).

hyper = [lr, bias1, bias2, grad_scale, beta1, beta2, eps, weight_decay] (fp32 [8]), the layout of
the fused CPU kernel (csrc/adamw.cc); bias_i = 1 - beta_i ** step.
"""
import mindspore as ms
from mindspore import ops


def adamw_update(param, m, v, grad, hyper):
    """-> (param', m', v') of one AdamW step with decoupled weight decay (Loshchilov & Hutter)."""
    lr, bias1, bias2, scale = hyper[0], hyper[1], hyper[2], hyper[3]
    beta1, beta2, eps, wd = hyper[4], hyper[5], hyper[6], hyper[7]
    g = ops.cast(grad, ms.float32) * scale
    m_new = beta1 * m + (1.0 - beta1) * g
    v_new = beta2 * v + (1.0 - beta2) * g * g
    update = (m_new / bias1) / (ops.sqrt(v_new / bias2) + eps) + wd * param
    return param - lr * update, m_new, v_new


def sum_squares(x):
    """sum(x ** 2) as a fp32 scalar."""
    return ops.reduce_sum(ops.square(ops.cast(x, ms.float32)))
