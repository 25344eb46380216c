"""Resume: kill the job's driver (SIGKILL) part way through, run the same command again.

The job runs as `python -m jobs.run` in its own process group, attached to the session's local Ray
cluster (as a job on a shared cluster would be); killing the driver takes its actors down with it.
Items are processed one at a time (batch size 1, one batch in flight) so the kill lands mid-run.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq

from jobs import samples
from jobs.workarea import OutputLayout, read_work
from jobs.spec import JobSpec

N_PAGES = 10
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _cli(inputs, output, model):
    return [sys.executable, "-m", "jobs.run", "--input", str(inputs), "--output", str(output),
            "--model", str(model), "--run-id", "resume-test", "--run-date", "2026-11-22",
            "--batch-size", "1", "--max-concurrent-batches", "1", "--max-new-tokens", "48",
            "--max-model-len", "4096", "--error-threshold", "0"]


def check_console(stdout: str, stderr: str, log_dir: pathlib.Path) -> None:
    """What the resumed run printed (not a terminal): the log file first, heartbeat lines at most every
    30 s, the summary; no traceback, and none of Ray's or vLLM's own lines (they are in the log file)."""
    from tests.jobs.test_console import HEARTBEAT

    lines = stdout.splitlines()
    assert lines[0].startswith("[jobs] Ray and vLLM logs: "), stdout[:2000]
    log = pathlib.Path(lines[0].split(": ", 1)[1])
    assert log.parent == log_dir and "EngineCore" in log.read_text()  # vLLM's engine logs went there
    assert "Traceback" not in stdout + stderr and stderr == "", stderr[-3000:]
    foreign = re.compile(r"\b(INFO|WARNING|ERROR|DEBUG)\b|pid=\d+|^\s*File \"|Triton|EngineCore")
    assert not [line for line in lines if foreign.search(line)], stdout[-3000:]
    stamps = [HEARTBEAT.match(line).group("elapsed") for line in lines if HEARTBEAT.match(line)]
    seconds = [sum(int(x) * 60 ** i for i, x in enumerate(reversed(stamp.split(":")))) for stamp in stamps]
    assert all(b - a >= 30 for a, b in zip([0] + seconds, seconds)), stamps
    done = next(line for line in lines if " inference done: " in line)
    assert done.endswith("writing the tables") and f"sources {N_PAGES}/{N_PAGES}, " in done, done
    streamed = sum(int(x) * 60 ** i for i, x in enumerate(reversed(done.split()[1].split(":"))))
    assert len(seconds) >= streamed // 30 - 1, (streamed, stamps)  # a line every 30 s, none skipped
    assert "error rate 0.000 (threshold 0.0): PASSED" in stdout


def _work_rows(output: pathlib.Path) -> int:
    total = 0
    for path in (output / "_work" / "resume-test" / "segments").glob("*.parquet"):
        try:
            total += pq.read_metadata(path).num_rows
        except Exception:  # noqa: BLE001 - a file being written right now
            pass
    return total


def test_killed_run_resumes_without_recompute_or_duplicates(tmp_path, tiny_checkpoint, ray_local):
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for i in range(N_PAGES):
        (inputs / f"page{i:02d}.png").write_bytes(samples.png_page(f"page {i}: " + samples.SAMPLE_TEXTS[i % 4], (240, 320)))
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "PYTHONPATH": str(ROOT)}
    cmd = _cli(inputs, output, tiny_checkpoint)

    first = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                             stdout=open(tmp_path / "first.log", "wb"), stderr=subprocess.STDOUT)
    deadline = time.time() + 420
    while time.time() < deadline and first.poll() is None and _work_rows(output) < 2:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]

    spec = JobSpec(inputs=[str(inputs)], output={"uri": str(output)}, engine={"model": str(tiny_checkpoint)},
                   run={"run_id": "resume-test", "run_date": "2026-11-22"})
    done_before = read_work(OutputLayout(spec), spec)  # also drops a file cut short by the kill
    finished = set(done_before.column("source_id").to_pylist())
    assert 0 < len(finished) < N_PAGES, f"kill landed outside the run: {len(finished)} finished"
    assert not (output / "sources").exists()  # nothing published by the killed run

    second = subprocess.run(cmd, cwd=ROOT, env={**env, "G4U_LOG_DIR": str(tmp_path / "logs")},
                            capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    check_console(second.stdout, second.stderr, tmp_path / "logs")

    summary = json.loads(next((output / "summaries").rglob("resume-test.json")).read_text())
    inv = summary["this_invocation"]
    assert inv["sources_skipped_as_done"] == len(finished)
    assert inv["sources_processed"] == N_PAGES - len(finished)
    assert inv["segments_inferred"] == N_PAGES - len(finished)  # the finished ones were not recomputed

    sources = pq.read_table(output / "sources").to_pylist()
    segments = pq.read_table(output / "segments").to_pylist()
    assert len(sources) == N_PAGES and len({r["source_id"] for r in sources}) == N_PAGES
    assert all(r["status"] == "ok" for r in sources)
    assert len(segments) == N_PAGES and len({r["source_id"] for r in segments}) == N_PAGES
    # Work rows of the first run are the ones published for those sources (kept, not redone).
    work = read_work(OutputLayout(spec), spec).to_pylist()
    assert sorted(r["source_id"] for r in work) == sorted(r["source_id"] for r in sources)
