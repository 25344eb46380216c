"""Why the stream failed, and whether another attempt from the work area can help.

`classify(exc)` sorts an exception raised by the stream (Ray Data's execution) into:

* ``engine_start`` -- the inference actor died in its constructor: the engine cannot start (a bad
  checkpoint, not enough memory for the weights). Deterministic: the job fails now, quoting the
  engine's own reason (`EngineErrors`), instead of starting engine after engine.
* ``stall`` -- Ray Data's no-progress guard fired (`execution_no_progress_timeout_s`, set from
  `--stall-timeout`): nothing moved through the pipeline for that long, i.e. the engine hangs.
  Another attempt starts a fresh engine.
* ``lost`` -- a Ray system failure: a node, worker or actor died, objects were lost beyond what
  lineage reconstruction recovered. Another attempt resumes from the work area.
* ``error`` -- anything else (a bug, a refused write, a usage problem): another attempt would
  fail the same way, so the job stops and the next run resumes.

`EngineErrors` collects the `[vllm-error]` lines the plugin's handler (model/engine_report.py)
writes in vLLM's engine processes and Ray forwards to the driver.
"""

from __future__ import annotations

import collections
import dataclasses
import re

from jobs import ray_internals
from model.engine_report import MARKER

RETRYABLE = ("stall", "lost")


@dataclasses.dataclass(frozen=True)
class Failure:
    kind: str  # engine_start | stall | lost | error
    reason: str

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE


class JobFailed(RuntimeError):
    """The job stopped: the message says why and what the next run does."""


def _chain(exc: BaseException):
    seen = set()
    todo = [exc]
    while todo:
        item = todo.pop(0)
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo += [getattr(item, "cause", None), item.__cause__, item.__context__]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*")


def _first_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def _root_line(exc: BaseException) -> str:
    """The innermost exception's line: a Ray error's message ends with its cause's traceback."""
    import ray.exceptions as rex

    for item in _chain(exc):
        if not isinstance(item, rex.RayError):
            return _first_line(item)
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines()]
    found = [line for line in lines if _EXCEPTION_LINE.match(line)]
    return found[-1][:300] if found else _first_line(exc)


def classify(exc: BaseException) -> Failure:
    import ray.exceptions as rex

    try:
        from ray.data.exceptions import ExecutionTimeoutError
    except ImportError:  # older Ray Data: no no-progress guard
        ExecutionTimeoutError = ()  # noqa: N806

    system = (rex.ObjectLostError, rex.NodeDiedError, rex.WorkerCrashedError, rex.RaySystemError,
              rex.LocalRayletDiedError, rex.ActorUnavailableError, rex.OutOfMemoryError)
    for item in _chain(exc):
        if ExecutionTimeoutError and isinstance(item, ExecutionTimeoutError):
            return Failure("stall", str(item).splitlines()[0])
        if isinstance(item, rex.RayActorError):
            if item.actor_init_failed:
                return Failure("engine_start", _root_line(item))
            return Failure("lost", _first_line(item))
        if isinstance(item, system):
            return Failure("lost", _first_line(item))
    # The root cause's own line: for a refused write that is the storage's answer ("OSError: When
    # completing multiple part upload ... AWS Error INTERNAL_FAILURE ..."), not Ray's wrapper
    # ("RayTaskError(OSError): ray::Write() (pid=..., ip=...)").
    return Failure("error", _root_line(exc))


class EngineErrors:
    """The `[vllm-error]` lines forwarded to this driver (first ones kept: the root cause comes
    first, the wrappers that report it after)."""

    HANDLER = "jobs_engine_errors"

    def __init__(self, keep: int = 8):
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)

    def _on_logs(self, data: dict) -> None:
        for line in data.get("lines") or ():
            if MARKER in line and len(self.lines) < (self.lines.maxlen or 8):
                self.lines.append(line.split(MARKER, 1)[1].strip())

    def attach(self) -> "EngineErrors":
        ray_internals.add_worker_output_handler(self.HANDLER, self._on_logs)
        return self

    def detach(self) -> None:
        ray_internals.remove_worker_output_handler(self.HANDLER)

    def reason(self) -> str | None:
        """The engine's first reported error, without the pid/process prefix."""
        if not self.lines:
            return None
        first = self.lines[0]
        return first.split(": ", 1)[1] if ": " in first else first


def release_actor_pools() -> int:
    """Force-end this job's Ray Data actor-pool workers (the engines' included); returns how many.

    After a failed execution Ray Data drops its references to the pool's actors and lets them end
    once their running tasks end, so that lineage reconstruction can still use them. A stalled
    engine's task never ends: without this the frozen engine would keep its memory (its GPU) while
    the next attempt starts another one. Detached actors (Ray Data's cluster-wide singletons) are
    not touched. The job holds no handle to these actors: jobs/ray_internals.py says why the GCS
    actor table is read directly.
    """
    import ray

    job_id = ray.get_runtime_context().get_job_id()
    killed = 0
    for actor_id, info in ray_internals.job_actors().items():
        if (info["JobID"] != job_id or info["IsDetached"] or "MapWorker" not in info["ActorClassName"]
                or info["State"] == "DEAD"):
            continue
        try:
            ray_internals.kill_actor(actor_id)
            killed += 1
        except Exception:  # noqa: BLE001 - already gone
            pass
    return killed

