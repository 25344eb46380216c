"""One real Serve application for all of tests/serving (an engine start costs ~1 min on 2 cores).

Real parts: local Ray (`ray_local`), Ray Serve with `ray.serve.llm`'s LLMServer running the vLLM CPU
engine on the tiny checkpoint, HTTP on loopback, the `openai` client, moto's S3 server on loopback
(`s3_endpoint`) and a plain HTTP media server on loopback for the domain allowlist.
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import io
import os
import pathlib
import threading
import time

import numpy as np
import pytest

from tests.conftest import free_port

KEY_A = "sk-test-team-a-0123456789"
KEY_B = "sk-test-team-b-9876543210"
KEY_LOAD = "sk-test-load-5555555555"  # a per-key override in the key file: 64 in flight (load clients)

# Limits small enough to hit cheaply in tests (ServingConfig sections).
TEST_LIMITS = dict(
    limits={"max_body_bytes": 4 * 1024 * 1024, "max_images_per_request": 2, "max_chat_audio_seconds": 30.0},
    pages={"max_image_pixels": 1_000_000},
    auth={"max_concurrent_per_key": 3},
    audio={"max_audio_seconds": 300.0},
)
MAX_MODEL_LEN = 4096


def png_bytes(width=64, height=48, seed=0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def wav_bytes(seconds: float, sr: int = 16000, channels: int = 1, seed: int = 0, samples: int | None = None) -> bytes:
    from jobs.samples import tone, wav_bytes as encode

    audio = tone(seconds if samples is None else samples / sr + 1, sr, seed)
    if samples is not None:
        audio = audio[:samples]
    if channels > 1:
        audio = np.stack([audio] * channels, axis=1)
    return encode(audio, sr)


@dataclasses.dataclass
class Endpoint:
    base_url: str  # http://127.0.0.1:PORT
    model_id: str
    checkpoint: pathlib.Path
    media_port: int
    s3_bucket: str
    startup: list  # (seconds, status, Retry-After, error code) of /v1/models while the app deployed

    def client(self, key: str = KEY_A, **kwargs):
        import openai

        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=key, max_retries=0, timeout=300, **kwargs)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture(scope="session")
def media_server(tmp_path_factory):
    """Plain HTTP server on loopback that serves a PNG (the 'allowlisted domain' in tests)."""
    root = tmp_path_factory.mktemp("media")
    (root / "page.png").write_bytes(png_bytes(seed=3))
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port
    server.shutdown()


# Package scope: the app (and its engine) is torn down when tests/serving is done, not at the end of
# the whole session, so it does not hold CPU and memory while other areas run.
@pytest.fixture(scope="package")
def endpoint(tiny_checkpoint, s3_endpoint, ray_local, media_server, tmp_path_factory):
    import boto3
    import requests
    from ray import serve

    from model.config import merge
    from serving.app import build_app

    bucket = "serving-media"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="scans/page.png", Body=png_bytes(seed=5))

    keys = tmp_path_factory.mktemp("keys") / "api_keys.txt"
    keys.write_text(f"# team keys\n{KEY_A}\n{KEY_B}  # team b\n{KEY_LOAD} max_concurrent=64\n")
    creds = tmp_path_factory.mktemp("aws") / "credentials"
    creds.write_text(
        "[default]\n"
        f"aws_access_key_id = {os.environ['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {os.environ['AWS_SECRET_ACCESS_KEY']}\n"
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = merge(TEST_LIMITS, {
        "engine": {"model": str(tiny_checkpoint), "device": "cpu", "max_model_len": MAX_MODEL_LEN},
        "auth": {"api_keys_file": str(keys)},
        # "localhost" allowlisted, 127.0.0.1 not: both name the same loopback media server.
        "media": {"allowed_media_domains": ["localhost"]},
    })
    app = build_app(
        dict(
            model_id="gemma-tiny",
            **config,
            # Credentials reach the ingress as a file, as on a cluster (a mounted secret): env vars in a
            # runtime_env would be written to Ray's runtime-env agent log.
            ingress_env={"AWS_SHARED_CREDENTIALS_FILE": str(creds), "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"]},
        )
    )
    started = time.monotonic()
    # Deploy in the background and watch what a client gets meanwhile (test_lifecycle.py asserts it).
    deploying = threading.Thread(target=serve.run, args=(app,), kwargs=dict(name="serving-test", route_prefix="/"),
                                 daemon=True)
    deploying.start()
    base = f"http://127.0.0.1:{port}"
    startup: list = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            r = requests.get(base + "/v1/models", headers={"Authorization": f"Bearer {KEY_A}"}, timeout=5)
            try:
                code = r.json().get("error", {}).get("code")
            except ValueError:
                code = r.text[:80]
            seen = (r.status_code, r.headers.get("retry-after"), code)
        except requests.RequestException as e:
            seen = ("no answer", None, type(e).__name__)
        if not startup or startup[-1][1:] != seen:
            startup.append((round(time.monotonic() - started, 1), *seen))
        if seen[0] == 200 and requests.get(base + "/health", timeout=5).status_code == 200:
            break
        time.sleep(0.5)
    else:
        raise RuntimeError(f"endpoint did not become healthy: {startup}")
    deploying.join(timeout=120)
    print(f"\nendpoint ready in {time.monotonic() - started:.0f} s; /v1/models meanwhile: {startup}")
    yield Endpoint(base, "gemma-tiny", pathlib.Path(tiny_checkpoint), media_server, bucket, startup)
    serve.shutdown()
