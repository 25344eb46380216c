"""The model deployment: `ray.serve.llm`'s LLMServer with a stream batcher that sends the first chunk
at once.

The library batches a stream's chunks before they cross the deployment handle to the ingress
(`stream_batching_interval_ms`, 50 ms by default, ray#59681): fewer, larger messages at high load.
Its `Batcher` waits out a full interval before its first flush, so every stream's first token
reaches the client one interval late: +50 ms time-to-first-token at any load (measured in
docs/endpoint.md). `EagerBatcher` sends whatever is there as soon as something is, and then at most
once per interval: the first chunk goes out immediately, later ones are still batched, so the
message rate per stream stays bounded by the interval. Everything else is the library's class.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncGenerator

from ray.llm._internal.serve.core.server.llm_server import LLMServer
from ray.llm._internal.serve.utils.batcher import Batcher


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
