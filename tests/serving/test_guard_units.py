"""The guard's parts on their own (no engine): key parsing/rotation, constant-time matching, per-key
limits, config validation and the Serve application graph the builder produces."""

from __future__ import annotations

import os
import time

import pytest

from serving.config import ServingConfig
from serving.guard import KeyLimits, KeyStore, fingerprint, parse_key_entries


def test_parse_keys_file_and_env_forms():
    assert list(parse_key_entries("# comment\nk1\n  k2  # team b\n\nk3,k4\n")) == ["k1", "k2", "k3", "k4"]


def test_keystore_matches_and_rotates(tmp_path, monkeypatch):
    path = tmp_path / "keys"
    path.write_text("alpha\nbeta\n")
    monkeypatch.setenv("TEST_SERVING_KEYS", "gamma")
    store = KeyStore(str(path), "TEST_SERVING_KEYS", recheck_s=0)
    assert len(store) == 3
    assert store.match("alpha") == fingerprint("alpha")
    assert store.match("gamma") == fingerprint("gamma")
    assert store.match("alph") is None and store.match("alphaa") is None and store.match("") is None
    # Rotation: the file changes, the old key stops working without a restart.
    time.sleep(0.01)
    path.write_text("delta\n")
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert store.match("alpha") is None
    assert store.match("delta") == fingerprint("delta")


def test_fingerprint_does_not_reveal_the_key():
    assert "secret-key" not in fingerprint("secret-key") and len(fingerprint("secret-key")) == 12


def test_concurrency_limit_is_per_key():
    limits = KeyLimits(max_concurrent=2, per_minute=None)
    assert limits.acquire("a") is None and limits.acquire("a") is None
    assert "concurrent" in limits.acquire("a")
    assert limits.acquire("b") is None  # another key is unaffected
    limits.release("a")
    assert limits.acquire("a") is None


def test_rate_limit_token_bucket():
    limits = KeyLimits(max_concurrent=100, per_minute=3)
    for _ in range(3):
        assert limits.acquire("a") is None
        limits.release("a")
    assert "per minute" in limits.acquire("a")
    assert limits.acquire("b") is None


def test_config_rejects_unknown_fields_and_normalises():
    with pytest.raises(ValueError):
        ServingConfig(engine={"model": "/m"}, no_such_option=1)
    with pytest.raises(ValueError):
        ServingConfig(engine={"model": "/m"}, auth={"no_such_option": 1})
    config = ServingConfig(engine={"model": "/models/gemma"},
                           media={"allowed_media_domains": " Media.Example.com, ,cdn.example.com"})
    assert config.media.allowed_media_domains == ["media.example.com", "cdn.example.com"]
    assert config.served_model_id == "gemma"
    assert config.images_per_request == config.engine.max_images_per_prompt



def test_engine_concurrency_is_vllms_own_unless_set():
    from serving.app import config_from_argv

    plain = ServingConfig(engine={"model": "/m", "device": "gpu"}).engine.vllm_kwargs()
    assert "max_num_seqs" not in plain and "max_num_batched_tokens" not in plain
    config, _ = config_from_argv(["--model", "/m", "--max-num-seqs", "256", "--max-num-batched-tokens", "8192"])
    assert (config.engine.max_num_seqs, config.engine.max_num_batched_tokens) == (256, 8192)
    kw = config.engine.ray_engine_kwargs()
    assert (kw["max_num_seqs"], kw["max_num_batched_tokens"]) == (256, 8192)

def test_builder_makes_ingress_plus_llm_server(tiny_checkpoint):
    """The Serve graph (no cluster needed to build it): our ingress over ray.serve.llm's LLMServer,
    with EngineConfig's engine kwargs, CPU placement and the autoscaling settings."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from model.config import nest
    from serving.app import build_app, llm_config

    args = {"engine.model": str(tiny_checkpoint), "engine.device": "cpu", "deployment.min_replicas": 1,
            "deployment.max_replicas": 3, "deployment.target_ongoing_requests": 5, "auth.allow_unauthenticated": True}
    # Exactly how `serve run serving.app:build_app k=v ...` / a Serve config calls the builder
    # (string values, one dict argument).
    app = call_user_app_builder_with_args_if_necessary(build_app, {k: str(v) for k, v in args.items()})
    ingress = app._bound_deployment
    assert ingress.name == "OpenAiIngress"
    assert ingress.ray_actor_options["num_cpus"] == pytest.approx(0.1)
    cfg = llm_config(ServingConfig.model_validate(nest(args)))
    assert cfg.engine_kwargs["dtype"] == "float32" and cfg.engine_kwargs["enforce_eager"] is True
    assert cfg.deployment_config["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 5}
    assert cfg.runtime_env["env_vars"]["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"


def test_example_serve_config_is_valid():
    import pathlib

    import yaml

    example = yaml.safe_load((pathlib.Path(__file__).parents[2] / "serving" / "serve_config.example.yaml").read_text())
    app = example["applications"][0]
    assert app["import_path"] == "serving.app:build_app"
    ServingConfig.model_validate(app["args"])


# -- Server-Timing and Ray settings ------------------------------------------------------------------


def _asgi_call(app, path="/v1/chat/completions", headers=(), body=b"{}"):
    """Drive an ASGI app once (no server): returns (status, headers dict, body)."""
    import asyncio

    sent = []
    scope = {"type": "http", "method": "POST", "path": path, "headers": [(k.encode(), v.encode()) for k, v in headers]}

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


def test_guard_adds_server_timing_with_handler_steps():
    from serving import timing
    from serving.guard import GuardMiddleware

    async def handler(scope, receive, send):
        clock = timing.of(scope)
        clock.step("parse")
        time.sleep(0.012)
        clock.step("llm")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})

    guard = GuardMiddleware(handler, max_body_bytes=1000, api_keys_file=None, api_keys_env=None,
                            allow_unauthenticated=True, max_concurrent_per_key=2, requests_per_minute_per_key=None)
    status, headers, _ = _asgi_call(guard)
    assert status == 200
    steps = timing.parse_header(headers["server-timing"])
    assert list(steps) == ["guard", "parse", "llm", "ingress"]
    assert steps["llm"] >= 12.0
    assert steps["ingress"] >= steps["guard"] + steps["parse"]
    # Refusals by the guard itself carry no timing (nothing was admitted).
    status, headers, _ = _asgi_call(guard, body=b"x" * 2000)
    assert status == 413 and "server-timing" not in headers


def test_local_cluster_env_isolates_haproxy_and_keeps_callers_settings(tmp_path, monkeypatch):
    from serving import ray_settings

    env = ray_settings.local_cluster_env(str(tmp_path))
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] != env["RAY_SERVE_HAPROXY_METRICS_PORT"]
    paths = [v for k, v in env.items() if k.endswith(("_LOC", "_PATH", "_BASE", "_FILE"))]
    assert len(paths) == 5 and all(p.startswith(str(tmp_path)) for p in paths)
    assert ray_settings.local_cluster_env(str(tmp_path), fast_paths=False) == ray_settings.DEFAULT_PATHS
    for key in env:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")  # an operator's choice wins
    effective = ray_settings.apply(env)
    assert effective["RAY_SERVE_ENABLE_HA_PROXY"] == "0" and effective["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"


def test_key_file_per_key_overrides(tmp_path, caplog):
    from serving.guard import parse_key_entries

    entries = parse_key_entries("sk-a max_concurrent=32 requests_per_minute=600  # team a\nsk-b\nsk-c max_conc=3\n"
                                "sk-d max_concurrent=0\n")
    assert entries == {"sk-a": {"max_concurrent": 32, "requests_per_minute": 600}, "sk-b": {}}
    assert "entry 3" in caplog.text and "entry 4" in caplog.text and "sk-c" not in caplog.text
    path = tmp_path / "keys"
    path.write_text("sk-a max_concurrent=3\nsk-b\n")
    store = KeyStore(str(path), None)
    limits = KeyLimits(max_concurrent=1, per_minute=None)
    a, b = store.match("sk-a"), store.match("sk-b")
    for _ in range(3):
        assert limits.acquire(a, store.options(a)) is None
    assert "limit 3" in limits.acquire(a, store.options(a))
    assert limits.acquire(b, store.options(b)) is None and "limit 1" in limits.acquire(b, store.options(b))


def test_rate_limit_retry_after_is_the_time_to_the_next_token():
    limits = KeyLimits(max_concurrent=100, per_minute=2)
    for _ in range(2):
        assert limits.acquire("a") is None
        limits.release("a")
    assert limits.acquire("a") is not None and 29 <= limits.retry_after_s <= 30
