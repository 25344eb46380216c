"""Run `python -m jobs.run` as a real driver process with its own local Ray cluster, watch its
process tree (peak memory, the inference actor's pid), kill parts of it, read its outputs.

Each job gets its own Ray temp dir (`RAY_TMPDIR`), so the test owns every process and every Ray log
file of the run: it can SIGKILL an actor or the driver, grep all logs for secrets, and verify that
nothing is left running afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

ENGINE_ACTOR = "vLLMEngineStageUDF"  # the ray.data.llm stage whose actor owns the vLLM engine
BASE_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONUNBUFFERED": "1",
}


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _title(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())[:160]
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


@dataclasses.dataclass
class MemoryPeak:
    total_mib: float = 0.0  # largest sum of RSS over the run's processes at one instant
    process_mib: float = 0.0  # largest single process
    process: str = ""
    decode_worker_mib: float = 0.0  # largest Ray worker that is not the engine actor / engine core
    by_process: dict = dataclasses.field(default_factory=dict)  # process title -> peak RSS (MiB)

    def top(self, n: int = 4) -> dict:
        return {k[:70]: round(v) for k, v in sorted(self.by_process.items(), key=lambda kv: -kv[1])[:n]}


class JobProcess:
    """One driver invocation. `env` adds to a minimal environment (never the test's own)."""

    def __init__(self, args: list[str], env: dict[str, str], workdir: pathlib.Path, name: str):
        self.args = args
        self.workdir = pathlib.Path(workdir)
        self.ray_tmp = pathlib.Path(tempfile.mkdtemp(prefix="rr", dir="/tmp"))  # short: socket paths
        self.log_path = self.workdir / f"{name}.log"
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
                    **BASE_ENV, "RAY_TMPDIR": str(self.ray_tmp), **env}
        self.proc: subprocess.Popen | None = None
        self.peak = MemoryPeak()
        self.pids_seen: set[int] = set()
        self.exit_s: float | None = None
        self._stop = threading.Event()

    def start(self) -> "JobProcess":
        self.proc = subprocess.Popen([sys.executable, "-m", "jobs.run", *self.args], env=self.env,
                                     cwd=str(pathlib.Path(__file__).resolve().parents[2]),
                                     stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._root = psutil.Process(self.proc.pid)
        threading.Thread(target=self._sample, daemon=True).start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            total = 0.0
            for proc in _tree(self._root):
                try:
                    rss = proc.memory_info().rss / 2**20
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                self.pids_seen.add(proc.pid)
                total += rss
                title = _title(proc)
                name = title.split("  ")[0].strip() or title
                self.peak.by_process[name] = max(self.peak.by_process.get(name, 0.0), rss)
                if rss > self.peak.process_mib:
                    self.peak.process_mib, self.peak.process = rss, title
                if title.startswith("ray::") and ENGINE_ACTOR not in title and "EngineCore" not in title:
                    self.peak.decode_worker_mib = max(self.peak.decode_worker_mib, rss)
            self.peak.total_mib = max(self.peak.total_mib, total)
            time.sleep(0.25)

    def processes(self, contains: str) -> list[psutil.Process]:
        return [p for p in _tree(self._root) if contains in _title(p)]

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._stop.set()

    def kill_driver(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._stop.set()

    def leftovers(self, grace_s: float = 60.0) -> list[str]:
        """Processes of this run still alive after `grace_s` (Ray's reaper should end them all).
        `self.exit_s` records how long the last of them took to go."""
        started = time.time()
        deadline = started + grace_s
        alive: list[psutil.Process] = []
        while time.time() < deadline:
            alive = []
            for pid in self.pids_seen:
                try:
                    proc = psutil.Process(pid)
                    if proc.status() != psutil.STATUS_ZOMBIE and str(self.ray_tmp) in " ".join(
                            proc.cmdline() + [proc.environ().get("RAY_TMPDIR", "")]):
                        alive.append(proc)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
            if not alive:
                self.exit_s = time.time() - started
                return []
            time.sleep(1)
        names = [f"{p.pid} {_title(p)}" for p in alive]
        for proc in alive:  # ours: end them so the machine is not left loaded
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        return names

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def job_args(inputs: list[str], output: str, model: str, *, run_id: str, extra: list[str] = ()) -> list[str]:
    args = []
    for uri in inputs:
        args += ["--input", uri]
    return [*args, "--output", output, "--model", model, "--run-id", run_id, "--run-date", "2026-11-22",
            "--max-new-tokens", "4", "--batch-size", "4", "--max-model-len", "4096",
            "--image-tokens", "70", "--error-threshold", "1", *extra]


def read_table(directory: pathlib.Path) -> pa.Table:
    files = sorted(pathlib.Path(directory).rglob("*.parquet"))
    assert files, f"no Parquet files under {directory}"
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")


def read_summaries(output: pathlib.Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((pathlib.Path(output) / "summaries").rglob("*.json"))]


def work_files(output: pathlib.Path, run_id: str) -> list[pathlib.Path]:
    return sorted((pathlib.Path(output) / "_work" / run_id / "segments").rglob("*.parquet"))


def scan_files(paths, needles: list[str]) -> tuple[int, list[str]]:
    """Read every regular file among `paths`; return (files scanned, "needle in path" hits)."""
    scanned, hits = 0, []
    encoded = [n.encode() for n in needles]
    for path in map(pathlib.Path, paths):
        if not path.is_file() or path.is_symlink() or path.suffix == ".sock":
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        scanned += 1
        hits += [f"{needle[:4].decode()}... in {path}" for needle in encoded if needle in data]
    return scanned, hits

