"""The device mesh of one training job and its communication groups.

Ranks are laid out (dp, ep, tp) with tp innermost (consecutive ranks, i.e. inside a node), and ep
carved out of MindFormers' `data_parallel` (data_parallel = dp x ep: an expert-parallel rank is also
a data-parallel rank for everything that is not an expert):

    rank = (d * ep + e) * tp + t

Groups of the rank (None when the group has one member: nothing to communicate):
    tp           the ranks with the same (d, e): they see the same tokens and hold different shards
    ep           the ranks with the same (d, t): they see different tokens and hold different experts
    data         the ranks with the same t (dp x ep of them): each holds its own rows of the global
                 batch; the gradients of non-expert parameters are summed here
    expert_data  the ranks with the same (e, t) (dp of them): replicas of the same experts
    world        every rank (the guard's finiteness check, the checkpoint barrier)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

_CREATED: set = set()


@dataclass(frozen=True)
class Mesh:
    rank: int
    world: int
    dp: int
    ep: int
    tp: int
    groups: dict          # role -> group name or None (see the module docstring)

    @property
    def coords(self) -> tuple:
        """(d, e, t) of this rank."""
        t = self.rank % self.tp
        e = self.rank // self.tp % self.ep
        return self.rank // (self.tp * self.ep), e, t

    @property
    def data_rank(self) -> int:
        """This rank's index among the dp x ep data ranks: which rows of the global batch it trains on."""
        d, e, _ = self.coords
        return d * self.ep + e

    @property
    def data_world(self) -> int:
        return self.dp * self.ep

    def group(self, role: str) -> Optional[str]:
        return self.groups[role]


def mesh_ranks(dp: int, ep: int, tp: int) -> dict:
    """role -> list of rank lists (every group of that role), for all ranks of the mesh."""
    def rank(d, e, t):
        return (d * ep + e) * tp + t
    return {
        "tp": [[rank(d, e, t) for t in range(tp)] for d in range(dp) for e in range(ep)],
        "ep": [[rank(d, e, t) for e in range(ep)] for d in range(dp) for t in range(tp)],
        "data": [[rank(d, e, t) for d in range(dp) for e in range(ep)] for t in range(tp)],
        "expert_data": [[rank(d, e, t) for d in range(dp)] for e in range(ep) for t in range(tp)],
        "world": [list(range(dp * ep * tp))],
    }


def build_mesh(dp: int, ep: int, tp: int, rank: int, world: int, create: bool = True) -> Mesh:
    """The mesh of `rank`; with `create`, the communication groups it belongs to are created (every rank
    must call this once, after mindspore.communication.init(), before any graph compiles)."""
    if dp * ep * tp != world:
        raise ValueError(f"parallel_config: data_parallel {dp * ep} x model_parallel {tp} = {dp * ep * tp} ranks, "
                         f"but {world} process(es) run; launch with that many workers or change the strategy")
    groups = {}
    for role, lists in mesh_ranks(dp, ep, tp).items():
        mine = next(ranks for ranks in lists if rank in ranks)
        if len(mine) == 1:
            groups[role] = None
        elif len(mine) == world:
            from mindspore.communication import GlobalComm
            groups[role] = GlobalComm.WORLD_COMM_GROUP if create else "world"
        else:
            name = f"mesh_{role}_" + "_".join(map(str, mine))
            if create and name not in _CREATED:
                from mindspore.communication import create_group
                create_group(name, mine)
                _CREATED.add(name)
            groups[role] = name
    return Mesh(rank, world, dp, ep, tp, groups)
