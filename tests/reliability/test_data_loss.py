"""The five data-loss cases of issue 22 are impossible: each is tried and must stop with exit status 2 and
one line on stderr, with every file of the run / inputs / previous output unchanged (sha256 before and after).

  lock       a run directory is owned by one process (RUN/.lock, flock + pid/host); a second run, export,
             average or evaluate into it stops naming the owner; a lock left by a dead process is taken over
  inputs     no tool writes into its own input: --out equal to, inside or containing an input is refused
             before anything is read or deleted (export, average, import_hf, merge_ranks)
  foreign    run.root/run.name at an existing non-empty directory that is not a run is refused
  staged     average --overwrite whose write fails leaves the previous output as it was (no partial dir)
  launch     a multi-node strategy without --hostfile / --node-rank is refused (no local msrun per node);
             hostfile entries must be host names; a missing hostfile is one line
"""

import hashlib
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import yaml

from recipes.io import checkpoint as ck
from recipes.io import rundir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = "recipes/pangu_pro_moe/pretrain_tiny.yaml"
SHAPES = {"model.embed_tokens.weight": (11, 6), "model.norm.weight": (6,)}


def tree_hashes(*roots) -> dict:
    """Every file under the roots -> sha256 (the lock file itself excluded: its owner line changes)."""
    out = {}
    for root in roots:
        for base, _, files in os.walk(root):
            for name in files:
                if name == rundir.LOCK_FILE:
                    continue
                path = os.path.join(base, name)
                with open(path, "rb") as f:
                    out[path] = hashlib.sha256(f.read()).hexdigest()
    return out


def make_run(root, name="pre", steps=(10, 20)):
    run = os.path.join(str(root), name)
    for step in steps:
        rng = np.random.default_rng(step)
        ck.save(os.path.join(run, "checkpoints"), step,
                {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}, None, {"step": step},
                keep_last=100)
    with open(os.path.join(run, "config.yaml"), "w") as f:
        yaml.safe_dump({"run": {"root": str(root), "name": name}, "model": {"arch": "pangu_pro_moe"}}, f)
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        f.write('{"step": 1, "loss": 5.0}\n')
    return run


def one_error_line(capsys_or_text) -> str:
    text = capsys_or_text if isinstance(capsys_or_text, str) else capsys_or_text.readouterr().err
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in text, text
    return lines[0]


@pytest.fixture
def holder(tmp_path):
    """Start another process that owns a run directory's lock; yields (start(run_dir) -> Popen)."""
    procs = []

    def start(run_dir):
        code = ("import sys, time; from recipes.io import rundir; lock = rundir.lock_run(sys.argv[1]); "
                "print('locked', flush=True); time.sleep(120)")
        p = subprocess.Popen([sys.executable, "-c", code, run_dir], cwd=REPO, stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "locked"
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


# ------------------------------------------------------------------------------------------------ lock
def test_lock_names_the_live_owner_and_a_dead_owners_lock_is_taken_over(tmp_path, holder):
    run = make_run(tmp_path)
    p = holder(run)
    with pytest.raises(ValueError, match=rf"run.name: {run} is in use by pid {p.pid} on .*; wait for it"):
        rundir.lock_run(run)
    with pytest.raises(ValueError, match=rf"--out: {run} is in use by pid {p.pid}"):
        rundir.check_unlocked(run)
    p.send_signal(signal.SIGKILL)
    p.wait()
    lock = rundir.lock_run(run)           # stale: the OS dropped the dead process's flock
    assert lock.previous_owner.startswith(f"pid {p.pid} on ")
    assert rundir.lock_run(run) is not None   # the same process may re-enter its own lock
    with open(os.path.join(run, rundir.LOCK_FILE)) as f:
        assert f'"pid": {os.getpid()}' in f.read()
    rundir.check_unlocked(run)   # our own lock does not stop our own tools


def test_lock_released_when_closed(tmp_path):
    run = str(tmp_path / "r")
    lock = rundir.lock_run(run)
    lock.close()
    code = "import sys; from recipes.io import rundir; rundir.lock_run(sys.argv[1]); print('ok')"
    proc = subprocess.run([sys.executable, "-c", code, run], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_second_run_with_the_same_run_name_stops_naming_the_owner(tmp_path, holder):
    run = make_run(tmp_path, "busy")
    before = tree_hashes(run)
    p = holder(run)
    proc = subprocess.run([sys.executable, "-m", "recipes.run", TINY, "--resume", "--set", f"run.root={tmp_path}",
                           "--set", "run.name=busy"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "GLOG_v": "3"})
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert line.startswith(f"error: run.name: {run} is in use by pid {p.pid} on "), line
    assert tree_hashes(run) == before


def test_export_average_evaluate_into_a_locked_run_stop(tmp_path, holder, capsys):
    from recipes import average, evaluate, export

    src = make_run(tmp_path, "src")
    busy = make_run(tmp_path, "busy")
    before = tree_hashes(src, busy)
    p = holder(busy)
    assert export.main([src, "--out", busy, "--overwrite"]) == 2
    assert f"--out: {busy} is in use by pid {p.pid}" in one_error_line(capsys)
    assert average.main([os.path.join(src, "checkpoints", ck.step_dir_name(10)),
                         os.path.join(src, "checkpoints", ck.step_dir_name(20)), "--out", busy, "--overwrite"]) == 2
    assert f"--out: {busy} is in use by pid {p.pid}" in one_error_line(capsys)
    for path in (busy, os.path.join(busy, "checkpoints", ck.step_dir_name(20))):
        assert evaluate.main([path]) == 2
        assert f"eval: {busy} is in use by pid {p.pid}" in one_error_line(capsys)
    assert tree_hashes(src, busy) == before


# ---------------------------------------------------------------------------------- outputs vs inputs
def test_export_onto_its_own_run_is_refused_before_anything_is_deleted(tmp_path, capsys):
    from recipes import export

    run = make_run(tmp_path)
    before = tree_hashes(run)
    step = os.path.join(run, "checkpoints", ck.step_dir_name(20))
    for out, path, relation in ((run, run, "is"), (os.path.join(run, "hf"), run, "is inside"),
                                (str(tmp_path), run, "contains"), (run, step, "contains")):
        assert export.main([path, "--out", out, "--overwrite"]) == 2
        assert one_error_line(capsys) == (f"error: --out: {out} {relation} the input {path}; write to a "
                                          "directory outside the inputs")
        assert tree_hashes(run) == before


def test_average_import_merge_refuse_their_inputs_as_output(tmp_path, capsys):
    from recipes import average, import_hf, merge_ranks

    run = make_run(tmp_path)
    before = tree_hashes(run)
    assert average.main(["--run", run, "--last", "2", "--out", run, "--overwrite"]) == 2
    assert one_error_line(capsys).startswith(f"error: --out: {run} ")
    step = os.path.join(run, "checkpoints", ck.step_dir_name(20))
    assert average.main([step, "--out", os.path.join(step, "avg"), "--overwrite"]) == 2
    assert "is inside the input" in one_error_line(capsys)
    assert merge_ranks.main([step, "--out", run, "--overwrite"]) == 2
    assert one_error_line(capsys) == f"error: --out: {run} contains the input {step}; write to a directory outside the inputs"
    assert import_hf.main([run, "--out", run, "--overwrite"]) == 2
    assert one_error_line(capsys) == f"error: --out: {run} is the input {run}; write to a directory outside the inputs"
    assert tree_hashes(run) == before


# ------------------------------------------------------------------------------------ foreign directory
def test_run_into_an_existing_non_run_directory_is_refused(tmp_path, capsys):
    from recipes import run as run_cli

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "config.yml").write_text("mine\n")
    (foreign / "metrics.jsonl").write_text("my notes\n")
    before = tree_hashes(str(foreign))
    assert run_cli.main([TINY, "--set", f"run.root={tmp_path}", "--set", "run.name=photos"]) == 2
    assert one_error_line(capsys) == (
        f"error: run.name: {foreign} exists, is not empty and is not a run directory (no config.yaml or "
        "checkpoints/); choose another run.name or point run.root/run.name at an empty directory")
    assert tree_hashes(str(foreign)) == before and sorted(os.listdir(foreign)) == ["config.yml", "metrics.jsonl"]
    rundir.check_not_foreign(str(tmp_path / "new"))     # a new or empty directory is fine
    (tmp_path / "empty").mkdir()
    rundir.check_not_foreign(str(tmp_path / "empty"))


# ---------------------------------------------------------------------------------- staged overwrite
def test_average_overwrite_that_fails_keeps_the_previous_output(tmp_path, monkeypatch, capsys):
    from recipes import average

    run = make_run(tmp_path)
    out = str(tmp_path / "avg")
    assert average.main(["--run", run, "--last", "2", "--out", out]) == 0
    capsys.readouterr()
    before = tree_hashes(run, out)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", os.path.join(args[0], "model.safetensors"))

    monkeypatch.setattr(ck, "save", disk_full)
    assert average.main(["--run", run, "--last", "1", "--out", out, "--overwrite"]) == 2
    assert "No space left on device" in one_error_line(capsys)
    assert tree_hashes(run, out) == before
    assert sorted(os.listdir(tmp_path)) == ["avg", "pre"]   # no staging directory left behind
    monkeypatch.undo()
    assert average.main(["--run", run, "--last", "1", "--out", out, "--overwrite"]) == 0   # success swaps it in
    got = ck.verify(ck.latest_valid(os.path.join(out, "checkpoints")).path)
    assert got["averaged"]["sources"][0]["step"] == 20 and len(got["averaged"]["sources"]) == 1
    with open(os.path.join(out, "config.yaml")) as f:
        assert yaml.safe_load(f)["run"] == {"root": str(tmp_path), "name": "avg"}


# ---------------------------------------------------------------------------------------------- launch
def test_multi_node_launch_without_hostfile_or_node_rank_is_refused(tmp_path, monkeypatch, capsys):
    from parallel_strategies.__main__ import main

    def no_start(*a, **k):
        raise AssertionError("launch started a process")

    monkeypatch.setattr(subprocess, "Popen", no_start)
    strategy = "pangu_pro_moe_4k_baseline"
    assert main(["launch", "--recipe", TINY, "--strategy", strategy]) == 2
    line = one_error_line(capsys)
    assert line.startswith("error: launch: the strategy has ") and "pass --hostfile FILE" in line
    assert "neither --hostfile nor --node-rank" in line
    assert main(["launch", "--recipe", TINY, "--strategy", strategy, "--dry-run"]) == 0   # printing is fine
    capsys.readouterr()
    missing = str(tmp_path / "no_hosts")
    assert main(["launch", "--recipe", TINY, "--strategy", strategy, "--hostfile", missing]) == 2
    assert one_error_line(capsys).startswith(f"error: hostfile: cannot read {missing} (No such file or directory)")
    bad = tmp_path / "hosts"
    bad.write_text("node0 slots=8\n-oProxyCommand=touch${IFS}x\n")
    assert main(["launch", "--recipe", TINY, "--strategy", strategy, "--hostfile", str(bad)]) == 2
    assert one_error_line(capsys) == (f"error: hostfile: {bad}:2: '-oProxyCommand=touch${{IFS}}x' is not a host "
                                      "name or address; write one host per line (`host` or `host slots=N`)")
    from parallel_strategies.launch import read_hostfile

    bad.write_text("node-1.cluster slots=8\nroot@10.0.0.2\nfe80::1\n# c\n")
    assert read_hostfile(str(bad)) == ["node-1.cluster", "root@10.0.0.2", "fe80::1"]


def test_merge_ranks_overwrite_that_fails_keeps_the_previous_output(tmp_path, monkeypatch, capsys):
    from recipes import merge_ranks

    ranks = str(tmp_path / "ranks")
    full = np.arange(12, dtype=np.float32).reshape(4, 3)
    for r in range(2):
        merge_ranks.write_rank(ranks, r, 2, {"w": merge_ranks.shard(full, 2, r)[0], "b": np.ones(3, np.float32)},
                               {"w": {"shape": [4, 3], "offset": merge_ranks.shard(full, 2, r)[1]}})
    out = str(tmp_path / "merged")
    assert merge_ranks.main([ranks, "--out", out]) == 0
    capsys.readouterr()
    before = tree_hashes(ranks, out)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", os.path.join(args[0], "model.safetensors"))

    monkeypatch.setattr(ck, "save", disk_full)
    assert merge_ranks.main([ranks, "--out", out, "--overwrite"]) == 2
    assert "No space left on device" in one_error_line(capsys)
    assert tree_hashes(ranks, out) == before and sorted(os.listdir(tmp_path)) == ["merged", "ranks"]
    monkeypatch.undo()
    assert merge_ranks.main([ranks, "--out", out, "--overwrite"]) == 0
    np.testing.assert_array_equal(ck.load_tensors(ck.latest_valid(os.path.join(out, "checkpoints")).path,
                                                  ck.MODEL_FILE)["w"], full)
