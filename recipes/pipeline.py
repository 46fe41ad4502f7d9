"""Staged pipelines: `python -m recipes.pipeline recipes/<model>/pipeline.yaml [--root runs] [--set k=v ...]`.

A pipeline spec lists stages in order; each stage writes one run(-like) directory under `--root`:

    description: ...
    eval:                              # how `evaluate: true` stages are scored (optional)
      data_from: sft_tiny.yaml         # recipe whose data section gives the held-out chat prompts
      limit: 256                       # prompts (examples) scored
    stages:
      - {name: general, type: train, recipe: pretrain_general_tiny.yaml}
      - {name: sft, type: train, recipe: sft_tiny.yaml, init_from: general, evaluate: true}
      - {name: average, type: average, from: sft, args: [--last, "3"], evaluate: true}
      - {name: export, type: export, from: average}

Stage types:
  train    `python -m recipes.run RECIPE --set run.root=ROOT [--set init_from=ROOT/<run of stage>]
           [--set k=v of --set]` (a subprocess); the run dir is ROOT/<the recipe's run.name>.
  average  `python -m recipes.average --out ROOT/<output> [--run ROOT/<run of `from`>] ARGS` (the
           `--run` is added unless ARGS have --run/--base/--spec or a {placeholder}); ARGS may use
           {root} and {<stage name>} (that stage's output directory).
  search   MindVL test-time resolution search on the run of `from`, in place: `python -m recipes.evaluate
           ROOT/<run of `from`> --resolution-search --data-from <eval.data_from> ARGS` writes
           preprocessor_config.json (the chosen pixel budget + all scores) into that run, so an export
           `from` this stage carries the choice; skipped when the run already holds a search record.
  export   `python -m recipes.export ROOT/<run of `from`> --out ROOT/<output> ARGS`.
Relative recipe paths are relative to the spec file. `output` defaults to <spec's model dir>_<name>.

Scoring of `evaluate: true` stages depends on the architecture of `eval.data_from`'s recipe:
  text models   greedy exact match of generated answers (recipes.evaluate, compiled KV-cache decoding)
                on its held-out chat prompts + token loss on its validation rows ("chat val").
  an arch whose ModelSpec has `evaluate(model, dataset)` (MindVL: mindvl.evaluate.evaluate_dataset)
                that hook on the recipe's validation split (`build_dataset(data, "val")`), which returns
                {"val_accuracy": overall, "val_accuracy_<task>": per task}, + the model's loss on the
                split's rows ("chat val"). `limit` keeps the first N validation examples.

Resumable: a train stage whose run has a valid checkpoint at its final step is skipped (one that
stopped early is continued with --resume); an average/export stage is skipped when its output
holds the `.pipeline_done` marker written after it succeeded; an evaluation is skipped when its
result file exists. The metrics table (steps, final train loss, val loss, chat val loss and
exact-match of evaluated stages, wall time) is printed at the end, followed by exact match per task
of the evaluated stages, and written to ROOT/<pipeline>_pipeline.json. User errors print one line and
exit 2 (`--debug`: traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import yaml

os.environ.setdefault("GLOG_v", "3")

STAGE_TYPES = ("train", "average", "search", "export")
STAGE_KEYS = {
    "train": {"name", "type", "recipe", "init_from", "evaluate", "set"},
    "average": {"name", "type", "from", "args", "output", "evaluate"},
    "search": {"name", "type", "from", "args"},
    "export": {"name", "type", "from", "args", "output"},
}
DONE_MARKER = ".pipeline_done"


class PipelineError(ValueError):
    """A user error in a pipeline spec; one line naming the stage, the key and the fix."""


@dataclass
class Stage:
    name: str
    type: str
    recipe: str | None = None  # train: recipe path (resolved)
    init_from: str | None = None  # train: name of the stage whose output it starts from
    source: str | None = None  # average/export: name of the stage it reads
    args: list[str] = field(default_factory=list)
    output: str | None = None  # average/export: directory name under the root
    evaluate: bool = False
    overrides: list[str] = field(default_factory=list)  # train: extra --set of this stage


@dataclass
class Spec:
    path: str
    name: str  # e.g. pangu_pro_moe (the spec's directory name)
    description: str
    stages: list[Stage]
    eval_data_from: str | None = None  # recipe path (resolved)
    eval_limit: int | None = None


# --------------------------------------------------------------------------------------------------
# Spec


def load_spec(path: str) -> Spec:
    """Read and check a pipeline spec; every problem is a one-line `PipelineError`."""
    if not os.path.isfile(path):
        raise PipelineError(f"{path}: pipeline spec not found; pipelines live at recipes/<model>/pipeline.yaml")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise PipelineError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: expected a mapping with a `stages:` list")
    unknown = set(raw) - {"description", "eval", "stages"}
    if unknown:
        raise PipelineError(f"{path}: unknown key {sorted(unknown)[0]!r}; valid keys: description, eval, stages")
    here = os.path.dirname(path)
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise PipelineError(f"{path}: stages: expected a non-empty list of stages")
    stages: list[Stage] = []
    names: set[str] = set()
    for i, item in enumerate(stages_raw):
        where = f"{path}: stages[{i}]"
        if not isinstance(item, dict):
            raise PipelineError(f"{where}: expected a mapping like {{name: ..., type: train, recipe: ...}}")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise PipelineError(f"{where}: name: required (a short stage name)")
        where = f"{path}: stage {name!r}"
        if name in names:
            raise PipelineError(f"{where}: duplicate stage name; give every stage its own name")
        kind = item.get("type")
        if kind not in STAGE_TYPES:
            raise PipelineError(f"{where}: type: unknown stage type {kind!r}; use one of {', '.join(STAGE_TYPES)}")
        extra = set(item) - STAGE_KEYS[kind]
        if extra:
            raise PipelineError(
                f"{where}: unknown key {sorted(extra)[0]!r} for a {kind} stage; valid: {', '.join(sorted(STAGE_KEYS[kind]))}")
        stage = Stage(name=name, type=kind, evaluate=bool(item.get("evaluate", False)))
        args = item.get("args", [])
        if not isinstance(args, list):
            raise PipelineError(f"{where}: args: expected a list of command-line arguments")
        stage.args = [str(a) for a in args]
        if kind == "train":
            recipe = item.get("recipe")
            if not isinstance(recipe, str) or not recipe:
                raise PipelineError(f"{where}: recipe: required (a recipe YAML relative to {path})")
            stage.recipe = os.path.normpath(os.path.join(here, recipe))
            if not os.path.isfile(stage.recipe):
                raise PipelineError(f"{where}: recipe: {stage.recipe} not found; fix the path (relative to the spec)")
            stage.init_from = item.get("init_from")
            sets = item.get("set", [])
            if not isinstance(sets, list):
                raise PipelineError(f"{where}: set: expected a list of key=value overrides")
            stage.overrides = [str(s) for s in sets]
        else:
            stage.source = item.get("from")
            if not stage.source:
                raise PipelineError(f"{where}: from: required (the stage whose output it reads)")
            stage.output = item.get("output") or f"{os.path.basename(here)}_{name}"
        ref = stage.init_from if kind == "train" else stage.source
        if ref is not None and ref not in names:
            key = "init_from" if kind == "train" else "from"
            raise PipelineError(f"{where}: {key}: {ref!r} is not an earlier stage; use one of {sorted(names) or 'none'}")
        names.add(name)
        stages.append(stage)
    ev = raw.get("eval") or {}
    if not isinstance(ev, dict) or set(ev) - {"data_from", "limit"}:
        raise PipelineError(f"{path}: eval: expected a mapping with data_from (a chat recipe) and limit")
    data_from = ev.get("data_from")
    if data_from is not None:
        data_from = os.path.normpath(os.path.join(here, data_from))
        if not os.path.isfile(data_from):
            raise PipelineError(f"{path}: eval.data_from: {data_from} not found; name a recipe with data.source: sft")
    if any(s.evaluate for s in stages) and data_from is None:
        raise PipelineError(f"{path}: eval.data_from: required when a stage has `evaluate: true`")
    if any(s.type == "search" for s in stages) and data_from is None:
        raise PipelineError(f"{path}: eval.data_from: required by a search stage (its validation split is searched)")
    return Spec(path, os.path.basename(os.path.normpath(here)), str(raw.get("description", "")), stages,
                data_from, ev.get("limit"))


# --------------------------------------------------------------------------------------------------
# Running


def _run_name(recipe_path: str, overrides: list[str]) -> tuple[str, int]:
    from recipes.engine.config import load_recipe

    recipe, _ = load_recipe(recipe_path, ["init_from=null", *overrides])
    return recipe.run.name, recipe.train.steps


def _checkpoint_step(run_dir: str) -> int:
    from recipes.io import checkpoint as ckpt_lib

    found = ckpt_lib.latest_valid(os.path.join(run_dir, "checkpoints"), warn=lambda *_: None)
    return found.step if found is not None else 0


def _train_metrics(run_dir: str) -> dict:
    path = os.path.join(run_dir, "metrics.jsonl")
    out: dict = {}
    if not os.path.isfile(path):
        return out
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    if records:
        out["steps"] = records[-1]["step"]
        out["train_loss"] = records[-1].get("lm_loss", records[-1]["loss"])
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    if vals:
        out["val_loss"] = vals[-1]
    return out


def _subprocess(cmd: list[str], log) -> None:
    log("$ " + " ".join(cmd))
    env = dict(os.environ)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # `recipes` importable from any cwd
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"stage command failed with status {proc.returncode}: {' '.join(cmd)}")


class Evaluator:
    """Exact match + chat validation loss of a run(-like) directory on the spec's held-out prompts."""

    def __init__(self, spec: Spec, limit: int | None, log):
        from recipes.engine.config import load_recipe

        recipe, _ = load_recipe(spec.eval_data_from, ["init_from=null"])
        self.data = recipe.data
        self.batch_size = recipe.train.micro_batch_size
        self.limit = limit if limit is not None else spec.eval_limit
        self.log = log
        self._configured = False

    def __call__(self, run_dir: str, out_path: str) -> dict:
        if os.path.isfile(out_path):
            with open(out_path) as f:
                return json.load(f)
        import mindspore as ms

        from pangu.generate import Compiled
        from recipes.evaluate import arch_scores, evaluate
        from recipes.io.load import load_model

        if not self._configured:
            if ms.get_context("device_target") != "CPU" and not os.environ.get("ASCEND_HOME_PATH"):
                ms.set_device("CPU")
            self._configured = True
        previous_mode = ms.get_context("mode")
        ms.set_context(mode=ms.GRAPH_MODE)  # compiled generation; the caller's mode is restored below
        try:
            t0 = time.perf_counter()
            # score on the prompts of eval.data_from, whatever this run trained on (a pretrain
            # checkpoint is evaluated in the same chat format as the SFT one)
            run = load_model(run_dir, log=self.log)
            if run.spec.evaluate is not None:        # the arch's own metric (MindVL) replaces generation
                result = arch_scores(run, "val", self.limit, self.data)
                result["chat_val_loss"] = _dataset_loss(run.model, run.spec.build_dataset(self.data, "val"),
                                                        run.model.BATCH_KEYS, self.batch_size, None)
            else:
                result = evaluate(dataclasses.replace(run, model=Compiled(run.model)), "val", self.limit,
                                  batch_size=64, data=self.data)
                result["chat_val_loss"] = _val_loss(run.model, self.data)
            result["eval_seconds"] = time.perf_counter() - t0
        finally:
            ms.set_context(mode=previous_mode)
        return self._save(result, out_path)

    @staticmethod
    def _save(result: dict, out_path: str) -> dict:
        with open(out_path + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(out_path + ".tmp", out_path)
        return result


def _val_loss(model, data_cfg, batch_size: int = 16, num_batches: int = 8) -> float:
    """Token-mean loss of `model` on the first batches of `data_cfg`'s validation rows."""
    from recipes.data import BATCH_KEYS, build_dataset

    return _dataset_loss(model, build_dataset(data_cfg, "val"), BATCH_KEYS, batch_size, num_batches)


def _dataset_loss(model, dataset, batch_keys, batch_size: int, num_batches: int | None) -> float:
    """Token-mean lm loss of `model.loss(*batch[batch_keys])` over `dataset.eval_batches`."""
    import mindspore as ms
    from mindspore import Tensor

    def lm_loss(*args):
        _, metrics = model.loss(*args)
        return metrics[0]

    step = ms.jit(lm_loss)
    total = count = 0.0
    for batch in dataset.eval_batches(batch_size, num_batches):
        targets = float(batch["loss_mask"].sum())
        if targets:
            total += targets * float(step(*(Tensor(batch[k]) for k in batch_keys)).asnumpy())
            count += targets
    return total / max(count, 1.0)


def run_pipeline(spec_path: str, root: str = "runs", overrides: list[str] = (), limit: int | None = None,
                 log=print) -> list[dict]:
    """Run (or resume) every stage of the spec; return the table rows (one dict per stage)."""
    spec = load_spec(spec_path)
    os.makedirs(root, exist_ok=True)
    outputs: dict[str, str] = {}
    rows: list[dict] = []
    evaluator = Evaluator(spec, limit, log) if any(s.evaluate for s in spec.stages) else None
    py = sys.executable
    for stage in spec.stages:
        t0 = time.perf_counter()
        row: dict = {"stage": stage.name, "type": stage.type}
        if stage.type == "train":
            sets = [f"run.root={root}", *stage.overrides, *overrides]
            if stage.init_from:
                sets.append(f"init_from={outputs[stage.init_from]}")
            run_name, steps = _run_name(stage.recipe, sets)
            out = os.path.join(root, run_name)
            done = _checkpoint_step(out)
            if done >= steps:
                row["status"] = "skipped (complete)"
            else:
                cmd = [py, "-m", "recipes.run", stage.recipe] + [a for s in sets for a in ("--set", s)]
                if done > 0:
                    cmd.append("--resume")
                _subprocess(cmd, log)
                row["status"] = "resumed" if done > 0 else "ran"
            row.update(_train_metrics(out))
        elif stage.type == "search":
            out = outputs[stage.source]            # in place: the searched run gets the processor
            record = _search_record(out)
            if record is not None:
                row["status"] = "skipped (complete)"
            else:
                _subprocess([py, "-m", "recipes.evaluate", out, "--resolution-search", "--data-from",
                             spec.eval_data_from, *stage.args], log)
                record = _search_record(out)
                row["status"] = "ran"
            if record is not None:
                row["resolution"] = {"chosen_max_pixels": record["chosen_max_pixels"], "scores": record["scores"]}
        else:
            out = os.path.join(root, stage.output)
            if os.path.isfile(os.path.join(out, DONE_MARKER)):
                row["status"] = "skipped (complete)"
            else:
                names = {"root": root, **outputs}
                args = [a.format(**names) for a in stage.args]
                src = outputs[stage.source]
                if stage.type == "average":
                    cmd = [py, "-m", "recipes.average", "--out", out, "--overwrite"]
                    names_inputs = any(a in stage.args for a in ("--run", "--base", "--spec")) or any(
                        "{" in a for a in stage.args)  # the args say what to average
                    if not names_inputs:
                        cmd += ["--run", src]
                else:
                    cmd = [py, "-m", "recipes.export", src, "--out", out, "--overwrite"]
                _subprocess(cmd + args, log)
                with open(os.path.join(out, DONE_MARKER), "w") as f:
                    json.dump({"stage": stage.name, "command": cmd + args}, f)
                row["status"] = "ran"
            if stage.type == "average":
                row["steps"] = _checkpoint_step(out)
        outputs[stage.name] = out
        row["output"] = out
        row["wall_s"] = time.perf_counter() - t0
        if stage.type != "search":     # a search stage's directory is its source's: keep that stage's record
            _record_wall(out, stage, row)  # before the evaluation: a failed evaluation keeps the stage's time
        if stage.evaluate and evaluator is not None:
            t1 = time.perf_counter()
            result = evaluator(out, os.path.join(out, "pipeline_eval.json"))
            row["chat_val_loss"] = result["chat_val_loss"]
            row["exact_match"] = result["accuracy"]
            row["eval_n"] = result["num_examples"]
            row["per_task"] = {t: r["accuracy"] for t, r in result["per_task"].items()}
            row["eval_s"] = time.perf_counter() - t1
        rows.append(row)
        log(f"[pipeline] {stage.name}: {row['status']} ({row['wall_s']:.0f} s)")
    summary = os.path.join(root, f"{spec.name}_pipeline.json")
    with open(summary, "w") as f:
        json.dump({"spec": spec_path, "rows": rows}, f, indent=1)
    return rows


def _search_record(run_dir: str) -> dict | None:
    """The resolution-search record of run_dir/preprocessor_config.json (written by recipes.evaluate), if any."""
    path = os.path.join(run_dir, "preprocessor_config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return (json.load(f).get("extra") or {}).get("resolution_search")


def _record_wall(out: str, stage: Stage, row: dict) -> None:
    """Keep the wall time of the run that produced a stage, so a resumed pipeline reports it too."""
    path = os.path.join(out, "pipeline_stage.json")
    if row["status"].startswith("skipped") and os.path.isfile(path):
        with open(path) as f:
            row["wall_s_first_run"] = json.load(f).get("wall_s")
        return
    if os.path.isdir(out):
        with open(path, "w") as f:
            json.dump({"stage": stage.name, "wall_s": row["wall_s"]}, f)


def format_table(rows: list[dict]) -> str:
    def num(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    head = f"{'stage':<12} {'type':<8} {'steps':>6} {'train loss':>10} {'val loss':>9} {'chat val':>9} " \
           f"{'exact match':>11} {'wall s':>7}  status"
    lines = [head, "-" * len(head)]
    for r in rows:
        wall = r.get("wall_s_first_run", r["wall_s"]) if r["status"].startswith("skipped") else r["wall_s"]
        wall += r.get("eval_s", 0.0) if not r["status"].startswith("skipped") else 0.0
        em = f"{r['exact_match']:.3f}" if "exact_match" in r else "-"
        lines.append(f"{r['stage']:<12} {r['type']:<8} {num(r.get('steps'), 'd'):>6} "
                     f"{num(r.get('train_loss'), '.3f'):>10} {num(r.get('val_loss'), '.3f'):>9} "
                     f"{num(r.get('chat_val_loss'), '.3f'):>9} {em:>11} {num(wall, '.0f'):>7}  {r['status']}")
    return "\n".join(lines)


def format_task_table(rows: list[dict]) -> str:
    """Exact match per task of the evaluated stages ("" when none was evaluated)."""
    scored = [r for r in rows if r.get("per_task")]
    if not scored:
        return ""
    tasks = sorted({t for r in scored for t in r["per_task"]})
    width = max(8, *(len(t) for t in tasks))
    head = f"{'stage':<12} " + " ".join(f"{t:>{width}}" for t in tasks) + f" {'overall':>{width}} {'n':>5}"
    lines = ["exact match per task", head, "-" * len(head)]
    for r in scored:
        cells = [format(r["per_task"][t], ".3f") if t in r["per_task"] else "-" for t in tasks]
        lines.append(f"{r['stage']:<12} " + " ".join(f"{c:>{width}}" for c in cells)
                     + f" {r['exact_match']:>{width}.3f} {r.get('eval_n', 0):>5}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m recipes.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="pipeline YAML, e.g. recipes/pangu_pro_moe/pipeline.yaml")
    parser.add_argument("--root", default="runs", help="parent directory of every stage's run directory")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key in every train stage (repeatable)")
    parser.add_argument("--limit", type=int, default=None, help="held-out prompts scored per evaluation")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from recipes.cli import run_command
    from recipes.run import split_overrides

    args = parse_args(argv)
    start = time.perf_counter()

    def body():
        rows = run_pipeline(args.spec, args.root, split_overrides(args.overrides), args.limit)
        print(format_table(rows))
        tasks = format_task_table(rows)
        if tasks:
            print("\n" + tasks)
        for row in rows:
            if "resolution" in row:
                scores = ", ".join(f"{b} px {a:.3f}" for b, a in sorted(row["resolution"]["scores"].items(),
                                                                             key=lambda kv: int(kv[0])))
                print(f"\nresolution search ({row['stage']}): chosen {row['resolution']['chosen_max_pixels']} px "
                      f"per image; {scores}")
        print(f"pipeline {args.spec}: {time.perf_counter() - start:.0f} s; summary in "
              f"{os.path.join(args.root, load_spec(args.spec).name + '_pipeline.json')}")

    return run_command(body, args.debug, also=(RuntimeError,))   # RuntimeError: a stage failed


if __name__ == "__main__":
    sys.exit(main())
