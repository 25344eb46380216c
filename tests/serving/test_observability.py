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

    # Exercise auth failures, good and malformed payloads first, so their log lines exist.
    requests.get(endpoint.base_url + "/v1/models", headers={"Authorization": "Bearer sk-leak-probe-123"}, timeout=30)
    marker = "PAYLOAD-MARKER-7f3a"
    auth = {"Authorization": f"Bearer {KEY_A}"}
    for body in (
        {"model": endpoint.model_id, "messages": [{"role": "user", "content": marker}], "max_tokens": 2},
        {"model": endpoint.model_id, "messages": marker},
        {"model": endpoint.model_id, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + marker}}]}]},
        {"model": endpoint.model_id, "messages": [{"role": "user", "content": [{"type": "bogus", "x": marker}]}]},
        {"model": endpoint.model_id, "messages": [{"role": "user", "content": marker * 2000}]},  # too long
    ):
        r = requests.post(endpoint.base_url + "/v1/chat/completions", json=body, headers=auth, timeout=60)
        assert r.status_code < 500
    time.sleep(2)
    logs = pathlib.Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    secrets = [KEY_A, KEY_B, "sk-leak-probe-123", os.environ["AWS_SECRET_ACCESS_KEY"], marker]
    leaks = []
    for path in logs.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            leaks += [f"{path.name}: {s[:6]}..." for s in secrets if s.encode() in data]
    assert not leaks, leaks
