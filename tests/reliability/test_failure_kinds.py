"""Which stream failures another attempt can fix (jobs/failures.py), and the engine's one-line error
report (model/engine_report.py). No Ray cluster: Ray's own exception classes, built the way Ray
raises them, and vLLM's logger; the whole-job forms are in test_engine_faults.py and
test_node_loss.py."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import ray.exceptions as rex
from ray.data.exceptions import ExecutionTimeoutError

from jobs.failures import EngineErrors, classify
from model.engine_report import MARKER

pytestmark = pytest.mark.reliability


def _task_error(cause: BaseException) -> rex.RayTaskError:
    # Ray's message is the remote traceback, which ends with the exception's own line.
    traceback = (f"Traceback (most recent call last):\n  File \"udf.py\", line 1, in __init__\n"
                 f"{type(cause).__name__}: {cause}")
    return rex.RayTaskError("MapWorker.__init__", traceback, cause, proctitle="ray::MapWorker", pid=1, ip="x")


def test_an_engine_that_cannot_start_is_not_retried():
    died = rex.ActorDiedError(_task_error(RuntimeError("Engine core initialization failed. See root cause above.")))
    failure = classify(died)
    assert failure.kind == "engine_start" and not failure.retryable
    assert "Engine core initialization failed" in failure.reason


@pytest.mark.parametrize("exc", [
    rex.ObjectLostError("ab" * 14, None, ""),
    rex.NodeDiedError("node 10.0.0.2 died"),
    rex.ActorDiedError(None),  # died while running: a lost node or a killed process
    rex.WorkerCrashedError(),
])
def test_lost_nodes_workers_and_objects_are_retried(exc):
    wrapped = RuntimeError("execution failed")
    wrapped.__cause__ = exc
    for candidate in (exc, wrapped, _task_error(exc)):
        failure = classify(candidate)
        assert failure.kind == "lost" and failure.retryable, (candidate, failure)


def test_a_stall_is_retried():
    failure = classify(ExecutionTimeoutError("Dataset execution made no progress for at least 20s\nmore"))
    assert failure.kind == "stall" and failure.retryable and "no progress" in failure.reason


@pytest.mark.parametrize("exc", [OSError("AWS Error ACCESS_DENIED during PutObject"), ValueError("bug"),
                                 _task_error(KeyError("source_id"))])
def test_other_errors_stop_the_job(exc):
    assert classify(exc).kind == "error" and not classify(exc).retryable


def test_a_refused_write_is_named_by_the_storage_answer_not_rays_wrapper():
    refusal = OSError("When completing multiple part upload for key 'out/_work/r/segments/x.parquet' in bucket "
                      "'b': AWS Error INTERNAL_FAILURE during CompleteMultipartUpload operation: ")
    wrapped = rex.RayTaskError("Write", "Traceback ...\nOSError: ...", refusal, proctitle="ray::Write()",
                               pid=7, ip="192.0.2.2").as_instanceof_cause()  # RayTaskError(OSError), as Ray raises it
    failure = classify(wrapped)
    assert failure.kind == "error"
    assert failure.reason.startswith("OSError: When completing multiple part upload for key 'out/_work/")
    assert "INTERNAL_FAILURE during CompleteMultipartUpload" in failure.reason and "ray::Write" not in failure.reason


def test_the_engine_error_line_reaches_the_driver_collector():
    # In a vLLM child process the plugin installs the handler; here a child interpreter stands in.
    code = ("import logging, sys; from model import engine_report; engine_report.install(); "
            "log = logging.getLogger('vllm.v1.executor.multiproc_executor')\n"
            "try:\n    raise AssertionError('Attempted to load weight (torch.Size([64, 512])) into parameter "
            "(torch.Size([512, 64]))')\nexcept AssertionError:\n    log.exception('WorkerProc failed to start.')\n"
            "log.error('no exception: no line')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = [line for line in out.stderr.splitlines() if MARKER in line]
    assert len(lines) == 1, out.stderr
    collector = EngineErrors()
    collector._on_logs({"lines": ["(pid=5) unrelated", lines[0], f"{MARKER} pid 6 VLLM::EngineCore: RuntimeError: wrapper"]})
    assert collector.reason().startswith("AssertionError: Attempted to load weight (torch.Size([64, 512])) into "
                                         "parameter (torch.Size([512, 64])) (at <string>:")


def test_the_handler_never_breaks_vllm_logging():
    from model import engine_report

    engine_report.install()
    engine_report.install()  # idempotent
    handlers = [h for h in logging.getLogger("vllm").handlers if isinstance(h, engine_report._ErrorLine)]
    assert len(handlers) == 1
    logging.getLogger("vllm.test").error("plain error without exc_info")


def test_sources_a_stalled_run_never_finished_are_retried_by_a_rerun():
    import pyarrow as pa

    from jobs import stages
    from jobs.workarea import STALL_STAGE, resume_state

    rows = [dict(source_id="stalled", segment_index=stages.ERROR_SEGMENT, num_segments=0, error_stage=STALL_STAGE,
                 written_at=1.0),
            dict(source_id="bad", segment_index=stages.ERROR_SEGMENT, num_segments=0, error_stage="decode",
                 written_at=1.0),
            dict(source_id="half", segment_index=0, num_segments=2, error_stage=None, written_at=1.0),
            dict(source_id="half", segment_index=stages.ERROR_SEGMENT, num_segments=0, error_stage=STALL_STAGE,
                 written_at=2.0)]
    done, partial = resume_state(pa.Table.from_pylist(rows))
    assert done == {"bad"}  # a decode error is final; a stall is not
    assert partial == {"half": {0}}  # its finished page is kept, the rest is retried


class _Progress:
    """jobs.console's progress hooks, recording what the attempts loop says."""

    def __init__(self):
        self.lines, self.begun = [], 0

    def say(self, line):
        self.lines.append(line)

    def begin(self, *args):
        self.begun += 1


def _attempts(tmp_path, monkeypatch, outcomes, **spec_kw):
    """jobs.pipeline.stream_attempts over an empty work area with a stand-in stream that raises
    each of `outcomes` in turn (None: the attempt succeeds). No Ray cluster is started."""
    import pyarrow as pa

    from jobs import failures, pipeline
    from jobs.spec import JobSpec
    from jobs.workarea import OutputLayout

    (tmp_path / "in").mkdir()
    spec = JobSpec(inputs=[str(tmp_path / "in")], output={"uri": str(tmp_path / "out")},
                   engine={"model": str(tmp_path / "model")}, run={"run_id": "attempts", **spec_kw})
    calls = []

    def stream(spec, layout, ctx, pending, progress):
        calls.append(len(pending))
        outcome = outcomes[len(calls) - 1]
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(pipeline, "stream", stream)
    monkeypatch.setattr(failures, "release_actor_pools", lambda: 2)
    monkeypatch.setattr(pipeline, "_stage_context", lambda *a: object())
    progress = _Progress()
    units = pa.table({"unit": ["file"] * 3, "uri": [str(tmp_path / "in" / f"p{i}.png") for i in range(3)]})
    result = pipeline.stream_attempts(spec, OutputLayout(spec), units, "a1", progress)
    return result, calls, progress


def test_a_lost_node_is_attempted_again_from_the_work_area(tmp_path, monkeypatch):
    _, calls, progress = _attempts(tmp_path, monkeypatch, [rex.NodeDiedError("node died"), None])
    assert calls == [3, 3]
    said = [line for line in progress.lines if line.startswith("[jobs] attempt")]
    assert said[0].startswith("[jobs] attempt 1/3: streaming 3 of 3")
    assert said[1].startswith("[jobs] attempt 1/3 failed (lost: NodeDiedError") and "2 actors" in said[1]
    assert said[2].startswith("[jobs] attempt 2/3: streaming 3 of 3") and len(said) == 3


def test_attempts_are_bounded_and_the_last_failure_is_named(tmp_path, monkeypatch):
    from jobs.failures import JobFailed

    with pytest.raises(JobFailed, match=r"attempt 2/2 failed .*no attempts are left"):
        _attempts(tmp_path, monkeypatch, [rex.WorkerCrashedError()] * 2, max_attempts=2)


@pytest.mark.parametrize("exc, message", [
    (rex.ActorDiedError(_task_error(RuntimeError("Engine core initialization failed."))), "the engine could not start"),
    (OSError("AWS Error ACCESS_DENIED during PutObject"), "the stream failed"),
])
def test_failures_another_attempt_cannot_fix_end_the_job_at_once(tmp_path, monkeypatch, exc, message):
    from jobs.failures import JobFailed

    with pytest.raises(JobFailed, match=message):
        _attempts(tmp_path, monkeypatch, [exc, None])
