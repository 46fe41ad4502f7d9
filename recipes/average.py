"""Checkpoint weight averaging: `python -m recipes.average --out DIR [--method uniform|ema|grouped] ...`.

Methods (θ_j are the model tensors of checkpoint j, in step order):
  uniform   θ = 1/k · Σ_j θ_j over the given checkpoints, or the newest k of a run (`--run RUN --last K`)
  ema       e_1 = θ_1, e_j = d·e_{j-1} + (1−d)·θ_j  (`--decay d`), i.e. θ = d^(k−1)·θ_1 + Σ_{j≥2} (1−d)·d^(k−j)·θ_j
  grouped   the Pangu Pro SFT merge θ = θ_base + Σ_g λ_g · mean_i(θ_{g,i} − θ_base)
            (`--base CKPT --group "λ:ckpt,ckpt" [--group ...]`, or the same in a YAML `--spec`)
Every method is a fixed linear combination Σ_j c_j θ_j (grouped: c_base = 1 − Σ λ_g, c_{g,i} = λ_g/|g|), so all
three share one streaming pass: checkpoints are read one at a time, tensor by tensor, into one fp32
accumulator (each update is done in float64 for that tensor), so memory is one accumulator plus one tensor.
`STATS` counts the checkpoints open at once (the tests assert the peak is 1).

Before any arithmetic, every checkpoint's header is compared with the first one: a different tensor name
set or shape stops with one line naming the first offending tensor and file. The result is a run-like
directory (`recipes.io.rundir`): OUT/config.yaml + OUT/checkpoints/step_*/ whose trainer_state.json records
the method, the coefficients and the sources; use it as `init_from`, with recipes.evaluate or recipes.export.

Spec YAML (`--spec`), any of: method, checkpoints: [..], run, last, decay, base,
groups: [{weight: λ, checkpoints: [..]}, ...]; command-line flags win over the spec.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections import Counter

import numpy as np

os.environ.setdefault("GLOG_v", "3")

from recipes.io import safetensors_io
from recipes.io import rundir  # noqa: E402
from recipes.cli import run_command

METHODS = ("uniform", "ema", "grouped")
STATS: Counter = Counter()  # "open": checkpoints open now, "peak_open", "opened": total opens


@contextlib.contextmanager
def _open(path: str):
    """One checkpoint file opened for tensor-by-tensor reads (instrumented for the streaming test)."""
    reader = safetensors_io.Reader(path)
    STATS["open"] += 1
    STATS["opened"] += 1
    STATS["peak_open"] = max(STATS["peak_open"], STATS["open"])
    try:
        yield reader
    finally:
        STATS["open"] -= 1


def reset_stats() -> None:
    STATS.clear()


# ---------------------------------------------------------------------------------------------- maths
def uniform_coefficients(n: int) -> list[float]:
    if n < 1:
        raise ValueError("checkpoints: none given; name at least one checkpoint or use --run RUN --last K")
    return [1.0 / n] * n


def ema_coefficients(n: int, decay: float) -> list[float]:
    """Coefficients of e_n for e_1 = θ_1, e_j = d·e_{j-1} + (1−d)·θ_j."""
    if n < 1:
        raise ValueError("checkpoints: none given; name at least one checkpoint or use --run RUN --last K")
    if decay is None or not 0.0 <= decay < 1.0:
        raise ValueError(f"--decay: {decay} must be in [0, 1); e.g. 0.9")
    return [decay ** (n - 1)] + [(1.0 - decay) * decay ** (n - j) for j in range(2, n + 1)]


def grouped_coefficients(groups: list[tuple[float, list[str]]]) -> tuple[float, list[list[float]]]:
    """(c_base, [[c_{g,i}]]) of θ_base + Σ_g λ_g · mean_i(θ_{g,i} − θ_base)."""
    if not groups:
        raise ValueError('--group: none given; pass --group "λ:ckpt,ckpt" at least once (or groups: in --spec)')
    for lam, members in groups:
        if not members:
            raise ValueError(f"--group: weight {lam} has no checkpoints; write it as \"{lam}:ckpt,ckpt\"")
    base = 1.0 - sum(lam for lam, _ in groups)
    return base, [[lam / len(members)] * len(members) for lam, members in groups]


def check_same_layout(files: list[str]) -> dict[str, tuple]:
    """Name -> shape of the first file; ValueError naming the first tensor/file that differs."""
    ref = safetensors_io.Reader(files[0])
    ref_shapes = {n: ref.shape(n) for n in ref.names()}
    for path in files[1:]:
        other = safetensors_io.Reader(path)
        shapes = {n: other.shape(n) for n in other.names()}
        for name in sorted(set(ref_shapes) | set(shapes)):
            if name not in shapes:
                raise ValueError(f"{path}: tensor {name} is missing (present in {files[0]}); "
                                 "average checkpoints of one model config")
            if name not in ref_shapes:
                raise ValueError(f"{path}: unexpected tensor {name} (absent from {files[0]}); "
                                 "average checkpoints of one model config")
            if shapes[name] != ref_shapes[name]:
                raise ValueError(f"{path}: tensor {name} has shape {shapes[name]}, {files[0]} has "
                                 f"{ref_shapes[name]}; average checkpoints of one model config")
    return ref_shapes


def combine(files: list[str], coefficients: list[float]) -> dict[str, np.ndarray]:
    """Σ_j c_j · (tensors of files[j]), streaming one file and one tensor at a time.

    Floating tensors are combined (fp32 result); other dtypes (counters) are taken from the last file.
    """
    if len(files) != len(coefficients) or not files:
        raise ValueError("checkpoints: need one coefficient per checkpoint and at least one checkpoint")
    check_same_layout(files)
    acc: dict[str, np.ndarray] = {}
    for path, c in zip(files, coefficients):
        with _open(path) as reader:
            for name in reader.names():
                x = reader.get(name)
                if not np.issubdtype(x.dtype, np.floating):
                    acc[name] = x
                elif name not in acc:
                    acc[name] = (np.float64(c) * x).astype(np.float32)
                else:
                    acc[name] = (acc[name].astype(np.float64) + np.float64(c) * x).astype(np.float32)
                del x
    return acc


# ------------------------------------------------------------------------------------------ front end
def parse_group(text: str) -> tuple[float, list[str]]:
    """'0.5:ckptA,ckptB' -> (0.5, [ckptA, ckptB])."""
    lam, sep, rest = text.partition(":")
    try:
        weight = float(lam)
    except ValueError:
        weight = None
    members = [m for m in rest.split(",") if m]
    if not sep or weight is None or not members:
        raise ValueError(f'--group: cannot parse {text!r}; write "λ:ckpt,ckpt", e.g. "0.5:runs/sft/checkpoints/step_00000100"')
    return weight, members


def average(out: str, method: str = "uniform", checkpoints: list[str] | None = None, run: str | None = None,
            last: int | None = None, decay: float | None = None, base: str | None = None,
            groups: list[tuple[float, list[str]]] | None = None, overwrite: bool = False, log=print) -> str:
    """Average checkpoints into the run-like directory `out`; returns the written step_* directory."""
    if method not in METHODS:
        raise ValueError(f"--method: unknown {method!r}; use one of {METHODS}")
    if method == "grouped":
        if base is None:
            raise ValueError("--base: the grouped merge needs the base checkpoint θ_base (--base CKPT)")
        if checkpoints or run:
            raise ValueError("checkpoints: the grouped merge takes --base and --group only; drop the positional "
                             "checkpoints / --run")
        base_loc = rundir.locate(base, log)
        c_base, c_groups = grouped_coefficients(groups or [])
        group_locs = [[rundir.locate(p, log) for p in members] for _, members in groups]
        sources = [base_loc] + [loc for g in group_locs for loc in g]
        coeffs = [c_base] + [c for g in c_groups for c in g]
        config_from = next((loc.run_dir for loc in reversed(sources) if loc.run_dir), None)
        step = max(loc.step for loc in sources)
        record = {"base": base_loc.checkpoint,
                  "groups": [{"weight": lam, "checkpoints": [loc.checkpoint for loc in g]}
                             for (lam, _), g in zip(groups, group_locs)]}
    else:
        if base is not None or groups:
            raise ValueError(f"--base/--group: only for --method grouped (got --method {method})")
        if run is not None:
            if checkpoints:
                raise ValueError("checkpoints: give either checkpoint paths or --run RUN --last K, not both")
            if last is None:
                raise ValueError("--last: --run needs --last K (how many of its newest checkpoints)")
            sources = rundir.last_checkpoints(run, last, log)
        else:
            sources = sorted((rundir.locate(p, log) for p in checkpoints or []), key=lambda loc: loc.step)
        n = len(sources)
        coeffs = uniform_coefficients(n) if method == "uniform" else ema_coefficients(n, decay)
        config_from = next((loc.run_dir for loc in reversed(sources) if loc.run_dir), None)
        step = sources[-1].step
        record = {"decay": decay} if method == "ema" else {}

    # The same checkpoint may appear twice (e.g. the base inside a group): merge its coefficients.
    merged: dict[str, float] = {}
    for loc, c in zip(sources, coeffs):
        key = os.path.realpath(rundir.model_file(loc))
        merged[key] = merged.get(key, 0.0) + c
    inputs = [loc.checkpoint for loc in sources] + [run, base]
    rundir.prepare_out(out, overwrite, create=False, inputs=inputs)  # fail before the work
    tensors = combine(list(merged), list(merged.values()))
    state = {"averaged": {"method": method, **record,
                          "sources": [{"checkpoint": loc.checkpoint, "step": loc.step, "coefficient": c}
                                      for loc, c in zip(sources, coeffs)]}}
    if config_from is None:
        log("warning: no source checkpoint sits in a run directory with config.yaml; the result works as "
            "init_from but recipes.evaluate/export need a config.yaml next to checkpoints/")
    with rundir.staged_out(out, overwrite, inputs=inputs) as stage:  # OUT replaced only once all is written
        staged = rundir.write_run_checkpoint(stage, step, tensors, state, config_from, final=out)
    path = os.path.join(out, os.path.relpath(staged, stage))
    log(f"averaged {len(sources)} checkpoints ({method}) -> {path}")
    return path


def _load_spec(path: str) -> dict:
    import yaml

    with open(path) as f:
        spec = yaml.safe_load(f) or {}
    allowed = {"method", "checkpoints", "run", "last", "decay", "base", "groups"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(f"--spec {path}: unknown key {unknown[0]!r}; use {sorted(allowed)}")
    if "groups" in spec:
        groups = []
        for g in spec["groups"] or []:
            if not isinstance(g, dict) or set(g) != {"weight", "checkpoints"}:
                raise ValueError(f"--spec {path}: each group needs exactly weight: and checkpoints: (got {g!r})")
            groups.append((float(g["weight"]), [str(p) for p in g["checkpoints"]]))
        spec["groups"] = groups
    return spec


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m recipes.average", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="*", help="checkpoint (step_*) or run directories (uniform/ema)")
    p.add_argument("--out", required=True, help="output run-like directory")
    p.add_argument("--method", choices=METHODS, default=None, help="default: uniform (grouped with --base)")
    p.add_argument("--run", help="average the newest --last K checkpoints of this run")
    p.add_argument("--last", type=int, help="how many of the run's newest checkpoints")
    p.add_argument("--decay", type=float, help="EMA decay d in [0, 1)")
    p.add_argument("--base", help="grouped: base checkpoint θ_base")
    p.add_argument("--group", action="append", default=[], help='grouped: "λ:ckpt,ckpt" (repeat per group)')
    p.add_argument("--spec", help="YAML with the same settings (flags win)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def body():
        spec = _load_spec(args.spec) if args.spec else {}
        groups = [parse_group(g) for g in args.group] or spec.get("groups")
        base = args.base or spec.get("base")
        method = args.method or spec.get("method") or ("grouped" if base or groups else "uniform")
        average(args.out, method, args.checkpoints or spec.get("checkpoints"), args.run or spec.get("run"),
                args.last if args.last is not None else spec.get("last"),
                args.decay if args.decay is not None else spec.get("decay"), base, groups, args.overwrite)

    return run_command(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
