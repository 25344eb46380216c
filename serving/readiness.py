"""Whether the model is deployed yet, from Ray Serve's own status, for the guard's 503 answer.

The ingress replica comes up in seconds; the LLM server behind it needs its engine (a minute on CPU,
minutes for a 12B checkpoint on GPU). In between, a request would wait in the deployment handle's
queue for a replica that does not exist yet. Clients expect what an OpenAI endpoint does instead:
503 with `Retry-After` in OpenAI's error form, which the `openai` client retries by itself.

`ModelReadiness` polls `serve.status()` (the controller's view: how many replicas of each LLM server
deployment are RUNNING) in a daemon thread: every `interval_s` while no replica runs, every
`steady_interval_s` afterwards, so that losing every replica also turns into 503s instead of queued
requests. One probe costs one controller call per ingress replica.

`STATE` is the replica process's instance: the ingress starts it, the guard middleware (built by
FastAPI in the same process) reads it. Unstarted, it gates nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

logger = logging.getLogger("serving.readiness")


class ModelReadiness:
    def __init__(self) -> None:
        self._deployments: list[tuple[str, str]] = []  # (app name, deployment name)
        self._ready: bool | None = None  # None: not probed yet
        self._probed = threading.Event()
        self._started = False
        self.interval_s = 2.0
        self.steady_interval_s = 5.0
        self.retry_after_s = 5

    @property
    def enabled(self) -> bool:
        return self._started

    def start(self, handles, *, interval_s: float = 2.0, steady_interval_s: float = 5.0) -> None:
        """Watch the LLM server deployments behind these DeploymentHandles."""
        if self._started:
            return
        self._deployments = [(h.app_name, h.deployment_name) for h in handles]
        self.interval_s, self.steady_interval_s = interval_s, steady_interval_s
        self._started = True
        threading.Thread(target=self._watch, name="model-readiness", daemon=True).start()

    async def is_ready(self, wait_s: float = 0.5) -> bool:
        """Whether every model has a RUNNING replica (waits for the first probe, at most `wait_s`)."""
        if not self._started:
            return True
        if self._ready is None:
            await asyncio.to_thread(self._probed.wait, wait_s)
        return bool(self._ready)

    def _probe(self) -> bool:
        from ray import serve
        from ray.serve.schema import ReplicaState

        status = serve.status()
        for app_name, deployment in self._deployments:
            app = status.applications.get(app_name)
            info = app.deployments.get(deployment) if app else None
            if info is None or info.replica_states.get(ReplicaState.RUNNING, 0) < 1:
                return False
        return True

    def _watch(self) -> None:
        while True:
            try:
                ready = self._probe()
            except Exception as e:  # noqa: BLE001 - a failed probe means "not known ready"
                logger.warning("model readiness probe failed: %s", type(e).__name__)
                ready = False
            if ready != self._ready:
                logger.info("model deployments %s", "ready" if ready else "not ready: answering 503")
            self._ready = ready
            self._probed.set()
            time.sleep(self.steady_interval_s if ready else self.interval_s)


STATE = ModelReadiness()
