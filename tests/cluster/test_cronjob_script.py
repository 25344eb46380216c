"""The nightly CronJob's shell script: creates the RayJob, waits for it, exits with its verdict.

No Kubernetes API server can run on the development machines, so `kubectl` (and `sleep`, to skip the
60 s polling interval) are stand-ins on PATH that replay a RayJob's status sequence and record the
calls. What is tested is the script itself, run by the real /bin/sh exactly as the pod would run it.
"""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess

import pytest
import yaml

CRONJOB = pathlib.Path(__file__).resolve().parents[2] / "cluster" / "kuberay" / "nightly" / "cronjob.yaml"

FAKE_KUBECTL = r"""#!/bin/sh
echo "$*" >> "$FAKE_DIR/calls"
case "$1" in
  create) echo "rayjob.ray.io/gemma4-nightly-x7k2p" ;;
  get)
    case "$*" in
      *jobDeploymentStatus*)
        n=$(cat "$FAKE_DIR/polls" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > "$FAKE_DIR/polls"
        if [ "$n" -le "${API_ERRORS:-0}" ]; then echo "error: the server is currently unable" >&2; exit 1; fi
        if [ "$n" -lt $((${API_ERRORS:-0} + 3)) ]; then printf Running; else printf '%s' "$FINAL_DEPLOYMENT"; fi ;;
      *jobStatus*) printf '%s' "$FINAL_JOB" ;;
      *message*) printf 'Job finished' ;;
    esac ;;
esac
"""


def _container() -> dict:
    cron = yaml.safe_load(CRONJOB.read_text())
    return cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]


def _run(tmp_path, **env_extra) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in (("kubectl", FAKE_KUBECTL), ("sleep", "#!/bin/sh\nexit 0\n")):
        path = bin_dir / name
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DIR": str(tmp_path), **env_extra}
    proc = subprocess.run(["/bin/sh", "-c", _container()["args"][0]], env=env, capture_output=True, text=True, timeout=30)
    return proc, (tmp_path / "calls").read_text().splitlines()


@pytest.mark.parametrize(
    "deployment, job, exit_code",
    [("Complete", "SUCCEEDED", 0), ("Failed", "FAILED", 1), ("Complete", "STOPPED", 1), ("ValidationFailed", "", 1)],
)
def test_script_waits_and_reports_the_rayjob_verdict(tmp_path, deployment, job, exit_code):
    assert _container()["command"] == ["/bin/sh", "-c"]
    proc, calls = _run(tmp_path, FINAL_DEPLOYMENT=deployment, FINAL_JOB=job)
    assert proc.returncode == exit_code, proc.stdout + proc.stderr
    assert calls[0] == "create -f /etc/gemma4-nightly/rayjob.yaml -o name"
    polls = [c for c in calls if "jobDeploymentStatus" in c]
    assert len(polls) == 3  # kept polling while Running, stopped at the terminal state
    assert all(c.startswith("get rayjob.ray.io/gemma4-nightly-x7k2p ") for c in calls[1:])
    assert f"deployment {deployment}, job {job}" in proc.stdout


def test_transient_api_errors_do_not_end_the_watch(tmp_path):
    proc, calls = _run(tmp_path, API_ERRORS="4", FINAL_DEPLOYMENT="Complete", FINAL_JOB="SUCCEEDED")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len([c for c in calls if "jobDeploymentStatus" in c]) == 4 + 3


def test_persistent_api_errors_fail_the_watch(tmp_path):
    proc, calls = _run(tmp_path, API_ERRORS="100", FINAL_DEPLOYMENT="Complete", FINAL_JOB="SUCCEEDED")
    assert proc.returncode == 1 and "cannot read rayjob.ray.io/gemma4-nightly-x7k2p" in proc.stdout
    assert len([c for c in calls if "jobDeploymentStatus" in c]) == 10
