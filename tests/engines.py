"""In-process vLLM engines for tests: start one from EngineConfig, and stop it without leaving its
engine-core process behind.

vLLM 0.29's `LLM` runs the engine core in a child process (`VLLM::EngineCore`, a multiprocessing
process held by `llm.llm_engine.engine_core.resources.engine_manager.processes`). Its shutdown sends
SIGTERM, waits a grace period (5 s), then SIGKILLs a core still running and never waits for it: the
killed core stays a `<defunct>` child of pytest for the rest of the run. `shutdown_engine` joins each
engine process after the shutdown, which reaps it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

REAP_TIMEOUT_S = 30.0


def engine_processes(llm) -> list:
    """The multiprocessing processes of an `LLM`'s engine core (empty for an in-process core)."""
    resources = getattr(llm.llm_engine.engine_core, "resources", None)
    manager = getattr(resources, "engine_manager", None)
    return list(getattr(manager, "processes", None) or [])


def shutdown_engine(llm, timeout: float = REAP_TIMEOUT_S) -> None:
    """Shut the engine core down and reap its process(es); raises if one is still running after `timeout`."""
    processes = engine_processes(llm)
    llm.llm_engine.engine_core.shutdown()
    for proc in processes:
        proc.join(timeout)  # waitpid: a core vLLM SIGKILLed is reaped here, not left defunct
        if proc.exitcode is None:
            raise RuntimeError(f"engine process {proc.name} (pid {proc.pid}) still running {timeout} s after shutdown")


@contextlib.contextmanager
def running_engine(settings, **llm_kwargs) -> Iterator:
    """`vllm.LLM` for `settings` (model.engine.EngineConfig; `llm_kwargs` add to or override its
    vLLM arguments), shut down and reaped on exit."""
    from vllm import LLM

    settings.apply_env()
    llm = LLM(**{**settings.vllm_kwargs(), **llm_kwargs})
    try:
        yield llm
    finally:
        shutdown_engine(llm)
