"""Session-wide fixtures shared by every test area: one tiny checkpoint per variant, one S3 endpoint,
one local Ray cluster. Area-specific fixtures live in tests/<area>/conftest.py."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

# Engine processes read these at start; set them before anything imports vLLM.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as EngineConfig.env() sets for engines
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> pathlib.Path:
    """Tiny Gemma 4 Unified, bidirectional vision off (faithful on the CPU backend)."""
    from model.checkpoints.tiny import build

    return build(tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint_bidi(tmp_path_factory) -> pathlib.Path:
    """Tiny Gemma 4 Unified with use_bidirectional_attention="vision" (the real checkpoint's setting)."""
    from model.checkpoints.tiny import build

    return build(tmp_path_factory.mktemp("ckpt") / "tiny_bidi", bidirectional_vision=True, seed=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A real S3-protocol server (moto's standalone server) on loopback, in its own process."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError(f"moto server did not start: {log.read_text()}")
    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield url
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (2 logical CPUs, as the CI machine), with the Ray
    Serve settings `python -m serving.app` gives its own Ray (serving/ray_settings.py)."""
    import shutil
    import tempfile

    import ray

    from serving import ray_settings

    serve_dir = tempfile.mkdtemp(prefix="serve-", dir="/tmp")  # short: HAProxy's unix sockets live here
    if not ray.is_initialized():
        ray_settings.apply(ray_settings.local_cluster_env(serve_dir))
        ray.init(
            num_cpus=int(os.environ.get("TEST_RAY_CPUS", "4")),
            include_dashboard=False,
            log_to_driver=True,
            runtime_env={"env_vars": {k: os.environ[k] for k in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_NUM_OF_RESERVED_CPU", "OMP_WAIT_POLICY")}},
        )
    yield ray
    ray.shutdown()
    shutil.rmtree(serve_dir, ignore_errors=True)
