"""What the batch job takes from Ray Core outside its public API, in one place.

Checked against Ray 2.60.0 (`ray/_private/ray_logging/__init__.py`, `ray/_private/state.py`,
`ray/_private/worker.py`). Each is used because no public API does the same on a cluster without a
dashboard (the job's own local Ray has none, and `ray.util.state` needs one):

* `add_worker_output_handler` / `remove_worker_output_handler`: Ray's dispatcher of worker output
  forwarded to the driver (what prints "(pid=...) ..." lines). If it moves, the job no longer
  quotes the engine's own error when an engine cannot start (`jobs.failures.EngineErrors` stays
  empty and the failure names Ray's wrapper instead); nothing else changes.
* `job_actors` / `kill_actor`: the GCS actor table and the core worker's kill (what `ray.kill(handle)`
  calls) for actors the job holds no handle to: Ray Data's actor-pool workers. If they move, a
  stalled engine keeps its memory (its GPU) until Ray Data lets it end, while the next attempt
  starts another one (`jobs.failures.release_actor_pools`).
* `session_dir` / `metrics_export_port`: where the local Ray node writes its logs and serves its
  metrics (benchmarks read them). If they move, bench/pipeline.py cannot report engine gauges.

tests/reliability/test_engine_faults.py runs both job paths (an engine that cannot start, a
stalled engine), so a Ray upgrade that moves one fails there first.
"""

from __future__ import annotations

from typing import Callable


def add_worker_output_handler(name: str, handler: Callable[[dict], None]) -> None:
    """Call `handler({"lines": [...], ...})` for each batch of worker output forwarded to this driver."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher

    global_worker_stdstream_dispatcher.add_handler(name, handler)


def remove_worker_output_handler(name: str) -> None:
    from ray._private.ray_logging import global_worker_stdstream_dispatcher

    try:
        global_worker_stdstream_dispatcher.remove_handler(name)
    except (KeyError, ValueError):
        pass


def job_actors() -> dict[str, dict]:
    """actor id (hex) -> the GCS actor table entry (JobID, IsDetached, ActorClassName, State, ...)."""
    from ray._private import state

    return state.actors()


def kill_actor(actor_id: str) -> None:
    """End the actor now, without restarting it (what `ray.kill(handle, no_restart=True)` does)."""
    import ray
    from ray._private.worker import global_worker

    global_worker.core_worker.kill_actor(ray.ActorID.from_hex(actor_id), True)


def session_dir() -> str:
    import ray

    return ray._private.worker.global_worker.node.get_session_dir_path()


def metrics_export_port() -> int:
    import ray

    return ray._private.worker.global_worker.node.metrics_export_port
