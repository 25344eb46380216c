"""Submit batch jobs (`python -m jobs.run ...`) to a Ray cluster from a notebook or the command line.

    from jobs.submit import submit
    handle = submit(["--input", "s3://scans/2026-11-21/", "--output", "s3://results/nightly/",
                     "--model", "/models/gemma-4-12b-it"], address="http://ray-head:8265")
    handle.wait(timeout=3600)
    handle.sources().to_pandas()          # pyarrow Table read straight from the output location

    python -m jobs.submit --address http://ray-head:8265 -- --input ... --output ... --model ...

Submission goes through Ray's Job Submission client (the head's dashboard port, 8265). The job runs
in `project_runtime_env()`: the project source as the working directory, plus the project's
installed-package metadata as a py_module so the vLLM plugin entry point (`vllm.general_plugins`)
exists in the driver and in every worker process, even on nodes where the project is not installed
(see cluster/README.md, "The vLLM plugin must exist in every process").

Results are read with pyarrow filesystems from the job's `--output` URI (local path or s3://, with
the endpoint and credentials from the usual AWS settings), not through the cluster.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

from jobs.exit_codes import TABLE as EXIT_TABLE
from jobs.exit_codes import ExitCode

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]
DIST_NAME = "gemma4-unified-batch"
PLUGIN_GROUP = "vllm.general_plugins"

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


# -- runtime environment -------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def plugin_metadata_dir() -> pathlib.Path:
    """The project's `.dist-info` directory (METADATA + entry_points.txt), built from pyproject.toml.

    Why: a Ray `working_dir` ships source files only; vLLM finds plugins through package metadata
    (`importlib.metadata.entry_points(group="vllm.general_plugins")`), which a plain source tree
    lacks. PEP 517's `prepare_metadata_for_build_wheel` hook produces exactly that metadata; shipped
    as a py_module it lands on every worker's sys.path, where importlib.metadata discovers it.
    Runs in a subprocess because setuptools' hook works on the current directory.
    """
    import atexit
    import shutil

    out = pathlib.Path(tempfile.mkdtemp(prefix="g4u-meta-"))
    atexit.register(shutil.rmtree, out, True)  # needed only until the runtime env is uploaded
    code = (
        "import sys; from setuptools import build_meta; "
        "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"could not build the project's package metadata:\n{proc.stderr[-2000:]}")
    dist_info = out / proc.stdout.strip().splitlines()[-1]
    entry_points = (dist_info / "entry_points.txt").read_text()
    if f"[{PLUGIN_GROUP}]" not in entry_points:
        raise RuntimeError(f"{dist_info} declares no {PLUGIN_GROUP} entry point")
    return dist_info


def working_dir_excludes() -> list[str]:
    """Ship the project's Python packages (pyproject's package list) and pyproject.toml only.

    An allowlist turned into Ray's gitignore-style `excludes`: every other top-level entry of the
    checkout (virtualenv, data, outputs, tests, whatever else lies there) stays home.
    """
    import fnmatch
    import tomllib

    config = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    excludes = ["**/__pycache__/", "*.pyc"]
    for entry in sorted(PROJECT_ROOT.iterdir()):
        package = entry.is_dir() and (entry / "__init__.py").is_file() and any(
            fnmatch.fnmatch(entry.name, pattern) for pattern in include
        )
        if not package and entry.name != "pyproject.toml":
            excludes.append(f"/{entry.name}/" if entry.is_dir() else f"/{entry.name}")
    return excludes


def project_runtime_env(env_vars: dict[str, str] | None = None, *, ship_code: bool = True) -> dict:
    """Ray runtime_env that runs the project's code, with its vLLM plugin, on any node.

    ship_code=False: use the project installed on the nodes (container image / launcher setup
    commands) and ship nothing; only the environment variables are set.
    """
    from connectors.storage import store_env

    env = {**store_env(), **(env_vars or {})}
    runtime_env: dict[str, Any] = {"env_vars": env}
    if ship_code:
        if not (PROJECT_ROOT / "pyproject.toml").is_file():
            raise RuntimeError(
                f"shipping the code needs a source checkout; {PROJECT_ROOT} has no pyproject.toml. "
                "Use ship_code=False (CLI: --installed) where the nodes have the project installed."
            )
        runtime_env["working_dir"] = str(PROJECT_ROOT)
        runtime_env["excludes"] = working_dir_excludes()
        runtime_env["py_modules"] = [str(plugin_metadata_dir())]
    return runtime_env


def merge_runtime_env(base: dict, extra: dict | None) -> dict:
    """`extra` wins, except env_vars, which are merged key by key."""
    merged = dict(base)
    for key, value in (extra or {}).items():
        if key == "env_vars":
            merged["env_vars"] = {**base.get("env_vars", {}), **value}
        else:
            merged[key] = value
    return merged


# -- job arguments ---------------------------------------------------------------------------------
def resolve_spec(spec_or_args: Any):
    """A resolved `jobs.spec.JobSpec` from a JobSpec, a mapping of its fields, or `jobs.run` arguments.

    Checked and resolved here, before submission: a bad setting fails in the notebook, a local JSON
    schema file is read here and travels inline, and the run date and run id are fixed (the job and
    the handle agree).
    """
    from jobs.run import parser, spec_from_args
    from jobs.spec import JobSpec

    if isinstance(spec_or_args, JobSpec):
        spec = spec_or_args
    elif isinstance(spec_or_args, dict):
        spec = JobSpec.model_validate(spec_or_args)
    else:
        if isinstance(spec_or_args, str):
            spec_or_args = shlex.split(spec_or_args)
        spec = spec_from_args(parser().parse_args([str(a) for a in spec_or_args]))
    return spec.resolve()


def job_command(spec, console_args: Sequence[str] = ()) -> list[str]:
    """The job's command on the cluster: `python -m jobs.run --spec <the whole spec as JSON>`.
    Every setting travels, defaults included, so the cluster runs exactly this spec."""
    return ["python", "-m", "jobs.run", "--spec", spec.model_dump_json(), *console_args]


# -- reading results -------------------------------------------------------------------------------
def _filesystem(uri: str):
    """pyarrow filesystem + path: the batch job's own resolver (same endpoint, region, retries)."""
    from connectors.storage import resolve

    return resolve(uri)


def read_table(output: str, table: str, *, columns: list[str] | None = None, **partition_filter):
    """One Parquet dataset of a job's output (`sources`, `segments`) as a pyarrow Table.

    Hive partitions (`run_date=...`) become columns; keyword arguments filter on columns, e.g.
    `read_table(out, "sources", run_date="2026-11-21", status="error")`.
    """
    import pyarrow.dataset as ds

    filesystem, root = _filesystem(output)
    dataset = ds.dataset(f"{root.rstrip('/')}/{table}", filesystem=filesystem, format="parquet", partitioning="hive")
    expr = None
    for key, value in partition_filter.items():
        if value is None:
            continue
        term = ds.field(key) == value
        expr = term if expr is None else expr & term
    return dataset.to_table(columns=columns, filter=expr)


def _client(address: str, token: str | None):
    """Job Submission client; `token`: the cluster's Ray auth token (token auth is on by default in Ray 2.60).

    Without `token`, Ray's own lookup applies (RAY_AUTH_MODE=token with RAY_AUTH_TOKEN or
    RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token).
    """
    from ray.job_submission import JobSubmissionClient

    headers = {"Authorization": f"Bearer {token}"} if token else None
    return JobSubmissionClient(address, headers=headers)


@dataclasses.dataclass
class JobHandle:
    """A submitted job: status, logs, wait, and its result tables."""

    job_id: str
    address: str
    output: str | None = None
    run_date: str | None = None
    run_id: str | None = None
    token: str | None = dataclasses.field(default=None, repr=False)
    _client: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def client(self):
        if self._client is None:
            self._client = _client(self.address, self.token)
        return self._client

    def status(self) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
        return str(self.client.get_job_status(self.job_id).value)

    def info(self):
        return self.client.get_job_info(self.job_id)

    def logs(self) -> str:
        return self.client.get_job_logs(self.job_id)

    def stop(self) -> bool:
        return self.client.stop_job(self.job_id)

    def wait(self, timeout: float | None = None, *, poll_s: float = 2.0) -> str:
        """Block until the job ends; returns its final status. TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status()
            if status in TERMINAL:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.job_id} still {status} after {timeout} s")
            time.sleep(poll_s)

    # -- results ---------------------------------------------------------------------------------
    def _output(self) -> str:
        if not self.output:
            raise ValueError("this job was submitted without --output; pass output= to JobHandle")
        return self.output

    def table(self, name: str, *, all_runs: bool = False, columns: list[str] | None = None):
        """Dataset `name` (sources, segments) of the output: this job's rows (its run date and run id),
        or every run's rows with all_runs=True."""
        if all_runs:
            return read_table(self._output(), name, columns=columns)
        table = read_table(self._output(), name, columns=columns, run_date=self.run_date, run_id=self.run_id)
        return table

    def summary(self) -> dict:
        """The run summary JSON the job wrote beside the tables (summaries/run_date=D/<run_id>.json)."""
        filesystem, root = _filesystem(self._output())
        path = f"{root.rstrip('/')}/summaries/run_date={self.run_date}/{self.run_id}.json"
        with filesystem.open_input_stream(path) as stream:
            return json.loads(stream.read())

    def sources(self, **kwargs):
        return self.table("sources", **kwargs)

    def segments(self, **kwargs):
        return self.table("segments", **kwargs)

    def sources_df(self, **kwargs):
        return self.sources(**kwargs).to_pandas()

    def segments_df(self, **kwargs):
        return self.segments(**kwargs).to_pandas()


def _submit_with_retry(client, kwargs: dict, *, patience_s: float = 180.0) -> str:
    """submit_job, retried while the head is not ready to take it.

    A freshly started head answers 500 "No available agent ... try again later" until its job agent
    registers, and a loaded one can drop the connection. Retrying is safe because the submission id
    is fixed beforehand: a retry of a submission that did arrive fails with "already exists".
    """
    import requests

    kwargs = dict(kwargs)
    kwargs.setdefault("submission_id", f"g4u-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(4).hex()}")
    deadline = time.monotonic() + patience_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return client.submit_job(**kwargs)
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
        except RuntimeError as exc:
            if attempt > 1 and "already exists" in str(exc):
                return kwargs["submission_id"]  # the dropped earlier attempt did get through
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(min(2 * attempt, 10))


def submit(
    spec_or_args: Any,
    address: str | None = None,
    runtime_env: dict | None = None,
    *,
    token: str | None = None,
    ship_code: bool = True,
    submission_id: str | None = None,
    entrypoint_num_cpus: float | None = None,
    metadata: dict[str, str] | None = None,
    console_args: Sequence[str] = (),
) -> JobHandle:
    """Submit `python -m jobs.run <args>` to the Ray cluster at `address` (default: $RAY_ADDRESS).

    spec_or_args: a `jobs.spec.JobSpec`, a dict of its fields, or the argv list / string of jobs.run.
    runtime_env: merged over `project_runtime_env()` (env_vars key by key).
    """
    address = address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"
    spec = resolve_spec(spec_or_args)
    env = merge_runtime_env(project_runtime_env(ship_code=ship_code), runtime_env)
    client = _client(address, token)
    # `python` on the cluster is the interpreter Ray runs with (the nodes' venv / image).
    entrypoint = shlex.join(job_command(spec, console_args))
    kwargs: dict[str, Any] = {"entrypoint": entrypoint, "runtime_env": env, "metadata": metadata}
    if submission_id:
        kwargs["submission_id"] = submission_id
    if entrypoint_num_cpus is not None:
        kwargs["entrypoint_num_cpus"] = entrypoint_num_cpus
    job_id = _submit_with_retry(client, kwargs)
    return JobHandle(
        job_id=job_id, address=address, output=spec.output.uri, run_date=spec.run.run_date, run_id=spec.run.run_id,
        token=token, _client=client,
    )


# -- cluster check ---------------------------------------------------------------------------------
def plugin_report() -> dict:
    """Where this process finds the project's vLLM plugin (entry point, distribution, module)."""
    import importlib
    import socket
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=PLUGIN_GROUP) if ep.value.startswith("model.registration:")]
    report: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "python": sys.executable}
    if not found:
        report["error"] = f"no {PLUGIN_GROUP} entry point of {DIST_NAME} on sys.path"
        return report
    ep = found[0]
    report["entry_point"] = f"{ep.name} = {ep.value}"
    report["distribution_at"] = str(ep.dist.locate_file("")) if ep.dist else None
    register = ep.load()  # imports model.registration (cheap: no torch, no vLLM)
    report["module_file"] = importlib.import_module(register.__module__).__file__
    return report


def probe_cluster() -> dict:
    """Run inside a job: plugin_report() of the driver and of a worker on every alive node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init()
    remote = ray.remote(num_cpus=0)(plugin_report)
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    workers = ray.get([
        remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
        for node in nodes
    ])
    return {"driver": plugin_report(), "workers": workers}


PROBE_MARKER = "G4U-PLUGIN-PROBE "


def check_cluster(
    address: str, runtime_env: dict | None = None, *, token: str | None = None, ship_code: bool = True,
    timeout: float = 300,
) -> dict:
    """Submit a tiny job that reports where the driver and one worker per node find the plugin."""
    env = merge_runtime_env(project_runtime_env(ship_code=ship_code), runtime_env)
    client = _client(address, token)
    job_id = _submit_with_retry(client, {"entrypoint": "python -m jobs.submit --probe", "runtime_env": env})
    handle = JobHandle(job_id=job_id, address=address, _client=client)
    status = handle.wait(timeout=timeout, poll_s=1.0)
    logs = handle.logs()
    lines = [line for line in logs.splitlines() if line.startswith(PROBE_MARKER)]
    if status != "SUCCEEDED" or not lines:
        raise RuntimeError(f"plugin probe job {job_id} ended {status}:\n{logs[-4000:]}")
    return json.loads(lines[-1][len(PROBE_MARKER):])


# -- CLI -------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--probe"]:  # the probe job's entrypoint, on the cluster
        print(PROBE_MARKER + json.dumps(probe_cluster()), flush=True)
        return 0
    if "--" in argv:
        cut = argv.index("--")
        own, job_args = argv[:cut], argv[cut + 1 :]
    else:
        own, job_args = argv, []
    parser = argparse.ArgumentParser(
        prog="python -m jobs.submit",
        description="Submit `python -m jobs.run` to a Ray cluster: python -m jobs.submit --address URL -- <jobs.run args>",
        epilog="exit status:\n" + EXIT_TABLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray dashboard URL (http://head:8265).")
    parser.add_argument(
        "--token-file", default=None,
        help="File with the cluster's Ray auth token (default: Ray's own lookup, RAY_AUTH_TOKEN etc.).",
    )
    parser.add_argument("--runtime-env-json", default=None, help="Extra runtime_env (JSON), merged over the project's.")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="Extra env var for the job.")
    parser.add_argument("--installed", action="store_true", help="Use the project installed on the nodes; ship no code.")
    parser.add_argument("--submission-id", default=None)
    parser.add_argument("--no-wait", action="store_true", help="Print the job id and return.")
    parser.add_argument("--timeout", type=float, default=None, help="Seconds to wait for the job.")
    parser.add_argument("--check", action="store_true", help="Only check that every node finds the vLLM plugin.")
    args = parser.parse_args(own)  # a usage error exits 2 (argparse), as in jobs.run
    try:
        extra = json.loads(args.runtime_env_json) if args.runtime_env_json else {}
        if args.env:
            extra.setdefault("env_vars", {}).update(dict(item.split("=", 1) for item in args.env))
        token = pathlib.Path(args.token_file).read_text().strip() if args.token_file else None
        # The batch job's own parser and checks, here, before anything is submitted.
        spec = None if args.check else resolve_spec(job_args) if job_args else None
    except (ValueError, TypeError, OSError) as exc:
        print(f"python -m jobs.submit: configuration error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if args.check:
        print(json.dumps(check_cluster(args.address, extra, token=token, ship_code=not args.installed), indent=2))
        return ExitCode.OK
    if spec is None:
        parser.error("give the arguments of jobs.run after `--`")
    try:
        handle = submit(
            spec, address=args.address, runtime_env=extra, token=token, ship_code=not args.installed,
            submission_id=args.submission_id, console_args=_console_args(job_args),
        )
    except Exception as exc:  # noqa: BLE001 - cluster unreachable, submission refused: the job did not run
        print(f"python -m jobs.submit: could not submit to {args.address}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return ExitCode.JOB_FAILED
    print(f"[jobs.submit] submitted {handle.job_id} to {handle.address}", flush=True)
    if args.no_wait:
        return ExitCode.OK
    try:
        status, streamed = _follow(handle, args.timeout)
    except TimeoutError as exc:
        print(f"[jobs.submit] {exc}", flush=True)
        return ExitCode.JOB_FAILED
    if not streamed:  # the summary never came through the log stream: read the one the job wrote
        _print_summary(handle)
    code = exit_code(status, handle.info())
    print(f"[jobs.submit] job {handle.job_id}: {status} (exit {int(code)}: {code.name.lower().replace('_', ' ')})",
          flush=True)
    if handle.output:
        print(f"[jobs.submit] results: {handle.output}", flush=True)
    return code


def _console_args(job_args: Sequence[str]) -> list[str]:
    """jobs.run's console flags (--verbose, --log-file) given after `--`: they travel with the job."""
    from jobs.run import parser as run_parser

    ns = run_parser().parse_args(list(job_args))
    return (["--verbose"] if ns.verbose else []) + (["--log-file", str(ns.log_file)] if ns.log_file else [])


def exit_code(status: str, info: Any = None) -> ExitCode:
    """jobs.submit's exit code for a finished Ray job: jobs.run's own code (the job driver's exit code)."""
    if status == "SUCCEEDED":
        return ExitCode.OK
    driver_code = getattr(info, "driver_exit_code", None)
    if status == "FAILED" and driver_code in (ExitCode.USAGE, ExitCode.THRESHOLD_EXCEEDED):
        return ExitCode(driver_code)
    return ExitCode.JOB_FAILED


def _print_summary(handle: JobHandle) -> None:
    """The run summary from the output (what jobs.run prints at its end), for when the log stream
    broke before it; a job that failed before writing one says so."""
    from jobs.console import summary_lines

    try:
        lines = summary_lines(handle.summary())
    except Exception as exc:  # noqa: BLE001 - no summary (the job failed early) is an answer, not a crash
        print(f"[jobs.submit] no run summary to show ({type(exc).__name__}: {exc})", flush=True)
        return
    print("[jobs.submit] the log stream ended early; the run summary from the output:", flush=True)
    for line in lines:
        print(line, flush=True)


def _follow(handle: JobHandle, timeout: float | None) -> tuple[str, bool]:
    """Stream the job's console (its log: progress heartbeats, then the summary) and print status
    changes, until the job ends; returns the final status and whether the log streamed to its end.
    TimeoutError after `timeout` seconds."""
    import asyncio

    streamed = False

    async def tail():
        nonlocal streamed
        try:
            async for chunk in handle.client.tail_job_logs(handle.job_id):
                print(chunk, end="", flush=True)
            streamed = True
        except Exception as exc:  # noqa: BLE001 - the log stream is a convenience; the status is what counts
            print(f"[jobs.submit] log stream ended ({exc}); waiting for the job", flush=True)

    async def watch() -> str:
        last = None
        while True:
            status = await asyncio.to_thread(handle.status)
            if status != last:
                print(f"[jobs.submit] job {handle.job_id}: {status}", flush=True)
                last = status
            if status in TERMINAL:
                return status
            await asyncio.sleep(2.0)

    async def both() -> str:
        log = asyncio.create_task(tail())
        status = await watch()
        try:  # the rest of the log (the summary) after the job ended
            await asyncio.wait_for(log, 30)
        except asyncio.TimeoutError:
            log.cancel()
        return status

    try:
        return asyncio.run(asyncio.wait_for(both(), timeout)), streamed
    except asyncio.TimeoutError:
        raise TimeoutError(f"job {handle.job_id} did not finish within {timeout} s (still running)") from None


if __name__ == "__main__":
    sys.exit(main())
