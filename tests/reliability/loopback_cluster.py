"""A multi-node Ray cluster on 127.0.0.1, for node-loss tests.

Each node is one `ray start --block` process (head: `--head --num-cpus=0`, so nothing but the
cluster's control plane runs there; workers: `--address=HEAD`), started in its own session with a
node tag of its own in the environment. Every process of the node inherits the tag (raylet,
agents, workers, and the vLLM engine processes those workers spawn), so `kill_node` can SIGKILL a
whole node at once, as a machine losing power would, and `node_of(pid)` says where a process runs.
All ports are free ports picked here (other engineers' clusters run on the same machine), and
the cluster is stopped by its own tags: never `ray stop`, which stops every Ray on the machine.

Token authentication is on, as Ray 2.60 enables it by default: clients (the job's driver) attach
with `RAY_AUTH_MODE=token` and the token `ray start --head` wrote to ~/.ray/auth_token.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import psutil

from tests.conftest import free_port
from tests.reliability.jobrunner import kill_all, tagged, wait_gone

NODE_TAG_ENV = "RELIABILITY_NODE_TAG"
CLIENT_ENV = {"RAY_AUTH_MODE": "token"}
RAY = str(pathlib.Path(sys.executable).with_name("ray"))


class LoopbackCluster:
    def __init__(self, workdir: pathlib.Path, env: dict[str, str], *, object_store_mib: int = 300,
                 head_env: dict[str, str] | None = None):
        self.workdir = pathlib.Path(workdir)
        self.temp_dir = pathlib.Path(tempfile.mkdtemp(prefix="rl", dir="/tmp"))  # short: socket paths
        self.env = {**env, **CLIENT_ENV}
        self.head_env = head_env or {}
        self.object_store = object_store_mib * 2**20
        self.port = free_port()
        self.nodes: dict[str, subprocess.Popen] = {}
        self.tags: dict[str, str] = {}
        self.killed: set[str] = set()
        self.address = f"127.0.0.1:{self.port}"

    # -- nodes ------------------------------------------------------------------------------------
    def _ports(self) -> list[str]:
        return ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
                "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]

    def _start(self, name: str, args: list[str], extra_env: dict[str, str]) -> None:
        tag = f"{name}-{os.getpid()}-{len(self.nodes)}-{time.time_ns() % 10**8}"
        log = open(self.workdir / f"node-{name}.log", "wb")
        self.nodes[name] = subprocess.Popen(
            [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
             "--object-store-memory", str(self.object_store), *self._ports(), *args],
            env={**self.env, **extra_env, NODE_TAG_ENV: tag}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.tags[name] = tag

    def start_head(self, timeout: float = 120) -> "LoopbackCluster":
        self._start("head", ["--head", "--port", str(self.port), "--num-cpus", "0", "--include-dashboard", "false",
                             "--ray-client-server-port", str(free_port()), "--temp-dir", str(self.temp_dir)],
                    self.head_env)
        self.wait_nodes(1, timeout)
        return self

    def add_node(self, name: str, num_cpus: int, timeout: float = 120) -> None:
        expected = len([n for n in self.nodes if n not in self.killed]) + 1  # killed ones go dead
        self._start(name, ["--address", self.address, "--num-cpus", str(num_cpus),
                           "--resources", json.dumps({f"node_{name}": 1})], {})
        self.wait_nodes(expected, timeout)

    def alive_nodes(self) -> int:
        """Nodes the GCS reports alive (asked from a short-lived client process)."""
        code = ("import ray._raylet as r, sys; c = r.GcsClient(address=sys.argv[1]); "
                "print(sum(1 for n in c.get_all_node_info().values() if n.state == 0))")
        proc = subprocess.run([sys.executable, "-c", code, self.address], env={**os.environ, **self.env},
                              capture_output=True, text=True, timeout=60)
        try:
            return int(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return 0

    def wait_nodes(self, count: int, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.alive_nodes() == count:
                return
            dead = [n for n, p in self.nodes.items() if p.poll() is not None and n not in self.killed]
            if dead:
                raise RuntimeError(f"ray start for {dead} exited: " + (self.workdir / f"node-{dead[0]}.log").read_text()[-3000:])
            time.sleep(1)
        raise TimeoutError(f"the cluster did not reach {count} alive nodes in {timeout:.0f} s")

    def node_of(self, pid: int) -> str | None:
        try:
            tag = psutil.Process(pid).environ().get(NODE_TAG_ENV)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None
        return next((name for name, t in self.tags.items() if t == tag), None)

    def processes(self, name: str) -> list[psutil.Process]:
        return tagged(self.tags[name], NODE_TAG_ENV)

    def kill_node(self, name: str) -> int:
        """SIGKILL every process of the node at once (again for any a dying raylet still started)."""
        self.killed.add(name)
        killed = 0
        for _ in range(5):
            procs = self.processes(name)
            if not procs:
                break
            killed += len(procs)
            kill_all(procs)
            time.sleep(0.2)
        self.nodes[name].wait(timeout=30)
        return killed

    # -- teardown ---------------------------------------------------------------------------------
    def stop(self, grace_s: float = 30) -> list[str]:
        """Stop every node (workers first, SIGTERM then SIGKILL); return what had to be killed."""
        for name in sorted(self.nodes, key=lambda n: n == "head"):
            proc = self.nodes[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.nodes.values():
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass

        def ours():
            return [p for name in self.tags for p in self.processes(name)]

        left, _ = wait_gone(ours, grace_s)
        names = [f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in left if p.is_running()]
        kill_all(left)
        import shutil

        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return names
