"""Prometheus metrics through Ray's metrics export, and no secrets in Ray's logs."""

from __future__ import annotations

import pathlib
import time

import requests

from tests.serving.conftest import KEY_A, KEY_B


def _metrics_text() -> str:
    import ray

    port = ray._private.worker._global_node.metrics_export_port
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text


def test_serve_and_engine_metrics_are_exported(endpoint):
    endpoint.client().chat.completions.create(
        model=endpoint.model_id, messages=[{"role": "user", "content": "metrics"}], max_tokens=2
    )
    wanted = ("ray_serve_num_http_requests", "ray_serve_deployment_request_counter")
    deadline, text = time.monotonic() + 120, ""
    while time.monotonic() < deadline:  # metrics are pushed to the node's agent every few seconds
        text = _metrics_text()
        if all(name in text for name in wanted) and "vllm" in text:
            break
        time.sleep(2)
    for name in wanted:
        assert name in text, f"{name} missing from Ray's Prometheus endpoint"
    assert "vllm" in text  # engine metrics (log_engine_metrics=True)
    assert 'route="/v1/chat/completions"' in text or "/v1/chat/completions" in text


def test_no_key_or_credential_in_ray_logs(endpoint):
    import os

    import ray

    # Exercise auth failures and media errors first, so their log lines exist.
    requests.get(endpoint.base_url + "/v1/models", headers={"Authorization": "Bearer sk-leak-probe-123"}, timeout=30)
    time.sleep(2)
    logs = pathlib.Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    secrets = [KEY_A, KEY_B, "sk-leak-probe-123", os.environ["AWS_SECRET_ACCESS_KEY"]]
    leaks = []
    for path in logs.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            leaks += [f"{path.name}: {s[:6]}..." for s in secrets if s.encode() in data]
    assert not leaks, leaks
