"""msrun worker for tests/pangu/test_ultra_ep_loss.py (not a test module itself).

Every worker builds the same tiny Pangu Ultra MoE (same seed) with aux_loss_scope="ep_group"
(one EP group = both ranks) and with "global", computes the aux loss on ITS half of a fixed batch, and writes it to
OUT_DIR/rank{r}.json. Rank 0 also computes the single-process loss of the concatenated batch
with a "micro_batch"-scope model and writes OUT_DIR/reference.json.
"""
import json
import os
import sys

import numpy as np
import mindspore as ms
from mindspore.communication import get_group_size, get_rank, init

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from pangu.ultra_moe.config import tiny  # noqa: E402
from pangu.ultra_moe.model import build_model  # noqa: E402


def batch(rows, seq, vocab):
    rng = np.random.default_rng(7)
    ids = rng.integers(1, vocab, (rows, seq)).astype(np.int32)
    seg = np.ones((rows, seq), np.int32)
    seg[:, seq // 2:] = 2                                    # two packed documents per row
    pos = np.concatenate([np.arange(seq // 2), np.arange(seq - seq // 2)])[None].repeat(rows, 0)
    labels = np.concatenate([ids[:, 1:], np.zeros((rows, 1), np.int32)], 1)
    mask = np.ones((rows, seq), np.float32)
    mask[:, seq // 2 - 1] = 0
    mask[:, -1] = 0
    return [ms.Tensor(a) for a in (ids, labels, mask, pos.astype(np.int32), seg)]


def aux_of(model, ids, labels, mask, pos, seg):
    _, metrics = model.loss(ids, labels, mask, pos, seg)
    names = type(model).METRIC_NAMES
    return float(metrics[names.index("aux_loss")].asnumpy())


def main():
    out_dir = sys.argv[1]
    init()
    rank, world = get_rank(), get_group_size()
    cfg = tiny().replace(aux_loss_scope="ep_group", aux_loss_ep_size=0, num_mtp_layers=0)
    ids, labels, mask, pos, seg = batch(2 * world, 32, cfg.vocab_size)
    rows = slice(2 * rank, 2 * rank + 2)
    model = build_model(cfg, seed=3)
    ep = aux_of(model, ids[rows], labels[rows], mask[rows], pos[rows], seg[rows])
    glob = aux_of(build_model(cfg.replace(aux_loss_scope="global"), seed=3),
                  ids[rows], labels[rows], mask[rows], pos[rows], seg[rows])
    local = aux_of(build_model(cfg.replace(aux_loss_scope="micro_batch"), seed=3),
                   ids[rows], labels[rows], mask[rows], pos[rows], seg[rows])
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world": world, "ep_group_aux": ep, "global_aux": glob,
                   "local_aux": local}, f)
    if rank == 0:
        ref = aux_of(build_model(cfg.replace(aux_loss_scope="micro_batch"), seed=3),
                     ids, labels, mask, pos, seg)
        with open(os.path.join(out_dir, "reference.json"), "w") as f:
            json.dump({"concat_aux": ref, "equal": abs(ref - ep) <= 1e-6 * max(1.0, abs(ref))}, f)


if __name__ == "__main__":
    main()
