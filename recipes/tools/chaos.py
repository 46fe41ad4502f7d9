"""Chaos test of exact resume: SIGKILL a real training run at random moments, resume it, compare.

`python -m recipes.tools.chaos --kills 10 --seed 0` (or `make chaos`) trains the tiny Pangu Pro recipe once
without interruption (the reference), then for each of K kill points starts the same run as a
subprocess, SIGKILLs it at a random moment, resumes it with `--resume` until it completes, and checks
that the final weights, AdamW state and trainer state are bitwise identical to the reference and that
the loss log is identical float for float (every field except the wall-clock `tokens_per_s`).

Kill moments are drawn (from --seed) among three kinds:
  step        when metrics.jsonl holds step k, plus a random delay of 0-0.5 s (anywhere in a step,
              often mid-checkpoint or mid-log-line with checkpoint.every=2)
  checkpoint  the instant a checkpoint's temporary directory appears after step k (mid-write)
  startup     a random 0-6 s after launch (imports, data, compilation; maybe before any checkpoint)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

RECIPE = "recipes/pangu_pro_moe/pretrain_tiny.yaml"
SMALL = ["data.seq_length=64", "train.micro_batch_size=4", "schedule.warmup_steps=2", "train.eval_batches=1"]
KINDS = ("step", "checkpoint", "startup")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # recipes/tools/ -> repo
TIMEOUT_S = 600  # one training process


@dataclasses.dataclass
class Trial:
    index: int
    kind: str
    target_step: int
    delay: float
    killed_at: str = ""  # what the run had done when the kill landed
    partial_line: bool = False  # metrics.jsonl ended mid-line
    resumes: list[str] = dataclasses.field(default_factory=list)  # "resumed from step N" per resume
    identical: bool = False
    problem: str = ""
    seconds: float = 0.0


def overrides(root: str, name: str, steps: int, every: int) -> list[str]:
    return SMALL + [f"train.steps={steps}", f"checkpoint.every={every}", "checkpoint.keep_last=2",
                    f"run.root={root}", f"run.name={name}"]


def command(sets: list[str], resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "recipes.run", RECIPE]
    for item in sets:
        cmd += ["--set", item]
    return cmd + (["--resume"] if resume else [])


def run_to_end(sets: list[str], resume: bool, log_path: str) -> subprocess.CompletedProcess:
    with open(log_path, "w") as log:
        proc = subprocess.run(command(sets, resume), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                              timeout=TIMEOUT_S, env={**os.environ, "GLOG_v": "3"})
    return proc


def metrics_state(run_dir: str) -> tuple[int, bool]:
    """(complete lines, whether the file ends mid-line) of the run's metrics.jsonl."""
    path = os.path.join(run_dir, "metrics.jsonl")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return 0, False
    return data.count(b"\n"), bool(data) and not data.endswith(b"\n")


def tmp_checkpoint_exists(run_dir: str) -> bool:
    root = os.path.join(run_dir, "checkpoints")
    try:
        return any(n.startswith(".tmp-") for n in os.listdir(root))
    except FileNotFoundError:
        return False


def kill_run(sets: list[str], run_dir: str, trial: Trial, log_path: str) -> None:
    """Start the run and SIGKILL it at the trial's moment (or let it finish if the moment never comes)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command(sets, resume=False), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "GLOG_v": "3"}, start_new_session=True)
        start = time.monotonic()
        fire_at = None
        try:
            while proc.poll() is None:
                now = time.monotonic()
                if now - start > TIMEOUT_S:
                    raise TimeoutError(f"trial {trial.index}: the run did not reach its kill point in {TIMEOUT_S} s")
                if fire_at is None:
                    if trial.kind == "startup":
                        fire_at = start + trial.delay
                    elif metrics_state(run_dir)[0] >= trial.target_step:
                        if trial.kind == "step":
                            fire_at = now + trial.delay
                        elif tmp_checkpoint_exists(run_dir):
                            fire_at = now
                if fire_at is not None and now >= fire_at:
                    mid_ckpt = tmp_checkpoint_exists(run_dir)
                    os.killpg(proc.pid, signal.SIGKILL)  # our own child's process group
                    proc.wait()
                    lines, partial = metrics_state(run_dir)
                    trial.partial_line = partial
                    trial.killed_at = f"{lines} steps logged" + (", mid-checkpoint" if mid_ckpt else "") + (
                        ", mid-line" if partial else "")
                    return
                time.sleep(0.0005 if trial.kind == "checkpoint" else 0.002)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    trial.killed_at = f"finished (rc {proc.returncode}) before the kill"


def resume_until_done(sets: list[str], run_dir: str, trial: Trial, log_prefix: str, attempts: int = 3) -> None:
    for attempt in range(attempts):
        log_path = f"{log_prefix}-resume{attempt}.log"
        if not os.path.isfile(os.path.join(run_dir, "config.yaml")):
            # Killed before the run wrote anything: --resume (rightly) refuses a run that does not exist.
            trial.resumes.append("fresh (never started)")
            proc = run_to_end(sets, resume=False, log_path=log_path)
            if proc.returncode == 0:
                return
            trial.problem = f"fresh start exited {proc.returncode}; see {log_path}"
            continue
        proc = run_to_end(sets, resume=True, log_path=log_path)
        with open(log_path) as f:
            text = f.read()
        resumed = [line for line in text.splitlines() if line.startswith(("resumed from", "--resume:"))]
        step = "?"
        for line in resumed:
            if line.startswith("resumed from"):
                step = line.rsplit("(step ", 1)[-1].rstrip(")")
            elif "no checkpoint yet" in line:
                step = "0 (no checkpoint yet)"
        skipped = text.count("skipping checkpoint")
        trial.resumes.append(step + (f", {skipped} corrupt skipped" if skipped else ""))
        if proc.returncode == 0:
            return
        last = [line for line in text.splitlines() if line.strip()][-1:] or ["(no output)"]
        trial.problem = f"resume exited {proc.returncode}: {last[0][:200]}"
    raise RuntimeError(trial.problem)


def final_state(run_dir: str, steps: int) -> tuple[dict, dict, dict, list[dict]]:
    """(weights, optimizer state, trainer state, loss log without wall-clock fields) at the last step."""
    from safetensors.numpy import load_file

    from recipes.io import checkpoint as ck

    path = os.path.join(run_dir, "checkpoints", ck.step_dir_name(steps))
    ck.verify(path)
    weights = load_file(os.path.join(path, ck.MODEL_FILE))
    optimizer = load_file(os.path.join(path, ck.OPTIMIZER_FILE))
    with open(os.path.join(path, ck.STATE_FILE)) as f:
        state = json.load(f)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        log = [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"} for line in f]
    return weights, optimizer, state, log


def difference(reference, other) -> str:
    """'' if bitwise identical, else what differs first."""
    for what, a, b in zip(("weights", "optimizer"), reference[:2], other[:2]):
        if a.keys() != b.keys():
            return f"{what}: tensor names differ"
        for name in a:
            if (a[name].dtype, a[name].shape, a[name].tobytes()) != (b[name].dtype, b[name].shape, b[name].tobytes()):
                return f"{what}: {name} differs"
    if reference[2] != other[2]:
        return "trainer_state.json differs"
    if json.dumps(reference[3]) != json.dumps(other[3]):  # exact float reprs, NaN-safe
        if len(reference[3]) != len(other[3]):
            return f"loss log: {len(other[3])} lines, reference {len(reference[3])}"
        step = next(a["step"] for a, b in zip(reference[3], other[3]) if json.dumps(a) != json.dumps(b))
        return f"loss log differs at step {step}"
    return ""


def make_trials(kills: int, seed: int, steps: int) -> list[Trial]:
    rng = random.Random(seed)
    trials = []
    for i in range(kills):
        kind = KINDS[i % len(KINDS)] if i < len(KINDS) else rng.choice(("step", "step", "checkpoint", "startup"))
        delay = rng.uniform(0.0, 6.0) if kind == "startup" else rng.uniform(0.0, 0.5)
        trials.append(Trial(i + 1, kind, rng.randint(1, steps - 2), round(delay, 3)))
    return trials


def run_chaos(kills: int = 10, seed: int = 0, steps: int = 30, every: int = 2, root: str = "runs/chaos",
              out=print) -> list[Trial]:
    root = os.path.abspath(root)
    shutil.rmtree(root, ignore_errors=True)
    logs = os.path.join(root, "logs")
    os.makedirs(logs)
    t0 = time.perf_counter()
    ref = run_to_end(overrides(root, "reference", steps, every), resume=False, log_path=os.path.join(logs, "reference.log"))
    if ref.returncode != 0:
        raise RuntimeError(f"the reference run failed (exit {ref.returncode}); see {logs}/reference.log")
    reference = final_state(os.path.join(root, "reference"), steps)
    out(f"reference: {steps} steps in {time.perf_counter() - t0:.0f} s, final loss {reference[3][-1]['loss']:.6f}")
    trials = make_trials(kills, seed, steps)
    out(HEADER)
    for trial in trials:
        t1 = time.perf_counter()
        name = f"kill{trial.index:02d}"
        sets = overrides(root, name, steps, every)
        run_dir = os.path.join(root, name)
        prefix = os.path.join(logs, name)
        try:
            kill_run(sets, run_dir, trial, f"{prefix}-killed.log")
            resume_until_done(sets, run_dir, trial, prefix)
            trial.problem = difference(reference, final_state(run_dir, steps))
            trial.identical = not trial.problem
        except Exception as err:  # reported in the table: one failed trial must not hide the others
            trial.problem = trial.problem or f"{type(err).__name__}: {err}"
        trial.seconds = time.perf_counter() - t1
        out(row(trial))
    n_ok = sum(t.identical for t in trials)
    out(f"{n_ok}/{len(trials)} identical (weights, optimizer state, trainer state and loss log; "
        f"{time.perf_counter() - t0:.0f} s total)")
    return trials


HEADER = f"{'#':>2}  {'kind':10} {'kill point':22} {'state at kill':36} {'resumed from':22} result"


def row(t: Trial) -> str:
    point = f"{t.delay:.2f} s after start" if t.kind == "startup" else (
        f"step {t.target_step} + {t.delay:.2f} s" if t.kind == "step" else f"ckpt write after {t.target_step}")
    result = "identical" if t.identical else f"DIFFERENT: {t.problem}"
    return f"{t.index:>2}  {t.kind:10} {point:22} {t.killed_at:36} {'; '.join(t.resumes):22} {result} ({t.seconds:.0f} s)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.tools.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="number of random kill points")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    parser.add_argument("--steps", type=int, default=30, help="training steps per run")
    parser.add_argument("--every", type=int, default=2, help="checkpoint.every")
    parser.add_argument("--root", default="runs/chaos", help="run root (deleted and re-created)")
    args = parser.parse_args(argv)
    if args.steps < 4:
        parser.error("--steps must be >= 4")
    trials = run_chaos(args.kills, args.seed, args.steps, args.every, args.root)
    return 0 if all(t.identical for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main())
