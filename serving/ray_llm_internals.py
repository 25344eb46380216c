"""What the endpoint takes from Ray Serve LLM outside its public API (`ray.serve.llm`), in one place.

Checked against Ray 2.60.0. The endpoint subclasses the public `ray.serve.llm.ingress.OpenAiIngress`
and `ray.serve.llm.deployment.LLMServer`; what it needs beyond their public surface is here, and
what breaks if it moves:

* `sanitize_chat_request` (`core/ingress/utils.py`): materializes lazily validated content parts
  before the media policy reads them. Moved: chat requests with media fail at import.
* `ModelCard`, `to_model_metadata` (`core/configs/openai_api_models.py`): the `/v1/models` card the
  library builds, which the endpoint extends. Moved: the app cannot be built.
* `ingress_app` (`core/ingress/ingress.py:init`): the library's FastAPI app with its middleware
  (request ids, HTTP metrics, exception mapping), to which the guard is added. Moved: same.
* `model_handles`, `model_ids`, `resolve_model_id`, `chat_responses`, `is_error_response`: private
  attributes and methods of `OpenAiIngress` (`_default_serve_handles`, `_model_cards`,
  `_get_model_id`, `_get_response`) and the internal `ErrorResponse` class its handles return. Used
  for the health route, readiness, and transcription's one chat call per chunk. Moved: /health,
  readiness (503 until the model is up) and /v1/audio/transcriptions fail.
* `EagerBatcher` / `EagerStreamLLMServer`: the internal `Batcher` and `LLMServer._batch_output_stream`
  / `_get_batch_interval_ms`. Moved: `deployment.stream_first_chunk_immediately=false` (the
  library's own batcher) still works; the eager one does not.

tests/serving exercises every item (one Serve application), so a Ray upgrade that moves one fails
there first.

Why the eager batcher: the library batches a stream's chunks before they cross the deployment
handle to the ingress (`stream_batching_interval_ms`, 50 ms by default, ray#59681): fewer, larger
messages at high load. Its `Batcher` waits out a full interval before its first flush, so every
stream's first token reaches the client one interval late (+50 ms time-to-first-token at any load,
measured in docs/endpoint.md). `EagerBatcher` sends whatever is there as soon as something is, and
then at most once per interval: the first chunk goes out immediately, later ones are still batched.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncGenerator, Iterable

from ray.llm._internal.serve.core.configs.openai_api_models import ErrorResponse as _ErrorResponse
from ray.llm._internal.serve.core.configs.openai_api_models import ModelCard, to_model_metadata
from ray.llm._internal.serve.core.ingress.ingress import init as ingress_app
from ray.llm._internal.serve.core.ingress.utils import _sanitize_chat_completion_request as sanitize_chat_request
from ray.llm._internal.serve.utils.batcher import Batcher
from ray.serve.llm.deployment import LLMServer

__all__ = ["ModelCard", "to_model_metadata", "ingress_app", "sanitize_chat_request", "model_handles", "model_ids",
           "resolve_model_id", "chat_responses", "is_error_response", "EagerBatcher", "EagerStreamLLMServer"]


# -- OpenAiIngress internals -------------------------------------------------------------------------


def model_handles(ingress) -> dict[str, Any]:
    """model id -> the LLMServer deployment handle."""
    return ingress._default_serve_handles


def model_ids(ingress) -> Iterable[str]:
    return ingress._model_cards


async def resolve_model_id(ingress, model: str | None) -> str:
    """The served model a request's `model` names (the only one when None); 404/400 otherwise."""
    return await ingress._get_model_id(model)


def chat_responses(ingress, body) -> AsyncGenerator:
    """The LLMServer's responses to one chat request, through the library's request path."""
    return ingress._get_response(body=body, call_method="chat")


def is_error_response(response) -> bool:
    return isinstance(response, _ErrorResponse)


# -- LLMServer's stream batcher ----------------------------------------------------------------------


class EagerBatcher(Batcher):
    """Flush as soon as a chunk is queued, then no more often than every `interval_ms`."""

    def __init__(self, generator, interval_ms: float | None):
        self.arrived = asyncio.Event()
        super().__init__(generator, interval_ms=interval_ms)

    async def read(self):
        try:
            async for item in self.generator:
                self.queue.put_nowait(item)
                self.arrived.set()
        finally:
            self.done_event.set()
            self.arrived.set()

    async def stream(self) -> AsyncGenerator:
        if not self.interval_s:  # 0 (every chunk on its own) or None (one batch at the end): the library's
            async for batch in super().stream():
                yield batch
            return
        last_flush = -float("inf")
        try:
            while True:
                await self.arrived.wait()
                wait = self.interval_s - (time.monotonic() - last_flush)
                if wait > 0 and not self.done_event.is_set():
                    try:  # let more chunks gather, but no longer than the rest of the interval
                        await asyncio.wait_for(self.done_event.wait(), timeout=wait)
                    except asyncio.TimeoutError:
                        pass
                self.arrived.clear()
                results, is_done = self.check_done_and_drain()
                if results:
                    last_flush = time.monotonic()
                    yield self._merge_results(results)
                if is_done:
                    self.read_task.result()  # raise the generator's exception, if any
                    break
        finally:
            if not self.read_task.done():
                self.read_task.cancel()


class EagerStreamLLMServer(LLMServer):
    """ray.serve.llm's LLMServer; streams through `EagerBatcher`."""

    def _batch_output_stream(self, generator):
        return EagerBatcher(generator, interval_ms=self._get_batch_interval_ms()).stream()
