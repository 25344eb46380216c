"""The batch job's console (jobs/console.py) and exit codes (jobs/exit_codes.py), without an engine:
heartbeat format and cadence, the counting that replaces per-source state, the log-file redirection
of everything child processes write, and the exit code of each kind of bad command."""

from __future__ import annotations

import io
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

from jobs.console import Counts, Progress, heartbeat_line, work_counts
from jobs.exit_codes import ExitCode

HEARTBEAT = re.compile(
    r"^\[jobs\] (?P<elapsed>\d\d:\d\d(:\d\d)?) sources (?P<done>\d+)/(?P<total>\d+|\?)( \(\d+%\))?, "
    r"segments \d+, errors \d+, \d+\.\d\d sources/s, ETA (\d\d:\d\d(:\d\d)?|\?)$")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_heartbeat_line_format():
    line = heartbeat_line(90.0, Counts(sources=5.5, segments=9, errors=1), total=12, initial=0.0)
    assert line == "[jobs] 01:30 sources 5/12 (42%), segments 9, errors 1, 0.06 sources/s, ETA 01:46"
    assert HEARTBEAT.match(line)
    # Nothing finished yet (engine starting), total unknown: still one well-formed line.
    assert HEARTBEAT.match(heartbeat_line(31.0, Counts(), total=None, initial=0.0)).group("total") == "?"
    # A resumed run: the rate counts this invocation's sources only.
    assert "1.00 sources/s" in heartbeat_line(10.0, Counts(sources=30.0), total=40, initial=20.0)


def test_heartbeat_at_most_every_30_s_when_not_a_terminal():
    out, clock = io.StringIO(), FakeClock()
    progress = Progress(out, live=False, heartbeat_s=30.0, clock=clock)
    progress.total, progress._started, progress._last_line = 4, 0.0, 0.0
    for t in range(0, 100):  # the console loop ticks about once a second
        clock.now = float(t)
        progress.counts = Counts(sources=t / 25, segments=t // 25, errors=0)
        progress.tick()
    lines = out.getvalue().splitlines()
    assert [HEARTBEAT.match(line).group("elapsed") for line in lines] == ["00:30", "01:00", "01:30"]
    assert HEARTBEAT.match(lines[-1]).group("done") == "3"


def test_counting_without_per_source_state():
    """A source's segments arrive in any batches; 1/num_segments per finished segment adds up to it."""
    batches = [
        ([0, 2], [3, 3], ["ok", "ok"]),  # two of three pages of a PDF
        ([-1, 0], [0, 1], ["error", "ok"]),  # a corrupt file (no segments) and a one-page image
        ([1], [3], ["error"]),  # the PDF's last page failed in the engine
    ]
    total = Counts()
    for batch in batches:
        sources, segments, errors = work_counts(*batch)
        total.sources += sources
        total.segments += segments
        total.errors += errors
    assert total.sources == pytest.approx(3.0) and total.segments == 4 and total.errors == 2


def test_log_file_takes_what_children_and_the_c_level_write(tmp_path):
    """fds 1 and 2 go to the log file, so a subprocess (Ray's daemons, vLLM's engine) and raw writes to
    the descriptors (Ray's C++ core) land there; the console keeps the terminal."""
    log = tmp_path / "run.log"
    script = textwrap.dedent(f"""
        import os, subprocess, sys
        from model.logfile import LogFile
        with LogFile({str(log)!r}) as lf:
            print("python stdout line")
            print("python stderr line", file=sys.stderr)
            os.write(2, b"raw fd 2 line\\n")
            subprocess.run([sys.executable, "-c", "print('child process line')"], check=True)
            print("console line", file=lf.out)
        print("after the log file")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["console line", "after the log file"]
    assert proc.stderr == ""
    assert log.read_text().splitlines() == ["python stdout line", "python stderr line", "raw fd 2 line",
                                            "child process line"]


def test_default_log_path_is_beside_rays_logs(monkeypatch, tmp_path):
    monkeypatch.delenv("G4U_LOG_DIR", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    from model.logfile import default_log_path

    path = default_log_path("jobs-run", "20261122-abc")
    assert path.parent == tmp_path / "ray" / "g4u-logs" and path.name.startswith("jobs-run-20261122-abc-")
    monkeypatch.setenv("G4U_LOG_DIR", str(tmp_path / "logs"))
    assert default_log_path("jobs-run", "x").parent == tmp_path / "logs"


# -- exit codes -------------------------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv, message", [
    (["--input", "x", "--outptu", "y"], "unrecognized arguments: --outptu"),  # argparse
    (["--input", "x"], "missing required settings: --output, --model"),
    (["--input", "x", "--output", "y", "--model", "z", "--error-threshold", "3"], "error_threshold must be between 0 and 1"),
    (["--spec", "/nonexistent/job.yaml"], "No such file"),
])
def test_bad_commands_exit_2_before_anything_runs(argv, message):
    proc = _run("jobs.run", *argv)
    assert proc.returncode == ExitCode.USAGE == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_submit_checks_the_job_arguments_before_submitting():
    proc = _run("jobs.submit", "--address", "http://127.0.0.1:9", "--", "--input", "x", "--error-threshold", "2")
    assert proc.returncode == ExitCode.USAGE, proc.stdout + proc.stderr
    assert "configuration error" in proc.stderr and "Traceback" not in proc.stderr
    assert _run("jobs.submit", "--adress", "x").returncode == ExitCode.USAGE


@pytest.mark.parametrize("status, driver_code, expected", [
    ("SUCCEEDED", 0, ExitCode.OK),
    ("FAILED", 3, ExitCode.THRESHOLD_EXCEEDED),  # jobs.run finished over its error threshold
    ("FAILED", 2, ExitCode.USAGE),
    ("FAILED", 1, ExitCode.JOB_FAILED),
    ("FAILED", None, ExitCode.JOB_FAILED),  # the driver never ran (runtime env setup failed)
    ("FAILED", -9, ExitCode.JOB_FAILED),  # killed
    ("STOPPED", None, ExitCode.JOB_FAILED),
])
def test_submit_returns_the_drivers_own_exit_code(status, driver_code, expected):
    from types import SimpleNamespace

    from jobs.submit import exit_code

    assert exit_code(status, SimpleNamespace(driver_exit_code=driver_code)) == expected


def test_inputs_that_match_nothing_are_a_configuration_error(tmp_path, ray_local, capfd):
    """Listing finds nothing (a typo in a path, as a rule): exit 2, one line on the console, the
    traceback in the log file."""
    from jobs.run import main

    log = tmp_path / "run.log"
    code = main(["--input", str(tmp_path / "nothing-here" / "*.pdf"), "--output", str(tmp_path / "out"),
                 "--model", str(tmp_path / "model"), "--log-file", str(log)])
    out = capfd.readouterr().out
    assert code == ExitCode.USAGE
    assert f"[jobs] Ray and vLLM logs: {log}" in out
    assert "[jobs] configuration error: " in out and "ConfigError: no input files match" in out  # preflight's
    assert "Traceback" not in out
    assert "Traceback" in log.read_text()


def test_exit_code_table_is_documented():
    import pathlib

    from jobs.exit_codes import TABLE

    root = pathlib.Path(__file__).resolve().parents[2]
    for page in ("docs/batch.md", "docs/cluster.md"):
        assert TABLE in (root / page).read_text(), f"{page} lacks the exit code table of jobs/exit_codes.py"
    assert "exit" in (root / "README.md").read_text().lower()


def test_demo_with_a_model_path_that_is_no_checkpoint_exits_2(tmp_path):
    """`python -m jobs.demo --model DIR` without config.json: a configuration error (exit 2), one line on
    stderr, before any sample is written or Ray starts."""
    root = pathlib.Path(__file__).resolve().parents[2]
    argv = [sys.executable, "-m", "jobs.demo", "--model", str(tmp_path), "--inputs", str(tmp_path / "samples")]
    proc = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=60)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    message = f"python -m jobs.demo: configuration error: no checkpoint at {tmp_path} (config.json missing)"
    assert proc.stderr.strip() == message
    assert not (tmp_path / "samples").exists()


def test_live_line_on_a_terminal():
    """The tqdm line: sources done of the total, segments and errors as its postfix, rate and ETA."""
    out = io.StringIO()
    progress = Progress(out, live=True)
    progress.total = 12
    progress.start()
    assert "sources 0/12" in out.getvalue() and "starting the engine" in out.getvalue()
    progress.counts = Counts(sources=3.5, segments=5, errors=1)
    progress.tick()
    progress.close()
    last = out.getvalue().split("\r")[-1]
    assert re.search(r"sources 3/12 \|.*\| +25% \[\d\d:\d\d<\d\d:\d\d, +[\d.]+src/s, segments 5, errors 1\]", last), last


def test_console_flags_travel_with_a_submitted_job_but_are_no_job_settings():
    from jobs.run import parser, spec_from_args
    from jobs.submit import _console_args

    argv = ["--input", "s3://b/x/", "--output", "s3://b/out", "--model", "/m", "--verbose", "--log-file", "/l/run.log"]
    assert _console_args(argv) == ["--verbose", "--log-file", "/l/run.log"]
    plain = spec_from_args(parser().parse_args(argv[:6]))
    assert spec_from_args(parser().parse_args(argv)) == plain  # same run id: the console is not the job


def test_ctrl_c_of_a_streaming_run_prints_what_is_kept_and_exits_130(tmp_path):
    """Ctrl-C (SIGINT to the command's process group, as a terminal sends it) once the run streams:
    one line saying the work area is kept and re-running resumes, exit 130, no traceback on the
    console (where Ray Data stopped goes to the log file). Bounded: the run is interrupted while its
    engine loads, and everything in the group is killed afterwards whatever happened."""
    import os
    import shutil
    import signal
    import tempfile
    import threading
    import time

    from jobs import samples
    from model.checkpoints import demo

    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(4):
        (inputs / f"page{i}.png").write_bytes(samples.png_page(samples.SAMPLE_TEXTS[i % 4]))
    log = tmp_path / "run.log"
    ray_tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's unix socket paths live under it
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
           "RAY_TMPDIR": ray_tmp, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONUNBUFFERED": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.run", "--input", str(inputs), "--output", str(tmp_path / "out"),
         "--model", str(demo.SHIPPED), "--run-id", "ctrlc", "--log-file", str(log)],
        cwd=pathlib.Path(__file__).resolve().parents[2], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    streaming = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if ": streaming " in line:
                streaming.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.time() + 180
        while not streaming.wait(0.5) and proc.poll() is None and time.time() < deadline:
            pass
        assert streaming.is_set(), "".join(lines)
        time.sleep(2)  # Ray Data's executor is running its operators
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=120)
        reader.join(10)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the run's process group
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    out = "".join(lines)
    assert code == ExitCode.INTERRUPTED == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    (said,) = [line for line in out.splitlines() if "interrupted" in line]
    work_area = f"{tmp_path / 'out'}/_work/ctrlc/"
    assert work_area in said and "kept" in said and "resumes" in said, said
    assert (tmp_path / "out" / "_work" / "ctrlc").is_dir()
    assert "KeyboardInterrupt" in log.read_text(errors="replace")  # where it stopped, for diagnosis
