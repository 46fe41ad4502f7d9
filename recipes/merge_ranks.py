"""Merge per-rank checkpoints of a data-parallel / optimizer-sharded run into one checkpoint.

    python -m recipes.merge_ranks RANK_DIR --out DIR [--tolerance 0] [--overwrite]

Per-rank layout (what a rank writes into its checkpoint directory; `write_rank` does it):

    RANK_DIR/
      model.rank{r}.safetensors   the tensors rank r holds, r = 0..R-1 (our parameter names)
      shard_map.rank{r}.json      {"rank": r, "world_size": R,
                                   "tensors": {name: {"shape": [full shape], "dim": 0, "offset": o}}}
                                  optional; tensors it does not list are full replicas
      trainer_state.json          optional; its step names the merged checkpoint

Rules. A replicated tensor (not in any shard map) must be on every rank: data-parallel replicas are
compared with rank 0 and the merge stops, naming the tensor and rank, when the largest absolute
difference exceeds --tolerance (default 0: bit-identical); the report gives the largest difference seen.
A sharded tensor (optimizer parallel / ZeRO: a slice [offset, offset + local size) along `dim`, dim 0 by
default) must be sharded on every rank that holds it; the slices must tile [0, shape[dim]) with no gap
or overlap, and ranks holding the same slice (DP replicas of a shard) must agree like replicas do.
Tensors are merged one at a time, reading only that tensor from each rank file. The output is a
run-like directory (recipes.io.rundir); config.yaml is copied when RANK_DIR is a step_* directory of a run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np

os.environ.setdefault("GLOG_v", "3")

from recipes.io import safetensors_io
from recipes.io import rundir  # noqa: E402
from recipes.cli import run_command

_RANK_FILE = re.compile(r"^model\.rank(\d+)\.safetensors$")


def rank_file(r: int) -> str:
    return f"model.rank{r}.safetensors"


def map_file(r: int) -> str:
    return f"shard_map.rank{r}.json"


def shard(full: np.ndarray, world_size: int, rank: int, dim: int = 0) -> tuple[np.ndarray, int]:
    """Rank `rank`'s slice of `full` split evenly (remainder to the first ranks) along dim; (slice, offset)."""
    n = full.shape[dim]
    sizes = [n // world_size + (1 if i < n % world_size else 0) for i in range(world_size)]
    offset = sum(sizes[:rank])
    return np.take(full, range(offset, offset + sizes[rank]), axis=dim), offset


def write_rank(directory: str, rank: int, world_size: int, tensors: dict[str, np.ndarray],
               sharded: dict[str, dict] | None = None) -> None:
    """Write rank `rank`'s file and shard map; `sharded` = {name: {"shape", "dim", "offset"}}."""
    os.makedirs(directory, exist_ok=True)
    safetensors_io.write(os.path.join(directory, rank_file(rank)), tensors, "fp32")
    entries = {n: {"shape": list(m["shape"]), "dim": int(m.get("dim", 0)), "offset": int(m["offset"])}
               for n, m in (sharded or {}).items()}
    with open(os.path.join(directory, map_file(rank)), "w") as f:
        json.dump({"rank": rank, "world_size": world_size, "tensors": entries}, f, indent=1)


def _discover(directory: str) -> tuple[list[safetensors_io.Reader], list[dict]]:
    if not os.path.isdir(directory):
        raise ValueError(f"{directory}: not a directory; give the checkpoint directory holding model.rank*.safetensors")
    ranks = sorted(int(m.group(1)) for m in map(_RANK_FILE.match, os.listdir(directory)) if m)
    if not ranks:
        raise ValueError(f"{directory}: no model.rank{{r}}.safetensors files; nothing to merge")
    if ranks != list(range(len(ranks))):
        missing = sorted(set(range(max(ranks) + 1)) - set(ranks))
        raise ValueError(f"{directory}: rank files are not 0..{max(ranks)} (missing {rank_file(missing[0])}); "
                         "copy every rank's file")
    readers, maps = [], []
    for r in ranks:
        readers.append(safetensors_io.Reader(os.path.join(directory, rank_file(r))))
        path = os.path.join(directory, map_file(r))
        if os.path.isfile(path):
            with open(path) as f:
                m = json.load(f)
            if m.get("rank") != r or m.get("world_size") != len(ranks):
                raise ValueError(f"{path}: says rank {m.get('rank')} of {m.get('world_size')}, but the directory "
                                 f"holds rank {r} of {len(ranks)} files; the files come from different runs")
            maps.append(m.get("tensors", {}))
        else:
            maps.append({})
    return readers, maps


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def merge(directory: str, tolerance: float = 0.0) -> tuple[dict[str, np.ndarray], dict]:
    """Merged {name: array} and a report {"world_size", "replicated", "sharded", "max_replica_diff"}."""
    readers, maps = _discover(directory)
    world = len(readers)
    names = sorted({n for rd in readers for n in rd.names()})
    out, report = {}, {"world_size": world, "replicated": 0, "sharded": 0, "max_replica_diff": 0.0}

    def check_equal(name, ref, r_ref, other, r_other, what):
        d = _max_diff(ref, other)
        report["max_replica_diff"] = max(report["max_replica_diff"], d)
        if d > tolerance:
            raise ValueError(f"{directory}: {name}{what} on rank {r_other} differs from rank {r_ref}'s by up to {d:.3g} "
                             f"(shape {other.shape} vs {ref.shape}; tolerance {tolerance}); the replicas diverged")

    for name in names:
        holders = [r for r in range(world) if name in readers[r].header]
        kinds = {name in maps[r] for r in holders}
        if len(kinds) > 1:
            raise ValueError(f"{directory}: {name} is sharded on some ranks and replicated on others; "
                             "fix the shard maps")
        if kinds == {False}:  # replicated: every rank has the full tensor
            if len(holders) != world:
                lacking = next(r for r in range(world) if r not in holders)
                raise ValueError(f"{directory}: replicated tensor {name} is missing from {rank_file(lacking)}")
            ref = readers[0].get(name)
            for r in range(1, world):
                check_equal(name, ref, 0, readers[r].get(name), r, "")
            out[name] = ref
            report["replicated"] += 1
            continue
        entries = [maps[r][name] for r in holders]
        full, dim = tuple(entries[0]["shape"]), int(entries[0].get("dim", 0))
        pieces = {}  # offset -> (rank, array)
        for r, e in zip(holders, entries):
            if tuple(e["shape"]) != full or int(e.get("dim", 0)) != dim:
                raise ValueError(f"{directory}: {map_file(r)} gives {name} full shape {tuple(e['shape'])} dim "
                                 f"{e.get('dim', 0)}, rank {holders[0]} says {full} dim {dim}")
            part = readers[r].get(name)
            expect = full[:dim] + full[dim + 1:]
            if part.ndim != len(full) or part.shape[:dim] + part.shape[dim + 1:] != expect:
                raise ValueError(f"{directory}: {name} on rank {r} has shape {part.shape}, not a dim-{dim} slice "
                                 f"of {full}")
            off = int(e["offset"])
            if off in pieces:
                check_equal(name, pieces[off][1], pieces[off][0], part, r, f" (slice at offset {off})")
            else:
                pieces[off] = (r, part)
        pos = 0
        for off in sorted(pieces):
            r, part = pieces[off]
            if off != pos:
                what = "gap" if off > pos else "overlap"
                raise ValueError(f"{directory}: {name} shards leave a {what} at index {min(off, pos)} along dim {dim} "
                                 f"(rank {r} starts at {off}); fix the shard maps")
            pos += part.shape[dim]
        if pos != full[dim]:
            raise ValueError(f"{directory}: {name} shards cover {pos} of {full[dim]} along dim {dim}; "
                             "a rank's file is missing a slice")
        out[name] = np.concatenate([pieces[o][1] for o in sorted(pieces)], axis=dim)
        report["sharded"] += 1
    return out, report


def merge_ranks(directory: str, out: str, tolerance: float = 0.0, overwrite: bool = False, log=print) -> str:
    """Merge RANK_DIR into the run-like directory `out`; returns the written step_* directory."""
    rundir.prepare_out(out, overwrite, create=False, inputs=(directory,))
    tensors, report = merge(directory, tolerance)
    step, state = 0, {}
    state_path = os.path.join(directory, "trainer_state.json")
    if os.path.isfile(state_path):
        with open(state_path) as f:
            state = json.load(f)
        step = int(state.pop("step", 0))
    run_dir = os.path.dirname(os.path.dirname(os.path.normpath(directory)))
    config_from = run_dir if os.path.isfile(os.path.join(run_dir, "config.yaml")) else None
    with rundir.staged_out(out, overwrite, inputs=(directory,)) as stage:   # OUT replaced only once all is written
        staged = rundir.write_run_checkpoint(stage, step, tensors,
                                             {**state, "merged_ranks": {"source": directory, **report}},
                                             config_from, final=out)
    path = os.path.join(out, os.path.relpath(staged, stage))
    log(f"merged {report['world_size']} ranks ({report['replicated']} replicated, {report['sharded']} sharded "
        f"tensors; max replica difference {report['max_replica_diff']:.3g}) -> {path}")
    return path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m recipes.merge_ranks", description=__doc__.splitlines()[0])
    p.add_argument("path", help="directory holding model.rank{r}.safetensors (+ shard_map.rank{r}.json)")
    p.add_argument("--out", required=True, help="output run-like directory")
    p.add_argument("--tolerance", type=float, default=0.0, help="largest allowed |difference| between replicas")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def body():
        merge_ranks(args.path, args.out, args.tolerance, args.overwrite)

    return run_command(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
