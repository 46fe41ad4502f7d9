"""Grouped matmul (MoE experts). `grouped_matmul(x_AK, w_ENK, counts_E, impl="auto")` -> y_AN.

Rows of x are sorted by expert: expert 0's counts[0] rows first, then expert 1's, ...;
y[rows of e] = x[rows of e] @ w[e]^T (w stacked [E, out, in] like nn.Dense / the MoE expert
params); rows past sum(counts) (<= A) give 0. Gradients: dx, dw; none for counts (int).
Legend: A rows, K in features, N out features, E experts (groups).

impl:
  "reference": mask per expert + E full matmuls (reference.py; E times the FLOPs).
  "fast":      CPU aot kernels over oneDNN's dnnl_sgemm, std::thread-parallel, forward + backward
               (fast_cpu.py, csrc/grouped_matmul.cc), loaded lazily; falls back to the reference
               with a warning if it cannot be built (no g++, no dnnl_sgemm in the mindspore wheel).
  "ascend":    grouped_matmul_v4 (split_item=3, group_type=0, group sizes as group_list; Ascend
               only, untested here).
  "auto":      the `ops._dispatch.impl_scope` default if set, else ascend on Ascend, else fast when
               AUTO_FAST (measured faster on CPU, docs/ops.md) and buildable, else reference.
GRAPH mode: resolve once outside the graph (`resolve_impl`) and pass the concrete name.
"""
import mindspore as ms

from ops._dispatch import FastPath
from ops.grouped_matmul import reference as _ref

__all__ = ["grouped_matmul", "resolve_impl", "fast_available", "check_shapes"]

AUTO_FAST = True     # "auto" picks the kernel on CPU (measured faster, docs/ops.md)
FAST = FastPath("grouped_matmul", "ops.grouped_matmul.fast_cpu", ("grouped_matmul",), AUTO_FAST)
fast_available = FAST.available   # build/load the CPU kernel on first use; True when usable
resolve_impl = FAST.resolve       # concrete impl for this device: "reference" | "fast" | "ascend"


def check_shapes(x_shape, w_shape, counts_shape):
    """Raise a one-line ValueError unless x [A, K], w [E, N, K], counts [E]."""
    if (len(x_shape) != 2 or len(w_shape) != 3 or len(counts_shape) != 1
            or x_shape[1] != w_shape[2] or counts_shape[0] != w_shape[0]):
        raise ValueError(f"grouped_matmul: shapes x {tuple(x_shape)}, w {tuple(w_shape)}, counts "
                         f"{tuple(counts_shape)} do not match; need x [A, K], w [E, N, K], counts [E]")


def _ascend(x_AK, w_ENK, counts_E):
    from mindspore.ops.auto_generate import grouped_matmul_v4
    return grouped_matmul_v4([x_AK], [w_ENK.transpose(0, 2, 1)], group_list=counts_E.astype(ms.int64),
                             split_item=3, group_type=0, group_list_type=1)[0]


def grouped_matmul(x_AK, w_ENK, counts_E, impl="auto"):
    """y_AN [A, N]: y[rows of e] = x[rows of e] @ w[e]^T, rows grouped by expert as counts_E says."""
    check_shapes(x_AK.shape, w_ENK.shape, counts_E.shape)
    if impl == "reference":
        return _ref.grouped_matmul(x_AK, w_ENK, counts_E)
    if impl == "ascend":
        return _ascend(x_AK, w_ENK, counts_E)
    if impl == "fast" and FAST.ready:
        return FAST.grouped_matmul(x_AK, w_ENK, counts_E)
    return grouped_matmul(x_AK, w_ENK, counts_E, resolve_impl(impl))
