"""Bad input is answered with ONE line naming the problem and the fix, exit status 2, no traceback.

One table holds every case: overrides (`--set`), recipe YAML files, missing files, JSONL lines,
checkpoints (`--resume`, `init_from`), strategy files (`python -m parallel_strategies validate`) and
MindVL images. Expected messages are exact; `{tmp}` stands for the test's temporary directory and
`{cwd}` for the working directory. A `(prefix, phrase, ...)` tuple checks a prefix plus key phrases
where the exact text comes from a library (JSON decoder columns, model validation wording).
Most cases run in-process through `recipes.run.main` (config errors stop before any model is built);
`test_subprocess_*` prove through real processes that no traceback reaches stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from recipes.io import checkpoint as ck
from recipes.run import main as run_main

TINY = "recipes/pangu_pro_moe/pretrain_tiny.yaml"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (case id, argv after the program name, expected one-line message without the "error: " prefix)
RUN = [
    # --- overrides: unknown keys, wrong types, impossible values --------------------------------
    ("unknown-key", ["--set", "train.stepz=5"], "train.stepz: unknown key; did you mean train.steps?"),
    ("unknown-top-key", ["--set", "trian.steps=5"], "trian: unknown key; did you mean train or run?"),
    ("unknown-optimizer-key", ["--set", "optimizer.momentum=0.9"],
     "optimizer.momentum: unknown key; valid keys: lr, beta1, beta2, eps, weight_decay, grad_clip, impl"),
    ("unknown-run-key", ["--set", "run.nmae=x"], "run.nmae: unknown key; did you mean run.name?"),
    ("int-not-word", ["--set", "train.steps=fifty"], "train.steps: expected an integer, got 'fifty' (str)"),
    ("int-not-fraction", ["--set", "train.steps=2.5"], "train.steps: expected an integer, got 2.5 (float)"),
    ("int-not-bool", ["--set", "train.seed=true"], "train.seed: expected an integer, got True (bool)"),
    ("float-not-word", ["--set", "optimizer.lr=fast"], "optimizer.lr: expected a number, got 'fast' (str)"),
    ("bool-not-word", ["--set", "checkpoint.save_optimizer=maybe"],
     "checkpoint.save_optimizer: expected true or false, got 'maybe' (str)"),
    ("list-not-scalar", ["--set", "train.freeze=embed"], "train.freeze: expected a list, got 'embed' (str); e.g. train.freeze=[1,2]"),
    ("str-not-list", ["--set", "description=[1,2]"], "description: expected a string, got [1, 2] (list)"),
    ("section-not-mapping", ["--set", "train=5"], "train: expected a mapping, got 5 (int)"),
    ("steps-zero", ["--set", "train.steps=0"], "train.steps: 0 must be >= 1"),
    ("steps-negative", ["--set", "train.steps=-3"], "train.steps: -3 must be >= 1"),
    ("batch-zero", ["--set", "train.micro_batch_size=0"], "train.micro_batch_size: 0 must be >= 1"),
    ("accum-zero", ["--set", "train.grad_accum_steps=0"], "train.grad_accum_steps: 0 must be >= 1"),
    ("log-every-zero", ["--set", "train.log_every=0"], "train.log_every: 0 must be >= 1"),
    ("eval-every-negative", ["--set", "train.eval_every=-1"], "train.eval_every: -1 must be >= 0 (0: only at the end)"),
    ("max-bad-steps-zero", ["--set", "train.max_bad_steps=0"], "train.max_bad_steps: 0 must be >= 1"),
    ("spike-threshold-below-one", ["--set", "train.spike_threshold=0.5"],
     "train.spike_threshold: 0.5 must be > 1 (a ratio to the running mean loss) or 0 to disable"),
    ("dtype-literal", ["--set", "train.dtype=fp16"], "train.dtype: 'fp16' is not one of 'float32', 'bfloat16'; did you mean bfloat16?"),
    ("device-literal", ["--set", "train.device=GPU"], "train.device: 'GPU' is not one of 'auto', 'CPU', 'Ascend'; did you mean CPU?"),
    ("mode-literal", ["--set", "train.mode=eager"], "train.mode: 'eager' is not one of 'graph', 'pynative'"),
    ("bf16-on-cpu", ["--set", "train.dtype=bfloat16", "--set", "train.device=CPU"],
     "train.dtype: bfloat16 matmuls need Ascend (no CPU kernel); use train.dtype=float32 on CPU"),
    ("freeze-bad-regex", ["--set", "train.freeze=['(']"],
     ("train.freeze: '(' is not a valid regular expression (",)),
    ("freeze-no-match", ["--set", "train.freeze=[no_such_param]"],
     "train.freeze: pattern 'no_such_param' matches no parameter; check the parameter names"),
    ("freeze-everything", ["--set", "train.freeze=['.']"], "train.freeze: every parameter is frozen; loosen the patterns"),
    ("lr-zero", ["--set", "optimizer.lr=0"], "optimizer.lr: 0.0 must be a finite number > 0, e.g. 3e-4"),
    ("lr-inf", ["--set", "optimizer.lr=inf"], "optimizer.lr: inf must be a finite number > 0, e.g. 3e-4"),
    ("eval-batches-zero", ["--set", "train.eval_batches=0"], "train.eval_batches: 0 must be >= 1 (validation "
     "batches per evaluation; 0 would report a loss of 0.000)"),
    ("beta1-one", ["--set", "optimizer.beta1=1.0"], "optimizer.beta1: 1.0 must be in [0, 1)"),
    ("beta2-above-one", ["--set", "optimizer.beta2=1.5"], "optimizer.beta2: 1.5 must be in [0, 1)"),
    ("eps-zero", ["--set", "optimizer.eps=0"], "optimizer.eps: 0.0 must be > 0"),
    ("weight-decay-negative", ["--set", "optimizer.weight_decay=-0.1"], "optimizer.weight_decay: -0.1 must be >= 0"),
    ("grad-clip-negative", ["--set", "optimizer.grad_clip=-1"], "optimizer.grad_clip: -1.0 must be >= 0 (0 disables)"),
    ("decay-literal", ["--set", "schedule.decay=cosin"],
     "schedule.decay: 'cosin' is not one of 'cosine', 'linear', 'constant'; did you mean cosine?"),
    ("warmup-negative", ["--set", "schedule.warmup_steps=-1"], "schedule.warmup_steps: -1 must be >= 0"),
    ("warmup-too-long", ["--set", "schedule.warmup_steps=500", "--set", "train.steps=100"],
     "schedule.warmup_steps: 500 must be < train.steps=100; set a shorter warm-up (e.g. schedule.warmup_steps=10) "
     "or schedule.warmup_steps=null to let schedule.warmup_fraction follow train.steps"),
    ("min-lr-above-lr", ["--set", "schedule.min_lr=1.0"], "schedule.min_lr: 1.0 must be between 0 and optimizer.lr=0.003"),
    ("checkpoint-every-negative", ["--set", "checkpoint.every=-1"], "checkpoint.every: -1 must be >= 0 (0: only at the end)"),
    ("keep-last-zero", ["--set", "checkpoint.keep_last=0"], "checkpoint.keep_last: 0 must be >= 1"),
    # --- override syntax ---------------------------------------------------------------------------
    ("set-no-equals", ["--set", "train.steps"], "--set train.steps: expected key=value (e.g. --set train.steps=50)"),
    ("set-empty-key", ["--set", "=5"], "--set =5: empty key; write a dotted key such as train.steps=50"),
    ("set-empty-part", ["--set", "train..steps=5"], "--set train..steps=5: empty key; write a dotted key such as train.steps=50"),
    ("set-into-value", ["--set", "train.steps.x=1"],
     "--set train.steps.x: train.steps is a value, not a section; set train.steps=... directly"),
    # --- output paths stay in the run directory -----------------------------------------------------
    ("run-name-slash", ["--set", "run.name=a/b"], "run.name: 'a/b' must be a plain directory name (no '/'); use run.root for the parent"),
    ("run-name-dotdot", ["--set", "run.name=.."], "run.name: '..' must be a plain directory name (no '/'); use run.root for the parent"),
    ("run-name-escape", ["--set", "run.name=../../etc"],
     "run.name: '../../etc' must be a plain directory name (no '/'); use run.root for the parent"),
    ("run-name-backslash", ["--set", "run.name=a\\b"], "run.name: 'a\\\\b' must be a plain directory name (no '/'); use run.root for the parent"),
    ("run-root-empty", ["--set", "run.root="], "run.root: '' must be a directory path; use e.g. run.root=runs"),
    ("run-root-is-file", ["--set", "run.root={tmp}/a_file"], "run.root: {tmp}/a_file exists and is not a directory; choose another run.root"),
    # --- model: architecture, preset, keys, impossible shapes -------------------------------------
    ("arch-unknown", ["--set", "model.arch=pangu_pro"],
     "model.arch: unknown architecture 'pangu_pro'; did you mean pangu_pro_moe or pangu_ultra_moe?"),
    ("preset-unknown", ["--set", "model.preset=huge"], "model.preset: unknown preset 'huge' for pangu_pro_moe; valid keys: tiny, bench, full"),
    ("model-unknown-key", ["--set", "model.num_expert=8"],
     "model.num_expert: unknown key; did you mean model.num_experts or model.num_experts_per_tok or model.expert_impl?"),
    ("model-wrong-type", ["--set", "model.hidden_size=wide"], "model.hidden_size: expected an integer, got 'wide' (str)"),
    ("experts-not-divisible", ["--set", "model.num_experts=30"], ("model.num_experts: ", "divisible")),
    ("heads-not-divisible", ["--set", "model.num_key_value_heads=3"], ("model.num_key_value_heads: ", "divisible")),
    ("vocab-below-tokenizer", ["--set", "model.vocab_size=10"],
     "model.vocab_size: 10 is smaller than the tokenizer's 112; remove the override or set it >= 112"),
    # --- data ------------------------------------------------------------------------------------------
    ("data-source-unknown", ["--set", "data.source=csv"], "data.source: 'csv' is not one of 'synthetic', 'jsonl', 'sft', 'chat_jsonl', "
     "'megatron', 'mindrecord'"),
    ("data-seq-length", ["--set", "data.seq_length=1"], "data.seq_length: 1 must be >= 2; use the model's sequence length, e.g. 128"),
    ("data-vocab", ["--set", "data.vocab_size=5"], "data.vocab_size: 5 is out of range; use 16..1000000 (e.g. 256)"),
    ("data-task-unknown", ["--set", "data.tasks=[nope]"], ("data.tasks: unknown task 'nope'; choose from ",)),
    ("data-no-documents", ["--set", "data.num_documents=0"], "data.num_documents: 0 must be >= 1; use e.g. 20000"),
    ("jsonl-without-path", ["--set", "data.source=jsonl"],
     'data.path: required when source=\'jsonl\'; set path to a file of {"text": ...} lines'),
    ("jsonl-missing-file", ["--set", "data.source=jsonl", "--set", "data.path={tmp}/nope.jsonl"],
     'data.path={tmp}/nope.jsonl: file not found (cwd {cwd}); set data.path to a JSONL file with one {"text": ...} object per line'),
    ("tokenizer-missing", ["--set", "data.tokenizer_model={tmp}/nope.model"],
     "data.tokenizer_model={tmp}/nope.model: file not found; give a sentencepiece .model file or leave data.tokenizer_model unset to train one"),
    ("jsonl-bad-json", ["--set", "data.source=jsonl", "--set", "data.path={tmp}/bad_json.jsonl"],
     "data.path={tmp}/bad_json.jsonl:2: not valid JSON (Expecting ',' delimiter at column 14); fix the line or set data.skip_bad_lines=true"),
    ("jsonl-no-text-key", ["--set", "data.source=jsonl", "--set", "data.path={tmp}/no_text.jsonl"],
     'data.path={tmp}/no_text.jsonl:3: no "text" key (keys: body); fix the line or set data.skip_bad_lines=true'),
    ("jsonl-text-not-string", ["--set", "data.source=jsonl", "--set", "data.path={tmp}/text_int.jsonl"],
     'data.path={tmp}/text_int.jsonl:1: "text" must be a string, got int; fix the line or set data.skip_bad_lines=true'),
    ("jsonl-not-object", ["--set", "data.source=jsonl", "--set", "data.path={tmp}/array.jsonl"],
     'data.path={tmp}/array.jsonl:2: expected a JSON object like {{"text": ...}}, got list; fix the line or set data.skip_bad_lines=true'),
    ("jsonl-bad-utf8", ["--set", "data.source=jsonl", "--set", "data.path={tmp}/latin1.jsonl"],
     "data.path={tmp}/latin1.jsonl:1: not valid UTF-8 (byte 13); fix the line or set data.skip_bad_lines=true"),
    ("jsonl-skip-all-bad", ["--set", "data.source=jsonl", "--set", "data.path={tmp}/all_bad.jsonl", "--set", "data.skip_bad_lines=true"],
     'data.path={tmp}/all_bad.jsonl: no documents (no line has a non-empty "text"); add lines like {{"text": "..."}} or point data.path at another file'),
    ("jsonl-too-few-for-val", ["--set", "data.source=jsonl", "--set", "data.path={tmp}/two_docs.jsonl"],
     "data.num_val_documents=512: {tmp}/two_docs.jsonl has only 2 documents; set data.num_val_documents to at most 1 (e.g. 0)"),
    ("chat-jsonl-bad-record", ["--set", "data.source=chat_jsonl", "--set", "data.path={tmp}/bad_chat.jsonl"],
     ("data.path={tmp}/bad_chat.jsonl:1: ", "fix the line or set data.skip_bad_lines=true")),
    # --- checkpoints --------------------------------------------------------------------------------------
    ("init-from-missing", ["--set", "init_from={tmp}/nowhere"],
     "init_from: {tmp}/nowhere does not exist; run the previous stage first or fix the path"),
    ("init-from-empty-run", ["--set", "init_from={tmp}/empty_run"],
     "init_from: {tmp}/empty_run holds no valid checkpoint; point it at a run directory or a step_* directory"),
    ("init-from-corrupt", ["--set", "init_from={tmp}/ckpts/corrupt/checkpoints/step_00000004"],
     "{tmp}/ckpts/corrupt/checkpoints/step_00000004/model.safetensors: sha256 mismatch (corrupted); use an earlier checkpoint"),
    ("init-from-truncated", ["--set", "init_from={tmp}/ckpts/truncated/checkpoints/step_00000004"],
     "{tmp}/ckpts/truncated/checkpoints/step_00000004/model.safetensors: truncated or padded (100 bytes, manifest says 184); use an earlier checkpoint"),
    ("init-from-no-manifest", ["--set", "init_from={tmp}/ckpts/no_manifest/checkpoints/step_00000004"],
     "init_from: {tmp}/ckpts/no_manifest/checkpoints/step_00000004 holds no valid checkpoint; point it at a run directory or a step_* directory"),
    ("init-from-other-model", ["--set", "init_from={tmp}/ckpts/alien"],
     ("init_from {tmp}/ckpts/alien/checkpoints/step_00000004: missing ", "unexpected 1 (e.g. alien.weight); "
      "the checkpoint was made for a different model config")),
    ("resume-nothing", ["--set", "run.name=never", "--resume"],
     "--resume: no valid checkpoint under {tmp}/runs/never/checkpoints; start without --resume (or check run.root/run.name)"),
    ("resume-all-corrupt", ["--set", "run.root={tmp}/ckpts", "--set", "run.name=corrupt", "--resume"],
     "--resume: no valid checkpoint under {tmp}/ckpts/corrupt/checkpoints; start without --resume (or check run.root/run.name)"),
    ("resume-other-recipe", ["--set", "run.root={tmp}/ckpts", "--set", "run.name=alien", "--resume"],
     "--resume: the recipe differs from the checkpointed run at data; resume with the same settings "
     "(only train.steps, checkpoint.* and logging may change)"),
    ("existing-run-without-resume", ["--set", "run.root={tmp}/ckpts", "--set", "run.name=alien"],
     "run.name: {tmp}/ckpts/alien already holds a run (checkpoint at step 4); pass --resume to continue it, "
     "or --set run.name=<new name> for a new run"),
]

# Recipe files (written by the `files` fixture) run as the recipe argument.
FILES = [
    ("recipe-missing", "{tmp}/missing.yaml", "{tmp}/missing.yaml: recipe file not found; check the path (recipes live under recipes/<model>/)"),
    ("yaml-syntax", "{tmp}/broken.yaml", ("{tmp}/broken.yaml:3: invalid YAML (", "fix the syntax on that line")),
    ("yaml-list", "{tmp}/list.yaml", "{tmp}/list.yaml: a recipe must be a YAML mapping of sections, got [1, 2] (list)"),
    ("yaml-python-tag", "{tmp}/evil.yaml", ("{tmp}/evil.yaml:1: invalid YAML (", "fix the syntax on that line")),
    ("base-cycle", "{tmp}/cycle_a.yaml", ("{tmp}/cycle_a.yaml: base: inheritance cycle (", "remove one of the base: keys")),
    ("base-missing", "{tmp}/orphan.yaml", "{tmp}/orphan.yaml: base: {tmp}/nowhere.yaml not found; base paths are relative to the recipe file"),
    ("base-not-string", "{tmp}/base_int.yaml", "{tmp}/base_int.yaml: base: expected a file path, got 5 (int)"),
    ("yaml-section-scalar", "{tmp}/section_scalar.yaml", "optimizer: expected a mapping, got 'adam' (str)"),
    ("yaml-model-list", "{tmp}/model_list.yaml", "model: expected a mapping of model keys, got [1] (list)"),
    ("yaml-unknown-in-base", "{tmp}/child_of_bad.yaml", "train.step: unknown key; did you mean train.steps or train.seed?"),
]

# Strategy files through `python -m parallel_strategies validate FILE`.
STRATEGIES = [
    ("strategy-missing", "{tmp}/nope_strategy", ("{tmp}/nope_strategy: no such file; choose one of [",)),
    ("strategy-unknown-key", "{tmp}/s_unknown.yaml", "parallel_config.data_paralel: unknown key; did you mean ['data_parallel', 'model_parallel', 'expert_parallel']?"),
    ("strategy-missing-key", "{tmp}/s_missing.yaml",
     "cluster: missing; every strategy file needs name, model, hardware, cluster, parallel_config"),
    ("strategy-negative", "{tmp}/s_negative.yaml", "parallel_config.model_parallel: expected a non-negative integer, got -2"),
    ("strategy-devices", "{tmp}/s_devices.yaml", ("parallel_config: data_parallel*model_parallel*pipeline_stage*context_parallel = ",)),
    ("strategy-heads", "{tmp}/s_heads.yaml", ("parallel_config.model_parallel: ", "not divisible by 3")),
    ("strategy-recompute", "{tmp}/s_recompute.yaml", ("recompute: 'sometimes' is not a policy; use one of ",)),
]


def _fake_checkpoint(root, name, tensors, state=None):
    ckpt_root = os.path.join(root, name, "checkpoints")
    return ck.save(ckpt_root, 4, tensors, {"adam_step": np.zeros((), np.int32)},
                   state or {"step": 4, "data_position": 64, "seed": 0, "fingerprint": {}}, keep_last=2)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    w = lambda name, text: (tmp / name).write_text(text)
    (tmp / "a_file").write_text("x")
    os.makedirs(tmp / "empty_run")
    w("bad_json.jsonl", '{"text": "ok"}\n{"text": "a" "b"}\n')
    w("no_text.jsonl", '{"text": "ok"}\n\n{"body": "x"}\n')
    w("text_int.jsonl", '{"text": 5}\n')
    w("array.jsonl", '{"text": "ok"}\n[1, 2]\n')
    (tmp / "latin1.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    w("all_bad.jsonl", "not json\n{}\n")
    w("two_docs.jsonl", '{"text": "one document"}\n{"text": "another one"}\n')
    w("bad_chat.jsonl", '{"messages": "hello"}\n')
    w("broken.yaml", "train:\n  steps: 3\n   micro_batch_size: 4\n")
    w("list.yaml", "[1, 2]\n")
    w("evil.yaml", "description: !!python/object/apply:os.system ['echo pwned']\n")
    w("cycle_a.yaml", "base: cycle_b.yaml\n")
    w("cycle_b.yaml", "base: cycle_a.yaml\n")
    w("orphan.yaml", "base: nowhere.yaml\n")
    w("base_int.yaml", "base: 5\n")
    w("section_scalar.yaml", f"base: {os.path.join(REPO, TINY)}\noptimizer: adam\n")
    w("model_list.yaml", "model: [1]\n")
    w("bad_base.yaml", f"base: {os.path.join(REPO, TINY)}\ntrain: {{step: 3}}\n")
    w("child_of_bad.yaml", "base: bad_base.yaml\ndescription: child\n")
    strategy = open(os.path.join(REPO, "parallel_strategies/strategies/tiny_cpu_dp2.yaml")).read()
    w("s_unknown.yaml", strategy.replace("data_parallel: 2", "data_paralel: 2"))
    w("s_missing.yaml", "\n".join(line for line in strategy.splitlines() if not line.startswith("cluster")))
    w("s_negative.yaml", strategy.replace("model_parallel: 1", "model_parallel: -2"))
    w("s_devices.yaml", strategy.replace("data_parallel: 2", "data_parallel: 4"))
    w("s_heads.yaml", strategy.replace("data_parallel: 2", "data_parallel: 1").replace(
        "devices_per_node: 2", "devices_per_node: 3").replace("model_parallel: 1", "model_parallel: 3").replace(
        "hardware: cpu", "hardware: cpu"))
    w("s_recompute.yaml", strategy.replace("recompute: none", "recompute: sometimes"))
    # Checkpoints with valid structure but fake contents: corrupt, truncated, no manifest, alien tensors.
    ckpts = tmp / "ckpts"
    fake = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(4, np.float32)}
    for name in ("corrupt", "truncated", "no_manifest"):
        _fake_checkpoint(str(ckpts), name, fake)
    _fake_checkpoint(str(ckpts), "alien", {"alien.weight": np.zeros(2, np.float32)})
    step = "checkpoints/step_00000004"
    with open(ckpts / "corrupt" / step / ck.MODEL_FILE, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\xff\xff\xff\xff")
    with open(ckpts / "truncated" / step / ck.MODEL_FILE, "r+b") as f:
        f.truncate(100)
    os.remove(ckpts / "no_manifest" / step / ck.MANIFEST_FILE)
    return str(tmp)


def fill(value, tmp):
    return value.replace("{tmp}", tmp).replace("{cwd}", os.getcwd()).replace("{{", "{").replace("}}", "}")


def check_message(err: str, expect, tmp: str) -> None:
    lines = err.splitlines()
    assert "Traceback" not in err, err
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err  # one error line, last (warnings may precede it)
    assert all(line.startswith(("error: ", "warning", "skipped ")) for line in lines), err
    message = errors[0][len("error: "):]
    if isinstance(expect, tuple):
        prefix, *phrases = [fill(e, tmp) for e in expect]
        assert message.startswith(prefix), message
        for phrase in phrases:
            assert phrase in message, message
    else:
        assert message == fill(expect, tmp)


def test_table_size():
    assert len(RUN) + len(FILES) + len(STRATEGIES) + len(IMAGES) >= 50
    ids = [c[0] for c in RUN + FILES + STRATEGIES + IMAGES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", RUN, ids=[c[0] for c in RUN])
def test_run_override_cases(case, files, capsys):
    _, argv, expect = case
    argv = [TINY, "--set", f"run.root={files}/runs", "--set", "train.steps=2", "--set", "schedule.warmup_steps=0",
            *[fill(a, files) for a in argv]]
    assert run_main(argv) == 2
    check_message(capsys.readouterr().err, expect, files)


@pytest.mark.parametrize("case", FILES, ids=[c[0] for c in FILES])
def test_recipe_file_cases(case, files, capsys):
    _, path, expect = case
    assert run_main([fill(path, files), "--set", f"run.root={files}/runs"]) == 2
    check_message(capsys.readouterr().err, expect, files)


@pytest.mark.parametrize("case", STRATEGIES, ids=[c[0] for c in STRATEGIES])
def test_strategy_file_cases(case, files, capsys):
    from parallel_strategies.__main__ import main as strategies_main

    _, path, expect = case
    assert strategies_main(["validate", fill(path, files)]) == 2
    check_message(capsys.readouterr().err, expect, files)


# --- MindVL images: each problem is a one-line ValueError naming the file -------------------------------

def _images(tmp):
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 10, 10)).save(os.path.join(tmp, "ok.png"))
    open(os.path.join(tmp, "empty.png"), "wb").close()
    with open(os.path.join(tmp, "garbage.png"), "wb") as f:
        f.write(b"this is not an image at all")
    data = open(os.path.join(tmp, "ok.png"), "rb").read()
    with open(os.path.join(tmp, "truncated.png"), "wb") as f:
        f.write(data[: len(data) // 2])
    Image.new("RGB", (20, 64)).save(os.path.join(tmp, "small.png"))
    Image.new("RGB", (28 * 201, 28)).save(os.path.join(tmp, "thin.png"))


IMAGES = [
    ("image-missing", "missing.png", "{tmp}/missing.png: image file not found; fix the path in the data file or the image root"),
    ("image-empty", "empty.png", "{tmp}/empty.png: image file is empty (0 bytes); re-download it or drop the sample"),
    ("image-garbage", "garbage.png", "{tmp}/garbage.png: cannot decode image (UnidentifiedImageError); re-encode it as PNG/JPEG or drop the sample"),
    ("image-truncated", "truncated.png", ("{tmp}/truncated.png: cannot decode image (", "re-encode it as PNG/JPEG or drop the sample")),
    ("image-too-small", "small.png", "{tmp}/small.png: image too small (20x64 px); both sides must be >= 28 px — upscale it or drop it from the data"),
    ("image-aspect", "thin.png", "{tmp}/thin.png: aspect ratio 5628x28 exceeds 200; crop it or drop it from the data"),
]


@pytest.mark.parametrize("case", IMAGES, ids=[c[0] for c in IMAGES])
def test_mindvl_image_cases(case, tmp_path):
    processor = pytest.importorskip("mindvl.processor")
    _images(str(tmp_path))
    _, name, expect = case
    with pytest.raises(ValueError) as err:
        processor.ImageProcessor()(os.path.join(str(tmp_path), name))
    check_message("error: " + str(err.value), expect, str(tmp_path))


def test_bad_jsonl_lines_skipped_with_file_and_line(tmp_path, caplog):
    from recipes.data.jsonl import read_jsonl_texts

    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"text": "one"}\nnot json\n{"text": 3}\n\n{"text": "two"}\n\xff\n')
    with caplog.at_level("WARNING"):
        data = read_jsonl_texts(str(path), skip_bad_lines=True)
    assert data.texts == ["one", "two"] and data.skipped_lines == 3
    assert caplog.messages == [
        f"skipped 3 malformed line(s) of {path} (first: data.path={path}:2: not valid JSON (Expecting value at column 1))"
    ]


# --- real processes: one line on stderr, status 2, no traceback; --debug shows it -------------------------

def _cli(args, cwd=REPO):
    env = {**os.environ, "GLOG_v": "3"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, expect", [
    (["recipes.run", TINY, "--set", "train.stepz=5"], "error: train.stepz: unknown key; did you mean train.steps?"),
    (["recipes.run", "no/such/recipe.yaml"],
     "error: no/such/recipe.yaml: recipe file not found; check the path (recipes live under recipes/<model>/)"),
    (["parallel_strategies", "validate", "no_such_strategy"], "error: no_such_strategy: no such file; choose one of ["),
])
def test_subprocess_one_line_no_traceback(args, expect):
    proc = _cli(args)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(expect) and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_subprocess_jsonl_error(files):
    proc = _cli(["recipes.run", TINY, "--set", f"run.root={files}/runs", "--set", "data.source=jsonl",
                 "--set", f"data.path={files}/bad_json.jsonl"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        f"error: data.path={files}/bad_json.jsonl:2: not valid JSON (Expecting ',' delimiter at column 14); "
        "fix the line or set data.skip_bad_lines=true"
    )


def test_debug_flag_shows_traceback():
    proc = _cli(["recipes.run", TINY, "--set", "train.stepz=5", "--debug"])
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError: train.stepz: unknown key" in proc.stderr
