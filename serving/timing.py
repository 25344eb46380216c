"""Per-request hop timings, sent back as a standard `Server-Timing` response header.

    Server-Timing: guard;dur=0.4, parse;dur=1.2, vet;dur=0.1, llm;dur=52.3, ingress;dur=54.6

The guard (outermost middleware of the ingress) starts a `Timing` for every request it admits and
adds the header when the response starts; the ingress handler records its own steps into it through
the ASGI scope's state. Durations are milliseconds in the ingress replica:

* guard   - authentication, per-key admission and reading the body;
* parse   - FastAPI routing, JSON parsing and request validation (guard hand-off -> handler);
* vet     - media policy: fetch, decode, check and rewrite every image/audio part;
* llm     - the LLMServer call through its deployment handle (vLLM's OpenAI layer and the engine);
            for a stream, until its first chunk;
* ingress - everything in the ingress replica until the response started.

What a client measures beyond `ingress` is the HTTP hop in front of the replica (Serve's proxy or
HAProxy) and the network. Operators read it with `curl -i`; `bench/serving.py --hops` turns it into
the per-hop table in docs/endpoint.md. The cost is a few `perf_counter` calls per request.
"""

from __future__ import annotations

import time


class Timing:
    __slots__ = ("start", "mark", "_steps")

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.mark = self.start  # end of the last recorded step
        self._steps: list[tuple[str, float]] = []

    def step(self, name: str) -> float:
        """Record the time since the previous step (or the start) under `name`; returns now."""
        now = time.perf_counter()
        self._steps.append((name, now - self.mark))
        self.mark = now
        return now

    def header_value(self) -> bytes:
        total = time.perf_counter() - self.start
        parts = [f"{name};dur={seconds * 1000:.2f}" for name, seconds in self._steps]
        parts.append(f"ingress;dur={total * 1000:.2f}")
        return ", ".join(parts).encode()


def of(scope_or_request) -> Timing | None:
    """The request's Timing (None outside the guard, e.g. in unit tests or public paths)."""
    scope = getattr(scope_or_request, "scope", scope_or_request)
    state = scope.get("state") or {}
    return state.get("timing")


def parse_header(value: str) -> dict[str, float]:
    """`Server-Timing` header -> {name: milliseconds} (for benches and tests)."""
    out: dict[str, float] = {}
    for item in value.split(","):
        name, _, params = item.strip().partition(";")
        for param in params.split(";"):
            key, _, number = param.strip().partition("=")
            if key == "dur":
                out[name.strip()] = float(number)
    return out
