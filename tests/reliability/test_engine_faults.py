"""An engine that cannot start, and one that stalls: real `python -m jobs.run` drivers with their own
local Ray cluster and the vLLM CPU engine.

* **cannot start**: the tiny checkpoint with one weight's declared shape transposed (the files are
  whole and their headers valid, so preflight passes; the weight no longer fits the model, as with
  a checkpoint of the wrong size). The job must fail fast -- seconds after the engine's own error,
  not a hang and not engine start after engine start -- with a non-zero exit and the engine's
  reason (which weight check failed), leaving no process behind.
* **stalls**: the engine's processes are frozen (SIGSTOP: an engine that makes no progress, as a
  hung GPU kernel or ray#59986's out-of-memory hang does) once some output was written, in each of
  the job's two attempts. After `--stall-timeout` without progress the attempt is abandoned and
  the next starts a fresh engine on the rows not done; the last attempt's unfinished sources become
  error rows naming the stall. Every source has exactly one row; the frozen processes are gone.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from model.engine_report import MARKER
from tests.reliability.checkpoints import wrong_weight_shape
from tests.reliability.figures import report
from tests.reliability.jobrunner import JobProcess, job_args, read_table, working_engine
from tests.reliability.test_batch_faults import _assert_exactly_once, _done_in_work_area, _pages_dir

pytestmark = pytest.mark.reliability

TIMEOUT_S = float(os.environ.get("RELIABILITY_JOB_TIMEOUT_S", "900"))
FAIL_FAST_S = float(os.environ.get("RELIABILITY_FAIL_FAST_S", "60"))  # engine's error -> job's exit
STALL_S = float(os.environ.get("RELIABILITY_STALL_S", "30"))
GONE_S = float(os.environ.get("RELIABILITY_FINISHED_GRACE_S", "60"))


class LogWatch:
    """When a string first appears in a job's log (polled: the driver writes it as Ray forwards it)."""

    def __init__(self, job: JobProcess, needle: str):
        self.job, self.needle, self.seen_at = job, needle, None
        self._stop = threading.Event()
        threading.Thread(target=self._poll, daemon=True).start()

    def _poll(self) -> None:
        while not self._stop.is_set() and self.seen_at is None:
            try:
                if self.needle in self.job.full_log():
                    self.seen_at = time.time()
            except OSError:
                pass
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()


@pytest.fixture(scope="module")
def failing_engine(tiny_checkpoint, tmp_path_factory):
    work = tmp_path_factory.mktemp("badengine")
    model = wrong_weight_shape(tiny_checkpoint, work / "wrong-shape")
    _pages_dir(work / "in", 4)
    job = JobProcess(job_args([str(work / "in")], str(work / "out"), str(model), run_id="badengine"), {}, work,
                     "badengine")
    started = time.time()
    watch = LogWatch(job.start(), MARKER)
    try:
        rc = job.wait(TIMEOUT_S)
    finally:
        if job.proc.poll() is None:
            job.kill_driver()
    exited = time.time()
    watch.stop()
    left = job.leftovers(GONE_S)
    yield dict(job=job, rc=rc, wall_s=exited - started, error_seen_s=(watch.seen_at - started) if watch.seen_at else None,
               fail_fast_s=(exited - watch.seen_at) if watch.seen_at else None, left=left, gone_s=job.gone_s,
               output=work / "out")
    import shutil

    shutil.rmtree(job.ray_tmp, ignore_errors=True)


def test_an_engine_that_cannot_load_fails_the_job_fast_with_its_reason(failing_engine):
    run = failing_engine
    log = run["job"].log()
    assert run["rc"] == 1, run["job"].full_log()[-5000:]
    failed = [line for line in log.splitlines() if line.startswith("[jobs] the job failed:")]
    assert failed, run["job"].full_log()[-5000:]
    # The engine's reason: the weight check that failed, not "see root cause above".
    assert "the engine could not start" in failed[0] and "AssertionError" in failed[0], failed[0]
    assert "vocab_parallel_embedding" in failed[0] or "org_vocab_size" in failed[0], failed[0]
    assert run["fail_fast_s"] is not None and run["fail_fast_s"] < FAIL_FAST_S, run["fail_fast_s"]
    assert log.count("[jobs] attempt ") == 1, "a deterministic engine failure was re-attempted"
    assert not list((run["output"] / "sources").rglob("*.parquet")), "tables were published"
    assert not run["left"], run["left"]
    report("engine_fail_fast", exit_code=run["rc"], engine_error_at_s=round(run["error_seen_s"], 1),
           job_exit_after_error_s=round(run["fail_fast_s"], 1), wall_s=round(run["wall_s"], 1),
           processes_gone_after_s=round(run["gone_s"] or 0, 1), reason=failed[0][len("[jobs] the job failed: "):][:160])


def _engine_processes(job: JobProcess, exclude: set[int]) -> list:
    return [p for p in job.processes("VLLM::") if p.pid not in exclude]


@pytest.fixture(scope="module")
def stalled_engine(tiny_checkpoint, tmp_path_factory):
    work = tmp_path_factory.mktemp("stall")
    expected = _pages_dir(work / "in", int(os.environ.get("RELIABILITY_STALL_PAGES", "40")))
    output = work / "out"
    job = JobProcess(job_args([str(work / "in")], str(output), str(tiny_checkpoint), run_id="stall",
                              extra=["--batch-size", "2", "--max-concurrent-batches", "1", "--max-attempts", "2",
                                     "--stall-timeout", str(STALL_S)]),
                     {}, work, "stall")
    started = time.time()
    job.start()
    frozen: set[int] = set()  # the frozen engine processes
    stale: set[int] = set()  # their actors
    stops, starts = [], []  # per attempt: when its engine froze / sources done when it began
    try:
        for attempt in (1, 2):
            if attempt == 2:  # what attempt 1 finished, rows already past its engine included
                deadline = time.time() + TIMEOUT_S
                while "[jobs] attempt 2/2:" not in job.log():
                    assert time.time() < deadline and job.proc.poll() is None, job.full_log()[-4000:]
                    time.sleep(0.2)
            starts.append(len(_done_in_work_area(output, "stall")[0]))
            deadline = time.time() + TIMEOUT_S
            actor = None
            while actor is None:  # freeze the engine once it has done some work
                assert time.time() < deadline, f"attempt {attempt}: the engine did no work\n{job.full_log()[-3000:]}"
                assert job.proc.poll() is None, f"job ended early (rc={job.proc.returncode})\n{job.full_log()[-4000:]}"
                actor = working_engine(job, stale)
                time.sleep(0.1)
            procs = _engine_processes(job, frozen)
            for proc in procs:
                os.kill(proc.pid, signal.SIGSTOP)
                frozen.add(proc.pid)
            stale.add(actor.pid)  # its actor is not the next attempt's (it must end too: checked below)
            time.sleep(1.0)  # rows the engine finished just before it froze may still land
            stops.append(dict(attempt=attempt, done=len(_done_in_work_area(output, "stall")[0]),
                              frozen=len(procs), at_s=round(time.time() - started, 1)))
        rc = job.wait(TIMEOUT_S)
    finally:
        if job.proc.poll() is None:
            job.kill_driver()
    wall_s = time.time() - started
    left = job.leftovers(GONE_S)
    still_frozen = []
    for pid in frozen | stale:  # one the job did not end would be a leak: the check reports it
        try:
            os.kill(pid, 0)
            still_frozen.append(pid)
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    yield dict(job=job, rc=rc, expected=expected, output=output, stops=stops, starts=starts, wall_s=wall_s,
               left=left, still_frozen=still_frozen)
    import shutil

    shutil.rmtree(job.ray_tmp, ignore_errors=True)


def test_a_stalled_engine_is_restarted_then_its_rows_become_error_rows(stalled_engine):
    run = stalled_engine
    log = run["job"].log()
    assert run["rc"] == 0, run["job"].full_log()[-5000:]  # the run finished: one row per input (threshold 1 in job_args)
    assert "[jobs] attempt 1/2 failed (stall" in log, log[-4000:]
    assert "[jobs] attempt 2/2:" in log
    sources = read_table(run["output"] / "sources")
    segments = read_table(run["output"] / "segments")
    _assert_exactly_once(sources, segments, run["expected"])
    rows = sources.to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    stalled = [r for r in rows if r["status"] == "error"]
    # Attempt 2 went on from where attempt 1 stopped (its rows retried on a fresh engine) ...
    assert len(ok) > run["starts"][1] > 0, (len(ok), run["stops"], run["starts"])
    # ... and what the last frozen engine never finished is an error row naming the stall.
    assert stalled, "no source was left for the stalled last attempt"
    for row in stalled:
        assert row["error_stage"] == "stall", row
        assert f"no progress for {STALL_S:.0f} s" in row["error"] and "2 attempt(s)" in row["error"], row["error"]
    assert not run["still_frozen"], f"frozen engine processes outlived the job: {run['still_frozen']}"
    assert not run["left"], run["left"]
    report("engine_stall", stall_timeout_s=STALL_S, stops=run["stops"], attempt_starts=run["starts"], ok_rows=len(ok), stall_error_rows=len(stalled),
           rows_lost=0, duplicates=0, wall_s=round(run["wall_s"], 1), error=stalled[0]["error"][:120])
