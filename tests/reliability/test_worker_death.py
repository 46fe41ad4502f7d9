"""A data-parallel msrun job whose worker is SIGKILLed stops within a bounded time with a clear
message, and `--resume` under msrun continues it from the last checkpoint to the end."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = "recipes/pangu_pro_moe/pretrain_tiny.yaml"
STOP_BOUND_S = 60  # measured: msrun's scheduler ends the job ~33 s after a worker dies (heartbeat timeout)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _msrun(tmp_path, steps, resume, logs):
    bin_dir = os.path.dirname(sys.executable)
    msrun = shutil.which("msrun", path=bin_dir) or shutil.which("msrun")
    if msrun is None:
        pytest.skip("msrun not installed")
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "GLOG_v": "3",
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    port = _free_port()
    cmd = [msrun, "--worker_num=2", "--local_worker_num=2", f"--master_port={port}", f"--log_dir={logs}",
           "--join=True", "python", "-m", "recipes.run", TINY]
    for item in ["data.seq_length=64", "train.micro_batch_size=2", "schedule.warmup_steps=1", "train.eval_batches=1",
                 f"train.steps={steps}", "checkpoint.every=2", f"run.root={tmp_path}", "run.name=dp",
                 "parallel.strategy=tiny_cpu_dp2"]:
        cmd += ["--set", item]
    cmd += ["--resume"] if resume else []
    out = open(os.path.join(tmp_path, f"msrun-{'resume' if resume else 'first'}.out"), "w")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True), port


def _worker_pid(port, rank):
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"recipes.run" in cmdline and (env.get(b"MS_SCHED_PORT") == str(port).encode() and env.get(b"MS_ROLE") == b"MS_WORKER"
                and env.get(b"RANK_ID") == str(rank).encode()):
            return int(pid)
    return None


def _steps(run_dir):
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            return [json.loads(line)["step"] for line in f if line.endswith("\n")]
    except FileNotFoundError:
        return []


def test_dead_worker_stops_job_and_resume_completes(tmp_path):
    steps, run_dir = 30, os.path.join(tmp_path, "dp")
    proc, port = _msrun(tmp_path, steps, resume=False, logs=tmp_path / "logs1")
    try:
        deadline = time.monotonic() + 600
        while len(_steps(run_dir)) < 5 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None and len(_steps(run_dir)) >= 5, "the job did not start training"
        victim = _worker_pid(port, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(timeout=STOP_BOUND_S + 60)
        stopped_after = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(f"msrun stopped {stopped_after:.1f} s after the kill")
    assert proc.returncode != 0
    assert stopped_after < STOP_BOUND_S
    scheduler = (tmp_path / "logs1" / "scheduler.log").read_text()
    assert re.search(r"The node: \d+ is timed out", scheduler)  # msrun's scheduler names the lost node
    assert len(_steps(run_dir)) < steps  # it really stopped early

    proc, _ = _msrun(tmp_path, steps, resume=True, logs=tmp_path / "logs2")
    try:
        assert proc.wait(timeout=900) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "resumed from" in (tmp_path / "logs2" / "worker_0.log").read_text()
    assert _steps(run_dir) == list(range(1, steps + 1))
