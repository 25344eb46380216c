"""Front door of the ingress: request body limit, API-key authentication, per-key limits.

A pure ASGI middleware placed outermost on the ingress FastAPI app (Starlette runs the last added
middleware first), so a request is refused before anything parses it:

1. body size: `Content-Length` above the limit -> 413 at once; chunked bodies are counted while read
   and refused as soon as they pass the limit (nothing above the limit is buffered);
2. `Authorization: Bearer <key>` checked against every configured key with `hmac.compare_digest`
   (constant time per key, and every key is compared so timing does not reveal which matched) -> 401;
3. model readiness -> 503 + Retry-After while no LLM server replica runs yet (serving/readiness.py);
4. per-key limits -> 429: at most N requests in flight (streams count until their last byte) and an
   optional token-bucket rate.

Why hand-written: Ray Serve and `ray.serve.llm` have no authentication or per-client limits (they
leave it to a gateway); FastAPI dependencies would run after the body is parsed. Limits are per
ingress replica: with R ingress replicas a key may hold up to R x N requests.

Keys are read in the replica (file and/or environment variable) and re-read when the file changes,
so keys rotate without a restart. Only a short SHA-256 fingerprint of a key is ever kept for
accounting; no key, header or body is logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import pathlib
import threading
import time

from serving import readiness, timing
from serving.errors import error_json_bytes

logger = logging.getLogger("serving.guard")

# Paths any caller may reach: load balancer / KubeRay probes.
PUBLIC_PATHS = frozenset({"/health", "/healthz"})


def fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


KEY_OPTIONS = ("max_concurrent", "requests_per_minute")


def parse_key_entries(text: str) -> dict[str, dict[str, int]]:
    """Key file / env text -> {key: per-key limit overrides}.

    One key per line (or comma-separated), `#` starts a comment; after the key, optional overrides
    of the endpoint's per-key limits for that key: `sk-team-a max_concurrent=32 requests_per_minute=600`.
    A line with an unknown or malformed option is dropped with an error in the log (line number
    only, never the key): a limit that silently did not apply would be worse than a refused key."""
    entries: dict[str, dict[str, int]] = {}
    for number, line in enumerate(text.replace(",", "\n").splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        key, options = fields[0], {}
        try:
            for field in fields[1:]:
                name, sep, value = field.partition("=")
                if not sep or name not in KEY_OPTIONS or int(value) < 1:
                    raise ValueError(name)
                options[name] = int(value)
        except ValueError:
            logger.error("API key entry %d: options must be %s=<positive int>; entry ignored", number,
                         "|".join(KEY_OPTIONS))
            continue
        entries.setdefault(key, options)
    return entries


class KeyStore:
    """API keys from a file (one per line, `#` comments) and/or an env var (comma-separated)."""

    def __init__(self, keys_file: str | None, keys_env: str | None, recheck_s: float = 5.0):
        self._file = pathlib.Path(keys_file) if keys_file else None
        self._env = keys_env
        self._recheck_s = recheck_s
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._checked = 0.0
        self._keys: list[bytes] = []
        self._digests: list[bytes] = []
        self._options: dict[str, dict[str, int]] = {}  # fingerprint -> per-key limit overrides
        self._load()

    def _load(self) -> None:
        entries: dict[str, dict[str, int]] = {}
        if self._env and os.environ.get(self._env):
            entries.update(parse_key_entries(os.environ[self._env]))
        if self._file is not None:
            try:
                self._mtime = self._file.stat().st_mtime
                for key, options in parse_key_entries(self._file.read_text()).items():
                    entries.setdefault(key, options)
            except OSError as e:  # keep serving with the keys we had; say why without the content
                logger.warning("API key file %s unreadable: %s", self._file, e.strerror)
        self._keys = [k.encode() for k in entries]
        self._digests = [hashlib.sha256(k).digest() for k in self._keys]
        self._options = {fingerprint(k): options for k, options in entries.items() if options}
        self._checked = time.monotonic()

    def options(self, key_id: str) -> dict[str, int]:
        """Per-key limit overrides of a matched key (by fingerprint)."""
        return self._options.get(key_id, {})

    def _maybe_reload(self) -> None:
        if self._file is None or time.monotonic() - self._checked < self._recheck_s:
            return
        with self._lock:
            self._checked = time.monotonic()
            try:
                mtime = self._file.stat().st_mtime
            except OSError:
                return
            if mtime != self._mtime:
                self._load()
                logger.info("API keys reloaded (%d keys)", len(self._keys))

    def __len__(self) -> int:
        return len(self._keys)

    def match(self, presented: str) -> str | None:
        """Fingerprint of the matching key, or None. Compares against every key (no early exit).

        Digests are compared, not the raw strings, so that the comparison time does not depend on
        the length of the presented or stored key either."""
        self._maybe_reload()
        candidate = hashlib.sha256(presented.encode()).digest()
        found = None
        for key, digest in zip(self._keys, self._digests):
            if hmac.compare_digest(candidate, digest) and found is None:
                found = key
        return fingerprint(found.decode()) if found is not None else None


class KeyLimits:
    """Per-key in-flight counter and optional token bucket (one event loop: no locks needed)."""

    def __init__(self, max_concurrent: int, per_minute: int | None):
        self.max_concurrent = max_concurrent
        self.per_minute = per_minute
        self._inflight: dict[str, int] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)
        self.retry_after_s = 1  # of the last refusal

    def acquire(self, key_id: str, overrides: dict[str, int] | None = None) -> str | None:
        """Take a slot; return a refusal message instead when the key is over a limit (then
        `retry_after_s` says when to retry). `overrides`: this key's own limits from the key file."""
        overrides = overrides or {}
        max_concurrent = overrides.get("max_concurrent", self.max_concurrent)
        per_minute = overrides.get("requests_per_minute", self.per_minute)
        self.retry_after_s = 1
        if self._inflight.get(key_id, 0) >= max_concurrent:
            return (
                f"Too many concurrent requests for this API key (limit {max_concurrent}); "
                "wait for earlier requests to finish and retry."
            )
        if per_minute:
            now = time.monotonic()
            tokens, last = self._buckets.get(key_id, (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - last) * per_minute / 60.0)
            if tokens < 1.0:
                self._buckets[key_id] = (tokens, now)
                self.retry_after_s = max(1, math.ceil((1.0 - tokens) * 60.0 / per_minute))
                return f"Rate limit of {per_minute} requests per minute exceeded for this API key; retry later."
            self._buckets[key_id] = (tokens - 1.0, now)
        self._inflight[key_id] = self._inflight.get(key_id, 0) + 1
        return None

    def release(self, key_id: str) -> None:
        n = self._inflight.get(key_id, 1) - 1
        if n <= 0:
            self._inflight.pop(key_id, None)
        else:
            self._inflight[key_id] = n


async def _send_error(send, status: int, message: str, code: str, headers: list | None = None) -> None:
    body = error_json_bytes(status, message, code=code)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """ASGI middleware: body limit -> auth -> per-key limits. Options are plain values (picklable)."""

    def __init__(
        self,
        app,
        *,
        max_body_bytes: int,
        api_keys_file: str | None,
        api_keys_env: str | None,
        allow_unauthenticated: bool,
        max_concurrent_per_key: int,
        requests_per_minute_per_key: int | None,
    ):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.keys = KeyStore(api_keys_file, api_keys_env)
        self.allow_unauthenticated = allow_unauthenticated
        if not len(self.keys) and not allow_unauthenticated:
            # Fail closed: an endpoint without keys would be open to every team on the cluster.
            logger.error("no API keys configured (file %s, env %s): every request gets 401", api_keys_file, api_keys_env)
        self.limits = KeyLimits(max_concurrent_per_key, requests_per_minute_per_key)

    def _key_id(self, scope) -> str | None:
        header = ""
        for name, value in scope.get("headers", []):
            if name.lower() == b"authorization":
                header = value.decode("latin-1")
                break
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.keys.match(token.strip())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") in PUBLIC_PATHS or scope.get("method") == "OPTIONS":
            return await self.app(scope, receive, send)
        clock = timing.Timing()

        # 1. Declared size first: refuse without reading a byte of the body.
        for name, value in scope.get("headers", []):
            if name.lower() == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _send_error(send, 400, "Invalid Content-Length header.", "invalid_header")
                if declared > self.max_body_bytes:
                    return await _send_error(send, 413, self._too_large(), "request_too_large")

        # 2. Authentication.
        if self.allow_unauthenticated and not len(self.keys):
            key_id = "anonymous"
        else:
            key_id = self._key_id(scope)
            if key_id is None:
                return await _send_error(
                    send,
                    401,
                    "Missing or invalid API key. Send it as 'Authorization: Bearer <key>'.",
                    "invalid_api_key",
                    headers=[(b"www-authenticate", b"Bearer")],
                )

        # 3. The model must be deployed: until then (and if every model replica is gone) 503 with
        #    Retry-After, which OpenAI clients retry, instead of a request queued for nothing.
        if readiness.STATE.enabled and not await readiness.STATE.is_ready():
            wait = readiness.STATE.retry_after_s
            return await _send_error(
                send,
                503,
                f"The model is not deployed yet (the engine is starting or restarting); retry in {wait} s.",
                "model_not_ready",
                headers=[(b"retry-after", str(wait).encode())],
            )

        # 4. Per-key limits.
        refusal = self.limits.acquire(key_id, self.keys.options(key_id))
        if refusal is not None:
            retry = str(self.limits.retry_after_s).encode()
            return await _send_error(send, 429, refusal, "rate_limit_exceeded", headers=[(b"retry-after", retry)])
        try:
            # Read the body here, counting as it streams in (chunked uploads have no Content-Length),
            # and refuse as soon as it passes the limit. The app would hold the whole body in memory
            # anyway (JSON / form parsing); reading it first means an over-limit body never reaches
            # a handler whose own error handling would turn our refusal into something else.
            chunks: list[bytes] = []
            received = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body = message.get("body", b"")
                received += len(body)
                if received > self.max_body_bytes:
                    return await _send_error(send, 413, self._too_large(), "request_too_large")
                chunks.append(body)
                if not message.get("more_body", False):
                    break
            replayed = False

            async def replay_receive():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                return await receive()

            async def timed_send(message):
                if message["type"] == "http.response.start":
                    headers = list(message.get("headers", []))
                    headers.append((b"server-timing", clock.header_value()))
                    message = {**message, "headers": headers}
                await send(message)

            state = scope.setdefault("state", {})
            state["api_key_id"] = key_id
            state["timing"] = clock
            clock.step("guard")
            await self.app(scope, replay_receive, timed_send)
        finally:
            self.limits.release(key_id)

    def _too_large(self) -> str:
        return f"Request body exceeds the limit of {self.max_body_bytes} bytes."
