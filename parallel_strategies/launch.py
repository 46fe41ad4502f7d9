"""`msrun` commands for a strategy: one per node (or one per hostfile line), printed before running."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from typing import Optional

from .strategy import Strategy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class NodeCommand:
    node_rank: int
    host: Optional[str]       # None = run here
    argv: list                # the msrun argv (without venv activation)
    shell: str                # full line: cd + activate venv + msrun (+ ssh for remote hosts)


# a host name (RFC 1123 labels), an IPv4 or IPv6 address, optionally preceded by `user@` (ssh's syntax)
_HOST = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9_.-]*@)?(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|[0-9A-Fa-f:]+:[0-9A-Fa-f:.]*)$")


def read_hostfile(path: str) -> list[str]:
    """One host per line (`host` or `host slots=N`); '#' comments and blank lines ignored. Every host must
    be a host name or address (it goes on an ssh command line)."""
    hosts = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"hostfile: cannot read {path} ({getattr(err, 'strerror', None) or err}); "
                         "give a file with one host per line") from None
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if line:
            host = line.split()[0]
            if len(host) > 253 or not _HOST.match(host):
                raise ValueError(f"hostfile: {path}:{number}: {host[:80]!r} is not a host name or address; "
                                 "write one host per line (`host` or `host slots=N`)")
            hosts.append(host)
    return hosts


def worker_argv(recipe: str, strategy_path: str, extra_sets: tuple = (), resume: bool = False,
                micro_batch_size: Optional[int] = None) -> list:
    """What each worker runs. msrun starts `python <args>` with the PATH it inherits (the venv's). The
    strategy's micro_batch_size (rows per data-parallel rank) becomes the recipe's; an explicit
    `--set train.micro_batch_size=` in extra_sets comes later and wins (the trainer then refuses a mismatch)."""
    argv = ["python", "-m", "recipes.run", recipe, "--set", f"parallel.strategy={strategy_path}"]
    if micro_batch_size is not None:
        argv += ["--set", f"train.micro_batch_size={micro_batch_size}"]
    for s in extra_sets:
        argv += ["--set", s]
    return argv + (["--resume"] if resume else [])


def msrun_commands(st: Strategy, recipe: str, *, master_addr: Optional[str] = None, master_port: int = 8118,
                   log_dir: Optional[str] = None, node_rank: Optional[int] = None,
                   hostfile: Optional[str] = None, venv: Optional[str] = None, join: bool = True,
                   sim_level: Optional[int] = None, extra_sets: tuple = (), resume: bool = False,
                   repo: str = REPO) -> list[NodeCommand]:
    """msrun command per node. `node_rank` picks one node (run it on that node); `hostfile` names them."""
    nodes, dpn = st.cluster.nodes, st.cluster.devices_per_node
    hosts = read_hostfile(hostfile) if hostfile else None
    if hosts is not None and len(hosts) != nodes:
        raise ValueError(f"hostfile: {len(hosts)} hosts but the strategy's cluster has {nodes} nodes; "
                         "list one host per node")
    master = master_addr or (hosts[0] if hosts else "127.0.0.1")
    venv = venv or os.path.join(repo, ".venv")
    log_dir = log_dir or os.path.join("runs", "msrun", st.name)
    strategy_path = st.path or st.name
    ranks = [node_rank] if node_rank is not None else range(nodes)
    out = []
    for r in ranks:
        if not 0 <= r < nodes:
            raise ValueError(f"node_rank: {r} outside 0..{nodes - 1}")
        argv = ["msrun", f"--worker_num={st.world_size}", f"--local_worker_num={dpn}",
                f"--master_addr={master}", f"--master_port={master_port}", f"--node_rank={r}",
                f"--log_dir={log_dir}", f"--join={join}"]
        if sim_level is not None:
            argv.append(f"--sim_level={sim_level}")
        argv += worker_argv(recipe, strategy_path, extra_sets, resume, st.parallel_config.micro_batch_size)
        line = f"cd {shlex.quote(repo)} && . {shlex.quote(os.path.join(venv, 'bin', 'activate'))} && " \
               + " ".join(shlex.quote(a) for a in argv)
        host = hosts[r] if hosts else None
        if host is not None:
            line = f"ssh {shlex.quote(host)} {shlex.quote(line)}"
        out.append(NodeCommand(r, host, argv, line))
    return out


def run(cmds: list[NodeCommand], print_fn=print) -> int:
    """Print every command, then start them (remote ones over ssh) and wait; returns the worst exit code.
    More than one node's msrun on this machine is refused: a multi-node strategy runs with a hostfile (one
    ssh per node) or one --node-rank per machine."""
    local = [c for c in cmds if c.host is None]
    if len(local) > 1:
        raise ValueError(f"launch: the strategy has {len(cmds)} nodes and neither --hostfile nor --node-rank was "
                         f"given, so all {len(local)} nodes' msrun would start on this machine; pass --hostfile "
                         "FILE (one host per node) or run --node-rank R on each node (--dry-run prints them)")
    for c in cmds:
        print_fn(c.shell)
    if not os.path.exists(os.path.join(REPO, "recipes", "run.py")):
        raise SystemExit("launch: recipes/run.py (the trainer) does not exist yet; the command above is what "
                         "will run. Use --dry-run to only print it.")
    procs = [subprocess.Popen(["bash", "-c", c.shell]) for c in cmds]
    return max(p.wait() for p in procs)
