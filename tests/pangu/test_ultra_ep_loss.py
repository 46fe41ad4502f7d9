"""EP-group balance loss under a real 2-worker msrun data-parallel job on CPU.

Each worker computes the aux loss with aux_loss_scope="ep_group" on its half of a batch; the
AllReduce-aggregated f_i, p_i must give exactly the single-process loss of the concatenated batch
(and differ from the per-worker micro-batch losses, so the test cannot pass by accident).
"""
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ep_group_loss_equals_concatenated_batch_loss(tmp_path):
    bin_dir = os.path.dirname(sys.executable)
    msrun = shutil.which("msrun", path=bin_dir) or shutil.which("msrun")
    if msrun is None:
        pytest.skip("msrun not installed")
    env = dict(os.environ)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")   # msrun workers run `python` on PATH
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("GLOG_v", "3")
    cmd = [msrun, "--worker_num=2", "--local_worker_num=2", f"--master_port={_free_port()}",
           f"--log_dir={tmp_path / 'logs'}", "--join=True",
           "python", os.path.join(HERE, "ultra_ep_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    logs = ""
    for name in ("worker_0.log", "worker_1.log"):
        path = tmp_path / "logs" / name
        if path.exists():
            logs += path.read_text()[-3000:]
    assert proc.returncode == 0, f"msrun failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}\n{logs}"
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    ref = json.loads((tmp_path / "reference.json").read_text())
    assert all(r["world"] == 2 for r in ranks)
    for r in ranks:
        assert r["ep_group_aux"] == pytest.approx(ref["concat_aux"], rel=1e-6, abs=1e-9)
        assert r["global_aux"] == pytest.approx(ref["concat_aux"], rel=1e-6, abs=1e-9)
    assert ref["equal"]
    # the per-worker (micro-batch) losses differ from the group loss, so the AllReduce mattered
    local_mean = (ranks[0]["local_aux"] + ranks[1]["local_aux"]) / 2
    assert abs(ranks[0]["local_aux"] - ranks[1]["local_aux"]) > 1e-6
    assert abs(local_mean - ref["concat_aux"]) > 1e-7
