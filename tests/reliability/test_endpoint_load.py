"""The endpoint under bounded load and abuse: `python -m serving.app` as a real process with its own
local Ray cluster (vLLM CPU engine, tiny checkpoint), real HTTP on loopback.

* load: C concurrent clients (spread over several API keys, within the per-key limit) send chat
  requests (text, and an image on every other request) for D seconds: no 5xx, no transport error,
  no 429, and the model replica's memory (the replica process plus its vLLM engine processes) grows
  by less than a stated bound from after warm-up to the end;
* abuse: no key, wrong key -> 401; a 50 MB body -> 413; a 10-minute recording in chat, file:// and
  internal http:// media URLs (loopback, link-local metadata address), malformed JSON -> 400; every
  answer in OpenAI's error format, and the endpoint still answers normally afterwards;
* secrets: no API key (valid or wrong) appears in any log of the run.

Bounded via RELIABILITY_LOAD_CLIENTS / RELIABILITY_LOAD_SECONDS: the default is the CI form (8 clients
for 15 s); the full local run is RELIABILITY_LOAD_CLIENTS=32 RELIABILITY_LOAD_SECONDS=60.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import io
import json
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
import pytest
import requests

from tests.conftest import free_port
from tests.reliability.figures import report
from tests.reliability.jobrunner import BASE_ENV, scan_files

pytestmark = pytest.mark.reliability

CLIENTS = int(os.environ.get("RELIABILITY_LOAD_CLIENTS", "8"))
SECONDS = float(os.environ.get("RELIABILITY_LOAD_SECONDS", "15"))
PER_KEY = 8  # the endpoint's per-key concurrency limit in this test
GROWTH_BOUND_MIB = float(os.environ.get("RELIABILITY_REPLICA_GROWTH_MIB", "300"))
N_KEYS = max(2, -(-CLIENTS // PER_KEY))


def _png(seed: int = 0) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class Server:
    def __init__(self, checkpoint: pathlib.Path, workdir: pathlib.Path):
        self.keys = [f"sk-rel-{i}-{secrets.token_hex(12)}" for i in range(N_KEYS)]
        self.wrong_key = f"sk-wrong-{secrets.token_hex(12)}"
        keys_file = workdir / "keys.txt"
        keys_file.write_text("\n".join(self.keys) + "\n")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ray_tmp = pathlib.Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))
        self.log_path = workdir / "serve.log"
        env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"), **BASE_ENV,
               "RAY_TMPDIR": str(self.ray_tmp)}  # the CLI's own Ray defaults, as a user gets them
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.app", "--model", str(checkpoint), "--model-id", "gemma-tiny",
             "--device", "cpu", "--port", str(self.port), "--api-keys-file", str(keys_file),
             "--max-model-len", "4096", "--max-concurrent-per-key", str(PER_KEY), "--max-num-seqs", "32",
             "--max-ongoing-requests", "64"],
            env=env, cwd=str(pathlib.Path(__file__).resolve().parents[2]),
            stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        self.root = psutil.Process(self.proc.pid)
        self.pids: set[int] = set()

    def wait_healthy(self, timeout: float = 900) -> float:
        started = time.time()
        while time.time() - started < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited rc={self.proc.returncode}:\n{self.log_path.read_text()[-4000:]}")
            try:
                if requests.get(self.base + "/health", timeout=5).status_code == 200:
                    r = requests.get(self.base + "/v1/models", headers=self.auth(), timeout=30)
                    if r.status_code == 200:
                        return time.time() - started
            except requests.RequestException:
                pass
            time.sleep(2)
        raise AssertionError("endpoint did not become healthy")

    def auth(self, i: int = 0) -> dict:
        return {"Authorization": f"Bearer {self.keys[i % len(self.keys)]}"}

    def tree(self) -> list[psutil.Process]:
        procs = [self.root, *self.root.children(recursive=True)]
        self.pids.update(p.pid for p in procs)
        return procs

    def replica_rss_mib(self) -> float:
        """RSS of the LLMServer replica and its vLLM engine processes (the model's memory), each
        process counted once."""
        pids: dict[int, psutil.Process] = {}
        for proc in self.tree():
            try:
                if "LLMServer" in " ".join(proc.cmdline()):
                    for p in [proc, *proc.children(recursive=True)]:
                        pids[p.pid] = p
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        total = 0.0
        for proc in pids.values():
            try:
                total += proc.memory_info().rss / 2**20
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total

    def stop(self) -> list[str]:
        self.tree()
        self.proc.send_signal(signal.SIGTERM)  # graceful: Serve drains, then Ray shuts down
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        time.sleep(3)
        left = []
        for pid in self.pids:
            try:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{pid} {' '.join(proc.cmdline())[:80]}")
                    proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return left


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    srv = Server(tiny_checkpoint, tmp_path_factory.mktemp("serve"))
    try:
        ready_s = srv.wait_healthy()
        print(f"\nendpoint ready in {ready_s:.0f} s")
        yield srv
    finally:
        leftovers = srv.stop()
        shutil.rmtree(srv.ray_tmp, ignore_errors=True)
    assert not leftovers, f"processes outlived the endpoint's graceful shutdown: {leftovers}"


def _chat_body(i: int) -> dict:
    content: list = [{"type": "text", "text": f"Say something about request {i}."}]
    if i % 2:
        url = "data:image/png;base64," + base64.b64encode(_png(i % 7)).decode()
        content.insert(0, {"type": "image_url", "image_url": {"url": url}})
    return {"model": "gemma-tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 8,
            "temperature": 0}


def _error_message(response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text[:500])
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"], error
    return error["message"]


@pytest.mark.soak
def test_bounded_load_holds_without_5xx_or_memory_growth(server):
    session_codes: collections.Counter = collections.Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    # Warm-up at full concurrency: the engine touches its KV-cache pages and allocates batch-sized
    # buffers on first use; that is a one-time step, not growth. Growth is measured after it.
    for i in range(2):
        r = requests.post(server.base + "/v1/chat/completions", json=_chat_body(i), headers=server.auth(), timeout=600)
        assert r.status_code == 200, r.text

    def load(seconds: float, codes: collections.Counter, lat: list) -> float:
        deadline = time.time() + seconds

        def client(n: int) -> None:
            http = requests.Session()
            i = 0
            while time.time() < deadline:
                started = time.time()
                try:
                    r = http.post(server.base + "/v1/chat/completions", json=_chat_body(n * 1000 + i),
                                  headers=server.auth(n % N_KEYS), timeout=600)
                    code = r.status_code
                    if code == 200:
                        assert r.json()["usage"]["completion_tokens"] >= 1
                except requests.RequestException as exc:
                    code = f"transport:{type(exc).__name__}"
                with lock:
                    codes[code] += 1
                    lat.append(time.time() - started)
                i += 1

        peak = 0.0
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(client, n) for n in range(CLIENTS)]
            while not all(f.done() for f in futures):
                peak = max(peak, server.replica_rss_mib())
                time.sleep(1)
            for f in futures:
                f.result()
        return peak

    warm_codes: collections.Counter = collections.Counter()
    load(max(5.0, SECONDS / 3), warm_codes, [])
    assert warm_codes[200] == sum(warm_codes.values()), dict(warm_codes)
    rss_before = server.replica_rss_mib()
    peak_rss = max(rss_before, load(SECONDS, session_codes, latencies))
    rss_after = server.replica_rss_mib()
    total = sum(session_codes.values())
    assert session_codes[200] == total, dict(session_codes)  # no 5xx, no 429, no transport errors
    assert total >= CLIENTS, dict(session_codes)
    growth = rss_after - rss_before
    assert growth < GROWTH_BOUND_MIB, (rss_before, rss_after)
    lat = np.array(latencies)
    report("endpoint_load", clients=CLIENTS, seconds=SECONDS, requests=total, ok=session_codes[200],
           server_errors=0, requests_per_s=round(total / SECONDS, 2), p50_s=round(float(np.percentile(lat, 50)), 2),
           p95_s=round(float(np.percentile(lat, 95)), 2), replica_rss_before_mib=round(rss_before),
           replica_rss_peak_mib=round(peak_rss), replica_rss_after_mib=round(rss_after),
           growth_mib=round(growth), growth_bound_mib=GROWTH_BOUND_MIB)


def _wav(seconds: float) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * 16000), np.int16), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _media_chat(part: dict) -> dict:
    return {"model": "gemma-tiny", "max_tokens": 2,
            "messages": [{"role": "user", "content": [part, {"type": "text", "text": "Describe."}]}]}


def test_abuse_requests_get_the_right_4xx(server):
    post = lambda body, headers=None, **kw: requests.post(  # noqa: E731
        server.base + "/v1/chat/completions", data=body if isinstance(body, (bytes, str)) else json.dumps(body),
        headers={"Content-Type": "application/json", **(server.auth() if headers is None else headers)},
        timeout=120, **kw)
    ok_body = _chat_body(0)
    cases = {}
    cases["no_key"] = _error_message(post(ok_body, headers={}), 401)
    cases["wrong_key"] = _error_message(post(ok_body, headers={"Authorization": f"Bearer {server.wrong_key}"}), 401)
    big = b'{"model": "gemma-tiny", "messages": [{"role": "user", "content": "' + b"a" * (50 * 2**20) + b'"}]}'
    try:
        r = post(big)
        cases["body_50mb"] = _error_message(r, 413)
    except requests.ConnectionError:
        # The server may close the connection as soon as the declared length is over the limit,
        # before the client finished sending; a streamed (chunked) upload then gets the 413 itself.
        r = post(iter([big[i:i + 2**20] for i in range(0, len(big), 2**20)]))
        cases["body_50mb"] = _error_message(r, 413)
    ten_min = base64.b64encode(_wav(600)).decode()
    cases["audio_10min"] = _error_message(
        post(_media_chat({"type": "input_audio", "input_audio": {"data": ten_min, "format": "wav"}})), 400)
    assert "30" in cases["audio_10min"], cases["audio_10min"]
    for name, url in {"file_url": "file:///etc/passwd", "bare_path": "/etc/passwd",
                      "loopback_http": f"http://127.0.0.1:{server.port}/v1/models",
                      "metadata_http": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
                      "internal_https": "https://10.0.0.1/scan.png"}.items():
        cases[name] = _error_message(post(_media_chat({"type": "image_url", "image_url": {"url": url}})), 400)
    cases["malformed_json"] = _error_message(post(b'{"model": "gemma-tiny", "messages": [ {"role": "user"'), 400)
    cases["not_json"] = _error_message(post(b"\x00\xff binary garbage"), 400)
    cases["wrong_types"] = _error_message(post({"model": "gemma-tiny", "messages": "hello", "max_tokens": "x"}), 400)
    # The endpoint is still fine for everyone afterwards.
    r = post(ok_body)
    assert r.status_code == 200, r.text
    report("endpoint_abuse", cases=len(cases), statuses={k: ("401" if k in ("no_key", "wrong_key") else
                                                              "413" if k == "body_50mb" else "400") for k in cases})


def test_api_keys_never_logged(server):
    # After load and abuse: every log file of the run (driver and every Ray/Serve/vLLM process).
    files = [server.log_path, *pathlib.Path(server.ray_tmp).rglob("*")]
    scanned, hits = scan_files(files, [*server.keys, server.wrong_key])
    assert not hits, f"API key found: {hits}"
    assert scanned > 10
    report("endpoint_secrets_scan", files_scanned=scanned, keys_found=0)


def test_console_names_its_log_file_then_says_ready(server):
    """`python -m serving.app`'s own output (jobs/console.py): where Ray's and vLLM's logs go first, then its
    URL once it answers; their lines are in that log file, not on the console."""
    deadline = time.time() + 30  # the app's own probe may answer a moment after the test's
    while "[serving] ready: " not in server.log_path.read_text() and time.time() < deadline:
        time.sleep(1)
    lines = server.log_path.read_text().splitlines()
    assert lines[0].startswith("[serving] Ray and vLLM logs: "), lines[:5]
    log_file = pathlib.Path(lines[0].split(": ", 1)[1])
    assert log_file.is_relative_to(server.ray_tmp) and "Ray" in log_file.read_text()  # Ray's start-up lines
    assert f"[serving] ready: gemma-tiny answering at http://127.0.0.1:{server.port}/v1 (" in "\n".join(lines), lines
    assert not [line for line in lines if line.strip() and not line.startswith("[serving] ")], lines
