"""Run `python -m jobs.run` as a real driver process with its own local Ray cluster, watch its
process tree (peak memory, the inference actor's pid), kill parts of it, read its outputs.

Each job gets its own Ray temp dir (`RAY_TMPDIR`), so the test owns every process and every Ray log
file of the run: it can SIGKILL an actor or the driver, grep all logs for secrets, and verify that
nothing is left running afterwards.

Which processes are the job's: every process carrying the job's `JOBS_PROCESS_TAG` value in its
environment (the driver passes it to all it starts: Ray's processes on its own local cluster by
inheritance, its workers on an attached cluster through the runtime env; vLLM's engine processes
inherit it from their Ray worker), plus every process seen in the driver's process tree. Other
engineers' Ray clusters and engines on a shared machine never carry this run's tag.
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
import uuid

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

ENGINE_ACTOR = "vLLMEngineStageUDF"  # the ray.data.llm stage whose actor owns the vLLM engine
TAG_ENV = "JOBS_PROCESS_TAG"  # jobs.pipeline.PROCESS_TAG_ENV (not imported: keep this module Ray-free)
# Ray Data's and ray.data.llm's cluster-wide singletons: detached named actors that the first job
# creates (so they carry its tag) and every later job on the cluster shares. On an attached cluster
# they outlive each job by design and hold no engine; on the job's own local cluster they end with it.
CLUSTER_SINGLETONS = ("ray::_StatsActor", "ray::_AutoscalingCoordinatorActor", "ray::ActorLocationTracker",
                      "ray::_TelemetryAgent")
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


def tagged(tag: str, key: str = TAG_ENV) -> list[psutil.Process]:
    """Live processes on this machine whose environment has `key=tag` (zombies excluded)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(key) == tag and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def wait_gone(procs_fn, grace_s: float) -> tuple[list[psutil.Process], float]:
    """Poll `procs_fn()` until it returns nothing or `grace_s` passes: (what is left, seconds)."""
    started = time.time()
    while True:
        alive = procs_fn()
        elapsed = time.time() - started
        if not alive or elapsed >= grace_s:
            return alive, elapsed
        time.sleep(0.5)


def kill_all(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


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
        self.tag = f"reltest-{name}-{uuid.uuid4().hex[:10]}"
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
                    **BASE_ENV, "RAY_TMPDIR": str(self.ray_tmp), TAG_ENV: self.tag, **env}
        self.proc: subprocess.Popen | None = None
        self.peak = MemoryPeak()
        self.pids_seen: set[int] = set()
        self.exit_s: float | None = None
        self.left_at_end: int | None = None
        self.killed_at: float | None = None
        self.ended_at: float | None = None  # when the driver exited (or was signalled to)
        self.gone_s: float | None = None
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
        """Processes in the driver's tree (its own local cluster) whose title contains `contains`."""
        return [p for p in _tree(self._root) if contains in _title(p)]

    def tagged_processes(self, contains: str = "") -> list[psutil.Process]:
        """This job's processes anywhere on the machine (an attached cluster's nodes included)."""
        return [p for p in tagged(self.tag) if contains in _title(p)]

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._stop.set()
            if self.proc.poll() is not None:
                self.ended_at = self.ended_at or time.time()

    def kill_driver(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.killed_at = self.ended_at = time.time()
        self.proc.wait(timeout=30)
        self._stop.set()

    def kill_group(self, sig: int = signal.SIGKILL, wait_s: float = 120) -> int:
        """Signal the driver's process group (what a scheduler's or an operator's `kill -SIG -PGID`
        does; the driver leads its own session). Returns the driver's exit status."""
        self._snapshot()
        os.killpg(self.proc.pid, sig)
        self.killed_at = self.ended_at = time.time()
        try:
            return self.proc.wait(timeout=wait_s)
        finally:
            self._stop.set()

    def _snapshot(self) -> None:
        for proc in _tree(self._root):
            self.pids_seen.add(proc.pid)

    def alive(self, keep: tuple[str, ...] = ()) -> list[psutil.Process]:
        """This run's live processes: tagged with its tag, or seen in its tree and still in its
        Ray temp dir; processes whose title starts with one of `keep` are not counted."""
        found = {p.pid: p for p in tagged(self.tag) if not (keep and _title(p).startswith(keep))}
        for pid in self.pids_seen - set(found):
            try:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE and str(self.ray_tmp) in " ".join(
                        proc.cmdline() + [proc.environ().get("RAY_TMPDIR", "")]):
                    found[pid] = proc
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return list(found.values())

    def leftovers(self, grace_s: float = 60.0, keep: tuple[str, ...] = ()) -> list[str]:
        """Processes of this run (Ray's and vLLM's) still alive after `grace_s`; they are then
        killed so the machine is not left loaded. `self.exit_s` records how long the last of them
        took to go, `self.left_at_end` how many there were when the wait began. `keep`: titles
        not counted (and not killed), e.g. CLUSTER_SINGLETONS on an attached cluster."""
        at_end = {p.pid: _title(p).split("  ")[0].strip()[:60] for p in self.alive(keep)}
        self.left_at_end = len(at_end)
        origin = self.ended_at or time.time()
        self.gone_after: dict[str, float] = {}  # process title -> seconds from the job's end to gone

        def poll():
            alive = self.alive(keep)
            now = time.time()
            for pid in set(at_end) - {p.pid for p in alive}:
                title = at_end.pop(pid)
                self.gone_after[title] = max(self.gone_after.get(title, 0.0), round(now - origin, 1))
            return alive

        alive, self.exit_s = wait_gone(poll, grace_s)
        if not alive and self.ended_at:
            self.gone_s = time.time() - self.ended_at  # from the job's end (its kill) to none left
        names = [f"{p.pid} {_title(p)}" for p in alive]
        kill_all(alive)
        return names

    def log(self) -> str:
        """What the job printed: its console (progress and `[jobs]` lines, the summary)."""
        return self.log_path.read_text(errors="replace")

    def full_log(self) -> str:
        """The console, then jobs.run's log file (Ray's and vLLM's output: forwarded worker lines,
        tracebacks), which it writes under its RAY_TMPDIR (jobs.console.default_log_path)."""
        files = sorted(self.ray_tmp.glob("ray/g4u-logs/*.log"))
        return "\n".join([self.log(), *(f.read_text(errors="replace") for f in files)])

    def wait_for(self, predicate, what: str, timeout: float):
        """`predicate()`'s first truthy value, polled every 0.2 s; fails, with the end of the job's log,
        if the job ends first or `timeout` seconds pass."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(f"job ended (rc={self.proc.returncode}) before {what}:\n{self.full_log()[-5000:]}")
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}\n{self.full_log()[-3000:]}")


def working_engine(job: JobProcess, exclude: set[int] = frozenset(), *, anywhere: bool = False):
    """The job's engine actor (not in `exclude`) once it has finished a batch: ray.data.llm logs each
    one ("[vLLM] Elapsed time for batch ...") and Ray forwards the line to the driver's log, prefixed
    with the actor's pid. Work files are no signal of this: Ray Data writes them in bursts.
    `anywhere`: look on every node of an attached cluster, not only in the driver's process tree."""
    actors = (job.tagged_processes if anywhere else job.processes)("MapBatches(vLLMEngineStageUDF)")
    actors = [a for a in actors if a.pid not in exclude]
    if not actors:
        return None
    lines = [line for line in job.full_log().splitlines() if "Elapsed time for batch" in line]
    for actor in actors:
        if any(f"vLLMEngineStageUDF)) pid={actor.pid}" in line for line in lines):
            return actor
    return None


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

