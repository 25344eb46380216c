"""Start-up and overload as OpenAI clients expect them: 503 + Retry-After in OpenAI's error form
until the model is deployed and when the endpoint is over capacity (the `openai` client retries
both); /health as before."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
import requests


def test_until_deployed_v1_answers_503_with_retry_after(endpoint):
    """What /v1/models answered while the app deployed (recorded by the fixture, every 0.5 s): once
    the ingress replica answers, 503 with Retry-After and code model_not_ready until the LLM server
    runs, then 200; never a 404 from then on.

    Before the ingress replica exists, Ray Serve answers for it: HAProxy's default backend says 404
    until the controller has registered the app's route, then its fallback proxy holds requests until
    an ingress replica runs (measured in docs/endpoint.md: 0.1-7 s of 404, 6-20 s held on 2 cores)."""
    answers = [a for a in endpoint.startup if a[1] != "no answer"]
    assert answers[-1][1] == 200, endpoint.startup
    first_ours = next(i for i, a in enumerate(answers) if a[1] == 503)
    for _, status, retry_after, code in answers[first_ours:-1]:
        assert (status, code) == (503, "model_not_ready"), endpoint.startup
        assert retry_after is not None and int(retry_after) > 0
    assert all(a[1] == 404 for a in answers[:first_ours]), endpoint.startup


def test_health_is_unchanged(endpoint):
    r = requests.get(endpoint.base_url + "/health", timeout=30)
    assert r.status_code == 200 and r.json() == {"status": "ok", "models": [endpoint.model_id]}


def _app_raising(exc: Exception):
    """The ingress's FastAPI app (guard, library middleware, our error handlers) with one route that
    fails as the LLM server's deployment handle does when every replica and the queue are full."""
    from serving.config import ServingConfig
    from serving.ingress import build_fastapi_app

    app = build_fastapi_app(ServingConfig(engine={"model": "/m"}, auth={"allow_unauthenticated": True}))
    calls = []

    @app.post("/v1/chat/completions")
    async def chat():
        calls.append(1)
        raise exc

    return app, calls


def test_over_capacity_is_503_with_retry_after_and_the_openai_client_retries():
    from ray.serve.exceptions import BackPressureError

    app, calls = _app_raising(BackPressureError(num_queued_requests=256, max_queued_requests=256))

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as http:
            r = await http.post("/v1/chat/completions", json={})
            client = openai.AsyncOpenAI(base_url="http://ingress/v1", api_key="k", max_retries=2,
                                        http_client=httpx.AsyncClient(transport=transport))
            with pytest.raises(openai.InternalServerError) as error:
                await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            return r, error.value

    response, error = asyncio.run(go())
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "server_overloaded"
    assert error.status_code == 503
    assert len(calls) == 1 + 3  # the plain request, then the client's first try and its 2 retries


def test_builder_bounds_the_llm_server_queue(tiny_checkpoint):
    from serving.app import llm_config
    from serving.config import ServingConfig

    cfg = llm_config(ServingConfig(engine={"model": str(tiny_checkpoint), "device": "cpu"},
                                   deployment={"max_queued_requests": 32}))
    assert cfg.deployment_config["max_queued_requests"] == 32
