"""The ingress deployment: `ray.serve.llm`'s OpenAI ingress plus auth, limits, media policy and chunked
transcription.

Extension points used (public in `ray.serve.llm`; what else is needed from the library is in
serving/ray_llm_internals.py, the one module that reaches into it):
* `OpenAiIngress` is subclassed: `chat` vets and rewrites media before calling the library's own
  request path (LLMServer handle -> vLLM's OpenAI serving layer), so streaming, usage, error mapping
  and request routing stay the library's;
* `make_fastapi_ingress(cls, endpoint_map=..., app=...)` turns it into a Serve ingress with our
  route set (library routes we do not serve, like embeddings and scoring, are left out) and our FastAPI
  app, which carries the library's middleware (request ids, HTTP metrics, exception mapping) with
  `GuardMiddleware` outermost.

`/v1/audio/transcriptions` is ours: vLLM's transcription endpoint targets Whisper-style models, while
this model transcribes through a chat prompt and only sees 30 s per clip. It decodes, chunks, prompts
and stitches with the same `model.inputs.media` / `model.inputs.audio_chunks` / `model.inputs.prompts` code as the batch
pipeline, and sends each chunk through the same LLMServer handle as chat.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import FastAPI, Request, status
from starlette.responses import JSONResponse, PlainTextResponse, Response

from ray.serve.llm.ingress import OpenAiIngress
from ray.serve.llm.openai_api_models import ChatCompletionRequest

from serving import ray_llm_internals, readiness, timing
from serving.config import ServingConfig
from serving.errors import RequestError, json_response
from serving.media_policy import MediaPolicy
from serving.transcribe import transcribe_request

logger = logging.getLogger("serving.ingress")


class GuardedOpenAiIngress(OpenAiIngress):
    def __init__(self, llm_deployments, model_cards, *, serving_config: dict, lora_paths=None, **kwargs):
        super().__init__(llm_deployments, model_cards, lora_paths=lora_paths, **kwargs)
        self.config = ServingConfig.model_validate(serving_config)
        self.media = MediaPolicy(self.config)
        # 503 + Retry-After from the guard until the LLM servers have a running replica.
        readiness.STATE.start(list(ray_llm_internals.model_handles(self).values()))

    # -- chat ------------------------------------------------------------------------------------
    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        clock = timing.of(request)
        if clock is not None:
            clock.step("parse")
        try:
            try:
                # Materializes lazily validated content parts; a malformed part fails here.
                body = ray_llm_internals.sanitize_chat_request(body)
            except (ValueError, TypeError) as e:
                cause = e.__cause__ or e
                raise RequestError(400, f"Invalid message content: {_short(cause)}", param="messages") from None
            if body.n is not None and body.n > 8:
                raise RequestError(400, "n must be at most 8.", param="n")
            await _check_guided_schema(body)
            body.messages, body.mm_processor_kwargs = await self.media.vet_request(
                body.messages, body.mm_processor_kwargs
            )
        except RequestError as e:
            return json_response(e)
        if clock is None:
            return await super().chat(body, request)
        clock.step("vet")
        response = await super().chat(body, request)
        clock.step("llm")
        return response

    # -- models ----------------------------------------------------------------------------------
    # The library's routes return its ModelList / ModelCard, and FastAPI serializes them by those
    # declared types, which drops our cards' own fields (created, root, max_model_len).
    async def models(self) -> Response:
        listing = await super().models()
        return JSONResponse({"object": "list", "data": [card.model_dump() for card in listing.data]})

    async def model_data(self, model: str) -> Response:
        return JSONResponse((await super().model_data(model)).model_dump())

    # -- transcription ---------------------------------------------------------------------------
    async def transcriptions(self, request: Request) -> Response:
        try:
            return await transcribe_request(self, request)
        except RequestError as e:
            return json_response(e)

    async def model_id_for(self, model: str | None) -> str:
        """The served model a request names (the only one when None); 404/400 otherwise."""
        return await ray_llm_internals.resolve_model_id(self, model)

    async def chat_once(self, body: ChatCompletionRequest) -> Any:
        """One non-streaming chat call through the library's LLMServer handle (used per chunk)."""
        async for response in ray_llm_internals.chat_responses(self, body):
            if isinstance(response, list):
                response = response[0]
            if ray_llm_internals.is_error_response(response):
                code = int(response.error.code or 500)
                raise RequestError(code if 400 <= code < 500 else 400, response.error.message)
            return response
        raise RuntimeError("engine returned no response")

    # -- health ----------------------------------------------------------------------------------
    async def health(self) -> Response:
        """200 when every model's LLMServer answers its health check within 10 s, else 503."""
        try:
            async with asyncio.timeout(10):
                for handle in ray_llm_internals.model_handles(self).values():
                    await handle.check_health.remote()
        except Exception as e:  # noqa: BLE001 - any failure means "not ready"; the reason is the body
            return JSONResponse({"status": "unhealthy", "reason": type(e).__name__}, status_code=503)
        return JSONResponse({"status": "ok", "models": sorted(ray_llm_internals.model_ids(self))})


async def _check_guided_schema(body: ChatCompletionRequest) -> None:
    """A `response_format` JSON schema (or vLLM's `structured_outputs.json`) guided decoding cannot run
    is a 400 naming the keyword, worded as the batch job words it (model/structured_outputs.py)."""
    from model.structured_outputs import UnsupportedSchema, check_schema

    guided = body.extract_structured_outputs()
    schema = getattr(guided, "json", None)
    if schema is None:
        return
    param = "response_format" if body.response_format is not None else "structured_outputs"
    try:
        await asyncio.to_thread(check_schema, schema)
    except UnsupportedSchema as e:
        raise RequestError(400, f"{param}: {e}", param=param) from None
    except (ValueError, TypeError) as e:  # not JSON text: vLLM's own check words it the same way
        raise RequestError(400, f"{param}: the JSON schema is not valid JSON ({_short(e)})", param=param) from None


def _short(error: BaseException, limit: int = 300) -> str:
    """A bounded description of a validation error (never echoes a payload back)."""
    errors = getattr(error, "errors", None)
    if callable(errors):
        # Content parts are a union of part types: pydantic reports every arm. Name the fields.
        fields = sorted({str(e["loc"][-1]) for e in errors(include_input=False) if e.get("loc")})
        return (
            "a content part matches no supported part type (text {text}, image_url {url}, "
            f"input_audio {{data, format}}, audio_url {{url}}); problems with: {', '.join(fields)[:limit]}"
        )
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:limit]


class ServedModelCard(ray_llm_internals.ModelCard):
    """`/v1/models` entries as vLLM's own server writes them (`created`, `root`, `max_model_len`: the
    context length clients size prompts by), plus ray.serve.llm's metadata."""

    created: int
    root: str
    max_model_len: int


def model_card(model_id: str, llm_config, config: ServingConfig) -> ServedModelCard:
    card = ray_llm_internals.to_model_metadata(model_id, llm_config)
    metadata = {**card.metadata, "max_request_context_length": config.engine.max_model_len}
    return ServedModelCard(**{**card.model_dump(), "metadata": metadata}, created=int(time.time()),
                           root=model_id, max_model_len=config.engine.max_model_len)


ENDPOINTS = {
    "models": lambda app: app.get("/v1/models"),
    "model_data": lambda app: app.get("/v1/models/{model:path}"),
    "completions": lambda app: app.post("/v1/completions"),
    "chat": lambda app: app.post("/v1/chat/completions"),
    "transcriptions": lambda app: app.post("/v1/audio/transcriptions"),
    "health": lambda app: app.get("/health"),
}


def build_fastapi_app(config: ServingConfig) -> FastAPI:
    """The library's ingress app (its middleware stack) with the guard added outermost."""
    from serving.guard import GuardMiddleware

    app = ray_llm_internals.ingress_app()
    app.add_middleware(
        GuardMiddleware,
        max_body_bytes=config.limits.max_body_bytes,
        api_keys_file=config.auth.api_keys_file,
        api_keys_env=config.auth.api_keys_env,
        allow_unauthenticated=config.auth.allow_unauthenticated,
        max_concurrent_per_key=config.auth.max_concurrent_per_key,
        requests_per_minute_per_key=config.auth.requests_per_minute_per_key,
    )
    # Malformed JSON and schema errors: the library answers 400 in OpenAI form. Unknown routes and
    # wrong methods: FastAPI's 404/405 in OpenAI form as well.
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):  # noqa: ANN001
        return json_response(RequestError(exc.status_code, str(exc.detail)))

    # Every LLM server replica at max_ongoing_requests and this ingress's queue for them full
    # (max_queued_requests): over capacity, 503 + Retry-After, which OpenAI clients retry.
    from ray.serve.exceptions import BackPressureError

    @app.exception_handler(BackPressureError)
    async def _over_capacity(request, exc):  # noqa: ANN001
        return json_response(
            RequestError(503, "The endpoint is at capacity; retry in 1 s.", code="server_overloaded"),
            headers={"Retry-After": "1"},
        )

    return app


__all__ = ["GuardedOpenAiIngress", "ENDPOINTS", "build_fastapi_app", "status", "PlainTextResponse"]
