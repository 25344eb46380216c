"""A real Ray head on loopback for the submission tests, owned by this module and stopped by pid.

`ray start --head --block` runs in the foreground as our child and supervises the node's processes
(GCS, raylet, dashboard with the job server, agents). Stopping it: SIGTERM to that process, then any
process still alive whose command line names our own temp dir (only this head's processes do) or
that descends from one. Never `ray stop`: it would kill the other Ray clusters on the machine.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import secrets

import pytest

from tests.conftest import free_port

VENV_BIN = pathlib.Path(sys.executable).parent


def _pids_of(marker: str) -> set[int]:
    """Processes whose command line contains `marker`, and their descendants."""
    parents: dict[int, int] = {}
    hits: set[int] = set()
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents[pid] = ppid
        if marker in cmdline and pid != os.getpid():
            hits.add(pid)
    changed = True
    while changed:  # add descendants (job drivers, vLLM engine processes)
        changed = False
        for pid, ppid in parents.items():
            if ppid in hits and pid not in hits and pid != os.getpid():
                hits.add(pid)
                changed = True
    return hits


def _kill(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class HeadStartError(RuntimeError):
    pass


class RayHead:
    def __init__(self) -> None:
        # Short path: Ray's unix sockets live under the temp dir and have a ~107 character limit.
        self.temp_dir = tempfile.mkdtemp(prefix="g4uray-", dir="/tmp")
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.log = pathlib.Path(self.temp_dir) / "ray-start.log"
        # Ray 2.60 turns on token authentication for new clusters. This head gets its own token
        # (not the machine-wide ~/.ray/auth_token); clients present it as a Bearer header.
        self.token = secrets.token_hex(32)
        self.token_file = pathlib.Path(self.temp_dir) / "auth_token"
        self.token_file.write_text(self.token)
        self.token_file.chmod(0o600)
        self.proc: subprocess.Popen | None = None

    def start(self, num_cpus: int) -> None:
        env = dict(os.environ)
        # The job's `python` and every worker must be the project's venv interpreter.
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN_PATH"] = str(self.token_file)
        env.pop("RAY_AUTH_TOKEN", None)
        ports = {
            "--port": self.gcs_port,
            "--dashboard-port": self.dashboard_port,
            "--ray-client-server-port": free_port(),
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--runtime-env-agent-port": free_port(),
            "--metrics-export-port": free_port(),
        }
        cmd = [
            str(VENV_BIN / "ray"), "start", "--head", "--block",
            "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
            f"--temp-dir={self.temp_dir}", f"--num-cpus={num_cpus}", "--num-gpus=0", "--disable-usage-stats",
            *(f"{flag}={port}" for flag, port in ports.items()),
        ]
        self.proc = subprocess.Popen(cmd, env=env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        self._wait_ready(timeout=120)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _wait_ready(self, timeout: float) -> None:
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + timeout
        last: Exception | str | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HeadStartError(f"ray start exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            # `ray start` prints this once the node registered (it gives up after 30 s on a busy machine).
            if "Ray runtime started" not in self.log.read_text(errors="replace"):
                last = "node not registered yet"
                time.sleep(1)
                continue
            try:
                JobSubmissionClient(self.address, headers=self.headers).list_jobs()
                return
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
                time.sleep(1)
        raise HeadStartError(f"Ray head at {self.address} not ready after {timeout} s: {last}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        # Anything the supervisor left behind, found by our temp dir in its command line.
        leftover = _pids_of(self.temp_dir)
        _kill(leftover, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while leftover and time.monotonic() < deadline:
            time.sleep(0.5)
            leftover = {p for p in leftover if pathlib.Path(f"/proc/{p}").exists()}
        _kill(leftover, signal.SIGKILL)
        if not os.environ.get("KEEP_TEST_RAY_LOGS"):  # set it to inspect <temp_dir>/session_latest/logs
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_head(attempts: int = 3) -> RayHead:
    """A started head. `ray start` aborts when its raylet takes over 30 s to register, which happens
    on a loaded 2-core machine; such a start is cleaned up and tried again with fresh ports."""
    for attempt in range(1, attempts + 1):
        head = RayHead()
        try:
            head.start(num_cpus=int(os.environ.get("TEST_RAY_CPUS", "4")))
            return head
        except HeadStartError:
            head.stop()
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="package")  # one head for tests/cluster: each start costs 20-60 s here
def ray_head():
    head = start_head()
    try:
        yield head
    finally:
        head.stop()
